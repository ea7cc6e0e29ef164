//! Outbox, kept answers, checkpoints and counters on both engines: the cases of `outbox.rs`,
//! `dedupe.rs` (`answers_are_kept_until_they_expire`) and `checkpoints.rs`, plus racing
//! writers and, on PostgreSQL, the table each key lives in.

use std::collections::BTreeSet;

use tokio_postgres::types::Type;

use super::{engines, rel, winners};
use crate::outbox::MAX_ITEMS;
use crate::rel::tests::sql;
use crate::{SharedAnswer, Store, StoreError};

const MAX: usize = MAX_ITEMS;

/// `outbox::tests::queue_take_and_bound`.
#[tokio::test]
async fn queue_take_and_bound() {
    for (engine, s) in engines().await {
        assert!(s.outbox_take("k").await.unwrap().is_empty(), "{engine}");
        s.outbox_push("k", "a").await.unwrap();
        s.outbox_push("k", "b").await.unwrap();
        assert_eq!(s.outbox_len("k").await.unwrap(), 2, "{engine}");
        assert_eq!(s.outbox_users().await.unwrap(), 1, "{engine}");
        assert_eq!(
            s.outbox_take("k").await.unwrap(),
            vec!["a", "b"],
            "{engine}"
        );
        assert!(s.outbox_take("k").await.unwrap().is_empty(), "{engine}");
        assert_eq!(s.outbox_users().await.unwrap(), 0, "{engine}");
        for i in 0..30 {
            s.outbox_push("k", &i.to_string()).await.unwrap();
            assert!(s.outbox_len("k").await.unwrap() <= MAX, "{engine}");
        }
        s.outbox_push("other", "x").await.unwrap();
        assert_eq!(s.outbox_users().await.unwrap(), 2, "{engine}");
        let items = s.outbox_take("k").await.unwrap();
        assert_eq!(items.len(), MAX, "{engine}");
        assert_eq!(items.last().unwrap(), "29", "{engine}");
        assert!(
            items[0].starts_with("0\n\n1"),
            "{engine}: old ones merged, none dropped: {:?}",
            items[0]
        );
        let all: String = items.join("\n\n");
        let expected: Vec<String> = (0..30).map(|i| i.to_string()).collect();
        assert_eq!(all, expected.join("\n\n"), "{engine}: in order, every one");
        assert_eq!(s.outbox_take("other").await.unwrap(), vec!["x"], "{engine}");
        assert!(s.outbox_push("", "x").await.is_err(), "{engine}");
    }
}

/// Racing pushes lose nothing, and the bound holds.
#[tokio::test]
async fn racing_pushes_lose_nothing() {
    for (engine, s) in engines().await {
        let tasks: Vec<_> = (0..60)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { s.outbox_push("k", &format!("t{i}")).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let items = s.outbox_take("k").await.unwrap();
        assert_eq!(items.len(), MAX, "{engine}");
        let seen: BTreeSet<String> = items
            .iter()
            .flat_map(|t| t.split("\n\n"))
            .map(str::to_owned)
            .collect();
        let expected: BTreeSet<String> = (0..60).map(|i| format!("t{i}")).collect();
        assert_eq!(seen, expected, "{engine}");
    }
}

/// `checkpoints::tests::cas_and_counters`.
#[tokio::test]
async fn cas_and_counters() {
    for (engine, s) in engines().await {
        assert_eq!(s.checkpoint("k").await.unwrap(), None, "{engine}");
        assert!(
            s.checkpoint_cas("k", None, "posting").await.unwrap(),
            "{engine}"
        );
        assert!(
            !s.checkpoint_cas("k", None, "posting").await.unwrap(),
            "{engine}: only one writer wins"
        );
        assert!(
            s.checkpoint_cas("k", Some("posting"), "answered")
                .await
                .unwrap(),
            "{engine}"
        );
        assert!(
            !s.checkpoint_cas("k", Some("posting"), "again")
                .await
                .unwrap(),
            "{engine}"
        );
        assert_eq!(
            s.checkpoint("k").await.unwrap().as_deref(),
            Some("answered"),
            "{engine}"
        );
        assert_eq!(s.counter("c").await.unwrap(), 0, "{engine}");
        s.set_checkpoint("pref:1:model", Some("m")).await.unwrap();
        assert_eq!(
            s.checkpoint("pref:1:model").await.unwrap().as_deref(),
            Some("m"),
            "{engine}"
        );
        s.set_checkpoint("pref:1:model", None).await.unwrap();
        assert_eq!(
            s.checkpoint("pref:1:model").await.unwrap(),
            None,
            "{engine}"
        );
        s.add_counters(
            &[("stats:1:a".into(), 2), ("stats:1:b".into(), 5)],
            &["stats:1:active:7".into()],
        )
        .await
        .unwrap();
        s.add_counters(&[("stats:1:a".into(), 3)], &["stats:1:active:7".into()])
            .await
            .unwrap();
        assert_eq!(s.counter("stats:1:a").await.unwrap(), 5, "{engine}");
        assert_eq!(
            s.count_prefix("stats:1:active:").await.unwrap(),
            1,
            "{engine}"
        );
        assert_eq!(
            s.checkpoints_with_prefix("stats:1:").await.unwrap(),
            vec![
                ("stats:1:a".to_owned(), "5".to_owned()),
                ("stats:1:active:7".to_owned(), "1".to_owned()),
                ("stats:1:b".to_owned(), "5".to_owned()),
            ],
            "{engine}"
        );
        for k in ["hit:0001:a", "hit:0002:b", "hit:0003:c", "hiz"] {
            s.set_checkpoint(k, Some("{}")).await.unwrap();
        }
        assert_eq!(
            s.purge_checkpoints_before("hit:", "hit:0003")
                .await
                .unwrap(),
            2,
            "{engine}"
        );
        assert_eq!(s.count_prefix("hit:").await.unwrap(), 1, "{engine}");
        assert!(s.checkpoint("hiz").await.unwrap().is_some(), "{engine}");
        assert_eq!(s.bump_counter("c").await.unwrap(), 1, "{engine}");
        assert_eq!(s.bump_counter("c").await.unwrap(), 2, "{engine}");
        assert_eq!(s.counter("c").await.unwrap(), 2, "{engine}");
        assert!(
            matches!(s.bump_counter("k").await, Err(StoreError::Corrupt { .. })),
            "{engine}: a non-counter is corrupt, not reset"
        );
        assert_eq!(
            s.checkpoint("k").await.unwrap().as_deref(),
            Some("answered"),
            "{engine}"
        );
        assert!(
            matches!(s.counter("k").await, Err(StoreError::Corrupt { .. })),
            "{engine}"
        );
    }
}

/// `checkpoints::tests::markers_beyond_one_batch_are_all_written` (beyond one statement here).
#[tokio::test]
async fn markers_beyond_one_batch_are_all_written() {
    for (engine, s) in engines().await {
        let n = 5_000 + 7;
        let markers: Vec<String> = (0..n).map(|i| format!("stats:2:active:{i}")).collect();
        s.add_counters(&[("stats:2:messages".into(), 4)], &markers)
            .await
            .unwrap();
        assert_eq!(
            s.count_prefix("stats:2:active:").await.unwrap(),
            n,
            "{engine}"
        );
        assert_eq!(s.counter("stats:2:messages").await.unwrap(), 4, "{engine}");
        // Written again (the next minute): still one each.
        s.add_counters(&[("stats:2:messages".into(), 1)], &markers[..10])
            .await
            .unwrap();
        assert_eq!(
            s.count_prefix("stats:2:active:").await.unwrap(),
            n,
            "{engine}"
        );
        assert_eq!(s.counter("stats:2:messages").await.unwrap(), 5, "{engine}");
    }
}

/// `dedupe::tests::answers_are_kept_until_they_expire` (on PostgreSQL
/// `purge_expired_dedupe` is `purge_expired_marks`; its row is gone).
#[tokio::test]
async fn answers_are_kept_until_they_expire() {
    for (engine, s) in engines().await {
        assert_eq!(s.shared_answer("m", 0).await.unwrap(), None, "{engine}");
        let answer = SharedAnswer {
            text: Some("hi".into()),
            expires_at_ms: 100,
        };
        s.put_answer("m", &answer).await.unwrap();
        assert_eq!(
            s.shared_answer("m", 50).await.unwrap(),
            Some(answer),
            "{engine}"
        );
        assert_eq!(
            s.shared_answer("m", 100).await.unwrap(),
            None,
            "{engine}: expired"
        );
        assert_eq!(s.purge_expired_dedupe(50).await.unwrap(), 0, "{engine}");
        assert_eq!(s.purge_expired_dedupe(100).await.unwrap(), 1, "{engine}");
        if let Some(r) = rel(&s) {
            let left = sql(r, "SELECT 1 FROM answers WHERE key = 'm'", &[]).await;
            assert!(left.is_empty(), "{engine}: the purged answer is gone");
        }
        // A duplicate's record (no text) is kept too; a second put replaces the first.
        let none = SharedAnswer {
            text: None,
            expires_at_ms: 200,
        };
        s.put_answer("d", &none).await.unwrap();
        assert_eq!(
            s.shared_answer("d", 0).await.unwrap(),
            Some(none),
            "{engine}"
        );
        let again = SharedAnswer {
            text: Some("later".into()),
            expires_at_ms: 300,
        };
        s.put_answer("d", &again).await.unwrap();
        assert_eq!(
            s.shared_answer("d", 250).await.unwrap(),
            Some(again),
            "{engine}"
        );
        assert!(s.shared_answer("", 0).await.is_err(), "{engine}");
    }
}

/// Where the statistics live: `stats:` counts in `stats` (as the import puts them), anything
/// else in `checkpoints`, a key never in both; prefixes are bytes, not patterns.
#[tokio::test]
async fn statistics_live_in_their_table_and_keys_in_one_place() {
    for (engine, s) in engines().await {
        s.add_counters(&[("stats:9:m".into(), 3), ("zsxq:day".into(), 2)], &[])
            .await
            .unwrap();
        assert_tables(&s, "stats:9:m", &["s"]).await;
        assert_tables(&s, "zsxq:day", &["c"]).await;
        assert_eq!(s.counter("zsxq:day").await.unwrap(), 2, "{engine}");
        assert_eq!(s.bump_counter("stats:9:m").await.unwrap(), 4, "{engine}");
        // A statistics key set to text moves to checkpoints, and back when it counts again.
        s.set_checkpoint("stats:9:m", Some("note")).await.unwrap();
        assert_tables(&s, "stats:9:m", &["c"]).await;
        assert!(
            s.bump_counter("stats:9:m").await.is_err(),
            "{engine}: not a counter"
        );
        assert!(
            s.checkpoint_cas("stats:9:m", Some("note"), "7")
                .await
                .unwrap(),
            "{engine}"
        );
        assert_tables(&s, "stats:9:m", &["s"]).await;
        assert_eq!(s.counter("stats:9:m").await.unwrap(), 7, "{engine}");
        assert!(
            s.checkpoint_cas("stats:9:m", Some("7"), "8").await.unwrap(),
            "{engine}"
        );
        assert!(
            !s.checkpoint_cas("stats:9:m", None, "1").await.unwrap(),
            "{engine}"
        );
        s.set_checkpoint("stats:9:m", None).await.unwrap();
        assert_tables(&s, "stats:9:m", &[]).await;
        // `_` and `%` are bytes of a prefix, not wildcards.
        s.set_checkpoint("a_b:1", Some("x")).await.unwrap();
        s.set_checkpoint("axb:1", Some("x")).await.unwrap();
        s.set_checkpoint("a%:1", Some("x")).await.unwrap();
        assert_eq!(s.count_prefix("a_b:").await.unwrap(), 1, "{engine}");
        assert_eq!(s.count_prefix("a%").await.unwrap(), 1, "{engine}");
        assert_eq!(
            s.checkpoints_with_prefix("a").await.unwrap().len(),
            3,
            "{engine}"
        );
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
        assert_eq!(keys, ["o:B", "o:b"], "{engine}");
    }
}

/// Racing counters count every bump, and racing first writes of one checkpoint have one
/// winner.
#[tokio::test]
async fn racing_counters_and_cas() {
    for (engine, s) in engines().await {
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
        assert_eq!(s.counter("c").await.unwrap(), 20, "{engine}");
        assert_eq!(s.counter("stats:3:c").await.unwrap(), 20, "{engine}");
        for mut values in seen {
            values.sort_unstable();
            assert_eq!(
                values,
                (1..=20).collect::<Vec<u64>>(),
                "{engine}: each value once per key"
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
        assert_eq!(s.counter("stats:3:a").await.unwrap(), 20, "{engine}");
        assert_eq!(s.counter("stats:3:b").await.unwrap(), 30, "{engine}");
        let wins = winners(&s, 16, |s, i| async move {
            s.checkpoint_cas("topic", None, &format!("w{i}"))
                .await
                .unwrap()
        })
        .await;
        assert_eq!(wins, 1, "{engine}");
    }
}

/// On PostgreSQL, which tables hold `key` (`c`: checkpoints, `s`: stats); sled has one tree.
async fn assert_tables(s: &Store, key: &str, want: &[&str]) {
    let Some(r) = rel(s) else { return };
    let rows = sql(
        r,
        "SELECT 'c' AS t FROM checkpoints WHERE key = $1
         UNION ALL SELECT 's' FROM stats WHERE key = $1",
        &[(&key, Type::TEXT)],
    )
    .await;
    let found: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(found, want, "the tables of {key}");
}
