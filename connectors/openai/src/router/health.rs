//! The health of one upstream: its counters, its circuit breaker, the trying order it asks
//! for ([`Rank`]), and what counts as its failure ([`is_upstream_failure`]) or as a reason to
//! try another upstream ([`should_fall_back`]).
//!
//! See the parent module for the breaker's rules; this file is the bookkeeping behind them,
//! kept apart from the routing so each reads in one sitting.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::error::Error;

/// Consecutive failures that open the circuit breaker (upstream `down`).
pub const FAILURES_TO_OPEN: u32 = 5;
/// Default time an upstream stays `down` before a probe request is let
/// through; see [`Router::with_cooldown`](super::Router::with_cooldown).
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);
/// Number of recent outcomes [`UpstreamHealth::recent_error_rate`] covers.
const WINDOW: usize = 50;
/// Recent error rate from which an upstream is `degraded`.
const DEGRADED_RATE: f64 = 0.2;
/// Weight of the newest sample in the latency moving average.
const LATENCY_ALPHA: f64 = 0.2;
/// Longest [`UpstreamHealth::last_error`], in characters.
const MAX_LAST_ERROR_CHARS: usize = 200;

/// Coarse state of an upstream, for display and alerting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamState {
    /// Working.
    Up,
    /// Working, but at least 20% of the recent requests failed.
    Degraded,
    /// [`FAILURES_TO_OPEN`] or more consecutive failures: tried last until a
    /// request succeeds again.
    Down,
}

impl UpstreamState {
    /// `"up"`, `"degraded"` or `"down"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Degraded => "degraded",
            Self::Down => "down",
        }
    }
}

impl fmt::Display for UpstreamState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of one upstream's health, for `/metrics` and the admin API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamHealth {
    /// The upstream's id.
    pub id: String,
    /// Requests sent to this upstream by the router (each counts once,
    /// whatever retries its [`Client`](crate::Client) made inside), including the ones in
    /// flight.
    pub requests_total: u64,
    /// Requests that failed through the upstream's fault.
    pub errors_total: u64,
    /// Failures since the last success (or refused request).
    pub consecutive_failures: u32,
    /// Share of failures among the last 50 outcomes, 0 to 1 (0 before any);
    /// for display only.
    pub recent_error_rate: f64,
    /// Moving average (α = 0.2) of the time to the response headers of
    /// successful requests (for non-streaming requests: to the whole
    /// answer), the client's own retries included; `None` before the first
    /// success.
    pub latency_ms: Option<u64>,
    /// The last failure (the error's text, at most 200 characters).
    pub last_error: Option<String>,
    /// When the last failure happened, in Unix milliseconds.
    pub last_error_at_ms: Option<i64>,
    /// `up`, `degraded` or `down`.
    pub state: UpstreamState,
}

/// Whether an error on one route should make the router try the next one:
/// the upstream is down or refuses this account, and another may not be.
///
/// True for network errors, connect/response timeouts, HTTP 5xx, 408, 429
/// (including `insufficient_quota`: that account is out of money, another
/// may not be) and 401/403 (a revoked key on that provider). False for
/// everything else (400 bad request, context too long, 404, a decode error,
/// an error inside a stream ...), which is returned at once: another
/// provider would most likely refuse it too.
#[must_use]
pub fn should_fall_back(err: &Error) -> bool {
    match err {
        Error::Network(_) => true,
        Error::Timeout { what } => matches!(*what, "connect" | "response"),
        Error::Api { .. } => err
            .status()
            .is_some_and(|s| s >= 500 || matches!(s, 401 | 403 | 408 | 429)),
        _ => false,
    }
}

/// Whether an error counts against the upstream's health: everything
/// [`should_fall_back`] accepts, plus what a healthy server does not do
/// (a body that does not decode, a stream that breaks, stalls or carries an
/// error object). Refused requests (400, 404, ...) and configuration errors
/// do not count.
#[must_use]
pub fn is_upstream_failure(err: &Error) -> bool {
    should_fall_back(err)
        || matches!(
            err,
            Error::Decode { .. }
                | Error::Incomplete
                | Error::Timeout { .. }
                | Error::Api { status: 0, .. }
        )
}

/// Where a route falls in the trying order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rank {
    /// Breaker closed: tried in the routes' order.
    Healthy,
    /// Breaker open, cooldown over, no probe in flight: this request may be
    /// the probe, so it is tried in the routes' order too.
    Probe,
    /// Breaker open (cooldown running, or another request is the probe):
    /// tried after all the others.
    Down,
}

/// The mutable health of one upstream.
#[derive(Debug)]
pub(super) struct Health {
    pub(super) cooldown: Duration,
    requests_total: u64,
    errors_total: u64,
    consecutive_failures: u32,
    /// The last outcomes, `true` for a failure; at most [`WINDOW`].
    recent: VecDeque<bool>,
    latency_ms: Option<f64>,
    last_error: Option<String>,
    last_error_at_ms: Option<i64>,
    /// Set while the breaker is open: when the cooldown ends.
    open_until: Option<Instant>,
    /// When the current half-open probe was sent. A probe whose outcome is
    /// never recorded (lost with a cancelled future) stops blocking others
    /// after one cooldown.
    pub(super) probe_since: Option<Instant>,
}

impl Health {
    pub(super) fn new(cooldown: Duration) -> Self {
        Self {
            cooldown,
            requests_total: 0,
            errors_total: 0,
            consecutive_failures: 0,
            recent: VecDeque::with_capacity(WINDOW),
            latency_ms: None,
            last_error: None,
            last_error_at_ms: None,
            open_until: None,
            probe_since: None,
        }
    }

    pub(super) fn rank(&self, now: Instant) -> Rank {
        match self.open_until {
            None => Rank::Healthy,
            Some(until) if now < until => Rank::Down,
            Some(_) if self.probe_in_flight(now) => Rank::Down,
            Some(_) => Rank::Probe,
        }
    }

    fn probe_in_flight(&self, now: Instant) -> bool {
        self.probe_since
            .is_some_and(|since| now < since + self.cooldown)
    }

    /// Counts a request about to be sent; returns whether it is the
    /// half-open probe.
    pub(super) fn begin(&mut self, now: Instant) -> bool {
        self.requests_total += 1;
        let probe = self.rank(now) == Rank::Probe;
        if probe {
            self.probe_since = Some(now);
        }
        probe
    }

    fn push_recent(&mut self, failed: bool) {
        if self.recent.len() >= WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(failed);
    }

    /// The upstream answered: closes the breaker.
    fn alive(&mut self) {
        self.consecutive_failures = 0;
        self.open_until = None;
        self.probe_since = None;
    }

    pub(super) fn success(&mut self, latency: Duration) {
        self.push_recent(false);
        self.alive();
        let sample = latency.as_secs_f64() * 1000.0;
        self.latency_ms = Some(match self.latency_ms {
            None => sample,
            Some(avg) => LATENCY_ALPHA * sample + (1.0 - LATENCY_ALPHA) * avg,
        });
    }

    /// A request the upstream refused (400, ...): not its fault, but proof
    /// that it answers.
    fn refused(&mut self) {
        self.push_recent(false);
        self.alive();
    }

    fn failure(&mut self, now: Instant, error: &Error) {
        self.push_recent(true);
        self.errors_total += 1;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_error = Some(truncate_chars(&error.to_string(), MAX_LAST_ERROR_CHARS));
        self.last_error_at_ms = Some(chrono::Utc::now().timestamp_millis());
        if self.consecutive_failures >= FAILURES_TO_OPEN {
            // Opens the breaker, or re-opens it after a failed probe.
            self.open_until = Some(now + self.cooldown);
            self.probe_since = None;
        }
    }

    /// Records how an attempt ended with an error.
    pub(super) fn error(&mut self, now: Instant, error: &Error) {
        if is_upstream_failure(error) {
            self.failure(now, error);
        } else {
            self.refused();
        }
    }

    fn recent_error_rate(&self) -> f64 {
        if self.recent.is_empty() {
            return 0.0;
        }
        let failed = self.recent.iter().filter(|f| **f).count();
        // Both counts are at most WINDOW, so the conversions are exact.
        f64::from(u32::try_from(failed).unwrap_or(u32::MAX))
            / f64::from(u32::try_from(self.recent.len()).unwrap_or(u32::MAX))
    }

    pub(super) fn snapshot(&self, id: &str) -> UpstreamHealth {
        let recent_error_rate = self.recent_error_rate();
        // Open breaker, whether cooling down or half-open: down until a
        // request succeeds.
        let state = if self.open_until.is_some() {
            UpstreamState::Down
        } else if recent_error_rate >= DEGRADED_RATE {
            UpstreamState::Degraded
        } else {
            UpstreamState::Up
        };
        UpstreamHealth {
            id: id.to_owned(),
            requests_total: self.requests_total,
            errors_total: self.errors_total,
            consecutive_failures: self.consecutive_failures,
            recent_error_rate,
            latency_ms: self.latency_ms.map(ms_to_u64),
            last_error: self.last_error.clone(),
            last_error_at_ms: self.last_error_at_ms,
            state,
        }
    }
}

/// Rounds a non-negative number of milliseconds (`as` saturates, and
/// latencies are far below `u64::MAX` anyway).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn ms_to_u64(ms: f64) -> u64 {
    ms.round().max(0.0) as u64
}

/// The first `max` characters of `text`, the last one replaced by `…` when
/// something was cut.
fn truncate_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: Option<&str>) -> Error {
        Error::Api {
            status,
            kind: None,
            code: code.map(str::to_owned),
            message: "m".into(),
            request_id: None,
        }
    }

    #[test]
    fn fallback_classification() {
        for e in [
            Error::Network("refused".into()),
            Error::Timeout { what: "connect" },
            Error::Timeout { what: "response" },
            api(500, None),
            api(502, None),
            api(503, None),
            api(408, None),
            api(429, Some("rate_limit_exceeded")),
            api(429, Some("insufficient_quota")),
            api(401, Some("invalid_api_key")),
            api(403, None),
        ] {
            assert!(should_fall_back(&e), "{e:?}");
            assert!(is_upstream_failure(&e), "{e:?}");
        }
        for e in [
            api(400, Some("context_length_exceeded")),
            api(404, Some("model_not_found")),
            api(422, None),
            api(200, None),
            Error::InvalidConfig("x".into()),
        ] {
            assert!(!should_fall_back(&e), "{e:?}");
            assert!(!is_upstream_failure(&e), "{e:?}");
        }
        // Not worth another route, but the upstream misbehaved.
        for e in [
            Error::Incomplete,
            Error::Timeout { what: "idle" },
            api(0, None),
            Error::decode("bad", b"<html>"),
        ] {
            assert!(!should_fall_back(&e), "{e:?}");
            assert!(is_upstream_failure(&e), "{e:?}");
        }
    }

    #[test]
    fn breaker_opens_probes_and_closes() {
        let cooldown = Duration::from_secs(30);
        let mut h = Health::new(cooldown);
        let t0 = Instant::now();
        let err = api(500, None);
        for i in 1..FAILURES_TO_OPEN {
            assert!(!h.begin(t0));
            h.error(t0, &err);
            assert_eq!(h.consecutive_failures, i);
            assert_eq!(h.rank(t0), Rank::Healthy);
        }
        h.begin(t0);
        h.error(t0, &err);
        assert_eq!(h.rank(t0), Rank::Down);
        assert_eq!(h.snapshot("a").state, UpstreamState::Down);
        // Still down while the cooldown runs, even for a request sent anyway.
        let t1 = t0 + Duration::from_secs(10);
        assert!(!h.begin(t1));
        assert_eq!(h.rank(t1), Rank::Down);
        // After it, exactly one probe.
        let t2 = t0 + cooldown;
        assert_eq!(h.rank(t2), Rank::Probe);
        assert!(h.begin(t2));
        assert_eq!(h.rank(t2), Rank::Down);
        assert!(!h.begin(t2));
        // A failed probe re-opens for another cooldown.
        h.error(t2, &err);
        assert_eq!(h.rank(t2 + Duration::from_secs(29)), Rank::Down);
        let t3 = t2 + cooldown;
        assert!(h.begin(t3));
        // A lost probe stops blocking after one cooldown.
        assert_eq!(h.rank(t3 + Duration::from_secs(1)), Rank::Down);
        assert_eq!(h.rank(t3 + cooldown), Rank::Probe);
        // A success closes the breaker.
        h.success(Duration::from_millis(100));
        assert_eq!(h.rank(t3), Rank::Healthy);
        assert_eq!(h.consecutive_failures, 0);
        let snap = h.snapshot("a");
        assert_eq!(snap.state, UpstreamState::Degraded); // 6 failures of 7
        assert_eq!(snap.requests_total, 9);
        assert_eq!(snap.errors_total, 6);
    }

    #[test]
    fn refused_request_proves_the_upstream_alive() {
        let mut h = Health::new(Duration::from_secs(30));
        let t0 = Instant::now();
        for _ in 0..FAILURES_TO_OPEN {
            h.error(t0, &Error::Network("x".into()));
        }
        assert_eq!(h.rank(t0), Rank::Down);
        h.error(t0, &api(400, None));
        assert_eq!(h.rank(t0), Rank::Healthy);
        let snap = h.snapshot("a");
        assert_eq!(snap.errors_total, 5);
        assert_eq!(snap.consecutive_failures, 0);
        assert_eq!(snap.latency_ms, None);
    }

    #[test]
    fn error_rate_window_and_states() {
        let mut h = Health::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(h.snapshot("a").recent_error_rate, 0.0);
        assert_eq!(h.snapshot("a").state, UpstreamState::Up);
        for _ in 0..8 {
            h.success(Duration::from_millis(10));
        }
        h.error(t0, &api(503, None));
        h.success(Duration::from_millis(10));
        h.error(t0, &api(503, None));
        // 2 of 11: under 20%.
        assert_eq!(h.snapshot("a").state, UpstreamState::Up);
        h.error(t0, &api(503, None));
        // 3 of 12 = 25%.
        let snap = h.snapshot("a");
        assert_eq!(snap.state, UpstreamState::Degraded);
        assert!((snap.recent_error_rate - 0.25).abs() < 1e-9);
        // The window keeps only the last 50 outcomes.
        for _ in 0..WINDOW {
            h.success(Duration::from_millis(10));
        }
        assert_eq!(h.recent.len(), WINDOW);
        assert_eq!(h.snapshot("a").recent_error_rate, 0.0);
        assert_eq!(h.snapshot("a").errors_total, 3);
    }

    #[test]
    fn latency_is_an_ewma() {
        let mut h = Health::new(Duration::from_secs(30));
        h.success(Duration::from_millis(100));
        assert_eq!(h.snapshot("a").latency_ms, Some(100));
        h.success(Duration::from_millis(200));
        assert_eq!(h.snapshot("a").latency_ms, Some(120));
        h.success(Duration::from_millis(20));
        assert_eq!(h.snapshot("a").latency_ms, Some(100));
    }

    #[test]
    fn last_error_is_truncated() {
        let mut h = Health::new(Duration::from_secs(30));
        let long = Error::Network("错".repeat(500));
        h.error(Instant::now(), &long);
        let snap = h.snapshot("a");
        let text = snap.last_error.unwrap();
        assert_eq!(text.chars().count(), MAX_LAST_ERROR_CHARS);
        assert!(text.starts_with("network error: 错") && text.ends_with('…'));
        assert!(snap.last_error_at_ms.unwrap() > 1_600_000_000_000);
        assert_eq!(truncate_chars("short", 200), "short");
    }

    #[test]
    fn health_serializes_for_the_admin_api() {
        let snap = Health::new(Duration::from_secs(1)).snapshot("deepseek");
        let v = serde_json::to_value(&snap).unwrap();
        assert_eq!(v["id"], "deepseek");
        assert_eq!(v["state"], "up");
        assert_eq!(v["latency_ms"], serde_json::Value::Null);
        assert_eq!(UpstreamState::Degraded.to_string(), "degraded");
    }
}
