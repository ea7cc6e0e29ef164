//! Credits on PostgreSQL: the cases of `quota/tests.rs`, the same answers, plus races.

use std::sync::Arc;

use super::assert_consistent;
use crate::rel::RelStore;
use crate::{Balance, EntryKind, ReservationId, StoreError, Uid};

const DAY: i64 = 100;
const FREE: u64 = 10;
const LATER: i64 = i64::MAX;

async fn with_paid(store: &RelStore, paid: u64) -> Uid {
    let uid = store.create_user("u").await.unwrap().uid;
    if paid > 0 {
        store
            .grant(
                uid,
                paid,
                EntryKind::Purchase,
                "order",
                &format!("seed{uid}"),
                1,
            )
            .await
            .unwrap();
    }
    uid
}
