//! WeCom (企业微信): self-built app callbacks (`GET/POST /wecom/{id}`) and AI bot callbacks
//! (`GET/POST /wecom/aibot/{id}`).
//!
//! The app is acknowledged at once and answered through `message/send` (WeCom retries a slow
//! callback like WeChat; retries join the one answer, and only the first delivery sends it).
//! The AI bot answers with a stream id; WeCom then asks for the stream about once a second
//! and gets the whole text so far each time, `finish` at the end. An answer still running when
//! WeCom stops asking is posted to the message's `response_url` when it is done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chatrelay_core::split::{Unit, split_message};
use chatrelay_core::{Handler, Inbound, Platform, ReplyEvent, UserKey};
use chatrelay_wechat::{
    AibotEndpoint, AibotKind, CallbackError, IncomingKind, WecomClient, WecomEndpoint, WecomQuery,
    post_response_url, stream_reply_json, text_reply_json,
};
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};

use super::AppState;
use crate::bot::Engine;
use crate::bounded::BoundedMap;
use crate::config::{WecomAibotConfig, WecomConfig};
use crate::util::now_ms;

/// WeCom's limit for one app message, in UTF-8 bytes.
const MAX_MESSAGE_BYTES: usize = 2048;
/// How long an AI bot stream (and its msgid) is kept for refreshes, late refreshes and
/// retries, from its start: WeCom refreshes for 6 minutes, then retries and stray refreshes
/// may come for a while.
const STREAM_KEEP: Duration = Duration::from_secs(1200);
/// AI bot streams (and msgids) remembered at most; the oldest go first.
const MAX_STREAMS: usize = 10_000;
/// App message ids remembered at most (for redeliveries); the oldest go first.
const MAX_SEEN: usize = 50_000;
/// How long an app message id is remembered at most (the longest `keep` asked of [`Seen`]).
const SEEN_KEEP: Duration = Duration::from_secs(600);

/// The WeCom routes.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/wecom/{id}", get(app_verify).post(app_callback))
        .route("/wecom/aibot/{id}", get(bot_verify).post(bot_callback))
}

/// Message ids seen recently, so that a redelivery does not send the answer again. Bounded:
/// at most [`MAX_SEEN`] ids, each for at most [`SEEN_KEEP`].
struct Seen(Mutex<BoundedMap<String, ()>>);

impl Default for Seen {
    fn default() -> Self {
        Self(Mutex::new(BoundedMap::new(MAX_SEEN, SEEN_KEEP)))
    }
}

impl Seen {
    /// True the first time `id` is seen (within `keep`, at most [`SEEN_KEEP`]).
    fn first(&self, id: &str, keep: Duration) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let id = id.to_owned();
        match seen.inserted_at(&id) {
            Some(at) if at.elapsed() < keep => false,
            _ => {
                seen.insert(id, ());
                true
            }
        }
    }
}

/// One WeCom self-built app.
pub struct WecomApp {
    cfg: WecomConfig,
    endpoint: WecomEndpoint,
    client: WecomClient,
    seen: Seen,
}

/// One WeCom AI bot.
pub struct WecomBot {
    cfg: WecomAibotConfig,
    endpoint: AibotEndpoint,
    http: reqwest::Client,
    /// msgid → stream id (retries of a message get the same stream). Bounded: msgids come
    /// from outside.
    by_msgid: Mutex<BoundedMap<String, String>>,
    /// Stream id → its answer so far. Bounded like `by_msgid`.
    streams: Mutex<BoundedMap<String, Arc<Mutex<StreamState>>>>,
}

#[derive(Default)]
struct StreamState {
    text: String,
    finished: bool,
    finished_at: Option<Instant>,
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
            if let Some(old) = old.filter(|o| o.cfg == *cfg) {
                apps.insert(cfg.id.clone(), old.clone());
                continue;
            }
            let endpoint = WecomEndpoint::new(
                cfg.token.expose(),
                &cfg.corp_id,
                cfg.encoding_aes_key.expose(),
            )
            .map_err(|e| anyhow::anyhow!("wecom {}: {e}", cfg.id))?;
            let client = WecomClient::new(
                &cfg.api_base,
                &cfg.corp_id,
                cfg.secret.expose(),
                cfg.agent_id,
                http.clone(),
            );
            info!(app = %cfg.id, "WeCom app at /wecom/{}", cfg.id);
            apps.insert(
                cfg.id.clone(),
                Arc::new(WecomApp {
                    cfg: cfg.clone(),
                    endpoint,
                    client,
                    seen: old
                        .map(|o| {
                            Seen(Mutex::new(
                                o.seen.0.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                            ))
                        })
                        .unwrap_or_default(),
                }),
            );
        }
        let mut bots = HashMap::new();
        for cfg in &config.wecom_aibot {
            let old = previous.and_then(|p| p.bots.get(&cfg.id));
            if let Some(old) = old.filter(|o| o.cfg == *cfg) {
                bots.insert(cfg.id.clone(), old.clone());
                continue;
            }
            let endpoint = AibotEndpoint::new(cfg.token.expose(), cfg.encoding_aes_key.expose())
                .map_err(|e| anyhow::anyhow!("wecom_aibot {}: {e}", cfg.id))?;
            info!(bot = %cfg.id, "WeCom AI bot at /wecom/aibot/{}", cfg.id);
            bots.insert(
                cfg.id.clone(),
                Arc::new(WecomBot {
                    cfg: cfg.clone(),
                    endpoint,
                    http: http.clone(),
                    by_msgid: Mutex::new(
                        old.map(|o| o.by_msgid.lock().unwrap_or_else(|p| p.into_inner()).clone())
                            .unwrap_or_else(stream_map),
                    ),
                    // The stream states are shared (Arc), so an answer still being written
                    // by a task of the old bot shows up in refreshes served by the new one.
                    streams: Mutex::new(
                        old.map(|o| o.streams.lock().unwrap_or_else(|p| p.into_inner()).clone())
                            .unwrap_or_else(stream_map),
                    ),
                }),
            );
        }
        Ok(Self { apps, bots })
    }
}

/// An empty map of AI bot streams or msgids.
fn stream_map<V>() -> BoundedMap<String, V> {
    BoundedMap::new(MAX_STREAMS, STREAM_KEEP)
}

fn refused(e: &CallbackError, what: &str, id: &str) -> Response {
    metrics::counter!("chatrelay_wecom_rejected_total").increment(1);
    warn!(%id, error = %e, "{what} refused");
    let status = match e {
        CallbackError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        CallbackError::BadSignature
        | CallbackError::StaleTimestamp
        | CallbackError::MissingParam(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    };
    (status, "refused").into_response()
}

// === self-built app ===

async fn app_verify(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WecomQuery>,
) -> Response {
    let Some(app) = st.parts().wecom.apps.get(&id).cloned() else {
        return (StatusCode::NOT_FOUND, "unknown app").into_response();
    };
    match app.endpoint.verify_url(&q) {
        Ok(echo) => echo.into_response(),
        Err(e) => refused(&e, "WeCom URL verification", &id),
    }
}

async fn app_callback(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WecomQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(app) = st.parts().wecom.apps.get(&id).cloned() else {
        return (StatusCode::NOT_FOUND, "unknown app").into_response();
    };
    let Ok(body) = body else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
    };
    let opened = match app.endpoint.open(&q, &body, now_ms() / 1000) {
        Ok(o) => o,
        Err(e) => return refused(&e, "WeCom callback", &id),
    };
    let msg = opened.message;
    let key = UserKey::new(Platform::Wecom, app.cfg.id.clone(), msg.from_user.clone());
    let message_id = msg.dedupe_id();
    let mut images = Vec::new();
    let text = match &msg.kind {
        IncomingKind::Text { content } => Some(content.clone()),
        IncomingKind::Voice {
            recognition: Some(t),
            ..
        } => Some(t.clone()),
        IncomingKind::Image { pic_url, .. } if !pic_url.is_empty() => {
            images.push(pic_url.clone());
            Some(String::new())
        }
        IncomingKind::Event {
            event, event_key, ..
        } => match event.to_ascii_lowercase().as_str() {
            "click" => event_key
                .as_deref()
                .and_then(|k| app.cfg.menu.get(k))
                .cloned(),
            "enter_agent"
                if !app.cfg.welcome.is_empty()
                    && app.seen.first(&message_id, Duration::from_secs(60)) =>
            {
                send_app(
                    &st.engine,
                    app.clone(),
                    key.user.clone(),
                    app.cfg.welcome.clone(),
                );
                None
            }
            _ => None,
        },
        _ => {
            if app.seen.first(&message_id, Duration::from_secs(600)) {
                send_app(
                    &st.engine,
                    app.clone(),
                    key.user.clone(),
                    st.engine.settings().texts.empty.clone(),
                );
            }
            None
        }
    };
    if let Some(text) = text
        && app.seen.first(&message_id, Duration::from_secs(600))
    {
        let engine = st.engine.clone();
        let span = info_span!("wecom", app = %id, user = %key.user, msg = %message_id);
        st.engine.tracker().spawn(
            async move {
                let mut inbound = Inbound::text(key.clone(), message_id, text);
                inbound.images = images;
                let claim = format!("wecom:{}#{}", key, inbound.message_id);
                let reply = engine.handle(inbound);
                let event = reply.collect().await;
                if let Some(answer) = event.user_text()
                    && engine.claim_delivery(&claim)
                {
                    let owed = matches!(event, ReplyEvent::Final { .. });
                    send_app_owed(&engine, app, &key, answer, owed);
                }
            }
            .instrument(span),
        );
    }
    // An empty 200 acknowledges: the answer goes through message/send.
    StatusCode::OK.into_response()
}

/// Sends `text` to `user` in 2048-byte parts, in order (nothing is owed for it).
fn send_app(engine: &Engine, app: Arc<WecomApp>, user: String, text: String) {
    engine.tracker().spawn(async move {
        send_parts(app, user, text).await;
    });
}

/// Sends an answer to the user behind `key`, after anything still owed to them (the outbox).
/// When `owed` (a finished answer, paid for), whatever could not be sent goes back to the
/// outbox, for their next message, instead of nowhere.
fn send_app_owed(engine: &Engine, app: Arc<WecomApp>, key: &UserKey, text: String, owed: bool) {
    let outbox = key.to_string();
    let mut all = match engine.store().outbox_take(&outbox) {
        Ok(earlier) => earlier,
        Err(e) => {
            warn!(error = %e, "reading the outbox failed");
            Vec::new()
        }
    };
    // Earlier answers are owed whatever this one is.
    let owed = owed || !all.is_empty();
    all.push(text);
    let text = all.join("\n\n");
    let engine = engine.clone();
    let user = key.user.clone();
    engine.tracker().clone().spawn(async move {
        if let Some(rest) = send_parts(app, user, text).await
            && owed
        {
            metrics::counter!("chatrelay_wecom_outbox_total").increment(1);
            if let Err(e) = engine.store().outbox_push(&outbox, &rest) {
                warn!(error = %e, "keeping an unsent answer failed; it is lost");
            }
        }
    });
}

/// Sends `text` to `user` in 2048-byte parts, in order; returns what was not sent (a part
/// failed, or shutdown came first).
async fn send_parts(app: Arc<WecomApp>, user: String, text: String) -> Option<String> {
    let parts = split_message(&text, MAX_MESSAGE_BYTES, Unit::Bytes);
    for (i, part) in parts.iter().enumerate() {
        let sent = if app.cfg.markdown && has_markup(part) {
            app.client.send_markdown(&user, part).await
        } else {
            app.client.send_text(&user, part).await
        };
        match sent {
            Ok(()) => metrics::counter!("chatrelay_wecom_sent_total").increment(1),
            Err(e) => {
                warn!(app = %app.cfg.id, error = %e, "sending a WeCom message failed");
                return Some(parts.get(i..).unwrap_or_default().concat());
            }
        }
    }
    None
}

/// Whether text uses markdown a WeCom markdown message would render (plain answers go as
/// text messages, which WeCom shows more compactly and which can be copied as is).
fn has_markup(text: &str) -> bool {
    text.contains("**")
        || text.contains('`')
        || text.contains("](")
        || text.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with('#') || l.starts_with("- ") || l.starts_with("> ") || l.starts_with("* ")
        })
}

// === AI bot ===

async fn bot_verify(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WecomQuery>,
) -> Response {
    let Some(bot) = st.parts().wecom.bots.get(&id).cloned() else {
        return (StatusCode::NOT_FOUND, "unknown bot").into_response();
    };
    match bot.endpoint.verify_url(&q) {
        Ok(echo) => echo.into_response(),
        Err(e) => refused(&e, "WeCom AI bot URL verification", &id),
    }
}

fn sealed(bot: &WecomBot, q: &WecomQuery, plaintext_json: &str) -> Response {
    let nonce = q.nonce.clone().unwrap_or_default();
    let timestamp = q.timestamp.clone().unwrap_or_default();
    let body = bot.endpoint.seal_json(plaintext_json, &nonce, &timestamp);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn bot_callback(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WecomQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(bot) = st.parts().wecom.bots.get(&id).cloned() else {
        return (StatusCode::NOT_FOUND, "unknown bot").into_response();
    };
    let Ok(body) = body else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
    };
    let cb = match bot.endpoint.open(&q, &body, now_ms() / 1000) {
        Ok(cb) => cb,
        Err(e) => return refused(&e, "WeCom AI bot callback", &id),
    };
    match &cb.kind {
        AibotKind::StreamRefresh { stream_id } => {
            let state = bot
                .streams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(stream_id)
                .cloned();
            let json = match state {
                Some(state) => {
                    let s = state.lock().unwrap_or_else(|p| p.into_inner());
                    stream_reply_json(stream_id, &s.text, s.finished)
                }
                // Unknown (e.g. the daemon restarted): end it rather than spin.
                None => stream_reply_json(stream_id, "（回答已中断，请重新提问）", true),
            };
            sealed(&bot, &q, &json)
        }
        AibotKind::Event { eventtype }
            if eventtype == "enter_chat" && !bot.cfg.welcome.is_empty() =>
        {
            sealed(&bot, &q, &text_reply_json(&bot.cfg.welcome))
        }
        AibotKind::Event { .. } => StatusCode::OK.into_response(),
        AibotKind::Text { .. } | AibotKind::Voice { .. } => {
            let user = cb.from_userid.clone().unwrap_or_default();
            let text = cb.text_without_mention().unwrap_or_default();
            let stream_id = start_stream(
                &st.engine,
                &bot,
                &cb.msgid,
                &user,
                text,
                cb.response_url.clone(),
            );
            let json = {
                let streams = bot.streams.lock().unwrap_or_else(|p| p.into_inner());
                let current = streams.get(&stream_id).cloned();
                drop(streams);
                match current {
                    Some(state) => {
                        let s = state.lock().unwrap_or_else(|p| p.into_inner());
                        stream_reply_json(&stream_id, &s.text, s.finished)
                    }
                    None => stream_reply_json(&stream_id, "", false),
                }
            };
            sealed(&bot, &q, &json)
        }
        AibotKind::Other { .. } => {
            let text = st.engine.settings().texts.empty.clone();
            sealed(&bot, &q, &stream_reply_json(&cb.msgid, &text, true))
        }
    }
}

/// The stream of a message: the one already running for this msgid, or a new one whose
/// answer is collected into the shared state.
fn start_stream(
    engine: &Engine,
    bot: &Arc<WecomBot>,
    msgid: &str,
    user: &str,
    text: String,
    response_url: Option<String>,
) -> String {
    let mut by_msgid = bot.by_msgid.lock().unwrap_or_else(|p| p.into_inner());
    let msgid_key = msgid.to_owned();
    if let Some(existing) = by_msgid.get(&msgid_key) {
        return existing.clone();
    }
    let stream_id = crate::util::random_id();
    by_msgid.insert(msgid_key, stream_id.clone());
    drop(by_msgid);
    let state = Arc::new(Mutex::new(StreamState::default()));
    bot.streams
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(stream_id.clone(), state.clone());
    let key = UserKey::new(Platform::Wecom, bot.cfg.id.clone(), user.to_owned());
    let inbound = Inbound::text(key, msgid, text);
    let mut reply = engine.handle(inbound);
    let window = Duration::from_secs(bot.cfg.stream_window_secs);
    let started = Instant::now();
    let http = bot.http.clone();
    let span = info_span!("wecom_aibot", bot = %bot.cfg.id, user = %user, msg = %msgid);
    engine.tracker().spawn(
        async move {
            let mut final_text = None;
            while let Some(event) = reply.next().await {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                match event {
                    ReplyEvent::Delta(d) => s.text.push_str(&d),
                    terminal => {
                        if let Some(text) = terminal.user_text() {
                            s.text = text;
                        }
                        s.finished = true;
                        s.finished_at = Some(Instant::now());
                        final_text = Some(s.text.clone());
                        break;
                    }
                }
            }
            if final_text.is_none() {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                s.finished = true;
                s.finished_at = Some(Instant::now());
            }
            // WeCom stopped asking for the stream: the answer goes to response_url.
            if started.elapsed() >= window
                && let (Some(url), Some(text)) = (response_url, final_text)
                && let Err(e) = post_response_url(&http, &url, &text).await
            {
                warn!(error = %e, "posting a late answer to response_url failed");
            }
        }
        .instrument(span),
    );
    stream_id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flood_of_message_ids_stays_within_the_bounds() {
        let seen = Seen::default();
        for i in 0..100_000 {
            assert!(seen.first(&format!("m{i}"), SEEN_KEEP));
        }
        let len = seen.0.lock().unwrap().len();
        assert!(len <= MAX_SEEN, "{len}");
        assert!(!seen.first("m99999", SEEN_KEEP), "recent ids still dedupe");
        // The AI bot's maps, as start_stream fills them.
        let mut by_msgid = stream_map::<String>();
        let mut streams = stream_map::<Arc<Mutex<StreamState>>>();
        for i in 0..100_000 {
            by_msgid.insert(format!("msgid-{i}"), format!("stream-{i}"));
            streams.insert(format!("stream-{i}"), Arc::default());
        }
        assert!(by_msgid.len() <= MAX_STREAMS && streams.len() <= MAX_STREAMS);
        assert_eq!(
            by_msgid.get(&"msgid-99999".to_owned()).map(String::as_str),
            Some("stream-99999")
        );
    }

    #[test]
    fn markup_detection() {
        assert!(!has_markup("Hello from the fake upstream — 你好!"));
        assert!(!has_markup("1 - 2 = -1"));
        assert!(has_markup("# 标题"));
        assert!(has_markup("用 `cargo` 构建"));
        assert!(has_markup("见 [文档](https://example.com)"));
        assert!(has_markup("步骤：\n- 一\n- 二"));
        assert!(has_markup("**重点**"));
    }
}
