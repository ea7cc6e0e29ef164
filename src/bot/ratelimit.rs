//! Sliding-window rate limits in memory: per user for messages, per IP for login attempts.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use chatrelay_storage::Uid;
use tokio::time::Instant;

/// A sliding-window limiter keyed by `K` (a uid, an IP...). Empty windows are dropped by
/// [`RateLimiter::sweep`] so memory follows the number of recently active keys only.
#[derive(Debug)]
pub struct RateLimiter<K = Uid> {
    limit: std::sync::atomic::AtomicU32,
    window: Duration,
    windows: Mutex<HashMap<K, VecDeque<Instant>>>,
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
