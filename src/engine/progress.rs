//! Progress a poller keeps in the store (zsxq's topic checkpoints and daily counts), so that a
//! restart or another daemon on the same database picks up where it stopped.

use super::*;

impl Engine {
    /// The checkpoint `key`, if set.
    pub async fn checkpoint(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.store.checkpoint(key).await
    }

    /// Sets checkpoint `key` to `new` if it is `expected` now; false if it is not.
    pub async fn checkpoint_cas(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
    ) -> Result<bool, StoreError> {
        self.inner.store.checkpoint_cas(key, expected, new).await
    }

    /// The counter `key` (0 when unset).
    pub async fn counter(&self, key: &str) -> Result<u64, StoreError> {
        self.inner.store.counter(key).await
    }

    /// Adds one to the counter `key` and returns the new count.
    pub async fn bump_counter(&self, key: &str) -> Result<u64, StoreError> {
        self.inner.store.bump_counter(key).await
    }

    /// The user bound to `key`, if it has been seen.
    pub async fn known_user(
        &self,
        key: &chatrelay_core::UserKey,
    ) -> Result<Option<Uid>, StoreError> {
        self.inner.store.identity(key).await
    }

    /// Writes what the store holds to disk (sled; PostgreSQL commits are durable already).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.inner.store.flush().await
    }
}
