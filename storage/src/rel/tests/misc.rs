//! Users, identities, dedupe marks, handoffs, tokens, login codes and the schema itself on
//! PostgreSQL: the cases of the sled modules, plus what the database refuses by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chatrelay_core::{Platform, UserKey};

use crate::rel::RelStore;
use crate::{Admission, StoreError, TOKEN_PREFIX, Uid, display_login_code};

fn key(user: &str) -> UserKey {
    UserKey::new(Platform::Mp, "main", user)
}

/// How many of `n` racing calls of `attempt` said true.
async fn winners<F, Fut>(store: &RelStore, n: usize, attempt: F) -> usize
where
    F: Fn(RelStore, usize) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let wins = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (fut, wins) = (attempt(store.clone(), i), wins.clone());
            tokio::spawn(async move {
                if fut.await {
                    wins.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    wins.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_first_contacts_make_one_user() {
    let s = store_or_skip!();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.resolve_identity(&key("racer"), None).await.unwrap() })
        })
        .collect();
    let mut uids = Vec::new();
    for t in tasks {
        uids.push(t.await.unwrap());
    }
    assert!(uids.iter().all(|u| *u == uids[0]));
    let rows = s
        .rows("SELECT count(*) AS n FROM users", &[])
        .await
        .unwrap();
    assert_eq!(
        rows[0].get::<_, i64>("n"),
        1,
        "no orphan users from the losers"
    );
}

#[tokio::test]
async fn tokens_are_hashed_revocable_and_expire() {
    let s = store_or_skip!();
    let uid = s.create_user("u").await.unwrap().uid;
    let token = s.create_token(uid, "laptop", None, 1).await.unwrap();
    let secret = token.strip_prefix(TOKEN_PREFIX).unwrap();
    assert!(secret.len() == 48 && secret.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(s.token_uid(&token, 2).await.unwrap(), Some(uid));
    assert_eq!(s.token_uid("sk-cr-nope", 2).await.unwrap(), None);
    assert!(matches!(
        s.create_token(Uid(99_999), "x", None, 1).await,
        Err(StoreError::UnknownUser(_))
    ));
    assert!(s.create_token(uid, "c", Some(1), 1).await.is_err());
    let short = s.create_token(uid, "short", Some(100), 2).await.unwrap();
    assert_eq!(s.token_uid(&short, 99).await.unwrap(), Some(uid));
    assert_eq!(s.token_uid(&short, 100).await.unwrap(), None);
    assert!(s.revoke_token(&token, 5).await.unwrap());
    assert!(!s.revoke_token(&token, 6).await.unwrap());
    assert!(!s.revoke_token("sk-cr-unknown", 6).await.unwrap());
    assert_eq!(s.token_uid(&token, 7).await.unwrap(), None);
    let infos = s.tokens_of(uid).await.unwrap();
    assert_eq!(infos.len(), 2);
    assert_eq!(
        (infos[0].label.as_str(), infos[0].revoked),
        ("laptop", true)
    );
    assert_eq!(infos[1].expires_at_ms, Some(100));
    assert_eq!(infos[0].hash_prefix.len(), 12);
    // Only the hash is stored: no column of any token row holds the secret.
    let rows = s
        .rows("SELECT t::text AS row FROM tokens t", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let text: String = row.get("row");
        assert!(!text.contains(secret), "token text stored: {text}");
        assert!(
            text.contains(&hex_of(&crate::tokens::token_hash(&token))) || text.contains("short")
        );
    }
}

fn hex_of(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

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

fn turn(n: i64) -> crate::Turn {
    crate::Turn {
        role: if n % 2 == 0 { "user" } else { "assistant" }.to_owned(),
        content: format!("message {n}"),
        at_ms: n,
    }
}
