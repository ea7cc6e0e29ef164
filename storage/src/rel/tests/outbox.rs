//! Outbox, kept answers, checkpoints and counters on PostgreSQL: the cases of `outbox.rs`,
//! `dedupe.rs` (`answers_are_kept_until_they_expire`) and `checkpoints.rs`, plus racing
//! writers and where the statistics live.

use std::collections::BTreeSet;

use tokio_postgres::types::Type;

use crate::rel::RelStore;
use crate::rel::outbox::MAX_ITEMS;
use crate::{SharedAnswer, StoreError};

const MAX: usize = MAX_ITEMS as usize;

/// `dedupe::tests::answers_are_kept_until_they_expire` (`purge_expired_dedupe` is
/// `purge_expired_marks` here).
#[tokio::test]
async fn answers_are_kept_until_they_expire() {
    let s = store_or_skip!();
    assert_eq!(s.shared_answer("m", 0).await.unwrap(), None);
    let answer = SharedAnswer {
        text: Some("hi".into()),
        expires_at_ms: 100,
    };
    s.put_answer("m", &answer).await.unwrap();
    assert_eq!(s.shared_answer("m", 50).await.unwrap(), Some(answer));
    assert_eq!(s.shared_answer("m", 100).await.unwrap(), None, "expired");
    assert_eq!(s.purge_expired_marks(50).await.unwrap(), 0);
    assert_eq!(s.purge_expired_marks(100).await.unwrap(), 1);
    let left = s
        .rows("SELECT 1 FROM answers WHERE key = 'm'", &[])
        .await
        .unwrap();
    assert!(left.is_empty());
    // A duplicate's record (no text) is kept too; a second put replaces the first.
    let none = SharedAnswer {
        text: None,
        expires_at_ms: 200,
    };
    s.put_answer("d", &none).await.unwrap();
    assert_eq!(s.shared_answer("d", 0).await.unwrap(), Some(none));
    let again = SharedAnswer {
        text: Some("later".into()),
        expires_at_ms: 300,
    };
    s.put_answer("d", &again).await.unwrap();
    assert_eq!(s.shared_answer("d", 250).await.unwrap(), Some(again));
    assert!(s.shared_answer("", 0).await.is_err());
}

/// A purge takes at most its budget of each table per call, the rest on the next.
#[tokio::test]
async fn purges_go_in_bounded_steps() {
    let s = store_or_skip!();
    let budget = crate::dedupe::PURGE_BUDGET as i64;
    s.rows(
        "INSERT INTO dedupe (key, expires_at_ms)
         SELECT 'm' || i, i FROM generate_series(1, $1::bigint + 10) AS i",
        &[(&budget, Type::INT8)],
    )
    .await
    .unwrap();
    assert_eq!(
        s.purge_expired_marks(i64::MAX).await.unwrap(),
        crate::dedupe::PURGE_BUDGET
    );
    assert_eq!(s.purge_expired_marks(i64::MAX).await.unwrap(), 10);
    assert_eq!(s.purge_expired_marks(i64::MAX).await.unwrap(), 0);
}

/// Where the statistics live: `stats:` counts in `stats` (as the import puts them), anything
/// else in `checkpoints`, a key never in both; prefixes are bytes, not patterns.
#[tokio::test]
async fn statistics_live_in_their_table_and_keys_in_one_place() {
    let s = store_or_skip!();
    let tables = |key: &'static str| {
        let s = s.clone();
        async move {
            let rows = s
                .rows(
                    "SELECT 'c' AS t FROM checkpoints WHERE key = $1
                     UNION ALL SELECT 's' FROM stats WHERE key = $1",
                    &[(&key, Type::TEXT)],
                )
                .await
                .unwrap();
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        }
    };
    s.add_counters(&[("stats:9:m".into(), 3), ("zsxq:day".into(), 2)], &[])
        .await
        .unwrap();
    assert_eq!(tables("stats:9:m").await, ["s"]);
    assert_eq!(tables("zsxq:day").await, ["c"]);
    assert_eq!(s.counter("zsxq:day").await.unwrap(), 2);
    assert_eq!(s.bump_counter("stats:9:m").await.unwrap(), 4);
    // A statistics key set to text moves to checkpoints, and back when it counts again.
    s.set_checkpoint("stats:9:m", Some("note")).await.unwrap();
    assert_eq!(tables("stats:9:m").await, ["c"]);
    assert!(s.bump_counter("stats:9:m").await.is_err(), "not a counter");
    assert!(
        s.checkpoint_cas("stats:9:m", Some("note"), "7")
            .await
            .unwrap()
    );
    assert_eq!(tables("stats:9:m").await, ["s"]);
    assert_eq!(s.counter("stats:9:m").await.unwrap(), 7);
    assert!(s.checkpoint_cas("stats:9:m", Some("7"), "8").await.unwrap());
    assert!(!s.checkpoint_cas("stats:9:m", None, "1").await.unwrap());
    s.set_checkpoint("stats:9:m", None).await.unwrap();
    assert!(tables("stats:9:m").await.is_empty());
    // `_` and `%` are bytes of a prefix, not wildcards.
    s.set_checkpoint("a_b:1", Some("x")).await.unwrap();
    s.set_checkpoint("axb:1", Some("x")).await.unwrap();
    s.set_checkpoint("a%:1", Some("x")).await.unwrap();
    assert_eq!(s.count_prefix("a_b:").await.unwrap(), 1);
    assert_eq!(s.count_prefix("a%").await.unwrap(), 1);
    assert_eq!(s.checkpoints_with_prefix("a").await.unwrap().len(), 3);
    // Byte order: uppercase before lowercase.
    s.set_checkpoint("o:b", Some("1")).await.unwrap();
    s.set_checkpoint("o:B", Some("1")).await.unwrap();
    let keys: Vec<String> = s
        .checkpoints_with_prefix("o:")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["o:B", "o:b"]);
}

/// Racing counters count every bump, and racing first writes of one checkpoint have one
/// winner.
#[tokio::test]
async fn racing_counters_and_cas() {
    let s = store_or_skip!();
    let bumps: Vec<_> = (0..40)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let key = if i % 2 == 0 { "c" } else { "stats:3:c" };
                (i % 2, s.bump_counter(key).await.unwrap())
            })
        })
        .collect();
    let mut seen = [Vec::new(), Vec::new()];
    for t in bumps {
        let (k, n) = t.await.unwrap();
        seen[k].push(n);
    }
    assert_eq!(s.counter("c").await.unwrap(), 20);
    assert_eq!(s.counter("stats:3:c").await.unwrap(), 20);
    for mut values in seen {
        values.sort_unstable();
        assert_eq!(
            values,
            (1..=20).collect::<Vec<u64>>(),
            "each value once per key"
        );
    }
    let adds: Vec<_> = (0..10)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                s.add_counters(&[("stats:3:a".into(), 2), ("stats:3:b".into(), 3)], &[])
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in adds {
        t.await.unwrap();
    }
    assert_eq!(s.counter("stats:3:a").await.unwrap(), 20);
    assert_eq!(s.counter("stats:3:b").await.unwrap(), 30);
    let wins = super_winners(&s).await;
    assert_eq!(wins, 1);
}

async fn super_winners(s: &RelStore) -> usize {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.checkpoint_cas("topic", None, &format!("w{i}"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        if t.await.unwrap() {
            wins += 1;
        }
    }
    wins
}
