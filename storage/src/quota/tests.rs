use super::*;

const DAY: i64 = 100;
const FREE: u64 = 10;
const LATER: i64 = i64::MAX;

fn store_with_paid(paid: u64) -> (KvStore, Uid) {
    let store = KvStore::open_temporary().unwrap();
    let uid = store.create_user("u").unwrap().uid;
    if paid > 0 {
        store
            .grant(uid, paid, EntryKind::Purchase, "order", "seed", 1)
            .unwrap();
    }
    (store, uid)
}

fn assert_consistent(store: &KvStore) {
    let report = store.audit().unwrap();
    assert!(report.is_consistent(), "{:?}", report.mismatches);
}

#[test]
fn new_user_has_only_the_free_allowance() {
    let (store, uid) = store_with_paid(0);
    let b = store.balance(uid, DAY, FREE).unwrap();
    assert_eq!(
        b,
        Balance {
            paid: 0,
            free_left: FREE,
            held: 0,
            available: FREE
        }
    );
    assert!(matches!(
        store.balance(Uid(9), DAY, FREE),
        Err(StoreError::UnknownUser(Uid(9)))
    ));
}

#[test]
fn settle_spends_free_credits_first_then_paid() {
    let (store, uid) = store_with_paid(100);
    let id = store.reserve(uid, 15, "m1", DAY, FREE, LATER).unwrap();
    assert_eq!(store.balance(uid, DAY, FREE).unwrap().available, 95);
    let entry = store
        .settle(id, 15, "answer", DAY, FREE, 5)
        .unwrap()
        .unwrap();
    assert_eq!(
        (entry.free_delta, entry.paid_delta, entry.paid_after),
        (-10, -5, 95)
    );
    assert_eq!(
        (entry.kind, entry.reference.as_str(), entry.seq),
        (EntryKind::Usage, "m1", 2)
    );
    assert_eq!(entry.at_ms, 5);
    let b = store.balance(uid, DAY, FREE).unwrap();
    assert_eq!((b.paid, b.free_left, b.held, b.available), (95, 0, 0, 95));

    // Within the free allowance, paid credits are untouched.
    let (store, uid) = store_with_paid(100);
    let id = store.reserve(uid, 4, "m1", DAY, FREE, LATER).unwrap();
    let entry = store
        .settle(id, 4, "answer", DAY, FREE, 5)
        .unwrap()
        .unwrap();
    assert_eq!(
        (entry.free_delta, entry.paid_delta, entry.paid_after),
        (-4, 0, 100)
    );
    assert_eq!(store.balance(uid, DAY, FREE).unwrap().free_left, 6);
    assert_consistent(&store);
}

#[test]
fn reserve_refuses_more_than_available() {
    let (store, uid) = store_with_paid(20);
    match store.reserve(uid, 31, "m1", DAY, FREE, LATER) {
        Err(StoreError::InsufficientCredits { available, needed }) => {
            assert_eq!((available, needed), (30, 31))
        }
        other => panic!("expected InsufficientCredits, got {other:?}"),
    }
    assert_eq!(store.balance(uid, DAY, FREE).unwrap().held, 0);
    store.reserve(uid, 30, "m2", DAY, FREE, LATER).unwrap();
    assert!(matches!(
        store.reserve(Uid(42), 1, "m3", DAY, FREE, LATER),
        Err(StoreError::UnknownUser(Uid(42)))
    ));
}

#[test]
fn reserve_is_idempotent_on_reference() {
    let (store, uid) = store_with_paid(100);
    let id = store.reserve(uid, 20, "m1", DAY, FREE, LATER).unwrap();
    assert_eq!(store.reserve(uid, 20, "m1", DAY, FREE, LATER).unwrap(), id);
    assert_eq!(store.balance(uid, DAY, FREE).unwrap().held, 20);
    let entry = store
        .settle(id, 12, "answer", DAY, FREE, 1)
        .unwrap()
        .unwrap();
    match store.reserve(uid, 20, "m1", DAY, FREE, LATER) {
        Err(StoreError::AlreadySettled(settled)) => assert_eq!(*settled, entry),
        other => panic!("expected AlreadySettled, got {other:?}"),
    }
    assert_eq!(store.balance(uid, DAY, FREE).unwrap().held, 0);
    // A reference already used by a grant is settled too.
    let grant = store
        .grant(uid, 5, EntryKind::Grant, "gift", "g1", 1)
        .unwrap();
    assert!(
        matches!(store.reserve(uid, 1, "g1", DAY, FREE, LATER), Err(StoreError::AlreadySettled(e)) if *e == grant)
    );
    assert_consistent(&store);
}

#[test]
fn settle_is_idempotent() {
    let (store, uid) = store_with_paid(100);
    let id = store.reserve(uid, 20, "m1", DAY, FREE, LATER).unwrap();
    let first = store
        .settle(id, 25, "answer", DAY, FREE, 1)
        .unwrap()
        .unwrap();
    let again = store
        .settle(id, 25, "answer", DAY + 1, FREE, 2)
        .unwrap()
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(store.ledger(uid, 10).unwrap().len(), 2);
    assert_eq!(store.balance(uid, DAY, FREE).unwrap().paid, 85);
    assert_eq!(store.ledger_by_reference("m1").unwrap(), Some(first));
    assert!(!store.release(id).unwrap());
    assert!(matches!(
        store.settle(ReservationId(987_654), 1, "x", DAY, FREE, 1),
        Err(StoreError::UnknownReservation(ReservationId(987_654)))
    ));
    assert_consistent(&store);
}

#[test]
fn settle_never_charges_more_than_there_is() {
    let (store, uid) = store_with_paid(30);
    let id = store.reserve(uid, 5, "m1", DAY, FREE, LATER).unwrap();
    let entry = store
        .settle(id, 1_000, "long answer", DAY, FREE, 1)
        .unwrap()
        .unwrap();
    assert_eq!(
        (entry.free_delta, entry.paid_delta, entry.paid_after),
        (-10, -30, 0)
    );
    let b = store.balance(uid, DAY, FREE).unwrap();
    assert_eq!((b.paid, b.free_left, b.available), (0, 0, 0));
    // Nothing left: the next answer costs nothing and writes no entry.
    let id = store.reserve(uid, 0, "m2", DAY, FREE, LATER).unwrap();
    assert_eq!(store.settle(id, 7, "answer", DAY, FREE, 2).unwrap(), None);
    assert_consistent(&store);
}

#[test]
fn release_restores_and_frees_the_reference() {
    let (store, uid) = store_with_paid(50);
    let id = store.reserve(uid, 40, "m1", DAY, FREE, LATER).unwrap();
    assert_eq!(store.balance(uid, DAY, FREE).unwrap().available, 20);
    assert!(store.release(id).unwrap());
    assert!(!store.release(id).unwrap());
    let b = store.balance(uid, DAY, FREE).unwrap();
    assert_eq!((b.held, b.available, b.paid), (0, 60, 50));
    assert!(matches!(
        store.settle(id, 1, "x", DAY, FREE, 1),
        Err(StoreError::UnknownReservation(_))
    ));
    assert!(
        store
            .ledger(uid, 10)
            .unwrap()
            .iter()
            .all(|e| e.kind != EntryKind::Usage)
    );
    // The failed answer's reference may be reserved again.
    let retry = store.reserve(uid, 40, "m1", DAY, FREE, LATER).unwrap();
    assert_ne!(retry, id);
    assert_consistent(&store);
}

#[test]
fn stale_reservations_are_released() {
    let (store, uid) = store_with_paid(100);
    store.reserve(uid, 10, "m1", DAY, FREE, 100).unwrap();
    let live = store.reserve(uid, 20, "m2", DAY, FREE, 200).unwrap();
    assert_eq!(store.release_stale_reservations(150).unwrap(), 1);
    assert_eq!(store.balance(uid, DAY, FREE).unwrap().held, 20);
    assert_eq!(store.release_stale_reservations(150).unwrap(), 0);
    // Exactly at the expiry it is not stale yet.
    assert_eq!(store.release_stale_reservations(200).unwrap(), 0);
    assert_eq!(store.release_stale_reservations(i64::MAX).unwrap(), 1);
    assert_eq!(store.balance(uid, DAY, FREE).unwrap().held, 0);
    assert!(matches!(
        store.settle(live, 1, "x", DAY, FREE, 1),
        Err(StoreError::UnknownReservation(_))
    ));
    assert_consistent(&store);
}

#[test]
fn grant_is_idempotent_on_reference() {
    let (store, uid) = store_with_paid(0);
    let first = store
        .grant(uid, 100, EntryKind::Purchase, "order 1", "order:1", 10)
        .unwrap();
    let again = store
        .grant(uid, 100, EntryKind::Purchase, "order 1", "order:1", 20)
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(
        (first.paid_delta, first.paid_after, first.seq),
        (100, 100, 1)
    );
    assert_eq!(store.balance(uid, DAY, 0).unwrap().paid, 100);
    assert_eq!(store.ledger(uid, 10).unwrap().len(), 1);
    // A different amount under the same reference is still the original entry.
    assert_eq!(
        store
            .grant(uid, 5, EntryKind::Grant, "x", "order:1", 30)
            .unwrap(),
        first
    );
    assert_eq!(store.balance(uid, DAY, 0).unwrap().paid, 100);
    assert_consistent(&store);
}

#[test]
fn grant_rejects_bad_input() {
    let (store, uid) = store_with_paid(0);
    assert!(matches!(
        store.grant(uid, 0, EntryKind::Grant, "x", "r", 1),
        Err(StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        store.grant(uid, 1, EntryKind::Grant, "x", "", 1),
        Err(StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        store.grant(uid, u64::MAX, EntryKind::Grant, "x", "r", 1),
        Err(StoreError::InvalidInput(_))
    ));
    store
        .grant(uid, i64::MAX as u64, EntryKind::Grant, "x", "big", 1)
        .unwrap();
    assert!(matches!(
        store.grant(uid, 1, EntryKind::Grant, "x", "more", 1),
        Err(StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        store.grant(Uid(77), 1, EntryKind::Grant, "x", "r2", 1),
        Err(StoreError::UnknownUser(Uid(77)))
    ));
    assert_consistent(&store);
}

#[test]
fn debit_never_goes_below_zero() {
    let (store, uid) = store_with_paid(50);
    assert!(matches!(
        store.debit(uid, 60, EntryKind::Refund, "refund", "d1", 1),
        Err(StoreError::InsufficientCredits {
            available: 50,
            needed: 60
        })
    ));
    // Held credits cannot be debited either (free allowance 0 here: the hold is on paid).
    let id = store.reserve(uid, 30, "m1", DAY, 0, LATER).unwrap();
    assert!(matches!(
        store.debit(uid, 30, EntryKind::Adjust, "fix", "d2", 1),
        Err(StoreError::InsufficientCredits {
            available: 20,
            needed: 30
        })
    ));
    let entry = store
        .debit(uid, 20, EntryKind::Adjust, "fix", "d3", 1)
        .unwrap();
    assert_eq!((entry.paid_delta, entry.paid_after), (-20, 30));
    store.release(id).unwrap();
    assert_eq!(store.balance(uid, DAY, 0).unwrap().paid, 30);
    assert_consistent(&store);
}

#[test]
fn debit_is_idempotent_on_reference() {
    let (store, uid) = store_with_paid(50);
    let first = store
        .debit(uid, 20, EntryKind::Refund, "refund", "refund:1", 1)
        .unwrap();
    let again = store
        .debit(uid, 20, EntryKind::Refund, "refund", "refund:1", 2)
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(store.balance(uid, DAY, 0).unwrap().paid, 30);
    assert_consistent(&store);
}

#[test]
fn ledger_is_newest_first_and_limited() {
    let (store, uid) = store_with_paid(0);
    let other = store.create_user("o").unwrap().uid;
    for i in 1..=5 {
        store
            .grant(uid, i, EntryKind::Grant, "g", &format!("g{i}"), i as i64)
            .unwrap();
    }
    store
        .grant(other, 9, EntryKind::Grant, "g", "other", 1)
        .unwrap();
    let seqs: Vec<u64> = store
        .ledger(uid, 3)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, vec![5, 4, 3]);
    assert_eq!(store.ledger(uid, 100).unwrap().len(), 5);
    assert_eq!(store.ledger(other, 100).unwrap().len(), 1);
    assert_eq!(
        store.ledger_by_reference("g2").unwrap().unwrap().paid_after,
        3
    );
    assert_eq!(store.ledger_by_reference("nope").unwrap(), None);
}

#[test]
fn corrupt_balance_is_an_error_naming_tree_and_key() {
    let (store, uid) = store_with_paid(10);
    store
        .trees()
        .unwrap()
        .balances
        .insert(u64_key(uid.0), b"{\"paid\": -3}")
        .unwrap();
    let check = |result: Result<(), StoreError>| match result {
        Err(StoreError::Corrupt { tree, key, .. }) => {
            assert_eq!((tree, key.as_str()), ("balances", "1"))
        }
        other => panic!("expected Corrupt, got {other:?}"),
    };
    check(store.balance(uid, DAY, FREE).map(drop));
    check(store.reserve(uid, 1, "m1", DAY, FREE, LATER).map(drop));
    check(
        store
            .grant(uid, 1, EntryKind::Grant, "g", "g1", 1)
            .map(drop),
    );
    check(
        store
            .debit(uid, 1, EntryKind::Grant, "g", "d1", 1)
            .map(drop),
    );
}

#[test]
fn corrupt_ledger_records_are_errors() {
    let (store, uid) = store_with_paid(10);
    store
        .trees()
        .unwrap()
        .ledger_refs
        .insert("seed", b"[1,2")
        .unwrap();
    assert!(matches!(
        store.ledger_by_reference("seed"),
        Err(StoreError::Corrupt {
            tree: "ledger_refs",
            ..
        })
    ));
    assert!(matches!(
        store.grant(uid, 1, EntryKind::Grant, "g", "seed", 1),
        Err(StoreError::Corrupt {
            tree: "ledger_refs",
            ..
        })
    ));
    store
        .trees()
        .unwrap()
        .ledger
        .insert(pair_key(uid.0, 1), b"oops")
        .unwrap();
    match store.ledger(uid, 5) {
        Err(StoreError::Corrupt { tree, key, .. }) => {
            assert_eq!((tree, key.as_str()), ("ledger", "1/1"))
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // The next entry would land on an existing key: refused rather than overwritten.
    store
        .trees()
        .unwrap()
        .balances
        .insert(
            u64_key(uid.0),
            br#"{"paid":10,"held":0,"free_day":0,"free_used":0,"next_seq":1}"#,
        )
        .unwrap();
    assert!(matches!(
        store.grant(uid, 1, EntryKind::Grant, "g", "g9", 1),
        Err(StoreError::Corrupt {
            tree: "balances",
            ..
        })
    ));
}

#[test]
fn corrupt_reservation_is_an_error() {
    let (store, uid) = store_with_paid(10);
    let id = store.reserve(uid, 1, "m1", DAY, FREE, LATER).unwrap();
    store
        .trees()
        .unwrap()
        .reservations
        .insert(u64_key(id.0), b"?")
        .unwrap();
    assert!(matches!(
        store.settle(id, 1, "x", DAY, FREE, 1),
        Err(StoreError::Corrupt {
            tree: "reservations",
            ..
        })
    ));
    assert!(matches!(store.release(id), Err(StoreError::Corrupt { .. })));
    assert!(matches!(
        store.release_stale_reservations(LATER),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn purging_settled_reservations_keeps_the_ledger() {
    let (store, uid) = store_with_paid(100);
    let charged = store.reserve(uid, 5, "m1", DAY, 0, LATER).unwrap();
    let entry = store
        .settle(charged, 5, "answer", DAY, 0, 10)
        .unwrap()
        .unwrap();
    let free = store.reserve(uid, 0, "m2", DAY, 0, LATER).unwrap();
    store.settle(free, 0, "answer", DAY, 0, 10).unwrap();
    let recent = store.reserve(uid, 1, "m3", DAY, 0, LATER).unwrap();
    store.settle(recent, 1, "answer", DAY, 0, 500).unwrap();
    let open = store.reserve(uid, 1, "m4", DAY, 0, LATER).unwrap();

    assert_eq!(store.purge_settled_reservations(100).unwrap(), 2);
    assert_eq!(store.purge_settled_reservations(100).unwrap(), 0);
    assert!(matches!(
        store.settle(charged, 5, "x", DAY, 0, 1),
        Err(StoreError::UnknownReservation(_))
    ));
    assert!(
        matches!(store.reserve(uid, 5, "m1", DAY, 0, LATER), Err(StoreError::AlreadySettled(e)) if *e == entry)
    );
    assert_ne!(store.reserve(uid, 0, "m2", DAY, 0, LATER).unwrap(), free);
    // Recent and open ones are untouched.
    assert!(
        store
            .settle(recent, 1, "answer", DAY, 0, 600)
            .unwrap()
            .is_some()
    );
    assert_eq!(store.reserve(uid, 1, "m4", DAY, 0, LATER).unwrap(), open);
    assert_eq!(store.ledger_by_reference("m1").unwrap(), Some(entry));
    assert_consistent(&store);
}

#[test]
fn settle_metered_charges_and_remembers_once() {
    let (store, uid) = store_with_paid(100);
    let id = store.reserve(uid, 15, "m-turns", DAY, FREE, LATER).unwrap();
    let turns = [
        crate::Turn {
            role: "user".into(),
            content: "q".into(),
            at_ms: 5,
        },
        crate::Turn {
            role: "assistant".into(),
            content: "a".into(),
            at_ms: 5,
        },
    ];
    let remember = Remember {
        conversation: "mp:main:o1",
        turns: &turns,
        max_turns: 10,
    };
    let entry = store
        .settle_metered(id, 15, "answer", DAY, FREE, 5, Some(remember), None)
        .unwrap()
        .unwrap();
    assert_eq!((entry.free_delta, entry.paid_delta), (-10, -5));
    assert_eq!(store.conversation("mp:main:o1").unwrap(), turns.to_vec());
    // Settling again answers the same and appends nothing.
    let again = store
        .settle_metered(id, 15, "answer", DAY, FREE, 6, Some(remember), None)
        .unwrap()
        .unwrap();
    assert_eq!(again, entry);
    assert_eq!(store.conversation("mp:main:o1").unwrap().len(), 2);
    assert_eq!(store.balance(uid, DAY, FREE).unwrap().paid, 95);
    // An unknown reservation writes no turn either.
    assert!(matches!(
        store.settle_metered(
            ReservationId(u64::MAX),
            1,
            "x",
            DAY,
            FREE,
            7,
            Some(remember),
            None
        ),
        Err(StoreError::UnknownReservation(_))
    ));
    assert_eq!(store.conversation("mp:main:o1").unwrap().len(), 2);
    assert_consistent(&store);
}

#[test]
fn a_purge_of_settled_reservations_stops_at_the_recent_ones() {
    let (store, uid) = store_with_paid(100_000);
    // Ids grow with time: 300 old settlements, then RECENT_IN_A_ROW recent ones, then one
    // old straggler (held long, settled late... but before the cut-off), then more recent.
    let settle_at = |i: usize, at: i64| {
        let id = store
            .reserve(uid, 1, &format!("r{i}"), DAY, 0, LATER)
            .unwrap();
        store.settle(id, 1, "answer", DAY, 0, at).unwrap();
    };
    for i in 0..300 {
        settle_at(i, 10);
    }
    for i in 300..300 + super::settle::RECENT_IN_A_ROW {
        settle_at(i, 500);
    }
    settle_at(10_000, 10);
    assert_eq!(store.purge_settled_reservations(100).unwrap(), 300);
    // The straggler behind a full row of recent ones waits for them.
    assert_eq!(store.purge_settled_reservations(100).unwrap(), 0);
    assert_eq!(store.purge_settled_reservations(1000).unwrap(), 257);
}

#[test]
fn ledger_pages_go_back_by_seq() {
    let (store, uid) = store_with_paid(0);
    let other = store.create_user("o").unwrap().uid;
    for i in 1..=5 {
        store
            .grant(uid, i, EntryKind::Grant, "g", &format!("p{i}"), i as i64)
            .unwrap();
    }
    store
        .grant(other, 9, EntryKind::Grant, "g", "other-p", 1)
        .unwrap();
    let seqs = |v: &[LedgerEntry]| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    let (first, next) = store.ledger_page(uid, None, 2).unwrap();
    assert_eq!((seqs(&first), next), (vec![5, 4], Some(4)));
    let (second, next) = store.ledger_page(uid, next, 2).unwrap();
    assert_eq!((seqs(&second), next), (vec![3, 2], Some(2)));
    let (third, next) = store.ledger_page(uid, next, 2).unwrap();
    assert_eq!((seqs(&third), next), (vec![1], None));
    let (all, next) = store.ledger_page(uid, None, 100).unwrap();
    assert_eq!((all.len(), next), (5, None));
    assert!(store.ledger_page(Uid(999), None, 5).unwrap().0.is_empty());
}
