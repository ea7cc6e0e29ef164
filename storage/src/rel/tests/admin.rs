//! The admin paths only SQL can set up on PostgreSQL: creation times, two tokens under one
//! prefix, and tampering (where sled's tests write raw records). The rest is the suite's
//! (`facade/tests/admin.rs`).

use crate::rel::RelStore;
use crate::{AuditMismatch, EntryKind, StoreError, Uid};

async fn grant(s: &RelStore, uid: Uid, n: u64, kind: EntryKind, reference: &str, at: i64) {
    s.grant(uid, n, kind, "t", reference, at).await.unwrap();
}

/// `users_created_since` over set creation times: newest user first, only those of the
/// period (the suite's `counts_creation_times_and_activity` cannot set the times).
#[tokio::test]
async fn creation_times_are_newest_first_within_the_period() {
    let s = store_or_skip!();
    s.create_user("a").await.unwrap();
    let b = s.create_user("b").await.unwrap();
    s.rows("UPDATE users SET created_at_ms = uid * 100", &[])
        .await
        .unwrap();
    let c = s.create_user("c").await.unwrap();
    let since = s.users_created_since(b.uid.0 as i64 * 100).await.unwrap();
    assert_eq!(since, vec![c.created_at_ms, b.uid.0 as i64 * 100]);
    assert_eq!(s.users_created_since(0).await.unwrap().len(), 3);
}

/// Two of a user's tokens under one prefix (made with SQL): neither is revoked by it; more
/// of it names one (the rest of `tokens_are_found_and_revoked_by_hash_prefix` is in the suite).
#[tokio::test]
async fn two_tokens_under_one_prefix_need_a_longer_one() {
    let s = store_or_skip!();
    let other = s.create_user("o").await.unwrap().uid;
    s.create_token(other, "b", None, 1).await.unwrap();
    s.rows(
        "INSERT INTO tokens (hash, uid, label, created_at_ms)
         SELECT decode(h, 'hex'), $1, 'made', 1
         FROM unnest(ARRAY[repeat('ab', 31) || '01', repeat('ab', 31) || '02']) AS h",
        &[(&(other.0 as i64), tokio_postgres::types::Type::INT8)],
    )
    .await
    .unwrap();
    assert!(matches!(
        s.revoke_token_by_hash(other, "ABABAB", 5).await,
        Err(StoreError::InvalidInput(m)) if m.contains("more than one")
    ));
    assert_eq!(s.find_tokens("ababab", 10).await.unwrap().len(), 2);
    assert_eq!(
        s.find_tokens("ababab", 1).await.unwrap().len(),
        1,
        "limit holds"
    );
    let long = format!("{}02", "ab".repeat(31));
    assert!(s.revoke_token_by_hash(other, &long, 5).await.unwrap());
    let revoked: Vec<bool> = s
        .tokens_of(other)
        .await
        .unwrap()
        .iter()
        .map(|t| t.revoked)
        .collect();
    assert_eq!(revoked.iter().filter(|r| **r).count(), 1);
}

/// `audit::tests::tampered_balance_is_reported`.
#[tokio::test]
async fn tampered_balance_is_reported() {
    let s = store_or_skip!();
    let a = s.create_user("a").await.unwrap().uid;
    grant(&s, a, 100, EntryKind::Grant, "g1", 1).await;
    s.reserve(a, 7, "m1", 1, 0, 100).await.unwrap();
    s.rows(
        "UPDATE balances SET paid = 90, held = 0, next_seq = 5 WHERE uid = $1",
        &[(&(a.0 as i64), tokio_postgres::types::Type::INT8)],
    )
    .await
    .unwrap();
    let report = s.audit().await.unwrap();
    assert!(report.mismatches.contains(&AuditMismatch::Paid {
        uid: a,
        ledger_sum: 100,
        paid: 90
    }));
    assert!(report.mismatches.contains(&AuditMismatch::Held {
        uid: a,
        reserved: 7,
        held: 0
    }));
    assert!(report.mismatches.contains(&AuditMismatch::NextSeq {
        uid: a,
        next_seq: 5,
        last_seq: 1
    }));
    assert_eq!(report.mismatches.len(), 3, "{:?}", report.mismatches);
    assert!(report.mismatches.iter().all(|m| !m.to_string().is_empty()));
}

/// `audit::tests::tampered_ledger_and_refs_are_reported` (the references cannot dangle here:
/// `ledger.reference` is a column).
#[tokio::test]
async fn tampered_ledger_is_reported() {
    let s = store_or_skip!();
    let a = s.create_user("a").await.unwrap().uid;
    let b = s.create_user("b").await.unwrap().uid;
    grant(&s, a, 100, EntryKind::Grant, "g1", 1).await;
    grant(&s, a, 50, EntryKind::Grant, "g2", 1).await;
    grant(&s, b, 10, EntryKind::Grant, "g3", 1).await;
    s.rows("DELETE FROM ledger WHERE reference = 'g1'", &[])
        .await
        .unwrap();
    let report = s.audit().await.unwrap();
    let has = |pred: &dyn Fn(&AuditMismatch) -> bool| report.mismatches.iter().any(pred);
    assert!(has(&|m| *m
        == AuditMismatch::SeqGap {
            uid: a,
            expected: 1,
            found: 2,
        }));
    assert!(has(&|m| *m
        == AuditMismatch::PaidAfter {
            uid: a,
            seq: 2,
            running: 50,
            recorded: 150,
        }));
    assert!(has(&|m| *m
        == AuditMismatch::Paid {
            uid: a,
            ledger_sum: 50,
            paid: 150,
        }));
    assert!(
        report
            .mismatches
            .iter()
            .all(|m| !m.to_string().contains(&format!("user {b}:"))),
        "user b is fine: {:?}",
        report.mismatches
    );
    assert_eq!(report.ledger_entries, 2);
}
