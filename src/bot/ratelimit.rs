//! Sliding-window rate limits in memory: per user for messages, per IP for login attempts.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use chatrelay_storage::Uid;
use tokio::time::Instant;

/// Keys tracked at most by one limiter (keys come from outside: addresses, users).
pub const MAX_KEYS: usize = 100_000;

/// A sliding-window limiter keyed by `K` (a uid, an IP...). Empty windows are dropped by
/// [`RateLimiter::sweep`] so memory follows the number of recently active keys only, and at
/// most [`MAX_KEYS`] keys are tracked: when that many are active, idle windows are swept (at
/// most once a second) and a new key that still does not fit is refused — forgetting a
/// tracked key instead would let a flood of new keys reset a guesser's window.
#[derive(Debug)]
pub struct RateLimiter<K = Uid> {
    limit: std::sync::atomic::AtomicU32,
    window: Duration,
    windows: Mutex<HashMap<K, VecDeque<Instant>>>,
    /// When the map was last swept because it was full.
    full_sweep: Mutex<Option<Instant>>,
    max_keys: usize,
}

impl RateLimiter<Uid> {
    /// A limiter allowing `per_minute` events per user per minute; 0 allows everything.
    #[must_use]
    pub fn new(per_minute: u32) -> Self {
        Self::with_window(per_minute, Duration::from_secs(60))
    }
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter allowing `limit` events per key within any `window`; 0 allows everything.
    #[must_use]
    pub fn with_window(limit: u32, window: Duration) -> Self {
        Self {
            limit: std::sync::atomic::AtomicU32::new(limit),
            window,
            windows: Mutex::new(HashMap::new()),
            full_sweep: Mutex::new(None),
            max_keys: MAX_KEYS,
        }
    }

    /// Records an event for `key` if allowed; `false` when the key is over the limit.
    pub fn allow(&self, key: K) -> bool {
        let limit = self.limit();
        if limit == 0 {
            return true;
        }
        let now = Instant::now();
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.max_keys && !map.contains_key(&key) {
            let mut swept = self.full_sweep.lock().unwrap_or_else(|p| p.into_inner());
            if swept.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                *swept = Some(now);
                map.retain(|_, w| {
                    w.back()
                        .is_some_and(|t| now.duration_since(*t) < self.window)
                });
            }
            if map.len() >= self.max_keys {
                return false;
            }
        }
        let window = map.entry(key).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            window.pop_front();
        }
        if window.len() >= limit as usize {
            return false;
        }
        window.push_back(now);
        true
    }

    /// The events allowed per window (0: no limit).
    #[must_use]
    pub fn limit(&self) -> u32 {
        self.limit.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Changes the limit (a configuration reload); windows already recorded are kept.
    pub fn set_limit(&self, limit: u32) {
        self.limit
            .store(limit, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `key` is at its limit now, without recording anything.
    pub fn is_limited(&self, key: &K) -> bool {
        let limit = self.limit();
        if limit == 0 {
            return false;
        }
        let now = Instant::now();
        let map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).is_some_and(|w| {
            w.iter()
                .filter(|t| now.duration_since(**t) < self.window)
                .count()
                >= limit as usize
        })
    }

    /// Forgets keys whose window is empty.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| {
            w.back()
                .is_some_and(|t| now.duration_since(*t) < self.window)
        });
    }

    /// Users currently tracked.
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.windows.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_keys_stays_within_the_bound() {
        let mut rl = RateLimiter::<u32>::with_window(5, Duration::from_secs(60));
        rl.max_keys = 1000;
        let allowed = (0..100_000u32).filter(|i| rl.allow(*i)).count();
        assert_eq!(allowed, 1000, "new keys beyond the bound are refused");
        assert!(rl.tracked() <= 1000);
        assert!(rl.allow(7), "tracked keys keep their window");
        // Once the windows are idle, the room is swept and new keys fit again.
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(rl.allow(500_000));
        assert!(rl.tracked() <= 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn limits_per_user_and_slides() {
        let rl = RateLimiter::new(2);
        assert!(rl.allow(Uid(1)));
        assert!(rl.allow(Uid(1)));
        assert!(!rl.allow(Uid(1)));
        assert!(rl.allow(Uid(2)), "other users are not affected");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(rl.allow(Uid(1)));
        rl.sweep();
        assert_eq!(rl.tracked(), 1, "user 2's window expired and was swept");
    }

    #[test]
    fn zero_means_off() {
        let rl = RateLimiter::new(0);
        for _ in 0..1000 {
            assert!(rl.allow(Uid(1)));
        }
    }
}
