//! [`BoundedMap`]: the in-memory map for anything keyed by outside input (message ids, stream
//! ids, addresses): every entry expires a fixed time after it was inserted, and the map never
//! holds more than its capacity (the oldest entry goes first), so no sender can grow the
//! daemon's memory by sending new ids.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// A map with a size cap and an expiry per entry (from its insertion). Lookups never see an
/// expired entry; expired and surplus entries are dropped on insertion, oldest first, at an
/// amortised constant cost (no sweep over the whole map).
#[derive(Clone, Debug)]
pub struct BoundedMap<K, V> {
    map: HashMap<K, (Instant, V)>,
    /// Keys in insertion order with their insertion time; an item whose time no longer
    /// matches the map's (the key was removed and inserted again) is stale and skipped.
    order: VecDeque<(K, Instant)>,
    capacity: usize,
    ttl: Duration,
}

impl<K: Hash + Eq + Clone, V> BoundedMap<K, V> {
    /// An empty map holding at most `capacity` entries (at least 1), each for `ttl`.
    #[must_use]
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// The live value of `key`.
    #[must_use]
    pub fn get(&self, key: &K) -> Option<&V> {
        let now = Instant::now();
        self.map
            .get(key)
            .filter(|(at, _)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(_, v)| v)
    }

    /// The live value of `key`, to change it (its expiry stays).
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let now = Instant::now();
        let ttl = self.ttl;
        self.map
            .get_mut(key)
            .filter(|(at, _)| now.saturating_duration_since(*at) < ttl)
            .map(|(_, v)| v)
    }

    /// When the live entry of `key` was inserted.
    #[must_use]
    pub fn inserted_at(&self, key: &K) -> Option<Instant> {
        let now = Instant::now();
        self.map
            .get(key)
            .map(|(at, _)| *at)
            .filter(|at| now.saturating_duration_since(*at) < self.ttl)
    }

    /// Inserts (or replaces, with a fresh expiry) the value of `key`.
    pub fn insert(&mut self, key: K, value: V) {
        let now = Instant::now();
        self.prune(now, 1);
        self.order.push_back((key.clone(), now));
        self.map.insert(key, (now, value));
    }

    /// The live value of `key`, inserting `make()` first if there is none; `true` when it was
    /// inserted.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> (&mut V, bool) {
        let now = Instant::now();
        let live = self.inserted_at(&key).is_some();
        if !live {
            self.prune(now, 1);
            self.order.push_back((key.clone(), now));
        }
        match self.map.entry(key) {
            std::collections::hash_map::Entry::Occupied(o) => {
                let slot = o.into_mut();
                if !live {
                    *slot = (now, make());
                }
                (&mut slot.1, !live)
            }
            std::collections::hash_map::Entry::Vacant(v) => (&mut v.insert((now, make())).1, true),
        }
    }

    /// Entries held (live or expired but not yet dropped); never more than the capacity.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the map holds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The most entries held.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Drops expired entries, then the oldest until `room` more fit.
    fn prune(&mut self, now: Instant, room: usize) {
        while let Some((key, at)) = self.order.front() {
            let current = self.map.get(key).map(|(t, _)| *t);
            let stale = current != Some(*at);
            let expired = now.saturating_duration_since(*at) >= self.ttl;
            // Re-insertions leave stale items behind; the queue is kept bounded too.
            let full = self.map.len() + room > self.capacity
                || self.order.len() >= self.capacity.saturating_mul(2);
            if !(stale || expired || full) {
                break;
            }
            if let Some((key, _)) = self.order.pop_front()
                && !stale
            {
                self.map.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_and_the_oldest_go_first() {
        let mut m = BoundedMap::new(3, Duration::from_secs(10));
        m.insert("a", 1);
        tokio::time::advance(Duration::from_secs(4)).await;
        m.insert("b", 2);
        m.insert("c", 3);
        assert_eq!((m.get(&"a"), m.len()), (Some(&1), 3));
        m.insert("d", 4);
        assert_eq!(m.get(&"a"), None, "the oldest made room");
        assert_eq!(m.len(), 3);
        tokio::time::advance(Duration::from_secs(5)).await;
        m.insert("e", 5); // t = 9: b, c, d still live, so b makes room
        assert_eq!((m.get(&"b"), m.get(&"c")), (None, Some(&3)));
        tokio::time::advance(Duration::from_secs(5)).await;
        // t = 14: c and d expired (inserted at 4); lookups never see them.
        assert_eq!(
            (m.get(&"c"), m.get(&"d"), m.get(&"e")),
            (None, None, Some(&5))
        );
        m.insert("f", 6);
        assert_eq!(m.len(), 2, "expired entries dropped on insertion");
        // Re-inserting a key renews it and leaves no stale item to evict it early.
        m.insert("e", 50);
        m.insert("g", 7);
        assert_eq!(m.get(&"e"), Some(&50));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(m.get(&"e"), Some(&50), "renewed at 14, live until 24");
        let (v, inserted) = m.get_or_insert_with("h", || 8);
        assert_eq!((*v, inserted), (8, true));
        let (v, inserted) = m.get_or_insert_with("h", || 9);
        assert_eq!((*v, inserted), (8, false));
        assert!(m.len() <= 3);
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_within_the_cap() {
        let mut m = BoundedMap::new(1000, Duration::from_secs(600));
        for i in 0..100_000u32 {
            m.insert(i.to_string(), i);
            assert!(m.len() <= 1000);
        }
        assert_eq!(m.len(), 1000);
        assert!(m.order.len() <= 2000, "{}", m.order.len());
        assert_eq!(m.get(&"99999".to_owned()), Some(&99_999));
        // Renewing one key again and again does not grow the queue either.
        for _ in 0..10_000 {
            m.insert("same".to_owned(), 0);
        }
        assert!(m.order.len() <= 2000 && m.len() <= 1000);
    }
}
