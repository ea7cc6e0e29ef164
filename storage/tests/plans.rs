//! Membership plans in the store: granted with a paid order or a code exactly once, their
//! daily credits joining the free allowance (and the usage log's `plan` part), extended,
//! replaced, ended by a refund; on sled, and on PostgreSQL with `CHATRELAY_TEST_PG_URL`.

use chatrelay_storage::{
    CodeGrant, EntryKind, KvStore, Order, OrderStatus, PlanGrant, RedeemOutcome, Uid, UsageNote,
    UsageOutcome,
};

const FREE: u64 = 5;
const DAY_MS: i64 = 86_400_000;
/// UTC+8, as `quota.timezone = "Asia/Shanghai"`.
const TZ: i32 = 8 * 3600;
/// Day 20,000 (2024-10-04) at 00:00 in UTC+8.
const START_MS: i64 = 20_000 * DAY_MS - (TZ as i64) * 1000;

fn month() -> PlanGrant {
    PlanGrant {
        id: "month".into(),
        name: "月卡".into(),
        days: 30,
        daily_credits: 20,
        utc_offset_secs: TZ,
    }
}

fn plan_order(s: &KvStore, uid: Uid, id: &str, plan: PlanGrant, at_ms: i64) -> Order {
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
    s.create_order(&o, at_ms).unwrap()
}

fn setup() -> (KvStore, Uid) {
    let s = KvStore::open_temporary().unwrap();
    let uid = s.create_user("u").unwrap().uid;
    (s, uid)
}

fn free_left(s: &KvStore, uid: Uid, day: i64) -> u64 {
    s.balance(uid, day, FREE).unwrap().free_left
}

/// One answer of `cost` on `day`, with its usage record; returns (free, paid, plan) charged.
fn answer(s: &KvStore, uid: Uid, reference: &str, cost: u64, day: i64) -> (u64, u64, u64) {
    let now = day * DAY_MS;
    let id = s
        .reserve(uid, cost, reference, day, FREE, i64::MAX)
        .unwrap();
    s.settle_metered(
        id,
        cost,
        "answer",
        day,
        FREE,
        now,
        None,
        Some(UsageNote {
            platform: "web",
            model: "m",
            prompt_tokens: 1,
            completion_tokens: 1,
            outcome: UsageOutcome::Answered,
        }),
    )
    .unwrap();
    let page = s.usage(uid, None, 500).unwrap();
    let r = page.records.iter().find(|r| r.id == id).unwrap();
    (r.free, r.paid, r.plan)
}

#[test]
fn the_base_allowance_goes_first_then_the_plan_then_paid_credits() {
    let (s, uid) = setup();
    s.grant(uid, 100, EntryKind::Purchase, "seed", "seed", 1)
        .unwrap();
    plan_order(&s, uid, "P1", month(), START_MS);
    s.credit_order("P1", 3000, None, START_MS).unwrap();
    assert_eq!(answer(&s, uid, "a1", 3, 20_000), (3, 0, 0), "base only");
    assert_eq!(
        answer(&s, uid, "a2", 10, 20_000),
        (2, 0, 8),
        "base, then plan"
    );
    assert_eq!(
        answer(&s, uid, "a3", 15, 20_000),
        (0, 3, 12),
        "plan, then paid"
    );
    assert_eq!(free_left(&s, uid, 20_000), 0);
    // The next day the whole allowance is back; after the end only the base.
    assert_eq!(answer(&s, uid, "a4", 25, 20_001), (5, 0, 20));
    assert_eq!(answer(&s, uid, "a5", 8, 20_030), (5, 3, 0));
    // free + paid + plan = the ledger's usage debits.
    let records = s.usage(uid, None, 500).unwrap().records;
    let logged: u64 = records.iter().map(|r| r.free + r.paid + r.plan).sum();
    let debits: u64 = s
        .ledger(uid, 100)
        .unwrap()
        .iter()
        .filter(|e| e.kind == EntryKind::Usage)
        .map(|e| (e.free_delta + e.paid_delta).unsigned_abs())
        .sum();
    assert_eq!((logged, debits), (61, 61));
    assert_eq!(s.balance(uid, 20_030, FREE).unwrap().paid, 94);
    assert!(s.audit().unwrap().is_consistent());
}

#[test]
fn a_plan_code_grants_the_plan_exactly_once() {
    let (s, uid) = setup();
    let other = s.create_user("v").unwrap().uid;
    let (batch, codes) = s
        .create_code_batch(CodeGrant::of_plan(&month()), 2, None, "shop", START_MS)
        .unwrap();
    assert_eq!(batch.grant.plan_grant(), Some(month()));
    let RedeemOutcome::Redeemed { entry, .. } =
        s.redeem_code(uid, &codes[0], START_MS + 1000).unwrap()
    else {
        panic!("not redeemed");
    };
    assert_eq!((entry.paid_delta, entry.free_delta), (0, 0));
    assert!(entry.reference.starts_with("code:"));
    assert_eq!(
        s.redeem_code(uid, &codes[0], START_MS + 2000).unwrap(),
        RedeemOutcome::AlreadyUsed { by_you: true }
    );
    assert_eq!(
        s.redeem_code(other, &codes[0], START_MS + 2000).unwrap(),
        RedeemOutcome::AlreadyUsed { by_you: false }
    );
    assert_eq!(s.plan(other).unwrap(), None);
    let p = s.plan(uid).unwrap().unwrap();
    assert_eq!((p.start_day, p.end_day), (20_000, 20_030));
    // The second code extends it.
    s.redeem_code(uid, &codes[1], START_MS + 5 * DAY_MS)
        .unwrap();
    assert_eq!(s.plan(uid).unwrap().unwrap().end_day, 20_060);
    // A plan code made before plans existed (no days) is refused, nothing changes.
    let (_, old) = s
        .create_code_batch(
            CodeGrant::Plan {
                plan: "month".into(),
                name: String::new(),
                days: 0,
                daily_credits: 0,
                utc_offset_secs: 0,
            },
            1,
            None,
            "",
            START_MS,
        )
        .unwrap();
    assert!(s.redeem_code(uid, &old[0], START_MS).is_err());
    assert_eq!(s.plan(uid).unwrap().unwrap().end_day, 20_060);
    assert!(s.audit().unwrap().is_consistent());
}

#[test]
fn backups_and_copies_keep_the_plan() {
    // Backups are the embedded store's: a sled store whatever the environment says.
    let dir = tempfile::tempdir().unwrap();
    let s = KvStore::open(&dir.path().join("db"), 16 << 20).unwrap();
    let uid = s.create_user("u").unwrap().uid;
    plan_order(&s, uid, "P1", month(), START_MS);
    s.credit_order("P1", 3000, None, START_MS).unwrap();
    let mut out = Vec::new();
    s.export_backup(&mut out, START_MS).unwrap();
    let target = dir.path().join("restored");
    KvStore::restore_backup(&mut std::io::Cursor::new(out), &target, 16 << 20).unwrap();
    let restored = KvStore::open(&target, 16 << 20).unwrap();
    for copy in [restored, {
        // `migrate-data`'s copy (to PostgreSQL when `CHATRELAY_TEST_PG_URL` is set).
        let dest = KvStore::open_temporary().unwrap();
        s.copy_into(&dest).unwrap();
        dest
    }] {
        assert_eq!(copy.plan(uid).unwrap(), s.plan(uid).unwrap());
        assert_eq!(
            copy.order("P1").unwrap().unwrap().plan,
            Some(month()),
            "the order keeps what it sold"
        );
        assert_eq!(
            copy.balance(uid, 20_001, FREE).unwrap().free_left,
            FREE + 20
        );
    }
}
