//! Leadership on PostgreSQL: one leader per job, given up when its value goes or its
//! connection dies (`shared.rs`' `try_lead`, which sled answers trivially).

use std::time::Duration;

use tokio_postgres::types::Type;

use crate::kv::pg::lock_key;

#[tokio::test]
async fn one_leader_per_job_until_it_goes() {
    let s = store_or_skip!();
    let first = s.try_lead("zsxq:main").await.unwrap().expect("free: led");
    assert!(first.still_held().await);
    assert!(s.try_lead("zsxq:main").await.unwrap().is_none(), "taken");
    let other = s.try_lead("zsxq:other").await.unwrap();
    assert!(other.is_some(), "another job is another lock");
    drop(first);
    // The server ends the lock when it sees the connection close: poll for it.
    let mut next = None;
    for _ in 0..100 {
        next = s.try_lead("zsxq:main").await.unwrap();
        if next.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let next = next.expect("given up when dropped");
    // A connection killed by the database: no longer held, and free for another daemon.
    let key = lock_key(&format!("{}/zsxq:main", s.pool.schema()));
    let killed = s
        .rows(
            "SELECT pg_terminate_backend(pid) AS done FROM pg_locks
             WHERE locktype = 'advisory' AND ((classid::bigint << 32) | objid::bigint) = $1",
            &[(&key, Type::INT8)],
        )
        .await
        .unwrap();
    assert_eq!(killed.len(), 1);
    let mut held = true;
    for _ in 0..100 {
        held = next.still_held().await;
        if !held {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!held, "a killed connection is no leadership");
    assert!(s.try_lead("zsxq:main").await.unwrap().is_some());
}
