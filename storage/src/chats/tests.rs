use super::*;

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

fn store_with_users() -> (KvStore, Uid, Uid) {
    let store = KvStore::open_temporary().unwrap();
    let a = store.create_user("a").unwrap().uid;
    let b = store.create_user("b").unwrap().uid;
    (store, a, b)
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

#[test]
fn the_oldest_are_pruned_beyond_the_count() {
    let (store, a, b) = store_with_users();
    saved(store.put_chat(b, "w_b", "b", &[], None, 1, LIMITS).unwrap());
    for (n, at) in [(1, 10), (2, 20), (3, 30)] {
        saved(
            store
                .put_chat(a, &format!("w_{n}"), "t", &[], None, at, LIMITS)
                .unwrap(),
        );
    }
    // Updating w_1 makes it the newest: w_2 is now the oldest.
    saved(
        store
            .put_chat(a, "w_1", "t", &two(), None, 40, LIMITS)
            .unwrap(),
    );
    let (_, pruned) = saved(
        store
            .put_chat(a, "w_4", "t", &[], None, 50, LIMITS)
            .unwrap(),
    );
    assert_eq!(pruned, ["w_2"]);
    let ids: Vec<String> = store.chats(a).unwrap().into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["w_4", "w_1", "w_3"]);
    assert!(
        store.chat(a, "w_2").unwrap().is_none(),
        "its messages went too"
    );
    // A lower limit prunes several at once; replacing one does not count it twice.
    let one = ChatLimits {
        max_count: 1,
        ..LIMITS
    };
    let (_, pruned) = saved(store.put_chat(a, "w_3", "t", &[], None, 60, one).unwrap());
    assert_eq!(pruned, ["w_1", "w_4"]);
    assert_eq!(store.chats(a).unwrap().len(), 1);
    assert_eq!(
        store.chats(b).unwrap().len(),
        1,
        "another user's are not counted"
    );
}

#[test]
fn size_limit_refuses_and_writes_nothing() {
    let (store, a, _) = store_with_users();
    let big = vec![msg("user", &"x".repeat(995))];
    match store
        .put_chat(a, "w_big", "title", &big, None, 1, LIMITS)
        .unwrap()
    {
        ChatPut::TooLarge { bytes, limit } => assert_eq!((bytes, limit), (1_004, 1_000)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(store.chat(a, "w_big").unwrap().is_none());
    let fits = vec![msg("user", &"x".repeat(991))];
    saved(
        store
            .put_chat(a, "w_big", "title", &fits, None, 1, LIMITS)
            .unwrap(),
    );
}

#[test]
fn a_stale_base_is_a_conflict_with_the_stored_one() {
    let (store, a, _) = store_with_users();
    let (v1, _) = saved(
        store
            .put_chat(a, "w_c", "t", &two(), None, 100, LIMITS)
            .unwrap(),
    );
    // Two saves in one millisecond are two versions.
    let (v2, _) = saved(
        store
            .put_chat(a, "w_c", "t2", &[], Some(v1), 100, LIMITS)
            .unwrap(),
    );
    assert!(v2 > v1);
    match store
        .put_chat(a, "w_c", "stale", &two(), Some(v1), 300, LIMITS)
        .unwrap()
    {
        ChatPut::Conflict(current) => {
            assert_eq!(current.updated_at_ms, v2);
            assert_eq!(current.title, "t2");
            assert!(current.messages.is_empty());
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(store.chat(a, "w_c").unwrap().unwrap().title, "t2");
    // No base: replaced whatever is there. A base for one deleted elsewhere: saved again.
    saved(
        store
            .put_chat(a, "w_c", "t3", &[], None, 400, LIMITS)
            .unwrap(),
    );
    store.delete_chat(a, "w_c").unwrap();
    saved(
        store
            .put_chat(a, "w_c", "t4", &[], Some(v2), 500, LIMITS)
            .unwrap(),
    );
    assert_eq!(store.chat(a, "w_c").unwrap().unwrap().title, "t4");
}

#[test]
fn concurrent_saves_stay_within_the_count() {
    let (store, a, _) = store_with_users();
    let store = std::sync::Arc::new(store);
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                for j in 0..5 {
                    let id = format!("w_{i}_{j}");
                    saved(
                        store
                            .put_chat(a, &id, "t", &[], None, i * 10 + j, LIMITS)
                            .unwrap(),
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(store.chats(a).unwrap().len() <= LIMITS.max_count);
    assert!(!store.chats(a).unwrap().is_empty());
}

#[test]
fn corrupt_records_are_errors() {
    let (store, a, _) = store_with_users();
    saved(
        store
            .put_chat(a, "w_x", "t", &two(), None, 1, LIMITS)
            .unwrap(),
    );
    let t = store.trees().unwrap();
    t.chats.insert(chat_key(a, "w_x"), b"{oops").unwrap();
    assert!(matches!(
        store.chat(a, "w_x"),
        Err(StoreError::Corrupt { tree: "chats", .. })
    ));
    t.chat_index.insert(chat_key(a, "w_x"), b"[").unwrap();
    assert!(matches!(
        store.chats(a),
        Err(StoreError::Corrupt {
            tree: "chat_index",
            ..
        })
    ));
}
