//! Sliding-window rate limits in memory: per user for messages, per address and network for
//! login attempts and guest sign-ups.
//!
//! Keys may come from outside (addresses), so a limiter holds at most `max_keys` of them: keys
//! live in two generations, and when the current one is full the older is dropped, except
//! for keys still at their limit, which are carried over while there is room (so flooding the
//! limiter with new keys does not wipe out the counts of the keys already throttled).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chatrelay_storage::Uid;
use tokio::time::Instant;

/// Keys a limiter tracks unless told otherwise.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

type Window = VecDeque<Instant>;

#[derive(Debug)]
struct Generations<K> {
    current: HashMap<K, Window>,
    previous: HashMap<K, Window>,
}

/// A sliding-window limiter keyed by `K` (a uid, an address prefix...). Empty windows are
/// dropped by [`RateLimiter::sweep`], and at most `max_keys` keys are held, so memory follows
/// the number of recently active keys and has a ceiling.
#[derive(Debug)]
pub struct RateLimiter<K = Uid> {
    limit: AtomicU32,
    window: Duration,
    max_keys: usize,
    windows: Mutex<Generations<K>>,
}

impl RateLimiter<Uid> {
    /// A limiter allowing `per_minute` events per user per minute; 0 allows everything.
    #[must_use]
    pub fn new(per_minute: u32) -> Self {
        Self::with_window(per_minute, Duration::from_secs(60))
    }
}

fn trim(window: &mut Window, now: Instant, span: Duration) {
    while window
        .front()
        .is_some_and(|t| now.duration_since(*t) >= span)
    {
        window.pop_front();
    }
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter allowing `limit` events per key within any `window`; 0 allows everything.
    #[must_use]
    pub fn with_window(limit: u32, window: Duration) -> Self {
        Self::bounded(limit, window, DEFAULT_MAX_KEYS)
    }

    /// Like [`RateLimiter::with_window`], holding at most `max_keys` keys (at least 2).
    #[must_use]
    pub fn bounded(limit: u32, window: Duration, max_keys: usize) -> Self {
        Self {
            limit: AtomicU32::new(limit),
            window,
            max_keys: max_keys.max(2),
            windows: Mutex::new(Generations {
                current: HashMap::new(),
                previous: HashMap::new(),
            }),
        }
    }

    /// Records an event for `key` if allowed; `false` when the key is over the limit.
    pub fn allow(&self, key: K) -> bool {
        let limit = self.limit();
        limit == 0 || self.record_below(key, limit as usize)
    }

    /// Records an event for `key` unless it already has `limit` in the window (0: always).
    /// `false` when refused. For limits that vary (tightened under attack).
    pub fn record_below(&self, key: K, limit: usize) -> bool {
        let now = Instant::now();
        let mut g = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let window = self.entry(&mut g, key, now);
        trim(window, now, self.window);
        if limit != 0 && window.len() >= limit {
            return false;
        }
        window.push_back(now);
        true
    }

    /// The window of `key` in the current generation: moved up from the previous one, or
    /// new (rotating the generations first when the current one is full).
    fn entry<'a>(&self, g: &'a mut Generations<K>, key: K, now: Instant) -> &'a mut Window {
        if !g.current.contains_key(&key) {
            let moved = g.previous.remove(&key);
            if moved.is_none() && g.current.len() >= self.max_keys / 2 {
                self.rotate(g, now);
            }
            g.current.insert(key.clone(), moved.unwrap_or_default());
        }
        g.current.entry(key).or_default()
    }

    /// Drops the older generation, keeping the throttled keys of the newer while there is
    /// room for them in the next one.
    fn rotate(&self, g: &mut Generations<K>, now: Instant) {
        let limit = self.limit() as usize;
        let room = self.max_keys / 4;
        let old = std::mem::take(&mut g.current);
        g.previous.clear();
        let mut kept = 0;
        for (k, mut w) in old {
            trim(&mut w, now, self.window);
            if w.is_empty() {
                continue;
            }
            if limit != 0 && w.len() >= limit && kept < room {
                g.current.insert(k, w);
                kept += 1;
            } else {
                g.previous.insert(k, w);
            }
        }
        metrics::counter!("chatrelay_ratelimit_rotations_total").increment(1);
    }

    /// The events allowed per window (0: no limit).
    #[must_use]
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Changes the limit (a configuration reload); windows already recorded are kept.
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Whether `key` is at its limit now, without recording anything.
    pub fn is_limited(&self, key: &K) -> bool {
        let limit = self.limit();
        limit != 0 && self.count(key) >= limit as usize
    }

    /// Events of `key` within the window now.
    #[must_use]
    pub fn count(&self, key: &K) -> usize {
        let now = Instant::now();
        let g = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        g.current
            .get(key)
            .or_else(|| g.previous.get(key))
            .map_or(0, |w| {
                w.iter()
                    .filter(|t| now.duration_since(**t) < self.window)
                    .count()
            })
    }

    /// Forgets keys whose window is empty.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut g = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let live = |w: &mut Window| {
            w.back()
                .is_some_and(|t| now.duration_since(*t) < self.window)
        };
        g.current.retain(|_, w| live(w));
        g.previous.retain(|_, w| live(w));
    }

    /// Keys currently tracked.
    #[must_use]
    pub fn tracked(&self) -> usize {
        let g = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        g.current.len() + g.previous.len()
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

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_keys_stays_bounded_and_throttled_keys_stay_throttled() {
        let rl: RateLimiter<u64> = RateLimiter::bounded(3, Duration::from_secs(600), 1_000);
        // The attacker's own key is used up...
        for _ in 0..3 {
            assert!(rl.allow(7));
        }
        assert!(!rl.allow(7));
        // ...then 100,000 fresh keys try to push it out.
        for k in 1_000..101_000u64 {
            rl.allow(k);
            assert!(rl.tracked() <= 1_000, "at most max_keys keys are held");
        }
        assert!(
            rl.is_limited(&7),
            "a throttled key is carried over rotations"
        );
        assert!(!rl.allow(7));
        // A key seen recently (in the current or previous generation) keeps its count.
        assert!(rl.allow(100_999));
        assert_eq!(rl.count(&100_999), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn record_below_takes_the_limit_of_the_moment() {
        let rl: RateLimiter<u8> = RateLimiter::with_window(10, Duration::from_secs(60));
        assert!(rl.record_below(1, 2));
        assert!(rl.record_below(1, 2));
        assert!(!rl.record_below(1, 2));
        assert!(rl.record_below(1, 10));
        assert_eq!(rl.count(&1), 3);
    }
}
