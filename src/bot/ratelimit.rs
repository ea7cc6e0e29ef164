//! Per-user message rate limit: a sliding one-minute window per uid, in memory.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use chatrelay_storage::Uid;
use tokio::time::Instant;

const WINDOW: Duration = Duration::from_secs(60);

/// A sliding-window limiter keyed by user. Empty windows are dropped by [`RateLimiter::sweep`]
/// so memory follows the number of recently active users only.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<Uid, VecDeque<Instant>>>,
}

impl RateLimiter {
    /// A limiter allowing `per_minute` events per user per minute; 0 allows everything.
    #[must_use]
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event for `uid` if allowed; `false` when the user is over the limit.
    pub fn allow(&self, uid: Uid) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let now = Instant::now();
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let window = map.entry(uid).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            window.pop_front();
        }
        if window.len() >= self.per_minute as usize {
            return false;
        }
        window.push_back(now);
        true
    }

    /// Forgets users whose window is empty.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
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
