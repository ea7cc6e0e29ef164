//! The WeCom AI bot: a message is answered with a stream id, and WeCom then asks for the
//! stream about once a second and gets the whole text so far each time, `finish` at the end.
//! An answer still running when WeCom stops asking is posted to the message's `response_url`.
//! A finished, charged answer that never reaches the user is refunded (the bot has no outbox).
//!
//! A voice message (`msgtype: voice`) carries WeCom's own transcript (`voice.content`; the
//! bot gets no audio): it goes to the engine as a voice message with a platform transcript,
//! like the Official Account's `Recognition`: plain chat (never a command), the `[speech]`
//! voice price added. An empty transcript is answered at once, free.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chatrelay_core::voice::{Audio, Voice, VoiceError, VoiceSource};
use chatrelay_core::{Handler, Inbound, Platform, ReplyEvent, UserKey};
use chatrelay_wechat::{
    AibotEndpoint, AibotKind, WecomQuery, post_response_url, stream_reply_json, text_reply_json,
};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::common::refused;
use crate::bounded::BoundedMap;
use crate::config::WecomAibotConfig;
use crate::engine::{Engine, fill};
use crate::util::now_ms;

/// How long an AI bot stream (and its msgid) is kept for refreshes, late refreshes and
/// retries, from its start: WeCom refreshes for 6 minutes, then retries and stray refreshes
/// may come for a while.
const STREAM_KEEP: Duration = Duration::from_secs(1200);
/// AI bot streams (and msgids) remembered at most; the oldest go first.
const MAX_STREAMS: usize = 10_000;
/// What a refresh of a stream this daemon does not have (any more) gets, and a stream whose
/// answer was given up on: the user is told to ask again (and was not charged).
const INTERRUPTED: &str = "（回答已中断，请重新提问）";

/// One WeCom AI bot.
pub struct WecomBot {
    cfg: WecomAibotConfig,
    endpoint: AibotEndpoint,
    http: reqwest::Client,
    /// msgid → stream id (retries of a message get the same stream). Bounded: msgids come
    /// from outside.
    by_msgid: Mutex<BoundedMap<String, String>>,
    /// Stream id → its answer so far. Bounded like `by_msgid`.
    streams: Mutex<BoundedMap<String, Arc<Stream>>>,
}

impl WecomBot {
    /// The bot for `cfg`: `old` itself when its configuration did not change, else a new one
    /// that takes over `old`'s msgids and streams.
    pub fn build(
        cfg: &WecomAibotConfig,
        http: &reqwest::Client,
        old: Option<&Arc<WecomBot>>,
    ) -> anyhow::Result<Arc<Self>> {
        if let Some(old) = old.filter(|o| o.cfg == *cfg) {
            return Ok(old.clone());
        }
        let endpoint = AibotEndpoint::new(cfg.token.expose(), cfg.encoding_aes_key.expose())
            .map_err(|e| anyhow::anyhow!("wecom_aibot {}: {e}", cfg.id))?;
        info!(bot = %cfg.id, "WeCom AI bot at /wecom/aibot/{}", cfg.id);
        Ok(Arc::new(WecomBot {
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
        }))
    }

    /// Answers WeCom's URL verification (`GET /wecom/aibot/{id}`).
    pub fn verify(&self, q: &WecomQuery, id: &str) -> Response {
        match self.endpoint.verify_url(q) {
            Ok(echo) => echo.into_response(),
            Err(e) => refused(&e, "WeCom AI bot URL verification", id),
        }
    }
}

/// One AI bot stream: the answer so far, shared by the task writing it and the refreshes
/// reading it, and what became of it.
#[derive(Default)]
struct Stream {
    state: Mutex<StreamState>,
    /// Woken when WeCom has been given the finished answer.
    fetched: Notify,
}

#[derive(Default)]
struct StreamState {
    text: String,
    finished: bool,
    fate: Fate,
}

/// What became of a stream's answer. Only one of "WeCom got it" and "given up on" can happen,
/// decided under the stream's lock, so that an answer is either delivered (and stays charged)
/// or refunded, never both.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Being written, or finished and not fetched yet.
    #[default]
    Open,
    /// A reply with `finish: true` and the whole answer went to WeCom.
    Fetched,
    /// No refresh delivers it any more: it was refunded, or goes to `response_url`.
    Withdrawn,
}

impl Stream {
    fn lock(&self) -> std::sync::MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stream reply to send WeCom now. One that carries the finished answer marks it
    /// fetched; a withdrawn answer is not sent any more (it was refunded or is posted).
    fn reply_json(&self, stream_id: &str) -> String {
        let mut s = self.lock();
        match s.fate {
            Fate::Withdrawn => stream_reply_json(stream_id, INTERRUPTED, true),
            Fate::Open | Fate::Fetched => {
                if s.finished && s.fate == Fate::Open {
                    s.fate = Fate::Fetched;
                    self.fetched.notify_one();
                }
                stream_reply_json(stream_id, &s.text, s.finished)
            }
        }
    }

    /// Withdraws the answer from the stream; true unless WeCom already fetched it (then
    /// nothing is owed).
    fn withdraw(&self) -> bool {
        let mut s = self.lock();
        if s.fate == Fate::Open {
            s.fate = Fate::Withdrawn;
            true
        } else {
            false
        }
    }
}

/// An empty map of AI bot streams or msgids.
fn stream_map<V>() -> BoundedMap<String, V> {
    BoundedMap::new(MAX_STREAMS, STREAM_KEEP)
}

/// A reply to WeCom: `plaintext_json` sealed for the callback answered (`q`).
fn sealed(bot: &WecomBot, q: &WecomQuery, plaintext_json: &str) -> Response {
    let nonce = q.nonce.clone().unwrap_or_default();
    let timestamp = q.timestamp.clone().unwrap_or_default();
    let body = bot.endpoint.seal_json(plaintext_json, &nonce, &timestamp);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Handles a callback (`POST /wecom/aibot/{id}`) to `bot`: a refresh gets its stream so far,
/// a message starts (or rejoins) its stream.
pub fn callback(
    engine: &Engine,
    bot: Arc<WecomBot>,
    id: &str,
    q: &WecomQuery,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Ok(body) = body else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
    };
    let cb = match bot.endpoint.open(q, &body, now_ms() / 1000) {
        Ok(cb) => cb,
        Err(e) => return refused(&e, "WeCom AI bot callback", id),
    };
    match &cb.kind {
        AibotKind::StreamRefresh { stream_id } => {
            let stream = bot
                .streams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(stream_id)
                .cloned();
            let json = match stream {
                Some(stream) => stream.reply_json(stream_id),
                // Unknown (e.g. the daemon restarted): end it rather than spin. A finished
                // answer it had is refunded by its task.
                None => stream_reply_json(stream_id, INTERRUPTED, true),
            };
            sealed(&bot, q, &json)
        }
        AibotKind::Event { eventtype }
            if eventtype == "enter_chat" && !bot.cfg.welcome.is_empty() =>
        {
            sealed(&bot, q, &text_reply_json(&bot.cfg.welcome))
        }
        AibotKind::Event { .. } => StatusCode::OK.into_response(),
        AibotKind::Voice { content } if content.trim().is_empty() => {
            // WeCom heard nothing: nothing to ask, nothing charged.
            metrics::counter!("chatrelay_voice_total", "outcome" => "empty").increment(1);
            let text = engine.settings().texts.voice_failed.clone();
            sealed(&bot, q, &stream_reply_json(&cb.msgid, &text, true))
        }
        AibotKind::Text { .. } | AibotKind::Voice { .. } => {
            let user = cb.from_userid.clone().unwrap_or_default();
            let (text, transcript) = match &cb.kind {
                AibotKind::Voice { content } => (String::new(), Some(content.clone())),
                _ => (cb.text_without_mention().unwrap_or_default(), None),
            };
            let stream_id = start_stream(
                engine,
                &bot,
                &cb.msgid,
                &user,
                text,
                transcript,
                cb.response_url.clone(),
            );
            let json = {
                let streams = bot.streams.lock().unwrap_or_else(|p| p.into_inner());
                let current = streams.get(&stream_id).cloned();
                drop(streams);
                match current {
                    Some(stream) => stream.reply_json(&stream_id),
                    None => stream_reply_json(&stream_id, "", false),
                }
            };
            sealed(&bot, q, &json)
        }
        AibotKind::Other { .. } => {
            let text = engine.settings().texts.empty.clone();
            sealed(&bot, q, &stream_reply_json(&cb.msgid, &text, true))
        }
    }
}

/// The stream of a message: the one already running for this msgid, or a new one whose
/// answer is collected into the shared state. `transcript`: the message is a voice message
/// and this is WeCom's transcript of it (`text` is then empty).
fn start_stream(
    engine: &Engine,
    bot: &Arc<WecomBot>,
    msgid: &str,
    user: &str,
    text: String,
    transcript: Option<String>,
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
    let stream = Arc::new(Stream::default());
    bot.streams
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(stream_id.clone(), stream.clone());
    let key = UserKey::new(Platform::Wecom, bot.cfg.id.clone(), user.to_owned());
    let mut inbound = Inbound::text(key, msgid, text);
    inbound.voice = transcript.map(|t| {
        let shown = StreamHeard {
            stream: Arc::downgrade(&stream),
            template: engine.settings().texts.voice_heard.clone(),
        };
        let mut voice = Voice::new("", Some(Arc::new(shown) as Arc<dyn VoiceSource>));
        voice.recognition = Some(t);
        voice
    });
    let mut reply = engine.handle(inbound.clone());
    let deadline = Instant::now() + Duration::from_secs(bot.cfg.stream_window_secs);
    let http = bot.http.clone();
    let engine = engine.clone();
    let span = info_span!("wecom_aibot", bot = %bot.cfg.id, user = %user, msg = %msgid);
    engine.tracker().clone().spawn(
        async move {
            let mut event = None;
            while let Some(e) = reply.next().await {
                let mut s = stream.lock();
                match e {
                    ReplyEvent::Delta(d) => s.text.push_str(&d),
                    terminal => {
                        if let Some(text) = terminal.user_text() {
                            s.text = text;
                        }
                        s.finished = true;
                        event = Some(terminal);
                        break;
                    }
                }
            }
            let Some(event) = event else {
                // The reply ended without an answer (nothing was charged): end the stream.
                stream.lock().finished = true;
                return;
            };
            let post = |text: String| async move {
                match response_url {
                    Some(url) => post_response_url(&http, &url, &text)
                        .await
                        .map_err(|e| e.to_string()),
                    None => Err("the message has no response_url".to_owned()),
                }
            };
            let end = follow_up(&stream, deadline, engine.shutdown_token(), post).await;
            if let Some(why) = end.undelivered() {
                warn!(why, "the answer did not reach the user");
                engine
                    .refund_platform_undelivered(&inbound, &event, why)
                    .await;
            }
        }
        .instrument(span),
    );
    stream_id
}

/// The voice message of an AI-bot stream: WeCom's transcript is all there is (no audio to
/// fetch). What was heard ("你说的是：…", `[speech] show_text`) starts the stream at once, so
/// the user sees it while the answer is written; the engine still puts it in front of the
/// final text (this returns `false`), which replaces the stream's with the same words, so
/// every refresh extends the one before.
struct StreamHeard {
    stream: std::sync::Weak<Stream>,
    /// `[texts] voice_heard`.
    template: String,
}

impl VoiceSource for StreamHeard {
    fn fetch(
        &self,
        _max_bytes: u64,
    ) -> futures_util::future::BoxFuture<'static, Result<Audio, VoiceError>> {
        Box::pin(async {
            Err(VoiceError::Download(
                "the WeCom AI bot sends a transcript, no audio".into(),
            ))
        })
    }

    fn show_heard(&self, text: &str) -> futures_util::future::BoxFuture<'static, bool> {
        if let Some(stream) = self.stream.upgrade() {
            let mut s = stream.lock();
            if s.text.is_empty() && !s.finished {
                s.text = format!("{}\n\n", fill(&self.template, &[("text", text)]));
            }
        }
        Box::pin(async { false })
    }
}

/// How a finished AI-bot answer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StreamEnd {
    /// WeCom fetched the end of the stream.
    Fetched,
    /// WeCom stopped asking; the answer went to `response_url`.
    Posted,
    /// The answer did not reach the user, for this reason (its cost is refunded).
    Undelivered(&'static str),
}

impl StreamEnd {
    fn undelivered(&self) -> Option<&'static str> {
        match self {
            StreamEnd::Undelivered(why) => Some(why),
            StreamEnd::Fetched | StreamEnd::Posted => None,
        }
    }
}

/// What happens to a finished stream answer: waits until WeCom fetches its end, or until
/// `deadline` (WeCom has stopped asking: the answer is posted to `response_url` with `post`),
/// or until shutdown (after the restart WeCom's refreshes find nothing and tell the user the
/// answer was interrupted and to ask again; posting it then instead would contradict that, and
/// WeCom may not take a `response_url` post while the stream is still open, so it is given up).
/// A stream dropped from memory (the bound, or its expiry) before WeCom fetched its end told
/// WeCom the answer was interrupted; it is given up too.
async fn follow_up<F, Fut>(
    stream: &Arc<Stream>,
    deadline: Instant,
    shutdown: &CancellationToken,
    post: F,
) -> StreamEnd
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    // Checked now and then: nothing tells a stream it was dropped from the map.
    const EVICTION_CHECK: Duration = Duration::from_secs(1);
    let mut check = tokio::time::interval_at(Instant::now(), EVICTION_CHECK);
    // Made once: a wake-up sent before the first wait is kept for it.
    let fetched = stream.fetched.notified();
    let window = tokio::time::sleep_until(deadline);
    tokio::pin!(fetched, window);
    loop {
        tokio::select! {
            biased;
            () = &mut fetched => return StreamEnd::Fetched,
            () = &mut window => break,
            () = shutdown.cancelled() => {
                return if stream.withdraw() {
                    StreamEnd::Undelivered("shutting down before WeCom fetched the answer")
                } else {
                    StreamEnd::Fetched
                };
            }
            _ = check.tick() => {
                // Only this task holds it: no map does, so no refresh can fetch it.
                if Arc::strong_count(stream) == 1 {
                    return if stream.withdraw() {
                        StreamEnd::Undelivered(
                            "the stream was dropped from memory before WeCom fetched the answer",
                        )
                    } else {
                        StreamEnd::Fetched
                    };
                }
            }
        }
    }
    if !stream.withdraw() {
        return StreamEnd::Fetched;
    }
    let text = stream.lock().text.clone();
    match post(text).await {
        Ok(()) => {
            info!("WeCom stopped asking for the stream; the answer went to response_url");
            StreamEnd::Posted
        }
        Err(e) => {
            warn!(error = %e, "WeCom stopped asking for the stream and the answer could not be posted");
            StreamEnd::Undelivered(
                "WeCom stopped asking for the stream and the answer could not go to response_url",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flood_of_msgids_stays_within_the_bounds() {
        // The AI bot's maps, as start_stream fills them.
        let mut by_msgid = stream_map::<String>();
        let mut streams = stream_map::<Arc<Stream>>();
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

    #[tokio::test]
    async fn what_was_heard_starts_the_stream_once() {
        let stream = Arc::new(Stream::default());
        let heard = StreamHeard {
            stream: Arc::downgrade(&stream),
            template: "你说的是：{text}".into(),
        };
        assert!(
            !heard.show_heard("明天").await,
            "the engine still puts it before the answer"
        );
        assert_eq!(stream.lock().text, "你说的是：明天\n\n");
        // Written once: a stream with text, or finished, is left alone.
        heard.show_heard("again").await;
        assert_eq!(stream.lock().text, "你说的是：明天\n\n");
        let done = Arc::new(Stream::default());
        done.lock().finished = true;
        let late = StreamHeard {
            stream: Arc::downgrade(&done),
            template: "{text}".into(),
        };
        late.show_heard("x").await;
        assert_eq!(done.lock().text, "");
        // No audio to fetch: the bot only has WeCom's transcript.
        assert!(matches!(
            heard.fetch(1000).await,
            Err(VoiceError::Download(_))
        ));
    }

    const KEY: &str = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt";

    struct Rig {
        engine: Engine,
        store: chatrelay_storage::Store,
        shutdown: CancellationToken,
        tracker: tokio_util::task::TaskTracker,
        bot: Arc<WecomBot>,
    }

    /// An engine with the demo model (1 credit an answer, 10 free a day) and a bot whose
    /// stream window is `window_secs`.
    fn rig(window_secs: u64) -> Rig {
        let kv = chatrelay_storage::Store::open_temporary().unwrap();
        let mut config = crate::config::Config::default();
        config.llm.models = vec![crate::config::ModelConfig {
            name: config.llm.model.clone(),
            credits: 1,
            ..crate::config::ModelConfig::default()
        }];
        let shutdown = CancellationToken::new();
        let tracker = tokio_util::task::TaskTracker::new();
        let engine = Engine::new(
            kv,
            Arc::new(crate::engine::llm::DemoBackend::default()),
            crate::engine::Settings::from_config(&config).unwrap(),
            shutdown.clone(),
            tracker.clone(),
        );
        let cfg = WecomAibotConfig {
            id: "bot".into(),
            stream_window_secs: window_secs,
            ..WecomAibotConfig::default()
        };
        let bot = Arc::new(WecomBot {
            endpoint: AibotEndpoint::new("t", KEY).unwrap(),
            cfg,
            http: reqwest::Client::new(),
            by_msgid: Mutex::new(stream_map()),
            streams: Mutex::new(stream_map()),
        });
        Rig {
            store: engine.store().clone(),
            engine,
            shutdown,
            tracker,
            bot,
        }
    }

    /// A `response_url` on 127.0.0.1 that answers every post with `{"errcode": errcode}`;
    /// the bodies it got.
    async fn response_url(errcode: i64) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        let app = axum::Router::new().route(
            "/response",
            axum::routing::post(move |body: axum::Json<serde_json::Value>| {
                seen.lock().unwrap().push(body.0);
                async move { axum::Json(serde_json::json!({"errcode": errcode, "errmsg": "x"})) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/response", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, got)
    }

    impl Rig {
        fn start(&self, msgid: &str, response_url: Option<String>) -> (String, Arc<Stream>) {
            let id = start_stream(
                &self.engine,
                &self.bot,
                msgid,
                "u1",
                "你好".into(),
                None,
                response_url,
            );
            let stream = self.bot.streams.lock().unwrap().get(&id).cloned().unwrap();
            (id, stream)
        }

        /// Waits until the answer is written (charged, for a demo answer).
        async fn finished(&self, stream: &Stream) {
            for _ in 0..1000 {
                if stream.lock().finished {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the answer never finished");
        }

        /// Waits for every task to end (shutting down first when `shut_down`).
        async fn drain(&self, shut_down: bool) {
            if shut_down {
                self.shutdown.cancel();
            }
            self.tracker.close();
            tokio::time::timeout(Duration::from_secs(20), self.tracker.wait())
                .await
                .unwrap();
        }

        /// The charge and the refund of message `msgid` of user `u1`, as ledger entries.
        async fn ledger(
            &self,
            msgid: &str,
        ) -> (
            Option<chatrelay_storage::LedgerEntry>,
            Option<chatrelay_storage::LedgerEntry>,
        ) {
            let charge = format!("msg:wecom:bot:u1#{msgid}");
            (
                self.store.ledger_by_reference(&charge).await.unwrap(),
                self.store
                    .ledger_by_reference(&format!("undelivered:{charge}"))
                    .await
                    .unwrap(),
            )
        }
    }

    #[tokio::test]
    async fn a_finished_answer_wecom_never_fetched_is_refunded_at_shutdown() {
        let r = rig(360);
        let (url, posted) = response_url(0).await;
        let (id, stream) = r.start("m1", Some(url));
        r.finished(&stream).await;
        r.drain(true).await;
        let (charge, refund) = r.ledger("m1").await;
        let charge = charge.expect("the answer was charged");
        assert_eq!(charge.free_delta + charge.paid_delta, -1);
        let refund = refund.expect("the undelivered answer was refunded");
        assert_eq!(refund.paid_delta, 1);
        assert_eq!(refund.kind, chatrelay_storage::EntryKind::Refund);
        // Given up on, not posted (WeCom's refreshes after the restart say "interrupted"),
        // and a refresh that still arrives does not get the refunded answer.
        assert!(posted.lock().unwrap().is_empty());
        let v: serde_json::Value = serde_json::from_str(&stream.reply_json(&id)).unwrap();
        assert_eq!(v["stream"]["content"], INTERRUPTED);
        assert_eq!(v["stream"]["finish"], true);
        // Refunding again changes nothing.
        let event = ReplyEvent::Final {
            text: String::new(),
            usage: None,
            charged: 1,
            images: Vec::new(),
        };
        let key = UserKey::new(Platform::Wecom, "bot", "u1");
        r.engine
            .refund_platform_undelivered(&Inbound::text(key, "m1", "你好"), &event, "again")
            .await;
        assert_eq!(r.store.ledger(refund.uid, 100).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_fetched_answer_stays_charged() {
        let r = rig(360);
        let (id, stream) = r.start("m2", None);
        r.finished(&stream).await;
        let v: serde_json::Value = serde_json::from_str(&stream.reply_json(&id)).unwrap();
        assert_eq!(v["stream"]["finish"], true);
        assert!(
            v["stream"]["content"].as_str().unwrap().contains("你好"),
            "{v}"
        );
        r.drain(true).await;
        let (charge, refund) = r.ledger("m2").await;
        assert!(charge.is_some());
        assert!(refund.is_none(), "{refund:?}");
    }

    #[tokio::test]
    async fn wecom_stopped_asking_the_answer_goes_to_response_url_or_is_refunded() {
        let r = rig(1);
        let (ok_url, ok_posts) = response_url(0).await;
        let (bad_url, bad_posts) = response_url(40001).await;
        r.start("posted", Some(ok_url));
        r.start("refused", Some(bad_url));
        r.start("nowhere", None);
        // No shutdown: each task ends after the window, by itself.
        r.drain(false).await;
        let (charge, refund) = r.ledger("posted").await;
        assert!(charge.is_some() && refund.is_none(), "{refund:?}");
        let posts = ok_posts.lock().unwrap().clone();
        assert_eq!(posts.len(), 1);
        assert!(
            posts[0]["markdown"]["content"]
                .as_str()
                .unwrap()
                .contains("你好")
        );
        for msgid in ["refused", "nowhere"] {
            let (charge, refund) = r.ledger(msgid).await;
            assert!(charge.is_some(), "{msgid}");
            assert_eq!(refund.map(|e| e.paid_delta), Some(1), "{msgid}");
        }
        assert_eq!(bad_posts.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_stream_dropped_from_memory_before_its_end_was_fetched_is_refunded() {
        let r = rig(360);
        let (url, posted) = response_url(0).await;
        let (_, stream) = r.start("m3", Some(url));
        r.finished(&stream).await;
        // The bound pushed it out (10,000 newer streams, say): refreshes say "interrupted".
        *r.bot.streams.lock().unwrap() = stream_map();
        drop(stream);
        // Refunded well before the window ends or anything shuts down.
        tokio::time::timeout(Duration::from_secs(10), async {
            while r.ledger("m3").await.1.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("refunded");
        r.drain(true).await;
        assert!(posted.lock().unwrap().is_empty());
        assert_eq!(r.ledger("m3").await.1.map(|e| e.paid_delta), Some(1));
    }
}
