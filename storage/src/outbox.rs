//! The outbox: answers owed to a user that could not be delivered when they were ready
//! (a platform without push, or outside its push window). They go out with the user's next
//! message; nothing is thrown away.

use crate::codec::{OrAbort, check_key, decode, encode, finish};
use crate::kv::Transactional;
use crate::{KvStore, OUTBOX, StoreError};

/// Most texts kept per user; older ones are merged so the newest stay whole.
pub(crate) const MAX_ITEMS: usize = 20;

impl KvStore {
    /// Queues `text` for the user behind `key`.
    pub fn outbox_push(&self, key: &str, text: &str) -> Result<(), StoreError> {
        let _writing = self.writing();
        check_key("outbox key", key)?;
        let tree = &self.trees()?.outbox;
        finish(tree.transaction(|t| {
            let mut items: Vec<String> = match t.get(key.as_bytes())? {
                Some(raw) => decode(OUTBOX, &raw, || format!("{key:?}")).or_abort()?,
                None => Vec::new(),
            };
            items.push(text.to_owned());
            if items.len() > MAX_ITEMS {
                let overflow = items.len() - MAX_ITEMS + 1;
                let merged = items.drain(..overflow).collect::<Vec<_>>().join("\n\n");
                items.insert(0, merged);
            }
            t.insert(key.as_bytes(), encode(&items).or_abort()?)?;
            Ok(())
        }))
    }

    /// Takes everything queued for `key` (oldest first), leaving nothing.
    pub fn outbox_take(&self, key: &str) -> Result<Vec<String>, StoreError> {
        let _writing = self.writing();
        let tree = &self.trees()?.outbox;
        match tree.remove(key.as_bytes())? {
            Some(raw) => decode(OUTBOX, &raw, || format!("{key:?}")),
            None => Ok(Vec::new()),
        }
    }

    /// How many users have answers waiting (a gauge for operators).
    pub fn outbox_users(&self) -> usize {
        self.trees().and_then(|t| t.outbox.len()).unwrap_or(0)
    }

    /// How many texts are queued for `key`.
    pub fn outbox_len(&self, key: &str) -> Result<usize, StoreError> {
        match self.trees()?.outbox.get(key.as_bytes())? {
            Some(raw) => Ok(decode::<Vec<String>>(OUTBOX, &raw, || format!("{key:?}"))?.len()),
            None => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_take_and_bound() {
        let s = KvStore::open_temporary().unwrap();
        assert!(s.outbox_take("k").unwrap().is_empty());
        s.outbox_push("k", "a").unwrap();
        s.outbox_push("k", "b").unwrap();
        assert_eq!(s.outbox_len("k").unwrap(), 2);
        assert_eq!(s.outbox_take("k").unwrap(), vec!["a", "b"]);
        assert!(s.outbox_take("k").unwrap().is_empty());
        for i in 0..30 {
            s.outbox_push("k", &i.to_string()).unwrap();
        }
        let items = s.outbox_take("k").unwrap();
        assert_eq!(items.len(), MAX_ITEMS);
        assert_eq!(items.last().unwrap(), "29");
        assert!(
            items[0].starts_with("0\n\n1"),
            "old ones merged, none dropped"
        );
        let all: String = items.join("\n\n");
        for i in 0..30 {
            assert!(all.contains(&i.to_string()));
        }
    }
}
