//! Checkpoints: small durable facts connectors keep between runs ("zsxq topic 123 of group 9
//! is answered", "42 answers today"), set by compare-and-swap so two writers cannot both win.

use crate::codec::check_key;
use crate::kv::Transactional;
use crate::{CHECKPOINTS, KvStore, StoreError};

/// Marker keys written per transaction by [`KvStore::add_counters`].
const MARKERS_PER_BATCH: usize = 256;

impl KvStore {
    /// The value stored under `key`, if any.
    pub fn checkpoint(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self.trees()?.checkpoints.get(key.as_bytes())? {
            Some(raw) => String::from_utf8(raw.to_vec())
                .map(Some)
                .map_err(|e| StoreError::corrupt(CHECKPOINTS, key, e)),
            None => Ok(None),
        }
    }

    /// Sets `key` to `new` if it currently holds `expected` (`None`: absent). True when set.
    pub fn checkpoint_cas(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
    ) -> Result<bool, StoreError> {
        let _writing = self.writing();
        check_key("checkpoint key", key)?;
        let result = self.trees()?.checkpoints.compare_and_swap(
            key.as_bytes(),
            expected.map(str::as_bytes),
            Some(new.as_bytes()),
        )?;
        Ok(result.is_ok())
    }

    /// Sets `key` to `value` (or removes it with `None`), whatever it held.
    pub fn set_checkpoint(&self, key: &str, value: Option<&str>) -> Result<(), StoreError> {
        let _writing = self.writing();
        check_key("checkpoint key", key)?;
        let tree = &self.trees()?.checkpoints;
        match value {
            Some(v) => tree.insert(key.as_bytes(), v.as_bytes())?,
            None => tree.remove(key.as_bytes()).map(|_| ())?,
        };
        Ok(())
    }

    /// Adds one to the counter under `key` and returns the new value.
    pub fn bump_counter(&self, key: &str) -> Result<u64, StoreError> {
        let _writing = self.writing();
        check_key("counter key", key)?;
        let tree = &self.trees()?.checkpoints;
        let mut current = tree.get(key.as_bytes())?;
        loop {
            let n = match &current {
                Some(raw) => std::str::from_utf8(raw)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| StoreError::corrupt(CHECKPOINTS, key, "not a counter"))?,
                None => 0,
            };
            let next = n.saturating_add(1).to_string();
            match tree.compare_and_swap(
                key.as_bytes(),
                current.as_deref(),
                Some(next.as_bytes()),
            )? {
                Ok(()) => return Ok(n.saturating_add(1)),
                Err(cas) => current = cas.current,
            }
        }
    }

    /// Adds each delta to its counter (one transaction) and sets each marker key (to `1`, in
    /// batches of `MARKERS_PER_BATCH`): how statistics gathered in memory are written once
    /// a minute. Not a ledger: statistics may lose the last minute in a crash, credits never
    /// do.
    pub fn add_counters(
        &self,
        deltas: &[(String, u64)],
        markers: &[String],
    ) -> Result<(), StoreError> {
        let _writing = self.writing();
        for (key, _) in deltas {
            check_key("counter key", key)?;
        }
        for key in markers {
            check_key("marker key", key)?;
        }
        let tree = &self.trees()?.checkpoints;
        let result = tree.transaction(|tx| {
            for (key, delta) in deltas {
                let n = match tx.get(key.as_bytes())? {
                    Some(raw) => std::str::from_utf8(&raw)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0),
                    None => 0,
                };
                tx.insert(
                    key.as_bytes(),
                    n.saturating_add(*delta).to_string().as_bytes(),
                )?;
            }
            Ok(())
        });
        crate::codec::finish(result)?;
        // Markers are idempotent: they go in small batches of their own. One transaction for
        // a minute's worth of active users (tens of thousands of keys at a few hundred new
        // followers a second) made sled hold hundreds of MiB at once, which the allocator
        // kept afterwards.
        for chunk in markers.chunks(MARKERS_PER_BATCH) {
            let result = tree.transaction(|tx| {
                for key in chunk {
                    tx.insert(key.as_bytes(), b"1".as_slice())?;
                }
                Ok(())
            });
            crate::codec::finish(result)?;
        }
        Ok(())
    }

    /// Every checkpoint whose key starts with `prefix`, in key order.
    pub fn checkpoints_with_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        for item in self.trees()?.checkpoints.scan_prefix(prefix.as_bytes()) {
            let (key, value) = item?;
            let key = String::from_utf8(key.to_vec())
                .map_err(|e| StoreError::corrupt(CHECKPOINTS, prefix, e))?;
            let value = String::from_utf8(value.to_vec())
                .map_err(|e| StoreError::corrupt(CHECKPOINTS, key.clone(), e))?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// Removes the checkpoints starting with `prefix` whose key sorts before `before`
    /// (time-ordered records older than a cut-off); returns how many.
    pub fn purge_checkpoints_before(
        &self,
        prefix: &str,
        before: &str,
    ) -> Result<usize, StoreError> {
        let _writing = self.writing();
        let tree = &self.trees()?.checkpoints;
        let mut n = 0;
        for item in tree.range(prefix.as_bytes(), before.as_bytes()) {
            let (key, _) = item?;
            if !key.starts_with(prefix.as_bytes()) {
                break;
            }
            tree.remove(&key)?;
            n += 1;
        }
        Ok(n)
    }

    /// How many checkpoints start with `prefix`.
    pub fn count_prefix(&self, prefix: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.trees()?.checkpoints.scan_prefix(prefix.as_bytes()) {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// The counter under `key` (0 when absent).
    pub fn counter(&self, key: &str) -> Result<u64, StoreError> {
        Ok(match self.checkpoint(key)? {
            Some(v) => v
                .parse()
                .map_err(|_| StoreError::corrupt(CHECKPOINTS, key, "not a counter"))?,
            None => 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_and_counters() {
        let s = KvStore::open_temporary().unwrap();
        assert_eq!(s.checkpoint("k").unwrap(), None);
        assert!(s.checkpoint_cas("k", None, "posting").unwrap());
        assert!(
            !s.checkpoint_cas("k", None, "posting").unwrap(),
            "only one writer wins"
        );
        assert!(s.checkpoint_cas("k", Some("posting"), "answered").unwrap());
        assert_eq!(s.checkpoint("k").unwrap().as_deref(), Some("answered"));
        assert_eq!(s.counter("c").unwrap(), 0);
        s.set_checkpoint("pref:1:model", Some("m")).unwrap();
        assert_eq!(s.checkpoint("pref:1:model").unwrap().as_deref(), Some("m"));
        s.set_checkpoint("pref:1:model", None).unwrap();
        assert_eq!(s.checkpoint("pref:1:model").unwrap(), None);
        s.add_counters(
            &[("stats:1:a".into(), 2), ("stats:1:b".into(), 5)],
            &["stats:1:active:7".into()],
        )
        .unwrap();
        s.add_counters(&[("stats:1:a".into(), 3)], &["stats:1:active:7".into()])
            .unwrap();
        assert_eq!(s.counter("stats:1:a").unwrap(), 5);
        assert_eq!(s.count_prefix("stats:1:active:").unwrap(), 1);
        assert_eq!(s.checkpoints_with_prefix("stats:1:").unwrap().len(), 3);
        for k in ["hit:0001:a", "hit:0002:b", "hit:0003:c", "hiz"] {
            s.set_checkpoint(k, Some("{}")).unwrap();
        }
        assert_eq!(s.purge_checkpoints_before("hit:", "hit:0003").unwrap(), 2);
        assert_eq!(s.count_prefix("hit:").unwrap(), 1);
        assert!(s.checkpoint("hiz").unwrap().is_some());
        assert_eq!(s.bump_counter("c").unwrap(), 1);
        assert_eq!(s.bump_counter("c").unwrap(), 2);
        assert_eq!(s.counter("c").unwrap(), 2);
        assert!(
            s.bump_counter("k").is_err(),
            "a non-counter is corrupt, not reset"
        );
    }

    #[test]
    fn markers_beyond_one_batch_are_all_written() {
        let s = KvStore::open_temporary().unwrap();
        let n = MARKERS_PER_BATCH * 3 + 7;
        let markers: Vec<String> = (0..n).map(|i| format!("stats:2:active:{i}")).collect();
        s.add_counters(&[("stats:2:messages".into(), 4)], &markers)
            .unwrap();
        assert_eq!(s.count_prefix("stats:2:active:").unwrap(), n);
        assert_eq!(s.counter("stats:2:messages").unwrap(), 4);
    }
}
