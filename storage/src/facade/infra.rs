//! Opening a store, and what differs between the engines: durability (`flush`), sharing,
//! leadership, write probes and recovery, backups, and the few operations whose signatures
//! the engines spell differently.

use std::path::Path;

use super::{Engine, Store};
use crate::{
    BackupSummary, KvStore, Leadership, LedgerEntry, PgOptions, Remember, ReservationId,
    StoreError, Uid, UsageNote,
};

impl Store {
    /// Opens (or creates) the embedded database in directory `path` ([`KvStore::open`]).
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> Result<Store, StoreError> {
        KvStore::open(path, cache_capacity_bytes).map(Store::from)
    }

    /// Opens the store on a PostgreSQL database shared with other daemons: the relational
    /// tables, pending migrations applied first. A schema holding a layout this build does not
    /// run on (the one-table layout of an older build, an interrupted migration, a newer
    /// schema) is refused with what to do ([`StoreError::NeedsMigration`]).
    pub async fn open_postgres(opts: &PgOptions) -> Result<Store, StoreError> {
        Ok(Store {
            engine: Engine::Rel(crate::rel::RelStore::open_checked(opts).await?),
        })
    }

    /// A fresh embedded database deleted with its last clone, for tests (always sled: a
    /// test of the shared engine opens a schema with [`Store::open_postgres`]).
    pub fn open_temporary() -> Result<Store, StoreError> {
        let db = sled::Config::new().temporary(true).open()?;
        KvStore::from_db(crate::kv::Db::Sled(db), None, 0).map(Store::from)
    }

    /// The key-value engine, when this store is one: for what only it has (its write lane,
    /// backups to a file, reopening after a full disk) and for tools.
    #[must_use]
    pub fn kv(&self) -> Option<&KvStore> {
        match &self.engine {
            Engine::Kv(kv) => Some(kv),
            Engine::Rel(_) => None,
        }
    }

    /// Whether the store is shared with other daemons (PostgreSQL): the cue for work that
    /// must be coordinated through it (joined answers, leader-only jobs).
    #[must_use]
    pub fn is_shared(&self) -> bool {
        match &self.engine {
            Engine::Kv(kv) => kv.is_shared(),
            Engine::Rel(_) => true,
        }
    }

    /// Waits until every write made so far is durable: sled's group flush; nothing on
    /// PostgreSQL, whose commits are durable when they return.
    pub async fn flush(&self) -> Result<(), StoreError> {
        match &self.engine {
            Engine::Kv(kv) => kv.flush().await,
            Engine::Rel(_) => Ok(()),
        }
    }

    /// Whether the database takes writes ([`KvStore::probe_write`]); on PostgreSQL, whether
    /// a statement gets through.
    pub async fn probe_write(&self) -> bool {
        match &self.engine {
            Engine::Kv(kv) => kv.probe_write(),
            Engine::Rel(r) => r.counter("probe").await.is_ok(),
        }
    }

    /// What the last [`Store::probe_write`] found, without waiting (health checks).
    #[must_use]
    pub fn last_probe_ok(&self) -> bool {
        match &self.engine {
            Engine::Kv(kv) => kv.last_probe_ok(),
            Engine::Rel(_) => true,
        }
    }

    /// Reopens the database after a storage failure ([`KvStore::recover`]); the relational
    /// store's pool reconnects by itself.
    pub async fn recover(&self) -> Result<(), StoreError> {
        match &self.engine {
            Engine::Kv(kv) => kv.recover(),
            Engine::Rel(_) => Ok(()),
        }
    }

    /// Writes a backup of the embedded store to `out` ([`KvStore::export_backup`]). A
    /// PostgreSQL database is backed up with its own tools (`pg_dump`).
    pub fn export_backup(
        &self,
        out: &mut dyn std::io::Write,
        now_ms: i64,
    ) -> Result<BackupSummary, StoreError> {
        match &self.engine {
            Engine::Kv(kv) => kv.export_backup(out, now_ms),
            Engine::Rel(_) => Err(StoreError::Unsupported(
                "a PostgreSQL store is backed up with pg_dump (see README, Backups)".into(),
            )),
        }
    }

    /// Tries to lead job `name`: `None` while another daemon leads it ([`KvStore::try_lead`]).
    pub async fn try_lead(&self, name: &str) -> Result<Option<Leadership>, StoreError> {
        match &self.engine {
            Engine::Kv(kv) => kv.try_lead(name),
            Engine::Rel(r) => Ok(r.try_lead(name).await?.map(Leadership::relational)),
        }
    }

    /// How many users have answers waiting (a gauge for operators).
    pub async fn outbox_users(&self) -> Result<usize, StoreError> {
        match &self.engine {
            Engine::Kv(kv) => super::scans::blocking(kv, KvStore::outbox_users).await,
            Engine::Rel(r) => r.outbox_users().await,
        }
    }

    /// How many users exist (counts them, off the async workers on sled: not for hot paths).
    pub async fn user_count(&self) -> Result<usize, StoreError> {
        match &self.engine {
            Engine::Kv(kv) => super::scans::blocking(kv, KvStore::user_count).await,
            Engine::Rel(r) => r.user_count().await,
        }
    }

    /// Removes expired "seen this message" marks and kept answers, a bounded amount per call
    /// ([`KvStore::purge_expired_dedupe`]).
    pub async fn purge_expired_dedupe(&self, now_ms: i64) -> Result<usize, StoreError> {
        match &self.engine {
            Engine::Kv(kv) => {
                super::scans::blocking(kv, move |kv| kv.purge_expired_dedupe(now_ms)).await?
            }
            Engine::Rel(r) => r.purge_expired_marks(now_ms).await,
        }
    }

    /// Holds `amount` credits of `uid` under `reference` ([`KvStore::reserve`]).
    pub async fn reserve(
        &self,
        uid: Uid,
        amount: u64,
        reference: &str,
        today: i64,
        free_daily: u64,
        expires_at_ms: i64,
    ) -> Result<ReservationId, StoreError> {
        match &self.engine {
            Engine::Kv(kv) => kv.reserve(uid, amount, reference, today, free_daily, expires_at_ms),
            Engine::Rel(r) => {
                r.reserve(uid, amount, reference, today, free_daily, expires_at_ms)
                    .await
            }
        }
    }

    /// Settles a reservation with its conversation turns and usage record
    /// ([`KvStore::settle_metered`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn settle_metered(
        &self,
        id: ReservationId,
        actual: u64,
        reason: &str,
        today: i64,
        free_daily: u64,
        now_ms: i64,
        remember: Option<Remember<'_>>,
        usage: Option<UsageNote<'_>>,
    ) -> Result<Option<LedgerEntry>, StoreError> {
        match &self.engine {
            Engine::Kv(kv) => kv.settle_metered(
                id, actual, reason, today, free_daily, now_ms, remember, usage,
            ),
            Engine::Rel(r) => {
                r.settle_metered(
                    id, actual, reason, today, free_daily, now_ms, remember, usage,
                )
                .await
            }
        }
    }

    /// Refunds an answer's charge and marks its usage record ([`KvStore::refund_answer`]).
    pub async fn refund_answer(
        &self,
        uid: Uid,
        credits: u64,
        reason: &str,
        refund_reference: &str,
        answer_reference: &str,
        now_ms: i64,
    ) -> Result<LedgerEntry, StoreError> {
        match &self.engine {
            Engine::Kv(kv) => kv.refund_answer(
                uid,
                credits,
                reason,
                refund_reference,
                answer_reference,
                now_ms,
            ),
            Engine::Rel(r) => {
                r.refund_answer(
                    uid,
                    credits,
                    reason,
                    refund_reference,
                    answer_reference,
                    now_ms,
                )
                .await
            }
        }
    }
}
