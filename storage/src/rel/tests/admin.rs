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

/// `users::tests::ban_and_unban`.
#[tokio::test]
async fn ban_and_unban() {
    let s = store_or_skip!();
    let a = s.create_user("a").await.unwrap();
    let banned = s.set_banned(a.uid, true, Some("spam")).await.unwrap();
    assert!(banned.banned);
    assert_eq!(banned.ban_reason.as_deref(), Some("spam"));
    assert!(s.user(a.uid).await.unwrap().unwrap().banned);
    let unbanned = s.set_banned(a.uid, false, Some("ignored")).await.unwrap();
    assert!(!unbanned.banned);
    assert_eq!(unbanned.ban_reason, None, "the reason goes with the ban");
    assert_eq!(s.user(a.uid).await.unwrap().unwrap(), unbanned);
    assert!(matches!(
        s.set_banned(Uid(99_999), true, None).await,
        Err(StoreError::UnknownUser(Uid(99_999)))
    ));
}

/// `users::tests::groups_are_added_and_removed`, plus byte order and trimming.
#[tokio::test]
async fn groups_are_added_and_removed() {
    let s = store_or_skip!();
    let a = s.create_user("a").await.unwrap();
    let u = s
        .change_groups(a.uid, &["vip".into(), "team".into()], &[])
        .await
        .unwrap();
    assert_eq!(u.groups, vec!["team", "vip"]);
    let u = s
        .change_groups(a.uid, &["vip".into()], &["team".into()])
        .await
        .unwrap();
    assert_eq!(u.groups, vec!["vip"]);
    assert_eq!(s.user(a.uid).await.unwrap().unwrap().groups, vec!["vip"]);
    assert!(matches!(
        s.change_groups(a.uid, &[" ".into()], &[]).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert!(
        s.change_groups(a.uid, &["x".repeat(65)], &[])
            .await
            .is_err()
    );
    // Sorted by bytes (uppercase before lowercase), trimmed, never twice.
    let u = s
        .change_groups(a.uid, &[" Zed ".into(), "vip".into()], &[])
        .await
        .unwrap();
    assert_eq!(u.groups, vec!["Zed", "vip"]);
    assert!(matches!(
        s.change_groups(Uid(99_999), &["vip".into()], &[]).await,
        Err(StoreError::UnknownUser(_))
    ));
}

/// `users::tests::find_by_name_and_by_part_of_a_key`.
#[tokio::test]
async fn find_by_name_and_by_part_of_a_key() {
    let s = store_or_skip!();
    let alice = s.create_user("Alice Wang").await.unwrap();
    s.create_user("bob").await.unwrap();
    let k: UserKey = "mp:main:o6_abcdef".parse().unwrap();
    s.link_identity(&k, alice.uid).await.unwrap();
    let by_name = s.find_users_by_name("alice", 10).await.unwrap();
    assert_eq!(by_name.len(), 1);
    assert_eq!(by_name[0].uid, alice.uid);
    assert_eq!(
        s.find_users_by_name("", 1).await.unwrap().len(),
        1,
        "limit holds"
    );
    assert_eq!(
        s.find_users_by_name("", 10).await.unwrap()[0].uid,
        alice.uid,
        "lowest uid first"
    );
    let by_key = s.find_identities("o6_abc", 10).await.unwrap();
    assert_eq!(by_key, vec![(k, alice.uid)]);
    assert!(s.find_identities("nobody", 10).await.unwrap().is_empty());
    // A key without an account is found by its text too, in key order.
    let web = UserKey::new(Platform::Web, "", "s1");
    s.link_identity(&web, alice.uid).await.unwrap();
    let found = s.find_identities(":", 10).await.unwrap();
    let texts: Vec<String> = found.iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(texts, ["mp:main:o6_abcdef", "web:s1"]);
    assert_eq!(s.find_identities(":", 1).await.unwrap().len(), 1);
}

/// `users::tests::link_moves_a_key_and_keeps_the_index`.
#[tokio::test]
async fn link_moves_a_key_and_keeps_the_index() {
    let s = store_or_skip!();
    let a = s.resolve_identity(&key("a"), None).await.unwrap();
    let web = UserKey::new(Platform::Web, "", "s1");
    let b = s.resolve_identity(&web, None).await.unwrap();
    assert_eq!(s.link_identity(&web, a).await.unwrap(), Some(b));
    assert_eq!(s.identity(&web).await.unwrap(), Some(a));
    assert_eq!(
        s.identities_of(a).await.unwrap(),
        vec![key("a"), web.clone()]
    );
    assert!(s.identities_of(b).await.unwrap().is_empty());
    // Linking again is a no-op that reports the owner.
    assert_eq!(s.link_identity(&web, a).await.unwrap(), Some(a));
    assert_eq!(s.identities_of(a).await.unwrap().len(), 2);
    // A fresh key has no previous owner.
    assert_eq!(s.link_identity(&key("new"), b).await.unwrap(), None);
    assert!(matches!(
        s.link_identity(&key("x"), Uid(999)).await,
        Err(StoreError::UnknownUser(_))
    ));
    assert_eq!(
        s.identity(&key("x")).await.unwrap(),
        None,
        "nothing written"
    );
}

/// `users::tests::unlink_removes_both_directions`.
#[tokio::test]
async fn unlink_removes_both_directions() {
    let s = store_or_skip!();
    let a = s.resolve_identity(&key("a"), None).await.unwrap();
    assert!(s.unlink_identity(&key("a")).await.unwrap());
    assert!(!s.unlink_identity(&key("a")).await.unwrap());
    assert_eq!(s.identity(&key("a")).await.unwrap(), None);
    assert!(s.identities_of(a).await.unwrap().is_empty());
    // The user stays; resolving again makes a new user.
    assert!(s.user(a).await.unwrap().is_some());
    assert_ne!(s.resolve_identity(&key("a"), None).await.unwrap(), a);
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

/// `quota::tests::ledger_pages_go_back_by_seq`.
#[tokio::test]
async fn ledger_pages_go_back_by_seq() {
    let s = store_or_skip!();
    let uid = s.create_user("u").await.unwrap().uid;
    let other = s.create_user("o").await.unwrap().uid;
    for i in 1..=5 {
        grant(&s, uid, i, EntryKind::Grant, &format!("p{i}"), i as i64).await;
    }
    grant(&s, other, 9, EntryKind::Grant, "other-p", 1).await;
    let seqs = |v: &[LedgerEntry]| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    let (first, next) = s.ledger_page(uid, None, 2).await.unwrap();
    assert_eq!((seqs(&first), next), (vec![5, 4], Some(4)));
    let (second, next) = s.ledger_page(uid, next, 2).await.unwrap();
    assert_eq!((seqs(&second), next), (vec![3, 2], Some(2)));
    let (third, next) = s.ledger_page(uid, next, 2).await.unwrap();
    assert_eq!((seqs(&third), next), (vec![1], None));
    let (all, next) = s.ledger_page(uid, None, 100).await.unwrap();
    assert_eq!((all.len(), next), (5, None));
    assert!(s.ledger_page(Uid(999), None, 5).await.unwrap().0.is_empty());
    // A limit of 0 is one entry, as on sled.
    assert_eq!(s.ledger_page(uid, None, 0).await.unwrap().0.len(), 1);
    assert_eq!(all[0].paid_after, 15);
}

/// `audit::tests::empty_and_busy_stores_are_consistent`.
#[tokio::test]
async fn empty_and_busy_stores_are_consistent() {
    let s = store_or_skip!();
    assert!(s.audit().await.unwrap().is_consistent());
    let a = s.create_user("a").await.unwrap().uid;
    grant(&s, a, 100, EntryKind::Purchase, "o1", 1).await;
    let r = s.reserve(a, 30, "m1", 1, 10, 100).await.unwrap();
    s.reserve(a, 5, "m2", 1, 10, 100).await.unwrap();
    s.settle(r, 25, "answer", 1, 10, 2).await.unwrap();
    s.debit(a, 10, EntryKind::Refund, "refund", "o1-refund", 3)
        .await
        .unwrap();
    let report = s.audit().await.unwrap();
    assert!(report.is_consistent(), "{:?}", report.mismatches);
    assert_eq!(report.users, 1);
    assert_eq!(report.ledger_entries, 3);
    assert_eq!(report.open_reservations, 1);
    assert_eq!(report.total_paid, 75);
    assert_eq!(report.total_held, 5);
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

/// The listing of `orders::tests::open_orders_are_reused_until_closed_and_late_payments_count` (one credited of
/// two), plus the order (newest first, then id) and `set_order_code_url`.
#[tokio::test]
async fn orders_are_listed_newest_first_and_filtered() {
    use crate::OrderStatus;
    let s = store_or_skip!();
    let uid = s.create_user("u").await.unwrap().uid;
    for (id, at) in [("B", 2_000), ("A", 2_000), ("C", 1_000), ("D", 3_000)] {
        s.create_order(&order(uid, id, at), at).await.unwrap();
    }
    let ids = |v: Vec<crate::Order>| v.into_iter().map(|o| o.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.orders(None, usize::MAX).await.unwrap()),
        ["D", "B", "A", "C"]
    );
    assert_eq!(ids(s.orders(None, 2).await.unwrap()), ["D", "B"]);
    s.credit_order("A", 100, None, 5_000).await.unwrap();
    s.close_order("C", 5_000).await.unwrap();
    assert_eq!(
        ids(s.orders(Some(OrderStatus::Credited), 10).await.unwrap()),
        ["A"]
    );
    assert_eq!(
        ids(s.orders(Some(OrderStatus::Closed), 10).await.unwrap()),
        ["C"]
    );
    assert_eq!(
        ids(s.orders(Some(OrderStatus::Created), 10).await.unwrap()),
        ["D", "B"]
    );
    assert!(
        s.orders(Some(OrderStatus::Refunded), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.orders(None, 0).await.unwrap().is_empty());
    let o = s.set_order_code_url("B", "weixin://wxpay/x").await.unwrap();
    assert_eq!(o.code_url.as_deref(), Some("weixin://wxpay/x"));
    assert_eq!(
        s.order("B").await.unwrap().unwrap().code_url.as_deref(),
        Some("weixin://wxpay/x")
    );
    assert!(matches!(
        s.set_order_code_url("nope", "x").await,
        Err(StoreError::UnknownOrder(_))
    ));
}
