//! The conversation engine: one path for every platform.
//!
//! A chat-platform message goes: in-flight join → dedupe → commands → ban / rate limit →
//! reserve quota → memory (history trimmed to a token budget) → LLM stream → settle the
//! actual cost (a failure costs nothing) → append the turn. A `/v1` request skips dedupe,
//! commands and memory (the client sends the whole conversation) but is metered the same way.
//!
//! # Layout
//! - [`quota`]: day boundary, token estimates, prices.
//! - [`llm`]: the LLM backends (OpenAI-compatible and demo).
//! - [`ratelimit`]: the per-user sliding window.
//! - this module: [`Engine`], which implements [`chatrelay_core::Handler`].

pub mod llm;
pub mod quota;
pub mod ratelimit;

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
use llm::{LlmBackend, LlmEvent, LlmRequest};
use ratelimit::RateLimiter;

/// How long a finished platform answer stays in memory for redeliveries to pick up.
const JOIN_RETENTION: Duration = Duration::from_secs(600);

/// Milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The engine's settings, taken from [`Config`] once.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Models users may use, with prices.
    pub models: Vec<ModelConfig>,
    /// The default model.
    pub default_model: String,
    /// System prompt for chat platforms.
    pub system_prompt: String,
    /// History budget in estimated tokens.
    pub context_tokens: u64,
    /// Turns kept per conversation.
    pub max_turns: usize,
    /// Answer cap sent upstream.
    pub max_completion_tokens: Option<u32>,
    /// Free credits per day.
    pub free_daily: u64,
    /// Offset of the quota day, in seconds east of UTC.
    pub tz_offset_secs: i32,
    /// Reservation lifetime.
    pub reservation_ttl: Duration,
    /// Dedupe memory.
    pub dedupe_ttl: Duration,
    /// Longest accepted message.
    pub max_input_chars: usize,
    /// Messages per user per minute (0 = off).
    pub rate_limit_per_minute: u32,
    /// Command words.
    pub commands: crate::config::Commands,
    /// User-facing texts.
    pub texts: Texts,
    /// Credit packs on sale (for the buy command).
    pub products: Vec<crate::config::ProductConfig>,
    /// The web page users buy on, if the daemon has a public URL.
    pub public_url: Option<String>,
}

impl Settings {
    /// Reads the engine's part of a validated configuration.
    #[must_use]
    pub fn from_config(c: &Config) -> Self {
        Self {
            models: c.llm.models.clone(),
            default_model: c.llm.model.clone(),
            system_prompt: c.llm.system_prompt.clone(),
            context_tokens: c.llm.context_tokens,
            max_turns: c.llm.max_turns,
            max_completion_tokens: c.llm.max_completion_tokens,
            free_daily: c.quota.free_daily,
            // Validated by config; UTC+8 is the safe fallback for this product's users.
            tz_offset_secs: quota::parse_timezone(&c.quota.timezone).unwrap_or(8 * 3600),
            reservation_ttl: Duration::from_secs(c.quota.reservation_ttl_secs),
            dedupe_ttl: Duration::from_secs(c.bot.dedupe_ttl_secs),
            max_input_chars: c.bot.max_input_chars,
            rate_limit_per_minute: c.bot.rate_limit_per_minute,
            commands: c.bot.commands.clone(),
            texts: c.bot.texts.clone(),
            products: c.products.clone(),
            public_url: c.server.public_url.clone(),
        }
    }

    /// The configured model of that name.
    #[must_use]
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }

    /// Today's quota day number.
    #[must_use]
    pub fn today(&self) -> i64 {
        quota::day_number(now_ms(), self.tz_offset_secs)
    }
}

/// A `/v1` completion request, already authenticated and parsed.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    /// The requested model (must be configured).
    pub model: String,
    /// The conversation, as the client sent it.
    pub messages: Vec<Message>,
    /// The client's answer cap.
    pub max_completion_tokens: Option<u32>,
    /// Other parameters, passed through.
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Unique reference of this request (the ledger's idempotency key).
    pub reference: String,
    /// Where it came from: [`Platform::Web`](chatrelay_core::Platform::Web) for the chat page,
    /// else [`Platform::Api`](chatrelay_core::Platform::Api). Only for statistics.
    pub platform: chatrelay_core::Platform,
}

/// Where an answer's events go.
enum Sink {
    /// Straight to one reader (`/v1`); a reader that leaves cancels the call.
    Reply(ReplySender),
    /// Into the shared progress of a platform message, which any redelivery can follow;
    /// nobody leaving cancels it (the answer is still owed to the user).
    Progress(watch::Sender<Progress>),
}

impl Sink {
    async fn delta(&self, text: &str) -> bool {
        match self {
            Sink::Reply(tx) => tx.send(ReplyEvent::Delta(text.to_owned())).await,
            Sink::Progress(tx) => {
                tx.send_modify(|p| p.text.push_str(text));
                true
            }
        }
    }

    async fn closed(&self) {
        match self {
            Sink::Reply(tx) => tx.closed().await,
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
    inflight: Mutex<InflightMap>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

#[derive(Default)]
struct InflightMap {
    map: HashMap<String, Inflight>,
    last_sweep: Option<Instant>,
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
                inflight: Mutex::new(InflightMap::default()),
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

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Name of the LLM backend in use.
    #[must_use]
    pub fn backend_name(&self) -> &'static str {
        self.llm().name()
    }

    /// Periodic housekeeping: forget idle rate-limit windows, expired dedupe marks and old
    /// in-flight answers.
    pub fn housekeeping(&self) {
        self.inner.limiter.sweep();
        self.sweep_inflight(true);
        let answering = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .values()
            .filter(|f| f.rx.borrow().done.is_none())
            .count();
        metrics::gauge!("chatrelay_platform_answers_in_progress").set(answering as f64);
        metrics::gauge!("chatrelay_background_tasks").set(self.inner.tracker.len() as f64);
        let now = now_ms();
        if let Err(e) = self.inner.store.purge_expired_dedupe(now) {
            warn!(error = %e, "purging expired dedupe marks failed");
        }
        // Settled-reservation records only serve retries of the same reference; a day is far
        // beyond any retry window.
        if let Err(e) = self
            .inner
            .store
            .purge_settled_reservations(now - 86_400_000)
        {
            warn!(error = %e, "purging settled reservations failed");
        }
    }

    /// Answers a metered `/v1` request for `uid`. The first event tells the HTTP layer
    /// whether it failed before anything was generated (quota, ban, model...).
    pub fn complete(&self, uid: Uid, req: ApiRequest) -> Reply {
        let inner = &self.inner;
        let settings = self.settings();
        let Some(model) = settings.model(&req.model).cloned() else {
            return Reply::failed(
                FailureKind::UnknownModel,
                fill(&settings.texts.unknown_model, &[("model", &req.model)]),
            );
        };
        self.inner.stats.active(settings.today(), uid);
        if let Some(refused) = self.guard(uid) {
            self.record_outcome(req.platform, &refused);
            return match refused {
                ReplyEvent::Failed { kind, message } => Reply::failed(kind, message),
                other => Reply::text(other.user_text().unwrap_or_default()),
            };
        }
        let (tx, reply) = Reply::channel();
        let this = self.clone();
        let span = info_span!("completion", %uid, model = %model.name, reference = %req.reference);
        inner.tracker.spawn(
            async move {
                let llm_req = LlmRequest {
                    model: model.name.clone(),
                    messages: req.messages,
                    max_completion_tokens: req.max_completion_tokens,
                    extra: req.extra,
                };
                let sink = Sink::Reply(tx.clone());
                let event = this
                    .run_llm(uid, &model, llm_req, &req.reference, &sink)
                    .await;
                this.record_outcome(req.platform, &event);
                tx.send(event).await;
            }
            .instrument(span),
        );
        reply
    }

    /// Ban and rate limit; `Some(failure)` when the user may not ask now.
    fn guard(&self, uid: Uid) -> Option<ReplyEvent> {
        let inner = &self.inner;
        let settings = self.settings();
        let texts = &settings.texts;
        match inner.store.user(uid) {
            Ok(Some(user)) if user.banned => {
                return Some(failed(FailureKind::Banned, &texts.banned));
            }
            Ok(Some(_)) => {}
            Ok(None) => return Some(failed(FailureKind::Banned, &texts.banned)),
            Err(e) => {
                warn!(error = %e, "store failed reading user");
                return Some(failed(FailureKind::Unavailable, &texts.unavailable));
            }
        }
        if !inner.limiter.allow(uid) {
            metrics::counter!("chatrelay_rate_limited_total").increment(1);
            return Some(failed(FailureKind::RateLimited, &texts.rate_limited));
        }
        None
    }

    /// Reserve → call → settle. Returns the terminal event; deltas went to `sink`.
    async fn run_llm(
        &self,
        uid: Uid,
        model: &ModelConfig,
        req: LlmRequest,
        reference: &str,
        sink: &Sink,
    ) -> ReplyEvent {
        let inner = &self.inner;
        let s = self.settings();
        let prompt_est: u64 = req
            .messages
            .iter()
            .map(|m| quota::estimate_tokens(&m.text()))
            .sum();
        let max_completion = req.max_completion_tokens.map(u64::from);
        let estimate = quota::estimate_cost(model, prompt_est, max_completion);
        let expires = now_ms().saturating_add(s.reservation_ttl.as_millis() as i64);
        let reservation =
            match inner
                .store
                .reserve(uid, estimate, reference, s.today(), s.free_daily, expires)
            {
                Ok(id) => id,
                Err(StoreError::InsufficientCredits { available, needed }) => {
                    metrics::counter!("chatrelay_insufficient_quota_total").increment(1);
                    return failed(
                        FailureKind::InsufficientQuota,
                        fill(
                            &s.texts.insufficient_quota,
                            &[
                                ("needed", &needed.to_string()),
                                ("available", &available.to_string()),
                                ("buy_hint", &s.texts.buy_hint),
                            ],
                        ),
                    );
                }
                Err(StoreError::AlreadySettled(_)) => {
                    return failed(FailureKind::Duplicate, "");
                }
                Err(e) => {
                    warn!(error = %e, "reserving credits failed");
                    return failed(FailureKind::Unavailable, &s.texts.unavailable);
                }
            };

        let started = Instant::now();
        let llm = self.llm();
        let mut text = String::new();
        let mut usage: Option<Usage> = None;
        let outcome: Result<(), Ending> = async {
            let mut stream = tokio::select! {
                r = llm.stream(req) => r.map_err(Ending::Upstream)?,
                () = sink.closed() => return Err(Ending::Cancelled),
                () = inner.shutdown.cancelled() => return Err(Ending::Shutdown),
            };
            loop {
                let item = tokio::select! {
                    item = stream.next() => item,
                    () = sink.closed() => return Err(Ending::Cancelled),
                    () = inner.shutdown.cancelled() => return Err(Ending::Shutdown),
                };
                match item {
                    None => return Ok(()),
                    Some(Ok(LlmEvent::Delta(d))) => {
                        text.push_str(&d);
                        if !sink.delta(&d).await {
                            return Err(Ending::Cancelled);
                        }
                    }
                    Some(Ok(LlmEvent::Usage(u))) => usage = Some(u),
                    Some(Err(e)) => return Err(Ending::Upstream(e)),
                }
            }
        }
        .await;
        metrics::histogram!("chatrelay_llm_seconds").record(started.elapsed().as_secs_f64());

        match outcome {
            Ok(()) => {
                let usage = usage.unwrap_or_else(|| Usage {
                    prompt_tokens: prompt_est,
                    completion_tokens: quota::estimate_tokens(&text),
                });
                let cost = quota::actual_cost(model, &usage);
                let charged = self.settle(reservation, cost, &model.name).unwrap_or(0);
                self.record_usage(&s, &model.name, &usage, charged);
                metrics::counter!("chatrelay_llm_requests_total", "outcome" => "ok").increment(1);
                self.upstream_outcome(true, None);
                metrics::counter!("chatrelay_credits_charged_total").increment(charged);
                info!(
                    prompt_tokens = usage.prompt_tokens,
                    completion_tokens = usage.completion_tokens,
                    charged,
                    ms = started.elapsed().as_millis() as u64,
                    "answered"
                );
                ReplyEvent::Final {
                    text,
                    usage: Some(usage),
                    charged,
                }
            }
            Err(Ending::Cancelled) if !text.is_empty() => {
                // The reader stopped a generation it had partly received: charge what it got.
                let usage = Usage {
                    prompt_tokens: prompt_est,
                    completion_tokens: quota::estimate_tokens(&text),
                };
                let charged = self
                    .settle(reservation, quota::actual_cost(model, &usage), &model.name)
                    .unwrap_or(0);
                self.record_usage(&s, &model.name, &usage, charged);
                metrics::counter!("chatrelay_llm_requests_total", "outcome" => "cancelled")
                    .increment(1);
                metrics::counter!("chatrelay_credits_charged_total").increment(charged);
                info!(charged, "stopped by the reader");
                failed(FailureKind::Unavailable, "cancelled")
            }
            Err(ending) => {
                self.release(reservation);
                let (label, kind, message) = match &ending {
                    Ending::Upstream(e) => {
                        warn!(error = %e, "LLM call failed; nothing charged");
                        self.upstream_outcome(false, Some(&e.to_string()));
                        (
                            "error",
                            FailureKind::Upstream,
                            s.texts.upstream_error.as_str(),
                        )
                    }
                    Ending::Shutdown => (
                        "shutdown",
                        FailureKind::Unavailable,
                        s.texts.unavailable.as_str(),
                    ),
                    Ending::Cancelled => ("cancelled", FailureKind::Unavailable, "cancelled"),
                };
                metrics::counter!("chatrelay_llm_requests_total", "outcome" => label).increment(1);
                failed(kind, message)
            }
        }
    }

    fn record_usage(&self, s: &Settings, model: &str, usage: &Usage, charged: u64) {
        let model_label = model.to_owned();
        metrics::counter!("chatrelay_llm_tokens_total", "kind" => "prompt", "model" => model_label.clone())
            .increment(usage.prompt_tokens);
        metrics::counter!("chatrelay_llm_tokens_total", "kind" => "completion", "model" => model_label)
            .increment(usage.completion_tokens);
        self.inner.stats.usage(
            s.today(),
            model,
            usage.prompt_tokens,
            usage.completion_tokens,
            charged,
        );
    }

    /// Settles a reservation; returns the credits charged.
    fn settle(&self, id: ReservationId, cost: u64, model: &str) -> Option<u64> {
        let s = self.settings();
        match self.inner.store.settle(
            id,
            cost,
            &format!("answer ({model})"),
            s.today(),
            s.free_daily,
            now_ms(),
        ) {
            Ok(Some(entry)) => Some(
                entry
                    .free_delta
                    .saturating_add(entry.paid_delta)
                    .unsigned_abs(),
            ),
            Ok(None) => Some(0),
            Err(e) => {
                // The reservation stays; it is released at the next start-up.
                warn!(error = %e, reservation = %id, "settling failed");
                None
            }
        }
    }

    fn release(&self, id: ReservationId) {
        if let Err(e) = self.inner.store.release(id) {
            warn!(error = %e, reservation = %id, "releasing a reservation failed");
        }
    }

    fn sweep_inflight(&self, force: bool) {
        let mut guard = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if !force
            && guard
                .last_sweep
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(5))
        {
            return;
        }
        guard.last_sweep = Some(now);
        guard.map.retain(|_, f| {
            f.rx.borrow().done.is_none() || now.duration_since(f.started) < JOIN_RETENTION
        });
    }

    /// Answers a chat-platform message (the body of [`Handler::handle`]).
    async fn answer_platform(&self, inbound: Inbound, sink: &Sink) -> ReplyEvent {
        let inner = &self.inner;
        let s = self.settings();
        let uid = match inner
            .store
            .resolve_identity(&inbound.key, inbound.display_name.as_deref())
        {
            Ok(uid) => uid,
            Err(e) => {
                warn!(error = %e, "resolving the user failed");
                return failed(FailureKind::Unavailable, &s.texts.unavailable);
            }
        };
        let conversation = inbound.key.to_string();
        if let Some(command) = self.command(&inbound.text) {
            return self.run_command(command, uid, &conversation);
        }
        inner.stats.active(s.today(), uid);
        if let Some(refused) = self.guard(uid) {
            return refused;
        }
        let payer = match &inbound.bill_to {
            None => uid,
            Some(key) => match inner.store.resolve_identity(key, None) {
                Ok(payer) => payer,
                Err(e) => {
                    warn!(error = %e, "resolving who pays failed");
                    return failed(FailureKind::Unavailable, &s.texts.unavailable);
                }
            },
        };
        let Some(model) = s.model(&s.default_model).cloned() else {
            return failed(FailureKind::UnknownModel, &s.texts.unavailable);
        };
        let history = if !inbound.remember {
            Vec::new()
        } else {
            match inner.store.conversation(&conversation) {
                Ok(h) => h,
                Err(e) => {
                    // Answering without memory beats not answering.
                    warn!(error = %e, "reading the conversation failed");
                    Vec::new()
                }
            }
        };
        let messages = build_prompt(&s.system_prompt, &history, &inbound.text, s.context_tokens);
        let req = LlmRequest {
            model: model.name.clone(),
            messages,
            max_completion_tokens: s.max_completion_tokens,
            extra: serde_json::Map::new(),
        };
        let reference = format!("msg:{}#{}", inbound.key, inbound.message_id);
        let event = self.run_llm(payer, &model, req, &reference, sink).await;
        if let ReplyEvent::Final { text, .. } = &event
            && inbound.remember
        {
            let at_ms = now_ms();
            let turns = [
                Turn {
                    role: "user".to_owned(),
                    content: inbound.text.clone(),
                    at_ms,
                },
                Turn {
                    role: "assistant".to_owned(),
                    content: text.clone(),
                    at_ms,
                },
            ];
            if let Err(e) = inner.store.append_turns(&conversation, &turns, s.max_turns) {
                warn!(error = %e, "saving the conversation failed");
            }
        }
        event
    }

    fn command(&self, text: &str) -> Option<Command> {
        let t = text.trim();
        let matches = |words: &[String]| words.iter().any(|w| w.trim().eq_ignore_ascii_case(t));
        let settings = self.settings();
        let c = &settings.commands;
        if matches(&c.help) {
            Some(Command::Help)
        } else if matches(&c.new) {
            Some(Command::New)
        } else if matches(&c.quota) {
            Some(Command::Quota)
        } else if matches(&c.buy) {
            Some(Command::Buy)
        } else {
            None
        }
    }

    fn run_command(&self, command: Command, uid: Uid, conversation: &str) -> ReplyEvent {
        let inner = &self.inner;
        let s = self.settings();
        let first = |words: &[String]| words.first().cloned().unwrap_or_default();
        let text = match command {
            Command::Help => fill(
                &s.texts.help,
                &[
                    ("new", &first(&s.commands.new)),
                    ("quota", &first(&s.commands.quota)),
                    ("buy", &first(&s.commands.buy)),
                ],
            ),
            Command::Buy if s.products.is_empty() => s.texts.buy_none.clone(),
            Command::Buy => {
                let lines: Vec<String> = s
                    .products
                    .iter()
                    .map(|p| format!("· {}：¥{}（{} 额度）", p.name, yuan(p.price_fen), p.credits))
                    .collect();
                let url = s.public_url.as_deref().map_or_else(
                    || "/".to_owned(),
                    |u| format!("{}/#buy", u.trim_end_matches('/')),
                );
                fill(
                    &s.texts.buy,
                    &[("products", &lines.join("\n")), ("url", &url)],
                )
            }
            Command::New => match inner.store.clear_conversation(conversation) {
                Ok(()) => s.texts.new_conversation.clone(),
                Err(e) => {
                    warn!(error = %e, "clearing the conversation failed");
                    return failed(FailureKind::Unavailable, &s.texts.unavailable);
                }
            },
            Command::Quota => match inner.store.balance(uid, s.today(), s.free_daily) {
                Ok(b) => quota_text(&s.texts.quota, &b, s.free_daily),
                Err(e) => {
                    warn!(error = %e, "reading the balance failed");
                    return failed(FailureKind::Unavailable, &s.texts.unavailable);
                }
            },
        };
        ReplyEvent::Final {
            text,
            usage: None,
            charged: 0,
        }
    }
}

/// Fills the quota text's placeholders.
#[must_use]
pub fn quota_text(template: &str, b: &Balance, free_daily: u64) -> String {
    fill(
        template,
        &[
            ("free_left", &b.free_left.to_string()),
            ("free_daily", &free_daily.to_string()),
            ("paid", &b.paid.to_string()),
            ("available", &b.available.to_string()),
        ],
    )
}

enum Ending {
    Upstream(llm::LlmError),
    Cancelled,
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Help,
    New,
    Quota,
    Buy,
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
        },
        _ => "answered",
    }
}

/// Fen as yuan with two decimals: 450 → "4.50".
#[must_use]
pub fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let abs = fen.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

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

impl Handler for Engine {
    fn handle(&self, inbound: Inbound) -> Reply {
        let s = self.settings();
        let text = inbound.text.trim();
        if text.is_empty() {
            return Reply::text(&s.texts.empty);
        }
        if text.chars().count() > s.max_input_chars {
            return Reply::text(fill(
                &s.texts.too_long,
                &[("max", &s.max_input_chars.to_string())],
            ));
        }
        if self.inner.shutdown.is_cancelled() {
            return Reply::failed(FailureKind::Unavailable, &s.texts.unavailable);
        }
        self.sweep_inflight(false);
        let id = format!("{}#{}", inbound.key, inbound.message_id);
        let rx = {
            let mut guard = self
                .inner
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(existing) = guard.map.get(&id) {
                metrics::counter!("chatrelay_redeliveries_joined_total").increment(1);
                existing.rx.clone()
            } else {
                let now = now_ms();
                let expires = now.saturating_add(s.dedupe_ttl.as_millis() as i64);
                match self.inner.store.dedupe_insert(&id, expires, now) {
                    Ok(true) => {}
                    Ok(false) => {
                        // Seen before, answered in an earlier run: not answered twice.
                        metrics::counter!("chatrelay_duplicates_dropped_total").increment(1);
                        return Reply::failed(FailureKind::Duplicate, "");
                    }
                    Err(e) => {
                        warn!(error = %e, "dedupe failed");
                        return Reply::failed(FailureKind::Unavailable, &s.texts.unavailable);
                    }
                }
                let (tx, rx) = watch::channel(Progress::default());
                guard.map.insert(
                    id.clone(),
                    Inflight {
                        rx: rx.clone(),
                        started: Instant::now(),
                    },
                );
                let this = self.clone();
                let span = info_span!("message", key = %inbound.key, msg = %inbound.message_id);
                self.inner.tracker.spawn(
                    async move {
                        let sink = Sink::Progress(tx);
                        let platform = inbound.key.platform;
                        let event = this.answer_platform(inbound, &sink).await;
                        this.record_outcome(platform, &event);
                        if let Sink::Progress(tx) = sink {
                            tx.send_modify(|p| p.done = Some(event));
                        }
                    }
                    .instrument(span),
                );
                rx
            }
        };
        follow(rx, &self.inner.tracker)
    }
}

/// A [`Reply`] that follows a shared answer from the start: the text so far as one delta,
/// then each new piece, then the terminal event.
fn follow(mut rx: watch::Receiver<Progress>, tracker: &TaskTracker) -> Reply {
    let (tx, reply) = Reply::channel();
    tracker.spawn(async move {
        let mut sent = 0usize;
        loop {
            let (piece, done) = {
                let p = rx.borrow_and_update();
                let piece = p.text.get(sent..).unwrap_or_default().to_owned();
                sent = p.text.len();
                (piece, p.done.clone())
            };
            if !piece.is_empty() && !tx.send(ReplyEvent::Delta(piece)).await {
                return;
            }
            if let Some(done) = done {
                tx.send(done).await;
                return;
            }
            if rx.changed().await.is_err() {
                // The producer vanished without finishing (a panic): say so.
                tx.send(failed(FailureKind::Unavailable, "answer interrupted"))
                    .await;
                return;
            }
        }
    });
    reply
}

#[cfg(test)]
mod tests;
