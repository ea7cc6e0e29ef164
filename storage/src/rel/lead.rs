//! Leadership of jobs that must run once among daemons sharing a database (as
//! `KvStore::try_lead` in `shared.rs`): a session advisory lock held by a connection of its
//! own, outside the pool (a pooled connection would carry the lock back with it). The lock's
//! key is the key-value layer's (`schema/name`), so a daemon on either layer excludes the
//! other while a deployment moves from one to the other.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::{RelStore, col, db_err, one};
use crate::StoreError;
use crate::kv::pg::lock_key;

/// While this value lives (and [`RelLeadership::still_held`] says so), no other daemon on the
/// database leads the same job. Dropping it closes its connection, which ends the lock.
pub(crate) struct RelLeadership {
    client: Client,
}

impl std::fmt::Debug for RelLeadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelLeadership").finish_non_exhaustive()
    }
}

impl RelLeadership {
    /// Whether the lock's connection is alive (a database restart or a network cut ends the
    /// leadership: the job must stop, and try to lead again).
    pub(crate) async fn still_held(&self) -> bool {
        !self.client.is_closed()
            && tokio::time::timeout(
                Duration::from_secs(10),
                self.client.simple_query("SELECT 1"),
            )
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl RelStore {
    /// Tries to lead job `name` (e.g. `zsxq:main`): `None` while another daemon leads it.
    pub(crate) async fn try_lead(&self, name: &str) -> Result<Option<RelLeadership>, StoreError> {
        let key = lock_key(&format!("{}/{name}", self.pool.schema()));
        let client = self.pool.connect().await?;
        let rows = client
            .query_typed(
                "SELECT pg_try_advisory_lock($1) AS got",
                &[(&key, Type::INT8)],
            )
            .await
            .map_err(|e| match db_err(e) {
                super::Retry::Again(e) | super::Retry::Fail(e) => e,
            })?;
        let got: bool = col(one(&rows)?, "got")?;
        Ok(got.then_some(RelLeadership { client }))
    }
}
