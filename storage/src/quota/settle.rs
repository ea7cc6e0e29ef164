//! Settling and releasing reservations: the charge of an answer (free credits first, then
//! paid), its ledger entry and, for metered settlements, the conversation turns and usage
//! record written in the same transaction; releasing holds whose answer failed or expired.

use super::*;

impl KvStore {
    /// Settles a reservation: drops its hold and charges `min(actual, free_left + paid)`, free
    /// credits first, as one [`EntryKind::Usage`] entry with the reservation's reference.
    ///
    /// Returns the entry, or `None` when nothing was charged. Settling again returns the same
    /// answer; an id never reserved (or released) is [`StoreError::UnknownReservation`].
    pub fn settle(
        &self,
        id: ReservationId,
        actual: u64,
        reason: &str,
        today: i64,
        free_daily: u64,
        now_ms: i64,
    ) -> Result<Option<LedgerEntry>, StoreError> {
        let _writing = self.writing();
        let t = self.trees()?;
        let trees = (
            &t.balances,
            &t.reservations,
            &t.settled_reservations,
            &t.ledger,
            &t.ledger_refs,
        );
        finish(trees.transaction(|(b, r, s, l, lr)| {
            let trees = SettleTrees::of(b, r, s, l, lr);
            let how = SettleArgs {
                id,
                actual,
                reason,
                today,
                free_daily,
                now_ms,
            };
            settle_in(&trees, &how).map(|done| done.entry)
        }))
    }

    /// [`KvStore::settle`] with, in the same transaction, the conversation's new turns
    /// (`remember`, as [`KvStore::append_turns`] writes them) and the answer's usage record
    /// (`usage`, see [`crate::UsageRecord`]; keyed by the owner, `now_ms` and `id`, with the
    /// credits this settlement charged): the charge, the turns and the usage log are written
    /// together or not at all, and cannot disagree. Settling again answers as
    /// [`KvStore::settle`] does and writes nothing.
    #[allow(clippy::too_many_arguments)] // settle's arguments, the turns and the usage
    pub fn settle_metered(
        &self,
        id: ReservationId,
        actual: u64,
        reason: &str,
        today: i64,
        free_daily: u64,
        now_ms: i64,
        remember: Option<Remember<'_>>,
        usage: Option<crate::UsageNote<'_>>,
    ) -> Result<Option<LedgerEntry>, StoreError> {
        if remember.is_none() && usage.is_none() {
            return self.settle(id, actual, reason, today, free_daily, now_ms);
        }
        let _writing = self.writing();
        if let Some(remember) = &remember {
            check_key("conversation key", remember.conversation)?;
        }
        let encoded_note = usage
            .as_ref()
            .map(crate::usage::NoteBytes::new)
            .transpose()?;
        let how = SettleArgs {
            id,
            actual,
            reason,
            today,
            free_daily,
            now_ms,
        };
        let t = self.trees()?;
        // The conversations tree only when there are turns: an API answer's transaction
        // spans the trees it writes and no more.
        match &remember {
            None => finish(
                (
                    &t.balances,
                    &t.reservations,
                    &t.settled_reservations,
                    &t.ledger,
                    &t.ledger_refs,
                    &t.usage,
                )
                    .transaction(|(b, r, s, l, lr, usage_tree)| {
                        let extra = Extra {
                            turns: None,
                            usage: encoded_note.as_ref().map(|n| (usage_tree, n)),
                        };
                        settle_with_extra(&SettleTrees::of(b, r, s, l, lr), &how, &extra)
                    }),
            ),
            Some(remember) => finish(
                (
                    &t.balances,
                    &t.reservations,
                    &t.settled_reservations,
                    &t.ledger,
                    &t.ledger_refs,
                    &t.conversations,
                    &t.usage,
                )
                    .transaction(|(b, r, s, l, lr, conversations, usage_tree)| {
                        let extra = Extra {
                            turns: Some((conversations, remember)),
                            usage: encoded_note.as_ref().map(|n| (usage_tree, n)),
                        };
                        settle_with_extra(&SettleTrees::of(b, r, s, l, lr), &how, &extra)
                    }),
            ),
        }
    }

    /// Drops a reservation without charging (the answer failed); false if it was not open.
    /// Its reference may be reserved again afterwards.
    pub fn release(&self, id: ReservationId) -> Result<bool, StoreError> {
        let _writing = self.writing();
        let t = self.trees()?;
        finish(
            (&t.balances, &t.reservations, &t.reservation_refs).transaction(
                |(balances, reservations, res_refs)| {
                    release_in(balances, reservations, res_refs, id, None)
                },
            ),
        )
    }

    /// Releases every open reservation that expired before `now_ms` (at start-up, pass
    /// `i64::MAX` to release them all); returns how many.
    pub fn release_stale_reservations(&self, now_ms: i64) -> Result<usize, StoreError> {
        let _writing = self.writing();
        let t = self.trees()?;
        let mut stale = Vec::new();
        for item in t.reservations.iter() {
            let (raw_key, raw) = item?;
            let id = ReservationId(crate::codec::read_u64_key(RESERVATIONS, &raw_key)?);
            let reservation = super::value::read_reservation(id, &raw)?;
            if reservation.expires_at_ms < now_ms {
                stale.push(id);
            }
        }
        let mut released = 0;
        for id in stale {
            let done = finish(
                (&t.balances, &t.reservations, &t.reservation_refs).transaction(
                    |(balances, reservations, res_refs)| {
                        release_in(balances, reservations, res_refs, id, Some(now_ms))
                    },
                ),
            )?;
            if done {
                released += 1;
            }
        }
        if released > 0 {
            tracing::info!(released, "released stale credit reservations");
        }
        Ok(released)
    }

    /// Forgets settled reservations settled before `before_ms` (their ledger entries stay);
    /// returns how many. Afterwards settling such an id again is
    /// [`StoreError::UnknownReservation`], and reserving its reference again is
    /// [`StoreError::AlreadySettled`] if it charged anything, or a new reservation if not. Run it
    /// now and then with a cut-off well past any retry window (a day), so these records, one
    /// per answer, do not pile up.
    ///
    /// Not a scan of every record: ids grow with time, so the old records are the first ones.
    /// A call stops after [`RECENT_IN_A_ROW`] recent records in a row (a reservation held
    /// long may be settled after younger ones; it goes in a later call, when the records in
    /// front of it are gone), or after [`PURGE_LOOK_AT`] records.
    pub fn purge_settled_reservations(&self, before_ms: i64) -> Result<usize, StoreError> {
        let _writing = self.writing();
        let t = self.trees()?;
        let mut old = Vec::new();
        let mut recent_in_a_row = 0;
        for item in t.settled_reservations.iter().take(PURGE_LOOK_AT) {
            let (raw_key, raw) = item?;
            let id = ReservationId(crate::codec::read_u64_key(SETTLED_RESERVATIONS, &raw_key)?);
            let done = super::value::read_settled(id, &raw)?;
            if done.settled_at_ms < before_ms {
                old.push((id, done.reference));
                recent_in_a_row = 0;
            } else {
                recent_in_a_row += 1;
                if recent_in_a_row == RECENT_IN_A_ROW {
                    break;
                }
            }
        }
        let purged = old.len();
        for (id, reference) in old {
            finish((&t.settled_reservations, &t.reservation_refs).transaction(
                |(settled, res_refs)| {
                    settled.remove(u64_key(id.0))?;
                    if let Some(raw) = res_refs.get(reference.as_bytes())? {
                        let owner = super::value::read_reservation_ref(reference.as_bytes(), &raw)
                            .or_abort()?;
                        if owner == id {
                            res_refs.remove(reference.as_bytes())?;
                        }
                    }
                    Ok(())
                },
            ))?;
        }
        Ok(purged)
    }
}

/// Recent settled reservations in a row after which a purge stops looking.
pub(super) const RECENT_IN_A_ROW: usize = 256;

/// Settled reservations one purge looks at, at most.
const PURGE_LOOK_AT: usize = 20_000;

/// The trees a settlement writes.
struct SettleTrees<'t, 'v> {
    balances: &'t TxTree<'v>,
    reservations: &'t TxTree<'v>,
    settled: &'t TxTree<'v>,
    ledger: &'t TxTree<'v>,
    ledger_refs: &'t TxTree<'v>,
}

impl<'t, 'v> SettleTrees<'t, 'v> {
    /// The trees in the order settlements open them.
    fn of(
        balances: &'t TxTree<'v>,
        reservations: &'t TxTree<'v>,
        settled: &'t TxTree<'v>,
        ledger: &'t TxTree<'v>,
        ledger_refs: &'t TxTree<'v>,
    ) -> Self {
        SettleTrees {
            balances,
            reservations,
            settled,
            ledger,
            ledger_refs,
        }
    }
}

/// What a settlement settles, at what cost, when.
struct SettleArgs<'a> {
    id: ReservationId,
    actual: u64,
    reason: &'a str,
    today: i64,
    free_daily: u64,
    now_ms: i64,
}

/// What a settlement writes besides the charge, only when it settles (not when settled before).
struct Extra<'t, 'v, 'r> {
    /// The conversation's tree and its new turns.
    turns: Option<(&'t TxTree<'v>, &'r Remember<'r>)>,
    /// The usage tree and the answer's record.
    usage: Option<(&'t TxTree<'v>, &'r crate::usage::NoteBytes<'r>)>,
}

/// [`settle_in`], then `extra` if it settled now.
fn settle_with_extra(
    t: &SettleTrees<'_, '_>,
    a: &SettleArgs<'_>,
    extra: &Extra<'_, '_, '_>,
) -> TxResult<Option<LedgerEntry>> {
    let done = settle_in(t, a)?;
    if done.fresh {
        if let Some((conversations, remember)) = extra.turns {
            crate::conversations::append_in(
                conversations,
                remember.conversation,
                remember.turns,
                remember.max_turns,
            )?;
        }
        if let Some((usage, note)) = extra.usage {
            crate::usage::record_in(usage, a.id, a.now_ms, &done, note)?;
        }
    }
    Ok(done.entry)
}

/// What [`settle_in`] did.
pub(crate) struct Settled {
    /// The entry written (or found, for a reservation settled before).
    pub(crate) entry: Option<LedgerEntry>,
    /// Whether this call settled it (`false`: settled before, nothing written now).
    pub(crate) fresh: bool,
    /// The reservation's owner.
    pub(crate) uid: Uid,
    /// Free and paid credits this call charged (0 and 0 when not fresh, or when the
    /// reference's entry was there already).
    pub(crate) from_free: u64,
    pub(crate) from_paid: u64,
    /// The part of `from_free` beyond the base allowance: the plan's daily credits.
    pub(crate) from_plan: u64,
}

/// The settlement of [`KvStore::settle`] inside a transaction.
fn settle_in(t: &SettleTrees<'_, '_>, a: &SettleArgs<'_>) -> TxResult<Settled> {
    let key = u64_key(a.id.0);
    let Some(raw) = t.reservations.get(key)? else {
        let before = |entry, uid| Settled {
            entry,
            fresh: false,
            uid,
            from_free: 0,
            from_paid: 0,
            from_plan: 0,
        };
        return match get_settled(t.settled, a.id)? {
            Some(SettledReservation {
                entry: Some(at),
                uid,
                ..
            }) => get_entry(t.ledger, at).map(|e| before(Some(e), uid)),
            Some(SettledReservation {
                entry: None, uid, ..
            }) => Ok(before(None, uid)),
            None => abort(StoreError::UnknownReservation(a.id)),
        };
    };
    let reservation = super::value::read_reservation(a.id, &raw).or_abort()?;
    let uid = reservation.uid;
    let mut balance = load_balance(t.balances, uid)?;
    balance.held = balance.held.saturating_sub(reservation.amount);
    let (mut charged_free, mut charged_paid, mut charged_plan) = (0, 0, 0);
    let entry = match entry_by_reference(t.ledger_refs, t.ledger, &reservation.reference)? {
        // The reference is in the ledger already (used by a grant meanwhile): never
        // write a second entry for it.
        Some(existing) => Some(existing),
        None => {
            let free_left = balance.free_left(a.today, a.free_daily);
            let charge = a.actual.min(free_left.saturating_add(balance.paid));
            if charge == 0 {
                None
            } else {
                let from_free = charge.min(free_left);
                let from_paid = charge.saturating_sub(from_free);
                // The base allowance goes first; what the free part takes beyond it is the
                // plan's.
                let from_base = from_free.min(balance.base_left(a.today, a.free_daily));
                (charged_free, charged_paid) = (from_free, from_paid);
                charged_plan = from_free.saturating_sub(from_base);
                let free_delta = to_delta(from_free).or_abort()?;
                let paid_delta = to_delta(from_paid).or_abort()?;
                balance.take_free(a.today, from_free);
                balance.paid = balance.paid.saturating_sub(from_paid);
                let change = Change {
                    uid,
                    at_ms: a.now_ms,
                    kind: EntryKind::Usage,
                    free_delta: -free_delta,
                    paid_delta: -paid_delta,
                    reason: a.reason,
                    reference: &reservation.reference,
                };
                Some(append_entry(&mut balance, t.ledger, t.ledger_refs, change)?)
            }
        }
    };
    store_balance(t.balances, uid, &balance)?;
    t.reservations.remove(key)?;
    let done = SettledReservation {
        uid,
        reference: reservation.reference.clone(),
        entry: entry.as_ref().map(|e| LedgerRef {
            uid: e.uid,
            seq: e.seq,
        }),
        settled_at_ms: a.now_ms,
    };
    t.settled.insert(key, super::value::settled_value(&done))?;
    Ok(Settled {
        entry,
        fresh: true,
        uid,
        from_free: charged_free,
        from_paid: charged_paid,
        from_plan: charged_plan,
    })
}

/// Drops an open reservation's hold (only if it expired before `stale_before`, when given).
fn release_in(
    balances: &TxTree<'_>,
    reservations: &TxTree<'_>,
    res_refs: &TxTree<'_>,
    id: ReservationId,
    stale_before: Option<i64>,
) -> TxResult<bool> {
    let key = u64_key(id.0);
    let Some(raw) = reservations.get(key)? else {
        return Ok(false);
    };
    let reservation = super::value::read_reservation(id, &raw).or_abort()?;
    if stale_before.is_some_and(|now| reservation.expires_at_ms >= now) {
        return Ok(false);
    }
    let mut balance = load_balance(balances, reservation.uid)?;
    balance.held = balance.held.saturating_sub(reservation.amount);
    store_balance(balances, reservation.uid, &balance)?;
    reservations.remove(key)?;
    if let Some(raw) = res_refs.get(reservation.reference.as_bytes())? {
        let owner = super::value::read_reservation_ref(reservation.reference.as_bytes(), &raw)
            .or_abort()?;
        if owner == id {
            res_refs.remove(reservation.reference.as_bytes())?;
        }
    }
    Ok(true)
}
