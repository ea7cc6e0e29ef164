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
//! - this module: [`Engine`], which implements [`chatrelay_core::Handler`].

pub mod fetch;
pub mod llm;
pub mod policy;
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
use crate::util::{now_ms, yuan};
use llm::{LlmBackend, LlmEvent, LlmRequest};
use ratelimit::RateLimiter;

/// Pictures passed to the model per message at most.
const MAX_PICTURES: usize = 4;

/// Store key prefix of content-rule hits (`hit:<ms>:<uid>:<random>` → JSON).
pub const HIT_PREFIX: &str = "hit:";

/// The keyword answer for `text` in `scope`, free of charge.
fn keyword_reply(s: &Settings, scope: &str, text: &str) -> Option<ReplyEvent> {
    let k = s.keywords.find(text, scope)?;
    metrics::counter!("chatrelay_keyword_replies_total", "rule" => k.id.to_owned()).increment(1);
    Some(ReplyEvent::Final {
        text: k.reply.into_owned(),
        usage: None,
        charged: 0,
        images: Vec::new(),
    })
}

/// The ledger reference of the answer to a chat-platform message: `img:` for a picture the
/// image command drew, `msg:` for anything else (an LLM answer).
fn platform_reference(inbound: &Inbound, drawn: bool) -> String {
    let kind = if drawn { "img" } else { "msg" };
    format!("{kind}:{}#{}", inbound.key, inbound.message_id)
}

/// How long a finished platform answer stays in memory for redeliveries to pick up.
const JOIN_RETENTION: Duration = Duration::from_secs(600);

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
    /// Named system prompts.
    pub roles: Vec<crate::config::RoleConfig>,
    /// Defaults per platform or account.
    pub scopes: Vec<crate::config::ScopeConfig>,
    /// Sensitive-word rules (shared with answers streaming when a reload swaps them).
    pub filter: Arc<chatrelay_rules::ContentFilter>,
    /// Free answers to common questions.
    pub keywords: Arc<chatrelay_rules::KeywordReplies>,
    /// The second stage of question checks, if configured.
    pub moderation: Option<Arc<Moderation>>,
    /// Credits per generated picture, when `[images]` is configured.
    pub image_credits: Option<u64>,
    /// Largest picture downloaded from a platform.
    pub max_image_bytes: usize,
    /// Hosts pictures may be fetched from whatever their address (`[bot] picture_trusted_hosts`).
    pub picture_trusted_hosts: Vec<String>,
}

/// An OpenAI-compatible moderation endpoint.
#[derive(Debug)]
pub struct Moderation {
    client: chatrelay_openai::Client,
    model: String,
    refusal: String,
    fail_closed: bool,
}

impl Settings {
    /// Reads the engine's part of a validated configuration (word lists are read again from
    /// disk, so a file changed since validation is reported here).
    pub fn from_config(c: &Config) -> anyhow::Result<Self> {
        let rule_errors = |errors: Vec<chatrelay_rules::RuleError>| {
            anyhow::anyhow!(
                "{}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        };
        let filter =
            chatrelay_rules::ContentFilter::build(&c.filters, &c.base_dir).map_err(rule_errors)?;
        let keywords = chatrelay_rules::KeywordReplies::build(&c.keywords).map_err(rule_errors)?;
        let moderation = match &c.moderation {
            None => None,
            Some(m) => Some(Arc::new(Moderation {
                client: chatrelay_openai::Client::new(chatrelay_openai::ClientConfig {
                    base_url: m.base_url.clone(),
                    api_keys: m.api_key.iter().map(|k| k.expose().to_owned()).collect(),
                    timeout: Duration::from_secs(10),
                    max_retries: 1,
                    ..chatrelay_openai::ClientConfig::default()
                })
                .map_err(|e| anyhow::anyhow!("moderation: {e}"))?,
                model: m.model.clone(),
                refusal: m.refusal.clone(),
                fail_closed: m.fail_closed,
            })),
        };
        Ok(Self {
            models: c.llm.models.clone(),
            default_model: c.llm.model.clone(),
            system_prompt: c.llm.system_prompt.clone(),
            context_tokens: c.llm.context_tokens,
            max_turns: c.llm.max_turns,
            max_completion_tokens: c.llm.max_completion_tokens,
            free_daily: c.quota.free_daily,
            // Validated by config; UTC+8 is the safe fallback for this product's users.
            tz_offset_secs: crate::util::parse_timezone(&c.quota.timezone).unwrap_or(8 * 3600),
            reservation_ttl: Duration::from_secs(c.quota.reservation_ttl_secs),
            dedupe_ttl: Duration::from_secs(c.bot.dedupe_ttl_secs),
            max_input_chars: c.bot.max_input_chars,
            rate_limit_per_minute: c.bot.rate_limit_per_minute,
            commands: c.bot.commands.clone(),
            texts: Texts {
                buy_hint: c.bot.texts.buy_hint_for(c),
                ..c.bot.texts.clone()
            },
            products: c.products.clone(),
            public_url: c.server.public_url.clone(),
            roles: c.roles.clone(),
            scopes: c.scopes.clone(),
            filter: Arc::new(filter),
            keywords: Arc::new(keywords),
            moderation,
            image_credits: c.images.as_ref().map(|i| i.credits),
            max_image_bytes: c.bot.max_image_bytes,
            picture_trusted_hosts: c.bot.picture_trusted_hosts.clone(),
        })
    }

    /// The configured model of that name.
    #[must_use]
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }

    /// Today's quota day number.
    #[must_use]
    pub fn today(&self) -> i64 {
        crate::util::day_number(now_ms(), self.tz_offset_secs)
    }
}

/// A `/v1` completion request, already authenticated and parsed.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    /// The requested model (must be configured).
    pub model: String,
    /// The conversation, as the client sent it.
    pub messages: Vec<Message>,
    /// The smallest answer cap the client sent (`max_tokens`, `max_completion_tokens`). The
    /// engine may lower it to what the payer's credits cover; the upstream gets exactly the
    /// limit that was reserved for.
    pub max_completion_tokens: Option<u32>,
    /// The client sent its cap only as the older `max_tokens`: send it upstream in that field.
    pub legacy_max_tokens: bool,
    /// The reader gets the answer piece by piece (`stream: true`). A streamed reader that
    /// leaves is charged for what it was sent; one waiting for the whole answer got nothing
    /// and pays nothing.
    pub streamed: bool,
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
    /// Downloads pictures users send; built on first use (a TLS client costs memory that a
    /// daemon without vision models need not carry), and again when the trusted hosts change.
    pictures: Mutex<Option<Arc<fetch::PictureFetcher>>>,
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
                pictures: Mutex::new(None),
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

    /// Whether this daemon delivers `what` (an answer pushed or sent after the platform's
    /// callback): always alone; on a shared database, only the first daemon to ask, so a
    /// message whose retries reached several daemons is delivered once.
    #[must_use]
    pub fn claim_delivery(&self, what: &str) -> bool {
        if !self.inner.store.is_shared() {
            return true;
        }
        match self.mark_first(&format!("delivered:{what}")) {
            Ok(first) => first,
            Err(e) => {
                // Better twice than never: the user asked and may have paid.
                warn!(error = %e, "claiming a delivery failed; delivering anyway");
                true
            }
        }
    }

    /// Which try of `what` this is (1, 2, ... up to `max`), counted across the daemons sharing
    /// the database: each try takes the first free mark `try:<what>:<n>` (the marks expire with
    /// the dedupe marks). A store failure counts as the last try.
    #[must_use]
    pub fn count_try(&self, what: &str, max: u32) -> u32 {
        for n in 1..max {
            match self.mark_first(&format!("try:{what}:{n}")) {
                Ok(true) => return n,
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, "counting a retry failed");
                    return max;
                }
            }
        }
        max
    }

    /// Sets the dedupe mark `key` for the dedupe TTL; true for the first to set it.
    fn mark_first(&self, key: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let expires = now.saturating_add(self.settings().dedupe_ttl.as_millis() as i64);
        self.inner.store.dedupe_insert(key, expires, now)
    }

    /// On a shared database, keeps the finished answer to a platform message for retries
    /// that reach other daemons (until the dedupe mark expires).
    fn share_answer(&self, id: &str, event: &ReplyEvent, expires_at_ms: i64) {
        if !self.inner.store.is_shared() {
            return;
        }
        let answer = chatrelay_storage::SharedAnswer {
            text: event.user_text(),
            expires_at_ms,
        };
        if let Err(e) = self.inner.store.put_answer(id, &answer) {
            warn!(error = %e, "keeping the answer for retries on other daemons failed");
        }
    }

    /// Periodic housekeeping of this daemon's memory: idle rate-limit windows, old in-flight
    /// answers, gauges. (Records in the store: [`Engine::purge_old_records`].)
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
    }

    /// Removes records past their time: expired dedupe marks, old content-rule hits and
    /// settled-reservation records; on a shared store also holds left open by a daemon that
    /// died (alone, a daemon releases its own at start). One daemon does this at a time.
    pub fn purge_old_records(&self) {
        let now = now_ms();
        if self.inner.store.is_shared() {
            match self.inner.store.release_stale_reservations(now) {
                Ok(0) => {}
                Ok(n) => warn!(
                    released = n,
                    "released expired reservations (a daemon died mid-answer?)"
                ),
                Err(e) => warn!(error = %e, "releasing expired reservations failed"),
            }
        }
        if let Err(e) = self.inner.store.purge_expired_dedupe(now) {
            warn!(error = %e, "purging expired dedupe marks failed");
        }
        // Content-rule hits are kept for admins for 180 days.
        let cutoff = format!("{HIT_PREFIX}{:013}", now - 180 * 86_400_000);
        if let Err(e) = self
            .inner
            .store
            .purge_checkpoints_before(HIT_PREFIX, &cutoff)
        {
            warn!(error = %e, "purging old content rule hits failed");
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
    /// whether it failed before anything was generated (quota, ban, model, content...).
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
        let pictures = req
            .messages
            .iter()
            .filter_map(|m| m.content.as_array())
            .flatten()
            .filter(|p| p.get("type").and_then(serde_json::Value::as_str) == Some("image_url"))
            .count() as u64;
        if pictures > 0 && !model.vision {
            return Reply::failed(
                FailureKind::InvalidRequest,
                format!("The model {} does not accept images.", model.name),
            );
        }
        let watch = Watch {
            uid,
            platform: req.platform,
            scope: policy::platform_scope(req.platform).to_owned(),
            surcharge: pictures.saturating_mul(model.credits_per_image),
        };
        // What the rules look at: the last thing the user said.
        let question = req
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(Message::text)
            .unwrap_or_default();
        // The chat page's image command draws (API clients asked a model, and get the model);
        // drawing does its own checks.
        let drawing = match (req.platform, self.command(&question)) {
            (chatrelay_core::Platform::Web, Some(Command::Image(prompt))) => Some(prompt),
            _ => None,
        };
        let early = drawing
            .is_none()
            .then(|| {
                self.guard(uid)
                    .or_else(|| self.permitted(&settings, uid, &model))
                    .or_else(|| self.input_refusal(&settings, &watch, &question))
                    .or_else(|| {
                        // The chat page is a chat platform: its users get keyword answers too. API
                        // clients asked a model, and get the model.
                        (req.platform == chatrelay_core::Platform::Web)
                            .then(|| keyword_reply(&settings, &watch.scope, &question))
                            .flatten()
                    })
            })
            .flatten();
        if let Some(event) = early {
            self.record_outcome(req.platform, &event);
            return match event {
                ReplyEvent::Failed { kind, message } => Reply::failed(kind, message),
                other => Reply::text(other.user_text().unwrap_or_default()),
            };
        }
        let (tx, reply) = Reply::channel();
        let this = self.clone();
        let span = info_span!("completion", %uid, model = %model.name, reference = %req.reference);
        inner.tracker.spawn(
            async move {
                // What a reader that left had received of this answer: nothing, when it waited
                // for the whole answer or the answer is one piece (a picture).
                let got_nothing_if_gone = !req.streamed || drawing.is_some();
                let event = if let Some(prompt) = drawing {
                    let asked = Inbound::text(
                        chatrelay_core::UserKey::new(req.platform, "", uid.0.to_string()),
                        req.reference.clone(),
                        question,
                    );
                    this.draw(&settings, &asked, prompt, &watch).await
                } else if let Some(refused) =
                    this.moderation_refusal(&settings, &watch, &question).await
                {
                    refused
                } else {
                    let llm_req = LlmRequest {
                        model: model.name.clone(),
                        messages: req.messages,
                        max_completion_tokens: req.max_completion_tokens,
                        legacy_max_tokens: req.legacy_max_tokens,
                        extra: req.extra,
                    };
                    let sink = Sink::Reply {
                        tx: tx.clone(),
                        streamed: req.streamed,
                    };
                    this.run_llm(uid, &model, llm_req, &req.reference, &sink, &watch)
                        .await
                };
                this.record_outcome(req.platform, &event);
                let charged = match &event {
                    ReplyEvent::Final { charged, .. } => *charged,
                    _ => 0,
                };
                if !tx.send(event).await && got_nothing_if_gone {
                    // Settled, but the reader left before the answer reached it.
                    this.refund_undelivered(uid, &req.reference, charged);
                }
            }
            .instrument(span),
        );
        reply
    }

    /// `Some(refusal)` when `uid` may not use `model` (paid users or named groups only).
    fn permitted(&self, s: &Settings, uid: Uid, model: &ModelConfig) -> Option<ReplyEvent> {
        if !model.paid_only && model.groups.is_empty() {
            return None;
        }
        let store = &self.inner.store;
        let user = match store.user(uid) {
            Ok(Some(u)) => u,
            Ok(None) => return Some(failed(FailureKind::Banned, &s.texts.banned)),
            Err(e) => {
                warn!(error = %e, "reading the user failed");
                return Some(failed(FailureKind::Unavailable, &s.texts.unavailable));
            }
        };
        let paid = match store.balance(uid, s.today(), s.free_daily) {
            Ok(b) => b.paid,
            Err(e) => {
                warn!(error = %e, "reading the balance failed");
                return Some(failed(FailureKind::Unavailable, &s.texts.unavailable));
            }
        };
        if policy::allowed(model, &user, paid) {
            None
        } else {
            metrics::counter!("chatrelay_model_denied_total", "model" => model.name.clone())
                .increment(1);
            Some(failed(
                FailureKind::NotAllowed,
                fill(&s.texts.model_not_allowed, &[("model", &model.name)]),
            ))
        }
    }

    /// `Some(refusal)` when a word rule forbids the question.
    fn input_refusal(&self, s: &Settings, watch: &Watch, text: &str) -> Option<ReplyEvent> {
        let hit = s
            .filter
            .check(text, chatrelay_rules::Direction::Input, &watch.scope)?;
        self.record_hit(watch, chatrelay_rules::Direction::Input, &hit);
        Some(failed(FailureKind::Refused, hit.refusal))
    }

    /// `Some(refusal)` when the moderation endpoint flags the question (or fails, with
    /// `fail_closed`).
    async fn moderation_refusal(
        &self,
        s: &Settings,
        watch: &Watch,
        text: &str,
    ) -> Option<ReplyEvent> {
        let m = s.moderation.as_ref()?;
        let req = chatrelay_openai::ModerationRequest {
            model: (!m.model.is_empty()).then(|| m.model.clone()),
            input: text.to_owned(),
            ..chatrelay_openai::ModerationRequest::default()
        };
        match m.client.moderate(&req).await {
            Ok(res) if res.is_flagged() => {
                let hit = chatrelay_rules::Hit {
                    rule: "moderation".to_owned(),
                    word: res.flagged_categories().join(","),
                    refusal: m.refusal.clone(),
                    excerpt: text.chars().take(80).collect(),
                };
                self.record_hit(watch, chatrelay_rules::Direction::Input, &hit);
                Some(failed(FailureKind::Refused, &m.refusal))
            }
            Ok(_) => None,
            Err(e) => {
                metrics::counter!("chatrelay_moderation_errors_total").increment(1);
                warn!(error = %e, fail_closed = m.fail_closed, "the moderation endpoint failed");
                m.fail_closed
                    .then(|| failed(FailureKind::Refused, &m.refusal))
            }
        }
    }

    /// Records a content-rule hit for admins (`admin hits`), in the metrics and the log.
    fn record_hit(
        &self,
        watch: &Watch,
        dir: chatrelay_rules::Direction,
        hit: &chatrelay_rules::Hit,
    ) {
        let direction = match dir {
            chatrelay_rules::Direction::Input => "input",
            chatrelay_rules::Direction::Output => "output",
        };
        metrics::counter!("chatrelay_content_hits_total", "rule" => hit.rule.clone(), "direction" => direction)
            .increment(1);
        warn!(uid = %watch.uid, scope = %watch.scope, rule = %hit.rule, direction, "content rule hit");
        let at = now_ms();
        let record = serde_json::json!({
            "at_ms": at,
            "uid": watch.uid.0,
            "platform": watch.platform.as_str(),
            "scope": watch.scope,
            "direction": direction,
            "rule": hit.rule,
            "word": hit.word,
            "excerpt": hit.excerpt,
        });
        let key = format!(
            "{HIT_PREFIX}{at:013}:{}:{}",
            watch.uid.0,
            crate::util::random_id()
        );
        if let Err(e) = self
            .inner
            .store
            .set_checkpoint(&key, Some(&record.to_string()))
        {
            warn!(error = %e, "recording a content rule hit failed");
        }
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
        watch: &Watch,
    ) -> ReplyEvent {
        let inner = &self.inner;
        let s = self.settings();
        let mut output_check = (!s.filter.is_empty()).then(|| s.filter.stream(&watch.scope));
        let prompt_est: u64 = req
            .messages
            .iter()
            .map(|m| quota::estimate_tokens(&m.text()))
            .sum();
        let mut req = req;
        // The upstream is asked for exactly the answer length reserved for; for a per-token
        // price that is never more than the payer's credits cover.
        let (limit, budget) = match self.answer_limit(&s, uid, model, prompt_est, watch, &req) {
            Ok(limits) => limits,
            Err(refused) => return refused,
        };
        let mut written = quota::TokenCount::default();
        req.max_completion_tokens = limit.map(|l| u32::try_from(l).unwrap_or(u32::MAX));
        let max_completion = req.max_completion_tokens.map(u64::from);
        let estimate =
            quota::estimate_cost(model, prompt_est, max_completion).saturating_add(watch.surcharge);
        let reservation = match self.reserve(&s, uid, estimate, reference) {
            Ok(id) => id,
            Err(refused) => return refused,
        };
        // A reader that leaves while the server shuts down was sent away by the server.
        let left = || {
            if inner.shutdown.is_cancelled() {
                Ending::Shutdown
            } else {
                Ending::Cancelled
            }
        };

        let started = Instant::now();
        let llm = self.llm();
        let mut text = String::new();
        let mut usage: Option<Usage> = None;
        let outcome: Result<(), Ending> = async {
            let mut stream = tokio::select! {
                biased;
                () = inner.shutdown.cancelled() => return Err(Ending::Shutdown),
                () = sink.closed() => return Err(left()),
                r = llm.stream(req) => r.map_err(Ending::Upstream)?,
            };
            loop {
                let item = tokio::select! {
                    biased;
                    () = inner.shutdown.cancelled() => return Err(Ending::Shutdown),
                    () = sink.closed() => return Err(left()),
                    item = stream.next() => item,
                };
                match item {
                    None => return Ok(()),
                    Some(Ok(LlmEvent::Delta(d))) => {
                        // Checked before the piece leaves: a word split across pieces can
                        // show its first half, never the whole.
                        if let Some(hit) = output_check.as_mut().and_then(|c| c.push(&d)) {
                            return Err(Ending::Cut(hit));
                        }
                        // An upstream that writes past the limit (or an unlimited answer past
                        // what the payer can afford) is not read further: the answer ends.
                        written.push(&d);
                        if budget.is_some_and(|b| written.tokens() > b) {
                            info!(budget, "the answer reached what its payer can afford");
                            return Ok(());
                        }
                        text.push_str(&d);
                        if !sink.delta(&d).await {
                            return Err(left());
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
                let cost = quota::actual_cost(model, &usage).saturating_add(watch.surcharge);
                // Durable before the answer leaves: a crash after delivery cannot lose it.
                let charged = self
                    .settle(reservation, cost, &model.name)
                    .await
                    .unwrap_or(0);
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
                    images: Vec::new(),
                }
            }
            Err(Ending::Cut(hit)) => {
                // The model wrote something a rule forbids: the answer stops there, with a
                // notice. What was generated is paid for, like a stopped answer.
                self.record_hit(watch, chatrelay_rules::Direction::Output, &hit);
                let (usage, charged) = self
                    .charge_partial(&s, reservation, model, watch, prompt_est, &text, "cut")
                    .await;
                let notice = if text.is_empty() {
                    hit.refusal.clone()
                } else {
                    format!("\n\n{}", s.texts.answer_cut)
                };
                let _ = sink.delta(&notice).await;
                text.push_str(&notice);
                ReplyEvent::Final {
                    text,
                    usage: Some(usage),
                    charged,
                    images: Vec::new(),
                }
            }
            Err(Ending::Cancelled) if !text.is_empty() && sink.delivers_pieces() => {
                // The reader stopped a generation it had partly received: charge what it got.
                let (_, charged) = self
                    .charge_partial(
                        &s,
                        reservation,
                        model,
                        watch,
                        prompt_est,
                        &text,
                        "cancelled",
                    )
                    .await;
                info!(
                    charged,
                    "stopped by the reader; charged for what it received"
                );
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
                    Ending::Shutdown => {
                        info!(
                            received = text.len(),
                            "ended by the server's shutdown; nothing charged"
                        );
                        (
                            "shutdown",
                            FailureKind::Unavailable,
                            s.texts.unavailable.as_str(),
                        )
                    }
                    Ending::Cancelled => {
                        info!(
                            "the reader left before it received anything of the answer; \
                             nothing charged"
                        );
                        ("cancelled", FailureKind::Unavailable, "cancelled")
                    }
                    // Handled above.
                    Ending::Cut(_) => ("cut", FailureKind::Refused, ""),
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

    /// Settles an answer that stopped before its end (the reader left, a content rule cut
    /// it): what was generated is charged, estimated from its text. Counted under `outcome`.
    #[allow(clippy::too_many_arguments)] // the call's state, all of it needed
    async fn charge_partial(
        &self,
        s: &Settings,
        reservation: ReservationId,
        model: &ModelConfig,
        watch: &Watch,
        prompt_est: u64,
        text: &str,
        outcome: &'static str,
    ) -> (Usage, u64) {
        let usage = Usage {
            prompt_tokens: prompt_est,
            completion_tokens: quota::estimate_tokens(text),
        };
        let cost = quota::actual_cost(model, &usage).saturating_add(watch.surcharge);
        let charged = self
            .settle(reservation, cost, &model.name)
            .await
            .unwrap_or(0);
        self.record_usage(s, &model.name, &usage, charged);
        metrics::counter!("chatrelay_llm_requests_total", "outcome" => outcome).increment(1);
        metrics::counter!("chatrelay_credits_charged_total").increment(charged);
        (usage, charged)
    }

    /// Holds `estimate` credits of `uid` for the call `reference`; the refusal to send when
    /// that is not possible (out of credits, already answered, store failure).
    fn reserve(
        &self,
        s: &Settings,
        uid: Uid,
        estimate: u64,
        reference: &str,
    ) -> Result<ReservationId, ReplyEvent> {
        let expires = now_ms().saturating_add(s.reservation_ttl.as_millis() as i64);
        match self
            .inner
            .store
            .reserve(uid, estimate, reference, s.today(), s.free_daily, expires)
        {
            Ok(id) => Ok(id),
            Err(StoreError::InsufficientCredits { available, needed }) => {
                metrics::counter!("chatrelay_insufficient_quota_total").increment(1);
                Err(failed(
                    FailureKind::InsufficientQuota,
                    fill(
                        &s.texts.insufficient_quota,
                        &[
                            ("needed", &needed.to_string()),
                            ("available", &available.to_string()),
                            ("buy_hint", &s.texts.buy_hint),
                        ],
                    ),
                ))
            }
            Err(StoreError::AlreadySettled(_)) => Err(failed(FailureKind::Duplicate, "")),
            Err(e) => {
                warn!(error = %e, "reserving credits failed");
                Err(failed(FailureKind::Unavailable, &s.texts.unavailable))
            }
        }
    }

    /// Downloads a picture a user sent (at most `max_bytes`) as a `data:` URL for the model,
    /// refusing internal addresses ([`fetch`]).
    async fn fetch_picture(
        &self,
        s: &Settings,
        url: &str,
        max_bytes: usize,
    ) -> Result<String, fetch::FetchError> {
        let fetcher = {
            let mut cached = self
                .inner
                .pictures
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match cached.as_ref() {
                Some(f) if f.trusts(&s.picture_trusted_hosts) => f.clone(),
                _ => {
                    let f = Arc::new(fetch::PictureFetcher::new(&s.picture_trusted_hosts)?);
                    *cached = Some(f.clone());
                    f
                }
            }
        };
        fetcher.fetch(url, max_bytes).await
    }

    /// The image command: checks, reserves `[images] credits`, asks the image upstream.
    async fn draw(
        &self,
        s: &Settings,
        inbound: &Inbound,
        prompt: Option<String>,
        watch: &Watch,
    ) -> ReplyEvent {
        let answer = |text: String| ReplyEvent::Final {
            text,
            usage: None,
            charged: 0,
            images: Vec::new(),
        };
        let Some(cost) = s.image_credits else {
            return answer(s.texts.image_off.clone());
        };
        let Some(prompt) = prompt.filter(|p| !p.trim().is_empty()) else {
            let command = s.commands.image.first().cloned().unwrap_or_default();
            return answer(fill(&s.texts.image_usage, &[("command", &command)]));
        };
        self.inner.stats.active(s.today(), watch.uid);
        if let Some(refused) = self
            .input_refusal(s, watch, &prompt)
            .or_else(|| self.guard(watch.uid))
        {
            return refused;
        }
        if let Some(refused) = self.moderation_refusal(s, watch, &prompt).await {
            return refused;
        }
        let payer = match &inbound.bill_to {
            None => watch.uid,
            Some(key) => match self.inner.store.resolve_identity(key, None) {
                Ok(payer) => payer,
                Err(e) => {
                    warn!(error = %e, "resolving who pays failed");
                    return failed(FailureKind::Unavailable, &s.texts.unavailable);
                }
            },
        };
        let reference = platform_reference(inbound, true);
        let reservation = match self.reserve(s, payer, cost, &reference) {
            Ok(id) => id,
            Err(refused) => return refused,
        };
        let started = Instant::now();
        let drawn = tokio::select! {
            r = self.llm().image(prompt) => r,
            () = self.inner.shutdown.cancelled() => {
                self.release(reservation);
                return failed(FailureKind::Unavailable, &s.texts.unavailable);
            }
        };
        metrics::histogram!("chatrelay_image_seconds").record(started.elapsed().as_secs_f64());
        match drawn {
            Ok(urls) => {
                let charged = self.settle(reservation, cost, "image").await.unwrap_or(0);
                metrics::counter!("chatrelay_images_total", "outcome" => "ok").increment(1);
                metrics::counter!("chatrelay_credits_charged_total").increment(charged);
                let links: Vec<String> = urls
                    .iter()
                    .map(|url| match inbound.capabilities.markup {
                        chatrelay_core::Markup::Markdown => format!("![image]({url})"),
                        _ => fill(&s.texts.image_done, &[("url", url)]),
                    })
                    .collect();
                ReplyEvent::Final {
                    text: links.join("\n"),
                    usage: None,
                    charged,
                    images: urls,
                }
            }
            Err(e) => {
                self.release(reservation);
                metrics::counter!("chatrelay_images_total", "outcome" => "error").increment(1);
                warn!(error = %e, "drawing failed; nothing charged");
                if matches!(e, chatrelay_openai::Error::InvalidConfig(_)) {
                    answer(s.texts.image_off.clone())
                } else {
                    failed(FailureKind::Upstream, &s.texts.upstream_error)
                }
            }
        }
    }

    /// Settles a reservation and waits until the charge is on disk, so that the answer,
    /// which leaves after this, is never delivered with a charge a crash could lose.
    /// Returns the credits charged.
    async fn settle(&self, id: ReservationId, cost: u64, model: &str) -> Option<u64> {
        let s = self.settings();
        let settled = self.inner.store.settle(
            id,
            cost,
            &format!("answer ({model})"),
            s.today(),
            s.free_daily,
            now_ms(),
        );
        if settled.is_ok()
            && let Err(e) = self.inner.store.flush().await
        {
            // The charge stands in the open database; the disk is failing, which `/readyz`
            // and the watchdog report. Withholding a paid answer would not help.
            warn!(error = %e, reservation = %id, "making a charge durable failed");
        }
        match settled {
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

    /// Gives back `credits` charged for the answer `reference` that never reached its reader
    /// (it left after the charge). Idempotent: one refund per answer, however often called.
    /// The credits come back as paid credits (the store cannot restore a past day's free
    /// allowance).
    pub fn refund_undelivered(&self, uid: Uid, reference: &str, credits: u64) {
        if credits == 0 {
            return;
        }
        let refund = format!("undelivered:{reference}");
        match self.inner.store.grant(
            uid,
            credits,
            chatrelay_storage::EntryKind::Refund,
            "answer not delivered",
            &refund,
            now_ms(),
        ) {
            Ok(_) => {
                metrics::counter!("chatrelay_undelivered_refunds_total").increment(1);
                info!(%uid, %reference, credits, "the answer was not delivered; refunded");
            }
            Err(e) => {
                warn!(error = %e, %uid, %reference, credits, "refunding an undelivered answer failed");
            }
        }
    }

    /// Gives back what the answer `event` to the chat-platform message `inbound` cost, to whoever
    /// paid for it, when the platform never got it to the user (`why` is logged). The payer and
    /// the ledger reference are found the way the answer found them; idempotent like
    /// [`Engine::refund_undelivered`], and free answers (or failures) need nothing.
    pub fn refund_platform_undelivered(&self, inbound: &Inbound, event: &ReplyEvent, why: &str) {
        let ReplyEvent::Final { charged, .. } = event else {
            return;
        };
        if *charged == 0 {
            return;
        }
        let payer_key = inbound.bill_to.as_ref().unwrap_or(&inbound.key);
        let payer = match self.inner.store.resolve_identity(payer_key, None) {
            Ok(uid) => uid,
            Err(e) => {
                warn!(error = %e, charged, why, "finding who paid for an undelivered answer failed; not refunded");
                return;
            }
        };
        let drawn = matches!(self.command(&inbound.text), Some(Command::Image(_)));
        info!(%payer, charged, why, "refunding an answer the platform did not deliver");
        self.refund_undelivered(payer, &platform_reference(inbound, drawn), *charged);
    }

    /// The answer limit to send upstream, and the most answer tokens the payer can afford
    /// (`None` for a flat price). The limit is the one asked for, lowered for a per-token price
    /// to what `uid`'s credits cover; an unlimited request gets the affordable length as its
    /// limit when that is short ([`quota::UNCAPPED_CEILING`]), else no limit (a large one could
    /// be refused by the upstream as more than the model writes) and the engine stops reading
    /// at the affordable length. A payer who cannot afford one token is refused at reserving.
    fn answer_limit(
        &self,
        s: &Settings,
        uid: Uid,
        model: &ModelConfig,
        prompt_est: u64,
        watch: &Watch,
        req: &LlmRequest,
    ) -> Result<(Option<u64>, Option<u64>), ReplyEvent> {
        let asked = req.max_completion_tokens.map(u64::from);
        if model.credits_per_1k_tokens == 0 {
            return Ok((asked, None));
        }
        let available = match self.inner.store.balance(uid, s.today(), s.free_daily) {
            Ok(b) => b.available,
            Err(e) => {
                warn!(error = %e, "reading the balance failed");
                return Err(failed(FailureKind::Unavailable, &s.texts.unavailable));
            }
        };
        let affordable =
            quota::affordable_completion(model, prompt_est, watch.surcharge, available)
                .unwrap_or(u64::MAX);
        // At least one token: a payer who cannot cover it gets the reservation's refusal.
        let limit = match asked {
            Some(a) => Some(a.min(affordable).max(1)),
            None if affordable < quota::UNCAPPED_CEILING => Some(affordable.max(1)),
            None => None,
        };
        Ok((limit, Some(affordable)))
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
        let mut watch = Watch {
            uid,
            platform: inbound.key.platform,
            scope: policy::scope_of(&inbound.key),
            surcharge: 0,
        };
        match self.command(&inbound.text) {
            Some(Command::Image(prompt)) => {
                return self.draw(&s, &inbound, prompt, &watch).await;
            }
            Some(command) => return self.run_command(command, uid, &conversation, &watch.scope),
            None => {}
        }
        inner.stats.active(s.today(), uid);
        // A banned (or too hasty) user gets nothing else, keyword answers included.
        if let Some(refused) = self.guard(uid) {
            return refused;
        }
        if let Some(refused) = self.input_refusal(&s, &watch, &inbound.text) {
            return refused;
        }
        if let Some(answer) = keyword_reply(&s, &watch.scope, &inbound.text) {
            return answer;
        }
        if let Some(refused) = self.moderation_refusal(&s, &watch, &inbound.text).await {
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
        let scope_defaults = policy::scope_defaults(&s.scopes, &watch.scope);
        let chosen = |what| policy::pref(&inner.store, uid, what).ok().flatten();
        let chosen_model = chosen("model");
        let Some(model) = policy::choose_model(
            &s.models,
            chosen_model.as_deref(),
            scope_defaults,
            &s.default_model,
        )
        .cloned() else {
            return failed(FailureKind::UnknownModel, &s.texts.unavailable);
        };
        // Who pays is who must be allowed (a zsxq group's payer, usually the asker).
        if let Some(refused) = self.permitted(&s, payer, &model) {
            return refused;
        }
        let mut question = inbound.text.trim().to_owned();
        let mut picture_parts = Vec::new();
        if !inbound.images.is_empty() {
            if !model.vision {
                return ReplyEvent::Final {
                    text: fill(
                        &s.texts.image_unsupported,
                        &[(
                            "command",
                            &s.commands.model.first().cloned().unwrap_or_default(),
                        )],
                    ),
                    usage: None,
                    charged: 0,
                    images: Vec::new(),
                };
            }
            for url in inbound.images.iter().take(MAX_PICTURES) {
                match self.fetch_picture(&s, url, s.max_image_bytes).await {
                    Ok(data_url) => picture_parts.push(serde_json::json!({
                        "type": "image_url",
                        "image_url": {"url": data_url},
                    })),
                    Err(e) => {
                        // The URL may carry a platform token: only the reason is logged.
                        warn!(error = %e, "downloading a picture failed");
                        return failed(FailureKind::InvalidRequest, &s.texts.image_failed);
                    }
                }
            }
            if question.is_empty() {
                question = s.texts.image_question.clone();
            }
            watch.surcharge = (picture_parts.len() as u64).saturating_mul(model.credits_per_image);
        }
        let chosen_role = chosen("role");
        let system_prompt = policy::choose_role(&s.roles, chosen_role.as_deref(), scope_defaults)
            .map_or(s.system_prompt.as_str(), |r| r.prompt.as_str());
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
        let mut messages = build_prompt(system_prompt, &history, &question, s.context_tokens);
        if !picture_parts.is_empty()
            && let Some(last) = messages.last_mut()
        {
            let mut parts = vec![serde_json::json!({"type": "text", "text": question})];
            parts.append(&mut picture_parts);
            last.content = serde_json::Value::Array(parts);
        }
        let req = LlmRequest {
            model: model.name.clone(),
            messages,
            max_completion_tokens: s.max_completion_tokens,
            legacy_max_tokens: false,
            extra: serde_json::Map::new(),
        };
        let reference = platform_reference(&inbound, false);
        let event = self
            .run_llm(payer, &model, req, &reference, sink, &watch)
            .await;
        if let ReplyEvent::Final { text, .. } = &event
            && inbound.remember
        {
            let at_ms = now_ms();
            let turns = [
                Turn {
                    role: "user".to_owned(),
                    // Pictures are not kept: the memory says one was there.
                    content: if inbound.images.is_empty() {
                        question.clone()
                    } else {
                        format!("[图片] {question}")
                    },
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

    /// The model and role (display names) a user's next message in `scope` would get.
    fn current_choice(&self, s: &Settings, uid: Uid, scope: &str) -> (String, String) {
        let defaults = policy::scope_defaults(&s.scopes, scope);
        let store = &self.inner.store;
        let model = policy::pref(store, uid, "model").ok().flatten();
        let role = policy::pref(store, uid, "role").ok().flatten();
        let model = policy::choose_model(&s.models, model.as_deref(), defaults, &s.default_model)
            .map_or_else(|| s.default_model.clone(), |m| m.name.clone());
        let role = policy::choose_role(&s.roles, role.as_deref(), defaults).map_or_else(
            || "默认".to_owned(),
            |r| {
                if r.name.is_empty() {
                    r.id.clone()
                } else {
                    r.name.clone()
                }
            },
        );
        (model, role)
    }

    fn command(&self, text: &str) -> Option<Command> {
        let t = text.trim();
        let matches = |words: &[String]| words.iter().any(|w| w.trim().eq_ignore_ascii_case(t));
        // `/model NAME`, `模型 NAME`: a command word, then its argument.
        let with_arg = |words: &[String]| -> Option<Option<String>> {
            words.iter().find_map(|w| {
                let w = w.trim();
                let rest = t
                    .get(..w.len())
                    .filter(|head| head.eq_ignore_ascii_case(w))?;
                let arg = t.get(rest.len()..)?;
                if arg.is_empty() {
                    Some(None)
                } else if arg.starts_with(char::is_whitespace) {
                    Some(Some(arg.trim().to_owned()))
                } else {
                    None
                }
            })
        };
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
        } else if let Some(arg) = with_arg(&c.model) {
            Some(Command::Model(arg))
        } else if let Some(arg) = with_arg(&c.image) {
            Some(Command::Image(arg))
        } else {
            with_arg(&c.role).map(Command::Role)
        }
    }

    fn run_command(
        &self,
        command: Command,
        uid: Uid,
        conversation: &str,
        scope: &str,
    ) -> ReplyEvent {
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
                Ok(b) => {
                    let (model, role) = self.current_choice(&s, uid, scope);
                    fill(
                        &quota_text(&s.texts.quota, &b, s.free_daily),
                        &[("model", &model), ("role", &role)],
                    )
                }
                Err(e) => {
                    warn!(error = %e, "reading the balance failed");
                    return failed(FailureKind::Unavailable, &s.texts.unavailable);
                }
            },
            Command::Model(None) => {
                let (current, _) = self.current_choice(&s, uid, scope);
                let lines: Vec<String> = s
                    .models
                    .iter()
                    .map(|m| {
                        let mut line = format!("· {}（{} 额度/次）", m.name, m.credits);
                        if m.paid_only || !m.groups.is_empty() {
                            line.push_str(" 🔒");
                        }
                        line
                    })
                    .collect();
                fill(
                    &s.texts.model_list,
                    &[
                        ("current", &current),
                        ("models", &lines.join("\n")),
                        ("command", &first(&s.commands.model)),
                    ],
                )
            }
            Command::Model(Some(name)) => {
                let Some(model) = s.models.iter().find(|m| m.name.eq_ignore_ascii_case(&name))
                else {
                    return ReplyEvent::Final {
                        text: fill(&s.texts.unknown_model, &[("model", &name)]),
                        usage: None,
                        charged: 0,
                        images: Vec::new(),
                    };
                };
                if let Some(refused) = self.permitted(&s, uid, model) {
                    return refused;
                }
                if let Err(e) = inner
                    .store
                    .set_checkpoint(&policy::pref_key(uid, "model"), Some(&model.name))
                {
                    warn!(error = %e, "saving the model choice failed");
                    return failed(FailureKind::Unavailable, &s.texts.unavailable);
                }
                fill(&s.texts.model_set, &[("model", &model.name)])
            }
            Command::Role(None) => {
                let (_, current) = self.current_choice(&s, uid, scope);
                let lines: Vec<String> = s
                    .roles
                    .iter()
                    .map(|r| {
                        if r.name.is_empty() {
                            format!("· {}", r.id)
                        } else {
                            format!("· {}（{}）", r.id, r.name)
                        }
                    })
                    .collect();
                fill(
                    &s.texts.role_list,
                    &[
                        ("current", &current),
                        ("roles", &lines.join("\n")),
                        ("command", &first(&s.commands.role)),
                    ],
                )
            }
            // Answered by `draw` before commands get here.
            Command::Image(_) => s.texts.image_off.clone(),
            Command::Role(Some(id)) => {
                let role = s.roles.iter().find(|r| {
                    r.id.eq_ignore_ascii_case(&id) || (!r.name.is_empty() && r.name == id)
                });
                // "默认"/"default" goes back to the scope's role (or the plain system prompt).
                let reset = matches!(id.as_str(), "default" | "默认" | "none");
                if role.is_none() && !reset {
                    return ReplyEvent::Final {
                        text: fill(&s.texts.unknown_role, &[("role", &id)]),
                        usage: None,
                        charged: 0,
                        images: Vec::new(),
                    };
                }
                if let Err(e) = inner
                    .store
                    .set_checkpoint(&policy::pref_key(uid, "role"), role.map(|r| r.id.as_str()))
                {
                    warn!(error = %e, "saving the role choice failed");
                    return failed(FailureKind::Unavailable, &s.texts.unavailable);
                }
                let (_, now) = self.current_choice(&s, uid, scope);
                fill(&s.texts.role_set, &[("role", &now)])
            }
        };
        ReplyEvent::Final {
            text,
            usage: None,
            charged: 0,
            images: Vec::new(),
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Help,
    New,
    Quota,
    Buy,
    /// List the models, or choose one.
    Model(Option<String>),
    /// List the roles, or choose one.
    Role(Option<String>),
    /// Draw a picture of the prompt.
    Image(Option<String>),
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
        if text.is_empty() && inbound.images.is_empty() {
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
        // The slot is taken under the lock, the store asked after it is let go (no std mutex
        // is held across a store call): a redelivery arriving meanwhile joins the slot and
        // gets whatever this call decides.
        let (tx, rx) = {
            let mut guard = self
                .inner
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(existing) = guard.map.get(&id) {
                metrics::counter!("chatrelay_redeliveries_joined_total").increment(1);
                let rx = existing.rx.clone();
                drop(guard);
                return follow(rx, &self.inner.tracker);
            }
            let (tx, rx) = watch::channel(Progress::default());
            guard.map.insert(
                id.clone(),
                Inflight {
                    rx: rx.clone(),
                    started: Instant::now(),
                },
            );
            (tx, rx)
        };
        let now = now_ms();
        let expires = now.saturating_add(s.dedupe_ttl.as_millis() as i64);
        let refused = match self.inner.store.dedupe_insert(&id, expires, now) {
            Ok(true) => None,
            Ok(false) if self.inner.store.is_shared() => {
                // Another daemon on the database took this message (a platform retry landed
                // here): follow its answer through the database.
                metrics::counter!("chatrelay_redeliveries_joined_total").increment(1);
                Some((
                    failed(FailureKind::Duplicate, ""),
                    follow_shared(
                        self.inner.store.clone(),
                        id.clone(),
                        s.reservation_ttl,
                        &self.inner.tracker,
                    ),
                ))
            }
            Ok(false) => {
                // Seen before, answered in an earlier run: not answered twice.
                metrics::counter!("chatrelay_duplicates_dropped_total").increment(1);
                Some((
                    failed(FailureKind::Duplicate, ""),
                    Reply::failed(FailureKind::Duplicate, ""),
                ))
            }
            Err(e) => {
                warn!(error = %e, "dedupe failed");
                Some((
                    failed(FailureKind::Unavailable, &s.texts.unavailable),
                    Reply::failed(FailureKind::Unavailable, &s.texts.unavailable),
                ))
            }
        };
        if let Some((event, reply)) = refused {
            self.inner
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map
                .remove(&id);
            // Joiners of the slot get the same word (a duplicate is silent).
            tx.send_modify(|p| p.done = Some(event));
            return reply;
        }
        let this = self.clone();
        let span = info_span!("message", key = %inbound.key, msg = %inbound.message_id);
        let shared_key = id;
        self.inner.tracker.spawn(
            async move {
                let sink = Sink::Progress(tx);
                let platform = inbound.key.platform;
                let event = this.answer_platform(inbound, &sink).await;
                this.record_outcome(platform, &event);
                this.share_answer(&shared_key, &event, expires);
                if let Sink::Progress(tx) = sink {
                    tx.send_modify(|p| p.done = Some(event));
                }
            }
            .instrument(span),
        );
        follow(rx, &self.inner.tracker)
    }
}

/// How often a retry that reached another daemon looks for the answer in the database.
const SHARED_POLL: Duration = Duration::from_millis(100);

/// A [`Reply`] that waits (up to `wait`) for the answer another daemon on the database is
/// making to message `id`, and gives it as one final event; a duplicate if none comes.
fn follow_shared(store: Store, id: String, wait: Duration, tracker: &TaskTracker) -> Reply {
    let (tx, reply) = Reply::channel();
    tracker.spawn(async move {
        let deadline = Instant::now() + wait;
        loop {
            let (s, key) = (store.clone(), id.clone());
            let found = tokio::task::spawn_blocking(move || s.shared_answer(&key, now_ms())).await;
            match found {
                Ok(Ok(Some(answer))) => {
                    let event = match answer.text {
                        Some(text) => ReplyEvent::Final {
                            text,
                            usage: None,
                            charged: 0,
                            images: Vec::new(),
                        },
                        None => failed(FailureKind::Duplicate, ""),
                    };
                    tx.send(event).await;
                    return;
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => warn!(error = %e, "reading a shared answer failed"),
                Err(e) => warn!(error = %e, "reading a shared answer failed"),
            }
            if Instant::now() >= deadline || tx.is_closed() {
                tx.send(failed(FailureKind::Duplicate, "")).await;
                return;
            }
            tokio::time::sleep(SHARED_POLL).await;
        }
    });
    reply
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
pub(crate) mod tests;
