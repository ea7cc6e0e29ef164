//! chatrelay's embedded store: the only crate that knows sled.
//!
//! It owns every durable record of the daemon and exposes them through [`KvStore`], a small typed
//! API that sled could be swapped out behind (redb), or a shared backend (PostgreSQL) added to.
//!
//! # Layout
//! - `lib.rs`: [`KvStore`] (its trees, flush, the write guard), [`Uid`], [`ReservationId`].
//! - `open.rs`: opening a store (sled, PostgreSQL, temporary), the schema version check,
//!   reopening after a storage failure.
//! - `error.rs`: [`StoreError`].
//! - `codec.rs`: big-endian integer keys, serde_json values and the compact binary codec
//!   (varints, versioned values read beside older JSON), transaction plumbing.
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
//! Values are JSON except the six money trees from `balances` to `settled_reservations` (and
//! `usage`), which are compact binary, a format byte first, written on every credit change;
//! their older JSON values still read (`quota/value.rs`).
//!
//! # Rules kept throughout
//! - Every change of a balance writes its ledger entry in the same sled transaction, and is
//!   idempotent on its reference string.
//! - Transactions touch known keys only (sled has no scans inside them) and have no side effects
//!   (their closures may run more than once).
//! - A record that cannot be read is a [`StoreError::Corrupt`] naming tree and key, never a panic.
//! - Writes are durable only after [`KvStore::flush`] (or a step run with
//!   [`KvStore::on_lane_durable`]); call it before acknowledging a payment.
//! - Every public method that writes holds the quiesce lock's read side for its whole run
//!   ([`KvStore::export_backup`] takes the write side for the instant its snapshot starts, so a
//!   backup sees whole operations only). Such methods never call one another (a nested read
//!   guard could deadlock with a waiting exporter).
//! - Every write goes through `kv` (`Tree`, `TxTree`), which keeps the value it replaces in the
//!   backup journal while an export runs: writers never wait for a backup.

#![warn(missing_docs)]

pub mod error;
mod facade;

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
mod open;
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
pub use facade::Store;
pub use kv::pg::{MIGRATIONS, MigrationReport, PgOptions};
pub use lane::{flush_counts, lane_counts};
pub use login::{
    LOGIN_CODE_ALPHABET, LOGIN_CODE_CHARS, LoginCode, display_login_code, normalize_login_code,
};
pub use open::test_pg_options;
pub use orders::{CreditOutcome, Order, OrderEvent, OrderStatus, purchase_reference};
pub use plans::{ActivePlan, PlanGrant, after_grant, after_refund, date_of_day};
pub use quota::{Balance, EntryKind, LedgerEntry, Remember};
pub use rel::statement_count;
pub use rel::{InPlaceReport, RelCopyReport, copy_into_relational, migrate_postgres_in_place};
pub use shared::{CopyReport, Leadership};
pub use tokens::{TOKEN_PREFIX, TokenInfo};
pub use usage::{
    MAX_USAGE_PAGE, UsageCursor, UsageNote, UsageOutcome, UsagePage, UsagePurge, UsageRecord,
};
pub use users::{Admission, AdmittedReads, User, UserActivity};

use kv::{Db, Tree};

/// The on-disk schema this build writes. A database with a newer version is refused; an
/// older one is upgraded when opened ([`KvStore::open`]).
///
/// - 1: the first layout (every value JSON but the usage log's).
/// - 2: the money records (ledger, its references, balances, reservations) in compact binary
///   (`quota/value.rs`). Version 1 values still read, so the upgrade rewrites nothing; the
///   number is raised so that an older build, which cannot read them, refuses the store
///   instead of failing on its first balance.
pub const SCHEMA_VERSION: u32 = 2;

/// A position in a newest-first listing keyed by time and id (the usage log, the change log):
/// the records strictly before it (older) come next.
///
/// Text form `AT_MS-ID` (what a page's `next` gives); a bare `AT_MS` means "before that time".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeCursor {
    /// The time part.
    pub at_ms: i64,
    /// The id part (0: before every record of that millisecond).
    pub id: u64,
}

impl fmt::Display for TimeCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.at_ms, self.id)
    }
}

impl FromStr for TimeCursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a cursor (AT_MS or AT_MS-ID)");
        let (at, id) = match s.split_once('-') {
            Some((at, id)) => (at, id.parse::<u64>().map_err(|_| bad())?),
            None => (s, 0),
        };
        let at_ms = at.parse::<i64>().map_err(|_| bad())?;
        if at_ms < 0 {
            return Err(bad());
        }
        Ok(TimeCursor { at_ms, id })
    }
}

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

/// The id of a credit reservation made by [`KvStore::reserve`].
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
    /// `None` only while [`KvStore::recover`] reopens the database.
    open: RwLock<Option<Arc<Open>>>,
    path: Option<PathBuf>,
    cache_capacity_bytes: u64,
    /// Writers hold the read side for a whole operation; [`KvStore::recover`] takes the write
    /// side, and [`KvStore::export_backup`] too, but only for the instant its snapshot starts.
    quiesce: RwLock<()>,
    /// The old values writes replace while a backup runs (its copy-on-write snapshot).
    journal: Arc<backup::Journal>,
    /// Held by the one export running (the journal serves one snapshot at a time).
    exporting: std::sync::Mutex<()>,
    /// What the last [`KvStore::probe_write`] found.
    writable: std::sync::atomic::AtomicBool,
    /// Where the next incremental purges go on.
    purge_cursors: std::sync::Mutex<dedupe::PurgeCursors>,
}

/// The store. Cheap to clone: clones share one open database.
///
/// Calls block on disk I/O only on cache misses; [`KvStore::flush`] is the one call that waits
/// for the disk, and it is async.
#[derive(Clone)]
pub struct KvStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for KvStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl KvStore {
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
    /// is the cue for [`KvStore::recover`].
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

    /// What the last [`KvStore::probe_write`] found (`true` before any), without writing or
    /// waiting: for health checks, which must answer during a backup too.
    #[must_use]
    pub fn last_probe_ok(&self) -> bool {
        self.inner
            .writable
            .load(std::sync::atomic::Ordering::Relaxed)
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

    /// [`KvStore::flush`] for callers without an async runtime (tools, benchmarks): blocks
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

    /// The open database; [`StoreError::Reopening`] while [`KvStore::recover`] reopens it.
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

/// The `meta` key [`KvStore::probe_write`] writes.
const PROBE_KEY: &[u8] = b"probe";

fn db_flush(db: &sled::Db) -> Result<(), StoreError> {
    db.flush().map(|_| ()).map_err(StoreError::from)
}

/// Milliseconds since the Unix epoch, for records whose API takes no clock.
fn system_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
