//! The stored form of the records written on every credit change: compact binary (format 1,
//! [`crate::codec::BINARY`] first), read beside the JSON that stores written before
//! (a store may hold both; nothing is migrated).
//!
//! After the format byte, per tree:
//! - `ledger` (key uid ‖ seq): kind code, at_ms (zigzag), free_delta (zigzag), paid_delta
//!   (zigzag), paid_after, reason, reference;
//! - `ledger_refs` (key reference): uid, seq;
//! - `balances` (key uid): paid, held, free_day (zigzag), free_used, next_seq, plan flag (0/1)
//!   and with 1 the plan's id, name, daily_credits, start_day, end_day (zigzag);
//! - `reservations` (key id): uid, amount, expires_at_ms (zigzag), reference;
//! - `settled_reservations` (key id): uid, settled_at_ms (zigzag), entry flag (0/1) and with 1
//!   the entry's uid and seq, reference;
//! - `reservation_refs` (key reference): the reservation id.
//!
//! Numbers are LEB128 varints, text is length-prefixed UTF-8. The ledger's value leaves out uid
//! and seq (its key says them). Readers ignore bytes after the last field, so fields can be
//! appended later without a new format. Why: a ledger entry was ~133 bytes of JSON (uid and seq
//! repeated from the key, ~60 bytes of field names) and every one also rewrote the balance's
//! JSON; the binary entry is ~10 bytes plus its reason and reference.

use crate::codec::{
    BINARY, Reader, decode_versioned, describe_bytes, put_ivarint, put_str, put_varint,
};
use crate::quota::{BalanceRecord, LedgerRef, Reservation, SettledReservation};
use crate::{
    ActivePlan, BALANCES, EntryKind, LEDGER, LEDGER_REFS, LedgerEntry, RESERVATION_REFS,
    RESERVATIONS, ReservationId, SETTLED_RESERVATIONS, StoreError, Uid,
};

impl EntryKind {
    fn code(self) -> u8 {
        match self {
            EntryKind::Usage => 1,
            EntryKind::Grant => 2,
            EntryKind::Purchase => 3,
            EntryKind::Refund => 4,
            EntryKind::Adjust => 5,
        }
    }

    fn from_code(code: u8) -> Option<EntryKind> {
        Some(match code {
            1 => EntryKind::Usage,
            2 => EntryKind::Grant,
            3 => EntryKind::Purchase,
            4 => EntryKind::Refund,
            5 => EntryKind::Adjust,
            _ => return None,
        })
    }
}

/// The value of a ledger entry (without its uid and seq, which are its key).
pub(crate) fn entry_value(e: &LedgerEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + e.reason.len() + e.reference.len());
    out.push(BINARY);
    out.push(e.kind.code());
    put_ivarint(&mut out, e.at_ms);
    put_ivarint(&mut out, e.free_delta);
    put_ivarint(&mut out, e.paid_delta);
    put_varint(&mut out, e.paid_after);
    put_str(&mut out, &e.reason);
    put_str(&mut out, &e.reference);
    out
}

/// The ledger entry stored at key `uid ‖ seq`.
pub(crate) fn read_entry(uid: u64, seq: u64, raw: &[u8]) -> Result<LedgerEntry, StoreError> {
    decode_versioned(
        LEDGER,
        raw,
        || format!("{uid}/{seq}"),
        |r| {
            Some(LedgerEntry {
                uid: Uid(uid),
                seq,
                kind: EntryKind::from_code(r.byte()?)?,
                at_ms: r.ivarint()?,
                free_delta: r.ivarint()?,
                paid_delta: r.ivarint()?,
                paid_after: r.varint()?,
                reason: r.text()?.to_owned(),
                reference: r.text()?.to_owned(),
            })
        },
    )
}

/// The value of a `ledger_refs` row.
pub(crate) fn ref_value(at: LedgerRef) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.push(BINARY);
    put_varint(&mut out, at.uid.0);
    put_varint(&mut out, at.seq);
    out
}

fn take_ref(r: &mut Reader<'_>) -> Option<LedgerRef> {
    Some(LedgerRef {
        uid: Uid(r.varint()?),
        seq: r.varint()?,
    })
}

/// Where the entry of `reference` is (`ledger_refs`).
pub(crate) fn read_ref(reference: &[u8], raw: &[u8]) -> Result<LedgerRef, StoreError> {
    decode_versioned(LEDGER_REFS, raw, || describe_bytes(reference), take_ref)
}

/// The value of a `balances` record.
pub(crate) fn balance_value(b: &BalanceRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.push(BINARY);
    put_varint(&mut out, b.paid);
    put_varint(&mut out, b.held);
    put_ivarint(&mut out, b.free_day);
    put_varint(&mut out, b.free_used);
    put_varint(&mut out, b.next_seq);
    match &b.plan {
        None => out.push(0),
        Some(p) => {
            out.push(1);
            put_str(&mut out, &p.id);
            put_str(&mut out, &p.name);
            put_varint(&mut out, p.daily_credits);
            put_ivarint(&mut out, p.start_day);
            put_ivarint(&mut out, p.end_day);
        }
    }
    out
}

/// The `balances` record of `uid`.
pub(crate) fn read_balance(uid: u64, raw: &[u8]) -> Result<BalanceRecord, StoreError> {
    read_balance_with(raw, || uid.to_string())
}

/// A `balances` record whose key `key` describes (for errors).
pub(crate) fn read_balance_with(
    raw: &[u8],
    key: impl FnOnce() -> String,
) -> Result<BalanceRecord, StoreError> {
    decode_versioned(BALANCES, raw, key, |r| {
        Some(BalanceRecord {
            paid: r.varint()?,
            held: r.varint()?,
            free_day: r.ivarint()?,
            free_used: r.varint()?,
            next_seq: r.varint()?,
            plan: match r.byte()? {
                0 => None,
                1 => Some(ActivePlan {
                    id: r.text()?.to_owned(),
                    name: r.text()?.to_owned(),
                    daily_credits: r.varint()?,
                    start_day: r.ivarint()?,
                    end_day: r.ivarint()?,
                }),
                _ => return None,
            },
        })
    })
}

/// The value of an open reservation.
pub(crate) fn reservation_value(v: &Reservation) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + v.reference.len());
    out.push(BINARY);
    put_varint(&mut out, v.uid.0);
    put_varint(&mut out, v.amount);
    put_ivarint(&mut out, v.expires_at_ms);
    put_str(&mut out, &v.reference);
    out
}

/// The open reservation `id`.
pub(crate) fn read_reservation(id: ReservationId, raw: &[u8]) -> Result<Reservation, StoreError> {
    decode_versioned(
        RESERVATIONS,
        raw,
        || id.to_string(),
        |r| {
            Some(Reservation {
                uid: Uid(r.varint()?),
                amount: r.varint()?,
                expires_at_ms: r.ivarint()?,
                reference: r.text()?.to_owned(),
            })
        },
    )
}

/// The value of a settled reservation.
pub(crate) fn settled_value(s: &SettledReservation) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + s.reference.len());
    out.push(BINARY);
    put_varint(&mut out, s.uid.0);
    put_ivarint(&mut out, s.settled_at_ms);
    match s.entry {
        None => out.push(0),
        Some(at) => {
            out.push(1);
            put_varint(&mut out, at.uid.0);
            put_varint(&mut out, at.seq);
        }
    }
    put_str(&mut out, &s.reference);
    out
}

/// The settled reservation `id`.
pub(crate) fn read_settled(
    id: ReservationId,
    raw: &[u8],
) -> Result<SettledReservation, StoreError> {
    decode_versioned(
        SETTLED_RESERVATIONS,
        raw,
        || id.to_string(),
        |r| {
            let uid = Uid(r.varint()?);
            let settled_at_ms = r.ivarint()?;
            let entry = match r.byte()? {
                0 => None,
                1 => Some(take_ref(r)?),
                _ => return None,
            };
            Some(SettledReservation {
                uid,
                reference: r.text()?.to_owned(),
                entry,
                settled_at_ms,
            })
        },
    )
}

/// The value of a `reservation_refs` row: the reservation's id.
pub(crate) fn reservation_ref_value(id: ReservationId) -> Vec<u8> {
    let mut out = Vec::with_capacity(11);
    out.push(BINARY);
    put_varint(&mut out, id.0);
    out
}

/// The reservation `reference` names (`reservation_refs`).
pub(crate) fn read_reservation_ref(
    reference: &[u8],
    raw: &[u8],
) -> Result<ReservationId, StoreError> {
    decode_versioned(
        RESERVATION_REFS,
        raw,
        || describe_bytes(reference),
        |r| r.varint().map(ReservationId),
    )
}

#[cfg(test)]
pub(crate) mod tests;
