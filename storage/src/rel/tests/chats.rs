//! Web conversations on PostgreSQL only: damage the database lets through, and the import of
//! sled's conversations. The cases of `chats/tests.rs` are the suite's (`facade/tests`).

use crate::facade::tests::chats::{LIMITS, saved, two};
use crate::rel::RelStore;
use crate::{ChatLimits, StoreError, Uid};

async fn store_with_users(s: &RelStore) -> (Uid, Uid) {
    let a = s.create_user("a").await.unwrap().uid;
    let b = s.create_user("b").await.unwrap().uid;
    (a, b)
}

/// `chats::tests::corrupt_records_are_errors`: the database refuses most damage (ids, titles,
/// a non-array); messages that do not read as messages are an error naming the table.
#[tokio::test]
async fn corrupt_records_are_errors() {
    let s = store_or_skip!();
    let (a, _) = store_with_users(&s).await;
    saved(
        s.put_chat(a, "w_x", "t", &two(), None, 1, LIMITS)
            .await
            .unwrap(),
    );
    s.rows("UPDATE chats SET messages = '[1]'", &[])
        .await
        .unwrap();
    assert!(matches!(
        s.chat(a, "w_x").await,
        Err(StoreError::Corrupt { tree: "chats", .. })
    ));
    for bad in [
        "UPDATE chats SET messages = '{}'",
        "UPDATE chats SET id = 'w x'",
        "UPDATE chats SET bytes = -1",
    ] {
        assert!(s.rows(bad, &[]).await.is_err(), "{bad}");
    }
}

/// Web conversations of a sled store come over whole, after the users (`import_from`), and
/// read back as they were saved there, pruning limits and versions included.
#[tokio::test]
async fn conversations_are_imported_from_sled() {
    let s = store_or_skip!();
    let sled = crate::KvStore::open_temporary().unwrap();
    let a = sled.create_user("a").unwrap().uid;
    let b = sled.create_user("b").unwrap().uid;
    let many = ChatLimits {
        max_count: 2_000,
        max_bytes: 100_000,
    };
    for n in 0..1_203 {
        let messages = if n % 2 == 0 { two() } else { Vec::new() };
        sled.put_chat(
            a,
            &format!("w_{n}"),
            &format!("t{n}"),
            &messages,
            None,
            n,
            many,
        )
        .unwrap();
    }
    sled.put_chat(b, "w_b", "Bee", &two(), None, 7, many)
        .unwrap();
    sled.rename_chat(b, "w_b", "Bee 2", 1).unwrap();
    s.import_from(&sled, |_, _| {}).await.unwrap();
    assert_eq!(s.import_chats_from(&sled).await.unwrap(), 1_204);
    let mut listed = s.chats(a).await.unwrap();
    let mut want = sled.chats(a).unwrap();
    listed.sort_by(|x, y| x.id.cmp(&y.id));
    want.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(listed, want, "summaries: titles, versions, counts, sizes");
    for id in ["w_0", "w_1", "w_1202"] {
        assert_eq!(s.chat(a, id).await.unwrap(), sled.chat(a, id).unwrap());
    }
    assert_eq!(
        s.chat(b, "w_b").await.unwrap(),
        sled.chat(b, "w_b").unwrap()
    );
    assert_eq!(s.chats(b).await.unwrap(), sled.chats(b).unwrap());
    // Saved again there, with the version it had: no conflict.
    let v = s.chat(b, "w_b").await.unwrap().unwrap().updated_at_ms;
    saved(
        s.put_chat(b, "w_b", "Bee 3", &[], Some(v), 9, many)
            .await
            .unwrap(),
    );
}
