//! "Seen this message" marks with an expiry, set by compare-and-swap; and finished answers
//! kept for a while, so that a retry reaching another daemon (sharing the database) gets the
//! answer the first one made.

use serde::{Deserialize, Serialize};

use crate::codec::{check_key, decode, encode};
use crate::{ANSWERS, DEDUPE, Store, StoreError};

/// A finished answer to a chat-platform message, as kept for retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedAnswer {
    /// What the user is shown (`None`: nothing, e.g. a duplicate).
    pub text: Option<String>,
    /// When the record may go.
    pub expires_at_ms: i64,
}

impl Store {
    /// Marks `key` as seen until `expires_at_ms`. True the first time, or when the previous
    /// mark had expired by `now_ms`; false while an earlier mark is live. Race-free: of two
    /// concurrent callers, exactly one gets true.
    pub fn dedupe_insert(
        &self,
        key: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let _writing = self.writing();
        check_key("dedupe key", key)?;
        let tree = &self.trees()?.dedupe;
        let new = encode(&expires_at_ms)?;
        let mut current = tree.get(key.as_bytes())?;
        loop {
            if let Some(raw) = &current {
                let expires: i64 = decode(DEDUPE, raw, || format!("{key:?}"))?;
                if expires > now_ms {
                    return Ok(false);
                }
            }
            match tree.compare_and_swap(key.as_bytes(), current.as_deref(), Some(new.as_slice()))? {
                Ok(()) => return Ok(true),
                Err(cas) => current = cas.current,
            }
        }
    }

    /// Keeps the finished answer to message `key` until `expires_at_ms`.
    pub fn put_answer(&self, key: &str, answer: &SharedAnswer) -> Result<(), StoreError> {
        let _writing = self.writing();
        check_key("answer key", key)?;
        self.trees()?
            .answers
            .insert(key.as_bytes(), encode(answer)?)
    }

    /// The finished answer to message `key`, if one was kept and is still live at `now_ms`.
    pub fn shared_answer(
        &self,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<SharedAnswer>, StoreError> {
        check_key("answer key", key)?;
        match self.trees()?.answers.get(key.as_bytes())? {
            Some(raw) => {
                let answer: SharedAnswer = decode(ANSWERS, &raw, || format!("{key:?}"))?;
                Ok((answer.expires_at_ms > now_ms).then_some(answer))
            }
            None => Ok(None),
        }
    }

    /// Removes marks that expired by `now_ms`; returns how many. Unreadable marks are removed
    /// too (a mark is disposable), with a warning.
    pub fn purge_expired_dedupe(&self, now_ms: i64) -> Result<usize, StoreError> {
        let _writing = self.writing();
        let tree = &self.trees()?.dedupe;
        let mut purged = 0;
        for item in tree.iter() {
            let (key, raw) = item?;
            let expired = match decode::<i64>(DEDUPE, &raw, || crate::codec::describe_bytes(&key)) {
                Ok(expires) => expires <= now_ms,
                Err(e) => {
                    tracing::warn!(error = %e, "removing unreadable dedupe mark");
                    true
                }
            };
            // Only if unchanged: a mark renewed meanwhile stays.
            if expired
                && tree
                    .compare_and_swap(&key, Some(&raw), None as Option<&[u8]>)?
                    .is_ok()
            {
                purged += 1;
            }
        }
        let answers = &self.trees()?.answers;
        for item in answers.iter() {
            let (key, raw) = item?;
            let expired =
                decode::<SharedAnswer>(ANSWERS, &raw, || crate::codec::describe_bytes(&key))
                    .map_or(true, |a| a.expires_at_ms <= now_ms);
            if expired && answers.compare_and_swap(&key, Some(&raw), None)?.is_ok() {
                purged += 1;
            }
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    use super::*;

    #[test]
    fn first_insert_wins_until_expiry() {
        let store = Store::open_temporary().unwrap();
        assert!(store.dedupe_insert("m1", 100, 0).unwrap());
        assert!(!store.dedupe_insert("m1", 200, 50).unwrap());
        assert!(!store.dedupe_insert("m1", 200, 99).unwrap());
        // Expired at 100: the next insert takes it over.
        assert!(store.dedupe_insert("m1", 300, 100).unwrap());
        assert!(!store.dedupe_insert("m1", 400, 150).unwrap());
        assert!(store.dedupe_insert("m2", 100, 0).unwrap());
    }

    #[test]
    fn concurrent_inserts_have_one_winner() {
        for round in 0..20 {
            let store = Store::open_temporary().unwrap();
            // An expired mark makes every thread go through the compare-and-swap.
            store.dedupe_insert("k", 5, 0).unwrap();
            let wins = Arc::new(AtomicUsize::new(0));
            let barrier = Arc::new(Barrier::new(8));
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (store, wins, barrier) = (store.clone(), wins.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        if store.dedupe_insert("k", 1000, 10).unwrap() {
                            wins.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(wins.load(Ordering::SeqCst), 1, "round {round}");
        }
    }

    #[test]
    fn purge_removes_only_expired_marks() {
        let store = Store::open_temporary().unwrap();
        store.dedupe_insert("old", 10, 0).unwrap();
        store.dedupe_insert("new", 1000, 0).unwrap();
        store.trees().unwrap().dedupe.insert("bad", b"x").unwrap();
        assert_eq!(store.purge_expired_dedupe(500).unwrap(), 2);
        assert!(store.trees().unwrap().dedupe.get("old").unwrap().is_none());
        assert!(!store.dedupe_insert("new", 2000, 600).unwrap());
        assert_eq!(store.purge_expired_dedupe(500).unwrap(), 0);
    }

    #[test]
    fn answers_are_kept_until_they_expire() {
        let store = Store::open_temporary().unwrap();
        assert_eq!(store.shared_answer("m", 0).unwrap(), None);
        let answer = SharedAnswer {
            text: Some("hi".into()),
            expires_at_ms: 100,
        };
        store.put_answer("m", &answer).unwrap();
        assert_eq!(store.shared_answer("m", 50).unwrap(), Some(answer));
        assert_eq!(store.shared_answer("m", 100).unwrap(), None, "expired");
        assert_eq!(store.purge_expired_dedupe(50).unwrap(), 0);
        assert_eq!(store.purge_expired_dedupe(100).unwrap(), 1);
        assert!(store.trees().unwrap().answers.get("m").unwrap().is_none());
    }

    #[test]
    fn corrupt_mark_is_an_error() {
        let store = Store::open_temporary().unwrap();
        store.trees().unwrap().dedupe.insert("bad", b"{").unwrap();
        assert!(matches!(
            store.dedupe_insert("bad", 10, 0),
            Err(StoreError::Corrupt { tree: "dedupe", .. })
        ));
    }
}
