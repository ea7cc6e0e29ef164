//! Outbox, kept answers, checkpoints and counters on PostgreSQL: the cases of `outbox.rs`,
//! `dedupe.rs` (`answers_are_kept_until_they_expire`) and `checkpoints.rs`, plus racing
//! writers and where the statistics live.

use super::engines;
use std::collections::BTreeSet;

use tokio_postgres::types::Type;

use crate::Store;
use crate::outbox::MAX_ITEMS;
use crate::{SharedAnswer, StoreError};

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

async fn super_winners(s: &Store) -> usize {
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
