//! Conversation memory: the newest turns of each conversation, under a key the engine picks.

use serde::{Deserialize, Serialize};

use crate::codec::{OrAbort, TxResult, check_key, decode, encode, finish};
use crate::kv::{Transactional, TxTree};
use crate::{CONVERSATIONS, KvStore, StoreError};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    /// `user`, `assistant` or `system`, as the LLM API names them.
    pub role: String,
    /// The text.
    pub content: String,
    /// When it was said, ms since the Unix epoch.
    pub at_ms: i64,
}

/// The stored value of a conversation.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct ConversationRecord {
    turns: Vec<Turn>,
}

impl KvStore {
    /// The conversation's stored turns, oldest first (empty if there are none).
    pub fn conversation(&self, key: &str) -> Result<Vec<Turn>, StoreError> {
        match self.trees()?.conversations.get(key.as_bytes())? {
            Some(raw) => {
                Ok(decode::<ConversationRecord>(CONVERSATIONS, &raw, || format!("{key:?}"))?.turns)
            }
            None => Ok(Vec::new()),
        }
    }

    /// Appends `turns` and keeps only the newest `max_turns` (0 clears the conversation).
    /// Atomic: concurrent appends to one conversation all land.
    pub fn append_turns(
        &self,
        key: &str,
        turns: &[Turn],
        max_turns: usize,
    ) -> Result<(), StoreError> {
        let _writing = self.writing();
        check_key("conversation key", key)?;
        finish(
            self.trees()?
                .conversations
                .transaction(|tree| append_in(tree, key, turns, max_turns)),
        )
    }

    /// Forgets the conversation.
    pub fn clear_conversation(&self, key: &str) -> Result<(), StoreError> {
        let _writing = self.writing();
        self.trees()?.conversations.remove(key.as_bytes())?;
        Ok(())
    }
}

/// [`KvStore::append_turns`] inside a transaction on the conversations tree.
pub(crate) fn append_in(
    tree: &TxTree<'_>,
    key: &str,
    turns: &[Turn],
    max_turns: usize,
) -> TxResult<()> {
    let mut record = match tree.get(key.as_bytes())? {
        Some(raw) => {
            decode::<ConversationRecord>(CONVERSATIONS, &raw, || format!("{key:?}")).or_abort()?
        }
        None => ConversationRecord::default(),
    };
    record.turns.extend_from_slice(turns);
    let excess = record.turns.len().saturating_sub(max_turns);
    record.turns.drain(..excess);
    if record.turns.is_empty() {
        tree.remove(key.as_bytes())?;
    } else {
        tree.insert(key.as_bytes(), encode(&record).or_abort()?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn turn(n: i64) -> Turn {
        Turn {
            role: if n % 2 == 0 { "user" } else { "assistant" }.to_owned(),
            content: format!("message {n}"),
            at_ms: n,
        }
    }

    #[test]
    fn keeps_the_newest_turns() {
        let store = KvStore::open_temporary().unwrap();
        assert!(store.conversation("c").unwrap().is_empty());
        store.append_turns("c", &[turn(1), turn(2)], 3).unwrap();
        store.append_turns("c", &[turn(3), turn(4)], 3).unwrap();
        assert_eq!(
            store.conversation("c").unwrap(),
            vec![turn(2), turn(3), turn(4)]
        );
        store
            .append_turns("c", &[turn(5), turn(6), turn(7), turn(8)], 3)
            .unwrap();
        assert_eq!(
            store.conversation("c").unwrap(),
            vec![turn(6), turn(7), turn(8)]
        );
        assert!(store.conversation("other").unwrap().is_empty());
    }

    #[test]
    fn clear_and_zero_bound_forget() {
        let store = KvStore::open_temporary().unwrap();
        store.append_turns("c", &[turn(1)], 10).unwrap();
        store.clear_conversation("c").unwrap();
        assert!(store.conversation("c").unwrap().is_empty());
        store.append_turns("c", &[turn(1)], 0).unwrap();
        assert!(
            store
                .trees()
                .unwrap()
                .conversations
                .get("c")
                .unwrap()
                .is_none()
        );
        assert!(store.append_turns("", &[turn(1)], 1).is_err());
    }

    #[test]
    fn concurrent_appends_all_land() {
        let store = Arc::new(KvStore::open_temporary().unwrap());
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for j in 0..10 {
                        store.append_turns("c", &[turn(i * 100 + j)], 1000).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(store.conversation("c").unwrap().len(), 80);
    }

    #[test]
    fn corrupt_conversation_is_an_error() {
        let store = KvStore::open_temporary().unwrap();
        store
            .trees()
            .unwrap()
            .conversations
            .insert("c", b"[oops")
            .unwrap();
        assert!(matches!(
            store.conversation("c"),
            Err(StoreError::Corrupt {
                tree: "conversations",
                ..
            })
        ));
        assert!(matches!(
            store.append_turns("c", &[turn(1)], 5),
            Err(StoreError::Corrupt {
                tree: "conversations",
                ..
            })
        ));
    }
}
