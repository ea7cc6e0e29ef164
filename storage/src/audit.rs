//! The consistency check of the money trees: balances against ledger and reservations.
//!
//! It reads the trees one after the other, not in one snapshot: run it when no credit
//! operation is in flight (at start-up, or from the admin API on a quiet daemon), or expect
//! transient mismatches.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::codec::{decode, read_pair_key, read_u64_key};
use crate::quota::{BalanceRecord, value};
use crate::{BALANCES, KvStore, LEDGER, RESERVATIONS, ReservationId, StoreError, USERS, Uid, User};

/// What [`KvStore::audit`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// Users checked.
    pub users: usize,
    /// Ledger entries read.
    pub ledger_entries: usize,
    /// Open reservations read.
    pub open_reservations: usize,
    /// Sum of all users' paid credits.
    pub total_paid: u128,
    /// Sum of all users' held credits.
    pub total_held: u128,
    /// Every inconsistency; empty when the store is consistent.
    pub mismatches: Vec<AuditMismatch>,
}

impl AuditReport {
    /// True when no mismatch was found.
    #[must_use]
    pub fn is_consistent(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// One inconsistency found by [`KvStore::audit`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditMismatch {
    /// A record could not be read.
    Corrupt {
        /// Its tree.
        tree: &'static str,
        /// Its key.
        key: String,
        /// What was wrong.
        detail: String,
    },
    /// The ledger's paid deltas do not add up to the balance.
    Paid {
        /// The user.
        uid: Uid,
        /// Sum of the user's `paid_delta`.
        ledger_sum: i128,
        /// The balance's paid credits.
        paid: u64,
    },
    /// The open reservations do not add up to the held credits.
    Held {
        /// The user.
        uid: Uid,
        /// Sum of the user's open reservations.
        reserved: u128,
        /// The balance's held credits.
        held: u64,
    },
    /// An entry's `paid_after` is not the running sum of the deltas (or that sum is negative).
    PaidAfter {
        /// The user.
        uid: Uid,
        /// The entry.
        seq: u64,
        /// The running sum of `paid_delta` up to this entry.
        running: i128,
        /// What the entry recorded.
        recorded: u64,
    },
    /// The user's ledger sequence has a gap or does not start at 1.
    SeqGap {
        /// The user.
        uid: Uid,
        /// The seq expected.
        expected: u64,
        /// The seq found.
        found: u64,
    },
    /// The balance's next seq would overwrite or skip ledger entries.
    NextSeq {
        /// The user.
        uid: Uid,
        /// The balance's next seq.
        next_seq: u64,
        /// The user's last ledger seq (0: none).
        last_seq: u64,
    },
    /// An entry's uid or seq differs from its key.
    EntryKey {
        /// The uid of the key.
        uid: Uid,
        /// The seq of the key.
        seq: u64,
    },
    /// Credits (balance, ledger or reservation) of a uid that has no user.
    Orphan {
        /// The uid.
        uid: Uid,
        /// Which tree holds them.
        tree: &'static str,
    },
    /// A reference that does not point at an entry with that reference.
    DanglingReference {
        /// The reference.
        reference: String,
    },
    /// An entry whose reference does not point back at it.
    UnindexedEntry {
        /// The user.
        uid: Uid,
        /// The entry.
        seq: u64,
    },
}

impl fmt::Display for AuditMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditMismatch::Corrupt { tree, key, detail } => {
                write!(f, "corrupt {tree} record {key}: {detail}")
            }
            AuditMismatch::Paid {
                uid,
                ledger_sum,
                paid,
            } => {
                write!(
                    f,
                    "user {uid}: ledger sums to {ledger_sum} paid credits, balance has {paid}"
                )
            }
            AuditMismatch::Held {
                uid,
                reserved,
                held,
            } => {
                write!(
                    f,
                    "user {uid}: open reservations hold {reserved}, balance holds {held}"
                )
            }
            AuditMismatch::PaidAfter {
                uid,
                seq,
                running,
                recorded,
            } => write!(
                f,
                "user {uid} entry {seq}: paid_after {recorded}, running sum {running}"
            ),
            AuditMismatch::SeqGap {
                uid,
                expected,
                found,
            } => {
                write!(
                    f,
                    "user {uid}: ledger seq {found} where {expected} was expected"
                )
            }
            AuditMismatch::NextSeq {
                uid,
                next_seq,
                last_seq,
            } => write!(
                f,
                "user {uid}: next_seq {next_seq} after last entry {last_seq}"
            ),
            AuditMismatch::EntryKey { uid, seq } => {
                write!(f, "ledger entry {uid}/{seq} names another key")
            }
            AuditMismatch::Orphan { uid, tree } => {
                write!(f, "{tree} has records of unknown user {uid}")
            }
            AuditMismatch::DanglingReference { reference } => {
                write!(f, "reference {reference:?} points at no matching entry")
            }
            AuditMismatch::UnindexedEntry { uid, seq } => {
                write!(
                    f,
                    "ledger entry {uid}/{seq} is not indexed by its reference"
                )
            }
        }
    }
}

impl From<StoreError> for AuditMismatch {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Corrupt { tree, key, detail } => {
                AuditMismatch::Corrupt { tree, key, detail }
            }
            other => AuditMismatch::Corrupt {
                tree: "?",
                key: String::new(),
                detail: other.to_string(),
            },
        }
    }
}

/// What the ledger says about one user.
#[derive(Default)]
struct LedgerSums {
    running: i128,
    last_seq: u64,
}

impl KvStore {
    /// Checks, for every user, that the ledger's paid deltas add up to the paid balance (entry
    /// by entry, never below zero), that open reservations add up to the held credits, and
    /// that references and entries point at each other. Unreadable records are reported as
    /// mismatches too; only storage failures are errors.
    pub fn audit(&self) -> Result<AuditReport, StoreError> {
        let t = self.trees()?;
        let mut report = AuditReport::default();
        let mut found = Vec::new();

        let mut users = BTreeSet::new();
        for item in t.users.iter() {
            let (key, raw) = item?;
            match read_u64_key(USERS, &key)
                .and_then(|uid| decode::<User>(USERS, &raw, || uid.to_string()))
            {
                Ok(user) => {
                    users.insert(user.uid);
                }
                Err(e) => found.push(e.into()),
            }
        }
        report.users = users.len();

        let mut balances = BTreeMap::new();
        for item in t.balances.iter() {
            let (key, raw) = item?;
            let read = read_u64_key(BALANCES, &key)
                .and_then(|uid| Ok((Uid(uid), value::read_balance(uid, &raw)?)));
            match read {
                Ok((uid, record)) => {
                    balances.insert(uid, record);
                }
                Err(e) => found.push(e.into()),
            }
        }

        let mut reserved: BTreeMap<Uid, u128> = BTreeMap::new();
        for item in t.reservations.iter() {
            let (key, raw) = item?;
            let read = read_u64_key(RESERVATIONS, &key)
                .and_then(|id| value::read_reservation(ReservationId(id), &raw));
            match read {
                Ok(r) => {
                    report.open_reservations += 1;
                    *reserved.entry(r.uid).or_default() += u128::from(r.amount);
                }
                Err(e) => found.push(e.into()),
            }
        }

        let mut ledgers: BTreeMap<Uid, LedgerSums> = BTreeMap::new();
        for item in t.ledger.iter() {
            let (key, raw) = item?;
            let read = read_pair_key(LEDGER, &key)
                .and_then(|(uid, seq)| Ok((Uid(uid), seq, value::read_entry(uid, seq, &raw)?)));
            let (uid, seq, entry) = match read {
                Ok(read) => read,
                Err(e) => {
                    found.push(e.into());
                    continue;
                }
            };
            report.ledger_entries += 1;
            if entry.uid != uid || entry.seq != seq {
                found.push(AuditMismatch::EntryKey { uid, seq });
            }
            let sums = ledgers.entry(uid).or_default();
            let expected = sums.last_seq.saturating_add(1);
            if seq != expected {
                found.push(AuditMismatch::SeqGap {
                    uid,
                    expected,
                    found: seq,
                });
            }
            sums.last_seq = seq;
            sums.running += i128::from(entry.paid_delta);
            if sums.running < 0 || sums.running != i128::from(entry.paid_after) {
                found.push(AuditMismatch::PaidAfter {
                    uid,
                    seq,
                    running: sums.running,
                    recorded: entry.paid_after,
                });
            }
            let indexed = match t.ledger_refs.get(entry.reference.as_bytes())? {
                Some(raw) => match value::read_ref(entry.reference.as_bytes(), &raw) {
                    Ok(at) => at.uid == uid && at.seq == seq,
                    Err(e) => {
                        found.push(e.into());
                        true
                    }
                },
                None => false,
            };
            if !indexed {
                found.push(AuditMismatch::UnindexedEntry { uid, seq });
            }
        }

        for item in t.ledger_refs.iter() {
            let (key, raw) = item?;
            let reference = String::from_utf8_lossy(&key).into_owned();
            let at = match value::read_ref(&key, &raw) {
                Ok(at) => at,
                Err(e) => {
                    found.push(e.into());
                    continue;
                }
            };
            let matches = match t.ledger.get(crate::codec::pair_key(at.uid.0, at.seq))? {
                Some(raw) => value::read_entry(at.uid.0, at.seq, &raw)
                    .is_ok_and(|e| e.reference.as_bytes() == key.as_slice()),
                None => false,
            };
            if !matches {
                found.push(AuditMismatch::DanglingReference { reference });
            }
        }

        let all: BTreeSet<Uid> = users
            .iter()
            .chain(balances.keys())
            .chain(reserved.keys())
            .chain(ledgers.keys())
            .copied()
            .collect();
        let empty = BalanceRecord::default();
        for uid in all {
            let balance = balances.get(&uid).unwrap_or(&empty);
            if !users.contains(&uid) {
                let tree = if balances.contains_key(&uid) {
                    BALANCES
                } else if ledgers.contains_key(&uid) {
                    LEDGER
                } else {
                    RESERVATIONS
                };
                found.push(AuditMismatch::Orphan { uid, tree });
            }
            let sums = ledgers.get(&uid);
            let ledger_sum = sums.map_or(0, |s| s.running);
            if ledger_sum != i128::from(balance.paid) {
                found.push(AuditMismatch::Paid {
                    uid,
                    ledger_sum,
                    paid: balance.paid,
                });
            }
            let held = reserved.get(&uid).copied().unwrap_or(0);
            if held != u128::from(balance.held) {
                found.push(AuditMismatch::Held {
                    uid,
                    reserved: held,
                    held: balance.held,
                });
            }
            let last_seq = sums.map_or(0, |s| s.last_seq);
            if balance.next_seq != last_seq.saturating_add(1) {
                found.push(AuditMismatch::NextSeq {
                    uid,
                    next_seq: balance.next_seq,
                    last_seq,
                });
            }
            report.total_paid += u128::from(balance.paid);
            report.total_held += u128::from(balance.held);
        }

        report.mismatches = found;
        if !report.is_consistent() {
            tracing::warn!(
                mismatches = report.mismatches.len(),
                "store audit found inconsistencies"
            );
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EntryKind;
    use crate::codec::{pair_key, u64_key};

    #[test]
    fn empty_and_busy_stores_are_consistent() {
        let store = KvStore::open_temporary().unwrap();
        assert!(store.audit().unwrap().is_consistent());
        let a = store.create_user("a").unwrap().uid;
        store
            .grant(a, 100, EntryKind::Purchase, "order", "o1", 1)
            .unwrap();
        let r = store.reserve(a, 30, "m1", 1, 10, 100).unwrap();
        store.reserve(a, 5, "m2", 1, 10, 100).unwrap();
        store.settle(r, 25, "answer", 1, 10, 2).unwrap();
        store
            .debit(a, 10, EntryKind::Refund, "refund", "o1-refund", 3)
            .unwrap();
        let report = store.audit().unwrap();
        assert!(report.is_consistent(), "{:?}", report.mismatches);
        assert_eq!(report.users, 1);
        assert_eq!(report.ledger_entries, 3);
        assert_eq!(report.open_reservations, 1);
        assert_eq!(report.total_paid, 75);
        assert_eq!(report.total_held, 5);
    }

    #[test]
    fn tampered_balance_is_reported() {
        let store = KvStore::open_temporary().unwrap();
        let a = store.create_user("a").unwrap().uid;
        store
            .grant(a, 100, EntryKind::Grant, "gift", "g1", 1)
            .unwrap();
        store.reserve(a, 7, "m1", 1, 0, 100).unwrap();
        let t = store.trees().unwrap();
        t.balances
            .insert(
                u64_key(a.0),
                br#"{"paid":90,"held":0,"free_day":0,"free_used":0,"next_seq":2}"#,
            )
            .unwrap();
        let report = store.audit().unwrap();
        assert!(report.mismatches.contains(&AuditMismatch::Paid {
            uid: a,
            ledger_sum: 100,
            paid: 90
        }));
        assert!(report.mismatches.contains(&AuditMismatch::Held {
            uid: a,
            reserved: 7,
            held: 0
        }));
        assert!(report.mismatches.iter().all(|m| !m.to_string().is_empty()));
    }

    #[test]
    fn tampered_ledger_and_refs_are_reported() {
        let store = KvStore::open_temporary().unwrap();
        let a = store.create_user("a").unwrap().uid;
        store
            .grant(a, 100, EntryKind::Grant, "gift", "g1", 1)
            .unwrap();
        store
            .grant(a, 50, EntryKind::Grant, "gift", "g2", 1)
            .unwrap();
        let t = store.trees().unwrap();
        t.ledger.remove(pair_key(a.0, 1)).unwrap();
        t.ledger.insert(pair_key(a.0, 9), b"not json").unwrap();
        let report = store.audit().unwrap();
        let has = |pred: &dyn Fn(&AuditMismatch) -> bool| report.mismatches.iter().any(pred);
        assert!(has(&|m| matches!(
            m,
            AuditMismatch::SeqGap {
                expected: 1,
                found: 2,
                ..
            }
        )));
        assert!(has(&|m| matches!(
            m,
            AuditMismatch::PaidAfter { seq: 2, .. }
        )));
        assert!(has(
            &|m| matches!(m, AuditMismatch::DanglingReference { reference } if reference == "g1")
        ));
        assert!(has(
            &|m| matches!(m, AuditMismatch::Corrupt { tree: "ledger", key, .. } if key == "1/9")
        ));
        assert!(has(&|m| matches!(
            m,
            AuditMismatch::Paid {
                ledger_sum: 50,
                paid: 150,
                ..
            }
        )));
    }

    #[test]
    fn orphan_credits_are_reported() {
        let store = KvStore::open_temporary().unwrap();
        store
            .trees()
            .unwrap()
            .balances
            .insert(
                u64_key(42),
                br#"{"paid":0,"held":0,"free_day":0,"free_used":0,"next_seq":1}"#,
            )
            .unwrap();
        let report = store.audit().unwrap();
        assert_eq!(
            report.mismatches,
            vec![AuditMismatch::Orphan {
                uid: Uid(42),
                tree: "balances"
            }]
        );
    }
}
