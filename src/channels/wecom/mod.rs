//! WeCom (企业微信): self-built app callbacks (`GET/POST /wecom/{id}`) and AI bot callbacks
//! (`GET/POST /wecom/aibot/{id}`).
//!
//! The app is acknowledged at once and answered through `message/send` (WeCom retries a slow
//! callback like WeChat; retries join the one answer, and only the first delivery sends it).
//! The AI bot answers with a stream id; WeCom then asks for the stream about once a second
//! and gets the whole text so far each time, `finish` at the end. An answer still running when
//! WeCom stops asking is posted to the message's `response_url` when it is done.
//!
//! A finished, charged AI-bot answer that never reaches the user is refunded (the bot has no
//! outbox): the daemon shut down before WeCom fetched the stream's end, the stream was dropped
//! from memory first (WeCom was told the answer was interrupted), or WeCom stopped asking and
//! the post to `response_url` failed (or there was none).
//!
//! This file owns the routes, the apps and bots in force ([`Wecom`]) and the lookup of the
//! one a request names; `app.rs` is the self-built app (callbacks, `message/send`, its
//! outbox), `aibot.rs` the AI bot (streams, refreshes, `response_url`, refunds), `common.rs`
//! what both use (the refusal of a bad callback).

mod aibot;
mod app;
mod common;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chatrelay_wechat::WecomQuery;

use self::aibot::WecomBot;
use self::app::WecomApp;
use crate::engine::Engine;
use crate::util::Current;

/// The WeCom routes.
pub fn routes() -> axum::Router<WecomState> {
    axum::Router::new()
        .route("/wecom/{id}", get(app_verify).post(app_callback))
        .route("/wecom/aibot/{id}", get(bot_verify).post(bot_callback))
}

/// What the WeCom handlers need.
#[derive(Clone)]
pub struct WecomState {
    /// The conversation engine.
    pub engine: Engine,
    /// The apps and bots in force (a reload swaps them).
    pub wecom: Current<Wecom>,
}

/// The configured WeCom apps and bots, by id.
#[derive(Default)]
pub struct Wecom {
    apps: HashMap<String, Arc<WecomApp>>,
    bots: HashMap<String, Arc<WecomBot>>,
}

impl Wecom {
    /// Builds them from a validated configuration. On a reload, `previous` hands over what
    /// is in flight: an app or bot whose configuration did not change is kept as it is, and a
    /// changed one takes over the old one's redelivery marks and AI-bot streams, so nothing a
    /// user is waiting for is lost.
    pub fn from_config(
        config: &crate::config::Config,
        http: &reqwest::Client,
        previous: Option<&Wecom>,
    ) -> anyhow::Result<Self> {
        let mut apps = HashMap::new();
        for cfg in &config.wecom {
            let old = previous.and_then(|p| p.apps.get(&cfg.id));
            apps.insert(cfg.id.clone(), WecomApp::build(cfg, http, old)?);
        }
        let mut bots = HashMap::new();
        for cfg in &config.wecom_aibot {
            let old = previous.and_then(|p| p.bots.get(&cfg.id));
            bots.insert(cfg.id.clone(), WecomBot::build(cfg, http, old)?);
        }
        Ok(Self { apps, bots })
    }
}

// === self-built app ===

async fn app_verify(
    State(st): State<WecomState>,
    Path(id): Path<String>,
    Query(q): Query<WecomQuery>,
) -> Response {
    let Some(app) = st.wecom.get().apps.get(&id).cloned() else {
        return (StatusCode::NOT_FOUND, "unknown app").into_response();
    };
    app.verify(&q, &id)
}

async fn app_callback(
    State(st): State<WecomState>,
    Path(id): Path<String>,
    Query(q): Query<WecomQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(app) = st.wecom.get().apps.get(&id).cloned() else {
        return (StatusCode::NOT_FOUND, "unknown app").into_response();
    };
    app::callback(&st.engine, app, &id, &q, body)
}

// === AI bot ===

async fn bot_verify(
    State(st): State<WecomState>,
    Path(id): Path<String>,
    Query(q): Query<WecomQuery>,
) -> Response {
    let Some(bot) = st.wecom.get().bots.get(&id).cloned() else {
        return (StatusCode::NOT_FOUND, "unknown bot").into_response();
    };
    bot.verify(&q, &id)
}

async fn bot_callback(
    State(st): State<WecomState>,
    Path(id): Path<String>,
    Query(q): Query<WecomQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(bot) = st.wecom.get().bots.get(&id).cloned() else {
        return (StatusCode::NOT_FOUND, "unknown bot").into_response();
    };
    aibot::callback(&st.engine, bot, &id, &q, body)
}
