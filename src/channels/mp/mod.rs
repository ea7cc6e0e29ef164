//! WeChat Official Account callbacks (`GET/POST /wechat/mp/{id}`) and the 5-second rule.
//!
//! WeChat waits 5 s for a passive reply and tries 3 times. Each try joins the one answer the
//! engine is making (one question = one LLM call = one debit) and waits up to
//! `passive_wait_ms` for it. An answer ready in time goes back passively, with anything still
//! owed to the user (the outbox) in front of it. A try that finds no answer in time says
//! nothing, so that WeChat tries again — except the last one, which tells the user the answer
//! is coming. Once WeChat has stopped retrying, an answer that no try delivered is pushed with
//! the customer-service API, or, where the account cannot push, kept in the outbox and sent
//! with the user's next message. Long answers are split at 2048 bytes; what does not fit in
//! the passive reply follows the same way.
//!
//! A voice message goes to the engine with WeChat's `Recognition` when there is one, else
//! with a source that downloads its audio (`media/get`) for `[speech]` to transcribe; the
//! download and transcription happen inside the same tries as any slow answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chatrelay_core::split::{Unit, split_message};
use chatrelay_core::voice::VoiceSource;
use chatrelay_core::{Handler, Inbound, Platform, UserKey};
use chatrelay_wechat::{
    CallbackQuery, IncomingKind, MediaVoice, MpClient, MpEndpoint, Opened, text_reply_xml,
};
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};

mod voice;

use self::voice::{send_spoken, speak_later};
use crate::bounded::BoundedMap;
use crate::config::{PushMode, WechatMpConfig};
use crate::engine::{Engine, fill};
use crate::util::{Current, now_ms};

/// WeChat's limit for one text message, in UTF-8 bytes.
const MAX_REPLY_BYTES: usize = 2048;
/// WeChat's tries per message.
const TRIES: u32 = 3;

/// The `/wechat/mp` routes.
pub fn routes() -> axum::Router<MpState> {
    axum::Router::new().route("/wechat/mp/{id}", get(verify).post(callback))
}

/// One configured Official Account and its runtime state.
pub struct MpAccount {
    cfg: WechatMpConfig,
    endpoint: MpEndpoint,
    client: Option<MpClient>,
    /// False once WeChat said the account may not push (48001).
    push_allowed: AtomicBool,
    tries: Mutex<Tries>,
}

/// Message tries at most, per account (message ids come from outside; the oldest go first).
const MAX_TRIES: usize = 50_000;

/// Message tries by message id, each kept for twice the retry window (bounded: expired and
/// surplus entries go on insertion, with no sweep over the whole map).
type Tries = BoundedMap<String, TryState>;

fn tries_for(cfg: &WechatMpConfig) -> Tries {
    BoundedMap::new(MAX_TRIES, Duration::from_millis(cfg.retry_window_ms) * 2)
}

#[derive(Clone)]
struct TryState {
    first_seen: Instant,
    count: u32,
    delivered: Arc<AtomicBool>,
    /// Woken when a try claims the delivery: the watcher then stops waiting (and lets go of
    /// the answer) instead of holding it to the end of the retry window.
    claimed: Arc<tokio::sync::Notify>,
}

impl MpAccount {
    /// Builds an account from its configuration (validated by `check-config`).
    pub fn new(cfg: WechatMpConfig, http: reqwest::Client) -> anyhow::Result<Self> {
        let endpoint = MpEndpoint::new(
            cfg.token.expose(),
            &cfg.app_id,
            cfg.encoding_aes_key.as_ref().map(|k| k.expose()),
            cfg.previous_encoding_aes_key.as_ref().map(|k| k.expose()),
        )
        .map_err(|e| anyhow::anyhow!("wechat_mp {}: {e}", cfg.id))?;
        // With an AppSecret there is a client (voice downloads need its token), whether or
        // not it may push.
        let client = cfg
            .app_secret
            .as_ref()
            .map(|secret| MpClient::new(&cfg.api_base, &cfg.app_id, secret.expose(), http));
        let push_allowed = AtomicBool::new(client.is_some() && cfg.push != PushMode::Off);
        let tries = Mutex::new(tries_for(&cfg));
        Ok(Self {
            cfg,
            endpoint,
            client,
            push_allowed,
            tries,
        })
    }

    /// The account's id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.cfg.id
    }

    /// The account's configuration.
    #[must_use]
    pub fn config(&self) -> &WechatMpConfig {
        &self.cfg
    }

    /// Takes over the tries of messages still being answered by the account this one
    /// replaces (a reload), so a retry of such a message joins its watcher instead of
    /// starting a second one that would push the answer twice.
    #[must_use]
    pub fn taking_over(self, previous: &MpAccount) -> Self {
        let tries = previous
            .tries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        *self.tries.lock().unwrap_or_else(|p| p.into_inner()) = tries;
        self
    }

    fn can_push(&self) -> bool {
        self.push_allowed.load(Ordering::Relaxed)
    }

    /// The account's client when it may push (customer-service messages): it has an
    /// AppSecret and WeChat has not refused it the right.
    fn pushing_client(&self) -> Option<&MpClient> {
        self.client.as_ref().filter(|_| self.can_push())
    }

    /// Records one more try of a message; the first try also gets `true` (start the watcher).
    fn register_try(&self, id: &str) -> (TryState, bool) {
        let mut tries = self.tries.lock().unwrap_or_else(|p| p.into_inner());
        let (state, first) = tries.get_or_insert_with(id.to_owned(), || TryState {
            first_seen: Instant::now(),
            count: 0,
            delivered: Arc::new(AtomicBool::new(false)),
            claimed: Arc::new(tokio::sync::Notify::new()),
        });
        state.count += 1;
        (state.clone(), first)
    }
}

/// The configured accounts by id.
pub type Accounts = Arc<HashMap<String, Arc<MpAccount>>>;

/// What the Official Account handlers need.
#[derive(Clone)]
pub struct MpState {
    /// The conversation engine.
    pub engine: Engine,
    /// The accounts in force (a reload swaps them).
    pub accounts: Current<HashMap<String, Arc<MpAccount>>>,
}

async fn verify(
    State(st): State<MpState>,
    Path(id): Path<String>,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let Some(account) = st.accounts.get().get(&id).cloned() else {
        return (StatusCode::NOT_FOUND, "unknown account").into_response();
    };
    match account.endpoint.verify_url(&q) {
        Ok(echostr) => echostr.into_response(),
        Err(e) => {
            warn!(account = %id, error = %e, "URL verification refused");
            (StatusCode::FORBIDDEN, "signature check failed").into_response()
        }
    }
}

async fn callback(
    State(st): State<MpState>,
    Path(id): Path<String>,
    Query(q): Query<CallbackQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(account) = st.accounts.get().get(&id).cloned() else {
        return (StatusCode::NOT_FOUND, "unknown account").into_response();
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => return (e.status(), "body refused").into_response(),
    };
    if account.cfg.encoding_aes_key.is_some() && q.encrypt_type.as_deref() != Some("aes") {
        // In plaintext mode the signature does not cover the body: with a key configured,
        // only encrypted (safe or compatible mode) messages are accepted.
        warn!(account = %id, "plaintext callback refused: the account has an EncodingAESKey");
        return (StatusCode::FORBIDDEN, "encrypted messages only").into_response();
    }
    let opened = match account.endpoint.open(&q, &body, now_ms() / 1000) {
        Ok(o) => o,
        Err(e) => {
            metrics::counter!("chatrelay_mp_rejected_total").increment(1);
            warn!(account = %id, error = %e, "callback refused");
            let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            return (status, "refused").into_response();
        }
    };
    match fresh_delivery(&st, &account, &opened.delivery).await {
        Ok(true) => {}
        Ok(false) => {
            metrics::counter!("chatrelay_mp_rejected_total").increment(1);
            warn!(account = %id, "callback refused: a signed query replayed with another message");
            return (StatusCode::FORBIDDEN, "refused").into_response();
        }
        Err(e) => {
            // Without the nonce marks a replay cannot be told apart: refuse, WeChat retries.
            warn!(account = %id, error = %e, "checking the callback's nonce failed");
            return (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response();
        }
    }
    let msg = &opened.message;
    let key = UserKey::new(Platform::Mp, account.id(), msg.from_user.clone());
    let span = info_span!("mp", account = %id, user = %key.user, msg = %msg.dedupe_id());
    let text = answer(&st, &account, &key, &opened).instrument(span).await;
    let nonce = q.nonce.clone().unwrap_or_default();
    let timestamp = q.timestamp.clone().unwrap_or_default();
    match text {
        Some(text) => {
            let xml = text_reply_xml(&msg.from_user, &msg.to_user, now_ms() / 1000, &text);
            let sealed = account.endpoint.seal(&opened, &xml, &nonce, &timestamp);
            (
                [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
                sealed,
            )
                .into_response()
        }
        // "success" tells WeChat there is nothing to show and not to retry.
        None => "success".into_response(),
    }
}

/// Whether a signed request may be handled: its `(timestamp, nonce)` is remembered with the
/// hash of its message, per account, in the store's dedupe marks (so daemons sharing a database
/// share them) until its timestamp is too old to be accepted anyway; the same pair with
/// another message is a replay of a captured URL and refused. The same pair with the same
/// message is let through: it may be WeChat's own retry, and the message-id dedupe joins it to the
/// answer being made (see [`chatrelay_wechat::Delivery`]). In safe mode the signature covers
/// the ciphertext already; the check is the same, so that nothing depends on the mode.
async fn fresh_delivery(
    st: &MpState,
    account: &MpAccount,
    d: &chatrelay_wechat::Delivery,
) -> Result<bool, chatrelay_storage::StoreError> {
    st.engine
        .bind_mark(
            &format!("mp-nonce:{}:{}", account.id(), d.key),
            &d.message_sha256,
            d.expires_unix.saturating_mul(1000),
            now_ms(),
        )
        .await
}

/// What to answer passively, if anything.
async fn answer(
    st: &MpState,
    account: &Arc<MpAccount>,
    key: &UserKey,
    opened: &Opened,
) -> Option<String> {
    let msg = &opened.message;
    let texts = &account.cfg.texts;
    match &msg.kind {
        IncomingKind::Text { content } => {
            answer_text(st, account, key, opened, content, Vec::new()).await
        }
        IncomingKind::Voice {
            media_id,
            format,
            recognition,
        } => {
            if recognition.is_none() && st.engine.settings().speech.is_none() {
                // Nothing to transcribe with: the account's own words, as before `[speech]`.
                return Some(texts.voice_unrecognized.clone());
            }
            let mut voice = chatrelay_core::voice::Voice::new(
                format.clone(),
                account.client.clone().map(|client| {
                    Arc::new(MediaVoice::mp(client, media_id, format)) as Arc<dyn VoiceSource>
                }),
            );
            voice.recognition = recognition.clone();
            answer_inbound(st, account, key, opened, Some(voice), "", Vec::new()).await
        }
        // WeChat's PicUrl is a public link to the picture (no token needed).
        IncomingKind::Image { pic_url, .. } if !pic_url.is_empty() => {
            answer_text(st, account, key, opened, "", vec![pic_url.clone()]).await
        }
        IncomingKind::Image { .. } | IncomingKind::Other { .. } => Some(texts.unsupported.clone()),
        IncomingKind::Event {
            event, event_key, ..
        } => match event.to_ascii_lowercase().as_str() {
            "subscribe" => {
                let scene = event_key
                    .as_deref()
                    .and_then(|k| k.strip_prefix("qrscene_"));
                if let Err(e) = st.engine.record_user(key, None).await {
                    warn!(error = %e, "recording a new follower failed");
                }
                metrics::counter!("chatrelay_mp_subscribe_total").increment(1);
                info!(scene = scene.unwrap_or(""), "new follower");
                Some(account.cfg.welcome.clone())
            }
            "unsubscribe" => {
                info!("unfollowed");
                None
            }
            "click" => {
                let mapped = event_key.as_deref().and_then(|k| account.cfg.menu.get(k))?;
                answer_text(st, account, key, opened, mapped, Vec::new()).await
            }
            _ => None,
        },
    }
}

async fn answer_text(
    st: &MpState,
    account: &Arc<MpAccount>,
    key: &UserKey,
    opened: &Opened,
    text: &str,
    images: Vec<String>,
) -> Option<String> {
    let cfg = &account.cfg;
    if text.trim() == cfg.login_keyword.trim() {
        match first_login_request(st, key, opened).await {
            Ok(true) => {}
            Ok(false) => {
                metrics::counter!("chatrelay_mp_login_repeats_total").increment(1);
                warn!("a login-code request seen before; no code in the reply");
                return None;
            }
            Err(e) => {
                warn!(error = %e, "checking a login-code request failed");
                return Some(st.engine.settings().texts.unavailable.clone());
            }
        }
        return match crate::auth::issue_code_via(&st.engine, key, None).await {
            Ok((code, minutes)) => {
                let reply = fill(
                    &cfg.texts.login_code,
                    &[("code", &code), ("minutes", &minutes.to_string())],
                );
                Some(with_outbox(st, account, key, reply).await)
            }
            Err(e) => {
                warn!(error = %e, "issuing a login code failed");
                Some(st.engine.settings().texts.unavailable.clone())
            }
        };
    }
    answer_inbound(st, account, key, opened, None, text, images).await
}

/// Answers a message (text, pictures or a voice message) within WeChat's tries.
async fn answer_inbound(
    st: &MpState,
    account: &Arc<MpAccount>,
    key: &UserKey,
    opened: &Opened,
    voice: Option<chatrelay_core::voice::Voice>,
    text: &str,
    images: Vec<String>,
) -> Option<String> {
    let cfg = &account.cfg;
    let message_id = &opened.message.dedupe_id();
    let started = Instant::now();
    let (state, first) = account.register_try(message_id);
    let mut inbound = Inbound::text(key.clone(), message_id, text);
    inbound.images = images;
    inbound.voice = voice;
    if first {
        st.engine.tracker().spawn(
            watch(
                st.engine.clone(),
                account.clone(),
                inbound.clone(),
                state.clone(),
            )
            .in_current_span(),
        );
    }
    let wait = Duration::from_millis(cfg.passive_wait_ms);
    let reply = st.engine.handle(inbound);
    match tokio::time::timeout_at(started + wait, reply.collect()).await {
        Ok(event) => {
            if !claim(&st.engine, account, &state, key, message_id).await {
                // An earlier try (here or on another daemon) already answered this message.
                return None;
            }
            let text = event.user_text()?;
            speak_later(
                &st.engine,
                account.pushing_client(),
                key,
                message_id,
                &event,
            );
            Some(with_outbox(st, account, key, text).await)
        }
        Err(_) if try_number(&st.engine, account, &state, key, message_id).await < TRIES => {
            // Say nothing in time, so that WeChat tries again; the connection is dropped by
            // WeChat at 5 s, so whatever this returns later is not seen. Shutdown does not
            // wait for it (the watcher delivers the answer).
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(cfg.retry_window_ms)) => {}
                () = st.engine.shutdown_token().cancelled() => {}
            }
            None
        }
        Err(_) => Some(if account.can_push() {
            cfg.texts.thinking_push.clone()
        } else {
            cfg.texts.thinking_pending.clone()
        }),
    }
}

/// Whether a login-code request is seen for the first time (by message id, in the dedupe marks
/// daemons sharing a database share). A code answer is immediate, well inside WeChat's 5 s, so
/// WeChat has no reason to send the message again; a second sighting is someone's copy of it —
/// in plaintext mode an exact replay of a captured request (same signed timestamp and nonce,
/// same body), which the nonce check lets through as a possible retry. It gets the empty
/// "success" and no code: a fresh code would log the replayer in as the victim, and so would
/// the same code again (the user's live code is what asking again returns). Should a genuine
/// retry ever be answered this way, the user sends the keyword once more. The mark lasts the
/// message dedupe time, and at least as long as the request's timestamp is accepted.
async fn first_login_request(
    st: &MpState,
    key: &UserKey,
    opened: &Opened,
) -> Result<bool, chatrelay_storage::StoreError> {
    let now = now_ms();
    let dedupe = st.engine.settings().dedupe_ttl.as_millis() as i64;
    let expires = now
        .saturating_add(dedupe)
        .max(opened.delivery.expires_unix.saturating_mul(1000));
    st.engine
        .mark_once(
            &format!("mp-login:{key}#{}", opened.message.dedupe_id()),
            expires,
            now,
        )
        .await
}

/// Whether this try (or watcher) delivers the answer to message `id`: the first here, and on
/// a database shared by several daemons the first of them all (WeChat's tries of one message
/// may reach different daemons behind a load balancer).
async fn claim(
    engine: &Engine,
    account: &MpAccount,
    state: &TryState,
    key: &UserKey,
    id: &str,
) -> bool {
    let first = !state.delivered.swap(true, Ordering::SeqCst);
    if first {
        state.claimed.notify_waiters();
    }
    first && engine.claim_delivery(&shared_ref(account, key, id)).await
}

/// The name of message `id` in the marks daemons share.
fn shared_ref(account: &MpAccount, key: &UserKey, id: &str) -> String {
    format!("mp:{}:{key}#{id}", account.id())
}

/// Which of WeChat's tries this is: counted here, or, on a database shared by several daemons,
/// across all of them (tries of one message may reach different daemons), so that the last
/// try anywhere says the answer is coming instead of leaving WeChat to give up.
async fn try_number(
    engine: &Engine,
    account: &MpAccount,
    state: &TryState,
    key: &UserKey,
    id: &str,
) -> u32 {
    if !engine.is_shared() {
        return state.count;
    }
    engine.count_try(&shared_ref(account, key, id), TRIES).await
}

/// Puts what the user is still owed before `text`, keeps the first 2048 bytes for the passive
/// reply and sends the rest on (push, or the outbox).
async fn with_outbox(
    st: &MpState,
    account: &Arc<MpAccount>,
    key: &UserKey,
    text: String,
) -> String {
    let owed = match st.engine.outbox_take(&key.to_string()).await {
        Ok(owed) => owed,
        Err(e) => {
            warn!(error = %e, "reading the outbox failed");
            Vec::new()
        }
    };
    let mut all = owed;
    all.push(text);
    let combined = all.join("\n\n");
    let more = &account.cfg.texts.more;
    if combined.len() <= MAX_REPLY_BYTES {
        return combined;
    }
    let room = MAX_REPLY_BYTES.saturating_sub(more.len()).max(1);
    let mut parts = split_message(&combined, room, Unit::Bytes).into_iter();
    let first = parts.next().unwrap_or_default();
    let rest: Vec<String> = parts.collect();
    deliver_later(st.engine.clone(), account.clone(), key.clone(), rest, None);
    format!("{first}{more}")
}

/// After WeChat's tries are over, delivers an answer no try could deliver. On shutdown it
/// stops waiting for the tries: an answer no try has delivered yet goes to the outbox (the
/// user paid for it), to ride with the next message after the restart.
async fn watch(engine: Engine, account: Arc<MpAccount>, inbound: Inbound, state: TryState) {
    let key = inbound.key.clone();
    let message_id = inbound.message_id.clone();
    // At shutdown the engine ends an answer still being written (uncharged) by itself.
    let event = engine.handle(inbound).collect().await;
    let window_end = state.first_seen + Duration::from_millis(account.cfg.retry_window_ms);
    // A try that delivered (or gave up on) the answer ends the watch at once: holding every
    // answer for the whole window made memory follow the message rate times 15 s.
    let claimed = state.claimed.notified();
    tokio::pin!(claimed);
    claimed.as_mut().enable();
    if state.delivered.load(Ordering::SeqCst) {
        return;
    }
    let shutting_down = tokio::select! {
        () = tokio::time::sleep_until(window_end) => false,
        () = &mut claimed => return,
        () = engine.shutdown_token().cancelled() => true,
    };
    if !claim(&engine, &account, &state, &key, &message_id).await {
        return;
    }
    let Some(text) = event.user_text() else {
        return;
    };
    let parts = split_message(&text, MAX_REPLY_BYTES, Unit::Bytes);
    if shutting_down {
        if !matches!(event, chatrelay_core::ReplyEvent::Final { .. }) {
            // Not an answer (cut by the shutdown itself, say): nothing is owed.
            return;
        }
        info!(user = %key.user, "shutting down before WeChat's tries ended; the answer waits in the outbox");
        for part in &parts {
            keep(&engine, &key, part).await;
        }
        return;
    }
    info!(user = %key.user, "answer was too slow for a passive reply; delivering it later");
    let spoken = match &event {
        chatrelay_core::ReplyEvent::Final { text, .. } if engine.voice_reply_for(&key) => {
            Some((message_id.clone(), text.clone()))
        }
        _ => None,
    };
    deliver_later(engine, account, key, parts, spoken);
}

/// Pushes `parts` in order with the customer-service API where possible; whatever cannot be
/// pushed (or is not pushed yet when the daemon shuts down) goes to the outbox, to ride with
/// the user's next message.
///
/// `spoken` (the message id and the answer): once every part is pushed, the answer is also
/// spoken ([`send_spoken`]).
fn deliver_later(
    engine: Engine,
    account: Arc<MpAccount>,
    key: UserKey,
    parts: Vec<String>,
    spoken: Option<(String, String)>,
) {
    if parts.is_empty() {
        return;
    }
    let tracker = engine.tracker().clone();
    tracker.spawn(
        async move {
            let total = parts.len();
            let mut pushed = 0usize;
            let mut parts = parts.into_iter();
            if let Some(client) = account.pushing_client() {
                let shutdown = engine.shutdown_token().clone();
                for part in parts.by_ref() {
                    let sent = tokio::select! {
                        r = client.send_text(&key.user, &part) => Some(r),
                        () = shutdown.cancelled() => None,
                    };
                    match sent {
                        Some(Ok(())) => {
                            metrics::counter!("chatrelay_mp_pushed_total").increment(1);
                            pushed += 1;
                        }
                        Some(Err(e)) => {
                            if e.is_no_permission() && account.cfg.push == PushMode::Auto {
                                warn!(account = %account.id(), "the account may not push (48001); slow answers will wait for the next message");
                                account.push_allowed.store(false, Ordering::Relaxed);
                            } else {
                                warn!(error = %e, "push failed; keeping the answer for the next message");
                            }
                            keep(&engine, &key, &part).await;
                            break;
                        }
                        None => {
                            // Cut by shutdown: it may or may not have arrived; twice beats never.
                            warn!("shutting down during a push; keeping the rest for the next message");
                            keep(&engine, &key, &part).await;
                            break;
                        }
                    }
                }
            }
            for part in parts {
                keep(&engine, &key, &part).await;
            }
            if pushed == total
                && let Some((message_id, answer)) = spoken
                && let Some(client) = account.pushing_client()
            {
                send_spoken(&engine, client, &key, &message_id, &answer).await;
            }
        }
        .in_current_span(),
    );
}

async fn keep(engine: &Engine, key: &UserKey, text: &str) {
    metrics::counter!("chatrelay_mp_outbox_total").increment(1);
    if let Err(e) = engine.outbox_push(&key.to_string(), text).await {
        warn!(error = %e, "keeping an answer in the outbox failed; it is lost");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flood_of_message_ids_stays_within_the_bound() {
        let account = MpAccount::new(WechatMpConfig::default(), reqwest::Client::new()).unwrap();
        for i in 0..100_000 {
            let (_, first) = account.register_try(&format!("msg-{i}"));
            assert!(first);
        }
        let len = account.tries.lock().unwrap().len();
        assert!(len <= MAX_TRIES, "{len}");
        // The newest are remembered: a retry joins them.
        let (state, first) = account.register_try("msg-99999");
        assert!(!first);
        assert_eq!(state.count, 2);
    }

    #[tokio::test]
    async fn the_watcher_lets_go_once_a_try_delivered() {
        let config = crate::config::Config::default();
        let engine = Engine::new(
            chatrelay_storage::Store::open_temporary().unwrap(),
            Arc::new(crate::engine::llm::DemoBackend {
                piece_delay: Duration::ZERO,
            }),
            crate::engine::Settings::from_config(&config).unwrap(),
            tokio_util::sync::CancellationToken::new(),
            tokio_util::task::TaskTracker::new(),
        );
        let account =
            Arc::new(MpAccount::new(WechatMpConfig::default(), reqwest::Client::new()).unwrap());
        let (state, first) = account.register_try("m1");
        assert!(first);
        let key = UserKey::new(Platform::Mp, "main", "o_user");
        let inbound = Inbound::text(key.clone(), "m1", "hello");
        let watcher = tokio::spawn(watch(
            engine.clone(),
            account.clone(),
            inbound.clone(),
            state.clone(),
        ));
        // The passive reply of the first try delivers the answer.
        engine.handle(inbound).collect().await;
        assert!(claim(&engine, &account, &state, &key, "m1").await);
        // The retry window is 15.5 s; the watcher ends long before.
        tokio::time::timeout(Duration::from_secs(3), watcher)
            .await
            .expect("the watcher still holds the answer")
            .unwrap();
    }
}
