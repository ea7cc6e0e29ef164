//! chatrelay's embedded store: the only crate that knows sled.
//!
//! It owns every durable record of the daemon and exposes them through [`Store`], a small typed
//! API that sled could be swapped out behind (redb), or a shared backend (PostgreSQL) added to.
//!
//! # Layout
//! - `lib.rs`: [`Store`] (open, schema version, flush), [`Uid`], [`ReservationId`].
//! - `error.rs`: [`StoreError`].
//! - `codec.rs`: big-endian integer keys, serde_json values, transaction plumbing.
//! - `users.rs`: users and identities ([`chatrelay_core::UserKey`] → [`Uid`] and back).
//! - `quota.rs`: balances, reservations and the append-only ledger.
//! - `audit.rs`: the consistency check of balances against ledger and reservations.
//! - `conversations.rs`: bounded per-conversation memory.
//! - `dedupe.rs`: "seen this message" marks with expiry.
//! - `tokens.rs`: user API tokens, stored only as SHA-256 hashes.
//! - `login.rs`: one-time login codes (chat platform → web page).
//! - `outbox.rs`: answers owed to a user, delivered with their next message.
//! - `orders.rs`: credit-pack orders, their state machine and crediting.
//! - `checkpoints.rs`: small durable facts of connectors (zsxq topics answered, counters).
//! - `codes.rs`: redemption codes (batches, stored hashed) and their exactly-once redemption.
//! - `plans.rs`: membership plans: grants, a user's plan (kept in `balances`), day arithmetic.
//! - `usage.rs`: the usage log, one record per metered answer, written by its settlement.
//! - `chats.rs`: the web page's saved conversations, per user, with count and size limits.
//! - `admin_log.rs`: the change log of the admin API (who changed what, from where, why).
//! - `backup.rs`: consistent export to a checksummed text file, verified restore, `dump`.
//! - `lane.rs`: the write lane of a sled database (its steps and their group flush, on one
//!   thread) and the flush counters.
//! - `census.rs`: what a store holds, counted, to compare two stores (migrations).
//! - `kv/`: the trees over sled or the one-table PostgreSQL schema; `rel/`: the relational
//!   PostgreSQL store (not wired yet).
//!
//! # Trees
//! | tree | key | value |
//! |---|---|---|
//! | `meta` | `schema_version`, `next_uid` | JSON number |
//! | `users` | uid (be u64) | [`User`] |
//! | `identities` | user key text (`mp:main:openid`) | uid |
//! | `identities_by_uid` | uid ‖ user key text | empty |
//! | `balances` | uid | paid, held, free day and use, next ledger seq, the active plan |
//! | `ledger` | uid ‖ seq (be u64 each) | [`LedgerEntry`] |
//! | `ledger_refs` | reference | uid and seq of its entry |
//! | `reservations` | id (be u64) | an open hold |
//! | `reservation_refs` | reference | reservation id |
//! | `settled_reservations` | id | what settled it (idempotent settle; purged after a while) |
//! | `conversations` | engine's key | the newest turns |
//! | `dedupe` | engine's key | expiry (ms) |
//! | `tokens` | SHA-256 of the token | owner, label, times |
//! | `tokens_by_uid` | uid ‖ SHA-256 | empty |
//! | `login_codes` | the code (8 characters, canonical form) | [`LoginCode`] |
//! | `login_codes_by_uid` | uid | the user's live code |
//! | `outbox` | user key text | texts owed to the user |
//! | `orders` | order id | [`Order`] |
//! | `open_orders` | uid ‖ product ‖ channel | the id of that user's waiting order |
//! | `order_events` | order id ‖ 0 ‖ id (be u64) | [`OrderEvent`] |
//! | `checkpoints` | a connector's key | a short text (state, counter) |
//! | `answers` | engine's key | a finished answer, for retries that reach another daemon |
//! | `code_batches` | batch id (be u64) | [`CodeBatch`] |
//! | `codes` | batch ‖ n (be u64 each) | [`CodeRecord`] (never the code's text) |
//! | `code_hashes` | SHA-256 of the canonical code | batch ‖ n |
//! | `usage` | uid ‖ time (ms) ‖ reservation id (be u64 each) | [`UsageRecord`], compact binary |
//! | `chats` | uid ‖ conversation id | a web conversation's title, version and messages |
//! | `chat_index` | uid ‖ conversation id | its [`ChatSummary`] (listings read only this) |
//! | `admin_log` | time (ms) ‖ id (be u64 each) | a [`ChangeRecord`] (≤ 2 KB, redacted) |
//!
//! # Rules kept throughout
//! - Every change of a balance writes its ledger entry in the same sled transaction, and is
//!   idempotent on its reference string.
//! - Transactions touch known keys only (sled has no scans inside them) and have no side effects
//!   (their closures may run more than once).
//! - A record that cannot be read is a [`StoreError::Corrupt`] naming tree and key, never a panic.
//! - Writes are durable only after [`Store::flush`] (or a step run with
//!   [`Store::on_lane_durable`]); call it before acknowledging a payment.
//! - Every public method that writes holds the quiesce lock's read side for its whole run
//!   ([`Store::export_backup`] takes the write side for the instant its snapshot starts, so a
//!   backup sees whole operations only). Such methods never call one another (a nested read
//!   guard could deadlock with a waiting exporter).
//! - Every write goes through `kv` (`Tree`, `TxTree`), which keeps the value it replaces in the
//!   backup journal while an export runs: writers never wait for a backup.

#![warn(missing_docs)]

pub mod error;

mod admin_log;
mod audit;
mod backup;
mod census;
mod chats;
mod checkpoints;
mod codec;
mod codes;
mod conversations;
mod dedupe;
mod handoff;
mod kv;
mod lane;
mod login;
mod orders;
mod outbox;
mod plans;
mod quota;
mod rel;
mod shared;
mod tokens;
mod usage;
mod users;

use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use serde::{Deserialize, Serialize};

pub use admin_log::{ChangeCursor, ChangePage, ChangeRecord, MAX_CHANGE_BYTES, MAX_CHANGE_PAGE};
pub use audit::{AuditMismatch, AuditReport};
pub use backup::BackupSummary;
pub use census::{Census, OrderTally};
pub use chats::{
    Chat, ChatLimits, ChatMessage, ChatPut, ChatSummary, MAX_CHAT_ID, MAX_CHAT_TITLE, chat_size,
    valid_chat_id,
};
pub use codes::{
    CodeBatch, CodeGrant, CodeRecord, CodeState, MAX_CODES_PER_BATCH, REDEEM_CODE_ALPHABET,
    REDEEM_CODE_CHARS, RedeemOutcome, code_id, code_reference, display_redeem_code,
    normalize_redeem_code, random_redeem_code,
};
pub use conversations::Turn;
pub use dedupe::SharedAnswer;
pub use error::StoreError;
pub use kv::pg::{MIGRATIONS, MigrationReport, PgOptions};
pub use lane::{flush_counts, lane_counts};
pub use login::{
    LOGIN_CODE_ALPHABET, LOGIN_CODE_CHARS, LoginCode, display_login_code, normalize_login_code,
};
pub use orders::{CreditOutcome, Order, OrderEvent, OrderStatus, purchase_reference};
pub use plans::{ActivePlan, PlanGrant, after_grant, after_refund, date_of_day};
pub use quota::{Balance, EntryKind, LedgerEntry, Remember};
pub use shared::{CopyReport, Leadership};
pub use tokens::{TOKEN_PREFIX, TokenInfo};
pub use usage::{MAX_USAGE_PAGE, UsageCursor, UsageNote, UsageOutcome, UsagePage, UsageRecord};
pub use users::{Admission, User, UserActivity};

use kv::{Db, Tree};

use codec::decode;

/// The on-disk schema this build writes. A database with a newer version is refused.
pub const SCHEMA_VERSION: u32 = 1;

/// A user's id: dense, starting at 1, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Uid(pub u64);

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Uid {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Uid)
    }
}

/// The id of a credit reservation made by [`Store::reserve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReservationId(pub u64);

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

// Tree names; also what [`StoreError::Corrupt`] reports.
const META: &str = "meta";
const USERS: &str = "users";
const IDENTITIES: &str = "identities";
const IDENTITIES_BY_UID: &str = "identities_by_uid";
const BALANCES: &str = "balances";
const LEDGER: &str = "ledger";
const LEDGER_REFS: &str = "ledger_refs";
const RESERVATIONS: &str = "reservations";
const RESERVATION_REFS: &str = "reservation_refs";
const SETTLED_RESERVATIONS: &str = "settled_reservations";
const CONVERSATIONS: &str = "conversations";
const DEDUPE: &str = "dedupe";
const TOKENS: &str = "tokens";
const TOKENS_BY_UID: &str = "tokens_by_uid";
const LOGIN_CODES: &str = "login_codes";
const LOGIN_CODES_BY_UID: &str = "login_codes_by_uid";
const OUTBOX: &str = "outbox";
const ORDERS: &str = "orders";
const OPEN_ORDERS: &str = "open_orders";
const ORDER_EVENTS: &str = "order_events";
const CHECKPOINTS: &str = "checkpoints";
const ANSWERS: &str = "answers";
const CODE_BATCHES: &str = "code_batches";
const CODES: &str = "codes";
const CODE_HASHES: &str = "code_hashes";
const USAGE: &str = "usage";
const CHATS: &str = "chats";
const CHAT_INDEX: &str = "chat_index";
const ADMIN_LOG: &str = "admin_log";

/// The `meta` key holding the schema version.
const SCHEMA_KEY: &[u8] = b"schema_version";

/// The open trees.
struct Trees {
    meta: Tree,
    users: Tree,
    identities: Tree,
    identities_by_uid: Tree,
    balances: Tree,
    ledger: Tree,
    ledger_refs: Tree,
    reservations: Tree,
    reservation_refs: Tree,
    settled_reservations: Tree,
    conversations: Tree,
    dedupe: Tree,
    tokens: Tree,
    tokens_by_uid: Tree,
    login_codes: Tree,
    login_codes_by_uid: Tree,
    outbox: Tree,
    orders: Tree,
    open_orders: Tree,
    order_events: Tree,
    checkpoints: Tree,
    answers: Tree,
    code_batches: Tree,
    codes: Tree,
    code_hashes: Tree,
    usage: Tree,
    chats: Tree,
    chat_index: Tree,
    admin_log: Tree,
}

impl Trees {
    fn open(db: &Db, journal: &Arc<backup::Journal>) -> Result<Self, StoreError> {
        Ok(Self {
            meta: db.open_tree(META, journal)?,
            users: db.open_tree(USERS, journal)?,
            identities: db.open_tree(IDENTITIES, journal)?,
            identities_by_uid: db.open_tree(IDENTITIES_BY_UID, journal)?,
            balances: db.open_tree(BALANCES, journal)?,
            ledger: db.open_tree(LEDGER, journal)?,
            ledger_refs: db.open_tree(LEDGER_REFS, journal)?,
            reservations: db.open_tree(RESERVATIONS, journal)?,
            reservation_refs: db.open_tree(RESERVATION_REFS, journal)?,
            settled_reservations: db.open_tree(SETTLED_RESERVATIONS, journal)?,
            conversations: db.open_tree(CONVERSATIONS, journal)?,
            dedupe: db.open_tree(DEDUPE, journal)?,
            tokens: db.open_tree(TOKENS, journal)?,
            tokens_by_uid: db.open_tree(TOKENS_BY_UID, journal)?,
            login_codes: db.open_tree(LOGIN_CODES, journal)?,
            login_codes_by_uid: db.open_tree(LOGIN_CODES_BY_UID, journal)?,
            outbox: db.open_tree(OUTBOX, journal)?,
            orders: db.open_tree(ORDERS, journal)?,
            open_orders: db.open_tree(OPEN_ORDERS, journal)?,
            order_events: db.open_tree(ORDER_EVENTS, journal)?,
            checkpoints: db.open_tree(CHECKPOINTS, journal)?,
            answers: db.open_tree(ANSWERS, journal)?,
            code_batches: db.open_tree(CODE_BATCHES, journal)?,
            codes: db.open_tree(CODES, journal)?,
            code_hashes: db.open_tree(CODE_HASHES, journal)?,
            usage: db.open_tree(USAGE, journal)?,
            chats: db.open_tree(CHATS, journal)?,
            chat_index: db.open_tree(CHAT_INDEX, journal)?,
            admin_log: db.open_tree(ADMIN_LOG, journal)?,
        })
    }

    /// Every tree with its name, in name order.
    fn all(&self) -> [(&'static str, &Tree); 29] {
        let mut all = [
            (META, &self.meta),
            (USERS, &self.users),
            (IDENTITIES, &self.identities),
            (IDENTITIES_BY_UID, &self.identities_by_uid),
            (BALANCES, &self.balances),
            (LEDGER, &self.ledger),
            (LEDGER_REFS, &self.ledger_refs),
            (RESERVATIONS, &self.reservations),
            (RESERVATION_REFS, &self.reservation_refs),
            (SETTLED_RESERVATIONS, &self.settled_reservations),
            (CONVERSATIONS, &self.conversations),
            (DEDUPE, &self.dedupe),
            (TOKENS, &self.tokens),
            (TOKENS_BY_UID, &self.tokens_by_uid),
            (LOGIN_CODES, &self.login_codes),
            (LOGIN_CODES_BY_UID, &self.login_codes_by_uid),
            (OUTBOX, &self.outbox),
            (ORDERS, &self.orders),
            (OPEN_ORDERS, &self.open_orders),
            (ORDER_EVENTS, &self.order_events),
            (CHECKPOINTS, &self.checkpoints),
            (ANSWERS, &self.answers),
            (CODE_BATCHES, &self.code_batches),
            (CODES, &self.codes),
            (CODE_HASHES, &self.code_hashes),
            (USAGE, &self.usage),
            (CHATS, &self.chats),
            (CHAT_INDEX, &self.chat_index),
            (ADMIN_LOG, &self.admin_log),
        ];
        all.sort_by_key(|(name, _)| *name);
        all
    }
}

/// One opening of the database.
struct Open {
    db: Db,
    trees: Trees,
    /// Runs the store steps and flushes of this database, grouped (sled only).
    lane: Option<lane::Lane>,
}

impl Open {
    fn new(db: Db, trees: Trees) -> Open {
        let lane = match &db {
            Db::Sled(_) => lane::Lane::start(),
            Db::Pg(_) => None,
        };
        Open { db, trees, lane }
    }
}

impl std::ops::Deref for Open {
    type Target = Trees;
    fn deref(&self) -> &Trees {
        &self.trees
    }
}

struct Inner {
    /// `None` only while [`Store::recover`] reopens the database.
    open: RwLock<Option<Arc<Open>>>,
    path: Option<PathBuf>,
    cache_capacity_bytes: u64,
    /// Writers hold the read side for a whole operation; [`Store::recover`] takes the write
    /// side, and [`Store::export_backup`] too, but only for the instant its snapshot starts.
    quiesce: RwLock<()>,
    /// The old values writes replace while a backup runs (its copy-on-write snapshot).
    journal: Arc<backup::Journal>,
    /// Held by the one export running (the journal serves one snapshot at a time).
    exporting: std::sync::Mutex<()>,
    /// What the last [`Store::probe_write`] found.
    writable: std::sync::atomic::AtomicBool,
    /// Where the next incremental purges go on.
    purge_cursors: std::sync::Mutex<dedupe::PurgeCursors>,
}

/// The store. Cheap to clone: clones share one open database.
///
/// Calls block on disk I/O only on cache misses; [`Store::flush`] is the one call that waits
/// for the disk, and it is async.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the database in directory `path`, with a page cache of
    /// `cache_capacity_bytes`.
    ///
    /// A new database gets [`SCHEMA_VERSION`]. A database written by a newer build is refused
    /// with [`StoreError::SchemaTooNew`]; one held by another process with
    /// [`StoreError::Locked`].
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> Result<Store, StoreError> {
        let db = open_sled(path, cache_capacity_bytes)?;
        Self::from_db(Db::Sled(db), Some(path.to_path_buf()), cache_capacity_bytes)
    }

    /// [`Store::open`] for a database this process has just closed (after a restore, say):
    /// sled lets go of its file lock a moment after the last handle, so [`StoreError::Locked`]
    /// is tried again for up to 10 s instead of returned at once.
    pub fn open_closed(path: &Path, cache_capacity_bytes: u64) -> Result<Store, StoreError> {
        retry_locked(|| Store::open(path, cache_capacity_bytes))
    }

    /// Opens a store on a PostgreSQL database shared with other daemons, applying pending
    /// migrations first (under a lock: daemons starting together apply them once).
    pub fn open_postgres(opts: &PgOptions) -> Result<Store, StoreError> {
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
    pub fn open_temporary() -> Result<Store, StoreError> {
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

    fn from_db(
        db: Db,
        path: Option<PathBuf>,
        cache_capacity_bytes: u64,
    ) -> Result<Store, StoreError> {
        let journal = Arc::new(backup::Journal::default());
        let trees = Trees::open(&db, &journal)?;
        check_schema(&trees.meta)?;
        Ok(Store {
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

    /// Whether the store is shared with other daemons (PostgreSQL): the cue for work that
    /// must be coordinated through it (joined answers, leader-only jobs).
    #[must_use]
    pub fn is_shared(&self) -> bool {
        self.trees().is_ok_and(|open| matches!(open.db, Db::Pg(_)))
    }

    /// The engine's name, for logs and `/health`: `sled` or `postgres`.
    #[must_use]
    pub fn backend_name(&self) -> &'static str {
        if self.is_shared() { "postgres" } else { "sled" }
    }

    /// Whether the database takes writes: writes (and removes) a probe key. After an I/O
    /// failure (a full disk) sled refuses every write until it is reopened, so `false` here
    /// is the cue for [`Store::recover`].
    pub fn probe_write(&self) -> bool {
        let _writing = self.writing();
        let ok = self.trees().is_ok_and(|t| {
            t.meta.insert(PROBE_KEY, b"1".as_slice()).is_ok() && t.meta.remove(PROBE_KEY).is_ok()
        });
        self.inner
            .writable
            .store(ok, std::sync::atomic::Ordering::Relaxed);
        ok
    }

    /// What the last [`Store::probe_write`] found (`true` before any), without writing or
    /// waiting: for health checks, which must answer during a backup too.
    #[must_use]
    pub fn last_probe_ok(&self) -> bool {
        self.inner
            .writable
            .load(std::sync::atomic::Ordering::Relaxed)
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

    /// Waits until every write made so far is on disk.
    ///
    /// sled 0.34's own `flush_async` can deadlock when several are in flight at once
    /// (spacejam/sled#1308, fixed after its last release; our concurrent payment
    /// notifications hit it), so the flush runs synchronously on a helper thread and this
    /// future waits for it.
    ///
    /// Concurrent callers are grouped: one thread per database runs one flush for all the
    /// requests that arrived while the previous one ran (see [`flush_counts`]).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let open = self.trees()?;
        let Db::Sled(db) = open.db.clone() else {
            // PostgreSQL commits are durable when they return.
            return Ok(());
        };
        let grouped = open.lane.as_ref().and_then(|lane| lane.request_flush(&db));
        // Not held across the wait: a reopen after a storage failure waits for it.
        drop(open);
        if let Some(rx) = grouped {
            return rx.await;
        }
        let (tx, rx) = lane::channel();
        let for_thread = db.clone();
        let spawned = std::thread::Builder::new()
            .name("chatrelay-flush".into())
            .spawn(move || tx.send(db_flush(&for_thread)));
        match spawned {
            Ok(_) => rx.await,
            // No thread to be had: flush here rather than not at all.
            Err(_) => db_flush(&db),
        }
    }

    /// [`Store::flush`] for callers without an async runtime (tools, benchmarks): blocks
    /// until every write made so far is on disk.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        match &self.trees()?.db {
            Db::Sled(db) => db_flush(db),
            Db::Pg(_) => Ok(()),
        }
    }

    /// The database directory; `None` for a temporary store.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The open database; [`StoreError::Reopening`] while [`Store::recover`] reopens it.
    fn trees(&self) -> Result<Arc<Open>, StoreError> {
        self.inner
            .open
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .ok_or(StoreError::Reopening)
    }

    /// Runs `f` while every writer waits (writes in flight finish first), as the start of a
    /// backup or a reopening does: for tests of callers, which must not hold their own locks
    /// across a store call that may wait like this.
    #[doc(hidden)]
    pub fn with_writers_held<R>(&self, f: impl FnOnce() -> R) -> R {
        let _quiet = self
            .inner
            .quiesce
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f()
    }

    /// The quiesce lock's read side, held by a public writing method for its whole run.
    /// Poison-tolerant: the lock guards no data.
    fn writing(&self) -> RwLockReadGuard<'_, ()> {
        self.inner
            .quiesce
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The `meta` key [`Store::probe_write`] writes.
const PROBE_KEY: &[u8] = b"probe";

fn db_flush(db: &sled::Db) -> Result<(), StoreError> {
    db.flush().map(|_| ()).map_err(StoreError::from)
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
fn retry_locked<T>(mut open: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
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
fn map_open_error(err: sled::Error, path: &Path) -> StoreError {
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

/// Records the schema version in a new database; refuses one that is too new.
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
    // Versions older than SCHEMA_VERSION would be migrated here; 1 is the first.
    Ok(())
}

/// A schema name no other temporary store has: `t_<pid>_<counter>_<random>`.
fn temporary_schema() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut random = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    format!("t_{}_{n}_{}", std::process::id(), hex::encode(random))
}

/// Milliseconds since the Unix epoch, for records whose API takes no clock.
fn system_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {

    #[test]
    fn reopening_keeps_the_data_and_takes_writes_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 1 << 20).unwrap();
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
        let temporary = Store::from_db(Db::Sled(temporary), None, 0).unwrap();
        assert!(temporary.recover().is_err(), "nothing to reopen");
    }

    use super::*;

    #[test]
    fn new_db_gets_the_schema_version_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 1 << 20).unwrap();
            let raw = store
                .trees()
                .unwrap()
                .meta
                .get(SCHEMA_KEY)
                .unwrap()
                .unwrap();
            assert_eq!(&*raw, b"1");
            assert_eq!(store.path(), Some(dir.path()));
        }
        reopen(dir.path()).unwrap();
    }

    #[test]
    fn schema_too_new_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 1 << 20).unwrap();
            store
                .trees()
                .unwrap()
                .meta
                .insert(SCHEMA_KEY, b"2")
                .unwrap();
            store.flush_blocking().unwrap();
        }
        match reopen(dir.path()) {
            Err(StoreError::SchemaTooNew {
                found: 2,
                supported: 1,
            }) => {}
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }

    /// Opens a database the test just closed.
    fn reopen(path: &Path) -> Result<Store, StoreError> {
        Store::open_closed(path, 1 << 20)
    }

    #[test]
    fn corrupt_schema_version_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 1 << 20).unwrap();
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
        let _first = Store::open(dir.path(), 1 << 20).unwrap();
        match Store::open(dir.path(), 1 << 20) {
            Err(StoreError::Locked { path }) => assert_eq!(path, dir.path()),
            other => panic!("expected Locked, got {other:?}"),
        }
    }

    #[test]
    fn temporary_store_has_no_path() {
        let store = Store::open_temporary().unwrap();
        assert!(store.path().is_none());
        assert_eq!(format!("{}", Uid(12)), "12");
        assert_eq!("12".parse::<Uid>().unwrap(), Uid(12));
        assert_eq!(ReservationId(3).to_string(), "3");
    }

    #[test]
    fn flush_completes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
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
