//! What the relational schema refuses by itself, and its migrations. The cases shared with
//! sled are the suite's (`facade/tests/misc.rs`).

use crate::StoreError;
use crate::rel::RelStore;

#[tokio::test]
async fn the_database_refuses_what_the_rules_forbid() {
    let s = store_or_skip!();
    let uid = s.create_user("u").await.unwrap().uid;
    s.grant(uid, 5, crate::EntryKind::Grant, "g", "g1", 1)
        .await
        .unwrap();
    let refused = [
        "UPDATE balances SET paid = -1",
        "UPDATE balances SET held = -1",
        "INSERT INTO ledger (uid, seq, at_ms, kind, free_delta, paid_delta, paid_after, reason,
                             reference)
         SELECT uid, 2, 1, 'grant', 0, 1, 6, 'again', 'g1' FROM users",
        "INSERT INTO ledger (uid, seq, at_ms, kind, free_delta, paid_delta, paid_after, reason,
                             reference)
         SELECT uid, 2, 1, 'gift', 0, 1, 6, 'x', 'g2' FROM users",
        "INSERT INTO identities (platform, account, user_id, uid) VALUES ('mp', 'a', 'o', 987654)",
        "INSERT INTO orders (id, uid, product, product_name, channel, amount_fen, credits, status,
                             created_at_ms, expires_at_ms)
         SELECT 'o1', uid, 'p', 'p', 'wechat', 100, 10, 'paid', 1, 2 FROM users",
        "INSERT INTO orders (id, uid, product, product_name, channel, amount_fen, credits, status,
                             created_at_ms, expires_at_ms)
         SELECT 'o2', uid, 'p', 'p', 'wechat', -5, 10, 'created', 1, 2 FROM users",
        "INSERT INTO orders (id, uid, product, product_name, channel, amount_fen, credits, status,
                             created_at_ms, expires_at_ms)
         SELECT 'o3', uid, 'p', 'p', 'wechat', 100, 10, 'refunded', 1, 2 FROM users",
        "INSERT INTO login_codes (code, uid, expires_at_ms) SELECT 'ILOU0000', uid, 1 FROM users",
        "INSERT INTO tokens (hash, uid, label, created_at_ms) SELECT 'short', uid, '', 1 FROM users",
    ];
    for sql in refused {
        assert!(s.rows(sql, &[]).await.is_err(), "accepted: {sql}");
    }
    let again = s.rows(
        "INSERT INTO identities (platform, account, user_id, uid) SELECT 'mp', 'a', 'o', uid FROM users",
        &[],
    );
    again.await.unwrap();
    let twice = s.rows(
        "INSERT INTO identities (platform, account, user_id, uid) SELECT 'mp', 'a', 'o', uid FROM users",
        &[],
    );
    assert!(twice.await.is_err(), "an identity belongs to one user");
}

#[tokio::test]
async fn migrations_run_once_and_a_newer_schema_is_refused() {
    let Ok(url) = std::env::var("CHATRELAY_TEST_PG_URL") else {
        eprintln!("skipped: CHATRELAY_TEST_PG_URL is not set");
        return;
    };
    let opts = crate::kv::pg::PgOptions {
        schema: Some(crate::open::temporary_schema()),
        ..crate::kv::pg::PgOptions::new(url)
    };
    // Every migration this build knows, in order (the versions other branches add too).
    let all: Vec<i64> = crate::rel::schema::MIGRATIONS.iter().map(|m| m.0).collect();
    let latest = crate::rel::schema::latest();
    let first = RelStore::migrate(&opts).await.unwrap();
    assert_eq!((first.from, first.applied.clone()), (0, all));
    let again = RelStore::migrate(&opts).await.unwrap();
    assert_eq!((again.from, again.applied), (latest, vec![]));
    let s = RelStore::open(&opts).await.unwrap();
    s.rows(
        "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
        &[],
    )
    .await
    .unwrap();
    assert!(matches!(
        RelStore::open(&opts).await,
        Err(StoreError::SchemaTooNew {
            found: 99,
            supported
        }) if i64::from(supported) == latest
    ));
}
