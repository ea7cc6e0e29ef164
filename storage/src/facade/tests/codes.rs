//! Redemption codes on both engines: the cases of `codes/tests.rs`, plus a plan code (as
//! `tests/plans.rs`'s `a_plan_code_grants_the_plan_exactly_once`).

use std::sync::Arc;

use tokio_postgres::types::Type;

use super::{assert_consistent, engines, month, rel};
use crate::rel::RelStore;
use crate::rel::tests::sql;
use crate::{
    CodeGrant, CodeRecord, CodeState, EntryKind, MAX_CODES_PER_BATCH, RedeemOutcome, Store,
    StoreError, Uid, code_id, code_reference, normalize_redeem_code, random_redeem_code,
};

fn credits(n: u64) -> CodeGrant {
    CodeGrant::Credits { credits: n }
}

async fn paid(store: &Store, uid: Uid) -> u64 {
    store.balance(uid, 0, 0).await.unwrap().paid
}

async fn user(store: &Store, name: &str) -> Uid {
    store.create_user(name).await.unwrap().uid
}

#[tokio::test]
async fn a_code_credits_once_through_the_ledger() {
    for (engine, store) in engines().await {
        let a = user(&store, "a").await;
        let b = user(&store, "b").await;
        let (batch, codes) = store
            .create_code_batch(credits(50), 2, None, "", 1)
            .await
            .unwrap();
        let typed = codes[0].to_lowercase().replace('-', " ");
        let RedeemOutcome::Redeemed { code, grant, entry } =
            store.redeem_code(a, &typed, 10).await.unwrap()
        else {
            panic!("{engine}: not redeemed");
        };
        assert_eq!(code, code_id(batch.id, 1), "{engine}");
        assert_eq!(grant, credits(50), "{engine}");
        assert_eq!(entry.reference, code_reference(batch.id, 1), "{engine}");
        assert_eq!((entry.paid_delta, entry.paid_after), (50, 50), "{engine}");
        assert_eq!(entry.kind, EntryKind::Purchase, "{engine}");
        assert_eq!(paid(&store, a).await, 50, "{engine}");
        assert_eq!(
            store.redeem_code(a, &codes[0], 11).await.unwrap(),
            RedeemOutcome::AlreadyUsed { by_you: true },
            "{engine}"
        );
        assert_eq!(
            store.redeem_code(b, &codes[0], 11).await.unwrap(),
            RedeemOutcome::AlreadyUsed { by_you: false },
            "{engine}"
        );
        assert_eq!(
            (paid(&store, a).await, paid(&store, b).await),
            (50, 0),
            "{engine}"
        );
        assert_eq!(store.ledger(a, 10).await.unwrap().len(), 1, "{engine}");
        assert_eq!(
            store.batch_codes(batch.id).await.unwrap()[0].state,
            CodeState::Used { uid: a, at_ms: 10 },
            "{engine}"
        );
        assert_eq!(
            store.code_redemptions().await.unwrap(),
            vec![(10, 50)],
            "{engine}"
        );
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test]
async fn unknown_revoked_expired_and_plan_codes_change_nothing() {
    for (engine, store) in engines().await {
        let a = user(&store, "a").await;
        let (live, codes) = store
            .create_code_batch(credits(7), 3, None, "", 1)
            .await
            .unwrap();
        let (_, old) = store
            .create_code_batch(credits(7), 1, Some(100), "", 1)
            .await
            .unwrap();
        let (_, plan) = store
            .create_code_batch(
                // Made before plans existed: no days.
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
                1,
            )
            .await
            .unwrap();
        assert!(
            matches!(
                store.redeem_code(a, &codes[0], 5).await.unwrap(),
                RedeemOutcome::Redeemed { .. }
            ),
            "{engine}"
        );
        assert_eq!(
            store.revoke_code_batch(live.id, 6).await.unwrap(),
            Some(2),
            "{engine}"
        );
        assert_eq!(
            store.revoke_code_batch(live.id, 7).await.unwrap(),
            Some(0),
            "{engine}: again"
        );
        assert_eq!(
            store.revoke_code_batch(424_242, 7).await.unwrap(),
            None,
            "{engine}"
        );
        let states: Vec<CodeState> = store
            .batch_codes(live.id)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.state)
            .collect();
        assert_eq!(
            states,
            vec![
                CodeState::Used { uid: a, at_ms: 5 },
                CodeState::Revoked { at_ms: 6 },
                CodeState::Revoked { at_ms: 6 }
            ],
            "{engine}"
        );
        assert_eq!(
            store
                .code_batch(live.id)
                .await
                .unwrap()
                .unwrap()
                .revoked_at_ms,
            Some(6),
            "{engine}"
        );
        assert_eq!(
            store.redeem_code(a, &codes[1], 8).await.unwrap(),
            RedeemOutcome::Revoked,
            "{engine}"
        );
        assert_eq!(
            store.redeem_code(a, &old[0], 100).await.unwrap(),
            RedeemOutcome::Expired,
            "{engine}"
        );
        assert_eq!(
            store
                .redeem_code(a, &random_redeem_code().unwrap(), 8)
                .await
                .unwrap(),
            RedeemOutcome::Unknown,
            "{engine}"
        );
        assert_eq!(
            store.redeem_code(a, "not a code", 8).await.unwrap(),
            RedeemOutcome::Unknown,
            "{engine}"
        );
        assert!(
            matches!(
                store.redeem_code(a, &plan[0], 8).await,
                Err(StoreError::Unsupported(_))
            ),
            "{engine}"
        );
        assert_eq!(paid(&store, a).await, 7, "{engine}");
        assert_eq!(store.ledger(a, 10).await.unwrap().len(), 1, "{engine}");
        let ghost = Uid(9_999);
        let (_, more) = store
            .create_code_batch(credits(1), 1, None, "", 1)
            .await
            .unwrap();
        assert!(
            matches!(
                store.redeem_code(ghost, &more[0], 8).await,
                Err(StoreError::UnknownUser(_))
            ),
            "{engine}"
        );
        assert!(
            matches!(
                store.redeem_code(a, &more[0], 9).await.unwrap(),
                RedeemOutcome::Redeemed { .. }
            ),
            "{engine}"
        );
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_users_racing_for_one_code_credit_once() {
    for (engine, store) in engines().await {
        let mut users = Vec::new();
        for i in 0..20 {
            users.push(user(&store, &format!("u{i}")).await);
        }
        let (_, codes) = store
            .create_code_batch(credits(30), 1, None, "", 1)
            .await
            .unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(users.len()));
        let mut tasks = Vec::new();
        for &uid in &users {
            let (store, barrier, code) = (store.clone(), barrier.clone(), codes[0].clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store.redeem_code(uid, &code, 2).await.unwrap()
            }));
        }
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.unwrap());
        }
        let won = outcomes
            .iter()
            .filter(|o| matches!(o, RedeemOutcome::Redeemed { .. }))
            .count();
        let lost = outcomes
            .iter()
            .filter(|o| **o == RedeemOutcome::AlreadyUsed { by_you: false })
            .count();
        assert_eq!((won, lost), (1, 19), "{engine}: {outcomes:?}");
        let mut total = 0;
        for &u in &users {
            total += paid(&store, u).await;
        }
        assert_eq!(total, 30, "{engine}");
        assert_eq!(store.code_redemptions().await.unwrap().len(), 1, "{engine}");
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_racing_redemptions_leaves_each_code_used_or_revoked() {
    for (engine, store) in engines().await {
        let a = user(&store, "a").await;
        let (batch, codes) = store
            .create_code_batch(credits(2), 40, None, "", 1)
            .await
            .unwrap();
        let redeem = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut won = 0u64;
                for code in &codes {
                    if let RedeemOutcome::Redeemed { .. } =
                        store.redeem_code(a, code, 3).await.unwrap()
                    {
                        won += 1;
                    }
                }
                won
            })
        };
        // Revoked once some are used: the rest race the revocation.
        loop {
            let used = store
                .batch_codes(batch.id)
                .await
                .unwrap()
                .iter()
                .filter(|c| matches!(c.state, CodeState::Used { .. }))
                .count();
            if used >= 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let revoked = store.revoke_code_batch(batch.id, 4).await.unwrap().unwrap();
        let won = redeem.await.unwrap();
        assert_eq!(won + u64::from(revoked), 40, "{engine}");
        assert!(won >= 3, "{engine}: {won} {revoked}");
        assert_eq!(paid(&store, a).await, won * 2, "{engine}");
        let used = store
            .batch_codes(batch.id)
            .await
            .unwrap()
            .iter()
            .filter(|c| matches!(c.state, CodeState::Used { .. }))
            .count();
        assert_eq!(used as u64, won, "{engine}");
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test]
async fn a_plan_code_grants_the_plan_exactly_once() {
    const DAY_MS: i64 = 86_400_000;
    // Day 20,000 (2024-10-04) at 00:00 in UTC+8.
    let start_ms: i64 = 20_000 * DAY_MS - 8 * 3600 * 1000;
    for (engine, store) in engines().await {
        let uid = user(&store, "a").await;
        let other = user(&store, "b").await;
        assert_eq!(store.plan(uid).await.unwrap(), None, "{engine}");
        let grant = CodeGrant::of_plan(&month());
        let (batch, codes) = store
            .create_code_batch(grant.clone(), 2, None, "campaign", start_ms)
            .await
            .unwrap();
        assert_eq!(batch.grant.plan_grant(), Some(month()), "{engine}");
        assert_eq!(
            store.code_batch(batch.id).await.unwrap().unwrap().grant,
            grant,
            "{engine}"
        );
        let RedeemOutcome::Redeemed {
            grant: got, entry, ..
        } = store.redeem_code(uid, &codes[0], start_ms).await.unwrap()
        else {
            panic!("{engine}: not redeemed");
        };
        assert_eq!(got, grant, "{engine}");
        assert_eq!((entry.paid_delta, entry.free_delta), (0, 0), "{engine}");
        assert_eq!(entry.reference, code_reference(batch.id, 1), "{engine}");
        assert!(
            entry.reason.contains("会员 月卡 2024-10-04 至 2024-11-02"),
            "{engine}: {}",
            entry.reason
        );
        let plan = store.plan(uid).await.unwrap().unwrap();
        assert_eq!(
            (
                plan.id.as_str(),
                plan.start_day,
                plan.end_day,
                plan.daily_credits
            ),
            ("month", 20_000, 20_030, 20),
            "{engine}"
        );
        assert_eq!(
            (plan.days_left(20_000), plan.last_day()),
            (30, 20_029),
            "{engine}"
        );
        // Once: the same code again changes nothing.
        assert_eq!(
            store
                .redeem_code(uid, &codes[0], start_ms + DAY_MS)
                .await
                .unwrap(),
            RedeemOutcome::AlreadyUsed { by_you: true },
            "{engine}"
        );
        assert_eq!(
            store.plan(uid).await.unwrap(),
            Some(plan.clone()),
            "{engine}"
        );
        // The second code, ten days later, extends it from its end.
        assert!(
            matches!(
                store
                    .redeem_code(uid, &codes[1], start_ms + 10 * DAY_MS)
                    .await
                    .unwrap(),
                RedeemOutcome::Redeemed { .. }
            ),
            "{engine}"
        );
        let longer = store.plan(uid).await.unwrap().unwrap();
        assert_eq!(
            (longer.start_day, longer.end_day),
            (20_000, 20_060),
            "{engine}"
        );
        assert_eq!(longer.days_left(20_010), 50, "{engine}");
        assert_eq!(store.plan(other).await.unwrap(), None, "{engine}");
        assert_eq!(paid(&store, uid).await, 0, "{engine}");
        assert_eq!(store.ledger(uid, 10).await.unwrap().len(), 2, "{engine}");
        assert_consistent(engine, &store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_revocations_revoke_each_code_once() {
    for (engine, store) in engines().await {
        let (batch, _) = store
            .create_code_batch(credits(1), 200, None, "", 1)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .revoke_code_batch(batch.id, 10 + i)
                    .await
                    .unwrap()
                    .unwrap()
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert_eq!(total, 200, "{engine}");
        let codes = store.batch_codes(batch.id).await.unwrap();
        assert!(
            codes
                .iter()
                .all(|c| matches!(c.state, CodeState::Revoked { .. })),
            "{engine}"
        );
        let first = store.code_batch(batch.id).await.unwrap().unwrap();
        assert!(
            first.revoked_at_ms.is_some_and(|at| (10..14).contains(&at)),
            "{engine}"
        );
    }
}

#[tokio::test]
async fn a_batch_is_bounded_and_stored_hashed() {
    for (engine, store) in engines().await {
        for count in [0, MAX_CODES_PER_BATCH + 1] {
            assert!(
                matches!(
                    store
                        .create_code_batch(credits(5), count, None, "", 1)
                        .await,
                    Err(StoreError::InvalidInput(_))
                ),
                "{engine}"
            );
        }
        assert!(
            store
                .create_code_batch(credits(0), 1, None, "", 1)
                .await
                .is_err(),
            "{engine}"
        );
        let (batch, codes) = store
            .create_code_batch(credits(5), 3, Some(1_000), "shop A", 1)
            .await
            .unwrap();
        assert_eq!(
            (batch.count, batch.note.as_str()),
            (3, "shop A"),
            "{engine}"
        );
        assert_eq!(codes.len(), 3, "{engine}");
        assert_eq!(
            store.code_batch(batch.id).await.unwrap(),
            Some(batch.clone()),
            "{engine}"
        );
        assert_eq!(
            store.code_batches(10).await.unwrap(),
            vec![batch.clone()],
            "{engine}"
        );
        let listed = store.batch_codes(batch.id).await.unwrap();
        assert_eq!(
            listed.iter().map(CodeRecord::id).collect::<Vec<_>>(),
            (1..=3).map(|n| code_id(batch.id, n)).collect::<Vec<_>>(),
            "{engine}"
        );
        assert!(
            listed.iter().all(|c| c.state == CodeState::Unused),
            "{engine}"
        );
        // No table holds a code's text, in any form; each is its SHA-256 (sled's
        // `codes::tests` read its trees for the same).
        if let Some(r) = rel(&store) {
            for code in &codes {
                let canonical = normalize_redeem_code(code).unwrap();
                for needle in [canonical.as_str(), code.as_str()] {
                    assert_eq!(
                        tables_holding(r, needle).await,
                        Vec::<String>::new(),
                        "{engine}"
                    );
                }
                let hash = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
                let rows = sql(
                    r,
                    "SELECT count(*) FROM codes WHERE hash = $1",
                    &[(&hash.as_ref(), Type::BYTEA)],
                )
                .await;
                assert_eq!(rows[0].get::<_, i64>(0), 1, "{engine}");
            }
        }
        // Newest first, bounded.
        let (second, _) = store
            .create_code_batch(credits(1), 1, None, "", 2)
            .await
            .unwrap();
        assert!(second.id > batch.id, "{engine}");
        let ids: Vec<u64> = store
            .code_batches(10)
            .await
            .unwrap()
            .iter()
            .map(|b| b.id)
            .collect();
        assert_eq!(ids, [second.id, batch.id], "{engine}");
        assert_eq!(store.code_batches(1).await.unwrap().len(), 1, "{engine}");
        assert_eq!(store.code_batch(424_242).await.unwrap(), None, "{engine}");
    }
}

/// Every table of the relational schema whose rows, as text, contain `needle`.
async fn tables_holding(store: &RelStore, needle: &str) -> Vec<String> {
    let tables: Vec<String> = sql(
        store,
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
        &[],
    )
    .await
    .iter()
    .map(|r| r.get(0))
    .collect();
    assert!(tables.len() > 10, "{tables:?}");
    let pattern = format!("%{needle}%");
    let mut out = Vec::new();
    for table in tables {
        let query = format!("SELECT count(*) FROM \"{table}\" x WHERE x::text ILIKE $1");
        let rows = sql(store, &query, &[(&pattern, Type::TEXT)]).await;
        if rows[0].get::<_, i64>(0) > 0 {
            out.push(table);
        }
    }
    out
}
