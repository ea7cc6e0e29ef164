//! Short-lived handoff records: a value under a random key for a few minutes, read, moved
//! on by compare-and-swap, or taken once. The web login's OAuth states and scan-login
//! tickets live here, so that with several daemons on one database the step that starts a
//! login and the step that finishes it may reach different daemons.
//!
//! They share the `answers` tree (in the [`SharedAnswer`] form) with the engine's kept
//! answers, under a `handoff:` prefix, so that the one purge of expired marks removes them
//! too and no schema change is needed.

use crate::codec::{check_key, decode, encode};
use crate::dedupe::SharedAnswer;
use crate::{ANSWERS, KvStore, StoreError};

fn full_key(key: &str) -> Result<String, StoreError> {
    check_key("handoff key", key)?;
    Ok(format!("handoff:{key}"))
}

fn record(value: &str, expires_at_ms: i64) -> Result<Vec<u8>, StoreError> {
    encode(&SharedAnswer {
        text: Some(value.to_owned()),
        expires_at_ms,
    })
}

/// The value of a raw record, if it is live at `now_ms`.
fn live(key: &str, raw: &[u8], now_ms: i64) -> Result<Option<String>, StoreError> {
    let rec: SharedAnswer = decode(ANSWERS, raw, || key.to_owned())?;
    Ok(rec.text.filter(|_| rec.expires_at_ms > now_ms))
}

impl KvStore {
    /// Keeps `value` under `key` until `expires_at_ms`, replacing what was there.
    pub fn put_handoff(
        &self,
        key: &str,
        value: &str,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let _writing = self.writing();
        let key = full_key(key)?;
        self.trees()?
            .answers
            .insert(key.as_bytes(), record(value, expires_at_ms)?)
    }

    /// The value under `key`, if it is live at `now_ms`.
    pub fn handoff(&self, key: &str, now_ms: i64) -> Result<Option<String>, StoreError> {
        let key = full_key(key)?;
        match self.trees()?.answers.get(key.as_bytes())? {
            Some(raw) => live(&key, &raw, now_ms),
            None => Ok(None),
        }
    }

    /// Replaces the live value `expected` under `key` with `new` (until `expires_at_ms`).
    /// False when the key holds anything else, nothing, or an expired record: of two
    /// concurrent callers, at most one succeeds.
    pub fn swap_handoff(
        &self,
        key: &str,
        expected: &str,
        new: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let _writing = self.writing();
        let key = full_key(key)?;
        let tree = &self.trees()?.answers;
        let Some(raw) = tree.get(key.as_bytes())? else {
            return Ok(false);
        };
        if live(&key, &raw, now_ms)?.as_deref() != Some(expected) {
            return Ok(false);
        }
        let new = record(new, expires_at_ms)?;
        Ok(tree
            .compare_and_swap(key.as_bytes(), Some(&raw), Some(new.as_slice()))?
            .is_ok())
    }

    /// Removes the record under `key` and returns its value if it was live at `now_ms`. Of
    /// two concurrent callers, at most one gets the value.
    pub fn take_handoff(&self, key: &str, now_ms: i64) -> Result<Option<String>, StoreError> {
        let _writing = self.writing();
        let key = full_key(key)?;
        let tree = &self.trees()?.answers;
        let Some(raw) = tree.get(key.as_bytes())? else {
            return Ok(None);
        };
        if tree
            .compare_and_swap(key.as_bytes(), Some(&raw), None as Option<&[u8]>)?
            .is_err()
        {
            return Ok(None);
        }
        live(&key, &raw, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    use super::*;

    #[test]
    fn put_read_swap_take() {
        let store = KvStore::open_temporary().unwrap();
        store.put_handoff("t1", "pending", 1000).unwrap();
        assert_eq!(store.handoff("t1", 10).unwrap().as_deref(), Some("pending"));
        assert!(
            !store
                .swap_handoff("t1", "other", "done:1", 1000, 10)
                .unwrap()
        );
        assert!(
            store
                .swap_handoff("t1", "pending", "done:1", 1000, 10)
                .unwrap()
        );
        assert!(
            !store
                .swap_handoff("t1", "pending", "done:2", 1000, 10)
                .unwrap()
        );
        assert_eq!(
            store.take_handoff("t1", 20).unwrap().as_deref(),
            Some("done:1")
        );
        assert_eq!(store.take_handoff("t1", 20).unwrap(), None, "taken once");
        assert_eq!(store.handoff("t1", 20).unwrap(), None);
    }

    #[test]
    fn expired_records_are_gone_and_purged() {
        let store = KvStore::open_temporary().unwrap();
        store.put_handoff("t2", "pending", 100).unwrap();
        assert_eq!(store.handoff("t2", 100).unwrap(), None);
        assert!(
            !store
                .swap_handoff("t2", "pending", "done", 500, 100)
                .unwrap()
        );
        assert_eq!(store.take_handoff("t2", 100).unwrap(), None);
        store.put_handoff("t3", "x", 100).unwrap();
        assert_eq!(store.purge_expired_dedupe(200).unwrap(), 1);
        assert_eq!(store.handoff("t3", 50).unwrap(), None, "purged");
    }

    #[test]
    fn concurrent_takes_have_one_winner() {
        for round in 0..20 {
            let store = KvStore::open_temporary().unwrap();
            store.put_handoff("k", "v", 1000).unwrap();
            let wins = Arc::new(AtomicUsize::new(0));
            let barrier = Arc::new(Barrier::new(8));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let (store, wins, barrier) = (store.clone(), wins.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        if store.take_handoff("k", 10).unwrap().is_some() {
                            wins.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(wins.load(Ordering::SeqCst), 1, "round {round}");
        }
    }
}
