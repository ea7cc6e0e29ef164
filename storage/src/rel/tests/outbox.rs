//! The bounded purge of marks on PostgreSQL (set up with SQL). The cases shared with sled are
//! the suite's (`facade/tests/outbox.rs`).

use tokio_postgres::types::Type;

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
