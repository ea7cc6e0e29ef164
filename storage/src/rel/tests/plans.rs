//! Plans, codes, the usage log and the change log through the import: a sled store holding
//! each comes out with an equal census, and the relational store's operations go on from
//! where sled was (a used code stays used, an unused one redeems, a plan extends, new ids are
//! new). The plan cases themselves are the suite's (`facade/tests/plans.rs`).

use serde_json::json;

use super::super::RelStore;
use super::assert_consistent;
use crate::kv::Db;
use crate::{
    ChangeRecord, CodeGrant, EntryKind, KvStore, Order, OrderStatus, PlanGrant, RedeemOutcome,
    UsageNote, UsageOutcome, system_now_ms,
};

const DAY_MS: i64 = 86_400_000;
/// UTC+8, as `quota.timezone = "Asia/Shanghai"`.
const TZ: i32 = 8 * 3600;
fn month() -> PlanGrant {
    PlanGrant {
        id: "month".into(),
        name: "月卡".into(),
        days: 30,
        daily_credits: 20,
        utc_offset_secs: TZ,
    }
}

fn change(at_ms: i64, path: &str) -> ChangeRecord {
    ChangeRecord {
        at_ms,
        id: 0,
        actor: "token".into(),
        address: "10.0.0.1".into(),
        method: "POST".into(),
        path: path.into(),
        status: 200,
        reason: Some("ticket\0 9".into()),
        summary: json!({"credits": 5, "note": "a\0b"}),
    }
}

#[tokio::test]
async fn codes_plans_usage_and_the_change_log_import_whole_and_work_on() {
    let rel: RelStore = store_or_skip!();
    let src = KvStore::from_db(
        Db::Sled(sled::Config::new().temporary(true).open().unwrap()),
        None,
        0,
    )
    .unwrap();
    let now = system_now_ms();
    let today = month().day_of(now);
    let a = src.create_user("a").unwrap().uid;
    let b = src.create_user("b").unwrap().uid;
    src.grant(a, 100, EntryKind::Purchase, "seed", "seed-a", 1)
        .unwrap();
    // Codes: a plan batch (one used), a credits batch (one used, then revoked).
    let (plan_batch, plan_codes) = src
        .create_code_batch(CodeGrant::of_plan(&month()), 3, None, "shop", now)
        .unwrap();
    let (credit_batch, credit_codes) = src
        .create_code_batch(
            CodeGrant::Credits { credits: 7 },
            3,
            Some(now + DAY_MS),
            "",
            now,
        )
        .unwrap();
    assert!(matches!(
        src.redeem_code(a, &plan_codes[0], now).unwrap(),
        RedeemOutcome::Redeemed { .. }
    ));
    assert!(matches!(
        src.redeem_code(b, &credit_codes[0], now).unwrap(),
        RedeemOutcome::Redeemed { .. }
    ));
    assert_eq!(
        src.revoke_code_batch(credit_batch.id, now).unwrap(),
        Some(2)
    );
    // A plan order, waiting.
    let order = src
        .create_order(
            &Order {
                id: "plan-order".into(),
                uid: b,
                product_id: "month".into(),
                product_name: "月卡".into(),
                channel: "wechat".into(),
                method: None,
                amount_fen: 3000,
                credits: 0,
                status: OrderStatus::Created,
                created_at_ms: now,
                expires_at_ms: now + 900_000,
                code_url: None,
                provider_trade_no: None,
                credited_at_ms: None,
                closed_at_ms: None,
                refunded_at_ms: None,
                plan: Some(month()),
            },
            now,
        )
        .unwrap();
    // Usage: answers charged from the base allowance, the plan and paid credits.
    for (i, cost) in [5u64, 30, 0].into_iter().enumerate() {
        let id = src
            .reserve(a, cost, &format!("u{i}"), today, 10, i64::MAX)
            .unwrap();
        let note = UsageNote {
            platform: "web",
            model: "gpt-4o",
            prompt_tokens: 10 + i as u64,
            completion_tokens: 3,
            outcome: UsageOutcome::Answered,
        };
        src.settle_metered(
            id,
            cost,
            "answer",
            today,
            10,
            now + i as i64,
            None,
            Some(note),
        )
        .unwrap();
    }
    src.refund_answer(a, 2, "lost", "undelivered:u1", "u1", now + 10)
        .unwrap();
    // The change log, with what PostgreSQL's text cannot hold.
    for (i, path) in ["/admin/codes", "/admin/users/1/grant", "/admin/reload"]
        .iter()
        .enumerate()
    {
        src.record_change(change(1_000 + i as i64, path)).unwrap();
    }

    let imported = rel.import_from(&src, |_, _| {}).await.unwrap();
    for table in [
        "code_batches",
        "codes",
        "usage",
        "admin_changes",
        "balances (plans)",
    ] {
        assert!(
            imported.tables.iter().any(|(t, n)| *t == table && *n > 0),
            "{table}: {:?}",
            imported.tables
        );
    }
    let at = system_now_ms();
    let (before, after) = (src.census(at).unwrap(), rel.census(at).await.unwrap());
    assert_eq!(before.differences(&after), Vec::<String>::new());
    assert_eq!(
        (after.code_batches, after.codes, after.usage_records),
        (2, 6, 3)
    );
    assert_consistent(&rel).await;

    // Codes: the same batches and states; a used one stays used, an unused one redeems,
    // a revoked one stays revoked; a new batch gets a new id.
    assert_eq!(
        rel.code_batches(10).await.unwrap(),
        src.code_batches(10).unwrap()
    );
    for batch in [plan_batch.id, credit_batch.id] {
        assert_eq!(
            rel.batch_codes(batch).await.unwrap(),
            src.batch_codes(batch).unwrap()
        );
    }
    assert_eq!(
        rel.redeem_code(a, &plan_codes[0], now).await.unwrap(),
        RedeemOutcome::AlreadyUsed { by_you: true }
    );
    assert_eq!(
        rel.redeem_code(a, &credit_codes[1], now).await.unwrap(),
        RedeemOutcome::Revoked
    );
    let mut redemptions = rel.code_redemptions().await.unwrap();
    let mut want = src.code_redemptions().unwrap();
    redemptions.sort_unstable();
    want.sort_unstable();
    assert_eq!(redemptions, want);
    // The plan: as sled had it; the next code of the batch extends it by its days.
    let plan = src.plan(a).unwrap().unwrap();
    assert_eq!(rel.plan(a).await.unwrap(), Some(plan.clone()));
    assert!(matches!(
        rel.redeem_code(a, &plan_codes[1], now).await.unwrap(),
        RedeemOutcome::Redeemed { .. }
    ));
    assert_eq!(
        rel.plan(a).await.unwrap().unwrap().end_day,
        plan.end_day + 30
    );
    let (fresh, _) = rel
        .create_code_batch(CodeGrant::Credits { credits: 1 }, 1, None, "", now)
        .await
        .unwrap();
    assert!(fresh.id > credit_batch.id.max(plan_batch.id));
    // The order's plan.
    let rows = rel
        .rows(
            "SELECT plan_id, plan_days, plan_daily_credits, plan_utc_offset_secs FROM orders
             WHERE id = $1",
            &[(&order.id, tokio_postgres::types::Type::TEXT)],
        )
        .await
        .unwrap();
    let got: (String, i32, i64, i32) = (
        rows[0].get(0),
        rows[0].get(1),
        rows[0].get(2),
        rows[0].get(3),
    );
    assert_eq!(got, ("month".to_owned(), 30, 20, 8 * 3600));
    // Usage: the same pages, the plan's part and the refund kept.
    let (mine, theirs) = (
        rel.usage(a, None, 10).await.unwrap(),
        src.usage(a, None, 10).unwrap(),
    );
    assert_eq!(mine, theirs);
    assert!(mine.records.iter().any(|r| r.plan > 0 && r.refunded == 2));
    // The change log: the same records (NUL read as U+FFFD), new ids after the copied ones.
    let copied = rel.changes(None, 10).await.unwrap().records;
    let original = src.changes(None, 10).unwrap().records;
    assert_eq!(copied.len(), 3);
    for (c, o) in copied.iter().zip(&original) {
        assert_eq!((c.at_ms, c.id, &c.path), (o.at_ms, o.id, &o.path));
        assert_eq!(c.reason.as_deref(), Some("ticket\u{fffd} 9"));
        assert_eq!(c.summary, json!({"credits": 5, "note": "a\u{fffd}b"}));
    }
    let next = rel.record_change(change(2_000, "/x")).await.unwrap();
    assert!(original.iter().all(|o| next.id > o.id));
    assert_consistent(&rel).await;
}
