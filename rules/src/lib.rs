//! Content rules for chatrelay: the sensitive-word filter and keyword
//! replies.
//!
//! This crate owns:
//! - the `[[filters]]` and `[[keywords]]` configuration types
//!   ([`FilterRuleConfig`], [`KeywordRuleConfig`]) and their validation,
//!   which reports every problem at once as [`RuleError`]s;
//! - [`ContentFilter`]: one Aho-Corasick automaton over the words of all
//!   filter rules, checking questions and answers (whole, or streamed piece
//!   by piece with [`StreamCheck`]) after a [`normalize`]ation that defeats
//!   the usual dodges (spaces, punctuation, full-width letters, zero-width
//!   characters, upper case);
//! - [`KeywordReplies`]: fixed answers to matching messages, given before
//!   (and instead of) an LLM call;
//! - [`scope_matches`]: which platform/account a rule applies to.
//!
//! It does no I/O except reading word files while building a filter, keeps
//! no global state, and never panics on any text: the daemon can rebuild
//! both structures on reload and swap them behind an `Arc`.

#![warn(missing_docs)]

mod filter;
mod keywords;
mod normalize;

pub use filter::{
    ApplyTo, ContentFilter, DEFAULT_REFUSAL, Direction, FilterRuleConfig, Hit, MAX_WORD_CHARS,
    StreamCheck,
};
pub use keywords::{KeywordMatch, KeywordReplies, KeywordReply, KeywordRuleConfig};
pub use normalize::normalize;

/// One problem in the rules configuration.
///
/// Displays as `key (line N): message`, for example
/// `filters[2].word_files[0] (line 17): line is not valid UTF-8 ..`, where
/// `key` is the path of the offending value in the configuration
/// (`filters[i].id`, `filters[i].words[j]`, `filters[i].word_files[k]`,
/// `keywords[i].patterns[j]`, ..., indices from 0) and the line (from 1)
/// is the line of a word file, when the problem is on one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}{}: {message}", line_suffix(*.line))]
pub struct RuleError {
    /// Where the problem is, as a path into the configuration.
    pub key: String,
    /// The 1-based line of a word file, when the problem is on one.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl RuleError {
    /// A problem with `key` not tied to a file line.
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            line: None,
            message: message.into(),
        }
    }
}

/// ` (line N)` or nothing.
fn line_suffix(line: Option<usize>) -> String {
    line.map(|n| format!(" (line {n})")).unwrap_or_default()
}

/// Whether the rule scope entry `entry` covers the message scope `scope`.
///
/// A scope string names where a message comes from: `web`, `v1`,
/// `telegram`, `telegram:<bot id>`, `wechat_mp:<account id>`,
/// `wecom:<id>`, `zsxq:<group id>`. An entry matches when it equals the
/// scope, or equals its platform part (the text before the first `:`), so
/// `telegram` covers every bot while `telegram:42` covers one.
///
/// ```
/// use chatrelay_rules::scope_matches;
/// assert!(scope_matches("telegram", "telegram:42"));
/// assert!(scope_matches("telegram:42", "telegram:42"));
/// assert!(!scope_matches("telegram:42", "telegram:43"));
/// assert!(!scope_matches("telegram:42", "telegram"));
/// assert!(!scope_matches("wechat", "wechat_mp:gh_1"));
/// ```
#[must_use]
pub fn scope_matches(entry: &str, scope: &str) -> bool {
    entry == scope
        || scope
            .split_once(':')
            .is_some_and(|(platform, _)| entry == platform)
}

/// Whether a rule with `scopes` applies in `scope` (an empty list applies
/// everywhere).
pub(crate) fn scopes_cover(scopes: &[String], scope: &str) -> bool {
    scopes.is_empty() || scopes.iter().any(|e| scope_matches(e, scope))
}

/// Checks the rule ids of one table (`filters` or `keywords`): each must be
/// non-empty `[A-Za-z0-9_-]+` and unique.
pub(crate) fn check_ids<'a>(
    table: &str,
    ids: impl Iterator<Item = &'a str>,
    errors: &mut Vec<RuleError>,
) {
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, id) in ids.enumerate() {
        let key = format!("{table}[{i}].id");
        if id.is_empty() {
            errors.push(RuleError::new(key, "id must not be empty"));
        } else if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            errors.push(RuleError::new(
                key,
                format!("id {id:?} may only contain A-Z, a-z, 0-9, '_' and '-'"),
            ));
        } else if let Some(first) = seen.get(id) {
            errors.push(RuleError::new(
                key,
                format!("duplicate id {id:?} (also {table}[{first}].id)"),
            ));
        } else {
            seen.insert(id, i);
        }
    }
}

/// Checks scope entries: an empty entry would silently match nothing.
pub(crate) fn check_scopes(prefix: &str, scopes: &[String], errors: &mut Vec<RuleError>) {
    for (j, entry) in scopes.iter().enumerate() {
        if entry.trim().is_empty() {
            errors.push(RuleError::new(
                format!("{prefix}.scopes[{j}]"),
                "scope must not be empty (leave the list empty to apply everywhere)",
            ));
        } else if entry.trim() != entry {
            errors.push(RuleError::new(
                format!("{prefix}.scopes[{j}]"),
                format!("scope {entry:?} has leading or trailing spaces"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        assert!(scope_matches("web", "web"));
        assert!(scope_matches("v1", "v1"));
        assert!(!scope_matches("web", "v1"));
        assert!(scope_matches("wechat_mp", "wechat_mp:gh_abc"));
        assert!(scope_matches("wechat_mp:gh_abc", "wechat_mp:gh_abc"));
        assert!(!scope_matches("wechat_mp:gh_abc", "wechat_mp:gh_abd"));
        assert!(scope_matches("zsxq", "zsxq:123:456"));
        assert!(!scope_matches("zsxq:123", "zsxq:123:456"));
        assert!(!scope_matches("", "web"));
        assert!(scope_matches("", ""));
        assert!(scopes_cover(&[], "anything"));
        assert!(scopes_cover(
            &["web".into(), "telegram".into()],
            "telegram:1"
        ));
        assert!(!scopes_cover(&["web".into()], "telegram:1"));
    }

    #[test]
    fn error_display() {
        let e = RuleError {
            key: "filters[2].word_files[0]".into(),
            line: Some(17),
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "filters[2].word_files[0] (line 17): bad");
        assert_eq!(
            RuleError::new("filters[0].id", "x").to_string(),
            "filters[0].id: x"
        );
    }

    #[test]
    fn ids() {
        let mut errors = Vec::new();
        check_ids(
            "filters",
            ["a", "", "b c", "a", "ok_-9"].into_iter(),
            &mut errors,
        );
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["filters[1].id", "filters[2].id", "filters[3].id"]);
        assert!(errors[2].message.contains("filters[0].id"));
    }
}
