//! The usage log on both engines: the cases of `usage/tests.rs` (without the conversation
//! turns, which `append_turns` writes), the same answers, plus the plan's part.

use super::{assert_consistent, assert_trips, engines, sent, with_paid};
use crate::{
    CodeGrant, EntryKind, MAX_USAGE_PAGE, PlanGrant, RedeemOutcome, ReservationId, Store,
    StoreError, Uid, UsageNote, UsageOutcome, UsageRecord,
};

const DAY: i64 = 100;
const FREE: u64 = 10;
const LATER: i64 = i64::MAX;

fn note(outcome: UsageOutcome) -> UsageNote<'static> {
    UsageNote {
        platform: "web",
        model: "gpt-4o",
        prompt_tokens: 120,
        completion_tokens: 30,
        outcome,
    }
}

/// Reserves and settles one answer of `cost` at `at_ms`; returns the reservation id.
async fn answer(store: &Store, uid: Uid, reference: &str, cost: u64, at_ms: i64) -> ReservationId {
    let id = store
        .reserve(uid, cost, reference, DAY, FREE, LATER)
        .await
        .unwrap();
    store
        .settle_metered(
            id,
            cost,
            "answer",
            DAY,
            FREE,
            at_ms,
            None,
            Some(note(UsageOutcome::Answered)),
        )
        .await
        .unwrap();
    id
}

async fn all_usage(store: &Store, uid: Uid) -> Vec<UsageRecord> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let page = store.usage(uid, before, MAX_USAGE_PAGE).await.unwrap();
        out.extend(page.records);
        match page.next {
            Some(next) => before = Some(next),
            None => return out,
        }
    }
}

/// What the ledger's usage entries of `uid` charged.
async fn ledger_usage_debits(store: &Store, uid: Uid) -> u64 {
    store
        .ledger(uid, 10_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == EntryKind::Usage)
        .map(|e| e.free_delta.saturating_add(e.paid_delta).unsigned_abs())
        .sum()
}

#[tokio::test]
async fn the_settlement_writes_the_record_with_its_free_and_paid_split() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 100).await;
        let id = store
            .reserve(uid, 15, "m1", DAY, FREE, LATER)
            .await
            .unwrap();
        let before = sent(&store);
        let entry = store
            .settle_metered(
                id,
                15,
                "answer",
                DAY,
                FREE,
                5_000,
                None,
                Some(note(UsageOutcome::Answered)),
            )
            .await
            .unwrap()
            .unwrap();
        assert_trips(engine, &store, before, 1);
        assert_eq!((entry.free_delta, entry.paid_delta), (-10, -5), "{engine}");
        let page = store.usage(uid, None, 10).await.unwrap();
        assert_eq!(page.next, None, "{engine}");
        assert_eq!(
            page.records,
            vec![UsageRecord {
                uid,
                at_ms: 5_000,
                id,
                platform: "web".into(),
                model: "gpt-4o".into(),
                prompt_tokens: 120,
                completion_tokens: 30,
                free: 10,
                paid: 5,
                plan: 0,
                refunded: 0,
                ledger_seq: Some(entry.seq),
                outcome: UsageOutcome::Answered,
            }],
            "{engine}"
        );
        // Names longer than 128 bytes are cut at a character boundary.
        let id = store.reserve(uid, 1, "m2", DAY, FREE, LATER).await.unwrap();
        let long = "模".repeat(100);
        let n = UsageNote {
            model: &long,
            ..note(UsageOutcome::Stopped)
        };
        store
            .settle_metered(id, 1, "answer", DAY, FREE, 6_000, None, Some(n))
            .await
            .unwrap();
        let r = &store.usage(uid, None, 1).await.unwrap().records[0];
        assert_eq!(
            (r.model.len(), r.outcome),
            (126, UsageOutcome::Stopped),
            "{engine}"
        );
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test]
async fn settling_again_writes_no_second_record() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 100).await;
        let id = answer(&store, uid, "m1", 7, 1_000).await;
        let first = store.ledger(uid, 1).await.unwrap()[0].clone();
        for at in [2_000, 3_000] {
            let again = store
                .settle_metered(
                    id,
                    7,
                    "answer",
                    DAY,
                    FREE,
                    at,
                    None,
                    Some(note(UsageOutcome::Cut)),
                )
                .await
                .unwrap();
            assert_eq!(again, Some(first.clone()), "{engine}");
        }
        let records = all_usage(&store, uid).await;
        assert_eq!(records.len(), 1, "{engine}");
        assert_eq!(
            (records[0].at_ms, records[0].outcome),
            (1_000, UsageOutcome::Answered),
            "{engine}"
        );
        assert!(
            matches!(
                store
                    .settle_metered(ReservationId(u64::MAX), 1, "x", DAY, FREE, 7, None, None)
                    .await,
                Err(StoreError::UnknownReservation(_))
            ),
            "{engine}"
        );
    }
}

#[tokio::test]
async fn a_free_answer_is_logged_with_nothing_charged() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 0).await;
        let id = answer(&store, uid, "m0", 0, 10).await;
        let records = all_usage(&store, uid).await;
        assert_eq!(records.len(), 1, "{engine}");
        assert_eq!(records[0].id, id, "{engine}");
        assert_eq!(
            (records[0].charged(), records[0].ledger_seq),
            (0, None),
            "{engine}: no ledger entry for a free answer"
        );
    }
}

#[tokio::test]
async fn plain_settle_writes_no_record() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 0).await;
        let id = store.reserve(uid, 3, "p", DAY, FREE, LATER).await.unwrap();
        store.settle(id, 3, "answer", DAY, FREE, 10).await.unwrap();
        let id = store.reserve(uid, 3, "q", DAY, FREE, LATER).await.unwrap();
        store
            .settle_metered(id, 3, "answer", DAY, FREE, 10, None, None)
            .await
            .unwrap();
        assert!(all_usage(&store, uid).await.is_empty(), "{engine}");
    }
}

#[tokio::test]
async fn the_logs_sum_is_the_ledgers_usage_debits() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 40).await;
        // Free first, then paid, then more than is left (charged what there is).
        for (i, cost) in [4u64, 9, 0, 13, 30].into_iter().enumerate() {
            let reference = format!("m{i}");
            let available = store.balance(uid, DAY, FREE).await.unwrap().available;
            let id = store
                .reserve(uid, cost.min(available), &reference, DAY, FREE, LATER)
                .await
                .unwrap();
            store
                .settle_metered(
                    id,
                    cost,
                    "answer",
                    DAY,
                    FREE,
                    100 + i as i64,
                    None,
                    Some(note(UsageOutcome::Answered)),
                )
                .await
                .unwrap();
        }
        let records = all_usage(&store, uid).await;
        assert_eq!(records.len(), 5, "{engine}");
        let logged: u64 = records.iter().map(UsageRecord::charged).sum();
        assert_eq!(logged, ledger_usage_debits(&store, uid).await, "{engine}");
        assert_eq!(logged, 50, "{engine}: 10 free + 40 paid, no more");
        let free: u64 = records.iter().map(|r| r.free).sum();
        assert_eq!(free, 10, "{engine}");
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test]
async fn pages_go_newest_first_without_gaps_or_repeats() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 1_000).await;
        let other = store.create_user("other").await.unwrap().uid;
        let mut ids = Vec::new();
        // Three answers share a millisecond: the reservation id keeps them apart.
        for (i, at) in [10, 20, 20, 20, 30, 40, 50].into_iter().enumerate() {
            ids.push(answer(&store, uid, &format!("m{i}"), 1, at).await);
        }
        answer(&store, other, "o1", 1, 25).await;
        let mut seen = Vec::new();
        let mut before = None;
        let mut pages = 0;
        loop {
            let page = store.usage(uid, before, 3).await.unwrap();
            assert!(page.records.len() <= 3, "{engine}");
            seen.extend(page.records.iter().map(|r| (r.at_ms, r.id)));
            pages += 1;
            match page.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, 3, "{engine}");
        let mut expected: Vec<(i64, ReservationId)> = [10, 20, 20, 20, 30, 40, 50]
            .into_iter()
            .zip(ids.iter().copied())
            .collect();
        expected.reverse();
        assert_eq!(seen, expected, "{engine}: newest first, every record once");
        // A bare time: strictly before it.
        let page = store
            .usage(uid, Some("30".parse().unwrap()), 10)
            .await
            .unwrap();
        let times: Vec<i64> = page.records.iter().map(|r| r.at_ms).collect();
        assert_eq!(times, vec![20, 20, 20, 10], "{engine}");
        // The other user's answer is only theirs.
        let theirs = store.usage(other, None, 10).await.unwrap().records;
        assert_eq!(theirs.len(), 1, "{engine}");
        assert_eq!(theirs[0].uid, other, "{engine}");
        // The limit is capped, and at least 1.
        assert_eq!(
            store.usage(uid, None, 0).await.unwrap().records.len(),
            1,
            "{engine}"
        );
        assert!(
            store.usage(uid, None, 100_000).await.unwrap().records.len() <= MAX_USAGE_PAGE,
            "{engine}"
        );
    }
}

#[tokio::test]
async fn purging_removes_old_records_only_in_bounded_calls() {
    for (engine, store) in engines().await {
        let mut uids = Vec::new();
        for i in 0..5 {
            uids.push(store.create_user(&format!("u{i}")).await.unwrap().uid);
        }
        for (n, uid) in uids.iter().enumerate() {
            for i in 0..(3 + n) {
                answer(
                    &store,
                    *uid,
                    &format!("{uid}:{i}"),
                    1,
                    1_000 + i as i64 * 1_000,
                )
                .await;
            }
        }
        // Before 3 000: the records at 1 000 and 2 000 of each user go.
        let mut from = Uid(0);
        let mut removed = 0;
        let mut calls = 0;
        loop {
            let purge = store.purge_usage(3_000, from, 2).await.unwrap();
            removed += purge.removed;
            calls += 1;
            match purge.resume {
                Some(next) => from = next,
                None => break,
            }
        }
        assert_eq!(calls, 3, "{engine}: five users, two per call");
        assert_eq!(removed, 10, "{engine}");
        for (n, uid) in uids.iter().enumerate() {
            let left = all_usage(&store, *uid).await;
            assert_eq!(left.len(), 1 + n, "{engine}");
            assert!(left.iter().all(|r| r.at_ms >= 3_000), "{engine}");
        }
        assert_eq!(
            store.purge_usage(3_000, Uid(0), 10).await.unwrap().removed,
            0,
            "{engine}"
        );
        // The ledger is untouched.
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test]
async fn a_refund_marks_the_record_and_is_idempotent() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 50).await;
        answer(&store, uid, "gone", 25, 1_000).await;
        let entry = store
            .refund_answer(
                uid,
                25,
                "answer not delivered",
                "undelivered:gone",
                "gone",
                2_000,
            )
            .await
            .unwrap();
        assert_eq!(
            (entry.kind, entry.paid_delta),
            (EntryKind::Refund, 25),
            "{engine}"
        );
        let again = store
            .refund_answer(
                uid,
                25,
                "answer not delivered",
                "undelivered:gone",
                "gone",
                3_000,
            )
            .await
            .unwrap();
        assert_eq!(again, entry, "{engine}");
        let records = all_usage(&store, uid).await;
        assert_eq!(records.len(), 1, "{engine}");
        assert_eq!(
            (
                records[0].outcome,
                records[0].refunded,
                records[0].charged()
            ),
            (UsageOutcome::Refunded, 25, 25),
            "{engine}"
        );
        assert_eq!(
            store.balance(uid, DAY, FREE).await.unwrap().paid,
            50 - 15 + 25,
            "{engine}"
        );
        // Another user's reference marks nothing of theirs.
        let other = store.create_user("o").await.unwrap().uid;
        store
            .refund_answer(other, 1, "x", "undelivered:gone:o", "gone", 4_000)
            .await
            .unwrap();
        assert_eq!(all_usage(&store, uid).await[0].refunded, 25, "{engine}");
        assert!(
            matches!(
                store.refund_answer(uid, 0, "x", "r0", "gone", 5).await,
                Err(StoreError::InvalidInput(_))
            ),
            "{engine}"
        );
        assert!(
            matches!(
                store
                    .refund_answer(Uid(9_999), 1, "x", "r9", "gone", 5)
                    .await,
                Err(StoreError::UnknownUser(_))
            ),
            "{engine}"
        );
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test]
async fn the_base_allowance_goes_first_then_the_plan_then_paid_credits() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 100).await;
        // A plan of 20 a day from day DAY (UTC: the day of DAY * 86 400 000 ms).
        let plan = PlanGrant {
            id: "month".into(),
            name: "月卡".into(),
            days: 30,
            daily_credits: 20,
            utc_offset_secs: 0,
        };
        let (_, codes) = store
            .create_code_batch(CodeGrant::of_plan(&plan), 1, None, "", 1)
            .await
            .unwrap();
        let at = DAY * 86_400_000;
        assert!(
            matches!(
                store.redeem_code(uid, &codes[0], at).await.unwrap(),
                RedeemOutcome::Redeemed { .. }
            ),
            "{engine}"
        );
        // 10 base + 20 plan + 5 paid.
        let id = store
            .reserve(uid, 35, "p1", DAY, FREE, LATER)
            .await
            .unwrap();
        let entry = store
            .settle_metered(
                id,
                35,
                "answer",
                DAY,
                FREE,
                at,
                None,
                Some(note(UsageOutcome::Answered)),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!((entry.free_delta, entry.paid_delta), (-30, -5), "{engine}");
        let r = &store.usage(uid, None, 1).await.unwrap().records[0];
        assert_eq!(
            (r.free, r.plan, r.paid, r.charged()),
            (10, 20, 5, 35),
            "{engine}"
        );
        // The day's allowance, plan included, is spent: the next answer is paid only.
        let id = store.reserve(uid, 3, "p2", DAY, FREE, LATER).await.unwrap();
        store
            .settle_metered(
                id,
                3,
                "answer",
                DAY,
                FREE,
                at + 1,
                None,
                Some(note(UsageOutcome::Answered)),
            )
            .await
            .unwrap();
        let r = &store.usage(uid, None, 1).await.unwrap().records[0];
        assert_eq!((r.free, r.plan, r.paid), (0, 0, 3), "{engine}");
        // After the plan's 30 days only the base allowance is free.
        let late = DAY + 30;
        let id = store
            .reserve(uid, 15, "p3", late, FREE, LATER)
            .await
            .unwrap();
        store
            .settle_metered(
                id,
                15,
                "answer",
                late,
                FREE,
                at + 2,
                None,
                Some(note(UsageOutcome::Answered)),
            )
            .await
            .unwrap();
        let r = &store.usage(uid, None, 1).await.unwrap().records[0];
        assert_eq!((r.free, r.plan, r.paid), (10, 0, 5), "{engine}");
        let logged: u64 = all_usage(&store, uid)
            .await
            .iter()
            .map(UsageRecord::charged)
            .sum();
        assert_eq!(logged, ledger_usage_debits(&store, uid).await, "{engine}");
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test]
async fn purging_many_records_of_one_user_takes_one_call() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 0).await;
        for i in 0..520 {
            let id = store
                .reserve(uid, 0, &format!("z{i}"), DAY, FREE, LATER)
                .await
                .unwrap();
            store
                .settle_metered(
                    id,
                    0,
                    "a",
                    DAY,
                    FREE,
                    10,
                    None,
                    Some(note(UsageOutcome::Answered)),
                )
                .await
                .unwrap();
        }
        answer(&store, uid, "new", 1, 50).await;
        let purge = store.purge_usage(20, Uid(0), 10).await.unwrap();
        assert_eq!((purge.removed, purge.resume), (520, None), "{engine}");
        assert_eq!(all_usage(&store, uid).await.len(), 1, "{engine}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_settlements_write_one_record_and_one_entry() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 100).await;
        for round in 0..5 {
            let id = store
                .reserve(uid, 12, &format!("race{round}"), DAY, FREE, LATER)
                .await
                .unwrap();
            let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(8));
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let (store, barrier) = (store.clone(), barrier.clone());
                tasks.push(tokio::spawn(async move {
                    barrier.wait().await;
                    store
                        .settle_metered(
                            id,
                            12,
                            "answer",
                            DAY,
                            FREE,
                            1_000 + round,
                            None,
                            Some(note(UsageOutcome::Answered)),
                        )
                        .await
                        .unwrap()
                }));
            }
            let mut entries = Vec::new();
            for t in tasks {
                entries.push(t.await.unwrap().unwrap());
            }
            assert!(
                entries.iter().all(|e| *e == entries[0]),
                "{engine}: {entries:?}"
            );
        }
        let records = all_usage(&store, uid).await;
        assert_eq!(records.len(), 5, "{engine}");
        let logged: u64 = records.iter().map(UsageRecord::charged).sum();
        assert_eq!(logged, 60, "{engine}");
        assert_eq!(logged, ledger_usage_debits(&store, uid).await, "{engine}");
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test]
async fn the_turns_are_remembered_by_the_settling_call_only() {
    for (engine, store) in engines().await {
        let uid = with_paid(&store, 100).await;
        let id = store
            .reserve(uid, 5, "turns", DAY, FREE, LATER)
            .await
            .unwrap();
        let turns = [
            crate::Turn {
                role: "user".into(),
                content: "q".into(),
                at_ms: 1,
            },
            crate::Turn {
                role: "assistant".into(),
                content: "a".into(),
                at_ms: 1,
            },
        ];
        let remember = || {
            Some(crate::Remember {
                conversation: "mp:main:o1",
                turns: &turns,
                max_turns: 10,
            })
        };
        for at in [1_000, 2_000] {
            store
                .settle_metered(id, 5, "answer", DAY, FREE, at, remember(), None)
                .await
                .unwrap();
        }
        // Settled once, so remembered once: the replay writes nothing.
        assert_eq!(
            store.conversation("mp:main:o1").await.unwrap(),
            turns,
            "{engine}"
        );
    }
}
