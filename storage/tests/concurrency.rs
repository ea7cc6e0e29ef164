//! Many threads reserve, settle, release, grant and debit on the same few users at once.
//! Whatever the interleaving: paid credits never go negative, nothing is charged beyond what
//! was there, every observed charge is in the ledger exactly once, and the audit is clean.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Barrier, Mutex};

use chatrelay_storage::{EntryKind, KvStore, LedgerEntry, StoreError, Uid};

const THREADS: usize = 32;
const ITERATIONS: usize = 300;
const USERS: usize = 4;
const INITIAL_PAID: u64 = 300;
const FREE_DAILY: u64 = 50;
const GRANT: u64 = 25;
const DEBIT: u64 = 5;

/// xorshift64*: enough randomness for a test, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What one thread saw.
#[derive(Default)]
struct Seen {
    /// Usage entries returned by settle, by reference.
    charges: HashMap<String, LedgerEntry>,
    /// Debits that were applied, by reference.
    debits: HashMap<String, LedgerEntry>,
    reserved: usize,
    refused: usize,
}

#[test]
fn concurrent_credit_operations_stay_consistent() {
    // Temporary: sled, or a fresh PostgreSQL schema when CHATRELAY_TEST_PG_URL is set.
    let store = KvStore::open_temporary().unwrap();
    let uids: Vec<Uid> = (0..USERS)
        .map(|i| {
            let uid = store.create_user(&format!("user{i}")).unwrap().uid;
            store
                .grant(
                    uid,
                    INITIAL_PAID,
                    EntryKind::Purchase,
                    "seed",
                    &format!("seed-{i}"),
                    0,
                )
                .unwrap();
            uid
        })
        .collect();
    // Grant references shared between threads: each must apply once, whoever gets there first.
    let grants: Arc<Mutex<BTreeMap<String, Uid>>> = Arc::default();
    let barrier = Arc::new(Barrier::new(THREADS));

    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, uids, grants, barrier) =
                (store.clone(), uids.clone(), grants.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) * 0x1000_0001));
                let mut seen = Seen::default();
                barrier.wait();
                for i in 0..ITERATIONS {
                    // Half-way through each thread moves to the next day: a new free allowance.
                    let today = if i < ITERATIONS / 2 { 1 } else { 2 };
                    let user_index = rng.below(USERS as u64) as usize;
                    let uid = uids[user_index];
                    let reference = format!("msg-{t}-{i}");
                    let amount = rng.below(21);
                    match store.reserve(uid, amount, &reference, today, FREE_DAILY, i64::MAX) {
                        Ok(id) => {
                            seen.reserved += 1;
                            // Retries of the same message get the same reservation.
                            assert_eq!(
                                store
                                    .reserve(uid, amount, &reference, today, FREE_DAILY, i64::MAX)
                                    .unwrap(),
                                id
                            );
                            if rng.below(10) == 0 {
                                assert!(store.release(id).unwrap());
                            } else {
                                let actual = rng.below(31);
                                let entry = store
                                    .settle(id, actual, "answer", today, FREE_DAILY, i as i64)
                                    .unwrap();
                                let again = store
                                    .settle(id, actual, "answer", today, FREE_DAILY, i as i64)
                                    .unwrap();
                                assert_eq!(entry, again, "settle must be idempotent");
                                if let Some(entry) = entry {
                                    let charged = entry.free_delta.unsigned_abs()
                                        + entry.paid_delta.unsigned_abs();
                                    assert!(charged <= actual);
                                    assert!(entry.free_delta <= 0 && entry.paid_delta <= 0);
                                    seen.charges.insert(reference, entry);
                                }
                            }
                        }
                        Err(StoreError::InsufficientCredits { available, needed }) => {
                            assert!(available < needed);
                            seen.refused += 1;
                        }
                        Err(e) => panic!("reserve failed: {e}"),
                    }
                    if i % 20 == 0 {
                        let reference = format!("grant-{user_index}-{i}-{}", t % 4);
                        let entry = store
                            .grant(uid, GRANT, EntryKind::Grant, "promo", &reference, i as i64)
                            .unwrap();
                        assert_eq!((entry.uid, entry.paid_delta), (uid, GRANT as i64));
                        grants.lock().unwrap().insert(reference, uid);
                    }
                    if i % 30 == 7 {
                        let reference = format!("debit-{t}-{i}");
                        match store.debit(
                            uid,
                            DEBIT,
                            EntryKind::Adjust,
                            "fee",
                            &reference,
                            i as i64,
                        ) {
                            Ok(entry) => {
                                seen.debits.insert(reference, entry);
                            }
                            Err(StoreError::InsufficientCredits { .. }) => {}
                            Err(e) => panic!("debit failed: {e}"),
                        }
                    }
                }
                seen
            })
        })
        .collect();
    let seen: Vec<Seen> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    let report = store.audit().unwrap();
    assert!(report.is_consistent(), "{:#?}", report.mismatches);
    assert_eq!(report.open_reservations, 0);
    assert_eq!(report.total_held, 0);

    let grants = grants.lock().unwrap();
    let reserved: usize = seen.iter().map(|s| s.reserved).sum();
    let refused: usize = seen.iter().map(|s| s.refused).sum();
    assert!(
        reserved > 0 && refused > 0,
        "the test should both spend and run out: {reserved} {refused}"
    );

    for (index, &uid) in uids.iter().enumerate() {
        let ledger = store.ledger(uid, usize::MAX).unwrap();
        let balance = store.balance(uid, 2, FREE_DAILY).unwrap();
        assert_eq!(balance.held, 0);

        // The ledger adds up to the balance, and paid never went below zero on the way.
        let sum: i128 = ledger.iter().map(|e| i128::from(e.paid_delta)).sum();
        assert_eq!(sum, i128::from(balance.paid));
        let mut running: i128 = 0;
        for entry in ledger.iter().rev() {
            running += i128::from(entry.paid_delta);
            assert!(running >= 0);
            assert_eq!(running, i128::from(entry.paid_after));
        }

        // Every charge and debit a thread saw is in the ledger, and nothing else is.
        let usage: Vec<&LedgerEntry> = ledger
            .iter()
            .filter(|e| e.kind == EntryKind::Usage)
            .collect();
        let seen_charges: Vec<&LedgerEntry> = seen
            .iter()
            .flat_map(|s| s.charges.values())
            .filter(|e| e.uid == uid)
            .collect();
        assert_eq!(usage.len(), seen_charges.len());
        for entry in seen_charges {
            assert_eq!(
                store
                    .ledger_by_reference(&entry.reference)
                    .unwrap()
                    .as_ref(),
                Some(entry)
            );
        }
        let debits: Vec<&LedgerEntry> = ledger
            .iter()
            .filter(|e| e.kind == EntryKind::Adjust)
            .collect();
        let seen_debits = seen
            .iter()
            .flat_map(|s| s.debits.values())
            .filter(|e| e.uid == uid)
            .count();
        assert_eq!(debits.len(), seen_debits);

        // Each shared grant reference applied exactly once.
        let user_grants = grants.values().filter(|g| **g == uid).count();
        let granted_entries = ledger.iter().filter(|e| e.kind == EntryKind::Grant).count();
        assert_eq!(granted_entries, user_grants);

        // Nothing was charged beyond what there was: the seed, the grants and two days of free
        // credits, less the debits.
        let free_spent: u64 = usage.iter().map(|e| e.free_delta.unsigned_abs()).sum();
        let paid_spent: u64 = usage.iter().map(|e| e.paid_delta.unsigned_abs()).sum();
        let debited = DEBIT * debits.len() as u64;
        let granted = INITIAL_PAID + GRANT * user_grants as u64;
        assert!(
            free_spent <= 2 * FREE_DAILY,
            "user {index}: {free_spent} free credits spent"
        );
        assert!(
            paid_spent + debited <= granted,
            "user {index}: {paid_spent} + {debited} > {granted}"
        );
        assert_eq!(granted - paid_spent - debited, balance.paid);
    }
}
