//! Orders on both engines: the cases of `orders.rs`, plus racing notifications.

use super::{assert_consistent, engines};
use crate::{CreditOutcome, EntryKind, Order, OrderStatus, Store, StoreError, Uid};

fn order(uid: Uid, id: &str, method: Option<&str>) -> Order {
    Order {
        id: id.into(),
        uid,
        product_id: "p10".into(),
        product_name: "10 credits".into(),
        channel: "wechat".into(),
        method: method.map(str::to_owned),
        amount_fen: 100,
        credits: 10,
        status: OrderStatus::Created,
        created_at_ms: 1_000,
        expires_at_ms: 100_000,
        code_url: None,
        provider_trade_no: None,
        credited_at_ms: None,
        closed_at_ms: None,
        refunded_at_ms: None,
        plan: None,
    }
}

async fn create(s: &Store, uid: Uid, id: &str) -> Order {
    s.create_order(&order(uid, id, None), 1_000).await.unwrap()
}

#[tokio::test]
async fn credited_exactly_once_with_the_amount_checked() {
    for (engine, s) in engines().await {
        let uid = s.create_user("u").await.unwrap().uid;
        let o = create(&s, uid, "CR1").await;
        assert!(
            matches!(
                s.credit_order("CR1", 99, None, 2_000).await,
                Err(StoreError::AmountMismatch {
                    expected: 100,
                    got: 99
                })
            ),
            "{engine}"
        );
        assert_eq!(s.balance(uid, 0, 0).await.unwrap().paid, 0, "{engine}");
        match s.credit_order("CR1", 100, Some("T1"), 2_000).await.unwrap() {
            CreditOutcome::Credited(entry) => {
                assert_eq!(
                    (entry.kind, entry.paid_delta, entry.reference.as_str()),
                    (EntryKind::Purchase, 10, "order:CR1"),
                    "{engine}"
                );
                assert_eq!(entry.reason, "order CR1: 10 credits", "{engine}");
            }
            other => panic!("{engine}: expected Credited, got {other:?}"),
        }
        assert_eq!(
            s.credit_order("CR1", 100, Some("T1"), 3_000).await.unwrap(),
            CreditOutcome::AlreadyCredited,
            "{engine}"
        );
        assert_eq!(s.balance(uid, 0, 0).await.unwrap().paid, 10, "{engine}");
        let got = s.order(&o.id).await.unwrap().unwrap();
        assert_eq!(got.status, OrderStatus::Credited, "{engine}");
        assert_eq!(got.provider_trade_no.as_deref(), Some("T1"), "{engine}");
        assert_eq!(got.credited_at_ms, Some(2_000), "{engine}");
        assert!(s.open_orders().await.unwrap().is_empty(), "{engine}");
        assert!(
            matches!(
                s.credit_order("nope", 100, None, 0).await,
                Err(StoreError::UnknownOrder(_))
            ),
            "{engine}"
        );
        assert!(
            matches!(
                s.create_order(&order(Uid(55_555), "X", None), 1).await,
                Err(StoreError::UnknownUser(_))
            ),
            "{engine}"
        );
        assert_consistent(engine, &s).await;
    }
}

#[tokio::test]
async fn open_orders_are_reused_per_method_and_h5_never() {
    for (engine, s) in engines().await {
        let uid = s.create_user("u").await.unwrap().uid;
        let with = |id: &str, method: Option<&str>| order(uid, id, method);
        // "native" finds the QR order made before methods existed (method absent).
        let old = create(&s, uid, "M0").await;
        let native = s.create_order(&with("M1", Some("native")), 1_000).await;
        assert_eq!(native.unwrap().id, old.id, "{engine}");
        let j1 = s
            .create_order(&with("M2", Some("jsapi")), 1_000)
            .await
            .unwrap();
        assert_eq!(j1.id, "M2", "{engine}: another method is another order");
        let j2 = s
            .create_order(&with("M3", Some("jsapi")), 1_000)
            .await
            .unwrap();
        assert_eq!(j2.id, "M2", "{engine}");
        let h1 = s
            .create_order(&with("M4", Some("h5")), 1_000)
            .await
            .unwrap();
        let h2 = s
            .create_order(&with("M5", Some("h5")), 1_000)
            .await
            .unwrap();
        assert_eq!(
            (h1.id.as_str(), h2.id.as_str()),
            ("M4", "M5"),
            "{engine}: H5: never reused"
        );
        let mut open: Vec<String> = s
            .open_orders()
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.id)
            .collect();
        open.sort();
        assert_eq!(open, ["M0", "M2", "M4", "M5"], "{engine}");
        assert!(
            matches!(
                s.credit_order("M4", 100, None, 2_000).await.unwrap(),
                CreditOutcome::Credited(_)
            ),
            "{engine}"
        );
        assert_eq!(
            s.close_order("M5", 3_000).await.unwrap().status,
            OrderStatus::Closed,
            "{engine}"
        );
        assert_eq!(s.open_orders().await.unwrap().len(), 2, "{engine}");
        // An id in use is refused; an expired waiting order gives up its slot.
        assert!(
            matches!(
                s.create_order(&with("M2", Some("h5")), 1_000).await,
                Err(StoreError::InvalidInput(_))
            ),
            "{engine}"
        );
        let fresh = s
            .create_order(&with("M6", Some("jsapi")), 200_000)
            .await
            .unwrap();
        assert_eq!(fresh.id, "M6", "{engine}: M2 expired at 100,000");
    }
}

#[tokio::test]
async fn open_orders_are_reused_until_closed_and_late_payments_count() {
    for (engine, s) in engines().await {
        let uid = s.create_user("u").await.unwrap().uid;
        let a = create(&s, uid, "CR1").await;
        let b = create(&s, uid, "CR2").await;
        assert_eq!(a.id, b.id, "{engine}: the open order is reused");
        let closed = s.close_order("CR1", 5_000).await.unwrap();
        assert_eq!(
            (closed.status, closed.closed_at_ms),
            (OrderStatus::Closed, Some(5_000)),
            "{engine}"
        );
        let c = create(&s, uid, "CR3").await;
        assert_eq!(c.id, "CR3", "{engine}: a closed order is not reused");
        // Paid after the local close: still credited.
        assert!(
            matches!(
                s.credit_order("CR1", 100, None, 6_000).await.unwrap(),
                CreditOutcome::Credited(_)
            ),
            "{engine}"
        );
        let after = s.close_order("CR1", 7_000).await.unwrap();
        assert_eq!(
            after.status,
            OrderStatus::Credited,
            "{engine}: a paid order stays paid"
        );
        assert_eq!(s.balance(uid, 0, 0).await.unwrap().paid, 10, "{engine}");
        s.add_order_event("CR1", "notify", "paid", 6_000)
            .await
            .unwrap();
        s.add_order_event("CR1", "query", "SUCCESS", 6_500)
            .await
            .unwrap();
        let ev = s.order_events("CR1").await.unwrap();
        assert_eq!(ev.len(), 2, "{engine}");
        assert_eq!(
            (ev[0].kind.as_str(), ev[1].at_ms),
            ("notify", 6_500),
            "{engine}"
        );
        assert!(s.order_events("CR10").await.unwrap().is_empty(), "{engine}");
        assert!(
            matches!(
                s.close_order("nope", 1).await,
                Err(StoreError::UnknownOrder(_))
            ),
            "{engine}"
        );
    }
}

#[tokio::test]
async fn refunds_take_back_what_is_left_never_below_zero() {
    for (engine, s) in engines().await {
        let uid = s.create_user("u").await.unwrap().uid;
        create(&s, uid, "CR1").await;
        assert!(
            matches!(
                s.refund_order("CR1", "x", 1).await,
                Err(StoreError::OrderState { .. })
            ),
            "{engine}"
        );
        s.credit_order("CR1", 100, None, 2_000).await.unwrap();
        s.debit(uid, 7, EntryKind::Adjust, "spent", "spend-1", 3_000)
            .await
            .unwrap();
        let (o, entry) = s.refund_order("CR1", "asked", 4_000).await.unwrap();
        assert_eq!(
            (o.status, o.refunded_at_ms),
            (OrderStatus::Refunded, Some(4_000)),
            "{engine}"
        );
        let entry = entry.unwrap();
        assert_eq!(
            (entry.paid_delta, entry.kind),
            (-3, EntryKind::Refund),
            "{engine}"
        );
        assert_eq!(entry.reason, "refund of order CR1: asked", "{engine}");
        assert_eq!(s.balance(uid, 0, 0).await.unwrap().paid, 0, "{engine}");
        let (_, again) = s.refund_order("CR1", "asked", 5_000).await.unwrap();
        assert_eq!(again, Some(entry), "{engine}: idempotent");
        assert_eq!(
            s.credit_order("CR1", 100, None, 6_000).await.unwrap(),
            CreditOutcome::AlreadyCredited,
            "{engine}"
        );
        // Nothing left to take: refunded with no entry.
        create(&s, uid, "CR2").await;
        s.credit_order("CR2", 100, None, 7_000).await.unwrap();
        s.debit(uid, 10, EntryKind::Adjust, "spent", "spend-2", 7_500)
            .await
            .unwrap();
        let (o, entry) = s.refund_order("CR2", "late", 8_000).await.unwrap();
        assert_eq!((o.status, entry), (OrderStatus::Refunded, None), "{engine}");
        assert!(
            matches!(
                s.refund_order("nope", "x", 1).await,
                Err(StoreError::UnknownOrder(_))
            ),
            "{engine}"
        );
        assert_consistent(engine, &s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_credited_by_racing_notifications_is_credited_once() {
    for (engine, s) in engines().await {
        let uid = s.create_user("u").await.unwrap().uid;
        for round in 0..5 {
            let id = format!("RACE{round}");
            create(&s, uid, &id).await;
            if round % 2 == 1 {
                // Closed locally first: the late payments race on closed -> credited.
                s.close_order(&id, 1_500).await.unwrap();
            }
            let tasks: Vec<_> = (0..12)
                .map(|i| {
                    let (s, id) = (s.clone(), id.clone());
                    tokio::spawn(
                        async move { s.credit_order(&id, 100, Some("T"), 2_000 + i).await },
                    )
                })
                .collect();
            let mut credited = 0;
            for t in tasks {
                if let CreditOutcome::Credited(_) = t.await.unwrap().unwrap() {
                    credited += 1;
                }
            }
            assert_eq!(credited, 1, "{engine}: round {round}");
        }
        assert_eq!(s.balance(uid, 0, 0).await.unwrap().paid, 50, "{engine}");
        assert_eq!(s.ledger(uid, 100).await.unwrap().len(), 5, "{engine}");
        assert_consistent(engine, &s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_creates_of_one_slot_make_one_order() {
    for (engine, s) in engines().await {
        for round in 0..20 {
            let uid = s.create_user("u").await.unwrap().uid;
            let tasks: Vec<_> = (0..10)
                .map(|i| {
                    let (s, id) = (s.clone(), format!("S{round}-{i}"));
                    tokio::spawn(async move { s.create_order(&order(uid, &id, None), 1_000).await })
                })
                .collect();
            let mut ids = Vec::new();
            for t in tasks {
                ids.push(t.await.unwrap().unwrap().id);
            }
            assert!(
                ids.iter().all(|id| *id == ids[0]),
                "{engine}: round {round}: {ids:?}"
            );
        }
        assert_eq!(
            s.open_orders().await.unwrap().len(),
            20,
            "{engine}: one per user"
        );
    }
}

#[tokio::test]
async fn a_purchase_entry_without_its_order_credited_is_corrupt() {
    for (engine, s) in engines().await {
        let uid = s.create_user("u").await.unwrap().uid;
        create(&s, uid, "CX").await;
        // Someone wrote the purchase reference by hand: crediting must not write a second.
        s.grant(uid, 1, EntryKind::Adjust, "hand", "order:CX", 1)
            .await
            .unwrap();
        assert!(
            matches!(
                s.credit_order("CX", 100, None, 2_000).await,
                Err(StoreError::Corrupt { tree: "orders", .. })
            ),
            "{engine}"
        );
        let o = s.order("CX").await.unwrap().unwrap();
        assert_eq!(
            o.status,
            OrderStatus::Created,
            "{engine}: rolled back whole"
        );
        assert_eq!(s.balance(uid, 0, 0).await.unwrap().paid, 1, "{engine}");
    }
}
