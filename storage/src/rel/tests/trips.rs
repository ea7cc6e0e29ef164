//! Round trips on PostgreSQL: what a message costs in statements (the suite's cases count
//! them in passing where they check behaviour; this one is about the count).

const DAY: i64 = 100;
const FREE: u64 = 10;
const LATER: i64 = i64::MAX;

#[tokio::test]
async fn a_returning_users_message_is_four_round_trips() {
    let store = store_or_skip!();
    let key = chatrelay_core::UserKey::new(chatrelay_core::Platform::Mp, "main", "o1");
    let uid = store.resolve_identity(&key, None).await.unwrap();
    let before = store.statements_sent();
    assert_eq!(store.resolve_identity(&key, None).await.unwrap(), uid);
    assert!(store.dedupe_insert("mp:main:msg1", 1_000, 0).await.unwrap());
    let id = store
        .reserve(uid, 5, "msg1", DAY, FREE, LATER)
        .await
        .unwrap();
    store
        .settle(id, 3, "answer", DAY, FREE, 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.statements_sent() - before, 4);
    // A first contact costs no more: user, balance and identity are one statement.
    let before = store.statements_sent();
    let new = chatrelay_core::UserKey::new(chatrelay_core::Platform::Mp, "main", "o2");
    store.resolve_identity(&new, None).await.unwrap();
    assert_eq!(store.statements_sent() - before, 1);
}
