//! API key rotation: round robin over the configured keys, setting aside for
//! a while any key the server rejected (401/403) or throttled (429), so the
//! other keys carry the load. No I/O; the caller passes the current time.
//!
//! Keys are secrets: this module hands out only indexes and fingerprints
//! (a truncated SHA-256), and the key text is read only to build the
//! `Authorization` header.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The configured keys and their cooldowns.
pub(crate) struct KeyRing {
    keys: Vec<Key>,
    state: Mutex<State>,
}

struct Key {
    secret: String,
    fingerprint: String,
}

struct State {
    /// Where the next round-robin search starts.
    next: usize,
    /// Per key: until when it is set aside (`None` = available).
    cooldown_until: Vec<Option<Instant>>,
}

impl KeyRing {
    /// Wraps the keys; an empty list is valid (servers without auth).
    pub(crate) fn new(keys: &[String]) -> Self {
        let keys: Vec<Key> = keys
            .iter()
            .map(|k| Key {
                secret: k.clone(),
                fingerprint: fingerprint(k),
            })
            .collect();
        let state = State {
            next: 0,
            cooldown_until: vec![None; keys.len()],
        };
        Self {
            keys,
            state: Mutex::new(state),
        }
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The secret of key `index`, for the `Authorization` header only.
    pub(crate) fn secret(&self, index: usize) -> Option<&str> {
        self.keys.get(index).map(|k| k.secret.as_str())
    }

    /// A loggable, non-reversible name for key `index`.
    pub(crate) fn fingerprint(&self, index: usize) -> &str {
        self.keys
            .get(index)
            .map_or("none", |k| k.fingerprint.as_str())
    }

    /// The next key to use: the first available key in round-robin order;
    /// if every key is set aside, the one whose cooldown ends first (a key
    /// that may work is better than failing outright). `None` if there are
    /// no keys at all.
    pub(crate) fn pick(&self, now: Instant) -> Option<usize> {
        let n = self.keys.len();
        if n == 0 {
            return None;
        }
        let mut state = self.lock();
        let start = state.next % n;
        let available = (0..n)
            .map(|offset| (start + offset) % n)
            .find(|&i| is_available(state.cooldown_until.get(i).copied().flatten(), now));
        let chosen = available.unwrap_or_else(|| {
            (0..n)
                .min_by_key(|&i| state.cooldown_until.get(i).copied().flatten())
                .unwrap_or(start)
        });
        state.next = (chosen + 1) % n;
        Some(chosen)
    }

    /// Sets key `index` aside for `cooldown` from `now`.
    pub(crate) fn set_aside(&self, index: usize, now: Instant, cooldown: Duration) {
        let mut state = self.lock();
        if let Some(slot) = state.cooldown_until.get_mut(index) {
            *slot = Some(now + cooldown);
        }
    }

    /// Whether at least one key is not set aside at `now`.
    pub(crate) fn any_available(&self, now: Instant) -> bool {
        self.lock()
            .cooldown_until
            .iter()
            .any(|&until| is_available(until, now))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few plain values that are always consistent, so a
        // panic elsewhere while holding the lock cannot leave it corrupt.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn is_available(until: Option<Instant>, now: Instant) -> bool {
    until.is_none_or(|t| t <= now)
}

/// `key#` followed by the first 8 hex digits of the key's SHA-256.
fn fingerprint(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let hex: String = digest
        .as_ref()
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("key#{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring3() -> KeyRing {
        KeyRing::new(&["sk-a".into(), "sk-b".into(), "sk-c".into()])
    }

    #[test]
    fn empty_ring_picks_nothing() {
        let ring = KeyRing::new(&[]);
        assert_eq!(ring.pick(Instant::now()), None);
        assert!(!ring.any_available(Instant::now()));
    }

    #[test]
    fn round_robin() {
        let ring = ring3();
        let now = Instant::now();
        let picks: Vec<_> = (0..6).map(|_| ring.pick(now).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn set_aside_keys_are_skipped_until_cooldown_ends() {
        let ring = ring3();
        let now = Instant::now();
        ring.set_aside(1, now, Duration::from_secs(60));
        let picks: Vec<_> = (0..4).map(|_| ring.pick(now).unwrap()).collect();
        assert_eq!(picks, [0, 2, 0, 2]);
        let later = now + Duration::from_secs(61);
        let picks: Vec<_> = (0..3).map(|_| ring.pick(later).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2]);
    }

    #[test]
    fn all_set_aside_uses_earliest_cooldown_end() {
        let ring = ring3();
        let now = Instant::now();
        ring.set_aside(0, now, Duration::from_secs(30));
        ring.set_aside(1, now, Duration::from_secs(10));
        ring.set_aside(2, now, Duration::from_secs(20));
        assert!(!ring.any_available(now));
        assert_eq!(ring.pick(now), Some(1));
        assert_eq!(ring.pick(now), Some(1));
        assert!(ring.any_available(now + Duration::from_secs(10)));
    }

    #[test]
    fn fingerprints_do_not_contain_the_key() {
        let ring = KeyRing::new(&["sk-secret-value-123".into()]);
        let fp = ring.fingerprint(0);
        assert!(fp.starts_with("key#") && fp.len() == 12, "{fp}");
        assert!(!fp.contains("secret"));
        assert_eq!(ring.secret(0), Some("sk-secret-value-123"));
        assert_eq!(ring.fingerprint(5), "none");
    }
}
