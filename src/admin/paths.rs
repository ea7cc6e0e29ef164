//! The admin API's paths: the routes are built from them and the CLI fills them in
//! ([`fill`]), so a path is written once for both sides.

use std::fmt::Write as _;

/// Users: `GET` finds or lists, `POST` creates.
pub const USERS: &str = "/admin/users";
/// One user's balance, identities, tokens, ledger and conversations.
pub const USER: &str = "/admin/users/{uid}";
/// Adds paid credits.
pub const GRANT: &str = "/admin/users/{uid}/grant";
/// Takes paid credits back.
pub const REVOKE: &str = "/admin/users/{uid}/revoke";
/// Bans or unbans.
pub const BAN: &str = "/admin/users/{uid}/ban";
/// Creates a user token.
pub const USER_TOKENS: &str = "/admin/users/{uid}/tokens";
/// Links a platform identity.
pub const IDENTITIES: &str = "/admin/users/{uid}/identities";
/// Unlinks a platform identity.
pub const IDENTITY: &str = "/admin/users/{uid}/identities/{key}";
/// A user's usage log (用量明细), newest first: `?before=&limit=`.
pub const USER_USAGE: &str = "/admin/users/{uid}/usage";
/// Joins or leaves groups.
pub const GROUPS: &str = "/admin/users/{uid}/groups";
/// Revokes a user token.
pub const TOKEN_REVOKE: &str = "/admin/tokens/revoke";
/// Orders, newest first.
pub const ORDERS: &str = "/admin/orders";
/// Orders as CSV.
pub const ORDERS_CSV: &str = "/admin/orders.csv";
/// One order with its history.
pub const ORDER: &str = "/admin/orders/{id}";
/// Refunds an order.
pub const REFUND: &str = "/admin/orders/{id}/refund";
/// zsxq groups and their state.
pub const ZSXQ: &str = "/admin/zsxq";
/// Pauses a zsxq group.
pub const ZSXQ_PAUSE: &str = "/admin/zsxq/{id}/pause";
/// Resumes a zsxq group.
pub const ZSXQ_RESUME: &str = "/admin/zsxq/{id}/resume";
/// Replaces a zsxq group's token.
pub const ZSXQ_TOKEN: &str = "/admin/zsxq/{id}/token";
/// Redemption code batches: `POST` makes one, `GET` lists (`?batch=ID`: its codes).
pub const CODES: &str = "/admin/codes";
/// Revokes a batch's unused codes.
pub const CODES_REVOKE: &str = "/admin/codes/{batch}/revoke";
/// Per-day figures.
pub const STATS: &str = "/admin/stats";
/// The change log of the admin API, newest first: `?before=&limit=`.
pub const CHANGES: &str = "/admin/changes";
/// A user's ledger, newest first: `?before=<seq>&limit=`.
pub const USER_LEDGER: &str = "/admin/users/{uid}/ledger";
/// Ledger audit.
pub const AUDIT: &str = "/admin/audit";
/// A database snapshot.
pub const BACKUP: &str = "/admin/backup";
/// Reloads the configuration.
pub const RELOAD: &str = "/admin/reload";
/// The running configuration (secrets redacted), the version and the uptime.
pub const CONFIG: &str = "/admin/config";
/// Content-rule hits.
pub const HITS: &str = "/admin/hits";
/// LLM upstream health.
pub const UPSTREAMS: &str = "/admin/upstreams";

/// `template` with each `{name}` segment replaced, in order, by the next of `values`,
/// percent-encoded.
#[must_use]
pub fn fill(template: &str, values: &[&str]) -> String {
    let mut values = values.iter();
    substitute(template, |_| {
        encode(values.next().copied().unwrap_or_default())
    })
}

/// `template` with each `{name}` replaced by `with(name)`; an unclosed `{` stays as it is.
pub fn substitute(template: &str, mut with: impl FnMut(&str) -> String) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some((before, after)) = rest.split_once('{') {
        let Some((name, tail)) = after.split_once('}') else {
            break;
        };
        out.push_str(before);
        out.push_str(&with(name));
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// `?k=v&...` of the pairs that have a value, percent-encoded; empty when none has.
#[must_use]
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        if let Some(v) = v {
            out.push(if out.is_empty() { '?' } else { '&' });
            let _ = write!(out, "{k}={}", encode(v));
        }
    }
    out
}

/// Percent-encodes a query or path value.
#[must_use]
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_filled_in_order() {
        assert_eq!(fill(USER, &["7"]), "/admin/users/7");
        assert_eq!(
            fill(IDENTITY, &["7", "mp:main:o6 x"]),
            "/admin/users/7/identities/mp:main:o6%20x"
        );
        assert_eq!(fill(STATS, &[]), "/admin/stats");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("mp:main:o6 a&b"), "mp:main:o6%20a%26b");
        assert_eq!(encode("小"), "%E5%B0%8F");
    }

    #[test]
    fn queries_skip_absent_values() {
        assert_eq!(query(&[]), "");
        assert_eq!(query(&[("a", None)]), "");
        assert_eq!(
            query(&[
                ("a", None),
                ("b", Some("x y".into())),
                ("c", Some("1".into()))
            ]),
            "?b=x%20y&c=1"
        );
    }
}
