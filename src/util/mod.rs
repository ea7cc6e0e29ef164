//! Small pure helpers every layer uses: the clock, day numbers and time zones, random ids,
//! money as text, constant-time comparison, and client addresses ([`addr`]). Imports nothing
//! of the crate, so anything may import it.

pub mod addr;

/// Milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Parses a timezone: a fixed offset (`+08:00`, `-0530`, `UTC+8`) or one of the common
/// names without daylight saving time. Returns the offset east of UTC in seconds.
pub fn parse_timezone(tz: &str) -> Result<i32, String> {
    let t = tz.trim();
    let named = match t {
        "UTC" | "Etc/UTC" | "GMT" | "Z" => Some(0),
        "Asia/Shanghai" | "Asia/Chongqing" | "Asia/Hong_Kong" | "Asia/Macau" | "Asia/Taipei"
        | "Asia/Singapore" | "Asia/Kuala_Lumpur" | "PRC" => Some(8 * 3600),
        "Asia/Tokyo" | "Asia/Seoul" => Some(9 * 3600),
        "Asia/Kolkata" => Some(5 * 3600 + 1800),
        _ => None,
    };
    if let Some(n) = named {
        return Ok(n);
    }
    let rest = t
        .strip_prefix("UTC")
        .or_else(|| t.strip_prefix("GMT"))
        .unwrap_or(t);
    let err = || {
        format!(
            "{tz:?} is not a known timezone: use an offset like +08:00, or UTC, Asia/Shanghai (zones with daylight saving time are not supported)"
        )
    };
    let (sign, digits) = match rest.as_bytes().first() {
        Some(b'+') => (1, &rest[1..]),
        Some(b'-') => (-1, &rest[1..]),
        _ => return Err(err()),
    };
    let (h, m) = if let Some((h, m)) = digits.split_once(':') {
        (h, m)
    } else if digits.len() == 4 {
        digits.split_at(2)
    } else {
        (digits, "0")
    };
    let h: i32 = h.parse().map_err(|_| err())?;
    let m: i32 = m.parse().map_err(|_| err())?;
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return Err(err());
    }
    Ok(sign * (h * 3600 + m * 60))
}

/// The day number (days since 1970-01-01 in the given offset) of a Unix time in ms.
#[must_use]
pub fn day_number(now_ms: i64, offset_secs: i32) -> i64 {
    (now_ms.div_euclid(1000) + i64::from(offset_secs)).div_euclid(86_400)
}

/// 16 random bytes in hex: unique references for ledger entries and response ids.
#[must_use]
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        // The OS RNG failing is not something to serve through; fall back to time + counter.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return format!("{:x}{n:x}", now_ms());
    }
    hex::encode(bytes)
}

/// Fen as yuan with two decimals: 450 → "4.50".
#[must_use]
pub fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let abs = fen.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// Compares two secrets in time independent of where they differ (and of their lengths,
/// by comparing SHA-256 digests).
#[must_use]
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let da = ring::digest::digest(&ring::digest::SHA256, a.as_bytes());
    let db = ring::digest::digest(&ring::digest::SHA256, b.as_bytes());
    da.as_ref()
        .iter()
        .zip(db.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// A handle on the current generation of something a reload replaces: each call to
/// [`Current::get`] returns the value now in force. Who owns the swap (`reload::Live`) builds
/// it, so that the modules reading through it need not import the owner. Cheap to clone.
pub struct Current<T>(std::sync::Arc<dyn Fn() -> std::sync::Arc<T> + Send + Sync>);

impl<T> Current<T> {
    /// A handle that asks `now` for the value in force.
    pub fn new(now: impl Fn() -> std::sync::Arc<T> + Send + Sync + 'static) -> Self {
        Current(std::sync::Arc::new(now))
    }

    /// The value now. Hold it for the length of a request, not longer.
    #[must_use]
    pub fn get(&self) -> std::sync::Arc<T> {
        (self.0)()
    }

    /// A handle on a part of the value in force.
    #[must_use]
    pub fn map<U>(
        &self,
        part: impl Fn(&T) -> std::sync::Arc<U> + Send + Sync + 'static,
    ) -> Current<U>
    where
        T: 'static,
    {
        let whole = self.clone();
        Current::new(move || part(&whole.get()))
    }
}

impl<T> Clone for Current<T> {
    fn clone(&self) -> Self {
        Current(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timezones() {
        assert_eq!(parse_timezone("Asia/Shanghai"), Ok(28_800));
        assert_eq!(parse_timezone("UTC"), Ok(0));
        assert_eq!(parse_timezone("+08:00"), Ok(28_800));
        assert_eq!(parse_timezone("-0530"), Ok(-19_800));
        assert_eq!(parse_timezone("UTC+8"), Ok(28_800));
        for bad in ["", "Europe/Paris", "+25:00", "+08:99", "8", "+x"] {
            assert!(parse_timezone(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn day_boundary_follows_the_offset() {
        // 2026-11-27 15:59:59 UTC is 23:59:59 in Shanghai; one second later is the next day there.
        let before = 1_795_795_199_000; // 2026-11-27T15:59:59Z
        let after = before + 1000;
        assert_eq!(day_number(after, 28_800), day_number(before, 28_800) + 1);
        assert_eq!(day_number(after, 0), day_number(before, 0));
        assert_eq!(day_number(-1, 0), -1);
    }

    #[test]
    fn secret_comparison() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
        assert!(!secrets_equal("", "a"));
    }

    #[test]
    fn yuan_has_two_decimals() {
        assert_eq!(yuan(450), "4.50");
        assert_eq!(yuan(-5), "-0.05");
        assert_eq!(yuan(0), "0.00");
    }

    #[test]
    fn random_ids_differ() {
        let (a, b) = (random_id(), random_id());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
