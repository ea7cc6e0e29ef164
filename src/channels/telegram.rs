//! Telegram bots (`[[telegram]]`): long polling (`getUpdates`) or a webhook at
//! `POST /telegram/{id}`.
//!
//! Every message for the bot (private chats; in groups a mention, a reply to the bot or a
//! `/command@bot`) becomes an [`Inbound`] from `tg:<id>:<user_id>`. The answer is streamed by
//! sending a first message as soon as text arrives and editing it at most once per
//! `edit_interval_ms` (429 `retry_after` is honoured); the finished answer is rendered as
//! HTML (plain text if Telegram rejects the entities) and split at 4096 UTF-16 units, the
//! first part in the edited message and the rest as new messages.
//!
//! Voice notes and audio files go to the engine with a source that downloads them (getFile,
//! `file_size` checked first); what was heard is sent as a message of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chatrelay_core::voice::{Audio, Voice, VoiceError, VoiceSource};
use chatrelay_core::{FailureKind, Handler, Inbound, Platform, Reply, ReplyEvent, UserKey};
use chatrelay_telegram::{
    Command, DownloadError, TgBot, TgError, Update, UpdateKind, addressed_photo, addressed_to_bot,
    addressed_voice, parse_command, split_for_telegram, to_html,
};
use futures_util::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::config::TelegramConfig;
use crate::engine::{Engine, fill};
use crate::util::Current;

/// The getUpdates long-polling timeout, below the HTTP client's 17 s.
const POLL_TIMEOUT_SECS: u32 = 10;
/// The longest pause after failed polls.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Attempts to deliver one final message part (429s and HTML fallbacks included).
const DELIVERY_ATTEMPTS: usize = 5;
/// The webhook's secret header.
const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// One configured bot.
pub struct TelegramBot {
    cfg: TelegramConfig,
    api: TgBot,
    /// The bot's username (from getMe), needed to see mentions in groups.
    username: Mutex<String>,
}

impl TelegramBot {
    /// The configured id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.cfg.id
    }

    fn username(&self) -> String {
        self.username
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn webhook(&self) -> bool {
        self.cfg.mode == "webhook"
    }
}

/// The configured Telegram bots, by id.
#[derive(Default)]
pub struct Telegram {
    bots: HashMap<String, Arc<TelegramBot>>,
}

impl Telegram {
    /// Builds the bots from a validated configuration. Bot API calls use their own client
    /// (teloxide's settings: 17 s timeout, above the long-polling timeout).
    ///
    /// On a reload, a bot whose configuration did not change is kept (its poller keeps
    /// running); a changed one gets a new poller once the old one has stopped.
    pub fn from_config(
        config: &crate::config::Config,
        _http: &reqwest::Client,
        previous: Option<&Telegram>,
    ) -> anyhow::Result<Self> {
        let mut bots = HashMap::new();
        if config.telegram.is_empty() {
            return Ok(Self { bots });
        }
        let client = TgBot::default_client()?;
        for cfg in &config.telegram {
            let old = previous.and_then(|p| p.bots.get(&cfg.id));
            if let Some(old) = old.filter(|o| o.cfg == *cfg) {
                bots.insert(cfg.id.clone(), old.clone());
                continue;
            }
            let api = TgBot::new(cfg.token.expose(), &cfg.api_url, client.clone())
                .map_err(|e| anyhow::anyhow!("telegram {}: {e}", cfg.id))?;
            info!(bot = %cfg.id, mode = %cfg.mode, "Telegram bot");
            bots.insert(
                cfg.id.clone(),
                Arc::new(TelegramBot {
                    cfg: cfg.clone(),
                    api,
                    username: Mutex::new(String::new()),
                }),
            );
        }
        Ok(Self { bots })
    }

    /// The bots.
    pub fn bots(&self) -> impl Iterator<Item = &Arc<TelegramBot>> {
        self.bots.values()
    }
}

/// What the webhook handler needs.
#[derive(Clone)]
pub struct TelegramState {
    /// The conversation engine.
    pub engine: Engine,
    /// The bots in force (a reload swaps them).
    pub telegram: Current<Telegram>,
}

/// The Telegram routes.
pub fn routes() -> axum::Router<TelegramState> {
    axum::Router::new().route("/telegram/{id}", post(webhook))
}

async fn webhook(
    State(st): State<TelegramState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(bot) = st
        .telegram
        .get()
        .bots
        .get(&id)
        .filter(|b| b.webhook())
        .cloned()
    else {
        return (StatusCode::NOT_FOUND, "unknown bot").into_response();
    };
    let expected = bot
        .cfg
        .webhook_secret
        .as_ref()
        .map(|s| s.expose())
        .unwrap_or_default();
    let given = headers
        .get(SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if expected.is_empty() || !crate::util::secrets_equal(given, expected) {
        metrics::counter!("chatrelay_telegram_rejected_total").increment(1);
        warn!(bot = %id, "Telegram webhook with a wrong secret refused");
        return (StatusCode::FORBIDDEN, "refused").into_response();
    }
    let update: Update = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => {
            // Telegram would redeliver a non-2xx forever; an update we cannot read is dropped.
            warn!(bot = %id, error = %e, "unreadable Telegram update dropped");
            return StatusCode::OK.into_response();
        }
    };
    st.engine
        .tracker()
        .spawn(process(st.engine.clone(), bot, update));
    StatusCode::OK.into_response()
}

/// Sleeps for `d`; false when shutdown came first.
async fn pause(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = shutdown.cancelled() => false,
    }
}

/// Runs one bot until `shutdown` (or a reload that replaced it) fires: getMe and
/// setMyCommands, then long polling when it is in polling mode. Answers already being
/// written are not part of this task and finish regardless.
pub async fn run_bot(engine: Engine, bot: Arc<TelegramBot>, shutdown: CancellationToken) {
    let id = bot.cfg.id.clone();
    let mut backoff = Duration::from_secs(1);
    loop {
        let me = tokio::select! {
            r = bot.api.get_me() => r,
            () = shutdown.cancelled() => return,
        };
        match me {
            Ok(me) => {
                let name = me.user.username.clone().unwrap_or_default();
                info!(bot = %id, username = %name, "Telegram bot connected");
                *bot.username.lock().unwrap_or_else(|p| p.into_inner()) = name;
                break;
            }
            Err(e) => {
                warn!(bot = %id, error = %e, "Telegram getMe failed; retrying");
                if !pause(backoff, &shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    if let Err(e) = bot.api.set_commands().await {
        warn!(bot = %id, error = %e, "Telegram setMyCommands failed");
    }
    if bot.webhook() {
        return;
    }
    let mut offset: i32 = 0;
    let mut backoff = Duration::from_secs(1);
    loop {
        let polled = tokio::select! {
            r = bot.api.get_updates(offset, POLL_TIMEOUT_SECS) => r,
            () = shutdown.cancelled() => return,
        };
        match polled {
            Ok(updates) => {
                backoff = Duration::from_secs(1);
                for update in updates {
                    offset = offset.max(i32::try_from(update.id.0).unwrap_or(i32::MAX - 1) + 1);
                    engine
                        .tracker()
                        .spawn(process(engine.clone(), bot.clone(), update));
                }
            }
            Err(TgError::RetryAfter(d)) => {
                if !pause(d, &shutdown).await {
                    return;
                }
            }
            Err(e) => {
                warn!(bot = %id, error = %e, "Telegram getUpdates failed; backing off");
                if !pause(backoff, &shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The engine's first command word for a command (the defaults when none is configured).
fn command_word(words: &[String], default: &str) -> String {
    words.first().cloned().unwrap_or_else(|| default.to_owned())
}

/// Handles one update: a message for the bot is answered, anything else ignored.
async fn process(engine: Engine, bot: Arc<TelegramBot>, update: Update) {
    let UpdateKind::Message(message) = update.kind else {
        return;
    };
    let username = bot.username();
    let photo = addressed_photo(&message, &username);
    let voice_note = addressed_voice(&message, &username);
    let Some(text) = addressed_to_bot(&message, &username)
        .or_else(|| photo.as_ref().map(|(_, caption)| caption.clone()))
        .or_else(|| voice_note.as_ref().map(|_| String::new()))
    else {
        return;
    };
    let Some(from) = message.from.as_ref().filter(|u| !u.is_bot) else {
        return;
    };
    let chat = message.chat.id.0;
    let private = message.chat.is_private();
    let key = UserKey::new(Platform::Tg, bot.cfg.id.clone(), from.id.0.to_string());
    let message_id = format!("{chat}:{}", message.id.0);
    let display_name = from.full_name();
    // In groups the answer quotes the question, so it is clear whom it answers.
    let reply_to = (!private).then_some(message.id.0);
    let span = info_span!("telegram", bot = %bot.cfg.id, user = %key.user, msg = %message_id);
    let shutdown = &engine.shutdown_token().clone();
    async move {
        let commands = &engine.settings().commands;
        // A voice note's caption is not a command: the voice is plain chat.
        let command = if voice_note.is_some() {
            None
        } else {
            parse_command(&text, &username)
        };
        let engine_text = match command {
            Some(Command::Code) => {
                let reply = code_reply(&engine, &key, &display_name, private).await;
                stream_answer(&bot, chat, reply_to, reply, shutdown).await;
                return;
            }
            Some(Command::Start | Command::Help) => command_word(&commands.help, "/help"),
            Some(Command::New) => command_word(&commands.new, "/new"),
            Some(Command::Quota) => command_word(&commands.quota, "/quota"),
            Some(Command::Buy) => command_word(&commands.buy, "/buy"),
            None => text,
        };
        // Spoken answers (`[[scopes]] voice_reply`) follow the text, made once it is sent.
        let voice_ref = engine
            .voice_reply_for(&key)
            .then(|| format!("{key}:{message_id}"));
        let voice_key = key.clone();
        let mut inbound = Inbound::text(key, message_id, engine_text);
        inbound.display_name = Some(display_name);
        if let Some(note) = voice_note {
            let mut voice = Voice::new(
                note.format.clone(),
                Some(Arc::new(TgVoice {
                    bot: bot.clone(),
                    file_id: note.file_id.clone(),
                    format: note.format.clone(),
                    chat,
                    reply_to,
                    heard_template: engine.settings().texts.voice_heard.clone(),
                }) as Arc<dyn VoiceSource>),
            );
            voice.declared_bytes = Some(note.size).filter(|&n| n > 0);
            voice.declared_seconds = Some(note.seconds).filter(|&n| n > 0);
            inbound.voice = Some(voice);
            inbound.text.clear();
        }
        if let Some((file_id, _)) = &photo {
            match photo_url(&engine, &bot, file_id).await {
                Ok(url) => inbound.images.push(url),
                Err(reply) => {
                    stream_answer(&bot, chat, reply_to, reply, shutdown).await;
                    return;
                }
            }
        }
        // Answers owed to this user in this chat (a delivery that failed) come first.
        let owed_key = format!("{}#{chat}", inbound.key);
        deliver_owed(&engine, &bot, chat, &owed_key, shutdown).await;
        let reply = engine.handle(inbound);
        let mut delivered = None;
        let undelivered = stream_answer_keeping(
            &bot,
            chat,
            reply_to,
            reply,
            shutdown,
            voice_ref.is_some().then_some(&mut delivered),
        )
        .await;
        if let Some(undelivered) = undelivered {
            keep(&engine, &owed_key, &[undelivered]).await;
        }
        if let (Some(reference), Some(answer)) = (voice_ref, delivered) {
            send_spoken(
                &engine, &bot, chat, reply_to, &voice_key, &reference, &answer,
            )
            .await;
        }
    }
    .instrument(span)
    .await;
}

/// The answer to `/code`: a web login code in a private chat (for the user behind `key`),
/// else where to ask for one.
async fn code_reply(engine: &Engine, key: &UserKey, display_name: &str, private: bool) -> Reply {
    let answer = if private {
        match crate::auth::issue_code_via(engine, key, Some(display_name)).await {
            Ok((code, minutes)) => {
                format!("你的网页登录验证码：{code}，{minutes} 分钟内有效")
            }
            Err(e) => {
                warn!(error = %e, "issuing a login code failed");
                engine.settings().texts.unavailable.clone()
            }
        }
    } else {
        "请私聊我发送 /code 获取网页登录验证码。".to_owned()
    };
    Reply::failed(FailureKind::InvalidRequest, answer)
}

/// A voice note's (or audio file's) audio on Telegram, and the chat that hears what it said.
struct TgVoice {
    bot: Arc<TelegramBot>,
    file_id: String,
    format: String,
    chat: i64,
    reply_to: Option<i32>,
    /// `[bot.texts] voice_heard`.
    heard_template: String,
}

impl VoiceSource for TgVoice {
    fn fetch(&self, max_bytes: u64) -> BoxFuture<'static, Result<Audio, VoiceError>> {
        let (bot, file_id, format) = (self.bot.clone(), self.file_id.clone(), self.format.clone());
        Box::pin(async move {
            match bot.api.download(&file_id, max_bytes).await {
                Ok(bytes) => Ok(Audio { bytes, format }),
                Err(DownloadError::TooLarge { max }) => Err(VoiceError::TooBig { max }),
                Err(DownloadError::Failed(e)) => Err(VoiceError::Download(e)),
            }
        })
    }

    /// What was heard goes as a message of its own, before the answer.
    fn show_heard(&self, text: &str) -> BoxFuture<'static, bool> {
        let (bot, chat, reply_to) = (self.bot.clone(), self.chat, self.reply_to);
        let (text, template) = (text.to_owned(), self.heard_template.clone());
        Box::pin(async move {
            let heard = fill(&template, &[("text", &text)]);
            match bot.api.send(chat, &heard, false, reply_to).await {
                Ok(_) => true,
                Err(e) => {
                    warn!(error = %e, "sending what a voice note said failed; it goes with the answer");
                    false
                }
            }
        })
    }
}

/// The download URL of a photo the user sent, or the reply telling them it could not be read.
async fn photo_url(engine: &Engine, bot: &TelegramBot, file_id: &str) -> Result<String, Reply> {
    bot.api.file_url(file_id).await.map_err(|e| {
        warn!(error = %e, "Telegram getFile failed");
        Reply::failed(
            FailureKind::InvalidRequest,
            engine.settings().texts.image_failed.clone(),
        )
    })
}

/// Delivers the answers kept in `owed_key` for the chat, in order; what still fails is kept.
async fn deliver_owed(
    engine: &Engine,
    bot: &TelegramBot,
    chat: i64,
    owed_key: &str,
    shutdown: &CancellationToken,
) {
    match engine.outbox_take(owed_key).await {
        Ok(owed) => {
            for (i, text) in owed.iter().enumerate() {
                if !deliver(
                    bot,
                    chat,
                    None,
                    None,
                    text,
                    false,
                    &mut Instant::now(),
                    shutdown,
                )
                .await
                {
                    keep(engine, owed_key, owed.get(i..).unwrap_or_default()).await;
                    break;
                }
            }
        }
        Err(e) => warn!(error = %e, "reading the outbox failed"),
    }
}

/// Where an answer stands in the chat.
struct Progress {
    /// The message being edited, once sent.
    message: Option<i32>,
    /// The text it shows.
    shown: String,
    /// No call to this chat before this instant (edit interval, 429s).
    next_at: Instant,
}

/// Keeps `texts` (a charged answer that could not be delivered) for the user's next message
/// in the chat.
async fn keep(engine: &Engine, owed_key: &str, texts: &[String]) {
    for text in texts {
        if let Err(e) = engine.outbox_push(owed_key, text).await {
            warn!(error = %e, "keeping an undelivered answer failed; it is lost");
        }
    }
}

/// The largest spoken answer sent (Telegram takes voice notes up to 50 MB; a few minutes
/// of Opus is well under 1 MB).
const MAX_VOICE_BYTES: usize = 10 * 1024 * 1024;

/// Speaks `answer` (delivered as text already) and sends it as a voice note; the credits come
/// back when Telegram refuses it. Nothing is said to the user when there is no voice: the
/// text is the answer.
async fn send_spoken(
    engine: &Engine,
    bot: &TelegramBot,
    chat: i64,
    reply_to: Option<i32>,
    key: &UserKey,
    reference: &str,
    answer: &str,
) {
    let Some(spoken) = engine
        .speak_answer(key, reference, answer, "opus", MAX_VOICE_BYTES, |_| true)
        .await
    else {
        return;
    };
    if let Err(e) = bot.api.send_voice(chat, spoken.audio, reply_to).await {
        warn!(error = %e, "Telegram sendVoice failed; the voice's credits are given back");
        if spoken.charged > 0 {
            engine.refund_undelivered(spoken.uid, &spoken.reference, spoken.charged);
        }
    }
}

/// Streams `reply` into `chat`: typing, a first message, edits, then the final HTML parts.
/// Returns what of a finished answer (paid for) could not be delivered, to be kept for the
/// next message; nothing for an answer delivered whole, or a failure.
async fn stream_answer(
    bot: &TelegramBot,
    chat: i64,
    reply_to: Option<i32>,
    reply: Reply,
    shutdown: &CancellationToken,
) -> Option<String> {
    stream_answer_keeping(bot, chat, reply_to, reply, shutdown, None).await
}

/// [`stream_answer`], putting a finished answer's text, once delivered whole, in `delivered`
/// (when given): what a spoken answer says.
async fn stream_answer_keeping(
    bot: &TelegramBot,
    chat: i64,
    reply_to: Option<i32>,
    mut reply: Reply,
    shutdown: &CancellationToken,
    delivered: Option<&mut Option<String>>,
) -> Option<String> {
    let api = &bot.api;
    if let Err(e) = api.typing(chat).await {
        warn!(error = %e, "Telegram sendChatAction failed");
    }
    let mut p = Progress {
        message: None,
        shown: String::new(),
        next_at: Instant::now(),
    };
    let mut text = String::new();
    let terminal = stream_preview(bot, chat, reply_to, &mut reply, &mut p, &mut text).await;
    let (answer, html) = match terminal {
        Some(ReplyEvent::Final { images, .. }) if !images.is_empty() => {
            // Pictures are shown as pictures (the text only links them).
            for url in images {
                if let Err(e) = api.send_photo(chat, &url, reply_to).await {
                    warn!(error = %e, "Telegram sendPhoto failed");
                }
            }
            metrics::counter!("chatrelay_telegram_answers_total").increment(1);
            return None;
        }
        Some(ReplyEvent::Final { text, .. }) => (text, true),
        Some(ReplyEvent::Failed {
            kind: FailureKind::Duplicate,
            ..
        }) => return None,
        Some(ReplyEvent::Failed { message, .. }) => (message, false),
        // The engine vanished mid-answer: keep what arrived.
        Some(ReplyEvent::Delta(_)) | None => (text, false),
    };
    if answer.trim().is_empty() {
        return None;
    }
    let parts = split_for_telegram(&answer);
    for (i, part) in parts.iter().enumerate() {
        let target = if i == 0 { p.message } else { None };
        let reply_to = if i == 0 { reply_to } else { None };
        if !deliver(
            bot,
            chat,
            target,
            reply_to,
            part,
            html,
            &mut p.next_at,
            shutdown,
        )
        .await
        {
            // Only a finished answer is owed (`html`: it was a Final).
            return html.then(|| parts.get(i..).unwrap_or_default().join("\n"));
        }
    }
    metrics::counter!("chatrelay_telegram_answers_total").increment(1);
    if html && let Some(delivered) = delivered {
        *delivered = Some(answer);
    }
    None
}

/// Shows `reply`'s text in `chat` as it grows (`p`: the message edited, at most once per edit
/// interval), collecting it into `text`; returns the reply's last event (None: it ended
/// without one).
async fn stream_preview(
    bot: &TelegramBot,
    chat: i64,
    reply_to: Option<i32>,
    reply: &mut Reply,
    p: &mut Progress,
    text: &mut String,
) -> Option<ReplyEvent> {
    let api = &bot.api;
    let interval = Duration::from_millis(bot.cfg.edit_interval_ms);
    loop {
        // Telegram shows "typing" for 5 s: repeat it until the first text is on screen.
        let event = if p.message.is_none() {
            tokio::select! {
                e = reply.next() => e,
                () = tokio::time::sleep(Duration::from_secs(4)) => {
                    let _ = api.typing(chat).await;
                    continue;
                }
            }
        } else {
            reply.next().await
        };
        match event {
            Some(ReplyEvent::Delta(d)) => {
                text.push_str(&d);
                if Instant::now() >= p.next_at {
                    show_preview(api, chat, reply_to, text, p, interval).await;
                }
            }
            Some(terminal) => return Some(terminal),
            None => return None,
        }
    }
}

/// Puts the first part of `text` on screen: a new message (quoting `reply_to`) or an edit of
/// the one shown; the next update waits `interval`, or as long as a 429 asks.
async fn show_preview(
    api: &TgBot,
    chat: i64,
    reply_to: Option<i32>,
    text: &str,
    p: &mut Progress,
    interval: Duration,
) {
    let preview = split_for_telegram(text)
        .into_iter()
        .next()
        .unwrap_or_default();
    if preview.trim().is_empty() || preview == p.shown {
        return;
    }
    let sent = match p.message {
        None => api
            .send(chat, &preview, false, reply_to)
            .await
            .map(|id| p.message = Some(id)),
        Some(id) => api.edit(chat, id, &preview, false).await,
    };
    p.next_at = Instant::now() + interval;
    match sent {
        Ok(()) => p.shown = preview,
        Err(TgError::RetryAfter(d)) => p.next_at = Instant::now() + d,
        Err(TgError::NotModified) => {}
        Err(e) => warn!(error = %e, "a Telegram streaming update failed"),
    }
}

/// Puts one final part in `target` (an edit) or a new message: HTML when `html`, plain text if
/// Telegram rejects the entities; waits out 429s, but not past `shutdown`. False when it could
/// not be delivered.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    bot: &TelegramBot,
    chat: i64,
    mut target: Option<i32>,
    reply_to: Option<i32>,
    part: &str,
    mut html: bool,
    next_at: &mut Instant,
    shutdown: &CancellationToken,
) -> bool {
    let interval = Duration::from_millis(bot.cfg.edit_interval_ms);
    for _ in 0..DELIVERY_ATTEMPTS {
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(*next_at) => {}
            () = shutdown.cancelled() => {
                warn!("shutting down before a Telegram message could go out");
                return false;
            }
        }
        let body = if html { to_html(part) } else { part.to_owned() };
        let result = match target {
            Some(id) => bot.api.edit(chat, id, &body, html).await,
            None => bot.api.send(chat, &body, html, reply_to).await.map(|_| ()),
        };
        *next_at = Instant::now() + interval;
        match result {
            Ok(()) | Err(TgError::NotModified) => return true,
            Err(TgError::RetryAfter(d)) => *next_at = Instant::now() + d,
            Err(TgError::BadEntities(m)) if html => {
                warn!(error = %m, "Telegram rejected the HTML; sending plain text");
                html = false;
            }
            Err(e) if target.is_some() => {
                // The message may be gone (deleted by the user): send the part anew.
                warn!(error = %e, "editing the Telegram answer failed; sending it anew");
                target = None;
            }
            Err(e) => {
                warn!(error = %e, "sending a Telegram message failed");
                return false;
            }
        }
    }
    warn!("giving up on a Telegram message after {DELIVERY_ATTEMPTS} attempts");
    false
}
