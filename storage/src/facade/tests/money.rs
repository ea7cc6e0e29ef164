//! Credits on both engines: the cases of `quota/tests.rs`, the same answers, plus races.

use std::sync::Arc;

use super::{assert_consistent, engines, with_paid};
use crate::{Balance, EntryKind, ReservationId, StoreError, Uid};

const DAY: i64 = 100;
const FREE: u64 = 10;
const LATER: i64 = i64::MAX;

#[tokio::test]
async fn new_user_has_only_the_free_allowance() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 0).await;
        let b = store.balance(uid, DAY, FREE).await.unwrap();
        let want = Balance {
            paid: 0,
            free_left: FREE,
            held: 0,
            available: FREE,
        };
        assert_eq!(b, want, "{engine}");
        assert!(
            matches!(
                store.balance(Uid(9_999), DAY, FREE).await,
                Err(StoreError::UnknownUser(Uid(9_999)))
            ),
            "{engine}"
        );
    }
}

#[tokio::test]
async fn settle_spends_free_credits_first_then_paid() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 100).await;
        let id = store
            .reserve(uid, 15, "m1", DAY, FREE, LATER)
            .await
            .unwrap();
        assert_eq!(
            store.balance(uid, DAY, FREE).await.unwrap().available,
            95,
            "{engine}"
        );
        let entry = store.settle(id, 15, "answer", DAY, FREE, 5).await.unwrap();
        let entry = entry.unwrap();
        assert_eq!(
            (entry.free_delta, entry.paid_delta, entry.paid_after),
            (-10, -5, 95),
            "{engine}"
        );
        assert_eq!(
            (entry.kind, entry.reference.as_str(), entry.seq, entry.at_ms),
            (EntryKind::Usage, "m1", 2, 5),
            "{engine}"
        );
        let b = store.balance(uid, DAY, FREE).await.unwrap();
        assert_eq!(
            (b.paid, b.free_left, b.held, b.available),
            (95, 0, 0, 95),
            "{engine}"
        );

        // Within the free allowance, paid credits are untouched.
        let other = with_paid(&store, 100).await;
        let id = store
            .reserve(other, 4, "m2", DAY, FREE, LATER)
            .await
            .unwrap();
        let entry = store.settle(id, 4, "answer", DAY, FREE, 5).await.unwrap();
        let entry = entry.unwrap();
        assert_eq!(
            (entry.free_delta, entry.paid_delta, entry.paid_after),
            (-4, 0, 100),
            "{engine}"
        );
        assert_eq!(
            store.balance(other, DAY, FREE).await.unwrap().free_left,
            6,
            "{engine}"
        );
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test]
async fn a_new_day_resets_the_free_allowance_and_an_old_day_does_not() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 0).await;
        let id = store
            .reserve(uid, 10, "m1", DAY, FREE, LATER)
            .await
            .unwrap();
        store.settle(id, 10, "answer", DAY, FREE, 1).await.unwrap();
        assert_eq!(
            store.balance(uid, DAY, FREE).await.unwrap().available,
            0,
            "{engine}"
        );
        assert!(
            matches!(
                store.reserve(uid, 1, "m2", DAY, FREE, LATER).await,
                Err(StoreError::InsufficientCredits {
                    available: 0,
                    needed: 1
                })
            ),
            "{engine}"
        );
        // A lagging caller's earlier day does not get a second allowance.
        assert_eq!(
            store.balance(uid, DAY - 1, FREE).await.unwrap().free_left,
            0,
            "{engine}"
        );
        assert_eq!(
            store.balance(uid, DAY + 1, FREE).await.unwrap().free_left,
            FREE,
            "{engine}"
        );
        let id = store
            .reserve(uid, 3, "m3", DAY + 1, FREE, LATER)
            .await
            .unwrap();
        store
            .settle(id, 3, "answer", DAY + 1, FREE, 2)
            .await
            .unwrap();
        assert_eq!(
            store.balance(uid, DAY + 1, FREE).await.unwrap().free_left,
            7,
            "{engine}"
        );
        assert_eq!(
            store.balance(uid, DAY + 2, FREE).await.unwrap().free_left,
            FREE,
            "{engine}"
        );
    }
}

#[tokio::test]
async fn reserve_refuses_more_than_available() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 20).await;
        match store.reserve(uid, 31, "m1", DAY, FREE, LATER).await {
            Err(StoreError::InsufficientCredits { available, needed }) => {
                assert_eq!((available, needed), (30, 31), "{engine}")
            }
            other => panic!("{engine}: expected InsufficientCredits, got {other:?}"),
        }
        assert_eq!(
            store.balance(uid, DAY, FREE).await.unwrap().held,
            0,
            "{engine}"
        );
        store
            .reserve(uid, 30, "m2", DAY, FREE, LATER)
            .await
            .unwrap();
        assert!(
            matches!(
                store.reserve(Uid(42_000), 1, "m3", DAY, FREE, LATER).await,
                Err(StoreError::UnknownUser(Uid(42_000)))
            ),
            "{engine}"
        );
    }
}

#[tokio::test]
async fn held_credits_cannot_be_reserved_twice() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 90).await;
        store
            .reserve(uid, 60, "m1", DAY, FREE, LATER)
            .await
            .unwrap();
        assert!(
            matches!(
                store.reserve(uid, 50, "m2", DAY, FREE, LATER).await,
                Err(StoreError::InsufficientCredits {
                    available: 40,
                    needed: 50
                })
            ),
            "{engine}"
        );
        store
            .reserve(uid, 40, "m3", DAY, FREE, LATER)
            .await
            .unwrap();
        let b = store.balance(uid, DAY, FREE).await.unwrap();
        assert_eq!((b.held, b.available), (100, 0), "{engine}");
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test]
async fn zero_reservation_gives_an_id_and_settles_to_nothing() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 0).await;
        let id = store.reserve(uid, 0, "m1", DAY, 0, LATER).await.unwrap();
        assert_eq!(
            store.settle(id, 0, "answer", DAY, 0, 1).await.unwrap(),
            None,
            "{engine}"
        );
        assert_eq!(
            store.settle(id, 0, "answer", DAY, 0, 1).await.unwrap(),
            None,
            "{engine}"
        );
        assert_eq!(
            store.reserve(uid, 0, "m1", DAY, 0, LATER).await.unwrap(),
            id,
            "{engine}"
        );
        assert!(store.ledger(uid, 10).await.unwrap().is_empty(), "{engine}");
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test]
async fn reserve_is_idempotent_on_reference() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 100).await;
        let id = store
            .reserve(uid, 20, "m1", DAY, FREE, LATER)
            .await
            .unwrap();
        assert_eq!(
            store
                .reserve(uid, 20, "m1", DAY, FREE, LATER)
                .await
                .unwrap(),
            id,
            "{engine}"
        );
        assert_eq!(
            store.balance(uid, DAY, FREE).await.unwrap().held,
            20,
            "{engine}"
        );
        let entry = store.settle(id, 12, "answer", DAY, FREE, 1).await.unwrap();
        let entry = entry.unwrap();
        match store.reserve(uid, 20, "m1", DAY, FREE, LATER).await {
            Err(StoreError::AlreadySettled(settled)) => assert_eq!(*settled, entry, "{engine}"),
            other => panic!("{engine}: expected AlreadySettled, got {other:?}"),
        }
        assert_eq!(
            store.balance(uid, DAY, FREE).await.unwrap().held,
            0,
            "{engine}"
        );
        // A reference already used by a grant is settled too.
        let grant = store
            .grant(uid, 5, EntryKind::Grant, "gift", "g1", 1)
            .await
            .unwrap();
        assert!(
            matches!(
                store.reserve(uid, 1, "g1", DAY, FREE, LATER).await,
                Err(StoreError::AlreadySettled(e)) if *e == grant
            ),
            "{engine}"
        );
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test]
async fn settle_is_idempotent() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 100).await;
        let id = store
            .reserve(uid, 20, "m1", DAY, FREE, LATER)
            .await
            .unwrap();
        let first = store.settle(id, 25, "answer", DAY, FREE, 1).await.unwrap();
        let again = store
            .settle(id, 25, "answer", DAY + 1, FREE, 2)
            .await
            .unwrap();
        assert!(first.is_some(), "{engine}");
        assert_eq!(first, again, "{engine}");
        assert_eq!(store.ledger(uid, 10).await.unwrap().len(), 2, "{engine}");
        assert_eq!(
            store.balance(uid, DAY, FREE).await.unwrap().paid,
            85,
            "{engine}"
        );
        assert_eq!(
            store.ledger_by_reference("m1").await.unwrap(),
            first,
            "{engine}"
        );
        assert!(!store.release(id).await.unwrap(), "{engine}");
        assert!(
            matches!(
                store
                    .settle(ReservationId(987_654), 1, "x", DAY, FREE, 1)
                    .await,
                Err(StoreError::UnknownReservation(ReservationId(987_654)))
            ),
            "{engine}"
        );
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test]
async fn settle_never_charges_more_than_there_is() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 30).await;
        let id = store.reserve(uid, 5, "m1", DAY, FREE, LATER).await.unwrap();
        let entry = store.settle(id, 1_000, "long", DAY, FREE, 1).await.unwrap();
        let entry = entry.unwrap();
        assert_eq!(
            (entry.free_delta, entry.paid_delta, entry.paid_after),
            (-10, -30, 0),
            "{engine}"
        );
        let b = store.balance(uid, DAY, FREE).await.unwrap();
        assert_eq!((b.paid, b.free_left, b.available), (0, 0, 0), "{engine}");
        // Nothing left: the next answer costs nothing and writes no entry.
        let id = store.reserve(uid, 0, "m2", DAY, FREE, LATER).await.unwrap();
        assert_eq!(
            store.settle(id, 7, "answer", DAY, FREE, 2).await.unwrap(),
            None,
            "{engine}"
        );
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test]
async fn release_restores_and_frees_the_reference() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 50).await;
        let id = store
            .reserve(uid, 40, "m1", DAY, FREE, LATER)
            .await
            .unwrap();
        assert_eq!(
            store.balance(uid, DAY, FREE).await.unwrap().available,
            20,
            "{engine}"
        );
        assert!(store.release(id).await.unwrap(), "{engine}");
        assert!(!store.release(id).await.unwrap(), "{engine}");
        let b = store.balance(uid, DAY, FREE).await.unwrap();
        assert_eq!((b.held, b.available, b.paid), (0, 60, 50), "{engine}");
        assert!(
            matches!(
                store.settle(id, 1, "x", DAY, FREE, 1).await,
                Err(StoreError::UnknownReservation(_))
            ),
            "{engine}"
        );
        let ledger = store.ledger(uid, 10).await.unwrap();
        assert!(
            ledger.iter().all(|e| e.kind != EntryKind::Usage),
            "{engine}"
        );
        // The failed answer's reference may be reserved again.
        let retry = store
            .reserve(uid, 40, "m1", DAY, FREE, LATER)
            .await
            .unwrap();
        assert_ne!(retry, id, "{engine}");
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test]
async fn stale_reservations_are_released() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 100).await;
        store.reserve(uid, 10, "m1", DAY, FREE, 100).await.unwrap();
        let live = store.reserve(uid, 20, "m2", DAY, FREE, 200).await.unwrap();
        assert_eq!(
            store.release_stale_reservations(150).await.unwrap(),
            1,
            "{engine}"
        );
        assert_eq!(
            store.balance(uid, DAY, FREE).await.unwrap().held,
            20,
            "{engine}"
        );
        assert_eq!(
            store.release_stale_reservations(150).await.unwrap(),
            0,
            "{engine}"
        );
        // Exactly at the expiry it is not stale yet.
        assert_eq!(
            store.release_stale_reservations(200).await.unwrap(),
            0,
            "{engine}"
        );
        assert_eq!(
            store.release_stale_reservations(LATER).await.unwrap(),
            1,
            "{engine}"
        );
        assert_eq!(
            store.balance(uid, DAY, FREE).await.unwrap().held,
            0,
            "{engine}"
        );
        assert!(
            matches!(
                store.settle(live, 1, "x", DAY, FREE, 1).await,
                Err(StoreError::UnknownReservation(_))
            ),
            "{engine}"
        );
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test]
async fn grant_is_idempotent_on_reference() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 0).await;
        let grant = |credits, kind, at| store.grant(uid, credits, kind, "order 1", "order:1", at);
        let first = grant(100, EntryKind::Purchase, 10).await.unwrap();
        let again = grant(100, EntryKind::Purchase, 20).await.unwrap();
        assert_eq!(first, again, "{engine}");
        assert_eq!(
            (first.paid_delta, first.paid_after, first.seq),
            (100, 100, 1),
            "{engine}"
        );
        assert_eq!(
            store.balance(uid, DAY, 0).await.unwrap().paid,
            100,
            "{engine}"
        );
        assert_eq!(store.ledger(uid, 10).await.unwrap().len(), 1, "{engine}");
        // A different amount under the same reference is still the original entry.
        assert_eq!(
            grant(5, EntryKind::Grant, 30).await.unwrap(),
            first,
            "{engine}"
        );
        assert_eq!(
            store.balance(uid, DAY, 0).await.unwrap().paid,
            100,
            "{engine}"
        );
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test]
async fn grant_rejects_bad_input() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 0).await;
        let grant =
            |credits, reference| store.grant(uid, credits, EntryKind::Grant, "x", reference, 1);
        assert!(
            matches!(grant(0, "r").await, Err(StoreError::InvalidInput(_))),
            "{engine}"
        );
        assert!(
            matches!(grant(1, "").await, Err(StoreError::InvalidInput(_))),
            "{engine}"
        );
        assert!(
            matches!(grant(u64::MAX, "r").await, Err(StoreError::InvalidInput(_))),
            "{engine}"
        );
        grant(i64::MAX as u64, "big").await.unwrap();
        assert!(
            matches!(grant(1, "more").await, Err(StoreError::InvalidInput(_))),
            "{engine}"
        );
        assert!(
            matches!(
                store
                    .grant(Uid(77_000), 1, EntryKind::Grant, "x", "r2", 1)
                    .await,
                Err(StoreError::UnknownUser(Uid(77_000)))
            ),
            "{engine}"
        );
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test]
async fn debit_never_goes_below_zero_or_below_what_is_held() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 50).await;
        let debit =
            |credits, reference| store.debit(uid, credits, EntryKind::Adjust, "fix", reference, 1);
        assert!(
            matches!(
                debit(60, "d1").await,
                Err(StoreError::InsufficientCredits {
                    available: 50,
                    needed: 60
                })
            ),
            "{engine}"
        );
        // Held credits cannot be debited either (free allowance 0 here: the hold is on paid).
        let id = store.reserve(uid, 30, "m1", DAY, 0, LATER).await.unwrap();
        assert!(
            matches!(
                debit(30, "d2").await,
                Err(StoreError::InsufficientCredits {
                    available: 20,
                    needed: 30
                })
            ),
            "{engine}"
        );
        let entry = debit(20, "d3").await.unwrap();
        assert_eq!((entry.paid_delta, entry.paid_after), (-20, 30), "{engine}");
        // Idempotent: the same reference again is the same entry, nothing taken twice.
        assert_eq!(debit(20, "d3").await.unwrap(), entry, "{engine}");
        store.release(id).await.unwrap();
        assert_eq!(
            store.balance(uid, DAY, 0).await.unwrap().paid,
            30,
            "{engine}"
        );
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test]
async fn ledger_is_newest_first_and_limited() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 0).await;
        let other = store.create_user("o").await.unwrap().uid;
        for i in 1..=5u64 {
            let reference = format!("g{i}");
            store
                .grant(uid, i, EntryKind::Grant, "g", &reference, i as i64)
                .await
                .unwrap();
        }
        store
            .grant(other, 9, EntryKind::Grant, "g", "other", 1)
            .await
            .unwrap();
        let seqs: Vec<u64> = store
            .ledger(uid, 3)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![5, 4, 3], "{engine}");
        assert_eq!(store.ledger(uid, 100).await.unwrap().len(), 5, "{engine}");
        assert_eq!(store.ledger(other, 100).await.unwrap().len(), 1, "{engine}");
        let g2 = store.ledger_by_reference("g2").await.unwrap().unwrap();
        assert_eq!(g2.paid_after, 3, "{engine}");
        assert_eq!(
            store.ledger_by_reference("nope").await.unwrap(),
            None,
            "{engine}"
        );
    }
}

#[tokio::test]
async fn purging_settled_reservations_keeps_the_ledger() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 100).await;
        let charged = store.reserve(uid, 5, "m1", DAY, 0, LATER).await.unwrap();
        let entry = store
            .settle(charged, 5, "answer", DAY, 0, 10)
            .await
            .unwrap();
        let entry = entry.unwrap();
        let free = store.reserve(uid, 0, "m2", DAY, 0, LATER).await.unwrap();
        store.settle(free, 0, "answer", DAY, 0, 10).await.unwrap();
        let recent = store.reserve(uid, 1, "m3", DAY, 0, LATER).await.unwrap();
        store
            .settle(recent, 1, "answer", DAY, 0, 500)
            .await
            .unwrap();
        let open = store.reserve(uid, 1, "m4", DAY, 0, LATER).await.unwrap();

        assert_eq!(
            store.purge_settled_reservations(100).await.unwrap(),
            2,
            "{engine}"
        );
        assert_eq!(
            store.purge_settled_reservations(100).await.unwrap(),
            0,
            "{engine}"
        );
        assert!(
            matches!(
                store.settle(charged, 5, "x", DAY, 0, 1).await,
                Err(StoreError::UnknownReservation(_))
            ),
            "{engine}"
        );
        assert!(
            matches!(
                store.reserve(uid, 5, "m1", DAY, 0, LATER).await,
                Err(StoreError::AlreadySettled(e)) if *e == entry
            ),
            "{engine}"
        );
        assert_ne!(
            store.reserve(uid, 0, "m2", DAY, 0, LATER).await.unwrap(),
            free,
            "{engine}"
        );
        // Recent and open ones are untouched.
        let again = store
            .settle(recent, 1, "answer", DAY, 0, 600)
            .await
            .unwrap();
        assert!(again.is_some(), "{engine}");
        assert_eq!(
            store.reserve(uid, 1, "m4", DAY, 0, LATER).await.unwrap(),
            open,
            "{engine}"
        );
        assert_eq!(
            store.ledger_by_reference("m1").await.unwrap(),
            Some(entry),
            "{engine}"
        );
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_settles_of_one_reservation_write_one_entry() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 100).await;
        for round in 0..5 {
            let reference = format!("race{round}");
            let id = store
                .reserve(uid, 5, &reference, DAY, 0, LATER)
                .await
                .unwrap();
            let tasks: Vec<_> = (0..20)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move { store.settle(id, 5, "answer", DAY, 0, i).await })
                })
                .collect();
            let mut results = Vec::new();
            for t in tasks {
                results.push(t.await.unwrap().unwrap().unwrap());
            }
            assert!(
                results.iter().all(|e| *e == results[0]),
                "{engine}: round {round}"
            );
            assert_eq!(results[0].reference, reference, "{engine}");
        }
        let ledger = store.ledger(uid, 100).await.unwrap();
        assert_eq!(
            ledger.len(),
            6,
            "{engine}: the grant and one entry per reservation"
        );
        assert_eq!(
            store.balance(uid, DAY, 0).await.unwrap().paid,
            75,
            "{engine}"
        );
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reserves_never_overdraw() {
    for (engine, store) in engines().await {
        // 100 paid + 10 free: 40 reserves of 7 credits, of which 15 fit (105).
        let uid = with_paid(&store, 100).await;
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .reserve(uid, 7, &format!("r{i}"), DAY, FREE, LATER)
                        .await
                })
            })
            .collect();
        let (mut granted, mut refused) = (Vec::new(), 0);
        for t in tasks {
            match t.await.unwrap() {
                Ok(id) => granted.push(id),
                Err(StoreError::InsufficientCredits { needed: 7, .. }) => refused += 1,
                Err(e) => panic!("{engine}: unexpected {e:?}"),
            }
        }
        assert_eq!((granted.len(), refused), (15, 25), "{engine}");
        let b = store.balance(uid, DAY, FREE).await.unwrap();
        assert_eq!((b.held, b.available), (105, 5), "{engine}");
        // Settling them all concurrently (charging more than held) never goes below zero.
        let tasks: Vec<_> = granted
            .into_iter()
            .map(|id| {
                let store = store.clone();
                tokio::spawn(async move { store.settle(id, 9, "a", DAY, FREE, 1).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let b = store.balance(uid, DAY, FREE).await.unwrap();
        assert_eq!(
            (b.paid, b.free_left, b.held),
            (0, 0, 0),
            "{engine}: 110 spent, no more"
        );
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_reserves_and_grants_of_one_reference_happen_once() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 100).await;
        let other = with_paid(&store, 0).await;
        let store = Arc::new(store);
        let reserves: Vec<_> = (0..16)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.reserve(uid, 10, "same", DAY, 0, LATER).await })
            })
            .collect();
        // Grants of one reference, half to each user: one entry, one user credited.
        let grants: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                let to = if i % 2 == 0 { uid } else { other };
                tokio::spawn(
                    async move { store.grant(to, 3, EntryKind::Grant, "g", "gift", 1).await },
                )
            })
            .collect();
        let mut ids = Vec::new();
        for t in reserves {
            ids.push(t.await.unwrap().unwrap());
        }
        assert!(
            ids.iter().all(|id| *id == ids[0]),
            "{engine}: one reservation"
        );
        assert_eq!(
            store.balance(uid, DAY, 0).await.unwrap().held,
            10,
            "{engine}: held once"
        );
        let mut entries = Vec::new();
        for t in grants {
            entries.push(t.await.unwrap().unwrap());
        }
        assert!(
            entries.iter().all(|e| *e == entries[0]),
            "{engine}: one entry"
        );
        let paid = store.balance(uid, DAY, 0).await.unwrap().paid
            + store.balance(other, DAY, 0).await.unwrap().paid;
        assert_eq!(paid, 103, "{engine}: credited once");
        assert_consistent(engine, &store).await;
    }
}
