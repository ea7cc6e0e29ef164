//! Retry policy, as pure functions: whether a failed attempt may be repeated
//! and how long to wait first. Mirrors openai-python's `_base_client.py`
//! (`_should_retry`, `_parse_retry_after_header`, `_calculate_retry_timeout`),
//! except that a server-requested delay longer than the configured maximum
//! makes the client give up instead of falling back to its own backoff:
//! waiting minutes inside a chat request helps nobody, and ignoring the
//! server's request would only earn another 429.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::Error;

/// Whether a failed attempt may be retried. `should_retry_header` is the
/// parsed `x-should-retry` header, which overrides the status rules, but
/// never makes `insufficient_quota` retryable (more attempts cannot add
/// credit to the account).
pub(crate) fn should_retry(error: &Error, should_retry_header: Option<bool>) -> bool {
    if error.is_insufficient_quota() {
        return false;
    }
    should_retry_header.unwrap_or_else(|| error.is_retryable())
}

/// Parses `x-should-retry: true|false`; anything else means "no opinion".
pub(crate) fn parse_should_retry(value: Option<&str>) -> Option<bool> {
    match value.map(str::trim) {
        Some(v) if v.eq_ignore_ascii_case("true") => Some(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// The delay the server asked for: `retry-after-ms` (milliseconds) first,
/// else `retry-after` as seconds or as an HTTP date relative to `now`.
/// A date in the past gives zero; unparsable values give `None`.
pub(crate) fn parse_retry_after(
    retry_after_ms: Option<&str>,
    retry_after: Option<&str>,
    now: DateTime<Utc>,
) -> Option<Duration> {
    if let Some(ms) = retry_after_ms.and_then(parse_non_negative) {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    let value = retry_after?.trim();
    if let Some(secs) = parse_non_negative(value) {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let date = DateTime::parse_from_rfc2822(value).ok()?;
    let delta = date.with_timezone(&Utc) - now;
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// A finite, non-negative decimal number (Rust's float parser would also
/// accept `inf` and `NaN`, which no server means).
fn parse_non_negative(s: &str) -> Option<f64> {
    let v: f64 = s.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// Backoff settings, copied out of [`ClientConfig`](crate::ClientConfig).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
    pub(crate) max_retry_after: Duration,
}

/// Why no retry delay could be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLong(pub(crate) Duration);

impl Backoff {
    /// The delay before retry number `retry` (0 for the first retry).
    ///
    /// A server-requested delay in `(0, max_retry_after]` is used as is; a
    /// longer one is `Err(TooLong)`. Otherwise the delay is
    /// `initial * 2^retry`, capped at `max`, reduced by `jitter * 25%` where
    /// `jitter` is uniform in `[0, 1)`, so that many clients that failed
    /// together do not retry in lockstep.
    pub(crate) fn delay(
        &self,
        server: Option<Duration>,
        retry: u32,
        jitter: f64,
    ) -> Result<Duration, TooLong> {
        match server {
            Some(d) if d > self.max_retry_after => return Err(TooLong(d)),
            Some(d) if !d.is_zero() => return Ok(d),
            _ => {}
        }
        let factor = 1u32 << retry.min(31);
        let base = self.initial.saturating_mul(factor).min(self.max);
        let jitter = jitter.clamp(0.0, 1.0);
        Ok(base.mul_f64(1.0 - 0.25 * jitter))
    }
}

/// A uniform random number in `[0, 1)` from the OS generator, or 0 if the
/// generator fails (then the backoff is merely not jittered).
pub(crate) fn jitter(rng: &ring::rand::SystemRandom) -> f64 {
    use ring::rand::SecureRandom;
    let mut buf = [0u8; 4];
    match rng.fill(&mut buf) {
        Ok(()) => f64::from(u32::from_le_bytes(buf)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2015, 10, 21, 7, 28, 0).unwrap()
    }

    const BACKOFF: Backoff = Backoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(8),
        max_retry_after: Duration::from_secs(120),
    };

    #[test]
    fn retry_after_ms_wins() {
        let d = parse_retry_after(Some("1500"), Some("30"), now());
        assert_eq!(d, Some(Duration::from_millis(1500)));
        let d = parse_retry_after(Some("2.5"), None, now());
        assert_eq!(d, Some(Duration::from_micros(2500)));
        // Unparsable ms falls back to retry-after.
        let d = parse_retry_after(Some("soon"), Some("3"), now());
        assert_eq!(d, Some(Duration::from_secs(3)));
    }

    #[test]
    fn retry_after_seconds() {
        assert_eq!(
            parse_retry_after(None, Some(" 20 "), now()),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            parse_retry_after(None, Some("0.5"), now()),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_retry_after(None, Some("-1"), now()), None);
        assert_eq!(parse_retry_after(None, Some("inf"), now()), None);
        assert_eq!(parse_retry_after(None, Some("NaN"), now()), None);
        assert_eq!(parse_retry_after(None, Some("later"), now()), None);
        assert_eq!(parse_retry_after(None, None, now()), None);
    }

    #[test]
    fn retry_after_http_date() {
        let d = parse_retry_after(None, Some("Wed, 21 Oct 2015 07:28:30 GMT"), now());
        assert_eq!(d, Some(Duration::from_secs(30)));
        let past = parse_retry_after(None, Some("Wed, 21 Oct 2015 07:27:00 GMT"), now());
        assert_eq!(past, Some(Duration::ZERO));
    }

    #[test]
    fn server_delay_used_when_in_range() {
        let d = BACKOFF.delay(Some(Duration::from_secs(3)), 0, 0.9);
        assert_eq!(d, Ok(Duration::from_secs(3)));
        let d = BACKOFF.delay(Some(Duration::from_secs(120)), 0, 0.0);
        assert_eq!(d, Ok(Duration::from_secs(120)));
    }

    #[test]
    fn server_delay_too_long_gives_up() {
        let d = BACKOFF.delay(Some(Duration::from_secs(121)), 0, 0.0);
        assert_eq!(d, Err(TooLong(Duration::from_secs(121))));
        let long = parse_retry_after(None, Some("Wed, 21 Oct 2015 08:28:00 GMT"), now());
        assert!(BACKOFF.delay(long, 0, 0.0).is_err());
    }

    #[test]
    fn zero_server_delay_falls_back_to_backoff() {
        let d = BACKOFF.delay(Some(Duration::ZERO), 1, 0.0);
        assert_eq!(d, Ok(Duration::from_secs(1)));
    }

    #[test]
    fn exponential_backoff_with_cap_and_jitter() {
        let no_jitter: Vec<_> = (0..7)
            .map(|n| BACKOFF.delay(None, n, 0.0).unwrap())
            .collect();
        let ms: Vec<u128> = no_jitter.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(BACKOFF.delay(None, 1, 1.0), Ok(Duration::from_millis(750)));
        assert_eq!(
            BACKOFF.delay(None, 0, 0.5),
            Ok(Duration::from_millis(437) + Duration::from_micros(500))
        );
        // Huge retry numbers must not overflow.
        assert_eq!(
            BACKOFF.delay(None, u32::MAX, 0.0),
            Ok(Duration::from_secs(8))
        );
    }

    #[test]
    fn jitter_is_in_range() {
        let rng = ring::rand::SystemRandom::new();
        for _ in 0..100 {
            let j = jitter(&rng);
            assert!((0.0..1.0).contains(&j));
        }
    }

    #[test]
    fn should_retry_rules() {
        let e500 = crate::error::api_error_from_body(500, b"", None);
        let e400 = crate::error::api_error_from_body(400, b"", None);
        let quota = crate::error::api_error_from_body(
            429,
            br#"{"error":{"message":"quota","code":"insufficient_quota"}}"#,
            None,
        );
        assert!(should_retry(&e500, None));
        assert!(!should_retry(&e500, Some(false)));
        assert!(!should_retry(&e400, None));
        assert!(should_retry(&e400, Some(true)));
        assert!(!should_retry(&quota, None));
        assert!(!should_retry(&quota, Some(true)));
        assert_eq!(parse_should_retry(Some("TRUE")), Some(true));
        assert_eq!(parse_should_retry(Some("false ")), Some(false));
        assert_eq!(parse_should_retry(Some("maybe")), None);
        assert_eq!(parse_should_retry(None), None);
    }
}
