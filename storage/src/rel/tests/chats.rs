//! Web conversations on PostgreSQL: the cases of `chats/tests.rs`, same values, same answers
//! (`store.x(...).unwrap()` becomes `s.x(...).await.unwrap()`).

use crate::rel::RelStore;
use crate::{
    ChatLimits, ChatMessage, ChatPut, MAX_CHAT_ID, MAX_CHAT_TITLE, StoreError, Uid, chat_size,
    valid_chat_id,
};

/// `DELETE_BATCH` of `chats.rs`: how many the sled test makes to cross its batches.
const DELETE_BATCH: usize = 200;

const LIMITS: ChatLimits = ChatLimits {
    max_count: 3,
    max_bytes: 1_000,
};

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage {
        role: role.to_owned(),
        content: content.to_owned(),
        at_ms: Some(5),
        model: (role == "assistant").then(|| "gpt-4o".to_owned()),
    }
}

fn two() -> Vec<ChatMessage> {
    vec![msg("user", "hi"), msg("assistant", "hello")]
}

async fn store_with_users(s: &RelStore) -> (Uid, Uid) {
    let a = s.create_user("a").await.unwrap().uid;
    let b = s.create_user("b").await.unwrap().uid;
    (a, b)
}

fn saved(outcome: ChatPut) -> (i64, Vec<String>) {
    match outcome {
        ChatPut::Saved {
            updated_at_ms,
            pruned,
        } => (updated_at_ms, pruned),
        other => panic!("expected Saved, got {other:?}"),
    }
}

#[tokio::test]
async fn save_list_open_rename_delete() {
    let s = store_or_skip!();
    let (a, _) = store_with_users(&s).await;
    assert!(s.chats(a).await.unwrap().is_empty());
    let (v1, pruned) = saved(
        s.put_chat(a, "w_one", "First", &two(), None, 100, LIMITS)
            .await
            .unwrap(),
    );
    assert_eq!((v1, pruned.len()), (100, 0));
    saved(
        s.put_chat(a, "w_two", "Second", &[], None, 200, LIMITS)
            .await
            .unwrap(),
    );
    let list = s.chats(a).await.unwrap();
    let ids: Vec<&str> = list.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["w_two", "w_one"], "newest first");
    assert_eq!(list[1].count, 2);
    assert_eq!(list[1].bytes, chat_size("First", &two()));
    assert_eq!(list[1].title, "First");

    let chat = s.chat(a, "w_one").await.unwrap().unwrap();
    assert_eq!(chat.messages, two());
    assert_eq!(chat.updated_at_ms, 100);

    // A rename is a new version, even at an earlier clock.
    let v2 = s
        .rename_chat(a, "w_one", "Renamed", 50)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v2, 101);
    let chat = s.chat(a, "w_one").await.unwrap().unwrap();
    assert_eq!((chat.title.as_str(), chat.updated_at_ms), ("Renamed", 101));
    assert_eq!(chat.messages, two(), "a rename keeps the messages");
    assert_eq!(s.rename_chat(a, "w_none", "x", 1).await.unwrap(), None);

    assert!(s.delete_chat(a, "w_one").await.unwrap());
    assert!(!s.delete_chat(a, "w_one").await.unwrap());
    assert!(s.chat(a, "w_one").await.unwrap().is_none());
    assert_eq!(s.chats(a).await.unwrap().len(), 1);
}

#[tokio::test]
async fn another_user_never_sees_or_changes_it() {
    let s = store_or_skip!();
    let (a, b) = store_with_users(&s).await;
    saved(
        s.put_chat(a, "w_mine", "Mine", &two(), None, 100, LIMITS)
            .await
            .unwrap(),
    );
    assert!(s.chats(b).await.unwrap().is_empty());
    assert!(s.chat(b, "w_mine").await.unwrap().is_none());
    assert_eq!(
        s.rename_chat(b, "w_mine", "Hijack", 200).await.unwrap(),
        None
    );
    assert!(!s.delete_chat(b, "w_mine").await.unwrap());
    // b saving the same id makes b's own conversation; a's stays as it was.
    saved(
        s.put_chat(b, "w_mine", "Theirs", &[], Some(100), 300, LIMITS)
            .await
            .unwrap(),
    );
    let mine = s.chat(a, "w_mine").await.unwrap().unwrap();
    assert_eq!((mine.title.as_str(), mine.updated_at_ms), ("Mine", 100));
    assert_eq!(s.chat(b, "w_mine").await.unwrap().unwrap().title, "Theirs");
    assert_eq!(s.delete_chats_of(b).await.unwrap(), 1);
    assert!(s.chat(a, "w_mine").await.unwrap().is_some());
}

#[tokio::test]
async fn the_oldest_are_pruned_beyond_the_count() {
    let s = store_or_skip!();
    let (a, b) = store_with_users(&s).await;
    saved(
        s.put_chat(b, "w_b", "b", &[], None, 1, LIMITS)
            .await
            .unwrap(),
    );
    for (n, at) in [(1, 10), (2, 20), (3, 30)] {
        saved(
            s.put_chat(a, &format!("w_{n}"), "t", &[], None, at, LIMITS)
                .await
                .unwrap(),
        );
    }
    // Updating w_1 makes it the newest: w_2 is now the oldest.
    saved(
        s.put_chat(a, "w_1", "t", &two(), None, 40, LIMITS)
            .await
            .unwrap(),
    );
    let (_, pruned) = saved(
        s.put_chat(a, "w_4", "t", &[], None, 50, LIMITS)
            .await
            .unwrap(),
    );
    assert_eq!(pruned, ["w_2"]);
    let ids: Vec<String> = s
        .chats(a)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["w_4", "w_1", "w_3"]);
    assert!(
        s.chat(a, "w_2").await.unwrap().is_none(),
        "its messages went too"
    );
    // A lower limit prunes several at once; replacing one does not count it twice.
    let one = ChatLimits {
        max_count: 1,
        ..LIMITS
    };
    let (_, pruned) = saved(s.put_chat(a, "w_3", "t", &[], None, 60, one).await.unwrap());
    assert_eq!(pruned, ["w_1", "w_4"]);
    assert_eq!(s.chats(a).await.unwrap().len(), 1);
    assert_eq!(
        s.chats(b).await.unwrap().len(),
        1,
        "another user's are not counted"
    );
}

#[tokio::test]
async fn size_limit_refuses_and_writes_nothing() {
    let s = store_or_skip!();
    let (a, _) = store_with_users(&s).await;
    let big = vec![msg("user", &"x".repeat(995))];
    match s
        .put_chat(a, "w_big", "title", &big, None, 1, LIMITS)
        .await
        .unwrap()
    {
        ChatPut::TooLarge { bytes, limit } => assert_eq!((bytes, limit), (1_004, 1_000)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(s.chat(a, "w_big").await.unwrap().is_none());
    let fits = vec![msg("user", &"x".repeat(991))];
    saved(
        s.put_chat(a, "w_big", "title", &fits, None, 1, LIMITS)
            .await
            .unwrap(),
    );
}

#[tokio::test]
async fn a_stale_base_is_a_conflict_with_the_stored_one() {
    let s = store_or_skip!();
    let (a, _) = store_with_users(&s).await;
    let (v1, _) = saved(
        s.put_chat(a, "w_c", "t", &two(), None, 100, LIMITS)
            .await
            .unwrap(),
    );
    // Two saves in one millisecond are two versions.
    let (v2, _) = saved(
        s.put_chat(a, "w_c", "t2", &[], Some(v1), 100, LIMITS)
            .await
            .unwrap(),
    );
    assert!(v2 > v1);
    match s
        .put_chat(a, "w_c", "stale", &two(), Some(v1), 300, LIMITS)
        .await
        .unwrap()
    {
        ChatPut::Conflict(current) => {
            assert_eq!(current.updated_at_ms, v2);
            assert_eq!(current.title, "t2");
            assert!(current.messages.is_empty());
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(s.chat(a, "w_c").await.unwrap().unwrap().title, "t2");
    // No base: replaced whatever is there. A base for one deleted elsewhere: saved again.
    saved(
        s.put_chat(a, "w_c", "t3", &[], None, 400, LIMITS)
            .await
            .unwrap(),
    );
    s.delete_chat(a, "w_c").await.unwrap();
    saved(
        s.put_chat(a, "w_c", "t4", &[], Some(v2), 500, LIMITS)
            .await
            .unwrap(),
    );
    assert_eq!(s.chat(a, "w_c").await.unwrap().unwrap().title, "t4");
}

#[tokio::test]
async fn bad_ids_titles_and_roles_are_refused() {
    let s = store_or_skip!();
    let (a, _) = store_with_users(&s).await;
    for bad in ["", "w space", "w/x", "w_é", &"x".repeat(MAX_CHAT_ID + 1)] {
        assert!(
            matches!(
                s.put_chat(a, bad, "t", &[], None, 1, LIMITS).await,
                Err(StoreError::InvalidInput(_))
            ),
            "{bad:?}"
        );
        assert!(s.chat(a, bad).await.unwrap().is_none());
        assert!(!s.delete_chat(a, bad).await.unwrap());
    }
    assert!(valid_chat_id(&"x".repeat(MAX_CHAT_ID)));
    assert!(valid_chat_id("p_mp:main.x-1"));
    let long_title = "t".repeat(MAX_CHAT_TITLE + 1);
    assert!(
        s.put_chat(a, "w_t", &long_title, &[], None, 1, LIMITS)
            .await
            .is_err()
    );
    assert!(
        s.put_chat(a, "w_t", "t", &[msg("system", "x")], None, 1, LIMITS)
            .await
            .is_err()
    );
    assert!(s.chats(a).await.unwrap().is_empty());
}

#[tokio::test]
async fn deleting_all_of_a_user_and_finding_owners() {
    let s = store_or_skip!();
    let (a, b) = store_with_users(&s).await;
    let many = ChatLimits {
        max_count: 1_000,
        ..LIMITS
    };
    for n in 0..(DELETE_BATCH + 5) {
        saved(
            s.put_chat(a, &format!("w_{n}"), "t", &[], None, 1, many)
                .await
                .unwrap(),
        );
    }
    saved(s.put_chat(b, "w_b", "t", &[], None, 1, many).await.unwrap());
    let (owners, more) = s.chat_owners(Uid(0), 10).await.unwrap();
    assert_eq!((owners, more), (vec![a, b], None));
    let (owners, more) = s.chat_owners(Uid(0), 1).await.unwrap();
    assert_eq!(owners, vec![a]);
    let (owners, _) = s.chat_owners(more.unwrap(), 1).await.unwrap();
    assert_eq!(owners, vec![b]);

    assert_eq!(s.delete_chats_of(a).await.unwrap(), DELETE_BATCH + 5);
    assert!(s.chats(a).await.unwrap().is_empty());
    assert!(s.chat(a, "w_3").await.unwrap().is_none());
    assert_eq!(s.chats(b).await.unwrap().len(), 1);
    assert_eq!(s.chat_owners(Uid(0), 10).await.unwrap().0, vec![b]);
}

#[tokio::test]
async fn concurrent_saves_stay_within_the_count() {
    let s = store_or_skip!();
    let (a, _) = store_with_users(&s).await;
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                for j in 0..5 {
                    let id = format!("w_{i}_{j}");
                    saved(
                        s.put_chat(a, &id, "t", &[], None, i * 10 + j, LIMITS)
                            .await
                            .unwrap(),
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(s.chats(a).await.unwrap().len(), LIMITS.max_count);
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

/// A save for a uid without a user is refused (a foreign key), and nothing is written.
#[tokio::test]
async fn a_save_needs_a_user() {
    let s = store_or_skip!();
    assert!(matches!(
        s.put_chat(Uid(4_242), "w_1", "t", &[], None, 1, LIMITS)
            .await,
        Err(StoreError::UnknownUser(Uid(4_242)))
    ));
    assert!(s.chat_owners(Uid(0), 10).await.unwrap().0.is_empty());
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
