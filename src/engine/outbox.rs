//! The outbox: answers a platform could not deliver yet (too long for a passive reply, a
//! push that failed), kept per user until the user's next message collects them.

use super::*;

impl Engine {
    /// Keeps `text` for the user behind `key` (a [`chatrelay_core::UserKey`] or a channel's
    /// own outbox name), after what is already kept.
    pub async fn outbox_push(&self, key: &str, text: &str) -> Result<(), StoreError> {
        self.inner.store.outbox_push(key, text).await
    }

    /// Takes everything kept for `key`, oldest first (empty when nothing is owed).
    pub async fn outbox_take(&self, key: &str) -> Result<Vec<String>, StoreError> {
        self.inner.store.outbox_take(key).await
    }
}
