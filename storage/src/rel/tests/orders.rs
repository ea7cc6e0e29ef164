//! Orders on PostgreSQL: the cases of `orders.rs`, plus racing notifications.

use super::assert_consistent;
use crate::rel::RelStore;
use crate::{CreditOutcome, EntryKind, Order, OrderStatus, StoreError, Uid};

fn order(uid: Uid, id: &str, method: Option<&str>) -> Order {
    Order {
        id: id.into(),
        uid,
        product_id: "p10".into(),
        product_name: "10 credits".into(),
        channel: "wechat".into(),
        method: method.map(str::to_owned),
        amount_fen: 100,
        credits: 10,
        status: OrderStatus::Created,
        created_at_ms: 1_000,
        expires_at_ms: 100_000,
        code_url: None,
        provider_trade_no: None,
        credited_at_ms: None,
        closed_at_ms: None,
        refunded_at_ms: None,
        plan: None,
    }
}

async fn create(s: &RelStore, uid: Uid, id: &str) -> Order {
    s.create_order(&order(uid, id, None), 1_000).await.unwrap()
}
