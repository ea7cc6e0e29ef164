//! Opening a store: a sled directory (its lock, retried after this process closed it), a
//! PostgreSQL database (migrations first), a temporary one for tests; the schema version
//! check every opening makes; and the reopening after a storage failure.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::codec::{self, decode};
use crate::kv::{self, Db, Tree};
use crate::{
    Inner, KvStore, META, MigrationReport, Open, PgOptions, SCHEMA_KEY, SCHEMA_VERSION, StoreError,
    Trees, backup,
};

impl KvStore {
    /// Opens (or creates) the database in directory `path`, with a page cache of
    /// `cache_capacity_bytes`.
    ///
    /// A new database gets [`SCHEMA_VERSION`]. A database written by a newer build is refused
    /// with [`StoreError::SchemaTooNew`]; one held by another process with
    /// [`StoreError::Locked`].
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> Result<KvStore, StoreError> {
        let db = open_sled(path, cache_capacity_bytes)?;
        Self::from_db(Db::Sled(db), Some(path.to_path_buf()), cache_capacity_bytes)
    }

    /// [`KvStore::open`] for a database this process has just closed (after a restore, say):
    /// sled lets go of its file lock a moment after the last handle, so [`StoreError::Locked`]
    /// is tried again for up to 10 s instead of returned at once.
    pub fn open_closed(path: &Path, cache_capacity_bytes: u64) -> Result<KvStore, StoreError> {
        retry_locked(|| KvStore::open(path, cache_capacity_bytes))
    }

    /// Opens a store on a PostgreSQL database shared with other daemons, applying pending
    /// migrations first (under a lock: daemons starting together apply them once).
    pub fn open_postgres(opts: &PgOptions) -> Result<KvStore, StoreError> {
        let pg = kv::pg::Pg::open(opts)?;
        pg.migrate()?;
        Self::from_db(Db::Pg(pg), None, 0)
    }

    /// Applies pending migrations to a PostgreSQL database and says what it did
    /// (`chatrelay migrate`).
    pub fn migrate_postgres(opts: &PgOptions) -> Result<MigrationReport, StoreError> {
        kv::pg::Pg::open(opts)?.migrate()
    }

    /// Opens a fresh database that is deleted when the last clone is dropped (for tests).
    ///
    /// With `CHATRELAY_TEST_PG_URL` set, it is a fresh schema in that PostgreSQL database
    /// instead: the storage tests run once per engine this way (`scripts/test`).
    pub fn open_temporary() -> Result<KvStore, StoreError> {
        if let Some(url) = std::env::var("CHATRELAY_TEST_PG_URL")
            .ok()
            .filter(|u| !u.is_empty())
        {
            return Self::open_postgres(&PgOptions {
                schema: Some(temporary_schema()),
                ..PgOptions::new(url)
            });
        }
        let db = sled::Config::new().temporary(true).open()?;
        Self::from_db(Db::Sled(db), None, 0)
    }

    pub(crate) fn from_db(
        db: Db,
        path: Option<PathBuf>,
        cache_capacity_bytes: u64,
    ) -> Result<KvStore, StoreError> {
        let journal = Arc::new(backup::Journal::default());
        let trees = Trees::open(&db, &journal)?;
        check_schema(&trees.meta)?;
        Ok(KvStore {
            inner: Arc::new(Inner {
                open: RwLock::new(Some(Arc::new(Open::new(db, trees)))),
                path,
                cache_capacity_bytes,
                quiesce: RwLock::new(()),
                journal,
                exporting: std::sync::Mutex::new(()),
                writable: std::sync::atomic::AtomicBool::new(true),
                purge_cursors: std::sync::Mutex::default(),
            }),
        })
    }

    /// Reopens the database after a storage failure (sled stays failed after an I/O error
    /// until it is reopened): waits for writers to finish, closes it, and opens it again,
    /// which replays its log. Returns whether it is open afterwards. While this runs (and if
    /// the disk is still full, until a later call succeeds) calls fail with
    /// [`StoreError::Reopening`]. Temporary stores cannot be reopened.
    pub fn recover(&self) -> Result<(), StoreError> {
        if self.is_shared() {
            // The pool drops broken connections and opens new ones by itself.
            return Ok(());
        }
        let Some(path) = self.inner.path.clone() else {
            return Err(StoreError::InvalidInput(
                "a temporary store cannot be reopened".into(),
            ));
        };
        let _quiet = self
            .inner
            .quiesce
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut slot = self
            .inner
            .open
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(old) = slot.take() {
            // Readers that fetched the trees just before finish their read; the file lock
            // goes with the last handle.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while Arc::strong_count(&old) > 1 {
                if std::time::Instant::now() > deadline {
                    *slot = Some(old);
                    return Err(StoreError::InvalidInput(
                        "the database is still in use; not reopened".into(),
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            drop(old);
        }
        let db = retry_locked(|| open_sled(&path, self.inner.cache_capacity_bytes))?;
        let db = Db::Sled(db);
        let trees = Trees::open(&db, &self.inner.journal)?;
        check_schema(&trees.meta)?;
        tracing::warn!(path = %path.display(), "database reopened after a storage failure");
        *slot = Some(Arc::new(Open::new(db, trees)));
        Ok(())
    }
}

fn open_sled(path: &Path, cache_capacity_bytes: u64) -> Result<sled::Db, StoreError> {
    let db = sled::Config::new()
        .path(path)
        .cache_capacity(cache_capacity_bytes)
        .mode(sled::Mode::HighThroughput)
        .open()
        .map_err(|e| map_open_error(e, path))?;
    tracing::debug!(path = %path.display(), recovered = db.was_recovered(), "opened store");
    Ok(db)
}

/// Opens a database this process has just closed: sled's flusher thread lets go of the file
/// lock a moment after the last handle (on a busy machine, a long moment), so a lock error
/// is tried again for a few seconds.
pub(crate) fn retry_locked<T>(
    mut open: impl FnMut() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open() {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Maps sled's "could not acquire lock ... WouldBlock" to [`StoreError::Locked`].
pub(crate) fn map_open_error(err: sled::Error, path: &Path) -> StoreError {
    if let sled::Error::Io(io) = &err {
        let text = io.to_string();
        if io.kind() == ErrorKind::WouldBlock
            || text.contains("WouldBlock")
            || text.contains("could not acquire lock")
        {
            return StoreError::Locked {
                path: path.to_path_buf(),
            };
        }
    }
    StoreError::Sled(err)
}

/// Records the schema version in a new database; refuses one that is too new; upgrades an
/// older one (every older layout still reads: see [`SCHEMA_VERSION`]).
fn check_schema(meta: &Tree) -> Result<(), StoreError> {
    let current = codec::encode(&SCHEMA_VERSION)?;
    // Written only if absent, so two racing opens cannot disagree.
    let found = match meta.compare_and_swap(SCHEMA_KEY, None, Some(&current))? {
        Ok(()) => SCHEMA_VERSION,
        Err(cas) => match cas.current {
            Some(raw) => decode::<u32>(META, &raw, || "schema_version".to_owned())?,
            None => SCHEMA_VERSION,
        },
    };
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < SCHEMA_VERSION {
        // Nothing to rewrite (version 2 reads version 1's values); only the number moves,
        // compared and swapped so that two racing opens agree.
        let old = codec::encode(&found)?;
        match meta.compare_and_swap(SCHEMA_KEY, Some(&old), Some(&current))? {
            Ok(()) => tracing::info!(
                from = found,
                to = SCHEMA_VERSION,
                "store upgraded to this build's schema version"
            ),
            Err(_) => return check_schema(meta),
        }
    }
    Ok(())
}

/// For tests that need PostgreSQL: the options of a fresh schema (a name no other test uses)
/// in the database `CHATRELAY_TEST_PG_URL` names; `None` when it is unset (the test skips).
#[must_use]
pub fn test_pg_options() -> Option<PgOptions> {
    let url = std::env::var("CHATRELAY_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    Some(PgOptions {
        schema: Some(temporary_schema()),
        ..PgOptions::new(url)
    })
}

/// A schema name no other temporary store has: `t_<pid>_<counter>_<random>`.
pub(crate) fn temporary_schema() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut random = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    format!("t_{}_{n}_{}", std::process::id(), hex::encode(random))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ReservationId, Uid};

    #[test]
    fn reopening_keeps_the_data_and_takes_writes_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = KvStore::open(&dir.path().join("db"), 1 << 20).unwrap();
        let user = store.create_user("kept").unwrap();
        assert!(store.probe_write());
        store.flush_blocking().unwrap();
        let clone = store.clone();
        store.recover().unwrap();
        assert_eq!(
            clone.user(user.uid).unwrap().unwrap().name,
            "kept",
            "clones see the reopened database"
        );
        clone.create_user("after").unwrap();
        assert!(store.probe_write());
        let temporary = sled::Config::new().temporary(true).open().unwrap();
        let temporary = KvStore::from_db(Db::Sled(temporary), None, 0).unwrap();
        assert!(temporary.recover().is_err(), "nothing to reopen");
    }

    #[test]
    fn new_db_gets_the_schema_version_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = KvStore::open(dir.path(), 1 << 20).unwrap();
            let raw = store
                .trees()
                .unwrap()
                .meta
                .get(SCHEMA_KEY)
                .unwrap()
                .unwrap();
            assert_eq!(&*raw, b"2");
            assert_eq!(store.path(), Some(dir.path()));
        }
        reopen(dir.path()).unwrap();
    }

    #[test]
    fn schema_too_new_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = KvStore::open(dir.path(), 1 << 20).unwrap();
            store
                .trees()
                .unwrap()
                .meta
                .insert(SCHEMA_KEY, b"3")
                .unwrap();
            store.flush_blocking().unwrap();
        }
        match reopen(dir.path()) {
            Err(StoreError::SchemaTooNew {
                found: 3,
                supported: SCHEMA_VERSION,
            }) => {}
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }

    /// A store of version 1 (JSON money records) opens, and from then on says version 2, so
    /// that a build of version 1, which could not read the compact records now written,
    /// refuses it.
    #[test]
    fn an_older_schema_is_upgraded_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = KvStore::open(dir.path(), 1 << 20).unwrap();
            let meta = &store.trees().unwrap().meta;
            meta.insert(SCHEMA_KEY, b"1").unwrap();
            store.flush_blocking().unwrap();
        }
        let store = reopen(dir.path()).unwrap();
        let raw = store
            .trees()
            .unwrap()
            .meta
            .get(SCHEMA_KEY)
            .unwrap()
            .unwrap();
        assert_eq!(&*raw, b"2");
    }

    /// Opens a database the test just closed.
    fn reopen(path: &Path) -> Result<KvStore, StoreError> {
        KvStore::open_closed(path, 1 << 20)
    }

    #[test]
    fn corrupt_schema_version_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = KvStore::open(dir.path(), 1 << 20).unwrap();
            store
                .trees()
                .unwrap()
                .meta
                .insert(SCHEMA_KEY, b"\"one\"")
                .unwrap();
            store.flush_blocking().unwrap();
        }
        assert!(matches!(
            reopen(dir.path()),
            Err(StoreError::Corrupt { tree: "meta", .. })
        ));
    }

    #[test]
    fn second_open_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = KvStore::open(dir.path(), 1 << 20).unwrap();
        match KvStore::open(dir.path(), 1 << 20) {
            Err(StoreError::Locked { path }) => assert_eq!(path, dir.path()),
            other => panic!("expected Locked, got {other:?}"),
        }
    }

    #[test]
    fn temporary_store_has_no_path() {
        let store = KvStore::open_temporary().unwrap();
        assert!(store.path().is_none());
        assert_eq!(format!("{}", Uid(12)), "12");
        assert_eq!("12".parse::<Uid>().unwrap(), Uid(12));
        assert_eq!(ReservationId(3).to_string(), "3");
    }

    #[test]
    fn flush_completes() {
        let dir = tempfile::tempdir().unwrap();
        let store = KvStore::open(dir.path(), 1 << 20).unwrap();
        store.create_user("a").unwrap();
        let mut flush = std::pin::pin!(store.flush());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while flush.as_mut().poll(&mut cx).is_pending() {
            assert!(
                std::time::Instant::now() < deadline,
                "flush never completed"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
