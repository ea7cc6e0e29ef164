//! What several daemons on one PostgreSQL database need from the store: leadership of jobs
//! that must run once (advisory locks), and copying a single-server (sled) store into a
//! shared one (`chatrelay migrate-data`), verified by counts and balance sums.

use crate::kv::Db;
use crate::kv::pg::PgLock;
use crate::{KvStore, META, SCHEMA_KEY, StoreError};

/// Leadership of a job: while this value lives, no other daemon on the database holds the
/// same job. On the embedded store a process is alone, so it always leads.
pub struct Leadership {
    lock: Lock,
}

/// What holds a leadership.
enum Lock {
    /// The embedded store: a process is alone.
    Alone,
    /// An advisory lock of the one-table PostgreSQL layout.
    Kv(PgLock),
    /// An advisory lock of the relational store (the same key, so daemons on either exclude
    /// each other).
    Rel(crate::rel::RelLeadership),
}

impl Leadership {
    pub(crate) fn relational(lock: crate::rel::RelLeadership) -> Leadership {
        Leadership {
            lock: Lock::Rel(lock),
        }
    }
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("shared", &!matches!(self.lock, Lock::Alone))
            .finish()
    }
}

impl Leadership {
    /// Whether the leadership still holds: on PostgreSQL, whether the lock's connection is
    /// alive (a database restart or a network cut ends it; the job must stop, and try to lead
    /// again).
    pub async fn still_held(&self) -> bool {
        match &self.lock {
            Lock::Alone => true,
            Lock::Kv(lock) => lock.alive().await,
            Lock::Rel(lock) => lock.still_held().await,
        }
    }
}

/// What [`KvStore::copy_into`] copied and checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Records per tree, in name order (the same on both sides, or the copy fails).
    pub trees: Vec<(&'static str, usize)>,
    /// Users with a balance record.
    pub balances: usize,
    /// The sum of paid credits over every balance (the same on both sides).
    pub paid_sum: u128,
    /// The sum of held credits over every balance (the same on both sides).
    pub held_sum: u128,
}

/// Pairs written per transaction while copying.
const COPY_BATCH: usize = 500;

impl KvStore {
    /// Tries to lead job `name` (e.g. `zsxq:main`): `None` while another daemon leads it.
    /// The leadership ends when the value is dropped or its daemon dies.
    pub fn try_lead(&self, name: &str) -> Result<Option<Leadership>, StoreError> {
        match &self.trees()?.db {
            Db::Sled(_) => Ok(Some(Leadership { lock: Lock::Alone })),
            Db::Pg(pg) => Ok(pg.try_lock(name)?.map(|lock| Leadership {
                lock: Lock::Kv(lock),
            })),
        }
    }

    /// Copies every record of this store into `dest`, which must be empty, then checks that
    /// both hold the same number of records in every tree and the same sums of paid and held
    /// credits. Ids generated later by `dest` stay above every id this store handed out.
    ///
    /// Writers must be stopped (the daemon not running): the copy is not a snapshot.
    pub fn copy_into(&self, dest: &KvStore) -> Result<CopyReport, StoreError> {
        let src = self.trees()?;
        let dst = dest.trees()?;
        for (name, tree) in dst.all() {
            for item in tree.iter() {
                let (key, _) = item?;
                if name == META && key == SCHEMA_KEY {
                    continue;
                }
                return Err(StoreError::InvalidInput(format!(
                    "the destination is not empty (tree {name} has records); copy into a new \
                     database or schema"
                )));
            }
        }
        for ((name, from), (_, to)) in src.all().into_iter().zip(dst.all()) {
            let mut batch = Vec::with_capacity(COPY_BATCH);
            let mut pairs = from.iter();
            loop {
                batch.clear();
                for item in pairs.by_ref().take(COPY_BATCH) {
                    batch.push(item?);
                }
                if batch.is_empty() {
                    break;
                }
                crate::codec::finish(crate::kv::Transactional::transaction(to, |tx| {
                    for (k, v) in &batch {
                        tx.insert(k, v)?;
                    }
                    Ok(())
                }))?;
                tracing::debug!(tree = name, records = batch.len(), "copied a batch");
            }
        }
        let floor = src.db.generate_id()?.saturating_add(1);
        if let Db::Pg(pg) = &dst.db {
            pg.raise_ids(floor)?;
            pg.sync_uids()?;
        }
        let before = self.record_counts()?;
        let after = dest.record_counts()?;
        if before != after {
            return Err(StoreError::InvalidInput(format!(
                "the copy does not match its source: source {before:?}, copy {after:?}"
            )));
        }
        Ok(before)
    }

    /// Records per tree and the balance sums (what `copy_into` compares; the fuller
    /// [`KvStore::census`] is what a migration to the relational schema compares).
    pub fn record_counts(&self) -> Result<CopyReport, StoreError> {
        let t = self.trees()?;
        let mut report = CopyReport::default();
        for (name, tree) in t.all() {
            report.trees.push((name, tree.len()?));
        }
        for item in t.balances.iter() {
            let (key, raw) = item?;
            let record = crate::quota::value::read_balance_with(&raw, || {
                crate::codec::describe_bytes(&key)
            })?;
            report.balances += 1;
            report.paid_sum += u128::from(record.paid);
            report.held_sum += u128::from(record.held);
        }
        Ok(report)
    }
}
