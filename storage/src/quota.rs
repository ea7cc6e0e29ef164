//! Credits: balances, reservations and the append-only ledger.
//!
//! A user's `balances` record holds paid credits, credits held by open reservations, the free
//! allowance used on its day, and the next ledger sequence number. Free credits reset lazily:
//! when the caller's `today` is later than the recorded day, the allowance is whole again.
//!
//! Every change of `paid` or of the free allowance writes one [`LedgerEntry`] in the same
//! transaction, keyed uid ‖ seq, with `ledger_refs` mapping its reference to it: that index is
//! what makes grants, debits, reservations and settlements idempotent.

use crate::kv::Transactional;
use crate::kv::TxTree;
use serde::{Deserialize, Serialize};

use crate::codec::{
    OrAbort, TxResult, abort, check_key, finish, pair_key, read_pair_key, to_delta, u64_key,
};
use crate::{
    BALANCES, KvStore, LEDGER, LEDGER_REFS, RESERVATIONS, ReservationId, SETTLED_RESERVATIONS,
    StoreError, Uid,
};

/// Why a ledger entry was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Credits spent on an answer (a settled reservation).
    Usage,
    /// Credits given by an admin or a promotion.
    Grant,
    /// Credits bought with a paid order.
    Purchase,
    /// Credits given back (or taken back, for a refunded order).
    Refund,
    /// A manual correction.
    Adjust,
}

/// One change of a user's credits. The ledger is append-only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Whose credits changed.
    pub uid: Uid,
    /// Position in the user's ledger, from 1, without gaps.
    pub seq: u64,
    /// When, in ms since the Unix epoch (as the caller said).
    pub at_ms: i64,
    /// Why.
    pub kind: EntryKind,
    /// Change of the day's free allowance (negative when spent).
    pub free_delta: i64,
    /// Change of the paid credits.
    pub paid_delta: i64,
    /// Paid credits after this entry.
    pub paid_after: u64,
    /// A human-readable reason ("gpt-4o answer", "order 123", "admin: apology").
    pub reason: String,
    /// The idempotency reference: unique over the whole ledger.
    pub reference: String,
}

/// A user's credits as seen on a given day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    /// Paid credits.
    pub paid: u64,
    /// What is left of today's free allowance.
    pub free_left: u64,
    /// Credits held by open reservations.
    pub held: u64,
    /// What a new reservation may take: `free_left + paid - held`, never below zero.
    pub available: u64,
}

/// The `balances` record of one user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct BalanceRecord {
    /// Paid credits.
    pub(crate) paid: u64,
    /// Credits held by open reservations.
    pub(crate) held: u64,
    /// The day `free_used` counts for.
    pub(crate) free_day: i64,
    /// Free credits spent on `free_day`.
    pub(crate) free_used: u64,
    /// The seq of the user's next ledger entry.
    pub(crate) next_seq: u64,
    /// The user's membership plan, whose daily credits join the free allowance while it is
    /// active ([`crate::plans`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) plan: Option<crate::ActivePlan>,
}

impl Default for BalanceRecord {
    fn default() -> Self {
        Self {
            paid: 0,
            held: 0,
            free_day: i64::MIN,
            free_used: 0,
            next_seq: 1,
            plan: None,
        }
    }
}

impl BalanceRecord {
    /// The free allowance left on `today`. A day before the recorded one (a caller whose clock
    /// lags) counts as the recorded day, so a day's allowance is never given twice.
    /// The allowance is `free_daily` plus the active plan's daily credits; the base part is
    /// spent first ([`BalanceRecord::base_left`]).
    pub(crate) fn free_left(&self, today: i64, free_daily: u64) -> u64 {
        let allowance = free_daily.saturating_add(self.plan_daily(today));
        if today > self.free_day {
            allowance
        } else {
            allowance.saturating_sub(self.free_used)
        }
    }

    /// What is left of the base allowance (`free_daily`, without the plan) on `today`.
    fn base_left(&self, today: i64, free_daily: u64) -> u64 {
        if today > self.free_day {
            free_daily
        } else {
            free_daily.saturating_sub(self.free_used)
        }
    }

    /// The active plan's daily credits on `today` (0 without one).
    fn plan_daily(&self, today: i64) -> u64 {
        self.plan.as_ref().map_or(0, |p| p.daily_on(today))
    }

    /// Spends `amount` of the free allowance of `today`.
    fn take_free(&mut self, today: i64, amount: u64) {
        if today > self.free_day {
            self.free_day = today;
            self.free_used = 0;
        }
        self.free_used = self.free_used.saturating_add(amount);
    }

    fn view(&self, today: i64, free_daily: u64) -> Balance {
        let free_left = self.free_left(today, free_daily);
        Balance {
            paid: self.paid,
            free_left,
            held: self.held,
            available: free_left
                .saturating_add(self.paid)
                .saturating_sub(self.held),
        }
    }
}

/// An open hold on a user's credits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Reservation {
    pub(crate) uid: Uid,
    pub(crate) amount: u64,
    pub(crate) reference: String,
    pub(crate) expires_at_ms: i64,
}

/// What became of a settled reservation, so that settling it again answers the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SettledReservation {
    pub(crate) uid: Uid,
    pub(crate) reference: String,
    /// The ledger entry written (uid, seq); `None` when nothing was charged.
    #[serde(default)]
    pub(crate) entry: Option<LedgerRef>,
    pub(crate) settled_at_ms: i64,
}

/// Conversation turns written with a settlement ([`KvStore::settle_metered`]).
#[derive(Clone, Copy, Debug)]
pub struct Remember<'a> {
    /// The conversation's key (as [`KvStore::append_turns`] takes it).
    pub conversation: &'a str,
    /// The turns to append.
    pub turns: &'a [crate::Turn],
    /// How many turns the conversation keeps.
    pub max_turns: usize,
}

/// Where the entry of a reference lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LedgerRef {
    pub(crate) uid: Uid,
    pub(crate) seq: u64,
}

impl KvStore {
    /// The user's credits on day `today` with a daily allowance of `free_daily`.
    pub fn balance(&self, uid: Uid, today: i64, free_daily: u64) -> Result<Balance, StoreError> {
        let t = self.trees()?;
        if t.users.get(u64_key(uid.0))?.is_none() {
            return Err(StoreError::UnknownUser(uid));
        }
        let record = match t.balances.get(u64_key(uid.0))? {
            Some(raw) => value::read_balance(uid.0, &raw)?,
            None => BalanceRecord::default(),
        };
        Ok(record.view(today, free_daily))
    }

    /// Holds `amount` credits for an answer about to be made.
    ///
    /// Refused with [`StoreError::InsufficientCredits`] when less is available. An amount of 0
    /// holds nothing but still gives an id to settle. Idempotent on `reference`: the same
    /// reference again returns the open reservation's id, or [`StoreError::AlreadySettled`] with
    /// its ledger entry once settled.
    pub fn reserve(
        &self,
        uid: Uid,
        amount: u64,
        reference: &str,
        today: i64,
        free_daily: u64,
        expires_at_ms: i64,
    ) -> Result<ReservationId, StoreError> {
        let _writing = self.writing();
        check_key("reference", reference)?;
        let new_id = ReservationId(self.trees()?.db.generate_id()?);
        let t = self.trees()?;
        let trees = (
            &t.users,
            &t.balances,
            &t.reservations,
            &t.reservation_refs,
            &t.settled_reservations,
            &t.ledger,
            &t.ledger_refs,
        );
        finish(trees.transaction(
            |(users, balances, reservations, res_refs, settled, ledger, ledger_refs)| {
                if let Some(raw) = res_refs.get(reference.as_bytes())? {
                    let id = value::read_reservation_ref(reference.as_bytes(), &raw).or_abort()?;
                    if reservations.get(u64_key(id.0))?.is_some() {
                        return Ok(id);
                    }
                    if let Some(done) = get_settled(settled, id)? {
                        return match done.entry {
                            Some(at) => {
                                abort(StoreError::AlreadySettled(Box::new(get_entry(ledger, at)?)))
                            }
                            None => Ok(id),
                        };
                    }
                    // A reference left behind by a released reservation: reserve anew.
                }
                if let Some(entry) = entry_by_reference(ledger_refs, ledger, reference)? {
                    return abort(StoreError::AlreadySettled(Box::new(entry)));
                }
                if users.get(u64_key(uid.0))?.is_none() {
                    return abort(StoreError::UnknownUser(uid));
                }
                let mut balance = load_balance(balances, uid)?;
                let available = balance.view(today, free_daily).available;
                if available < amount {
                    return abort(StoreError::InsufficientCredits {
                        available,
                        needed: amount,
                    });
                }
                balance.held = match balance.held.checked_add(amount) {
                    Some(held) => held,
                    None => {
                        return abort(StoreError::InvalidInput(format!(
                            "amount {amount} is too large"
                        )));
                    }
                };
                let reservation = Reservation {
                    uid,
                    amount,
                    reference: reference.to_owned(),
                    expires_at_ms,
                };
                store_balance(balances, uid, &balance)?;
                reservations.insert(u64_key(new_id.0), value::reservation_value(&reservation))?;
                res_refs.insert(reference.as_bytes(), value::reservation_ref_value(new_id))?;
                Ok(new_id)
            },
        ))
    }

    /// Adds `credits` paid credits (a purchase, an admin grant, a refund). Idempotent on
    /// `reference`: applying it again changes nothing and returns the original entry.
    pub fn grant(
        &self,
        uid: Uid,
        credits: u64,
        kind: EntryKind,
        reason: &str,
        reference: &str,
        now_ms: i64,
    ) -> Result<LedgerEntry, StoreError> {
        self.change_paid(
            uid,
            credits,
            true,
            kind,
            reason,
            reference,
            now_ms,
            |balance| {
                balance.paid = balance
                    .paid
                    .checked_add(credits)
                    .filter(|p| to_delta(*p).is_ok())
                    .ok_or_else(|| {
                        StoreError::InvalidInput(format!("granting {credits} would overflow"))
                    })?;
                Ok(())
            },
        )
    }

    /// Removes `credits` paid credits, never below zero: refused with
    /// [`StoreError::InsufficientCredits`] when `paid - held` is less. Idempotent on `reference`.
    pub fn debit(
        &self,
        uid: Uid,
        credits: u64,
        kind: EntryKind,
        reason: &str,
        reference: &str,
        now_ms: i64,
    ) -> Result<LedgerEntry, StoreError> {
        self.change_paid(
            uid,
            credits,
            false,
            kind,
            reason,
            reference,
            now_ms,
            |balance| {
                let spendable = balance.paid.saturating_sub(balance.held);
                if spendable < credits {
                    return Err(StoreError::InsufficientCredits {
                        available: spendable,
                        needed: credits,
                    });
                }
                balance.paid = balance.paid.saturating_sub(credits);
                Ok(())
            },
        )
    }

    /// The transaction shared by [`KvStore::grant`] and [`KvStore::debit`]: returns the entry
    /// already written with `reference` if any; otherwise `apply` changes the balance (or
    /// refuses), and the entry and the balance are written together.
    #[allow(clippy::too_many_arguments)]
    fn change_paid(
        &self,
        uid: Uid,
        credits: u64,
        adds: bool,
        kind: EntryKind,
        reason: &str,
        reference: &str,
        now_ms: i64,
        apply: impl Fn(&mut BalanceRecord) -> Result<(), StoreError>,
    ) -> Result<LedgerEntry, StoreError> {
        let _writing = self.writing();
        check_key("reference", reference)?;
        let magnitude = positive_delta(credits)?;
        let delta = if adds { magnitude } else { -magnitude };
        let t = self.trees()?;
        let entry = finish(
            (&t.users, &t.balances, &t.ledger, &t.ledger_refs).transaction(
                |(users, balances, ledger, ledger_refs)| {
                    if let Some(existing) = entry_by_reference(ledger_refs, ledger, reference)? {
                        return Ok(existing);
                    }
                    if users.get(u64_key(uid.0))?.is_none() {
                        return abort(StoreError::UnknownUser(uid));
                    }
                    let mut balance = load_balance(balances, uid)?;
                    apply(&mut balance).or_abort()?;
                    let change = Change {
                        uid,
                        at_ms: now_ms,
                        kind,
                        free_delta: 0,
                        paid_delta: delta,
                        reason,
                        reference,
                    };
                    let entry = append_entry(&mut balance, ledger, ledger_refs, change)?;
                    store_balance(balances, uid, &balance)?;
                    Ok(entry)
                },
            ),
        )?;
        warn_if_different(&entry, uid, delta, reference);
        Ok(entry)
    }

    /// The user's newest `limit` ledger entries, newest first.
    pub fn ledger(&self, uid: Uid, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        let mut entries = Vec::new();
        for (raw_key, raw) in self
            .trees()?
            .ledger
            .scan_prefix_rev(u64_key(uid.0), limit)?
        {
            let (owner, seq) = read_pair_key(LEDGER, &raw_key)?;
            entries.push(value::read_entry(owner, seq, &raw)?);
        }
        Ok(entries)
    }

    /// A page of `uid`'s ledger, newest first: at most `limit` entries with a seq below
    /// `before` (all, when `None`), and the seq the next (older) page starts before, if
    /// there are older entries. One range scan.
    pub fn ledger_page(
        &self,
        uid: Uid,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<LedgerEntry>, Option<u64>), StoreError> {
        let limit = limit.clamp(1, 1_000);
        let end = pair_key(uid.0, before.unwrap_or(u64::MAX));
        let mut pairs = self
            .trees()?
            .ledger
            .range_rev(pair_key(uid.0, 0), end, limit + 1)?;
        let more = pairs.len() > limit;
        pairs.truncate(limit);
        let mut entries: Vec<LedgerEntry> = Vec::with_capacity(pairs.len());
        for (raw_key, raw) in pairs {
            let (owner, seq) = read_pair_key(LEDGER, &raw_key)?;
            entries.push(value::read_entry(owner, seq, &raw)?);
        }
        let next = if more {
            entries.last().map(|e| e.seq)
        } else {
            None
        };
        Ok((entries, next))
    }

    /// The ledger entry written with `reference`, if any.
    pub fn ledger_by_reference(&self, reference: &str) -> Result<Option<LedgerEntry>, StoreError> {
        let t = self.trees()?;
        let Some(raw) = t.ledger_refs.get(reference.as_bytes())? else {
            return Ok(None);
        };
        let at = value::read_ref(reference.as_bytes(), &raw)?;
        match t.ledger.get(pair_key(at.uid.0, at.seq))? {
            Some(raw) => value::read_entry(at.uid.0, at.seq, &raw).map(Some),
            None => Err(dangling(reference, at)),
        }
    }
}

/// A change about to be written to the ledger.
pub(crate) struct Change<'a> {
    pub(crate) uid: Uid,
    pub(crate) at_ms: i64,
    pub(crate) kind: EntryKind,
    pub(crate) free_delta: i64,
    pub(crate) paid_delta: i64,
    pub(crate) reason: &'a str,
    pub(crate) reference: &'a str,
}

/// Writes a ledger entry and its reference. `balance` must already hold the new `paid`;
/// its `next_seq` advances. The caller stores `balance` in the same transaction.
pub(crate) fn append_entry(
    balance: &mut BalanceRecord,
    ledger: &TxTree<'_>,
    ledger_refs: &TxTree<'_>,
    change: Change<'_>,
) -> TxResult<LedgerEntry> {
    let seq = balance.next_seq.max(1);
    let key = pair_key(change.uid.0, seq);
    if ledger.get(key)?.is_some() {
        return abort(StoreError::corrupt(
            BALANCES,
            change.uid.to_string(),
            format!("next_seq {seq} points at an existing ledger entry"),
        ));
    }
    balance.next_seq = seq.saturating_add(1);
    let entry = LedgerEntry {
        uid: change.uid,
        seq,
        at_ms: change.at_ms,
        kind: change.kind,
        free_delta: change.free_delta,
        paid_delta: change.paid_delta,
        paid_after: balance.paid,
        reason: change.reason.to_owned(),
        reference: change.reference.to_owned(),
    };
    ledger.insert(key, value::entry_value(&entry))?;
    let at = LedgerRef {
        uid: change.uid,
        seq,
    };
    ledger_refs.insert(change.reference.as_bytes(), value::ref_value(at))?;
    Ok(entry)
}

pub(crate) fn load_balance(balances: &TxTree<'_>, uid: Uid) -> TxResult<BalanceRecord> {
    match balances.get(u64_key(uid.0))? {
        Some(raw) => value::read_balance(uid.0, &raw).or_abort(),
        None => Ok(BalanceRecord::default()),
    }
}

pub(crate) fn store_balance(
    balances: &TxTree<'_>,
    uid: Uid,
    balance: &BalanceRecord,
) -> TxResult<()> {
    balances.insert(u64_key(uid.0), value::balance_value(balance))?;
    Ok(())
}

fn get_settled(settled: &TxTree<'_>, id: ReservationId) -> TxResult<Option<SettledReservation>> {
    match settled.get(u64_key(id.0))? {
        Some(raw) => value::read_settled(id, &raw).or_abort().map(Some),
        None => Ok(None),
    }
}

fn get_entry(ledger: &TxTree<'_>, at: LedgerRef) -> TxResult<LedgerEntry> {
    match ledger.get(pair_key(at.uid.0, at.seq))? {
        Some(raw) => value::read_entry(at.uid.0, at.seq, &raw).or_abort(),
        None => abort(StoreError::corrupt(
            LEDGER,
            format!("{}/{}", at.uid, at.seq),
            "entry referenced but missing",
        )),
    }
}

pub(crate) fn entry_by_reference(
    ledger_refs: &TxTree<'_>,
    ledger: &TxTree<'_>,
    reference: &str,
) -> TxResult<Option<LedgerEntry>> {
    let Some(raw) = ledger_refs.get(reference.as_bytes())? else {
        return Ok(None);
    };
    let at = value::read_ref(reference.as_bytes(), &raw).or_abort()?;
    match ledger.get(pair_key(at.uid.0, at.seq))? {
        Some(raw) => value::read_entry(at.uid.0, at.seq, &raw)
            .or_abort()
            .map(Some),
        None => abort(dangling(reference, at)),
    }
}

fn dangling(reference: &str, at: LedgerRef) -> StoreError {
    StoreError::corrupt(
        LEDGER_REFS,
        format!("{reference:?}"),
        format!("points at missing ledger entry {}/{}", at.uid, at.seq),
    )
}

fn positive_delta(credits: u64) -> Result<i64, StoreError> {
    if credits == 0 {
        return Err(StoreError::InvalidInput(
            "credits must be positive".to_owned(),
        ));
    }
    to_delta(credits)
}

/// A reference reused for a different change is a caller bug: the original entry stands.
fn warn_if_different(entry: &LedgerEntry, uid: Uid, paid_delta: i64, reference: &str) {
    if entry.uid != uid || entry.paid_delta != paid_delta {
        tracing::warn!(
            reference,
            %uid,
            paid_delta,
            entry_uid = %entry.uid,
            entry_paid_delta = entry.paid_delta,
            "reference already used for a different ledger entry; kept the original"
        );
    }
}

mod settle;
pub(crate) mod value;

pub(crate) use settle::Settled;

#[cfg(test)]
mod tests;
