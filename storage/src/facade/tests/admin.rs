//! The admin paths on both engines: the cases of `users.rs`, `tokens.rs`, `quota/tests.rs`
//! (`ledger_pages_go_back_by_seq`) and `audit.rs`. Tampering (SQL or raw records) is each
//! engine's own: `rel/tests/admin.rs` and the sled modules.

use chatrelay_core::{Platform, UserKey};

use super::{engines, key};
use crate::{EntryKind, LedgerEntry, Store, StoreError, Uid};

async fn grant(s: &Store, uid: Uid, n: u64, kind: EntryKind, reference: &str, at: i64) {
    s.grant(uid, n, kind, "t", reference, at).await.unwrap();
}

/// `users::tests::ban_and_unban`.
#[tokio::test]
async fn ban_and_unban() {
    for (engine, s) in engines().await {
        let a = s.create_user("a").await.unwrap();
        let banned = s.set_banned(a.uid, true, Some("spam")).await.unwrap();
        assert!(banned.banned, "{engine}");
        assert_eq!(banned.ban_reason.as_deref(), Some("spam"), "{engine}");
        assert!(s.user(a.uid).await.unwrap().unwrap().banned, "{engine}");
        let unbanned = s.set_banned(a.uid, false, Some("ignored")).await.unwrap();
        assert!(!unbanned.banned, "{engine}");
        assert_eq!(
            unbanned.ban_reason, None,
            "{engine}: the reason goes with the ban"
        );
        assert_eq!(s.user(a.uid).await.unwrap().unwrap(), unbanned, "{engine}");
        assert!(
            matches!(
                s.set_banned(Uid(99_999), true, None).await,
                Err(StoreError::UnknownUser(Uid(99_999)))
            ),
            "{engine}"
        );
    }
}

/// `users::tests::groups_are_added_and_removed`, plus byte order and trimming.
#[tokio::test]
async fn groups_are_added_and_removed() {
    for (engine, s) in engines().await {
        let a = s.create_user("a").await.unwrap();
        let u = s
            .change_groups(a.uid, &["vip".into(), "team".into()], &[])
            .await
            .unwrap();
        assert_eq!(u.groups, vec!["team", "vip"], "{engine}");
        let u = s
            .change_groups(a.uid, &["vip".into()], &["team".into()])
            .await
            .unwrap();
        assert_eq!(u.groups, vec!["vip"], "{engine}");
        assert_eq!(
            s.user(a.uid).await.unwrap().unwrap().groups,
            vec!["vip"],
            "{engine}"
        );
        assert!(
            matches!(
                s.change_groups(a.uid, &[" ".into()], &[]).await,
                Err(StoreError::InvalidInput(_))
            ),
            "{engine}"
        );
        assert!(
            s.change_groups(a.uid, &["x".repeat(65)], &[])
                .await
                .is_err(),
            "{engine}"
        );
        // Sorted by bytes (uppercase before lowercase), trimmed, never twice.
        let u = s
            .change_groups(a.uid, &[" Zed ".into(), "vip".into()], &[])
            .await
            .unwrap();
        assert_eq!(u.groups, vec!["Zed", "vip"], "{engine}");
        assert!(
            matches!(
                s.change_groups(Uid(99_999), &["vip".into()], &[]).await,
                Err(StoreError::UnknownUser(_))
            ),
            "{engine}"
        );
    }
}

/// `users::tests::find_by_name_and_by_part_of_a_key`.
#[tokio::test]
async fn find_by_name_and_by_part_of_a_key() {
    for (engine, s) in engines().await {
        let alice = s.create_user("Alice Wang").await.unwrap();
        s.create_user("bob").await.unwrap();
        let k: UserKey = "mp:main:o6_abcdef".parse().unwrap();
        s.link_identity(&k, alice.uid).await.unwrap();
        let by_name = s.find_users_by_name("alice", 10).await.unwrap();
        assert_eq!(by_name.len(), 1, "{engine}");
        assert_eq!(by_name[0].uid, alice.uid, "{engine}");
        assert_eq!(
            s.find_users_by_name("", 1).await.unwrap().len(),
            1,
            "{engine}: limit holds"
        );
        assert_eq!(
            s.find_users_by_name("", 10).await.unwrap()[0].uid,
            alice.uid,
            "{engine}: lowest uid first"
        );
        let by_key = s.find_identities("o6_abc", 10).await.unwrap();
        assert_eq!(by_key, vec![(k, alice.uid)], "{engine}");
        assert!(
            s.find_identities("nobody", 10).await.unwrap().is_empty(),
            "{engine}"
        );
        // A key without an account is found by its text too, in key order.
        let web = UserKey::new(Platform::Web, "", "s1");
        s.link_identity(&web, alice.uid).await.unwrap();
        let found = s.find_identities(":", 10).await.unwrap();
        let texts: Vec<String> = found.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(texts, ["mp:main:o6_abcdef", "web:s1"], "{engine}");
        assert_eq!(
            s.find_identities(":", 1).await.unwrap().len(),
            1,
            "{engine}"
        );
    }
}

/// Linking moves a key to another user and keeps the index (was `users::tests`' case).
#[tokio::test]
async fn link_moves_a_key_and_keeps_the_index() {
    for (engine, s) in engines().await {
        let a = s.resolve_identity(&key("a"), None).await.unwrap();
        let web = UserKey::new(Platform::Web, "", "s1");
        let b = s.resolve_identity(&web, None).await.unwrap();
        assert_eq!(s.link_identity(&web, a).await.unwrap(), Some(b), "{engine}");
        assert_eq!(s.identity(&web).await.unwrap(), Some(a), "{engine}");
        assert_eq!(
            s.identities_of(a).await.unwrap(),
            vec![key("a"), web.clone()],
            "{engine}"
        );
        assert!(s.identities_of(b).await.unwrap().is_empty(), "{engine}");
        // Linking again is a no-op that reports the owner.
        assert_eq!(s.link_identity(&web, a).await.unwrap(), Some(a), "{engine}");
        assert_eq!(s.identities_of(a).await.unwrap().len(), 2, "{engine}");
        // A fresh key has no previous owner.
        assert_eq!(
            s.link_identity(&key("new"), b).await.unwrap(),
            None,
            "{engine}"
        );
        assert!(
            matches!(
                s.link_identity(&key("x"), Uid(999)).await,
                Err(StoreError::UnknownUser(_))
            ),
            "{engine}"
        );
        assert_eq!(
            s.identity(&key("x")).await.unwrap(),
            None,
            "{engine}: nothing written"
        );
    }
}

/// Unlinking removes both directions (was `users::tests`' case).
#[tokio::test]
async fn unlink_removes_both_directions() {
    for (engine, s) in engines().await {
        let a = s.resolve_identity(&key("a"), None).await.unwrap();
        assert!(s.unlink_identity(&key("a")).await.unwrap(), "{engine}");
        assert!(!s.unlink_identity(&key("a")).await.unwrap(), "{engine}");
        assert_eq!(s.identity(&key("a")).await.unwrap(), None, "{engine}");
        assert!(s.identities_of(a).await.unwrap().is_empty(), "{engine}");
        // The user stays; resolving again makes a new user.
        assert!(s.user(a).await.unwrap().is_some(), "{engine}");
        assert_ne!(
            s.resolve_identity(&key("a"), None).await.unwrap(),
            a,
            "{engine}"
        );
    }
}

/// `quota::tests::ledger_pages_go_back_by_seq`.
#[tokio::test]
async fn ledger_pages_go_back_by_seq() {
    for (engine, s) in engines().await {
        let uid = s.create_user("u").await.unwrap().uid;
        let other = s.create_user("o").await.unwrap().uid;
        for i in 1..=5 {
            grant(&s, uid, i, EntryKind::Grant, &format!("p{i}"), i as i64).await;
        }
        grant(&s, other, 9, EntryKind::Grant, "other-p", 1).await;
        let seqs = |v: &[LedgerEntry]| v.iter().map(|e| e.seq).collect::<Vec<_>>();
        let (first, next) = s.ledger_page(uid, None, 2).await.unwrap();
        assert_eq!((seqs(&first), next), (vec![5, 4], Some(4)), "{engine}");
        let (second, next) = s.ledger_page(uid, next, 2).await.unwrap();
        assert_eq!((seqs(&second), next), (vec![3, 2], Some(2)), "{engine}");
        let (third, next) = s.ledger_page(uid, next, 2).await.unwrap();
        assert_eq!((seqs(&third), next), (vec![1], None), "{engine}");
        let (all, next) = s.ledger_page(uid, None, 100).await.unwrap();
        assert_eq!((all.len(), next), (5, None), "{engine}");
        assert!(
            s.ledger_page(Uid(999), None, 5).await.unwrap().0.is_empty(),
            "{engine}"
        );
        // A limit of 0 is one entry, as on sled.
        assert_eq!(
            s.ledger_page(uid, None, 0).await.unwrap().0.len(),
            1,
            "{engine}"
        );
        assert_eq!(all[0].paid_after, 15, "{engine}");
    }
}

/// `audit::tests::empty_and_busy_stores_are_consistent`.
#[tokio::test]
async fn empty_and_busy_stores_are_consistent() {
    for (engine, s) in engines().await {
        assert!(s.audit().await.unwrap().is_consistent(), "{engine}");
        let a = s.create_user("a").await.unwrap().uid;
        grant(&s, a, 100, EntryKind::Purchase, "o1", 1).await;
        let r = s.reserve(a, 30, "m1", 1, 10, 100).await.unwrap();
        s.reserve(a, 5, "m2", 1, 10, 100).await.unwrap();
        s.settle(r, 25, "answer", 1, 10, 2).await.unwrap();
        s.debit(a, 10, EntryKind::Refund, "refund", "o1-refund", 3)
            .await
            .unwrap();
        let report = s.audit().await.unwrap();
        assert!(report.is_consistent(), "{engine}: {:?}", report.mismatches);
        assert_eq!(report.users, 1, "{engine}");
        assert_eq!(report.ledger_entries, 3, "{engine}");
        assert_eq!(report.open_reservations, 1, "{engine}");
        assert_eq!(report.total_paid, 75, "{engine}");
        assert_eq!(report.total_held, 5, "{engine}");
    }
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
    for (engine, s) in engines().await {
        let uid = s.create_user("u").await.unwrap().uid;
        for (id, at) in [("B", 2_000), ("A", 2_000), ("C", 1_000), ("D", 3_000)] {
            s.create_order(&order(uid, id, at), at).await.unwrap();
        }
        let ids = |v: Vec<crate::Order>| v.into_iter().map(|o| o.id).collect::<Vec<_>>();
        assert_eq!(
            ids(s.orders(None, usize::MAX).await.unwrap()),
            ["D", "B", "A", "C"],
            "{engine}"
        );
        assert_eq!(
            ids(s.orders(None, 2).await.unwrap()),
            ["D", "B"],
            "{engine}"
        );
        s.credit_order("A", 100, None, 5_000).await.unwrap();
        s.close_order("C", 5_000).await.unwrap();
        assert_eq!(
            ids(s.orders(Some(OrderStatus::Credited), 10).await.unwrap()),
            ["A"],
            "{engine}"
        );
        assert_eq!(
            ids(s.orders(Some(OrderStatus::Closed), 10).await.unwrap()),
            ["C"],
            "{engine}"
        );
        assert_eq!(
            ids(s.orders(Some(OrderStatus::Created), 10).await.unwrap()),
            ["D", "B"],
            "{engine}"
        );
        assert!(
            s.orders(Some(OrderStatus::Refunded), 10)
                .await
                .unwrap()
                .is_empty(),
            "{engine}"
        );
        assert!(s.orders(None, 0).await.unwrap().is_empty(), "{engine}");
        let o = s.set_order_code_url("B", "weixin://wxpay/x").await.unwrap();
        assert_eq!(o.code_url.as_deref(), Some("weixin://wxpay/x"), "{engine}");
        assert_eq!(
            s.order("B").await.unwrap().unwrap().code_url.as_deref(),
            Some("weixin://wxpay/x"),
            "{engine}"
        );
        assert!(
            matches!(
                s.set_order_code_url("nope", "x").await,
                Err(StoreError::UnknownOrder(_))
            ),
            "{engine}"
        );
    }
}

/// `users::tests::uids_start_at_one_and_are_dense` (counting), and
/// `users::tests::activity_is_the_newest_ledger_entry`.
#[tokio::test]
async fn counts_creation_times_and_activity() {
    for (engine, s) in engines().await {
        assert_eq!(s.user_count().await.unwrap(), 0, "{engine}");
        let a = s.create_user("a").await.unwrap();
        let b = s.create_user("b").await.unwrap();
        assert_eq!(s.user_count().await.unwrap(), 2, "{engine}");
        grant(&s, a.uid, 5, EntryKind::Grant, "r1", 1_000).await;
        grant(&s, a.uid, 5, EntryKind::Grant, "r2", 2_000).await;
        let all = s.user_activity().await.unwrap();
        assert_eq!(all.len(), 2, "{engine}");
        assert_eq!(
            (all[0].user.uid, all[0].last_active_ms),
            (a.uid, Some(2_000)),
            "{engine}"
        );
        assert_eq!(
            (all[1].user.uid, all[1].last_active_ms),
            (b.uid, None),
            "{engine}"
        );
        // Creation times: newest user first (rel/tests sets the times to check the period).
        let c = s.create_user("c").await.unwrap();
        let since = s.users_created_since(0).await.unwrap();
        assert_eq!(since.first(), Some(&c.created_at_ms), "{engine}");
        assert!(
            since.windows(2).all(|w| w[0] >= w[1]),
            "{engine}: {since:?}"
        );
        assert_eq!(
            s.users_created_since(i64::MAX).await.unwrap(),
            Vec::<i64>::new(),
            "{engine}"
        );
        assert_eq!(s.users_created_since(0).await.unwrap().len(), 3, "{engine}");
    }
}

/// Tokens are found and revoked by a prefix of their hash (was `tokens::tests`' case; two
/// tokens of a user sharing a prefix: `rel/tests/admin.rs`).
#[tokio::test]
async fn tokens_are_found_and_revoked_by_hash_prefix() {
    for (engine, s) in engines().await {
        let uid = s.create_user("u").await.unwrap().uid;
        let other = s.create_user("o").await.unwrap().uid;
        let token = s.create_token(uid, "a", None, 1).await.unwrap();
        s.create_token(other, "b", None, 1).await.unwrap();
        let prefix = s.tokens_of(uid).await.unwrap()[0].hash_prefix.clone();
        assert_eq!(
            s.find_tokens(&token, 10).await.unwrap(),
            vec![(uid, prefix.clone())],
            "{engine}"
        );
        assert_eq!(
            s.find_tokens(&prefix[..7].to_uppercase(), 10)
                .await
                .unwrap(),
            vec![(uid, prefix.clone())],
            "{engine}"
        );
        assert!(
            s.find_tokens("sk-cr-unknown", 10).await.unwrap().is_empty(),
            "{engine}"
        );
        // Too short a prefix would list everyone's tokens: no match.
        assert!(
            s.find_tokens(&prefix[..5], 10).await.unwrap().is_empty(),
            "{engine}"
        );
        assert!(
            s.find_tokens("zzzzzzzz", 10).await.unwrap().is_empty(),
            "{engine}"
        );
        // Another user's token is not revoked through this user.
        assert!(
            matches!(
                s.revoke_token_by_hash(other, &prefix, 2).await,
                Err(StoreError::InvalidInput(_))
            ),
            "{engine}"
        );
        assert!(
            matches!(
                s.revoke_token_by_hash(uid, "zz", 2).await,
                Err(StoreError::InvalidInput(_))
            ),
            "{engine}"
        );
        assert!(
            s.revoke_token_by_hash(uid, &prefix, 2).await.unwrap(),
            "{engine}"
        );
        assert_eq!(s.token_uid(&token, 3).await.unwrap(), None, "{engine}");
        assert!(
            !s.revoke_token_by_hash(uid, &prefix, 4).await.unwrap(),
            "{engine}"
        );
        assert_eq!(
            s.tokens_of(uid).await.unwrap()[0].revoked_at_ms,
            Some(2),
            "{engine}: revoked once"
        );
    }
}
