//! Which model and role a message gets, and who may use which model.
//!
//! A message's *scope* names where it came from (`wechat_mp:main`, `telegram:bot1`, `web`,
//! `v1`...); `[[scopes]]` give a platform or an account its default model and role, an
//! account's entry winning over its platform's. A user's own choice (`/model`, `/role`) wins
//! over both; it is kept in the store under `pref:<uid>:model` / `pref:<uid>:role`.

use chatrelay_core::{Platform, UserKey};
use chatrelay_storage::{Store, StoreError, Uid, User};

use crate::config::{ModelConfig, RoleConfig, ScopeConfig};

/// The scope word of a platform, as `[[scopes]]`, `[[filters]]` and `[[keywords]]` name it.
#[must_use]
pub fn platform_scope(p: Platform) -> &'static str {
    match p {
        Platform::Mp => "wechat_mp",
        Platform::Wecom => "wecom",
        Platform::Zsxq => "zsxq",
        Platform::Tg => "telegram",
        Platform::Web => "web",
        Platform::Api => "v1",
    }
}

/// The scope of a message from `key`: `<platform>:<account>`, or the platform alone when it
/// has no accounts.
#[must_use]
pub fn scope_of(key: &UserKey) -> String {
    let platform = platform_scope(key.platform);
    if key.account.is_empty() {
        platform.to_owned()
    } else {
        format!("{platform}:{}", key.account)
    }
}

/// The `[[scopes]]` entry for `scope`: the account's own, else its platform's.
#[must_use]
pub fn scope_defaults<'a>(scopes: &'a [ScopeConfig], scope: &str) -> Option<&'a ScopeConfig> {
    let platform = scope.split(':').next().unwrap_or(scope);
    scopes
        .iter()
        .find(|s| s.scope == scope)
        .or_else(|| scopes.iter().find(|s| s.scope == platform))
}

/// Whether `user`, holding `paid` paid credits, may use `model`.
#[must_use]
pub fn allowed(model: &ModelConfig, user: &User, paid: u64) -> bool {
    if model.paid_only && paid == 0 {
        return false;
    }
    model.groups.is_empty() || model.groups.iter().any(|g| user.groups.contains(g))
}

/// The store key of a user's choice (`model` or `role`).
#[must_use]
pub fn pref_key(uid: Uid, what: &str) -> String {
    format!("pref:{}:{what}", uid.0)
}

/// A user's saved choice.
pub async fn pref(store: &Store, uid: Uid, what: &str) -> Result<Option<String>, StoreError> {
    store.checkpoint(&pref_key(uid, what)).await
}

/// The model for a message: the user's choice if it is still configured, else the scope's
/// default, else the global default.
#[must_use]
pub fn choose_model<'a>(
    models: &'a [ModelConfig],
    chosen: Option<&str>,
    scope: Option<&ScopeConfig>,
    default: &str,
) -> Option<&'a ModelConfig> {
    let find = |name: &str| models.iter().find(|m| m.name == name);
    chosen
        .and_then(find)
        .or_else(|| scope.and_then(|s| s.model.as_deref()).and_then(find))
        .or_else(|| find(default))
}

/// The role for a message: the user's choice if it still exists, else the scope's default.
/// `None` means the global system prompt.
#[must_use]
pub fn choose_role<'a>(
    roles: &'a [RoleConfig],
    chosen: Option<&str>,
    scope: Option<&ScopeConfig>,
) -> Option<&'a RoleConfig> {
    let find = |id: &str| roles.iter().find(|r| r.id == id);
    chosen
        .and_then(find)
        .or_else(|| scope.and_then(|s| s.role.as_deref()).and_then(find))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str) -> ModelConfig {
        ModelConfig {
            name: name.into(),
            ..ModelConfig::default()
        }
    }

    fn user(groups: &[&str]) -> User {
        User {
            uid: Uid(1),
            name: "u".into(),
            created_at_ms: 0,
            banned: false,
            ban_reason: None,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    fn scope(scope: &str, model: Option<&str>, role: Option<&str>) -> ScopeConfig {
        ScopeConfig {
            scope: scope.into(),
            model: model.map(str::to_owned),
            role: role.map(str::to_owned),
            voice_reply: false,
        }
    }

    #[test]
    fn scopes_of_keys() {
        let mp: UserKey = "mp:main:o6_x".parse().unwrap();
        assert_eq!(scope_of(&mp), "wechat_mp:main");
        let web: UserKey = "web:42".parse().unwrap();
        assert_eq!(scope_of(&web), "web");
    }

    #[test]
    fn an_account_default_wins_over_its_platform() {
        let scopes = [
            scope("wechat_mp", Some("a"), None),
            scope("wechat_mp:vip", Some("b"), Some("coder")),
        ];
        assert_eq!(
            scope_defaults(&scopes, "wechat_mp:vip")
                .unwrap()
                .model
                .as_deref(),
            Some("b")
        );
        assert_eq!(
            scope_defaults(&scopes, "wechat_mp:other")
                .unwrap()
                .model
                .as_deref(),
            Some("a")
        );
        assert!(scope_defaults(&scopes, "telegram:x").is_none());
    }

    #[test]
    fn model_choice_order_and_permissions() {
        let mut paid = model("paid");
        paid.paid_only = true;
        let mut team = model("team");
        team.groups = vec!["staff".into()];
        let models = [model("cheap"), model("scoped"), paid.clone(), team.clone()];
        let sc = scope("telegram", Some("scoped"), None);
        let pick =
            |chosen| choose_model(&models, chosen, Some(&sc), "cheap").map(|m| m.name.as_str());
        assert_eq!(pick(Some("paid")), Some("paid"), "the user's choice wins");
        assert_eq!(
            pick(Some("gone")),
            Some("scoped"),
            "a removed choice falls back"
        );
        assert_eq!(pick(None), Some("scoped"));
        assert_eq!(
            choose_model(&models, None, None, "cheap").map(|m| m.name.as_str()),
            Some("cheap")
        );

        assert!(!allowed(&paid, &user(&[]), 0));
        assert!(allowed(&paid, &user(&[]), 5));
        assert!(!allowed(&team, &user(&["other"]), 100));
        assert!(allowed(&team, &user(&["staff"]), 0));
        assert!(allowed(&model("cheap"), &user(&[]), 0));
    }

    #[test]
    fn role_choice() {
        let roles = [RoleConfig {
            id: "coder".into(),
            name: "程序员".into(),
            prompt: "You write code.".into(),
        }];
        let sc = scope("web", None, Some("coder"));
        assert_eq!(choose_role(&roles, None, Some(&sc)).unwrap().id, "coder");
        assert!(choose_role(&roles, Some("nope"), None).is_none());
        assert_eq!(
            choose_role(&roles, Some("coder"), None).unwrap().id,
            "coder"
        );
    }
}
