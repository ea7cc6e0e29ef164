//! Chat commands (`/help`, `/new`, `/quota`, `/buy`, `/model`, `/role`, `/image`, ...).

use super::*;

/// Fills the quota text's placeholders.
#[must_use]
pub fn quota_text(template: &str, b: &Balance, free_daily: u64) -> String {
    fill(
        template,
        &[
            ("free_left", &b.free_left.to_string()),
            ("free_daily", &free_daily.to_string()),
            ("paid", &b.paid.to_string()),
            ("available", &b.available.to_string()),
        ],
    )
}

/// Fills a plan text's placeholders: `{plan}`, `{daily}`, `{end}` (its last day), `{days}`
/// (left, counting `today`).
#[must_use]
pub fn plan_text(template: &str, p: &chatrelay_storage::ActivePlan, today: i64) -> String {
    fill(
        template,
        &[
            ("plan", &p.name),
            ("daily", &p.daily_credits.to_string()),
            ("end", &chatrelay_storage::date_of_day(p.last_day())),
            ("days", &p.days_left(today).to_string()),
        ],
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Command {
    Help,
    New,
    Quota,
    Buy,
    /// List the models, or choose one.
    Model(Option<String>),
    /// List the roles, or choose one.
    Role(Option<String>),
    /// Draw a picture of the prompt.
    Image(Option<String>),
    /// Redeem a code (none given: how to).
    Redeem(Option<String>),
}

impl Engine {
    /// The model and role (display names) a user's next message in `scope` would get.
    pub(super) async fn current_choice(
        &self,
        s: &Settings,
        uid: Uid,
        scope: &str,
    ) -> (String, String) {
        let defaults = policy::scope_defaults(&s.scopes, scope);
        let store = &self.inner.store;
        let model = policy::pref(store, uid, "model").await.ok().flatten();
        let role = policy::pref(store, uid, "role").await.ok().flatten();
        let model = policy::choose_model(&s.models, model.as_deref(), defaults, &s.default_model)
            .map_or_else(|| s.default_model.clone(), |m| m.name.clone());
        let role = policy::choose_role(&s.roles, role.as_deref(), defaults).map_or_else(
            || "默认".to_owned(),
            |r| {
                if r.name.is_empty() {
                    r.id.clone()
                } else {
                    r.name.clone()
                }
            },
        );
        (model, role)
    }

    pub(super) fn command(&self, text: &str) -> Option<Command> {
        let t = text.trim();
        let matches = |words: &[String]| words.iter().any(|w| w.trim().eq_ignore_ascii_case(t));
        // `/model NAME`, `模型 NAME`: a command word, then its argument.
        let with_arg = |words: &[String]| -> Option<Option<String>> {
            words.iter().find_map(|w| {
                let w = w.trim();
                let rest = t
                    .get(..w.len())
                    .filter(|head| head.eq_ignore_ascii_case(w))?;
                let arg = t.get(rest.len()..)?;
                if arg.is_empty() {
                    Some(None)
                } else if arg.starts_with(char::is_whitespace) {
                    Some(Some(arg.trim().to_owned()))
                } else {
                    None
                }
            })
        };
        let settings = self.settings();
        let c = &settings.commands;
        if matches(&c.help) {
            Some(Command::Help)
        } else if matches(&c.new) {
            Some(Command::New)
        } else if matches(&c.quota) {
            Some(Command::Quota)
        } else if matches(&c.buy) {
            Some(Command::Buy)
        } else if let Some(arg) = with_arg(&c.model) {
            Some(Command::Model(arg))
        } else if let Some(arg) = with_arg(&c.image) {
            Some(Command::Image(arg))
        } else if let Some(arg) = with_arg(&c.redeem) {
            Some(Command::Redeem(arg))
        } else {
            with_arg(&c.role).map(Command::Role)
        }
    }

    /// Answers a chat command (the image command is answered by `draw` before this).
    pub(super) async fn run_command(
        &self,
        command: Command,
        uid: Uid,
        conversation: &str,
        scope: &str,
    ) -> ReplyEvent {
        let s = self.settings();
        let text = match command {
            Command::Help => Ok(help_text(&s)),
            Command::Buy => Ok(buy_text(&s)),
            Command::New => self.new_conversation(&s, conversation).await,
            Command::Quota => self.quota_command(&s, uid, scope).await,
            Command::Model(None) => Ok(self.model_list(&s, uid, scope).await),
            Command::Model(Some(name)) => self.set_model(&s, uid, &name).await,
            Command::Role(None) => Ok(self.role_list(&s, uid, scope).await),
            Command::Role(Some(id)) => self.set_role(&s, uid, scope, &id).await,
            // Answered by `draw` before commands get here.
            Command::Image(_) => Ok(s.texts.image_off.clone()),
            Command::Redeem(code) => Ok(self.redeem_command(&s, uid, code.as_deref()).await),
        };
        text.map_or_else(|event| event, free_answer)
    }

    /// `/new`: forgets the conversation.
    async fn new_conversation(
        &self,
        s: &Settings,
        conversation: &str,
    ) -> Result<String, ReplyEvent> {
        match self.inner.store.clear_conversation(conversation).await {
            Ok(()) => Ok(s.texts.new_conversation.clone()),
            Err(e) => {
                warn!(error = %e, "clearing the conversation failed");
                Err(failed(FailureKind::Unavailable, &s.texts.unavailable))
            }
        }
    }

    /// `/quota`: the balance, and the model and role the next message would get.
    async fn quota_command(
        &self,
        s: &Settings,
        uid: Uid,
        scope: &str,
    ) -> Result<String, ReplyEvent> {
        let today = s.today();
        let store = &self.inner.store;
        let read = match store.balance(uid, today, s.free_daily).await {
            Ok(b) => store.plan(uid).await.map(|plan| (b, plan)),
            Err(e) => Err(e),
        };
        match read {
            Ok((b, plan)) => {
                let (model, role) = self.current_choice(s, uid, scope).await;
                let plan = plan.filter(|p| p.active_on(today));
                // While a plan is active, today's allowance is the base and the plan's.
                let daily = s.free_daily + plan.as_ref().map_or(0, |p| p.daily_credits);
                let mut text = fill(
                    &quota_text(&s.texts.quota, &b, daily),
                    &[("model", &model), ("role", &role)],
                );
                if let Some(p) = plan {
                    text.push('\n');
                    text.push_str(&plan_text(&s.texts.quota_plan, &p, today));
                }
                Ok(text)
            }
            Err(e) => {
                warn!(error = %e, "reading the balance failed");
                Err(failed(FailureKind::Unavailable, &s.texts.unavailable))
            }
        }
    }

    /// `/model`: the models, the current one marked.
    async fn model_list(&self, s: &Settings, uid: Uid, scope: &str) -> String {
        let (current, _) = self.current_choice(s, uid, scope).await;
        let lines: Vec<String> = s
            .models
            .iter()
            .map(|m| {
                let mut line = format!("· {}（{} 额度/次）", m.name, m.credits);
                if m.paid_only || !m.groups.is_empty() {
                    line.push_str(" 🔒");
                }
                line
            })
            .collect();
        fill(
            &s.texts.model_list,
            &[
                ("current", &current),
                ("models", &lines.join("\n")),
                ("command", &first_word(&s.commands.model)),
            ],
        )
    }

    /// `/model NAME`: chooses a model the user is allowed.
    async fn set_model(&self, s: &Settings, uid: Uid, name: &str) -> Result<String, ReplyEvent> {
        let Some(model) = s.models.iter().find(|m| m.name.eq_ignore_ascii_case(name)) else {
            return Err(free_answer(fill(
                &s.texts.unknown_model,
                &[("model", name)],
            )));
        };
        if let Some(refused) = self.permitted(s, uid, model).await {
            return Err(refused);
        }
        if let Err(e) = self
            .inner
            .store
            .set_checkpoint(&policy::pref_key(uid, "model"), Some(&model.name))
            .await
        {
            warn!(error = %e, "saving the model choice failed");
            return Err(failed(FailureKind::Unavailable, &s.texts.unavailable));
        }
        Ok(fill(&s.texts.model_set, &[("model", &model.name)]))
    }

    /// `/role`: the roles, the current one named.
    async fn role_list(&self, s: &Settings, uid: Uid, scope: &str) -> String {
        let (_, current) = self.current_choice(s, uid, scope).await;
        let lines: Vec<String> = s
            .roles
            .iter()
            .map(|r| {
                if r.name.is_empty() {
                    format!("· {}", r.id)
                } else {
                    format!("· {}（{}）", r.id, r.name)
                }
            })
            .collect();
        fill(
            &s.texts.role_list,
            &[
                ("current", &current),
                ("roles", &lines.join("\n")),
                ("command", &first_word(&s.commands.role)),
            ],
        )
    }

    /// `/role ID`: chooses a role, or goes back to the default.
    async fn set_role(
        &self,
        s: &Settings,
        uid: Uid,
        scope: &str,
        id: &str,
    ) -> Result<String, ReplyEvent> {
        let role = s
            .roles
            .iter()
            .find(|r| r.id.eq_ignore_ascii_case(id) || (!r.name.is_empty() && r.name == id));
        // "默认"/"default" goes back to the scope's role (or the plain system prompt).
        let reset = matches!(id, "default" | "默认" | "none");
        if role.is_none() && !reset {
            return Err(free_answer(fill(&s.texts.unknown_role, &[("role", id)])));
        }
        if let Err(e) = self
            .inner
            .store
            .set_checkpoint(&policy::pref_key(uid, "role"), role.map(|r| r.id.as_str()))
            .await
        {
            warn!(error = %e, "saving the role choice failed");
            return Err(failed(FailureKind::Unavailable, &s.texts.unavailable));
        }
        let (_, now) = self.current_choice(s, uid, scope).await;
        Ok(fill(&s.texts.role_set, &[("role", &now)]))
    }
}

/// The first of a command's words (the one help texts show).
pub(super) fn first_word(words: &[String]) -> String {
    words.first().cloned().unwrap_or_default()
}

/// `/help`.
fn help_text(s: &Settings) -> String {
    fill(
        &s.texts.help,
        &[
            ("new", &first_word(&s.commands.new)),
            ("quota", &first_word(&s.commands.quota)),
            ("buy", &first_word(&s.commands.buy)),
        ],
    )
}

/// `/buy`: the products and where to buy them.
fn buy_text(s: &Settings) -> String {
    if s.products.is_empty() {
        return s.texts.buy_none.clone();
    }
    let lines: Vec<String> = s
        .products
        .iter()
        .map(|p| match p.plan.as_deref().and_then(|id| s.plan(id)) {
            Some(plan) => format!(
                "· {}：¥{}（会员 {} 天，每天 {} 额度）",
                p.name,
                yuan(p.price_fen),
                plan.days,
                plan.daily_credits
            ),
            None => format!("· {}：¥{}（{} 额度）", p.name, yuan(p.price_fen), p.credits),
        })
        .collect();
    let url = s.public_url.as_deref().map_or_else(
        || "/".to_owned(),
        |u| format!("{}/#buy", u.trim_end_matches('/')),
    );
    fill(
        &s.texts.buy,
        &[("products", &lines.join("\n")), ("url", &url)],
    )
}
