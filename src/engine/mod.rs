//! The conversation engine: one path for every platform.
//!
//! A chat-platform message goes: in-flight join → dedupe → commands → ban / rate limit →
//! content rules on the question (words) → keyword replies (free) → the moderation endpoint →
//! model and role (the user's choice, the scope's default) and its permission →
//! reserve quota → memory (history trimmed to a token budget) → LLM stream, checked by the
//! content rules as it grows → settle the actual cost (a failure costs nothing) → append the
//! turn. A `/v1` request skips dedupe,
//! commands and memory (the client sends the whole conversation) but is metered the same way.
//!
//! # Layout
//! - [`quota`]: day boundary, token estimates, prices.
//! - [`llm`]: the LLM backends (OpenAI-compatible and demo).
//! - [`ratelimit`]: the per-user sliding window.
//! - [`policy`]: scopes, model and role choice, model permissions.
//! - [`fetch`]: downloading pictures users send, from public addresses only.
//! - `settings`: the engine's settings; `api`: `/v1` completions; `platform`: a chat-platform
//!   message (and its conversation continued from the web page); `commands`: chat commands;
//!   `checks`: ban, rate limit, permissions, content rules; `answer`: one metered LLM answer;
//!   `meter`: reserve, settle, refunds; `images`: pictures in and out; `voice`: voice
//!   messages in ([`ffmpeg`] converts WeChat's audio); [`speak`]: answers spoken (voice
//!   out); `delivery`: who
//!   delivers an answer, across daemons; `upkeep`: sweeps and purges (expired guests' saved
//!   conversations too).
//! - what channels keep through the engine instead of naming the store: `accounts` (users,
//!   guests, an account's balance and ledger), `marks` (dedupe marks of their own), `outbox`
//!   (answers owed), `progress` (a poller's checkpoints and counters).
//! - this module: [`Engine`], which implements [`chatrelay_core::Handler`] (the in-flight join
//!   of redeliveries lives here).

mod accounts;
mod answer;
mod api;
mod checks;
mod codes;
mod commands;
mod delivery;
pub mod fetch;
pub mod ffmpeg;
mod images;
pub mod llm;
mod marks;
mod meter;
mod outbox;
mod platform;
pub mod policy;
mod progress;
pub mod quota;
pub mod ratelimit;
mod settings;
pub mod speak;
mod upkeep;
mod voice;

pub use accounts::{Account, Guest};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chatrelay_core::{FailureKind, Handler, Inbound, Reply, ReplyEvent, ReplySender, Usage};
use chatrelay_openai::Message;
use chatrelay_storage::{Balance, ReservationId, Store, StoreError, Turn, Uid};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::config::{Config, ModelConfig, Texts};
use crate::util::{now_ms, yuan};
pub use api::*;
pub use commands::*;
use delivery::*;
use llm::{LlmBackend, LlmEvent, LlmRequest};
use meter::*;
use ratelimit::RateLimiter;
pub use settings::*;

/// Pictures passed to the model per message at most.
const MAX_PICTURES: usize = 4;

/// Store key prefix of content-rule hits (`hit:<ms>:<uid>:<random>` → JSON).
pub const HIT_PREFIX: &str = "hit:";

/// The keyword answer for `text` in `scope`, free of charge.
fn keyword_reply(s: &Settings, scope: &str, text: &str) -> Option<ReplyEvent> {
    let k = s.keywords.find(text, scope)?;
    metrics::counter!("chatrelay_keyword_replies_total", "rule" => k.id.to_owned()).increment(1);
    Some(free_answer(k.reply.into_owned()))
}

/// How long a finished platform answer stays in memory for redeliveries to pick up.
const JOIN_RETENTION: Duration = Duration::from_secs(600);

/// Finished platform answers kept for redeliveries at most (the newest; platforms retry
/// within seconds). Without a cap the map held every answer of the last ten minutes: at a
/// few hundred new followers a second, most of the daemon's memory.
const MAX_FINISHED_KEPT: usize = 4_096;

/// Where an answer's events go.
enum Sink {
    /// Straight to one reader (`/v1`); a reader that leaves cancels the call. `streamed`: the
    /// reader passes pieces on as they come (else it waits for the whole answer).
    Reply { tx: ReplySender, streamed: bool },
    /// Into the shared progress of a platform message, which any redelivery can follow;
    /// nobody leaving cancels it (the answer is still owed to the user).
    Progress(watch::Sender<Progress>),
}

impl Sink {
    async fn delta(&self, text: &str) -> bool {
        match self {
            Sink::Reply { tx, .. } => tx.send(ReplyEvent::Delta(text.to_owned())).await,
            Sink::Progress(tx) => {
                tx.send_modify(|p| p.text.push_str(text));
                true
            }
        }
    }

    /// Whether text sent here reaches its reader as it comes (so a reader that leaves has
    /// received, and pays for, what was sent).
    fn delivers_pieces(&self) -> bool {
        match self {
            Sink::Reply { streamed, .. } => *streamed,
            Sink::Progress(_) => true,
        }
    }

    async fn closed(&self) {
        match self {
            Sink::Reply { tx, .. } => tx.closed().await,
            Sink::Progress(_) => std::future::pending().await,
        }
    }
}

/// A platform answer in progress (or just finished).
#[derive(Debug, Clone, Default)]
struct Progress {
    text: String,
    done: Option<ReplyEvent>,
}

struct Inflight {
    rx: watch::Receiver<Progress>,
    started: Instant,
}

struct Inner {
    /// The store's domain interface (sled or PostgreSQL behind it).
    store: Store,
    /// Swapped whole on a configuration reload; calls in flight keep the one they started with.
    llm: RwLock<Arc<dyn LlmBackend>>,
    alerts: crate::alerts::Alerter,
    /// Upstream failures since the last success, and when operators were last told.
    upstream_streak: Mutex<(u32, Option<Instant>)>,
    /// Swapped whole on a configuration reload; a message in flight keeps its snapshot.
    settings: RwLock<Arc<Settings>>,
    limiter: RateLimiter,
    stats: crate::stats::Stats,
    /// Redeems codes, with the limits on wrong ones (web API and chat command share them).
    codes: crate::codes::Redeemer,
    /// Downloads pictures users send; built on first use (a TLS client costs memory that a
    /// daemon without vision models need not carry), and again when the trusted hosts change.
    pictures: Mutex<Option<Arc<fetch::PictureFetcher>>>,
    inflight: Mutex<InflightMap>,
    /// The uid the usage log's pruning goes on from (0: a new pass).
    usage_purge_from: std::sync::atomic::AtomicU64,
    /// When the next pass of the usage log's pruning may start (ms; passes run hourly).
    usage_purge_after: std::sync::atomic::AtomicI64,
    /// The uid the cleanup of expired guests' saved conversations goes on from (0: a new pass).
    guest_chats_from: std::sync::atomic::AtomicU64,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

#[derive(Default)]
struct InflightMap {
    map: HashMap<String, Inflight>,
    last_sweep: Option<Instant>,
    /// Entries left by the last sweep: the next one comes when the map has doubled (or after
    /// 5 s), so sweeping stays amortised O(1) per message.
    after_sweep: usize,
}

/// The conversation engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Builds the engine. Its tasks are spawned on `tracker` and stop on `shutdown`.
    pub fn new(
        store: Store,
        llm: Arc<dyn LlmBackend>,
        settings: Settings,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        let limiter = RateLimiter::new(settings.rate_limit_per_minute);
        Self {
            inner: Arc::new(Inner {
                store,
                llm: RwLock::new(llm),
                alerts: crate::alerts::Alerter::default(),
                upstream_streak: Mutex::new((0, None)),
                settings: RwLock::new(Arc::new(settings)),
                limiter,
                stats: crate::stats::Stats::default(),
                codes: crate::codes::Redeemer::default(),
                pictures: Mutex::new(None),
                inflight: Mutex::new(InflightMap::default()),
                usage_purge_from: std::sync::atomic::AtomicU64::new(0),
                usage_purge_after: std::sync::atomic::AtomicI64::new(0),
                guest_chats_from: std::sync::atomic::AtomicU64::new(0),
                shutdown,
                tracker,
            }),
        }
    }

    /// Sends operators' alerts (an upstream failing again and again) through `alerts`.
    /// Call before the engine is shared.
    #[must_use]
    pub fn with_alerts(mut self, alerts: crate::alerts::Alerter) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.alerts = alerts;
        }
        self
    }

    /// Counts upstream outcomes; tells operators when calls keep failing (at most every
    /// ten minutes).
    fn upstream_outcome(&self, ok: bool, error: Option<&str>) {
        const STREAK: u32 = 5;
        const QUIET: Duration = Duration::from_secs(600);
        let mut guard = self
            .inner
            .upstream_streak
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if ok {
            guard.0 = 0;
            return;
        }
        guard.0 = guard.0.saturating_add(1);
        let due = guard.1.is_none_or(|t| t.elapsed() >= QUIET);
        if guard.0 >= STREAK && due {
            guard.1 = Some(Instant::now());
            let n = guard.0;
            drop(guard);
            self.inner.alerts.alert(format!(
                "大模型接口连续 {n} 次调用失败（{}）：{}",
                self.llm().name(),
                error.unwrap_or("")
            ));
        }
    }

    /// The engine's settings now (a snapshot: a reload swaps in new ones).
    #[must_use]
    pub fn settings(&self) -> Arc<Settings> {
        self.inner
            .settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The LLM backend now.
    #[must_use]
    pub fn llm(&self) -> Arc<dyn LlmBackend> {
        self.inner
            .llm
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies a reloaded configuration: new messages use `settings` and `llm`; answers in
    /// flight finish with what they started with.
    pub fn reload(&self, settings: Settings, llm: Arc<dyn LlmBackend>) {
        self.inner.limiter.set_limit(settings.rate_limit_per_minute);
        *self
            .inner
            .settings
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
        *self.inner.llm.write().unwrap_or_else(|p| p.into_inner()) = llm;
    }

    /// Today's statistics, not yet written to the store.
    #[must_use]
    pub fn stats(&self) -> &crate::stats::Stats {
        &self.inner.stats
    }

    /// Counts how a message or API call ended, in the metrics and the daily statistics.
    fn record_outcome(&self, platform: chatrelay_core::Platform, event: &ReplyEvent) {
        let outcome = outcome_label(event);
        metrics::counter!("chatrelay_messages_total", "platform" => platform.as_str(), "outcome" => outcome)
            .increment(1);
        self.inner
            .stats
            .message(self.settings().today(), platform.as_str(), outcome);
    }

    /// The store's domain interface.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The daemon's one task tracker: every task spawned on behalf of a request goes through
    /// it, so that shutdown waits for it (a charged answer is never dropped on the floor).
    #[must_use]
    pub fn tracker(&self) -> &TaskTracker {
        &self.inner.tracker
    }

    /// Fires when the daemon shuts down.
    #[must_use]
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Name of the LLM backend in use.
    #[must_use]
    pub fn backend_name(&self) -> &'static str {
        self.llm().name()
    }
}

enum Ending {
    Upstream(llm::LlmError),
    Cancelled,
    Shutdown,
    /// An output content rule hit.
    Cut(chatrelay_rules::Hit),
}

/// Who asks, from where (what content-rule hits are recorded with), and what the call costs
/// beyond the model's price.
struct Watch {
    uid: Uid,
    platform: chatrelay_core::Platform,
    scope: String,
    /// Credits added to the answer's price (pictures sent to a vision model).
    surcharge: u64,
    /// The conversation the answer is remembered in, written with its settlement.
    memory: Option<Memory>,
}

/// The outcome of a message for metrics and statistics.
fn outcome_label(event: &ReplyEvent) -> &'static str {
    match event {
        ReplyEvent::Failed { kind, .. } => match kind {
            FailureKind::InsufficientQuota => "insufficient_quota",
            FailureKind::RateLimited => "rate_limited",
            FailureKind::Banned => "banned",
            FailureKind::UnknownModel => "unknown_model",
            FailureKind::InvalidRequest => "invalid_request",
            FailureKind::Upstream => "upstream_error",
            FailureKind::Unavailable => "unavailable",
            FailureKind::Duplicate => "duplicate",
            FailureKind::Refused => "refused",
            FailureKind::NotAllowed => "not_allowed",
        },
        _ => "answered",
    }
}

/// A free answer: `text`, nothing charged.
fn free_answer(text: String) -> ReplyEvent {
    ReplyEvent::Final {
        text,
        usage: None,
        charged: 0,
        images: Vec::new(),
    }
}

/// The "not enough credits" answer (counted in `chatrelay_insufficient_quota_total`).
fn insufficient_quota(s: &Settings, needed: u64, available: u64) -> ReplyEvent {
    metrics::counter!("chatrelay_insufficient_quota_total").increment(1);
    failed(
        FailureKind::InsufficientQuota,
        fill(
            &s.texts.insufficient_quota,
            &[
                ("needed", &needed.to_string()),
                ("available", &available.to_string()),
                ("buy_hint", &s.texts.buy_hint),
            ],
        ),
    )
}

/// A failed message: `kind`, with `message` for the user.
fn failed(kind: FailureKind, message: impl Into<String>) -> ReplyEvent {
    ReplyEvent::Failed {
        kind,
        message: message.into(),
    }
}

/// Replaces `{name}` placeholders.
#[must_use]
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in values {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// The prompt for a chat-platform message: the system prompt, as much recent history as
/// fits `budget` estimated tokens (whole turns, starting with a user turn), then the message.
#[must_use]
pub fn build_prompt(system: &str, history: &[Turn], text: &str, budget: u64) -> Vec<Message> {
    let mut used = quota::estimate_tokens(system) + quota::estimate_tokens(text);
    let mut start = history.len();
    for (i, turn) in history.iter().enumerate().rev() {
        let cost = quota::estimate_tokens(&turn.content);
        if used + cost > budget {
            break;
        }
        used += cost;
        start = i;
    }
    let mut kept = history.get(start..).unwrap_or_default();
    while kept.first().is_some_and(|t| t.role != "user") {
        kept = kept.get(1..).unwrap_or_default();
    }
    let mut messages = Vec::with_capacity(kept.len() + 2);
    if !system.trim().is_empty() {
        messages.push(Message::new("system", system));
    }
    messages.extend(
        kept.iter()
            .map(|t| Message::new(t.role.clone(), t.content.clone())),
    );
    messages.push(Message::new("user", text));
    messages
}

impl Engine {
    /// The answer to a message refused before anything else: empty, too long, or arriving
    /// while the daemon shuts down.
    fn refused_outright(&self, s: &Settings, inbound: &Inbound) -> Option<Reply> {
        let text = inbound.text.trim();
        if text.is_empty() && inbound.images.is_empty() && inbound.voice.is_none() {
            return Some(Reply::text(&s.texts.empty));
        }
        if text.chars().count() > s.max_input_chars {
            return Some(Reply::text(fill(
                &s.texts.too_long,
                &[("max", &s.max_input_chars.to_string())],
            )));
        }
        if self.inner.shutdown.is_cancelled() {
            return Some(Reply::failed(
                FailureKind::Unavailable,
                &s.texts.unavailable,
            ));
        }
        None
    }

    /// Takes the in-flight slot of message `id`: its progress channel, or (`Err`) the reply
    /// of a redelivery joining the call already answering it.
    fn take_slot(
        &self,
        id: &str,
    ) -> Result<(watch::Sender<Progress>, watch::Receiver<Progress>), Reply> {
        let mut guard = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = guard.map.get(id) {
            metrics::counter!("chatrelay_redeliveries_joined_total").increment(1);
            let rx = existing.rx.clone();
            drop(guard);
            return Err(follow(rx, &self.inner.tracker));
        }
        let (tx, rx) = watch::channel(Progress::default());
        guard.map.insert(
            id.to_owned(),
            Inflight {
                rx: rx.clone(),
                started: Instant::now(),
            },
        );
        Ok((tx, rx))
    }

    /// Admits a platform message (its dedupe mark `id` and its sender, one step off the async
    /// workers) and answers it in a task of its own, into its slot's progress; shares the
    /// answer with the other daemons on the database under `id`. A message seen before is
    /// refused, or on a shared database followed to the answer another daemon makes.
    fn spawn_platform_answer(
        &self,
        s: Arc<Settings>,
        inbound: Inbound,
        tx: watch::Sender<Progress>,
        id: String,
        (expires, now): (i64, i64),
    ) {
        let this = self.clone();
        let span = info_span!("message", key = %inbound.key, msg = %inbound.message_id);
        self.inner.tracker.spawn(
            async move {
                let admitted = match this.admit(&s, &inbound, &id, expires, now).await {
                    Dedupe::New(admitted) => admitted,
                    Dedupe::Elsewhere => {
                        // Another daemon is answering: the slot (this caller and whoever
                        // joined it, such as the Official Account's watcher) follows that
                        // answer through the database. Every follower must get it: one of
                        // them may be the one that delivers it.
                        let found = follow_shared(
                            this.inner.store.clone(),
                            id,
                            s.reservation_ttl,
                            &this.inner.tracker,
                        );
                        let event = found.collect().await;
                        tx.send_modify(|p| p.done = Some(event));
                        return;
                    }
                    Dedupe::Refused(event) => {
                        this.inner
                            .inflight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .map
                            .remove(&id);
                        // Joiners of the slot get the same word (a duplicate is silent).
                        tx.send_modify(|p| p.done = Some(event));
                        return;
                    }
                };
                let sink = Sink::Progress(tx);
                let platform = inbound.key.platform;
                let event = this.answer_platform(inbound, &sink, *admitted).await;
                this.record_outcome(platform, &event);
                this.share_answer(&id, &event, expires).await;
                if let Sink::Progress(tx) = sink {
                    tx.send_modify(|p| p.done = Some(event));
                }
            }
            .instrument(span),
        );
    }
}

impl Handler for Engine {
    fn handle(&self, inbound: Inbound) -> Reply {
        let s = self.settings();
        if let Some(reply) = self.refused_outright(&s, &inbound) {
            return reply;
        }
        self.sweep_inflight(false);
        let id = format!("{}#{}", inbound.key, inbound.message_id);
        // The slot is taken under the lock, the store asked after it is let go (no std mutex
        // is held across a store call): a redelivery arriving meanwhile joins the slot and
        // gets whatever this call decides.
        let (tx, rx) = match self.take_slot(&id) {
            Ok(slot) => slot,
            Err(joined) => return joined,
        };
        let now = now_ms();
        let expires = now.saturating_add(s.dedupe_ttl.as_millis() as i64);
        // The store is asked in the task (off the async workers), which settles the slot
        // whatever it finds: this caller follows the slot like any joiner.
        self.spawn_platform_answer(s, inbound, tx, id, (expires, now));
        follow(rx, &self.inner.tracker)
    }
}

/// What the dedupe mark says of a platform message.
enum Dedupe {
    /// First seen: answer it, with what the admit step read.
    New(Box<platform::Admitted>),
    /// Another daemon on the shared database is answering it: follow that answer.
    Elsewhere,
    /// Not to be answered: this is what the caller and the slot's joiners get.
    Refused(ReplyEvent),
}

#[cfg(test)]
pub(crate) mod tests;
