//! Redemption codes on PostgreSQL: the cases of `codes/tests.rs`, the same answers, plus a
//! plan code (as `tests/plans.rs`'s `a_plan_code_grants_the_plan_exactly_once`).

use std::sync::Arc;

use super::assert_consistent;
use crate::rel::RelStore;
use crate::{
    CodeGrant, CodeRecord, CodeState, EntryKind, MAX_CODES_PER_BATCH, PlanGrant, RedeemOutcome,
    StoreError, Uid, code_id, code_reference, normalize_redeem_code, random_redeem_code,
};

fn credits(n: u64) -> CodeGrant {
    CodeGrant::Credits { credits: n }
}

async fn paid(store: &RelStore, uid: Uid) -> u64 {
    store.balance(uid, 0, 0).await.unwrap().paid
}

async fn user(store: &RelStore, name: &str) -> Uid {
    store.create_user(name).await.unwrap().uid
}

/// Every table of the schema whose rows, as text, contain `needle`.
async fn tables_holding(store: &RelStore, needle: &str) -> Vec<String> {
    let tables: Vec<String> = store
        .rows(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.len() > 10, "{tables:?}");
    let pattern = format!("%{needle}%");
    let mut out = Vec::new();
    for table in tables {
        let sql = format!("SELECT count(*) FROM \"{table}\" x WHERE x::text ILIKE $1");
        let rows = store
            .rows(&sql, &[(&pattern, tokio_postgres::types::Type::TEXT)])
            .await
            .unwrap();
        if rows[0].get::<_, i64>(0) > 0 {
            out.push(table);
        }
    }
    out
}

#[tokio::test]
async fn a_batch_is_bounded_and_stored_hashed() {
    let store = store_or_skip!();
    for count in [0, MAX_CODES_PER_BATCH + 1] {
        assert!(matches!(
            store
                .create_code_batch(credits(5), count, None, "", 1)
                .await,
            Err(StoreError::InvalidInput(_))
        ));
    }
    assert!(
        store
            .create_code_batch(credits(0), 1, None, "", 1)
            .await
            .is_err()
    );
    let (batch, codes) = store
        .create_code_batch(credits(5), 3, Some(1_000), "shop A", 1)
        .await
        .unwrap();
    assert_eq!((batch.count, batch.note.as_str()), (3, "shop A"));
    assert_eq!(codes.len(), 3);
    assert_eq!(
        store.code_batch(batch.id).await.unwrap(),
        Some(batch.clone())
    );
    assert_eq!(store.code_batches(10).await.unwrap(), vec![batch.clone()]);
    let listed = store.batch_codes(batch.id).await.unwrap();
    assert_eq!(
        listed.iter().map(CodeRecord::id).collect::<Vec<_>>(),
        (1..=3).map(|n| code_id(batch.id, n)).collect::<Vec<_>>()
    );
    assert!(listed.iter().all(|c| c.state == CodeState::Unused));
    // No table holds a code's text, in any form; each is its SHA-256.
    for code in &codes {
        let canonical = normalize_redeem_code(code).unwrap();
        for needle in [canonical.as_str(), code.as_str()] {
            assert_eq!(tables_holding(&store, needle).await, Vec::<String>::new());
        }
        let hash = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
        let rows = store
            .rows(
                "SELECT count(*) FROM codes WHERE hash = $1",
                &[(&hash.as_ref(), tokio_postgres::types::Type::BYTEA)],
            )
            .await
            .unwrap();
        assert_eq!(rows[0].get::<_, i64>(0), 1);
    }
    // Newest first, bounded.
    let (second, _) = store
        .create_code_batch(credits(1), 1, None, "", 2)
        .await
        .unwrap();
    assert!(second.id > batch.id);
    let ids: Vec<u64> = store
        .code_batches(10)
        .await
        .unwrap()
        .iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(ids, [second.id, batch.id]);
    assert_eq!(store.code_batches(1).await.unwrap().len(), 1);
    assert_eq!(store.code_batch(424_242).await.unwrap(), None);
}

fn month() -> PlanGrant {
    PlanGrant {
        id: "month".into(),
        name: "月卡".into(),
        days: 30,
        daily_credits: 20,
        utc_offset_secs: 8 * 3600,
    }
}
