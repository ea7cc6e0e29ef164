//! The admin paths on PostgreSQL: the cases of `users.rs`, `tokens.rs`, `quota/tests.rs`
//! (`ledger_pages_go_back_by_seq`) and `audit.rs`, same values, same answers; tampering is done
//! with SQL where sled's tests write raw records.

use chatrelay_core::{Platform, UserKey};

use crate::rel::RelStore;
use crate::{AuditMismatch, EntryKind, LedgerEntry, StoreError, Uid};

fn key(user: &str) -> UserKey {
    UserKey::new(Platform::Mp, "main", user)
}

async fn grant(s: &RelStore, uid: Uid, n: u64, kind: EntryKind, reference: &str, at: i64) {
    s.grant(uid, n, kind, "t", reference, at).await.unwrap();
}

/// `users::tests::uids_start_at_one_and_are_dense` (counting), and
/// `users::tests::activity_is_the_newest_ledger_entry`.
#[tokio::test]
async fn counts_creation_times_and_activity() {
    let s = store_or_skip!();
    assert_eq!(s.user_count().await.unwrap(), 0);
    let a = s.create_user("a").await.unwrap();
    let b = s.create_user("b").await.unwrap();
    assert_eq!(s.user_count().await.unwrap(), 2);
    grant(&s, a.uid, 5, EntryKind::Grant, "r1", 1_000).await;
    grant(&s, a.uid, 5, EntryKind::Grant, "r2", 2_000).await;
    let all = s.user_activity().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[0].user.uid, all[0].last_active_ms),
        (a.uid, Some(2_000))
    );
    assert_eq!((all[1].user.uid, all[1].last_active_ms), (b.uid, None));
    // Creation times: newest user first, only those of the period.
    s.rows("UPDATE users SET created_at_ms = uid * 100", &[])
        .await
        .unwrap();
    let c = s.create_user("c").await.unwrap();
    let since = s.users_created_since(b.uid.0 as i64 * 100).await.unwrap();
    assert_eq!(since, vec![c.created_at_ms, b.uid.0 as i64 * 100]);
    assert_eq!(
        s.users_created_since(i64::MAX).await.unwrap(),
        Vec::<i64>::new()
    );
    assert_eq!(s.users_created_since(0).await.unwrap().len(), 3);
}

/// `tokens::tests::tokens_are_found_and_revoked_by_hash_prefix`, plus two tokens of one user
/// sharing a prefix.
#[tokio::test]
async fn tokens_are_found_and_revoked_by_hash_prefix() {
    let s = store_or_skip!();
    let uid = s.create_user("u").await.unwrap().uid;
    let other = s.create_user("o").await.unwrap().uid;
    let token = s.create_token(uid, "a", None, 1).await.unwrap();
    s.create_token(other, "b", None, 1).await.unwrap();
    let prefix = s.tokens_of(uid).await.unwrap()[0].hash_prefix.clone();
    assert_eq!(
        s.find_tokens(&token, 10).await.unwrap(),
        vec![(uid, prefix.clone())]
    );
    assert_eq!(
        s.find_tokens(&prefix[..7].to_uppercase(), 10)
            .await
            .unwrap(),
        vec![(uid, prefix.clone())]
    );
    assert!(s.find_tokens("sk-cr-unknown", 10).await.unwrap().is_empty());
    // Too short a prefix would list everyone's tokens: no match.
    assert!(s.find_tokens(&prefix[..5], 10).await.unwrap().is_empty());
    assert!(s.find_tokens("zzzzzzzz", 10).await.unwrap().is_empty());
    // Another user's token is not revoked through this user.
    assert!(matches!(
        s.revoke_token_by_hash(other, &prefix, 2).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        s.revoke_token_by_hash(uid, "zz", 2).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert!(s.revoke_token_by_hash(uid, &prefix, 2).await.unwrap());
    assert_eq!(s.token_uid(&token, 3).await.unwrap(), None);
    assert!(!s.revoke_token_by_hash(uid, &prefix, 4).await.unwrap());
    assert_eq!(
        s.tokens_of(uid).await.unwrap()[0].revoked_at_ms,
        Some(2),
        "revoked once"
    );
    // Two of a user's tokens under one prefix: neither is revoked by it; more of it names one.
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

fn order(uid: Uid, id: &str, created_at_ms: i64) -> crate::Order {
    crate::Order {
        id: id.into(),
        uid,
        product_id: "p10".into(),
        product_name: "10 credits".into(),
        channel: "wechat".into(),
        method: Some("h5".into()),
        amount_fen: 100,
        credits: 10,
        status: crate::OrderStatus::Created,
        created_at_ms,
        expires_at_ms: created_at_ms + 100_000,
        code_url: None,
        provider_trade_no: None,
        credited_at_ms: None,
        closed_at_ms: None,
        refunded_at_ms: None,
        plan: None,
    }
}
