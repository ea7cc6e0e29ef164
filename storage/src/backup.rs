//! Backup and restore: a consistent export of every tree as checksummed text lines, and a
//! restore that commits nothing until the whole file is verified.
//!
//! # Format
//! One JSON object per line:
//! 1. header `{"chatrelay_backup":1,"schema_version":N,"created_at_ms":T,"id_floor":F}`
//!    (`id_floor`: every id sled generated in the source is below it; the restored database
//!    generates ids above it, so new reservations and order events cannot reuse an id);
//! 2. one line per record `{"t":"<tree>","k":"<hex key>","v":"<hex value>"}`, trees in name
//!    order, keys in order;
//! 3. footer `{"end":true,"records":N,"sha256":"<hex>"}`, the SHA-256 of every record line,
//!    each with its `\n`.
//!
//! # Snapshot without stopping writers
//! sled has no snapshots, and its iterators are not consistent even within one tree. An export
//! takes the quiesce lock's write side only for the instant it switches the [`Journal`] on
//! (waiting for writes in flight to end): from then on, every write first keeps the value it
//! replaces (or "absent") in the journal, once per key. The export then walks the live trees
//! and puts those old values back: a key in the journal is exported as it was at the snapshot
//! (or skipped, if it did not exist then), keys removed since come from the journal, and every
//! other key has not been written since the snapshot, so its live value is its snapshot value.
//! Writers wait only for that instant, never for the walk or the output.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{BufRead, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use crate::codec::decode;
use crate::{KvStore, META, SCHEMA_KEY, SCHEMA_VERSION, StoreError};

/// The format version written in the header.
const FORMAT: u32 = 1;

/// sled's own default tree: exported only when something wrote to it.
const DEFAULT_TREE: &str = "__sled__default";

/// sled's default `idgen_persist_interval` (what [`KvStore::open`] uses).
const SLED_IDGEN_INTERVAL: u64 = 1_000_000;

/// What an export wrote / an import read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupSummary {
    /// Trees with at least one record.
    pub trees: usize,
    /// Records (key/value pairs).
    pub records: u64,
    /// Bytes of keys and values (raw, before hex).
    pub bytes: u64,
    /// The schema version of the exported database.
    pub schema_version: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    chatrelay_backup: u32,
    schema_version: u32,
    created_at_ms: i64,
    #[serde(default)]
    id_floor: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    t: String,
    k: String,
    v: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Footer {
    end: bool,
    records: u64,
    sha256: String,
}

fn io_err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backup(format!("{what}: {e}"))
}

fn line_err(line: u64, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Backup(format!("line {line}: {detail}"))
}

/// Counts records and bytes as they go by.
#[derive(Default)]
struct Tally {
    trees: BTreeSet<String>,
    records: u64,
    bytes: u64,
}

impl Tally {
    fn add(&mut self, tree: &str, key: &[u8], value: &[u8]) {
        if !self.trees.contains(tree) {
            self.trees.insert(tree.to_owned());
        }
        self.records += 1;
        self.bytes += (key.len() + value.len()) as u64;
    }

    fn summary(&self, schema_version: u32) -> BackupSummary {
        BackupSummary {
            trees: self.trees.len(),
            records: self.records,
            bytes: self.bytes,
            schema_version,
        }
    }
}

/// Per tree, the value each key written since the snapshot had at the snapshot (`None`:
/// absent).
type Saved = HashMap<&'static str, BTreeMap<Vec<u8>, Option<Vec<u8>>>>;

/// A (key, value) pair of a tree.
type Pair = (Vec<u8>, Vec<u8>);

/// The copy-on-write half of an export's snapshot (see the module docs): while on, the first
/// write of each key keeps the value it replaces.
#[derive(Default)]
pub(crate) struct Journal {
    /// Fast path for writers: off unless an export runs. Switched only under the quiesce
    /// lock's write side, which every writer's read side orders against.
    on: AtomicBool,
    /// Only ever held for map operations, never across a database call: writers in a sled
    /// transaction hold sled's global lock, which a database call here would wait for.
    saved: Mutex<Option<Saved>>,
}

impl Journal {
    fn saved(&self) -> std::sync::MutexGuard<'_, Option<Saved>> {
        self.saved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called before every write of `key` in `tree`: while an export runs, keeps the key's
    /// value at the snapshot, read by `current` (called without any lock held).
    ///
    /// Correct without holding a lock across `current`: the first value kept for a key wins,
    /// and it was read before its writer wrote; every other write of the key comes after its
    /// own writer found the key kept (or kept it), so after that read: it read the snapshot.
    pub(crate) fn before_write<E>(
        &self,
        tree: &'static str,
        key: &[u8],
        current: impl FnOnce() -> Result<Option<Vec<u8>>, E>,
    ) -> Result<(), E> {
        if !self.on.load(Ordering::Acquire) {
            return Ok(());
        }
        let kept = match &*self.saved() {
            Some(saved) => saved.get(tree).is_some_and(|t| t.contains_key(key)),
            None => return Ok(()),
        };
        if kept {
            return Ok(());
        }
        let value = current()?;
        if let Some(saved) = self.saved().as_mut() {
            saved
                .entry(tree)
                .or_default()
                .entry(key.to_vec())
                .or_insert(value);
        }
        Ok(())
    }

    /// Starts a snapshot: call with the quiesce lock's write side held.
    fn start(&self) {
        *self.saved() = Some(Saved::new());
        self.on.store(true, Ordering::Release);
    }

    /// Ends the snapshot and forgets what it kept.
    fn stop(&self) {
        self.on.store(false, Ordering::Release);
        *self.saved() = None;
    }

    /// For a key the walk of `tree` found live: the keys after `after` and before `key` that
    /// existed at the snapshot but were removed before the walk got there (with their values),
    /// and `key`'s snapshot value if it was written since (`Some(None)`: it did not exist).
    #[allow(clippy::type_complexity)]
    fn resolve(
        &self,
        tree: &'static str,
        after: Option<&[u8]>,
        key: Option<&[u8]>,
    ) -> (Vec<Pair>, Option<Option<Vec<u8>>>) {
        let guard = self.saved();
        let Some(saved) = guard.as_ref().and_then(|s| s.get(tree)) else {
            return (Vec::new(), None);
        };
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let upper = key.map_or(Bound::Unbounded, Bound::Excluded);
        let removed = saved
            .range::<[u8], _>((lower, upper))
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())))
            .collect();
        let own = key.and_then(|k| saved.get(k).cloned());
        (removed, own)
    }
}

/// Switches the journal off when the export ends, however it ends.
struct Snapshot<'a>(&'a Journal);

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Every exported tree, in name order: the store's trees, plus sled's default tree when it
/// holds data.
fn backup_trees(open: &crate::Open) -> Result<Vec<(&'static str, &sled::Tree)>, StoreError> {
    let crate::kv::Db::Sled(db) = &open.db else {
        return Err(pg_backup());
    };
    let mut trees = Vec::new();
    for (name, tree) in open.all() {
        trees.push((name, tree.sled().ok_or_else(pg_backup)?));
    }
    let default: &sled::Tree = db;
    if !default.is_empty() {
        trees.push((DEFAULT_TREE, default));
        trees.sort_by_key(|(name, _)| *name);
    }
    Ok(trees)
}

/// Why a PostgreSQL store has no `admin backup`.
fn pg_backup() -> StoreError {
    StoreError::Unsupported(
        "backups of a PostgreSQL store are PostgreSQL's: use pg_dump (or your provider's \
         snapshots); `admin backup` is for the embedded store"
            .into(),
    )
}

impl KvStore {
    /// Writes a consistent snapshot of every tree to `out`, as text lines: a header, one line
    /// per record (hex key and value), and a footer with the record count and the SHA-256 of
    /// the record lines (see the module docs).
    ///
    /// Writers are held up only for the instant the snapshot starts (the writes already in
    /// flight finish first), not while the records are read and written out: the snapshot is
    /// kept by copy-on-write (see the module docs). One export runs at a time.
    pub fn export_backup(
        &self,
        out: &mut dyn Write,
        now_ms: i64,
    ) -> Result<BackupSummary, StoreError> {
        let _one = self
            .inner
            .exporting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let open = self.trees()?;
        let trees = backup_trees(&open)?;
        let journal = &*self.inner.journal;
        let (schema_version, id_floor, _snapshot) = {
            let _quiet = self
                .inner
                .quiesce
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let started = std::time::Instant::now();
            journal.start();
            let snapshot = Snapshot(journal);
            let schema_version = match open.meta.get(SCHEMA_KEY)? {
                Some(raw) => decode::<u32>(META, &raw, || "schema_version".to_owned())?,
                None => SCHEMA_VERSION,
            };
            let id_floor = open.db.generate_id()?.saturating_add(1);
            tracing::debug!(
                pause_us = started.elapsed().as_micros() as u64,
                "backup snapshot started"
            );
            (schema_version, id_floor, snapshot)
        };
        let header = Header {
            chatrelay_backup: FORMAT,
            schema_version,
            created_at_ms: now_ms,
            id_floor,
        };
        let write_line = |out: &mut dyn Write, line: &str| -> Result<(), StoreError> {
            out.write_all(line.as_bytes())
                .and_then(|()| out.write_all(b"\n"))
                .map_err(|e| io_err("writing the backup", e))
        };
        write_line(out, &to_json(&header)?)?;
        let mut sha = Context::new(&SHA256);
        let mut tally = Tally::default();
        let mut emit = |out: &mut dyn Write, name: &str, key: &[u8], value: &[u8]| {
            let line = to_json(&Record {
                t: name.to_owned(),
                k: hex::encode(key),
                v: hex::encode(value),
            })?;
            sha.update(line.as_bytes());
            sha.update(b"\n");
            write_line(out, &line)?;
            tally.add(name, key, value);
            Ok::<(), StoreError>(())
        };
        for &(name, tree) in &trees {
            let mut last: Option<Vec<u8>> = None;
            for item in tree.iter() {
                let (key, live) = item?;
                let (removed, own) = journal.resolve(name, last.as_deref(), Some(&key));
                for (k, v) in removed {
                    emit(out, name, &k, &v)?;
                }
                match own {
                    None => emit(out, name, &key, &live)?,
                    Some(Some(then)) => emit(out, name, &key, &then)?,
                    // Created after the snapshot.
                    Some(None) => {}
                }
                last = Some(key.to_vec());
            }
            let (removed, _) = journal.resolve(name, last.as_deref(), None);
            for (k, v) in removed {
                emit(out, name, &k, &v)?;
            }
        }
        let footer = Footer {
            end: true,
            records: tally.records,
            sha256: hex::encode(sha.finish()),
        };
        write_line(out, &to_json(&footer)?)?;
        out.flush().map_err(|e| io_err("writing the backup", e))?;
        Ok(tally.summary(schema_version))
    }

    /// Restores a backup into `dir`, which must not exist or be empty (never overwrites data).
    ///
    /// Checks the header, the schema version (newer: [`StoreError::SchemaTooNew`]), every
    /// line, the record count and the checksum before committing: records go into a database
    /// in a temporary sibling directory, which is renamed to `dir` only once the whole file is
    /// verified and the database flushed; on any error it is deleted and `dir` is untouched.
    pub fn restore_backup(
        input: &mut dyn BufRead,
        dir: &Path,
        cache_capacity_bytes: u64,
    ) -> Result<BackupSummary, StoreError> {
        check_target(dir)?;
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dir
            .file_name()
            .ok_or_else(|| StoreError::Backup(format!("{} has no file name", dir.display())))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let staging = parent.join(format!(
            ".{}.restore-{}-{nanos}",
            name.to_string_lossy(),
            std::process::id()
        ));
        fs::create_dir(&staging)
            .map_err(|e| io_err(&format!("creating {}", staging.display()), e))?;
        let result = restore_into(input, &staging, dir, cache_capacity_bytes);
        if result.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        result
    }

    /// Every record of every exported tree as (tree, key, value), sorted. Not a snapshot: it
    /// takes no lock, so concurrent writes may show partly (use [`KvStore::export_backup`]).
    #[allow(clippy::type_complexity)] // the signature the brief asked for
    pub fn dump(&self) -> Result<Vec<(String, Vec<u8>, Vec<u8>)>, StoreError> {
        let mut all = Vec::new();
        let open = self.trees()?;
        for (name, tree) in backup_trees(&open)? {
            for item in tree.iter() {
                let (key, value) = item?;
                all.push((name.to_owned(), key.to_vec(), value.to_vec()));
            }
        }
        all.sort();
        Ok(all)
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| io_err("encoding a backup line", e))
}

/// `dir` must not exist, or be an empty directory.
fn check_target(dir: &Path) -> Result<(), StoreError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(StoreError::Backup(format!(
                    "{} is not empty: restore only into a new or empty directory",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(&format!("reading {}", dir.display()), e)),
    }
}

/// Every tree name a backup may hold.
fn known_tree(name: &str) -> Option<&'static str> {
    const NAMES: [&str; 30] = [
        crate::META,
        crate::USERS,
        crate::IDENTITIES,
        crate::IDENTITIES_BY_UID,
        crate::BALANCES,
        crate::LEDGER,
        crate::LEDGER_REFS,
        crate::RESERVATIONS,
        crate::RESERVATION_REFS,
        crate::SETTLED_RESERVATIONS,
        crate::CONVERSATIONS,
        crate::DEDUPE,
        crate::TOKENS,
        crate::TOKENS_BY_UID,
        crate::LOGIN_CODES,
        crate::LOGIN_CODES_BY_UID,
        crate::OUTBOX,
        crate::ORDERS,
        crate::OPEN_ORDERS,
        crate::ORDER_EVENTS,
        crate::CHECKPOINTS,
        crate::ANSWERS,
        crate::CODE_BATCHES,
        crate::CODES,
        crate::CODE_HASHES,
        crate::USAGE,
        crate::CHATS,
        crate::CHAT_INDEX,
        crate::ADMIN_LOG,
        DEFAULT_TREE,
    ];
    NAMES.into_iter().find(|n| *n == name)
}

/// Reads one line without its `\n`; `None` at the end of the input.
fn read_line(input: &mut dyn BufRead, number: u64) -> Result<Option<String>, StoreError> {
    let mut line = String::new();
    let n = input
        .read_line(&mut line)
        .map_err(|e| line_err(number, format!("cannot read: {e}")))?;
    if n == 0 {
        return Ok(None);
    }
    if line.pop() != Some('\n') {
        return Err(line_err(number, "truncated (no end of line)"));
    }
    Ok(Some(line))
}

/// Verifies the whole file while writing it into a database at `staging`; renames `staging`
/// to `dir` once all is well.
fn restore_into(
    input: &mut dyn BufRead,
    staging: &Path,
    dir: &Path,
    cache_capacity_bytes: u64,
) -> Result<BackupSummary, StoreError> {
    let header_line = read_line(input, 1)?.ok_or_else(|| line_err(1, "empty file"))?;
    let header: Header = serde_json::from_str(&header_line)
        .map_err(|e| line_err(1, format!("not a chatrelay backup header: {e}")))?;
    if header.chatrelay_backup != FORMAT {
        return Err(line_err(
            1,
            format!("unknown backup format {}", header.chatrelay_backup),
        ));
    }
    if header.schema_version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: header.schema_version,
            supported: SCHEMA_VERSION,
        });
    }
    // Ids generated by the restored database must stay above the source's: sled persists its id
    // counter every `interval` ids and, on reopening, resumes 2 × interval past the last
    // persisted value. Staging with interval = P (a multiple of sled's default), then reopening
    // twice, leaves the counter at 2P ≥ id_floor, persisted at a multiple of the default.
    let interval = header
        .id_floor
        .div_ceil(SLED_IDGEN_INTERVAL)
        .max(1)
        .saturating_mul(SLED_IDGEN_INTERVAL);
    let config = || {
        sled::Config::new()
            .path(staging)
            .cache_capacity(cache_capacity_bytes)
            .idgen_persist_interval(interval)
    };

    let summary = {
        let db = config().open()?;
        let mut sha = Context::new(&SHA256);
        let mut tally = Tally::default();
        let mut footer = None;
        let mut number = 1u64;
        let mut schema_record = None;
        loop {
            number += 1;
            let Some(line) = read_line(input, number)? else {
                break;
            };
            if footer.is_some() {
                return Err(line_err(number, "data after the footer"));
            }
            if line.starts_with("{\"end\"") {
                let f: Footer = serde_json::from_str(&line)
                    .map_err(|e| line_err(number, format!("bad footer: {e}")))?;
                if !f.end {
                    return Err(line_err(number, "bad footer: end is false"));
                }
                footer = Some(f);
                continue;
            }
            let record: Record = serde_json::from_str(&line)
                .map_err(|e| line_err(number, format!("bad record: {e}")))?;
            let tree_name = known_tree(&record.t)
                .ok_or_else(|| line_err(number, format!("unknown tree {:?}", record.t)))?;
            let key = hex::decode(&record.k)
                .map_err(|e| line_err(number, format!("bad key hex: {e}")))?;
            let value = hex::decode(&record.v)
                .map_err(|e| line_err(number, format!("bad value hex: {e}")))?;
            sha.update(line.as_bytes());
            sha.update(b"\n");
            if tree_name == META && key == SCHEMA_KEY {
                schema_record = Some(
                    decode::<u32>(META, &value, || "schema_version".to_owned())
                        .map_err(|e| line_err(number, e))?,
                );
            }
            let tree = if tree_name == DEFAULT_TREE {
                (*db).clone()
            } else {
                db.open_tree(tree_name)?
            };
            if tree.insert(&key, value.as_slice())?.is_some() {
                return Err(line_err(
                    number,
                    format!("duplicate key {} in tree {tree_name}", record.k),
                ));
            }
            tally.add(tree_name, &key, &value);
        }
        let footer = footer.ok_or_else(|| {
            StoreError::Backup(format!(
                "truncated: no footer after line {}",
                number.saturating_sub(1)
            ))
        })?;
        if footer.records != tally.records {
            return Err(StoreError::Backup(format!(
                "the footer counts {} records, the file has {}",
                footer.records, tally.records
            )));
        }
        let actual = hex::encode(sha.finish());
        if !footer.sha256.eq_ignore_ascii_case(&actual) {
            return Err(StoreError::Backup(format!(
                "checksum mismatch: the footer says {}, the records hash to {actual}",
                footer.sha256
            )));
        }
        if schema_record.is_some_and(|v| v != header.schema_version) {
            return Err(StoreError::Backup(format!(
                "the header says schema version {}, the meta tree {}",
                header.schema_version,
                schema_record.unwrap_or_default()
            )));
        }
        db.flush()?;
        tally.summary(header.schema_version)
    };
    // Reopen: sled resumes ids at 2 × interval; hand out one so that counter is persisted.
    {
        let db = crate::open::retry_locked(|| {
            config()
                .open()
                .map_err(|e| crate::open::map_open_error(e, staging))
        })?;
        db.generate_id()?;
        db.flush()?;
    }
    if fs::read_dir(dir).is_ok() {
        fs::remove_dir(dir).map_err(|e| io_err(&format!("replacing {}", dir.display()), e))?;
    }
    fs::rename(staging, dir).map_err(|e| {
        io_err(
            &format!("renaming {} to {}", staging.display(), dir.display()),
            e,
        )
    })?;
    // Opening checks the schema (and is what the daemon will do next). sled lets go of the
    // file lock a moment after the handle above is dropped: on a busy machine, a long moment.
    drop(crate::open::retry_locked(|| {
        KvStore::open(dir, cache_capacity_bytes)
    })?);
    Ok(summary)
}
