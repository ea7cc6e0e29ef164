//! Membership plans on both engines: the cases of `storage/tests/plans.rs` (a plan order's
//! grant, its daily credits after the base allowance, extension, replacement, refund), the
//! same answers.

use super::{assert_consistent, engines, month};
use crate::{
    CreditOutcome, EntryKind, Order, OrderStatus, PlanGrant, Store, Uid, UsageNote, UsageOutcome,
};

const DAY_MS: i64 = 86_400_000;
const FREE: u64 = 5;
/// UTC+8, as `quota.timezone = "Asia/Shanghai"`.
const TZ: i32 = 8 * 3600;
/// Day 20,000 (2024-10-04) at 00:00 in UTC+8.
const START_MS: i64 = 20_000 * DAY_MS - (TZ as i64) * 1000;

fn week() -> PlanGrant {
    PlanGrant {
        id: "week".into(),
        name: "周卡".into(),
        days: 7,
        daily_credits: 50,
        utc_offset_secs: TZ,
    }
}

async fn plan_order(s: &Store, uid: Uid, id: &str, plan: PlanGrant, at_ms: i64) -> Order {
    let o = Order {
        id: id.into(),
        uid,
        product_id: plan.id.clone(),
        product_name: plan.name.clone(),
        channel: "wechat".into(),
        method: None,
        amount_fen: 3000,
        credits: 0,
        status: OrderStatus::Created,
        created_at_ms: at_ms,
        expires_at_ms: at_ms + 900_000,
        code_url: None,
        provider_trade_no: None,
        credited_at_ms: None,
        closed_at_ms: None,
        refunded_at_ms: None,
        plan: Some(plan),
    };
    s.create_order(&o, at_ms).await.unwrap()
}

async fn free_left(s: &Store, uid: Uid, day: i64) -> u64 {
    s.balance(uid, day, FREE).await.unwrap().free_left
}

/// One answer of `cost` on `day`, with its usage record; returns (free, paid, plan) charged.
async fn answer(s: &Store, uid: Uid, reference: &str, cost: u64, day: i64) -> (u64, u64, u64) {
    let now = day * DAY_MS;
    let id = s
        .reserve(uid, cost, reference, day, FREE, i64::MAX)
        .await
        .unwrap();
    let note = UsageNote {
        platform: "web",
        model: "m",
        prompt_tokens: 1,
        completion_tokens: 1,
        outcome: UsageOutcome::Answered,
    };
    s.settle_metered(id, cost, "answer", day, FREE, now, None, Some(note))
        .await
        .unwrap();
    let page = s.usage(uid, None, 100).await.unwrap();
    let r = page.records.iter().find(|r| r.id == id).unwrap();
    (r.free, r.paid, r.plan)
}

#[tokio::test]
async fn a_paid_plan_order_grants_daily_credits_for_its_days_exactly_once() {
    for (engine, s) in engines().await {
        let uid = s.create_user("u").await.unwrap().uid;
        let order = plan_order(&s, uid, "P1", month(), START_MS).await;
        assert_eq!(
            order.plan,
            Some(month()),
            "{engine}: the order keeps its plan"
        );
        assert_eq!(
            s.order("P1").await.unwrap().unwrap().plan,
            Some(month()),
            "{engine}"
        );
        assert_eq!(
            free_left(&s, uid, 20_000).await,
            FREE,
            "{engine}: nothing before the payment"
        );
        let CreditOutcome::Credited(entry) = s
            .credit_order("P1", 3000, Some("T1"), START_MS)
            .await
            .unwrap()
        else {
            panic!("{engine}: not credited");
        };
        assert_eq!((entry.paid_delta, entry.free_delta), (0, 0), "{engine}");
        assert_eq!(entry.kind, EntryKind::Purchase, "{engine}");
        assert_eq!(entry.reference, "order:P1", "{engine}");
        assert!(
            entry.reason.contains("2024-10-04 至 2024-11-02"),
            "{engine}: {}",
            entry.reason
        );
        // A replayed notification: nothing more.
        assert_eq!(
            s.credit_order("P1", 3000, Some("T1"), START_MS + 60_000)
                .await
                .unwrap(),
            CreditOutcome::AlreadyCredited,
            "{engine}"
        );
        let plan = s.plan(uid).await.unwrap().unwrap();
        assert_eq!((plan.start_day, plan.end_day), (20_000, 20_030), "{engine}");
        assert_eq!(
            s.ledger(uid, 10).await.unwrap().len(),
            1,
            "{engine}: one grant record"
        );
        for day in [20_000, 20_015, 20_029] {
            assert_eq!(
                free_left(&s, uid, day).await,
                FREE + 20,
                "{engine}: day {day}"
            );
        }
        assert_eq!(
            free_left(&s, uid, 20_030).await,
            FREE,
            "{engine}: expired after 30 days"
        );
        assert_eq!(
            free_left(&s, uid, 19_999).await,
            FREE,
            "{engine}: not before"
        );
        assert_consistent(engine, &s).await;
    }
}

#[tokio::test]
async fn the_base_allowance_goes_first_then_the_plan_then_paid_credits() {
    for (engine, s) in engines().await {
        let uid = s.create_user("u").await.unwrap().uid;
        s.grant(uid, 100, EntryKind::Purchase, "seed", "seed", 1)
            .await
            .unwrap();
        plan_order(&s, uid, "P1", month(), START_MS).await;
        s.credit_order("P1", 3000, None, START_MS).await.unwrap();
        assert_eq!(
            answer(&s, uid, "a1", 3, 20_000).await,
            (3, 0, 0),
            "{engine}: base only"
        );
        assert_eq!(
            answer(&s, uid, "a2", 10, 20_000).await,
            (2, 0, 8),
            "{engine}: base, then plan"
        );
        assert_eq!(
            answer(&s, uid, "a3", 15, 20_000).await,
            (0, 3, 12),
            "{engine}: plan, then paid"
        );
        assert_eq!(free_left(&s, uid, 20_000).await, 0, "{engine}");
        // The next day the whole allowance is back; after the end only the base.
        assert_eq!(
            answer(&s, uid, "a4", 25, 20_001).await,
            (5, 0, 20),
            "{engine}"
        );
        assert_eq!(
            answer(&s, uid, "a5", 8, 20_030).await,
            (5, 3, 0),
            "{engine}"
        );
        // free + paid + plan = the ledger's usage debits.
        let records = s.usage(uid, None, 100).await.unwrap().records;
        let logged: u64 = records.iter().map(|r| r.free + r.paid + r.plan).sum();
        let debits: u64 = s
            .ledger(uid, 100)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.kind == EntryKind::Usage)
            .map(|e| (e.free_delta + e.paid_delta).unsigned_abs())
            .sum();
        assert_eq!((logged, debits), (61, 61), "{engine}");
        assert_eq!(
            s.balance(uid, 20_030, FREE).await.unwrap().paid,
            94,
            "{engine}"
        );
        // Plain `settle` counts the plan too. (A day before the recorded one, 20,030, counts as
        // that day's spending: 5 of the 25 of day 20,002 are gone.)
        let id = s
            .reserve(uid, 25, "a6", 20_002, FREE, i64::MAX)
            .await
            .unwrap();
        let entry = s
            .settle(id, 25, "answer", 20_002, FREE, 20_002 * DAY_MS)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((entry.free_delta, entry.paid_delta), (-20, -5), "{engine}");
        assert_consistent(engine, &s).await;
    }
}

#[tokio::test]
async fn buying_again_extends_and_another_plan_replaces() {
    for (engine, s) in engines().await {
        let uid = s.create_user("u").await.unwrap().uid;
        plan_order(&s, uid, "P1", month(), START_MS).await;
        s.credit_order("P1", 3000, None, START_MS).await.unwrap();
        // Ten days later (23:59 local), the same plan again: 30 more days from the end.
        let later = START_MS + 11 * DAY_MS - 60_000;
        plan_order(&s, uid, "P2", month(), later).await;
        s.credit_order("P2", 3000, None, later).await.unwrap();
        let p = s.plan(uid).await.unwrap().unwrap();
        assert_eq!((p.start_day, p.end_day), (20_000, 20_060), "{engine}");
        // A week plan replaces it from that day.
        let then = START_MS + 12 * DAY_MS;
        plan_order(&s, uid, "W1", week(), then).await;
        s.credit_order("W1", 3000, None, then).await.unwrap();
        let p = s.plan(uid).await.unwrap().unwrap();
        assert_eq!(
            (p.id.as_str(), p.start_day, p.end_day),
            ("week", 20_012, 20_019),
            "{engine}"
        );
        assert_eq!(free_left(&s, uid, 20_012).await, FREE + 50, "{engine}");
        assert_eq!(free_left(&s, uid, 20_019).await, FREE, "{engine}");
        assert_consistent(engine, &s).await;
    }
}

#[tokio::test]
async fn a_refund_ends_the_plan_today_once() {
    for (engine, s) in engines().await {
        let uid = s.create_user("u").await.unwrap().uid;
        plan_order(&s, uid, "P1", month(), START_MS).await;
        s.credit_order("P1", 3000, None, START_MS).await.unwrap();
        // Day 3: some of the plan's credits spent, then the order is refunded.
        assert_eq!(
            answer(&s, uid, "a1", 12, 20_003).await,
            (5, 0, 7),
            "{engine}"
        );
        let at = START_MS + 3 * DAY_MS + 3_600_000;
        let (order, entry) = s.refund_order("P1", "customer asked", at).await.unwrap();
        assert_eq!(order.status, OrderStatus::Refunded, "{engine}");
        let entry = entry.expect("a plan refund is always recorded");
        assert_eq!(
            (entry.kind, entry.paid_delta, entry.free_delta),
            (EntryKind::Refund, 0, 0),
            "{engine}"
        );
        assert_eq!(entry.reference, "refund:P1", "{engine}");
        assert!(
            entry.reason.contains("已结束"),
            "{engine}: {}",
            entry.reason
        );
        let p = s.plan(uid).await.unwrap().unwrap();
        assert_eq!(p.end_day, 20_003, "{engine}");
        assert_eq!(
            free_left(&s, uid, 20_003).await,
            0,
            "{engine}: never below zero"
        );
        assert_eq!(free_left(&s, uid, 20_004).await, FREE, "{engine}");
        // Again: the same answer, nothing more written.
        let (_, again) = s.refund_order("P1", "again", at + 1000).await.unwrap();
        assert_eq!(again.map(|e| e.seq), Some(entry.seq), "{engine}");
        assert_eq!(s.ledger(uid, 10).await.unwrap().len(), 3, "{engine}");
        assert_consistent(engine, &s).await;
    }
}
