//! Web conversations on both engines: the cases of `chats/tests.rs`, same values, same
//! answers.

use super::engines;
use crate::{
    ChatLimits, ChatMessage, ChatPut, MAX_CHAT_ID, MAX_CHAT_TITLE, Store, StoreError, Uid,
    chat_size, valid_chat_id,
};

/// `DELETE_BATCH` of `chats.rs`: how many the sled test makes to cross its batches.
const DELETE_BATCH: usize = 200;

/// The limits of the cases (the relational-only ones in `rel/tests/chats.rs` too).
pub(crate) const LIMITS: ChatLimits = ChatLimits {
    max_count: 3,
    max_bytes: 1_000,
};

/// A message of `role`, at 5 ms, with a model when it is the assistant's.
pub(crate) fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage {
        role: role.to_owned(),
        content: content.to_owned(),
        at_ms: Some(5),
        model: (role == "assistant").then(|| "gpt-4o".to_owned()),
    }
}

/// A question and its answer.
pub(crate) fn two() -> Vec<ChatMessage> {
    vec![msg("user", "hi"), msg("assistant", "hello")]
}

async fn store_with_users(s: &Store) -> (Uid, Uid) {
    let a = s.create_user("a").await.unwrap().uid;
    let b = s.create_user("b").await.unwrap().uid;
    (a, b)
}

/// The version and the pruned ids of a save that went through.
pub(crate) fn saved(outcome: ChatPut) -> (i64, Vec<String>) {
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
    for (engine, s) in engines().await {
        let (a, _) = store_with_users(&s).await;
        assert!(s.chats(a).await.unwrap().is_empty(), "{engine}");
        let (v1, pruned) = saved(
            s.put_chat(a, "w_one", "First", &two(), None, 100, LIMITS)
                .await
                .unwrap(),
        );
        assert_eq!((v1, pruned.len()), (100, 0), "{engine}");
        saved(
            s.put_chat(a, "w_two", "Second", &[], None, 200, LIMITS)
                .await
                .unwrap(),
        );
        let list = s.chats(a).await.unwrap();
        let ids: Vec<&str> = list.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["w_two", "w_one"], "{engine}: newest first");
        assert_eq!(list[1].count, 2, "{engine}");
        assert_eq!(list[1].bytes, chat_size("First", &two()), "{engine}");
        assert_eq!(list[1].title, "First", "{engine}");

        let chat = s.chat(a, "w_one").await.unwrap().unwrap();
        assert_eq!(chat.messages, two(), "{engine}");
        assert_eq!(chat.updated_at_ms, 100, "{engine}");

        // A rename is a new version, even at an earlier clock.
        let v2 = s
            .rename_chat(a, "w_one", "Renamed", 50)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v2, 101, "{engine}");
        let chat = s.chat(a, "w_one").await.unwrap().unwrap();
        assert_eq!(
            (chat.title.as_str(), chat.updated_at_ms),
            ("Renamed", 101),
            "{engine}"
        );
        assert_eq!(
            chat.messages,
            two(),
            "{engine}: a rename keeps the messages"
        );
        assert_eq!(
            s.rename_chat(a, "w_none", "x", 1).await.unwrap(),
            None,
            "{engine}"
        );

        assert!(s.delete_chat(a, "w_one").await.unwrap(), "{engine}");
        assert!(!s.delete_chat(a, "w_one").await.unwrap(), "{engine}");
        assert!(s.chat(a, "w_one").await.unwrap().is_none(), "{engine}");
        assert_eq!(s.chats(a).await.unwrap().len(), 1, "{engine}");
    }
}

#[tokio::test]
async fn another_user_never_sees_or_changes_it() {
    for (engine, s) in engines().await {
        let (a, b) = store_with_users(&s).await;
        saved(
            s.put_chat(a, "w_mine", "Mine", &two(), None, 100, LIMITS)
                .await
                .unwrap(),
        );
        assert!(s.chats(b).await.unwrap().is_empty(), "{engine}");
        assert!(s.chat(b, "w_mine").await.unwrap().is_none(), "{engine}");
        assert_eq!(
            s.rename_chat(b, "w_mine", "Hijack", 200).await.unwrap(),
            None,
            "{engine}"
        );
        assert!(!s.delete_chat(b, "w_mine").await.unwrap(), "{engine}");
        // b saving the same id makes b's own conversation; a's stays as it was.
        saved(
            s.put_chat(b, "w_mine", "Theirs", &[], Some(100), 300, LIMITS)
                .await
                .unwrap(),
        );
        let mine = s.chat(a, "w_mine").await.unwrap().unwrap();
        assert_eq!(
            (mine.title.as_str(), mine.updated_at_ms),
            ("Mine", 100),
            "{engine}"
        );
        assert_eq!(
            s.chat(b, "w_mine").await.unwrap().unwrap().title,
            "Theirs",
            "{engine}"
        );
        assert_eq!(s.delete_chats_of(b).await.unwrap(), 1, "{engine}");
        assert!(s.chat(a, "w_mine").await.unwrap().is_some(), "{engine}");
    }
}

#[tokio::test]
async fn the_oldest_are_pruned_beyond_the_count() {
    for (engine, s) in engines().await {
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
        assert_eq!(pruned, ["w_2"], "{engine}");
        let ids: Vec<String> = s
            .chats(a)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, ["w_4", "w_1", "w_3"], "{engine}");
        assert!(
            s.chat(a, "w_2").await.unwrap().is_none(),
            "{engine}: its messages went too"
        );
        // A lower limit prunes several at once; replacing one does not count it twice.
        let one = ChatLimits {
            max_count: 1,
            ..LIMITS
        };
        let (_, pruned) = saved(s.put_chat(a, "w_3", "t", &[], None, 60, one).await.unwrap());
        assert_eq!(pruned, ["w_1", "w_4"], "{engine}");
        assert_eq!(s.chats(a).await.unwrap().len(), 1, "{engine}");
        assert_eq!(
            s.chats(b).await.unwrap().len(),
            1,
            "{engine}: another user's are not counted"
        );
    }
}

#[tokio::test]
async fn size_limit_refuses_and_writes_nothing() {
    for (engine, s) in engines().await {
        let (a, _) = store_with_users(&s).await;
        let big = vec![msg("user", &"x".repeat(995))];
        match s
            .put_chat(a, "w_big", "title", &big, None, 1, LIMITS)
            .await
            .unwrap()
        {
            ChatPut::TooLarge { bytes, limit } => {
                assert_eq!((bytes, limit), (1_004, 1_000), "{engine}")
            }
            other => panic!("{engine}: expected TooLarge, got {other:?}"),
        }
        assert!(s.chat(a, "w_big").await.unwrap().is_none(), "{engine}");
        let fits = vec![msg("user", &"x".repeat(991))];
        saved(
            s.put_chat(a, "w_big", "title", &fits, None, 1, LIMITS)
                .await
                .unwrap(),
        );
    }
}

#[tokio::test]
async fn a_stale_base_is_a_conflict_with_the_stored_one() {
    for (engine, s) in engines().await {
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
        assert!(v2 > v1, "{engine}");
        match s
            .put_chat(a, "w_c", "stale", &two(), Some(v1), 300, LIMITS)
            .await
            .unwrap()
        {
            ChatPut::Conflict(current) => {
                assert_eq!(current.updated_at_ms, v2, "{engine}");
                assert_eq!(current.title, "t2", "{engine}");
                assert!(current.messages.is_empty(), "{engine}");
            }
            other => panic!("{engine}: expected Conflict, got {other:?}"),
        }
        assert_eq!(
            s.chat(a, "w_c").await.unwrap().unwrap().title,
            "t2",
            "{engine}"
        );
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
        assert_eq!(
            s.chat(a, "w_c").await.unwrap().unwrap().title,
            "t4",
            "{engine}"
        );
    }
}

#[tokio::test]
async fn bad_ids_titles_and_roles_are_refused() {
    for (engine, s) in engines().await {
        let (a, _) = store_with_users(&s).await;
        for bad in ["", "w space", "w/x", "w_é", &"x".repeat(MAX_CHAT_ID + 1)] {
            assert!(
                matches!(
                    s.put_chat(a, bad, "t", &[], None, 1, LIMITS).await,
                    Err(StoreError::InvalidInput(_))
                ),
                "{engine}: {bad:?}"
            );
            assert!(s.chat(a, bad).await.unwrap().is_none(), "{engine}");
            assert!(!s.delete_chat(a, bad).await.unwrap(), "{engine}");
        }
        assert!(valid_chat_id(&"x".repeat(MAX_CHAT_ID)), "{engine}");
        assert!(valid_chat_id("p_mp:main.x-1"), "{engine}");
        let long_title = "t".repeat(MAX_CHAT_TITLE + 1);
        assert!(
            s.put_chat(a, "w_t", &long_title, &[], None, 1, LIMITS)
                .await
                .is_err(),
            "{engine}"
        );
        assert!(
            s.put_chat(a, "w_t", "t", &[msg("system", "x")], None, 1, LIMITS)
                .await
                .is_err(),
            "{engine}"
        );
        assert!(s.chats(a).await.unwrap().is_empty(), "{engine}");
    }
}

#[tokio::test]
async fn deleting_all_of_a_user_and_finding_owners() {
    for (engine, s) in engines().await {
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
        assert_eq!((owners, more), (vec![a, b], None), "{engine}");
        let (owners, more) = s.chat_owners(Uid(0), 1).await.unwrap();
        assert_eq!(owners, vec![a], "{engine}");
        let (owners, _) = s.chat_owners(more.unwrap(), 1).await.unwrap();
        assert_eq!(owners, vec![b], "{engine}");

        assert_eq!(
            s.delete_chats_of(a).await.unwrap(),
            DELETE_BATCH + 5,
            "{engine}"
        );
        assert!(s.chats(a).await.unwrap().is_empty(), "{engine}");
        assert!(s.chat(a, "w_3").await.unwrap().is_none(), "{engine}");
        assert_eq!(s.chats(b).await.unwrap().len(), 1, "{engine}");
        assert_eq!(
            s.chat_owners(Uid(0), 10).await.unwrap().0,
            vec![b],
            "{engine}"
        );
    }
}

#[tokio::test]
async fn concurrent_saves_stay_within_the_count() {
    for (engine, s) in engines().await {
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
        assert_eq!(
            s.chats(a).await.unwrap().len(),
            LIMITS.max_count,
            "{engine}"
        );
    }
}

/// A save for a uid without a user is refused (a foreign key), and nothing is written.
#[tokio::test]
async fn a_save_needs_a_user() {
    for (engine, s) in engines().await {
        assert!(
            matches!(
                s.put_chat(Uid(4_242), "w_1", "t", &[], None, 1, LIMITS)
                    .await,
                Err(StoreError::UnknownUser(Uid(4_242)))
            ),
            "{engine}"
        );
        assert!(
            s.chat_owners(Uid(0), 10).await.unwrap().0.is_empty(),
            "{engine}"
        );
    }
}
