//! The census of a store: what a migration must find the same on both sides before the old
//! data may go (issue 21, item 5). Users, identities, tokens, live login codes, balance sums,
//! ledger count and sums, open reservations, orders per status with their fen, order events,
//! conversations and their turns, outbox texts, checkpoints and the usage log.
//!
//! [`KvStore::census`] counts today's layout (sled, or the one-table PostgreSQL schema) through
//! the tree API; `RelStore::census` (`rel/census.rs`) counts the relational tables in SQL.
//! This file also holds the readers of today's records that the import into the relational
//! tables (`rel/import.rs`) shares, so that both read each record the same way: through the
//! record's own type and decode function, never a second copy of its format.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, RandomState};

use chatrelay_core::UserKey;
use serde::Serialize;

use crate::codec::{decode, describe_bytes, read_pair_key, read_u64_key};
use crate::dedupe::Mark;
use crate::quota::{BalanceRecord, Reservation, SettledReservation};
use crate::tokens::TokenRecord;
use crate::{
    BALANCES, DEDUPE, IDENTITIES, KvStore, LEDGER, LOGIN_CODES, LedgerEntry, LoginCode,
    ORDER_EVENTS, ORDERS, OUTBOX, Order, OrderEvent, OrderStatus, RESERVATIONS, ReservationId,
    SETTLED_RESERVATIONS, StoreError, TOKENS, USERS, Uid, User,
};

/// The orders of one status: how many, and their amounts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OrderTally {
    /// Orders.
    pub count: u64,
    /// The sum of their `amount_fen`.
    pub amount_fen: i128,
}

/// What a store holds, in counts and sums (see the module docs). Two stores holding the
/// same data have equal censuses; [`Census::differences`] names what differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Census {
    /// Users.
    pub users: u64,
    /// Identities (platform accounts) of users.
    pub identities: u64,
    /// API tokens (revoked and expired ones too).
    pub tokens: u64,
    /// Login codes live at the census's time.
    pub login_codes_live: u64,
    /// The sum of every user's paid credits.
    pub paid_sum: u128,
    /// The sum of every user's held credits.
    pub held_sum: u128,
    /// Ledger entries.
    pub ledger_entries: u64,
    /// The sum of the entries' `free_delta`.
    pub ledger_free_delta_sum: i128,
    /// The sum of the entries' `paid_delta`.
    pub ledger_paid_delta_sum: i128,
    /// Distinct references among the entries (equal to the entries when each has its own).
    pub ledger_references: u64,
    /// Open (unsettled) reservations.
    pub open_reservations: u64,
    /// The credits they hold.
    pub open_reserved_sum: u128,
    /// Orders per status (`created`, `credited`, `closed`, `refunded`: all four, always).
    pub orders: BTreeMap<String, OrderTally>,
    /// Order events.
    pub order_events: u64,
    /// Conversations with at least one turn.
    pub conversations: u64,
    /// Their turns.
    pub turns: u64,
    /// Texts waiting in the outbox.
    pub outbox_texts: u64,
    /// Checkpoints (the relational store's `stats` counters included).
    pub checkpoints: u64,
    /// Batches of redemption codes.
    pub code_batches: u64,
    /// Redemption codes (any state).
    pub codes: u64,
    /// Usage log records.
    pub usage_records: u64,
    /// The credits they say were charged (free + paid + plan).
    pub usage_charged_sum: u128,
}

impl Default for Census {
    fn default() -> Self {
        let orders = [
            OrderStatus::Created,
            OrderStatus::Credited,
            OrderStatus::Closed,
            OrderStatus::Refunded,
        ]
        .into_iter()
        .map(|s| (s.as_str().to_owned(), OrderTally::default()))
        .collect();
        Census {
            users: 0,
            identities: 0,
            tokens: 0,
            login_codes_live: 0,
            paid_sum: 0,
            held_sum: 0,
            ledger_entries: 0,
            ledger_free_delta_sum: 0,
            ledger_paid_delta_sum: 0,
            ledger_references: 0,
            open_reservations: 0,
            open_reserved_sum: 0,
            orders,
            order_events: 0,
            conversations: 0,
            turns: 0,
            outbox_texts: 0,
            checkpoints: 0,
            code_batches: 0,
            codes: 0,
            usage_records: 0,
            usage_charged_sum: 0,
        }
    }
}

impl Census {
    /// Every figure as (label, value), in a fixed order: what [`fmt::Display`] prints and
    /// [`Census::differences`] compares.
    fn rows(&self) -> Vec<(String, String)> {
        let mut rows: Vec<(String, String)> = [
            ("users", self.users.to_string()),
            ("identities", self.identities.to_string()),
            ("tokens", self.tokens.to_string()),
            ("login codes live", self.login_codes_live.to_string()),
            ("paid credits (sum)", self.paid_sum.to_string()),
            ("held credits (sum)", self.held_sum.to_string()),
            ("ledger entries", self.ledger_entries.to_string()),
            (
                "ledger free_delta (sum)",
                self.ledger_free_delta_sum.to_string(),
            ),
            (
                "ledger paid_delta (sum)",
                self.ledger_paid_delta_sum.to_string(),
            ),
            ("ledger references", self.ledger_references.to_string()),
            ("open reservations", self.open_reservations.to_string()),
            (
                "open reservations (credits)",
                self.open_reserved_sum.to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (status, tally) in &self.orders {
            rows.push((format!("orders {status}"), tally.count.to_string()));
            rows.push((
                format!("orders {status} (fen)"),
                tally.amount_fen.to_string(),
            ));
        }
        for (k, v) in [
            ("order events", self.order_events),
            ("conversations", self.conversations),
            ("turns", self.turns),
            ("outbox texts", self.outbox_texts),
            ("checkpoints", self.checkpoints),
            ("code batches", self.code_batches),
            ("codes", self.codes),
            ("usage records", self.usage_records),
        ] {
            rows.push((k.to_owned(), v.to_string()));
        }
        rows.push((
            "usage credits (sum)".to_owned(),
            self.usage_charged_sum.to_string(),
        ));
        rows
    }

    /// Every figure that differs from `other`'s, as `label: mine ≠ other's`; empty when the
    /// censuses are equal.
    #[must_use]
    pub fn differences(&self, other: &Census) -> Vec<String> {
        let theirs: BTreeMap<String, String> = other.rows().into_iter().collect();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for (label, mine) in self.rows() {
            let other_value = theirs.get(&label).map_or("-", String::as_str);
            if mine != other_value {
                out.push(format!("{label}: {mine} ≠ {other_value}"));
            }
            seen.insert(label);
        }
        for (label, value) in &theirs {
            if !seen.contains(label) {
                out.push(format!("{label}: - ≠ {value}"));
            }
        }
        out
    }
}

impl fmt::Display for Census {
    /// One figure per line, labels aligned: `users ........ 12`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = self.rows();
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        for (label, value) in rows {
            writeln!(f, "{label:<width$}  {value:>20}")?;
        }
        Ok(())
    }
}

/// Counts distinct references in little memory (8 bytes a reference): a hash collision
/// could only make the count smaller, which shows as a difference, never hides one.
struct DistinctRefs {
    hasher: RandomState,
    seen: HashSet<u64>,
}

impl DistinctRefs {
    fn new() -> Self {
        DistinctRefs {
            hasher: RandomState::new(),
            seen: HashSet::new(),
        }
    }

    fn add(&mut self, reference: &str) {
        self.seen.insert(self.hasher.hash_one(reference));
    }
}

impl KvStore {
    /// The census of this store (today's layout), with login codes counted live at `now_ms`.
    ///
    /// It walks the trees one after the other, not in one snapshot: take it while nothing
    /// writes (a migration runs with the daemon stopped).
    pub fn census(&self, now_ms: i64) -> Result<Census, StoreError> {
        let t = self.trees()?;
        let mut c = Census {
            users: count(t.users.len()?),
            identities: count(t.identities.len()?),
            tokens: count(t.tokens.len()?),
            order_events: count(t.order_events.len()?),
            checkpoints: count(t.checkpoints.len()?),
            code_batches: count(t.code_batches.len()?),
            codes: count(t.codes.len()?),
            ..Census::default()
        };
        for item in t.login_codes.iter() {
            let (key, raw) = item?;
            if read_login_code(&key, &raw)?.expires_at_ms > now_ms {
                c.login_codes_live += 1;
            }
        }
        for item in t.balances.iter() {
            let (key, raw) = item?;
            let b = read_balance(&key, &raw)?;
            c.paid_sum += u128::from(b.paid);
            c.held_sum += u128::from(b.held);
        }
        let mut refs = DistinctRefs::new();
        for item in t.ledger.iter() {
            let (key, raw) = item?;
            let e = read_entry(&key, &raw)?;
            c.ledger_entries += 1;
            c.ledger_free_delta_sum += i128::from(e.free_delta);
            c.ledger_paid_delta_sum += i128::from(e.paid_delta);
            refs.add(&e.reference);
        }
        c.ledger_references = count(refs.seen.len());
        drop(refs);
        for item in t.reservations.iter() {
            let (key, raw) = item?;
            let (_, r) = read_reservation(&key, &raw)?;
            c.open_reservations += 1;
            c.open_reserved_sum += u128::from(r.amount);
        }
        for item in t.orders.iter() {
            let (key, raw) = item?;
            let order = read_order(&key, &raw)?;
            let tally = c
                .orders
                .entry(order.status.as_str().to_owned())
                .or_default();
            tally.count += 1;
            tally.amount_fen += i128::from(order.amount_fen);
        }
        for item in t.conversations.iter() {
            let (key, _) = item?;
            let turns = self.conversation(&conversation_key(&key)?)?.len();
            if turns > 0 {
                c.conversations += 1;
                c.turns += count(turns);
            }
        }
        for item in t.outbox.iter() {
            let (key, raw) = item?;
            c.outbox_texts += count(read_outbox(&key, &raw)?.len());
        }
        for item in t.usage.iter() {
            let (key, raw) = item?;
            c.usage_records += 1;
            c.usage_charged_sum += u128::from(crate::usage::read_record(&key, &raw)?.charged());
        }
        Ok(c)
    }
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

// Readers of today's records, shared with the import (`rel/import.rs`). Each takes a
// record's raw key and value and reads them through the record's own type.

/// A `users` record.
pub(crate) fn read_user(key: &[u8], raw: &[u8]) -> Result<User, StoreError> {
    let uid = read_u64_key(USERS, key)?;
    decode(USERS, raw, || uid.to_string())
}

/// An identity: the user key (the key's text) and its uid.
pub(crate) fn read_identity(key: &[u8], raw: &[u8]) -> Result<(UserKey, Uid), StoreError> {
    let text = std::str::from_utf8(key)
        .map_err(|_| StoreError::corrupt(IDENTITIES, describe_bytes(key), "not UTF-8"))?;
    let user_key = text
        .parse::<UserKey>()
        .map_err(|e| StoreError::corrupt(IDENTITIES, text, e))?;
    Ok((user_key, decode(IDENTITIES, raw, || text.to_owned())?))
}

/// A `balances` record.
pub(crate) fn read_balance(key: &[u8], raw: &[u8]) -> Result<BalanceRecord, StoreError> {
    let uid = read_u64_key(BALANCES, key)?;
    crate::quota::value::read_balance(uid, raw)
}

/// A `ledger` entry.
pub(crate) fn read_entry(key: &[u8], raw: &[u8]) -> Result<LedgerEntry, StoreError> {
    let (uid, seq) = read_pair_key(LEDGER, key)?;
    crate::quota::value::read_entry(uid, seq, raw)
}

/// An open reservation.
pub(crate) fn read_reservation(
    key: &[u8],
    raw: &[u8],
) -> Result<(ReservationId, Reservation), StoreError> {
    let id = ReservationId(read_u64_key(RESERVATIONS, key)?);
    Ok((id, crate::quota::value::read_reservation(id, raw)?))
}

/// A settled reservation (what settled it).
pub(crate) fn read_settled(
    key: &[u8],
    raw: &[u8],
) -> Result<(ReservationId, SettledReservation), StoreError> {
    let id = ReservationId(read_u64_key(SETTLED_RESERVATIONS, key)?);
    Ok((id, crate::quota::value::read_settled(id, raw)?))
}

/// An order.
pub(crate) fn read_order(key: &[u8], raw: &[u8]) -> Result<Order, StoreError> {
    decode(ORDERS, raw, || describe_bytes(key))
}

/// An order event, with its order's id and its id (key: order id ‖ 0 ‖ be u64).
pub(crate) fn read_order_event(
    key: &[u8],
    raw: &[u8],
) -> Result<(String, u64, OrderEvent), StoreError> {
    let bad = |why: &str| StoreError::corrupt(ORDER_EVENTS, describe_bytes(key), why);
    let Some((head, id)) = key.split_last_chunk::<8>() else {
        return Err(bad("key shorter than 9 bytes"));
    };
    let Some((0, order)) = head.split_last() else {
        return Err(bad("no NUL before the event id"));
    };
    let order = String::from_utf8(order.to_vec()).map_err(|_| bad("order id not UTF-8"))?;
    let event = decode(ORDER_EVENTS, raw, || describe_bytes(key))?;
    Ok((order, u64::from_be_bytes(*id), event))
}

/// A token: its SHA-256 (the key) and its record.
pub(crate) fn read_token(key: &[u8], raw: &[u8]) -> Result<TokenRecord, StoreError> {
    decode(TOKENS, raw, || hex::encode(key))
}

/// A login code.
pub(crate) fn read_login_code(key: &[u8], raw: &[u8]) -> Result<LoginCode, StoreError> {
    decode(LOGIN_CODES, raw, || describe_bytes(key))
}

/// A dedupe mark: its expiry and what it is bound to, if anything.
pub(crate) fn read_mark(key: &[u8], raw: &[u8]) -> Result<(i64, Option<String>), StoreError> {
    let mark: Mark = decode(DEDUPE, raw, || describe_bytes(key))?;
    let expires = mark.expires_at_ms();
    Ok(match mark {
        Mark::Plain(_) => (expires, None),
        Mark::Bound { bound, .. } => (expires, Some(bound)),
    })
}

/// The texts waiting in an outbox record, oldest first.
pub(crate) fn read_outbox(key: &[u8], raw: &[u8]) -> Result<Vec<String>, StoreError> {
    decode(OUTBOX, raw, || describe_bytes(key))
}

/// A conversation's key as text (the engine's keys are text).
pub(crate) fn conversation_key(key: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(key.to_vec())
        .map_err(|_| StoreError::corrupt(crate::CONVERSATIONS, describe_bytes(key), "not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EntryKind;

    #[test]
    fn counts_what_the_store_holds_and_names_differences() {
        let store = KvStore::open_temporary().unwrap();
        let empty = store.census(0).unwrap();
        assert_eq!(empty, Census::default());
        let a = store.create_user("a").unwrap().uid;
        store
            .grant(a, 100, EntryKind::Grant, "gift", "g1", 1)
            .unwrap();
        let r = store.reserve(a, 30, "m1", 1, 10, 100).unwrap();
        store.reserve(a, 5, "m2", 1, 10, 100).unwrap();
        let note = crate::UsageNote {
            platform: "web",
            model: "m",
            prompt_tokens: 1,
            completion_tokens: 2,
            outcome: crate::UsageOutcome::Answered,
        };
        store
            .settle_metered(r, 25, "answer", 1, 10, 2, None, Some(note))
            .unwrap();
        store.login_code(a, 1_000, 0).unwrap();
        store.outbox_push("mp:main:x", "one").unwrap();
        store.outbox_push("mp:main:x", "two").unwrap();
        let c = store.census(10).unwrap();
        assert_eq!((c.users, c.ledger_entries, c.ledger_references), (1, 2, 2));
        assert_eq!((c.paid_sum, c.held_sum), (85, 5));
        assert_eq!(
            (c.ledger_free_delta_sum, c.ledger_paid_delta_sum),
            (-10, 85)
        );
        assert_eq!((c.open_reservations, c.open_reserved_sum), (1, 5));
        assert_eq!((c.login_codes_live, c.outbox_texts), (1, 2));
        assert_eq!((c.usage_records, c.usage_charged_sum), (1, 25));
        assert_eq!(store.census(1_000).unwrap().login_codes_live, 0, "expired");
        assert!(c.differences(&c.clone()).is_empty());
        let d = c.differences(&empty);
        assert!(d.contains(&"users: 1 ≠ 0".to_owned()), "{d:?}");
        assert!(
            d.contains(&"paid credits (sum): 85 ≠ 0".to_owned()),
            "{d:?}"
        );
        assert_eq!(d.len(), 13, "{d:?}");
        let table = c.to_string();
        assert!(table.contains("orders refunded (fen)"), "{table}");
        assert_eq!(table.lines().count(), 29, "{table}");
        store
            .create_code_batch(crate::CodeGrant::Credits { credits: 5 }, 3, None, "", 1)
            .unwrap();
        let with_codes = store.census(10).unwrap();
        assert_eq!((with_codes.code_batches, with_codes.codes), (1, 3));
    }

    #[test]
    fn an_order_events_key_is_read_back() {
        let mut key = b"CR1".to_vec();
        key.push(0);
        key.extend_from_slice(&7u64.to_be_bytes());
        let raw = br#"{"at_ms":1,"kind":"created","detail":""}"#;
        let (order, id, event) = read_order_event(&key, raw).unwrap();
        assert_eq!(
            (order.as_str(), id, event.kind.as_str()),
            ("CR1", 7, "created")
        );
        assert!(read_order_event(b"short", raw).is_err());
        assert!(read_order_event(b"CR1x\x00\x00\x00\x00\x00\x00\x00\x07", raw).is_err());
    }
}
