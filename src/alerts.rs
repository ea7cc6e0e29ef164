//! Operators' alerts: paid orders, refunds, payment verification failures, an upstream LLM
//! failing again and again. Every alert is logged under the `chatrelay::alert` target at once,
//! and queued for the configured sinks ([`AlertSink`]: the WeCom group robots of
//! `[[wecom_robot]]`, built by `reload`), which take few messages ([`Pace`]: the robots allow 20
//! a minute).
//!
//! Because that budget is small and forged payment notifications cost an attacker nothing,
//! alerts have a [`AlertKind`]:
//! - money alerts (paid orders, refunds) go first, and a share of every minute's budget is kept
//!   for them only ([`RESERVED_FOR_MONEY`]), so no flood of anything else delays them;
//! - payment verification failures are never sent one by one: they are counted, and one
//!   summary with the count (and the last reason) goes out per interval;
//! - other alerts use what is left; when too many wait, the oldest are dropped (they are in
//!   the log).
//!
//! One sender task drains the queue at the robots' pace; it runs only while something waits,
//! and through the daemon's task tracker, so shutdown does not cut it off mid-send (it stops at
//! once on shutdown instead of waiting for the next minute's budget).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// The log target of alerts.
pub const TARGET: &str = "chatrelay::alert";

/// Sink messages per window kept for money alerts: other alerts use at most the rest.
pub const RESERVED_FOR_MONEY: usize = 5;

/// Money alerts waiting at most (beyond, the oldest are dropped; they are in the log).
const MAX_MONEY_WAITING: usize = 1000;

/// Other alerts waiting at most.
const MAX_OTHER_WAITING: usize = 50;

/// How often verification failures are summarised, by default.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Where alerts go besides the log. Every sink gets every alert sent; the sinks share one
/// [`Pace`].
pub trait AlertSink: Send + Sync {
    /// The sink's name in the log when a send fails (a `[[wecom_robot]]` id).
    fn name(&self) -> &str;
    /// Sends one alert's text.
    fn send<'a>(&'a self, text: &'a str) -> SendFuture<'a>;
}

/// What [`AlertSink::send`] returns: sent, or why not (logged).
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// The sinks of the running configuration (a reload replaces them).
type Sinks = Arc<Vec<Arc<dyn AlertSink>>>;

/// How many messages the sinks take: at most `messages` in any rolling `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pace {
    /// Messages allowed per window.
    pub messages: usize,
    /// The rolling window.
    pub window: Duration,
}

impl Default for Pace {
    /// Twenty a minute: the WeCom group robots' limit, the strictest sink there is.
    fn default() -> Self {
        Self {
            messages: 20,
            window: Duration::from_secs(60),
        }
    }
}

/// What an alert is about, which decides how it competes for the robots' budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertKind {
    /// A paid order or a refund: first in line, with budget kept for it.
    Money,
    /// A payment notification that failed verification (possibly forged): counted, and sent
    /// as one summary per interval.
    VerificationFailure,
    /// Anything else (an upstream failing, a connector's token expired, a mismatched payment).
    Other,
}

/// Sends alerts. Cheap to clone; clones share the sinks (which a reload replaces) and the
/// queue.
#[derive(Clone, Default)]
pub struct Alerter {
    sinks: Arc<RwLock<Sinks>>,
    queue: Arc<Mutex<Queue>>,
    /// Wakes the sender when an alert arrives while it waits (for the budget or a summary).
    wake: Arc<tokio::sync::Notify>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    summary_every: Option<Duration>,
}

/// Alerts waiting for the sinks, and the sinks' recent sends.
#[derive(Default)]
struct Queue {
    /// The sinks' pace.
    pace: Pace,
    money: VecDeque<String>,
    other: VecDeque<String>,
    failures: Option<Failures>,
    /// Other alerts dropped since the last send (told in the next one).
    dropped: u64,
    /// When each message of the current window went out.
    sent: VecDeque<Instant>,
    /// Whether a sender task is draining the queue.
    sending: bool,
}

/// Verification failures counted since the first one of the interval.
struct Failures {
    first: Instant,
    count: u64,
    last: String,
}

/// What the sender should do next.
enum Next {
    Send(String),
    Wait(Instant),
    Done,
}

impl Queue {
    /// Sends still allowed in the window ending now.
    fn used(&mut self, now: Instant) -> usize {
        while self
            .sent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.pace.window)
        {
            self.sent.pop_front();
        }
        self.sent.len()
    }

    fn next(&mut self, now: Instant, summary_every: Duration) -> Next {
        let used = self.used(now);
        let window_frees = self.sent.front().map(|t| *t + self.pace.window);
        let others_may = used + RESERVED_FOR_MONEY < self.pace.messages;
        if used < self.pace.messages
            && let Some(text) = self.money.pop_front()
        {
            self.sent.push_back(now);
            return Next::Send(text);
        }
        let summary_due = self.failures.as_ref().map(|f| f.first + summary_every);
        if others_may {
            if summary_due.is_some_and(|due| due <= now)
                && let Some(f) = self.failures.take()
            {
                self.sent.push_back(now);
                return Next::Send(format!(
                    "{} 内有 {} 次支付通知验证失败（可能是伪造的通知），最近一次：{}",
                    describe(now.saturating_duration_since(f.first)),
                    f.count,
                    f.last
                ));
            }
            if let Some(text) = self.other.pop_front() {
                self.sent.push_back(now);
                let dropped = std::mem::take(&mut self.dropped);
                return Next::Send(if dropped > 0 {
                    format!("{text}\n（另有 {dropped} 条告警因过多未发出，见日志）")
                } else {
                    text
                });
            }
        }
        // Nothing can go now: wake when the budget frees or the summary is due.
        let blocked = !self.money.is_empty() || !self.other.is_empty();
        let wake = [
            window_frees.filter(|_| blocked || summary_due.is_some()),
            summary_due,
        ]
        .into_iter()
        .flatten()
        .filter(|t| *t > now)
        .min();
        match wake {
            Some(t) => Next::Wait(t),
            None if blocked || summary_due.is_some() => {
                // Due now but blocked by the budget, which frees within the window.
                Next::Wait(now + Duration::from_millis(100))
            }
            None => Next::Done,
        }
    }
}

fn describe(d: Duration) -> String {
    let secs = d.as_secs().max(1);
    if secs >= 120 {
        format!("{} 分钟", secs / 60)
    } else {
        format!("{secs} 秒")
    }
}

impl Alerter {
    /// An alerter without sinks yet (alerts are then only logged) whose sinks take `pace`.
    /// Sending runs on `tracker` and stops on `shutdown`.
    #[must_use]
    pub fn new(pace: Pace, tracker: TaskTracker, shutdown: CancellationToken) -> Self {
        Self {
            sinks: Arc::default(),
            queue: Arc::new(Mutex::new(Queue {
                pace,
                ..Queue::default()
            })),
            wake: Arc::default(),
            tracker,
            shutdown,
            summary_every: None,
        }
    }

    /// Takes the sinks of a (re)loaded configuration (every clone sees them).
    pub fn set_sinks(&self, sinks: Vec<Arc<dyn AlertSink>>) {
        *self.sinks.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(sinks);
    }

    /// Logs `text` and queues it for the sinks as an [`AlertKind::Other`] alert.
    pub fn alert(&self, text: String) {
        self.alert_as(AlertKind::Other, text);
    }

    /// Logs `text` and queues it for the sinks as a `kind` alert, without waiting.
    pub fn alert_as(&self, kind: AlertKind, text: String) {
        info!(target: TARGET, kind = ?kind, "{text}");
        metrics::counter!("chatrelay_alerts_total").increment(1);
        if self
            .sinks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            return;
        }
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            match kind {
                AlertKind::Money => {
                    if q.money.len() >= MAX_MONEY_WAITING {
                        q.money.pop_front();
                    }
                    q.money.push_back(text);
                }
                AlertKind::Other => {
                    if q.other.len() >= MAX_OTHER_WAITING {
                        q.other.pop_front();
                        q.dropped += 1;
                    }
                    q.other.push_back(text);
                }
                AlertKind::VerificationFailure => match &mut q.failures {
                    Some(f) => {
                        f.count += 1;
                        f.last = text;
                    }
                    None => {
                        q.failures = Some(Failures {
                            first: Instant::now(),
                            count: 1,
                            last: text,
                        });
                    }
                },
            }
            !std::mem::replace(&mut q.sending, true)
        };
        if start {
            let this = self.clone();
            self.tracker.spawn(async move { this.drain().await });
        } else {
            // The sender may be waiting for a summary that is a minute away: a money alert
            // must not wait with it. (A stored permit covers a sender not yet waiting.)
            self.wake.notify_one();
        }
    }

    /// Sends what waits, at the sinks' pace, until nothing does (or shutdown).
    async fn drain(self) {
        let every = self.summary_every.unwrap_or(SUMMARY_EVERY);
        loop {
            let next = {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                let next = q.next(Instant::now(), every);
                if matches!(next, Next::Done) {
                    q.sending = false;
                }
                next
            };
            match next {
                Next::Done => return,
                Next::Wait(until) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        () = self.wake.notified() => {}
                        () = self.shutdown.cancelled() => {
                            self.queue.lock().unwrap_or_else(|p| p.into_inner()).sending = false;
                            return;
                        }
                    }
                }
                Next::Send(text) => self.send(&text).await,
            }
        }
    }

    async fn send(&self, text: &str) {
        let sinks = self.sinks.read().unwrap_or_else(|p| p.into_inner()).clone();
        let text = format!("【chatrelay】{text}");
        for sink in sinks.iter() {
            if let Err(e) = sink.send(&text).await {
                warn!(robot = %sink.name(), error = %e, "alert not delivered to the group robot");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use axum::Json;
    use axum::extract::State;
    use chatrelay_wechat::robot::{ROBOT_MESSAGES_PER_WINDOW, ROBOT_RATE_WINDOW};

    use super::*;
    use crate::config::Config;

    /// A loopback WeCom robot that records texts and, like WeCom, refuses beyond 20 a minute.
    async fn fake_robot() -> (String, Arc<StdMutex<Vec<String>>>) {
        let got = Arc::new(StdMutex::new(Vec::new()));
        let app = axum::Router::new()
            .route(
                "/cgi-bin/webhook/send",
                axum::routing::post(
                    |State(got): State<Arc<StdMutex<Vec<String>>>>,
                     Json(body): Json<serde_json::Value>| async move {
                        let mut got = got.lock().unwrap();
                        if got.len() >= ROBOT_MESSAGES_PER_WINDOW {
                            return Json(serde_json::json!({"errcode": 45009, "errmsg": "api freq out of limit"}));
                        }
                        got.push(body["text"]["content"].as_str().unwrap_or_default().to_owned());
                        Json(serde_json::json!({"errcode": 0, "errmsg": "ok"}))
                    },
                ),
            )
            .with_state(got.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), got)
    }

    fn alerter(base: &str, tracker: &TaskTracker, every: Duration) -> Alerter {
        let mut config = Config::default();
        config.wecom_robot = vec![crate::config::WecomRobotConfig {
            id: "ops".into(),
            webhook: crate::config::Secret::new("k"),
            api_base: base.to_owned(),
        }];
        let mut a = Alerter::new(
            crate::reload::ROBOT_PACE,
            tracker.clone(),
            CancellationToken::new(),
        );
        a.set_sinks(crate::reload::robot_sinks(&config, &reqwest::Client::new()));
        a.summary_every = Some(every);
        a
    }

    #[tokio::test]
    async fn forged_notifications_are_summarised_and_never_push_out_paid_orders() {
        let (base, got) = fake_robot().await;
        let tracker = TaskTracker::new();
        let a = alerter(&base, &tracker, Duration::from_secs(2));
        for i in 0..500 {
            a.alert_as(
                AlertKind::VerificationFailure,
                format!("wechat 支付通知验证失败：bad signature {i}"),
            );
        }
        // The sender now waits for the summary; a paid order does not wait with it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.alert_as(AlertKind::Money, "订单 o1 已支付并到账".into());
        tokio::time::timeout(Duration::from_secs(1), async {
            while !got.lock().unwrap().iter().any(|t| t.contains("o1")) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the paid-order alert goes out at once");
        for i in 500..1000 {
            a.alert_as(
                AlertKind::VerificationFailure,
                format!("wechat 支付通知验证失败：bad signature {i}"),
            );
        }
        a.alert_as(AlertKind::Money, "订单 o2 已支付并到账".into());
        a.alert_as(AlertKind::Money, "订单 o3 已退款".into());
        // Other alerts take their share of the budget, never the money alerts' places.
        for i in 0..5 {
            a.alert(format!("upstream failing {i}"));
        }
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let summary = got.lock().unwrap().iter().any(|t| t.contains("1000 次"));
                if summary {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the summary arrives");
        let got = got.lock().unwrap().clone();
        for order in ["o1 已支付", "o2 已支付", "o3 已退款"] {
            assert_eq!(
                got.iter().filter(|t| t.contains(order)).count(),
                1,
                "{order}: {got:?}"
            );
        }
        let failures: Vec<&String> = got.iter().filter(|t| t.contains("验证失败")).collect();
        assert_eq!(failures.len(), 1, "one summary: {failures:?}");
        assert!(failures[0].contains("bad signature 999"), "{}", failures[0]);
        // The window's budget: 20 in all, other alerts at most 15 of them.
        assert!(got.len() <= ROBOT_MESSAGES_PER_WINDOW, "{}", got.len());
        let others = got
            .iter()
            .filter(|t| t.contains("upstream failing"))
            .count();
        assert_eq!(others, 5);
    }

    #[test]
    fn the_default_pace_is_the_group_robots() {
        // An alerter built without a pace (the engine's default) must not outrun the robots.
        assert_eq!(Pace::default(), crate::reload::ROBOT_PACE);
    }

    #[tokio::test(start_paused = true)]
    async fn money_alerts_keep_their_share_of_a_full_window() {
        let now = Instant::now();
        let mut q = Queue::default();
        for i in 0..40 {
            q.other.push_back(format!("other {i}"));
        }
        let mut sent = Vec::new();
        while let Next::Send(t) = q.next(now, SUMMARY_EVERY) {
            sent.push(t);
        }
        assert_eq!(sent.len(), ROBOT_MESSAGES_PER_WINDOW - RESERVED_FOR_MONEY);
        // The window is full for others, not for money.
        q.money.push_back("paid".into());
        assert!(matches!(q.next(now, SUMMARY_EVERY), Next::Send(t) if t == "paid"));
        // Later in the window the rest wait until it frees.
        assert!(
            matches!(q.next(now, SUMMARY_EVERY), Next::Wait(t) if t == now + ROBOT_RATE_WINDOW)
        );
        let later = now + ROBOT_RATE_WINDOW;
        assert!(matches!(q.next(later, SUMMARY_EVERY), Next::Send(t) if t == "other 15"));
    }

    #[tokio::test]
    async fn the_sender_runs_on_the_tracker_and_stops() {
        let (base, got) = fake_robot().await;
        let tracker = TaskTracker::new();
        let a = alerter(&base, &tracker, Duration::from_millis(50));
        a.alert_as(AlertKind::Money, "订单 o9 已支付并到账".into());
        assert_eq!(tracker.len(), 1, "the sender is tracked");
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .expect("the sender ends when the queue is empty");
        assert_eq!(got.lock().unwrap().len(), 1);
    }
}
