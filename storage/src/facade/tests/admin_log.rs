//! The admin change log on both engines: the cases of `admin_log.rs`'s tests, plus what
//! PostgreSQL cannot hold (NUL, the one difference, named in its case).

use serde_json::json;

use super::engines;
use crate::{ChangeCursor, ChangeRecord, MAX_CHANGE_BYTES};

fn change(at_ms: i64, path: &str) -> ChangeRecord {
    ChangeRecord {
        at_ms,
        id: 0,
        actor: "console".into(),
        address: "127.0.0.1".into(),
        method: "POST".into(),
        path: path.into(),
        status: 200,
        reason: Some("support ticket 7".into()),
        summary: json!({"credits": 5}),
    }
}

#[tokio::test]
async fn records_round_trip_newest_first_with_paging() {
    for (engine, store) in engines().await {
        for i in 1..=5 {
            store
                .record_change(change(1_000 + i, &format!("/admin/users/{i}/grant")))
                .await
                .unwrap();
        }
        let first = store.changes(None, 2).await.unwrap();
        let paths: Vec<&str> = first.records.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            ["/admin/users/5/grant", "/admin/users/4/grant"],
            "{engine}"
        );
        assert_eq!(first.records[0].at_ms, 1_005, "{engine}");
        assert_eq!(
            first.records[0].reason.as_deref(),
            Some("support ticket 7"),
            "{engine}"
        );
        assert_eq!(first.records[0].summary, json!({"credits": 5}), "{engine}");
        assert_eq!(first.records[0].status, 200, "{engine}");
        assert!(first.records[0].id > 0, "{engine}");
        let cursor = first.next.unwrap();
        let again: ChangeCursor = cursor.to_string().parse().unwrap();
        assert_eq!(again, cursor, "{engine}");
        let second = store.changes(Some(cursor), 2).await.unwrap();
        assert_eq!(second.records[0].path, "/admin/users/3/grant", "{engine}");
        let third = store.changes(second.next, 2).await.unwrap();
        assert_eq!(third.records.len(), 1, "{engine}");
        assert_eq!(third.records[0].path, "/admin/users/1/grant", "{engine}");
        assert_eq!(third.next, None, "{engine}");
        // Two changes in one millisecond are both kept, in id order.
        store.record_change(change(2_000, "/a")).await.unwrap();
        store.record_change(change(2_000, "/b")).await.unwrap();
        let page = store.changes(None, 2).await.unwrap();
        assert_eq!(page.records[0].path, "/b", "{engine}");
        assert_eq!(page.records[1].path, "/a", "{engine}");
        // A bare time: strictly before it; the limit is at least 1.
        let page = store
            .changes(Some("1003".parse().unwrap()), 10)
            .await
            .unwrap();
        let times: Vec<i64> = page.records.iter().map(|r| r.at_ms).collect();
        assert_eq!(times, [1_002, 1_001], "{engine}");
        assert_eq!(
            store.changes(None, 0).await.unwrap().records.len(),
            1,
            "{engine}"
        );
    }
}

#[tokio::test]
async fn records_are_bounded() {
    for (engine, store) in engines().await {
        let mut big = change(5, &"/p".repeat(1_000));
        big.reason = Some("\u{1}".repeat(5_000));
        big.address = "a".repeat(1_000);
        big.summary = json!({"name": "x".repeat(5_000)});
        let stored = store.record_change(big).await.unwrap();
        assert!(
            serde_json::to_vec(&stored).unwrap().len() <= MAX_CHANGE_BYTES,
            "{engine}"
        );
        assert_eq!(stored.summary, json!({"truncated": true}), "{engine}");
        let read = store.changes(None, 10).await.unwrap().records;
        assert_eq!(read.len(), 1, "{engine}");
        assert_eq!(read[0], stored, "{engine}");
        assert!(read[0].path.chars().count() <= 200, "{engine}");
        assert!(read[0].path.ends_with('…'), "{engine}");
        assert!(read[0].address.chars().count() <= 64, "{engine}");
        // A short record is kept whole.
        let small = store
            .record_change(change(6, "/admin/reload"))
            .await
            .unwrap();
        assert_eq!(small.path, "/admin/reload", "{engine}");
        assert_eq!(small.summary, json!({"credits": 5}), "{engine}");
    }
}

/// A negative time is filed at 0 on both engines. NUL differs between the engines: sled's
/// JSON holds it, PostgreSQL's text and jsonb cannot, so the relational store writes U+FFFD
/// (`rel::admin_log::storable`); either way the record is stored, not refused.
#[tokio::test]
async fn nul_characters_and_negative_times_are_stored_not_refused() {
    for (engine, store) in engines().await {
        let mut odd = change(-5, "/admin/x\0y");
        odd.reason = Some("a\0b".into());
        odd.summary = json!({"k\0": ["v\0", 1, {"n": "\0"}]});
        let stored = store.record_change(odd).await.unwrap();
        assert_eq!(stored.at_ms, 0, "{engine}");
        let read = &store.changes(None, 1).await.unwrap().records[0];
        assert_eq!(read, &stored, "{engine}");
        let nul = if engine == "relational" {
            "\u{fffd}"
        } else {
            "\0"
        };
        assert_eq!(read.path, format!("/admin/x{nul}y"), "{engine}");
        assert_eq!(read.reason, Some(format!("a{nul}b")), "{engine}");
        assert_eq!(
            read.summary,
            json!({format!("k{nul}"): [format!("v{nul}"), 1, {"n": nul}]}),
            "{engine}"
        );
        // The page goes on from the record's own cursor.
        let next = store.changes(Some(stored.cursor()), 10).await.unwrap();
        assert!(next.records.is_empty(), "{engine}: {:?}", next.records);
    }
}

#[tokio::test]
async fn purge_removes_only_old_records_a_bounded_number_at_a_time() {
    for (engine, store) in engines().await {
        for at in [10, 20, 30, 40, 50] {
            store.record_change(change(at, "/x")).await.unwrap();
        }
        assert_eq!(store.purge_changes(35, 2).await.unwrap(), 2, "{engine}");
        assert_eq!(store.purge_changes(35, 2).await.unwrap(), 1, "{engine}");
        assert_eq!(store.purge_changes(35, 2).await.unwrap(), 0, "{engine}");
        let left: Vec<i64> = store
            .changes(None, 10)
            .await
            .unwrap()
            .records
            .iter()
            .map(|r| r.at_ms)
            .collect();
        assert_eq!(left, [50, 40], "{engine}");
    }
}
