//! The WeCom self-built app: its callbacks, answered through `message/send` in 2048-byte
//! parts, the redelivery marks ([`Seen`]) and the outbox of answers that could not be sent.
//!
//! A voice message (`MsgType=voice`, AMR) goes to the engine as a voice message whose audio
//! downloads through WeCom's `media/get` with the app's token ([`MediaVoice`]); the engine
//! converts, transcribes and prices it (`[speech]`) like the Official Account's. The callback
//! is acknowledged at once, so the download and transcription take what time they need, and
//! WeCom's retries of the message join the one answer (one download).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chatrelay_core::split::{Unit, split_message};
use chatrelay_core::voice::{Voice, VoiceSource};
use chatrelay_core::{Handler, Inbound, Platform, ReplyEvent, UserKey};
use chatrelay_wechat::{
    Incoming, IncomingKind, MediaVoice, WecomClient, WecomEndpoint, WecomQuery,
};
use tracing::{Instrument, info, info_span, warn};

use super::common::refused;
use crate::bounded::BoundedMap;
use crate::config::WecomConfig;
use crate::engine::Engine;
use crate::util::now_ms;

/// WeCom's limit for one app message, in UTF-8 bytes.
const MAX_MESSAGE_BYTES: usize = 2048;
/// App message ids remembered at most (for redeliveries); the oldest go first.
const MAX_SEEN: usize = 50_000;
/// How long an app message id is remembered at most (the longest `keep` asked of [`Seen`]).
const SEEN_KEEP: Duration = Duration::from_secs(600);

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

impl WecomApp {
    /// The app for `cfg`: `old` itself when its configuration did not change, else a new one
    /// that takes over `old`'s redelivery marks.
    pub fn build(
        cfg: &WecomConfig,
        http: &reqwest::Client,
        old: Option<&Arc<WecomApp>>,
    ) -> anyhow::Result<Arc<Self>> {
        if let Some(old) = old.filter(|o| o.cfg == *cfg) {
            return Ok(old.clone());
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
        Ok(Arc::new(WecomApp {
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
        }))
    }

    /// Answers WeCom's URL verification (`GET /wecom/{id}`).
    pub fn verify(&self, q: &WecomQuery, id: &str) -> Response {
        match self.endpoint.verify_url(q) {
            Ok(echo) => echo.into_response(),
            Err(e) => refused(&e, "WeCom URL verification", id),
        }
    }
}

/// Handles a callback (`POST /wecom/{id}`) to `app`: acknowledges it at once and answers
/// through `message/send`.
pub fn callback(
    engine: &Engine,
    app: Arc<WecomApp>,
    id: &str,
    q: &WecomQuery,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Ok(body) = body else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
    };
    let opened = match app.endpoint.open(q, &body, now_ms() / 1000) {
        Ok(o) => o,
        Err(e) => return refused(&e, "WeCom callback", id),
    };
    let msg = opened.message;
    let key = UserKey::new(Platform::Wecom, app.cfg.id.clone(), msg.from_user.clone());
    let message_id = msg.dedupe_id();
    let mut images = Vec::new();
    let mut voice = None;
    let text = incoming_text(
        engine,
        &app,
        &msg,
        &key,
        &message_id,
        &mut images,
        &mut voice,
    );
    if let Some(text) = text
        && app.seen.first(&message_id, Duration::from_secs(600))
    {
        let mut inbound = Inbound::text(key, message_id, text);
        inbound.images = images;
        inbound.voice = voice;
        answer(engine, app, id, inbound);
    }
    // An empty 200 acknowledges: the answer goes through message/send.
    StatusCode::OK.into_response()
}

/// The text a message asks the engine about (a picture adds its URL to `images` and asks
/// with no text; a voice message sets `voice` and asks with no text: the engine takes its
/// text from WeCom's `Recognition` or by transcribing it), or None: an event answered here
/// (the welcome) or not at all, or a kind the app cannot read (told so, once).
fn incoming_text(
    engine: &Engine,
    app: &Arc<WecomApp>,
    msg: &Incoming,
    key: &UserKey,
    message_id: &str,
    images: &mut Vec<String>,
    voice: &mut Option<Voice>,
) -> Option<String> {
    match &msg.kind {
        IncomingKind::Text { content } => Some(content.clone()),
        IncomingKind::Voice {
            media_id,
            format,
            recognition,
        } => {
            *voice = Some(app_voice(
                &app.client,
                media_id,
                format,
                recognition.clone(),
            ));
            Some(String::new())
        }
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
                    && app.seen.first(message_id, Duration::from_secs(60)) =>
            {
                send_app(
                    engine,
                    app.clone(),
                    key.user.clone(),
                    app.cfg.welcome.clone(),
                );
                None
            }
            _ => None,
        },
        _ => {
            if app.seen.first(message_id, Duration::from_secs(600)) {
                send_app(
                    engine,
                    app.clone(),
                    key.user.clone(),
                    engine.settings().texts.empty.clone(),
                );
            }
            None
        }
    }
}

/// A voice message to the app: WeCom's transcript when it gave one (plain chat, voice
/// price), else its audio, downloaded with the app's token. WeCom records voice as AMR; a
/// missing `Format` is taken as that.
fn app_voice(
    client: &WecomClient,
    media_id: &str,
    format: &str,
    recognition: Option<String>,
) -> Voice {
    let format = if format.trim().is_empty() {
        "amr"
    } else {
        format
    };
    let source = MediaVoice::wecom(client.clone(), media_id, format);
    let mut voice = Voice::new(format, Some(Arc::new(source) as Arc<dyn VoiceSource>));
    voice.recognition = recognition.filter(|t| !t.trim().is_empty());
    voice
}

/// Asks the engine about `inbound` (text, pictures or a voice message) in a task and sends
/// the answer, unless another delivery of the message (here or in another daemon) already
/// claimed it.
fn answer(engine: &Engine, app: Arc<WecomApp>, id: &str, inbound: Inbound) {
    let key = inbound.key.clone();
    let span = info_span!("wecom", app = %id, user = %key.user, msg = %inbound.message_id);
    let engine = engine.clone();
    engine.tracker().clone().spawn(
        async move {
            let claim = format!("wecom:{}#{}", key, inbound.message_id);
            let reply = engine.handle(inbound);
            let event = reply.collect().await;
            if let Some(answer) = event.user_text()
                && engine.claim_delivery(&claim).await
            {
                let owed = matches!(event, ReplyEvent::Final { .. });
                send_app_owed(&engine, app, &key, answer, owed).await;
            }
        }
        .instrument(span),
    );
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
async fn send_app_owed(
    engine: &Engine,
    app: Arc<WecomApp>,
    key: &UserKey,
    text: String,
    owed: bool,
) {
    let outbox = key.to_string();
    let mut all = match engine.outbox_take(&outbox).await {
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
            if let Err(e) = engine.outbox_push(&outbox, &rest).await {
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

#[cfg(test)]
mod tests {
    use chatrelay_core::voice::{Audio, VoiceError};

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
    }

    #[test]
    fn a_voice_message_is_amr_unless_said_and_keeps_only_a_real_recognition() {
        let client = WecomClient::new("http://127.0.0.1:9", "ww", "s", 1, reqwest::Client::new());
        let v = app_voice(&client, "m1", " ", Some("  ".into()));
        assert_eq!(v.format, "amr");
        assert_eq!(
            v.recognition, None,
            "a blank transcript means: transcribe it"
        );
        assert!(v.source.is_some());
        let v = app_voice(&client, "m1", "speex", Some("你好".into()));
        assert_eq!(v.format, "speex");
        assert_eq!(v.recognition.as_deref(), Some("你好"));
    }

    /// A loopback qyapi: gettoken, and media/get serving `file` for media_id `m1` (40007 for
    /// any other).
    async fn qyapi(file: &'static [u8]) -> String {
        use axum::routing::get;
        let app =
            axum::Router::new()
                .route(
                    "/cgi-bin/gettoken",
                    get(|| async {
                        r#"{"errcode":0,"errmsg":"ok","access_token":"T","expires_in":7200}"#
                    }),
                )
                .route(
                    "/cgi-bin/media/get",
                    get(
                        move |q: axum::extract::Query<
                            std::collections::HashMap<String, String>,
                        >| async move {
                            if q.get("media_id").map(String::as_str) == Some("m1")
                                && q.get("access_token").map(String::as_str) == Some("T")
                            {
                                ([("content-type", "audio/amr")], file.to_vec()).into_response()
                            } else {
                                (
                                    [("content-type", "application/json")],
                                    r#"{"errcode":40007,"errmsg":"invalid media_id"}"#,
                                )
                                    .into_response()
                            }
                        },
                    ),
                );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    #[tokio::test]
    async fn the_voice_source_downloads_with_the_apps_token_within_the_limit() {
        const AMR: &[u8] = b"#!AMR\n\x3c0123456789";
        let base = qyapi(AMR).await;
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let client = WecomClient::new(&base, "ww", "s", 1, http);
        let voice = app_voice(&client, "m1", "amr", None);
        let source = voice.source.unwrap();
        let audio = source.fetch(1000).await.unwrap();
        assert_eq!(
            audio,
            Audio {
                bytes: AMR.to_vec(),
                format: "amr".into()
            }
        );
        assert_eq!(
            source.fetch(5).await.unwrap_err(),
            VoiceError::TooBig { max: 5 }
        );
        let gone = app_voice(&client, "m2", "amr", None).source.unwrap();
        let err = gone.fetch(1000).await.unwrap_err();
        assert!(
            matches!(&err, VoiceError::Download(e) if e.contains("40007")),
            "{err:?}"
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
