//! Checkpoints: small durable facts connectors keep between runs ("zsxq topic 123 of group 9
//! is answered", "42 answers today"), set by compare-and-swap so two writers cannot both win.

use crate::codec::check_key;
use crate::{CHECKPOINTS, Store, StoreError};

impl Store {
    /// The value stored under `key`, if any.
    pub fn checkpoint(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self.trees().checkpoints.get(key.as_bytes())? {
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
        let result = self.trees().checkpoints.compare_and_swap(
            key.as_bytes(),
            expected.map(str::as_bytes),
            Some(new.as_bytes()),
        )?;
        Ok(result.is_ok())
    }

    /// Adds one to the counter under `key` and returns the new value.
    pub fn bump_counter(&self, key: &str) -> Result<u64, StoreError> {
        let _writing = self.writing();
        check_key("counter key", key)?;
        let tree = &self.trees().checkpoints;
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
            match tree.compare_and_swap(key.as_bytes(), current.as_ref(), Some(next.as_bytes()))? {
                Ok(()) => return Ok(n.saturating_add(1)),
                Err(cas) => current = cas.current,
            }
        }
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
        let s = Store::open_temporary().unwrap();
        assert_eq!(s.checkpoint("k").unwrap(), None);
        assert!(s.checkpoint_cas("k", None, "posting").unwrap());
        assert!(
            !s.checkpoint_cas("k", None, "posting").unwrap(),
            "only one writer wins"
        );
        assert!(s.checkpoint_cas("k", Some("posting"), "answered").unwrap());
        assert_eq!(s.checkpoint("k").unwrap().as_deref(), Some("answered"));
        assert_eq!(s.counter("c").unwrap(), 0);
        assert_eq!(s.bump_counter("c").unwrap(), 1);
        assert_eq!(s.bump_counter("c").unwrap(), 2);
        assert_eq!(s.counter("c").unwrap(), 2);
        assert!(
            s.bump_counter("k").is_err(),
            "a non-counter is corrupt, not reset"
        );
    }
}
