//! chatrelay: one daemon that answers users on WeChat, WeCom, zsxq, Telegram and its own web
//! chat with any OpenAI-compatible LLM, meters their credits and sells credit packs.
//!
//! # Layout
//! Each module is to import only those below it (issue 19); `scripts/layout-check` prints the
//! import graph and any circle (none now). The ground floor, which imports nothing above it:
//! - [`util`]: the clock, day numbers, time zones, random ids, yuan, constant-time comparison,
//!   client addresses (`util/addr.rs`: trusted proxies, `X-Forwarded-For`, prefixes), and
//!   [`util::Current`], the handle through which a module reads the generation a reload put
//!   in force without importing [`reload`]. Imports nothing of the crate.
//! - [`config`]: typed configuration; imports only `util` and the connector, storage and rules
//!   crates. `config/mod.rs` loads (TOML + `CHATRELAY__*` env + `*_file` secrets),
//!   `sections.rs` / `channels.rs` / `pay.rs` hold the section types (`pay.rs` also loads the
//!   payment key files), `read.rs` reads a section reporting every problem, `validate.rs`
//!   checks one section per function (and parses zsxq quiet hours).
//! - [`alerts`]: operators' alerts over [`alerts::AlertSink`]s at a [`alerts::Pace`]; imports
//!   nothing of the crate (the WeCom group robot sink is built in [`reload`]).
//!
//! Above it, from the bottom up (each imports only what is listed before it):
//! - [`stats`]: per-day statistics (active users, messages, tokens, cost, revenue).
//! - [`bounded`]: the size-capped, expiring map for anything keyed by outside input.
//! - [`engine`]: the conversation engine, one path for every platform; knows no channel.
//! - [`auth`]: login codes and the tokens they buy, the bearer of a request, the admin token
//!   (`auth/admin_token.rs`).
//! - [`billing`]: products, orders, reconciliation, refunds; the providers' payment
//!   notifications (`billing/notify.rs`, `/pay/*`) over their own state.
//! - [`channels`]: one room per channel, each with its own axum state: `mp.rs` (Official
//!   Accounts), `wecom/` (WeCom: `app.rs` the self-built apps, `aibot.rs` the AI bots),
//!   `telegram.rs`, `zsxq.rs` (a poller), `web/` (the page, guests, the account API `api.rs`,
//!   the shop `shop.rs`, `/v1`).
//!   `channels/mod.rs` is the registry: builds them from a config taking over from the
//!   previous generation, gives each its state, merges their routes, runs their pollers.
//! - [`reload`]: the configuration-derived parts (admin token, shop, channels) behind one
//!   swappable handle (with the alert sinks: the WeCom group robots); SIGHUP reloads.
//! - [`http`]: the axum router: merges the channels' and billing's routers with `/admin`,
//!   health and metrics (their [`http::AppState`]), under the limits ([`http::limits`]).
//! - [`app`]: builds everything from a config, serves, shuts down gracefully.
//! - [`admin`]: the admin API under `/admin`, its routes by resource (users, credits, tokens,
//!   orders, zsxq, ops) behind one auth layer, and its client `chatrelay admin ...`
//!   ([`admin::cli`]: commands, HTTP client, renderers), both built from [`admin::paths`].
//!
//! Wire protocols live in the `connectors/*` crates and storage in `chatrelay-storage`;
//! this crate holds the business rules and the wiring.

#![forbid(unsafe_code)]

pub mod admin;
pub mod alerts;
pub mod app;
pub mod auth;
pub mod billing;
pub mod bounded;
pub mod channels;
pub mod codes;
pub mod config;
pub mod console;
pub mod engine;
pub mod http;
pub mod leader;
pub mod reload;
pub mod stats;
pub mod util;

/// What `chatrelay --version` prints after the name: the crate version, the git commit and
/// the UTC build day (from `build.rs`: `CHATRELAY_GIT_COMMIT` or `git rev-parse`, else
/// "unknown"; `SOURCE_DATE_EPOCH` or the build time), so a bug report names its build.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CHATRELAY_GIT_COMMIT"),
    ", built ",
    env!("CHATRELAY_BUILD_DATE"),
    ")"
);

#[cfg(test)]
mod version_tests {
    /// The version line has its three parts, and the date is a real `YYYY-MM-DD`.
    #[test]
    fn long_version_names_version_commit_and_date() {
        let v = super::LONG_VERSION;
        let rest = v
            .strip_prefix(concat!(env!("CARGO_PKG_VERSION"), " (commit "))
            .unwrap_or_else(|| panic!("version first: {v}"));
        let (commit, rest) = rest.split_once(", built ").unwrap_or_else(|| panic!("{v}"));
        assert!(!commit.is_empty() && !commit.contains(' '), "{v}");
        let date = rest.strip_suffix(')').unwrap_or_else(|| panic!("{v}"));
        let parts: Vec<u32> = date.split('-').filter_map(|p| p.parse().ok()).collect();
        assert_eq!(parts.len(), 3, "{v}");
        assert!(
            parts[0] >= 2024 && (1..=12).contains(&parts[1]) && (1..=31).contains(&parts[2]),
            "{v}"
        );
    }
}
