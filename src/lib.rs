//! chatrelay: one daemon that answers users on WeChat, WeCom, zsxq, Telegram and its own web
//! chat with any OpenAI-compatible LLM, meters their credits and sells credit packs.
//!
//! # Layout
//! Each module is to import only those below it (issue 19); `scripts/layout-check` prints the
//! import graph and any circle (the HTTP layer, reload and the channels still form one). The
//! ground floor, which imports nothing above it:
//! - [`util`]: the clock, day numbers, time zones, random ids, yuan, constant-time comparison,
//!   client addresses (`util/addr.rs`: trusted proxies, `X-Forwarded-For`, prefixes). Imports
//!   nothing of the crate.
//! - [`config`]: typed configuration; imports only `util` and the connector, storage and rules
//!   crates. `config/mod.rs` loads (TOML + `CHATRELAY__*` env + `*_file` secrets),
//!   `sections.rs` / `channels.rs` / `pay.rs` hold the section types (`pay.rs` also loads the
//!   payment key files), `read.rs` reads a section reporting every problem, `validate.rs`
//!   checks one section per function (and parses zsxq quiet hours).
//! - [`alerts`]: operators' alerts over [`alerts::AlertSink`]s at a [`alerts::Pace`]; imports
//!   nothing of the crate (the WeCom group robot sink is built in [`reload`]).
//!
//! Above it:
//! - [`app`]: builds everything from a config, serves, shuts down gracefully.
//! - [`stats`]: per-day statistics (active users, messages, tokens, cost, revenue).
//! - [`reload`]: the configuration-derived parts behind one swappable handle (with the alert
//!   sinks: the WeCom group robots); SIGHUP reloads.
//! - [`bot`]: the conversation engine, one path for every platform.
//! - [`http`]: the axum router (`/v1`, `/admin`, `/api`, `/wechat/mp`, health, metrics).
//! - [`auth`]: login codes and the tokens they buy; the admin token (`auth/admin_token.rs`).
//! - [`billing`]: products, orders, payment notifications, reconciliation, refunds.
//! - [`bounded`]: the size-capped, expiring map for anything keyed by outside input.
//! - [`zsxq`]: polls zsxq groups and answers their questions once.
//! - [`telegram`]: Telegram bots (long polling or webhook), answers streamed by edits.
//! - [`web`]: the embedded chat page and its bootstrap APIs.
//! - [`admin_cli`]: `chatrelay admin ...`, a client of the admin API.
//!
//! Wire protocols live in the `connectors/*` crates and storage in `chatrelay-storage`;
//! this crate holds the business rules and the wiring.

#![forbid(unsafe_code)]

pub mod admin_cli;
pub mod alerts;
pub mod app;
pub mod auth;
pub mod billing;
pub mod bot;
pub mod bounded;
pub mod channels;
pub mod config;
pub mod http;
pub mod leader;
pub mod reload;
pub mod stats;
pub mod util;
