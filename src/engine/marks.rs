//! Dedupe marks a channel sets itself (in the store, so daemons sharing a database share
//! them): a request seen once, a signed nonce bound to its message.

use super::*;

impl Engine {
    /// Marks `key` as seen until `expires_at_ms`: true the first time (or once an earlier
    /// mark has expired by `now_ms`), false while an earlier mark is live.
    pub async fn mark_once(
        &self,
        key: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.inner
            .store
            .dedupe_insert(key, expires_at_ms, now_ms)
            .await
    }

    /// Binds `key` to `bound` until `expires_at_ms`: true when the key was free (or expired by
    /// `now_ms`) or is bound to the same `bound` already; false while a live mark binds it to
    /// something else (a replay with another payload).
    pub async fn bind_mark(
        &self,
        key: &str,
        bound: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.inner
            .store
            .dedupe_bind(key, bound, expires_at_ms, now_ms)
            .await
    }

    /// Whether several daemons share the database (PostgreSQL), so that tries of one message
    /// may reach different daemons.
    #[must_use]
    pub fn is_shared(&self) -> bool {
        self.inner.store.is_shared()
    }
}
