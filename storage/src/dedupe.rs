//! "Seen this message" marks with an expiry, set by compare-and-swap; bound marks (a mark
//! that also names what it was set for, e.g. a signed callback's nonce and its body's hash);
//! and finished answers kept for a while, so that a retry reaching another daemon (sharing the
//! database) gets the answer the first one made.

use serde::{Deserialize, Serialize};

use crate::codec::{check_key, decode, encode};
use crate::{ANSWERS, DEDUPE, KvStore, StoreError};

/// A finished answer to a chat-platform message, as kept for retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedAnswer {
    /// What the user is shown (`None`: nothing, e.g. a duplicate).
    pub text: Option<String>,
    /// When the record may go.
    pub expires_at_ms: i64,
}

/// A dedupe mark as stored: a bare expiry (ms), or an expiry with the value the mark is bound
/// to ([`KvStore::dedupe_bind`]). Both forms share the tree, so that one purge expires both.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum Mark {
    Plain(i64),
    Bound { expires_at_ms: i64, bound: String },
}

impl Mark {
    pub(crate) fn expires_at_ms(&self) -> i64 {
        match self {
            Mark::Plain(e)
            | Mark::Bound {
                expires_at_ms: e, ..
            } => *e,
        }
    }
}

impl KvStore {
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
                let mark: Mark = decode(DEDUPE, raw, || format!("{key:?}"))?;
                if mark.expires_at_ms() > now_ms {
                    return Ok(false);
                }
            }
            match tree.compare_and_swap(key.as_bytes(), current.as_deref(), Some(new.as_slice()))? {
                Ok(()) => return Ok(true),
                Err(cas) => current = cas.current,
            }
        }
    }

    /// Binds `key` to `bound` until `expires_at_ms`. True when the key was free (or its mark
    /// had expired by `now_ms`) and is now bound, or is already bound to the same `bound`
    /// (the same thing seen again); false while a live mark binds it to something else.
    /// Race-free: of two concurrent callers with different values, exactly one gets true.
    pub fn dedupe_bind(
        &self,
        key: &str,
        bound: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let _writing = self.writing();
        check_key("dedupe key", key)?;
        check_key("dedupe value", bound)?;
        let tree = &self.trees()?.dedupe;
        let new = encode(&Mark::Bound {
            expires_at_ms,
            bound: bound.to_owned(),
        })?;
        let mut current = tree.get(key.as_bytes())?;
        loop {
            if let Some(raw) = &current {
                let mark: Mark = decode(DEDUPE, raw, || format!("{key:?}"))?;
                if mark.expires_at_ms() > now_ms {
                    return Ok(matches!(mark, Mark::Bound { bound: b, .. } if b == bound));
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

    /// Removes marks and kept answers that expired by `now_ms`; returns how many. Unreadable
    /// ones are removed too (they are disposable), with a warning. One call looks at no more
    /// than [`PURGE_BUDGET`] records of each tree, going on where the last call stopped and
    /// starting over at the end: a pass over a big tree is spread over several calls (the
    /// daemon makes one a minute) instead of pulling every page through the cache at once.
    /// An expired mark not yet purged is still treated as absent.
    pub fn purge_expired_dedupe(&self, now_ms: i64) -> Result<usize, StoreError> {
        self.purge_expired_dedupe_within(now_ms, PURGE_BUDGET)
    }

    fn purge_expired_dedupe_within(&self, now_ms: i64, budget: usize) -> Result<usize, StoreError> {
        let _writing = self.writing();
        let trees = self.trees()?;
        let mut cursors = self
            .inner
            .purge_cursors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let marks = purge_pass(
            &trees.dedupe,
            &mut cursors.dedupe,
            budget,
            |key, raw| match decode::<Mark>(DEDUPE, raw, || crate::codec::describe_bytes(key)) {
                Ok(mark) => mark.expires_at_ms() <= now_ms,
                Err(e) => {
                    tracing::warn!(error = %e, "removing unreadable dedupe mark");
                    true
                }
            },
        )?;
        let answers = purge_pass(&trees.answers, &mut cursors.answers, budget, |key, raw| {
            decode::<SharedAnswer>(ANSWERS, raw, || crate::codec::describe_bytes(key))
                .map_or(true, |a| a.expires_at_ms <= now_ms)
        })?;
        Ok(marks + answers)
    }
}

/// Records of a tree one purge call looks at, at most.
pub(crate) const PURGE_BUDGET: usize = 5_000;

/// Where the next purge of each tree goes on (the last key it looked at; empty: the start).
#[derive(Debug, Default)]
pub(crate) struct PurgeCursors {
    dedupe: Vec<u8>,
    answers: Vec<u8>,
}

/// Looks at up to `budget` records of `tree` after `cursor` and removes those `expired` says
/// are, each only if unchanged (a mark renewed meanwhile stays); moves `cursor` on, back to
/// the start once the end is reached. Returns how many were removed.
fn purge_pass(
    tree: &crate::kv::Tree,
    cursor: &mut Vec<u8>,
    budget: usize,
    expired: impl Fn(&[u8], &[u8]) -> bool,
) -> Result<usize, StoreError> {
    // The smallest key after the cursor: the cursor with a zero byte appended.
    let mut start = cursor.clone();
    if !start.is_empty() {
        start.push(0);
    }
    let mut purged = 0;
    let mut seen = 0;
    let mut last = None;
    for item in tree.range_from(start) {
        let (key, raw) = item?;
        if expired(&key, &raw) && tree.compare_and_swap(&key, Some(&raw), None)?.is_ok() {
            purged += 1;
        }
        seen += 1;
        if seen == budget {
            last = Some(key);
            break;
        }
    }
    *cursor = last.unwrap_or_default();
    Ok(purged)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    use super::*;

    #[test]
    fn first_insert_wins_until_expiry() {
        let store = KvStore::open_temporary().unwrap();
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
            let store = KvStore::open_temporary().unwrap();
            // An expired mark makes every thread go through the compare-and-swap.
            store.dedupe_insert("k", 5, 0).unwrap();
            let wins = winners(&store, |s, _| s.dedupe_insert("k", 1000, 10).unwrap());
            assert_eq!(wins, 1, "round {round}");
        }
    }

    /// How many of 8 threads, started together, `attempt` says won.
    fn winners(store: &KvStore, attempt: fn(&KvStore, usize) -> bool) -> usize {
        let wins = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (store, wins, barrier) = (store.clone(), wins.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    if attempt(&store, i) {
                        wins.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        wins.load(Ordering::SeqCst)
    }

    #[test]
    fn purge_removes_only_expired_marks() {
        let store = KvStore::open_temporary().unwrap();
        store.dedupe_insert("old", 10, 0).unwrap();
        store.dedupe_insert("new", 1000, 0).unwrap();
        store.trees().unwrap().dedupe.insert("bad", b"x").unwrap();
        assert_eq!(store.purge_expired_dedupe(500).unwrap(), 2);
        assert!(store.trees().unwrap().dedupe.get("old").unwrap().is_none());
        assert!(!store.dedupe_insert("new", 2000, 600).unwrap());
        assert_eq!(store.purge_expired_dedupe(500).unwrap(), 0);
    }

    #[test]
    fn a_purge_looks_at_a_bounded_share_and_goes_on_where_it_stopped() {
        let store = KvStore::open_temporary().unwrap();
        for i in 0..5 {
            store.dedupe_insert(&format!("m{i}"), 10, 0).unwrap();
        }
        store.dedupe_insert("m2-live", 1000, 0).unwrap();
        let left = |s: &KvStore| s.trees().unwrap().dedupe.iter().count();
        // Two records a call: m0 m1 | m2 m2-live | m3 m4 | (the end: start over).
        assert_eq!(store.purge_expired_dedupe_within(500, 2).unwrap(), 2);
        assert_eq!(left(&store), 4);
        assert_eq!(store.purge_expired_dedupe_within(500, 2).unwrap(), 1);
        assert_eq!(store.purge_expired_dedupe_within(500, 2).unwrap(), 2);
        assert_eq!(left(&store), 1, "only the live mark is left");
        // The pass is over: the next starts at the beginning again and finds the live mark
        // expired later.
        assert_eq!(store.purge_expired_dedupe_within(500, 2).unwrap(), 0);
        assert_eq!(store.purge_expired_dedupe_within(2000, 2).unwrap(), 1);
        assert_eq!(left(&store), 0);
    }

    #[test]
    fn bound_marks_accept_the_same_value_and_refuse_another() {
        let store = KvStore::open_temporary().unwrap();
        assert!(store.dedupe_bind("n1", "body-a", 100, 0).unwrap());
        assert!(
            store.dedupe_bind("n1", "body-a", 100, 10).unwrap(),
            "same again"
        );
        assert!(
            !store.dedupe_bind("n1", "body-b", 100, 20).unwrap(),
            "another value"
        );
        // A plain mark of the same key is live too.
        assert!(!store.dedupe_insert("n1", 100, 30).unwrap());
        // Expired at 100: free again, for any value; purged like plain marks.
        assert!(store.dedupe_bind("n1", "body-b", 200, 100).unwrap());
        assert!(!store.dedupe_bind("n1", "body-a", 200, 150).unwrap());
        assert_eq!(store.purge_expired_dedupe(150).unwrap(), 0);
        assert_eq!(store.purge_expired_dedupe(200).unwrap(), 1);
        assert!(store.trees().unwrap().dedupe.get("n1").unwrap().is_none());
    }

    #[test]
    fn concurrent_binds_of_different_values_have_one_winner() {
        for round in 0..20 {
            let store = KvStore::open_temporary().unwrap();
            let wins = winners(&store, |s, i| {
                s.dedupe_bind("k", &format!("v{i}"), 1000, 10).unwrap()
            });
            assert_eq!(wins, 1, "round {round}");
        }
    }

    #[test]
    fn answers_are_kept_until_they_expire() {
        let store = KvStore::open_temporary().unwrap();
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
        let store = KvStore::open_temporary().unwrap();
        store.trees().unwrap().dedupe.insert("bad", b"{").unwrap();
        assert!(matches!(
            store.dedupe_insert("bad", 10, 0),
            Err(StoreError::Corrupt { tree: "dedupe", .. })
        ));
    }
}
