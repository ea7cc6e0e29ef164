//! Copying a store of today's layout (sled, or the one-table PostgreSQL schema) into the
//! relational tables: the data side of `chatrelay migrate` (issue 21, item 5).
//!
//! A reader thread walks the source's trees (their calls block: they stay off the async
//! workers) and hands records over in batches of [`BATCH`] rows; each batch is one
//! multi-row `INSERT ... SELECT FROM unnest(...)` statement, so one round trip and one
//! transaction. Tables go in foreign-key order: users (each with its balance row), balances,
//! identities, ledger, reservations, orders, order events, tokens, login codes,
//! conversations and their turns, dedupe marks, answers, handoffs, outbox, checkpoints and
//! stats; then (`import/extras.rs`) users' and orders' membership plans, code batches and
//! codes, the usage log and the admin change log. Afterwards the identity sequences of
//! `users`, `reservations`, `order_events`, `code_batches` and `admin_changes` move past the
//! copied ids and past every id the source handed out.
//!
//! Kept as they are: uids, ledger seqs and references, reservation ids (open ones, and
//! settled ones with whether they charged: settling again answers the same), order ids,
//! statuses, times and events (with their ids), token hashes, conversations' turns in order,
//! outbox texts in order.
//!
//! Mapped:
//! - A settled reservation keeps no amount or expiry on sled: it becomes a `settled` row with
//!   amount 0 and its settling time as expiry (neither is read once settled).
//! - An order's waiting slot (sled's `open_orders` key `uid ‖ product \0 channel [\0 method
//!   [\0 id]]`) becomes `open_slot`, NULs as U+001F (PostgreSQL's text has no NUL); only an
//!   order still `created` holds one.
//! - `answers` records under `handoff:` become `handoffs` rows, the others `answers` rows.
//! - Checkpoints under `stats:` holding a number (what `add_counters` writes for the daily
//!   statistics) become `stats` rows; every other checkpoint a `checkpoints` row.
//! - A conversation's `updated_at_ms` is its newest turn's time.
//! - A code's row comes from its `code_hashes` entry and its `codes` record (the hash is
//!   all that identifies it).
//! - NUL in a change record's text (which PostgreSQL's text and jsonb cannot hold) becomes
//!   U+FFFD.
//!
//! Skipped (and counted in [`Imported::skipped_expired`]): dedupe marks, answers, handoffs
//! and login codes that expired by the start of the import. Nothing else is skipped: a
//! record that cannot be read stops the import with its tree and key.
//!
//! The target must be empty: an import into a schema holding users (or anything a daemon
//! writes), or one where an import started before, is refused; two stores are never
//! merged. A failed import leaves a partial schema: drop it and import again. The source
//! must not change meanwhile (the daemon stopped).

use std::cell::Cell;
use std::collections::HashMap;

use tokio::sync::mpsc;
use tokio_postgres::types::{ToSql, Type};

use super::{RelStore, amount, col, one};
use crate::census::{
    conversation_key, read_balance, read_entry, read_identity, read_login_code, read_mark,
    read_order, read_order_event, read_outbox, read_reservation, read_settled, read_token,
    read_user,
};
use crate::codec::{describe_bytes, split_u64_prefix};
use crate::dedupe::SharedAnswer;
use crate::kv::Tree;
use crate::quota::BalanceRecord;
use crate::tokens::TokenRecord;
use crate::{
    ANSWERS, CHECKPOINTS, KvStore, LedgerEntry, LoginCode, OPEN_ORDERS, Order, OrderEvent,
    OrderStatus, StoreError, Turn, Uid, User, system_now_ms,
};

mod extras;
mod write;

/// Rows per batch (one statement, one transaction).
pub(crate) const BATCH: usize = 2_000;

/// What [`RelStore::import_from`] copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Imported {
    /// Rows written per table, in the order written.
    pub(crate) tables: Vec<(&'static str, u64)>,
    /// Expired marks, answers, handoffs and login codes not copied.
    pub(crate) skipped_expired: u64,
    /// Batches written.
    pub(crate) batches: u64,
}

/// A reservation row: open, or settled (amount 0, expiry = settling time).
pub(crate) struct ReservationRow {
    pub(crate) id: u64,
    pub(crate) uid: Uid,
    pub(crate) amount: u64,
    pub(crate) reference: String,
    pub(crate) expires_at_ms: i64,
    pub(crate) settled_at_ms: Option<i64>,
    pub(crate) charged: bool,
}

/// An identity row: platform, account, the platform's user id, and its uid.
pub(crate) type IdentityRow = (String, String, String, Uid);

/// Records of one table, handed from the reader to the writer.
pub(crate) enum Batch {
    Users(Vec<User>),
    Balances(Vec<(Uid, BalanceRecord)>),
    Identities(Vec<IdentityRow>),
    Ledger(Vec<LedgerEntry>),
    Reservations(Vec<ReservationRow>),
    /// Each order with its waiting slot, if it holds one.
    Orders(Vec<(Order, Option<String>)>),
    /// Order id, event id, event.
    OrderEvents(Vec<(String, u64, OrderEvent)>),
    /// SHA-256 and record.
    Tokens(Vec<(Vec<u8>, TokenRecord)>),
    LoginCodes(Vec<LoginCode>),
    Conversations(Vec<(String, Vec<Turn>)>),
    /// Key, expiry, bound value.
    Marks(Vec<(String, i64, Option<String>)>),
    /// Key, text, expiry.
    Answers(Vec<(String, Option<String>, i64)>),
    /// Key (without `handoff:`), value, expiry.
    Handoffs(Vec<(String, String, i64)>),
    /// Key and its texts, oldest first.
    Outbox(Vec<(String, Vec<String>)>),
    Checkpoints(Vec<(String, String)>),
    Stats(Vec<(String, u64)>),
    /// A user's membership plan, onto their balance row.
    Plans(Vec<(Uid, crate::ActivePlan)>),
    /// An order's plan (order id, grant), onto the order.
    OrderPlans(Vec<(String, crate::PlanGrant)>),
    CodeBatches(Vec<crate::CodeBatch>),
    Codes(Vec<extras::CodeRow>),
    Usage(Vec<crate::UsageRecord>),
    Changes(Vec<crate::ChangeRecord>),
}

/// What the reader sends: batches, then the source's id floors.
enum Item {
    Batch(Batch),
    /// The end: expired records skipped, the source's next uid and an id above every id
    /// it generated.
    Done {
        skipped: u64,
        next_uid: u64,
        id_floor: u64,
    },
}

impl Batch {
    /// The table it fills (the first, for batches that fill two).
    fn table(&self) -> &'static str {
        match self {
            Batch::Users(_) => "users",
            Batch::Balances(_) => "balances",
            Batch::Identities(_) => "identities",
            Batch::Ledger(_) => "ledger",
            Batch::Reservations(_) => "reservations",
            Batch::Orders(_) => "orders",
            Batch::OrderEvents(_) => "order_events",
            Batch::Tokens(_) => "tokens",
            Batch::LoginCodes(_) => "login_codes",
            Batch::Conversations(_) => "conversations",
            Batch::Marks(_) => "dedupe",
            Batch::Answers(_) => "answers",
            Batch::Handoffs(_) => "handoffs",
            Batch::Outbox(_) => "outbox",
            Batch::Checkpoints(_) => "checkpoints",
            Batch::Stats(_) => "stats",
            Batch::Plans(_) => "balances (plans)",
            Batch::OrderPlans(_) => "orders (plans)",
            Batch::CodeBatches(_) => "code_batches",
            Batch::Codes(_) => "codes",
            Batch::Usage(_) => "usage",
            Batch::Changes(_) => "admin_changes",
        }
    }
}

/// $1 now (text). Whether the schema holds anything a daemon or an import writes.
const TARGET_STATE: &str = "SELECT
    EXISTS (SELECT 1 FROM users) OR EXISTS (SELECT 1 FROM ledger)
    OR EXISTS (SELECT 1 FROM orders) OR EXISTS (SELECT 1 FROM order_events)
    OR EXISTS (SELECT 1 FROM tokens) OR EXISTS (SELECT 1 FROM conversations)
    OR EXISTS (SELECT 1 FROM outbox) OR EXISTS (SELECT 1 FROM checkpoints)
    OR EXISTS (SELECT 1 FROM stats) OR EXISTS (SELECT 1 FROM code_batches)
    OR EXISTS (SELECT 1 FROM admin_changes) AS busy,
    (SELECT value FROM meta WHERE key = 'import_started_at_ms') AS started";

impl RelStore {
    /// Copies every record of `source` (today's layout) into these tables, which must be
    /// empty (see the module docs). `progress(table, rows)` is told the rows written to a
    /// table so far after each batch.
    pub(crate) async fn import_from(
        &self,
        source: &KvStore,
        mut progress: impl FnMut(&str, u64),
    ) -> Result<Imported, StoreError> {
        let now_ms = system_now_ms();
        self.claim_for_import(now_ms, &source_label(source)).await?;
        let (tx, mut rx) = mpsc::channel::<Result<Item, StoreError>>(2);
        let src = source.clone();
        std::thread::Builder::new()
            .name("chatrelay-import".into())
            .spawn(move || {
                let sink = Sink(tx);
                if let Err(e) = read_all(&src, now_ms, &sink) {
                    // Nobody listening any more: the import stopped first.
                    let _ = sink.0.blocking_send(Err(e));
                }
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the import's reader: {e}")))?;
        let mut report = Imported::default();
        let mut written: HashMap<&'static str, u64> = HashMap::new();
        loop {
            let Some(item) = rx.recv().await else {
                return Err(StoreError::Backend(
                    "the import's reader stopped without finishing".into(),
                ));
            };
            match item? {
                Item::Batch(batch) => {
                    let table = batch.table();
                    let rows = self.write_batch(batch).await?;
                    report.batches += 1;
                    let total = written.entry(table).or_default();
                    if *total == 0 {
                        report.tables.push((table, 0));
                    }
                    *total += rows;
                    if let Some(slot) = report.tables.iter_mut().find(|(t, _)| *t == table) {
                        slot.1 = *total;
                    }
                    progress(table, *total);
                }
                Item::Done {
                    skipped,
                    next_uid,
                    id_floor,
                } => {
                    self.finish_extras(id_floor).await?;
                    self.finish_import(next_uid, id_floor, now_ms).await?;
                    report.skipped_expired = skipped;
                    return Ok(report);
                }
            }
        }
    }

    /// Refuses a target that holds data or saw an import start; otherwise marks it as
    /// being imported into (the mark keeps a second import out, even of an empty source),
    /// with what it copies (`import_source`: `chatrelay_kv` or `sled:<dir>`), so that an
    /// interrupted import can be told apart and made again (`layout.rs`).
    async fn claim_for_import(&self, now_ms: i64, source: &str) -> Result<(), StoreError> {
        let rows = self.rows(TARGET_STATE, &[]).await?;
        let row = one(&rows)?;
        if col::<bool>(row, "busy")? {
            return Err(StoreError::InvalidInput(
                "the relational schema already holds data (users, orders, ...); an import \
                 never merges two stores: import into a new schema"
                    .into(),
            ));
        }
        let claim = self
            .rows(
                "WITH claim AS (
                     INSERT INTO meta (key, value) VALUES ('import_started_at_ms', $1)
                     ON CONFLICT (key) DO NOTHING RETURNING 1),
                 source AS (
                     INSERT INTO meta (key, value) SELECT 'import_source', $2 FROM claim
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value)
                 SELECT 1 FROM claim",
                &[
                    (&now_ms.to_string(), Type::TEXT),
                    (&source.to_owned(), Type::TEXT),
                ],
            )
            .await?;
        if claim.is_empty() {
            let started: Option<String> = col(row, "started")?;
            return Err(StoreError::InvalidInput(format!(
                "an import into this schema started before (at {} ms); if it failed, drop \
                 the schema and import again",
                started.unwrap_or_else(|| "?".into())
            )));
        }
        Ok(())
    }

    /// Moves the identity sequences past the copied ids and the source's, and notes the
    /// import as done.
    async fn finish_import(
        &self,
        next_uid: u64,
        id_floor: u64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let last_uid = amount(next_uid.saturating_sub(1))?;
        let floor = amount(id_floor)?;
        let params: [(&(dyn ToSql + Sync), Type); 3] = [
            (&last_uid, Type::INT8),
            (&floor, Type::INT8),
            (&now_ms.to_string(), Type::TEXT),
        ];
        self.rows(
            "WITH u AS (SELECT setval(pg_get_serial_sequence('users', 'uid'),
                           GREATEST((SELECT COALESCE(max(uid), 0) FROM users), $1, 1))),
                  r AS (SELECT setval(pg_get_serial_sequence('reservations', 'id'),
                           GREATEST((SELECT COALESCE(max(id), 0) FROM reservations), $2, 1))),
                  e AS (SELECT setval(pg_get_serial_sequence('order_events', 'id'),
                           GREATEST((SELECT COALESCE(max(id), 0) FROM order_events), $2, 1))),
                  m AS (INSERT INTO meta (key, value) VALUES ('imported_at_ms', $3)
                        ON CONFLICT (key) DO UPDATE SET value = excluded.value)
             SELECT (SELECT * FROM u), (SELECT * FROM r), (SELECT * FROM e)",
            &params,
        )
        .await?;
        Ok(())
    }
}

/// What an import copies, as `meta.import_source` says it: `chatrelay_kv` (the one-table
/// PostgreSQL layout) or `sled:<dir>`.
fn source_label(source: &KvStore) -> String {
    if source.is_shared() {
        return super::layout::SOURCE_KV.to_owned();
    }
    match source.path() {
        Some(path) => format!("sled:{}", path.display()),
        None => "sled:(temporary)".to_owned(),
    }
}

/// The reader's end of the channel.
struct Sink(mpsc::Sender<Result<Item, StoreError>>);

impl Sink {
    fn send(&self, item: Item) -> Result<(), StoreError> {
        self.0
            .blocking_send(Ok(item))
            .map_err(|_| StoreError::Backend("the import stopped".into()))
    }
}

/// What a reader makes of one record: a row, or nothing (not for this table, or expired).
type Read<T> = Result<Option<T>, StoreError>;

/// Walks the pairs of `pairs`, reading each record with `read` and sending full batches
/// made by `wrap`.
fn walk<T>(
    pairs: crate::kv::KvIter,
    sink: &Sink,
    mut read: impl FnMut(&[u8], &[u8]) -> Read<T>,
    wrap: impl Fn(Vec<T>) -> Batch,
) -> Result<(), StoreError> {
    let mut rows = Vec::with_capacity(BATCH);
    for item in pairs {
        let (key, raw) = item?;
        if let Some(row) = read(&key, &raw)? {
            rows.push(row);
        }
        if rows.len() == BATCH {
            sink.send(Item::Batch(wrap(std::mem::take(&mut rows))))?;
        }
    }
    if !rows.is_empty() {
        sink.send(Item::Batch(wrap(rows)))?;
    }
    Ok(())
}

/// `Some(row)` if the record is live at `now_ms`; otherwise counts it in `skipped`.
fn live<T>(row: T, expires_at_ms: i64, now_ms: i64, skipped: &Cell<u64>) -> Option<T> {
    if expires_at_ms > now_ms {
        Some(row)
    } else {
        skipped.set(skipped.get() + 1);
        None
    }
}

/// Reads every tree of `store` in foreign-key order and sends it down `sink`.
fn read_all(store: &KvStore, now_ms: i64, sink: &Sink) -> Result<(), StoreError> {
    let skipped = Cell::new(0);
    read_users(store, sink)?;
    read_reservations(store, sink)?;
    read_orders(store, sink)?;
    read_auth(store, now_ms, &skipped, sink)?;
    read_engine_records(store, now_ms, &skipped, sink)?;
    extras::read(store, sink)?;
    let t = store.trees()?;
    let next_uid = match t.meta.get(b"next_uid")? {
        Some(raw) => crate::codec::decode::<u64>(crate::META, &raw, || "next_uid".into())?,
        None => 1,
    };
    let id_floor = t.db.generate_id()?.saturating_add(1);
    sink.send(Item::Done {
        skipped: skipped.get(),
        next_uid,
        id_floor,
    })
}

/// Users, balances, identities and the ledger.
fn read_users(store: &KvStore, sink: &Sink) -> Result<(), StoreError> {
    let t = store.trees()?;
    walk(
        t.users.iter(),
        sink,
        |k, v| read_user(k, v).map(Some),
        Batch::Users,
    )?;
    walk(
        t.balances.iter(),
        sink,
        |k, v| Ok(Some((read_uid(k)?, read_balance(k, v)?))),
        Batch::Balances,
    )?;
    walk(
        t.identities.iter(),
        sink,
        |k, v| {
            let (key, uid) = read_identity(k, v)?;
            Ok(Some((
                key.platform.as_str().to_owned(),
                key.account,
                key.user,
                uid,
            )))
        },
        Batch::Identities,
    )?;
    walk(
        t.ledger.iter(),
        sink,
        |k, v| read_entry(k, v).map(Some),
        Batch::Ledger,
    )
}

/// Tokens and live login codes.
fn read_auth(
    store: &KvStore,
    now_ms: i64,
    skipped: &Cell<u64>,
    sink: &Sink,
) -> Result<(), StoreError> {
    let t = store.trees()?;
    walk(
        t.tokens.iter(),
        sink,
        |k, v| Ok(Some((k.to_vec(), read_token(k, v)?))),
        Batch::Tokens,
    )?;
    walk(
        t.login_codes.iter(),
        sink,
        |k, v| {
            let code = read_login_code(k, v)?;
            let expires = code.expires_at_ms;
            Ok(live(code, expires, now_ms, skipped))
        },
        Batch::LoginCodes,
    )
}

/// Conversations, live marks, answers and handoffs, the outbox, checkpoints and stats.
fn read_engine_records(
    store: &KvStore,
    now_ms: i64,
    skipped: &Cell<u64>,
    sink: &Sink,
) -> Result<(), StoreError> {
    let t = store.trees()?;
    walk(
        t.conversations.iter(),
        sink,
        |k, _| {
            let key = conversation_key(k)?;
            let turns = store.conversation(&key)?;
            Ok((!turns.is_empty()).then_some((key, turns)))
        },
        Batch::Conversations,
    )?;
    walk(
        t.dedupe.iter(),
        sink,
        |k, v| {
            let (expires, bound) = read_mark(k, v)?;
            Ok(live(
                (text_key(k), expires, bound),
                expires,
                now_ms,
                skipped,
            ))
        },
        Batch::Marks,
    )?;
    read_answers(&t.answers, now_ms, skipped, sink)?;
    walk(
        t.outbox.iter(),
        sink,
        |k, v| Ok(Some((text_key(k), read_outbox(k, v)?))),
        Batch::Outbox,
    )?;
    walk(
        t.checkpoints.iter(),
        sink,
        |k, v| Ok(checkpoint(k, v)?.filter(|(key, value)| counter(key, value).is_none())),
        Batch::Checkpoints,
    )?;
    walk(
        t.checkpoints.scan_prefix(STATS_PREFIX),
        sink,
        |k, v| {
            Ok(checkpoint(k, v)?
                .and_then(|(key, value)| Some((key.clone(), counter(&key, &value)?))))
        },
        Batch::Stats,
    )
}

/// Open and settled reservations, as one table.
fn read_reservations(store: &KvStore, sink: &Sink) -> Result<(), StoreError> {
    let t = store.trees()?;
    walk(
        t.reservations.iter(),
        sink,
        |k, v| {
            let (id, r) = read_reservation(k, v)?;
            Ok(Some(ReservationRow {
                id: id.0,
                uid: r.uid,
                amount: r.amount,
                reference: r.reference,
                expires_at_ms: r.expires_at_ms,
                settled_at_ms: None,
                charged: false,
            }))
        },
        Batch::Reservations,
    )?;
    walk(
        t.settled_reservations.iter(),
        sink,
        |k, v| {
            let (id, s) = read_settled(k, v)?;
            Ok(Some(ReservationRow {
                id: id.0,
                uid: s.uid,
                amount: 0,
                reference: s.reference,
                expires_at_ms: s.settled_at_ms,
                settled_at_ms: Some(s.settled_at_ms),
                charged: s.entry.is_some(),
            }))
        },
        Batch::Reservations,
    )
}

/// Orders with their waiting slots, then their events.
fn read_orders(store: &KvStore, sink: &Sink) -> Result<(), StoreError> {
    let t = store.trees()?;
    let slots = open_slots(&t.open_orders)?;
    walk(
        t.orders.iter(),
        sink,
        |k, v| {
            let order = read_order(k, v)?;
            let slot = match order.status {
                OrderStatus::Created => slots.get(&order.id).cloned(),
                _ => None,
            };
            Ok(Some((order, slot)))
        },
        Batch::Orders,
    )?;
    walk(
        t.order_events.iter(),
        sink,
        |k, v| read_order_event(k, v).map(Some),
        Batch::OrderEvents,
    )
}

/// Order id → its waiting slot, from `open_orders` (key `uid ‖ slot`, value the order id).
fn open_slots(tree: &Tree) -> Result<HashMap<String, String>, StoreError> {
    let mut slots = HashMap::new();
    for item in tree.iter() {
        let (key, raw) = item?;
        let (_, slot) = split_u64_prefix(OPEN_ORDERS, &key)?;
        let id: String = crate::codec::decode(OPEN_ORDERS, &raw, || describe_bytes(&key))?;
        slots.insert(id, slot_text(slot)?);
    }
    Ok(slots)
}

/// A sled order slot as `open_slot` text: U+001F for each NUL.
pub(crate) fn slot_text(slot: &[u8]) -> Result<String, StoreError> {
    let text = std::str::from_utf8(slot)
        .map_err(|_| StoreError::corrupt(OPEN_ORDERS, describe_bytes(slot), "not UTF-8"))?;
    Ok(text.replace('\0', "\u{1f}"))
}

/// Kept answers and handoff records (which share the `answers` tree), live ones only.
fn read_answers(
    tree: &Tree,
    now_ms: i64,
    skipped: &Cell<u64>,
    sink: &Sink,
) -> Result<(), StoreError> {
    let read = |k: &[u8], v: &[u8]| -> Read<(String, SharedAnswer)> {
        let answer: SharedAnswer = crate::codec::decode(ANSWERS, v, || describe_bytes(k))?;
        let expires = answer.expires_at_ms;
        Ok(live((text_key(k), answer), expires, now_ms, skipped))
    };
    walk(
        tree.iter(),
        sink,
        |k, v| {
            if k.starts_with(HANDOFF_PREFIX) {
                return Ok(None);
            }
            Ok(read(k, v)?.map(|(key, a)| (key, a.text, a.expires_at_ms)))
        },
        Batch::Answers,
    )?;
    walk(
        tree.scan_prefix(HANDOFF_PREFIX),
        sink,
        |k, v| {
            let Some((key, answer)) = read(k, v)? else {
                return Ok(None);
            };
            let key = key.strip_prefix("handoff:").unwrap_or(&key).to_owned();
            // A handoff always holds a value; one without is as good as gone.
            Ok(answer.text.map(|value| (key, value, answer.expires_at_ms)))
        },
        Batch::Handoffs,
    )
}

/// The `answers` keys of handoff records.
const HANDOFF_PREFIX: &[u8] = b"handoff:";

/// The checkpoint keys of the daily statistics (`src/stats.rs`).
const STATS_PREFIX: &[u8] = b"stats:";

/// A checkpoint as text.
fn checkpoint(k: &[u8], v: &[u8]) -> Read<(String, String)> {
    let key = String::from_utf8(k.to_vec())
        .map_err(|_| StoreError::corrupt(CHECKPOINTS, describe_bytes(k), "key not UTF-8"))?;
    let value = String::from_utf8(v.to_vec())
        .map_err(|e| StoreError::corrupt(CHECKPOINTS, key.clone(), e))?;
    Ok(Some((key, value)))
}

/// The count of a statistics checkpoint (`stats:` and a number): a `stats` row.
fn counter(key: &str, value: &str) -> Option<u64> {
    if !key.as_bytes().starts_with(STATS_PREFIX) {
        return None;
    }
    value
        .parse::<u64>()
        .ok()
        .filter(|n| i64::try_from(*n).is_ok())
}

/// A uid key.
fn read_uid(key: &[u8]) -> Result<Uid, StoreError> {
    crate::codec::read_u64_key(crate::BALANCES, key).map(Uid)
}

/// A text key (the engine's keys are text; anything else is shown escaped).
fn text_key(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}
