//! The census of the relational tables (see `census.rs` for what it counts and why), in two
//! statements: every figure but the orders, then the orders per status.

use tokio_postgres::Row;
use tokio_postgres::types::Type;

use super::{RelStore, col};
use crate::{Census, OrderTally, StoreError};

/// $1 now. Sums come as text: PostgreSQL sums bigints as numeric, which may pass i64.
const FIGURES: &str = "SELECT
    (SELECT count(*) FROM users) AS users,
    (SELECT count(*) FROM identities) AS identities,
    (SELECT count(*) FROM tokens) AS tokens,
    (SELECT count(*) FROM login_codes WHERE expires_at_ms > $1) AS login_codes_live,
    (SELECT COALESCE(sum(paid), 0)::text FROM balances) AS paid_sum,
    (SELECT COALESCE(sum(held), 0)::text FROM balances) AS held_sum,
    l.entries, l.free_sum, l.paid_sum AS ledger_paid_sum, l.refs,
    r.open_reservations, r.open_sum,
    (SELECT count(*) FROM order_events) AS order_events,
    (SELECT count(DISTINCT conversation) FROM turns) AS conversations,
    (SELECT count(*) FROM turns) AS turns,
    (SELECT count(*) FROM outbox) AS outbox_texts,
    (SELECT count(*) FROM checkpoints) + (SELECT count(*) FROM stats) AS checkpoints,
    (SELECT count(*) FROM code_batches) AS code_batches,
    (SELECT count(*) FROM codes) AS codes,
    (SELECT count(*) FROM usage) AS usage_records,
    (SELECT COALESCE(sum(free + paid + plan), 0)::text FROM usage) AS usage_charged_sum
  FROM (SELECT count(*) AS entries, COALESCE(sum(free_delta), 0)::text AS free_sum,
               COALESCE(sum(paid_delta), 0)::text AS paid_sum,
               count(DISTINCT reference) AS refs FROM ledger) AS l,
       (SELECT count(*) AS open_reservations, COALESCE(sum(amount), 0)::text AS open_sum
        FROM reservations WHERE status = 'open') AS r";

const ORDERS: &str = "SELECT status, count(*) AS n, sum(amount_fen)::text AS fen
    FROM orders GROUP BY status";

impl RelStore {
    /// The census of the relational tables, with login codes counted live at `now_ms`. Not
    /// one snapshot (two statements): take it while nothing writes.
    pub(crate) async fn census(&self, now_ms: i64) -> Result<Census, StoreError> {
        let rows = self.rows(FIGURES, &[(&now_ms, Type::INT8)]).await?;
        let row = super::one(&rows)?;
        let mut c = Census {
            users: n(row, "users")?,
            identities: n(row, "identities")?,
            tokens: n(row, "tokens")?,
            login_codes_live: n(row, "login_codes_live")?,
            paid_sum: sum(row, "paid_sum")?,
            held_sum: sum(row, "held_sum")?,
            ledger_entries: n(row, "entries")?,
            ledger_free_delta_sum: sum(row, "free_sum")?,
            ledger_paid_delta_sum: sum(row, "ledger_paid_sum")?,
            ledger_references: n(row, "refs")?,
            open_reservations: n(row, "open_reservations")?,
            open_reserved_sum: sum(row, "open_sum")?,
            order_events: n(row, "order_events")?,
            conversations: n(row, "conversations")?,
            turns: n(row, "turns")?,
            outbox_texts: n(row, "outbox_texts")?,
            checkpoints: n(row, "checkpoints")?,
            code_batches: n(row, "code_batches")?,
            codes: n(row, "codes")?,
            usage_records: n(row, "usage_records")?,
            usage_charged_sum: sum(row, "usage_charged_sum")?,
            ..Census::default()
        };
        for row in self.rows(ORDERS, &[]).await? {
            let status: String = col(&row, "status")?;
            c.orders.insert(
                status,
                OrderTally {
                    count: n(&row, "n")?,
                    amount_fen: sum(&row, "fen")?,
                },
            );
        }
        Ok(c)
    }
}

/// A count column.
fn n(row: &Row, name: &str) -> Result<u64, StoreError> {
    let v: i64 = col(row, name)?;
    u64::try_from(v).map_err(|_| StoreError::Backend(format!("column {name}: {v}")))
}

/// A sum column (numeric as text).
fn sum<T: std::str::FromStr>(row: &Row, name: &str) -> Result<T, StoreError> {
    let text: String = col(row, name)?;
    text.parse()
        .map_err(|_| StoreError::Backend(format!("column {name}: {text:?} is not a whole sum")))
}
