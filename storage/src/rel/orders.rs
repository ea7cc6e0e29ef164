//! Orders on PostgreSQL, with the state machine and amounts of `orders.rs`: `created →
//! credited`, `created → closed`, `closed → credited` (a payment after a local close),
//! `credited → refunded`. Each transition is an UPDATE that names the status it leaves, so
//! it happens once however many notifications race.

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Row, Transaction};

use super::money::{ENTRY_COLS, entry_from};
use super::plans::{PLAN_COLS, plan_from};
use super::{Attempts, RelStore, Retry, amount, col, credits, db_err, one, uid_of, uid_param};
use crate::codec::check_key;
use crate::{
    CreditOutcome, LedgerEntry, Order, OrderEvent, OrderStatus, PlanGrant, StoreError,
    purchase_reference,
};

const ORDER_COLS: &str = "id, uid, product, product_name, channel, method, amount_fen, credits,
     status, created_at_ms, expires_at_ms, code_url, provider_trade_no, credited_at_ms,
     closed_at_ms, refunded_at_ms, plan_id, plan_name, plan_days, plan_daily_credits,
     plan_utc_offset_secs";

/// $1 id, $2 paid fen, $3 provider trade no, $4 now, $5 reference. The order credited, its
/// credits added (a balance row made if missing: never an order credited without its
/// entry), a plan order's plan granted (as `plans::after_grant`: the same plan still running
/// is extended by its days, anything else replaced from today, the day counted in the
/// plan's timezone) and the purchase entry written with the plan's dates in its reason
/// (as `plans::grant_note`), in one statement.
const CREDIT: &str = "WITH o AS (
         UPDATE orders SET status = 'credited', credited_at_ms = $4,
                provider_trade_no = COALESCE($3, provider_trade_no), open_slot = NULL
         WHERE id = $1 AND status IN ('created', 'closed') AND amount_fen = $2
         RETURNING uid, credits, product_name, plan_id, plan_name, plan_days,
                   plan_daily_credits,
                   floor((floor($4::numeric / 1000) + plan_utc_offset_secs) / 86400)::bigint
                       AS today),
     b AS (
         INSERT INTO balances (uid, paid, next_seq, plan_id, plan_name, plan_daily_credits,
                               plan_start_day, plan_end_day)
         SELECT uid, credits, 2, plan_id, plan_name, plan_daily_credits, today,
                today + plan_days
         FROM o
         ON CONFLICT (uid) DO UPDATE
         SET paid = balances.paid + excluded.paid, next_seq = balances.next_seq + 1,
             plan_id = COALESCE(excluded.plan_id, balances.plan_id),
             plan_name = CASE WHEN excluded.plan_id IS NULL THEN balances.plan_name
                              ELSE excluded.plan_name END,
             plan_daily_credits = CASE WHEN excluded.plan_id IS NULL
                                       THEN balances.plan_daily_credits
                                       ELSE excluded.plan_daily_credits END,
             plan_start_day = CASE
                 WHEN excluded.plan_id IS NULL THEN balances.plan_start_day
                 WHEN balances.plan_id = excluded.plan_id
                      AND balances.plan_end_day > excluded.plan_start_day
                     THEN LEAST(balances.plan_start_day, excluded.plan_start_day)
                 ELSE excluded.plan_start_day END,
             plan_end_day = CASE
                 WHEN excluded.plan_id IS NULL THEN balances.plan_end_day
                 WHEN balances.plan_id = excluded.plan_id
                      AND balances.plan_end_day > excluded.plan_start_day
                     THEN balances.plan_end_day
                          + (excluded.plan_end_day - excluded.plan_start_day)
                 ELSE excluded.plan_end_day END
         RETURNING uid, paid, next_seq - 1 AS seq, plan_name, plan_start_day, plan_end_day),
     ent AS (
         INSERT INTO ledger (uid, seq, at_ms, kind, free_delta, paid_delta, paid_after, reason,
                             reference)
         SELECT b.uid, b.seq, $4, 'purchase', 0, o.credits, b.paid,
                'order ' || $1 || ': ' || o.product_name
                || CASE WHEN o.plan_id IS NULL THEN ''
                        ELSE ' (会员 ' || b.plan_name || ' '
                             || to_char(date '1970-01-01' + b.plan_start_day::int, 'YYYY-MM-DD')
                             || ' 至 '
                             || to_char(date '1970-01-01' + (b.plan_end_day - 1)::int,
                                        'YYYY-MM-DD')
                             || ')' END,
                $5
         FROM b, o
         RETURNING uid, seq, at_ms, kind, free_delta, paid_delta, paid_after, reason, reference)
     SELECT ent.* FROM ent";

/// $1 uid, $2 the order's credits, $3 now, $4 reason, $5 reference, $6 a plan order's
/// refund (always written: the record that the plan was cut short), $7 the plan's new end
/// day (NULL: unchanged): the balance locked and debited by as much of the credits as is not
/// held, with the refund entry (none if nothing can be taken and no plan changes).
const REFUND_DEBIT: &str = "WITH cur AS (
         SELECT uid, LEAST($2, GREATEST(paid - held, 0)) AS take
         FROM balances WHERE uid = $1 FOR UPDATE),
     b AS (
         UPDATE balances SET paid = balances.paid - cur.take, next_seq = balances.next_seq + 1,
                plan_end_day = COALESCE($7, balances.plan_end_day)
         FROM cur WHERE balances.uid = cur.uid AND (cur.take > 0 OR $6)
         RETURNING balances.uid, balances.paid, balances.next_seq - 1 AS seq, cur.take)
     INSERT INTO ledger (uid, seq, at_ms, kind, free_delta, paid_delta, paid_after, reason,
                         reference)
     SELECT uid, seq, $3, 'refund', 0, -take, paid, $4, $5 FROM b
     RETURNING uid, seq, at_ms, kind, free_delta, paid_delta, paid_after, reason, reference";

/// The user's slot for an order's product, channel and method while it waits (as
/// `open_key` in `orders.rs`, with U+001F for its NUL: PostgreSQL's text has no NUL). QR
/// orders keep the slot they had before methods existed; each H5 order has its own.
fn open_slot(order: &Order) -> String {
    let (product, channel) = (&order.product_id, &order.channel);
    match order.method.as_deref() {
        None | Some("native" | "precreate") => format!("{product}\u{1f}{channel}"),
        Some("h5") => format!("{product}\u{1f}{channel}\u{1f}h5\u{1f}{}", order.id),
        Some(method) => format!("{product}\u{1f}{channel}\u{1f}{method}"),
    }
}

impl RelStore {
    /// Creates `order` (status created), unless the user has a live waiting order in the
    /// same slot: then that one is returned and nothing is written.
    pub(crate) async fn create_order(
        &self,
        order: &Order,
        now_ms: i64,
    ) -> Result<Order, StoreError> {
        check_key("order id", &order.id)?;
        let mut attempts = Attempts::new();
        loop {
            attempts.next().await?;
            let mut conn = self.pool.get().await?;
            let tx = conn.transaction().await.map_err(fail)?;
            match create_order_in(&tx, order, now_ms).await {
                Ok(result) => {
                    if let Ok(created) = &result {
                        match tx.commit().await.map_err(db_err) {
                            Ok(()) => {}
                            Err(Retry::Again(_)) => continue,
                            Err(Retry::Fail(e)) => return Err(e),
                        }
                        return Ok(created.clone());
                    }
                    return result;
                }
                Err(Retry::Again(_)) => continue,
                Err(Retry::Fail(e)) => return Err(e),
            }
        }
    }

    /// The order with this id.
    pub(crate) async fn order(&self, id: &str) -> Result<Option<Order>, StoreError> {
        let sql = format!("SELECT {ORDER_COLS} FROM orders WHERE id = $1");
        let rows = self.rows(&sql, &[(&id, Type::TEXT)]).await?;
        rows.first().map(order_from).transpose()
    }

    /// Orders, newest first (by creation time, then id, as on sled), optionally only those
    /// with `status`, at most `limit` (`usize::MAX`: all).
    pub(crate) async fn orders(
        &self,
        status: Option<OrderStatus>,
        limit: usize,
    ) -> Result<Vec<Order>, StoreError> {
        let status = status.map(OrderStatus::as_str);
        let limit = super::admin::sql_limit(limit);
        let sql = format!(
            "SELECT {ORDER_COLS} FROM orders WHERE $1::text IS NULL OR status = $1
             ORDER BY created_at_ms DESC, id COLLATE \"C\" DESC LIMIT $2"
        );
        let rows = self
            .rows(&sql, &[(&status, Type::TEXT), (&limit, Type::INT8)])
            .await?;
        rows.iter().map(order_from).collect()
    }

    /// Records what the user scans; returns the order.
    pub(crate) async fn set_order_code_url(
        &self,
        id: &str,
        code_url: &str,
    ) -> Result<Order, StoreError> {
        let sql = format!("UPDATE orders SET code_url = $2 WHERE id = $1 RETURNING {ORDER_COLS}");
        let rows = self
            .rows(&sql, &[(&id, Type::TEXT), (&code_url, Type::TEXT)])
            .await?;
        match rows.first() {
            Some(row) => order_from(row),
            None => Err(StoreError::UnknownOrder(id.to_owned())),
        }
    }

    /// Every order still waiting for its payment (for reconciliation).
    pub(crate) async fn open_orders(&self) -> Result<Vec<Order>, StoreError> {
        let sql = format!(
            "SELECT {ORDER_COLS} FROM orders
             WHERE open_slot IS NOT NULL AND status = 'created' ORDER BY created_at_ms, id"
        );
        let rows = self.rows(&sql, &[]).await?;
        rows.iter().map(order_from).collect()
    }

    /// Marks a verified payment (as `KvStore::credit_order`): the amount must be the order's;
    /// the order becomes credited and its credits are added with the purchase entry, once.
    pub(crate) async fn credit_order(
        &self,
        id: &str,
        paid_fen: i64,
        provider_trade_no: Option<&str>,
        now_ms: i64,
    ) -> Result<CreditOutcome, StoreError> {
        let reference = purchase_reference(id);
        let mut attempts = Attempts::new();
        loop {
            attempts.next().await?;
            let params: [(&(dyn ToSql + Sync), Type); 5] = [
                (&id, Type::TEXT),
                (&paid_fen, Type::INT8),
                (&provider_trade_no, Type::TEXT),
                (&now_ms, Type::INT8),
                (&reference, Type::TEXT),
            ];
            let Some(rows) = self.run(CREDIT, &params).await? else {
                // The purchase reference is taken: by a racing credit (seen on the next run),
                // or by an entry this order never wrote.
                if let Some(order) = self.order(id).await?
                    && matches!(order.status, OrderStatus::Created | OrderStatus::Closed)
                    && self.ledger_by_reference(&reference).await?.is_some()
                {
                    return Err(StoreError::corrupt(
                        "orders",
                        id,
                        "not credited, but its purchase entry exists",
                    ));
                }
                continue;
            };
            if let Some(row) = rows.first() {
                let entry = entry_from(row)?
                    .ok_or_else(|| StoreError::Backend("empty purchase entry".into()))?;
                return Ok(CreditOutcome::Credited(Box::new(entry)));
            }
            // Not credited by this statement: say why, from the order as it is now.
            let Some(order) = self.order(id).await? else {
                return Err(StoreError::UnknownOrder(id.to_owned()));
            };
            match order.status {
                OrderStatus::Credited | OrderStatus::Refunded => {
                    return Ok(CreditOutcome::AlreadyCredited);
                }
                _ if order.amount_fen != paid_fen => {
                    return Err(StoreError::AmountMismatch {
                        expected: order.amount_fen,
                        got: paid_fen,
                    });
                }
                // Waiting and the amount right: it changed under the statement; again.
                _ => {}
            }
        }
    }

    /// Closes an order that is still waiting; returns it as it is afterwards (a paid order
    /// stays paid).
    pub(crate) async fn close_order(&self, id: &str, now_ms: i64) -> Result<Order, StoreError> {
        let sql = format!(
            "UPDATE orders SET status = 'closed', closed_at_ms = $2, open_slot = NULL
             WHERE id = $1 AND status = 'created' RETURNING {ORDER_COLS}"
        );
        let rows = self
            .rows(&sql, &[(&id, Type::TEXT), (&now_ms, Type::INT8)])
            .await?;
        if let Some(row) = rows.first() {
            return order_from(row);
        }
        self.order(id)
            .await?
            .ok_or_else(|| StoreError::UnknownOrder(id.to_owned()))
    }

    /// Marks a credited order refunded and takes back its credits, as many as the user still
    /// has (paid minus held), in one transaction (as `KvStore::refund_order`). Idempotent.
    pub(crate) async fn refund_order(
        &self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(Order, Option<LedgerEntry>), StoreError> {
        let mut attempts = Attempts::new();
        loop {
            attempts.next().await?;
            let mut conn = self.pool.get().await?;
            let tx = conn.transaction().await.map_err(fail)?;
            let outcome = match refund_in(&tx, id, reason, now_ms).await {
                Ok(outcome) => outcome,
                Err(Retry::Again(_)) => continue,
                Err(Retry::Fail(e)) => return Err(e),
            };
            match tx.commit().await.map_err(db_err) {
                Ok(()) => return outcome,
                Err(Retry::Again(_)) => continue,
                Err(Retry::Fail(e)) => return Err(e),
            }
        }
    }

    /// Appends an event to an order's history.
    pub(crate) async fn add_order_event(
        &self,
        id: &str,
        kind: &str,
        detail: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.rows(
            "INSERT INTO order_events (order_id, at_ms, kind, detail) VALUES ($1, $2, $3, $4)",
            &[
                (&id, Type::TEXT),
                (&now_ms, Type::INT8),
                (&kind, Type::TEXT),
                (&detail, Type::TEXT),
            ],
        )
        .await
        .map(drop)
    }

    /// An order's history, oldest first.
    pub(crate) async fn order_events(&self, id: &str) -> Result<Vec<OrderEvent>, StoreError> {
        let rows = self
            .rows(
                "SELECT at_ms, kind, detail FROM order_events WHERE order_id = $1 ORDER BY id",
                &[(&id, Type::TEXT)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(OrderEvent {
                    at_ms: col(r, "at_ms")?,
                    kind: col(r, "kind")?,
                    detail: col(r, "detail")?,
                })
            })
            .collect()
    }
}

/// One run of [`RelStore::create_order`]'s transaction: the outer error says whether to run
/// it again, the inner result is the caller's.
async fn create_order_in(
    tx: &Transaction<'_>,
    order: &Order,
    now_ms: i64,
) -> Result<Result<Order, StoreError>, Retry> {
    let uid = match uid_param(order.uid) {
        Ok(uid) => uid,
        Err(e) => return Ok(Err(e)),
    };
    let slot = open_slot(order);
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM users WHERE uid = $1) AS user_exists,
                EXISTS (SELECT 1 FROM orders WHERE id = $3) AS id_taken,
                o.* FROM (SELECT 1) AS one
         LEFT JOIN (SELECT {ORDER_COLS} FROM orders WHERE uid = $1 AND open_slot = $2
                    FOR UPDATE) AS o ON true"
    );
    let id = order.id.as_str();
    let params: [(&(dyn ToSql + Sync), Type); 3] =
        [(&uid, Type::INT8), (&slot, Type::TEXT), (&id, Type::TEXT)];
    let rows = tx.query_typed(&sql, &params).await.map_err(db_err)?;
    let row = one(&rows).map_err(Retry::Fail)?;
    if !col::<bool>(row, "user_exists").map_err(Retry::Fail)? {
        return Ok(Err(StoreError::UnknownUser(order.uid)));
    }
    if col::<Option<String>>(row, "id")
        .map_err(Retry::Fail)?
        .is_some()
    {
        let existing = order_from(row).map_err(Retry::Fail)?;
        if existing.status == OrderStatus::Created && existing.expires_at_ms > now_ms {
            return Ok(Ok(existing));
        }
    }
    if col::<bool>(row, "id_taken").map_err(Retry::Fail)? {
        return Ok(Err(StoreError::InvalidInput(format!(
            "order {} exists",
            order.id
        ))));
    }
    // An expired waiting order gives up the slot (it stays created, as on sled); a live one
    // that a racing call made since the read keeps it, and the insert below collides.
    tx.query_typed(
        "UPDATE orders SET open_slot = NULL
         WHERE uid = $1 AND open_slot = $2 AND expires_at_ms <= $3",
        &[
            (&uid, Type::INT8),
            (&slot, Type::TEXT),
            (&now_ms, Type::INT8),
        ],
    )
    .await
    .map_err(db_err)?;
    insert_order(tx, order, uid, &slot).await
}

/// Inserts `order` as waiting, holding `slot`.
async fn insert_order(
    tx: &Transaction<'_>,
    order: &Order,
    uid: i64,
    slot: &str,
) -> Result<Result<Order, StoreError>, Retry> {
    let id = order.id.as_str();
    let (amount_fen, credits) = (
        order.amount_fen,
        amount(order.credits).map_err(Retry::Fail)?,
    );
    let (product, name, channel) = (&order.product_id, &order.product_name, &order.channel);
    let sql = format!(
        "INSERT INTO orders (id, uid, product, product_name, channel, method, amount_fen,
                             credits, status, created_at_ms, expires_at_ms, code_url,
                             provider_trade_no, open_slot, plan_id, plan_name, plan_days,
                             plan_daily_credits, plan_utc_offset_secs)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'created', $9, $10, $11, $12, $13, $14, $15,
                 $16, $17, $18)
         RETURNING {ORDER_COLS}"
    );
    let plan = order.plan.as_ref();
    let (plan_id, plan_name) = (plan.map(|p| p.id.as_str()), plan.map(|p| p.name.as_str()));
    let plan_days = plan
        .map(|p| {
            i32::try_from(p.days)
                .map_err(|_| StoreError::InvalidInput(format!("{} days in a plan", p.days)))
        })
        .transpose()
        .map_err(Retry::Fail)?;
    let plan_daily = plan
        .map(|p| amount(p.daily_credits))
        .transpose()
        .map_err(Retry::Fail)?;
    let plan_offset = plan.map(|p| p.utc_offset_secs);
    let rows = tx
        .query_typed(
            &sql,
            &[
                (&id, Type::TEXT),
                (&uid, Type::INT8),
                (product, Type::TEXT),
                (name, Type::TEXT),
                (channel, Type::TEXT),
                (&order.method, Type::TEXT),
                (&amount_fen, Type::INT8),
                (&credits, Type::INT8),
                (&order.created_at_ms, Type::INT8),
                (&order.expires_at_ms, Type::INT8),
                (&order.code_url, Type::TEXT),
                (&order.provider_trade_no, Type::TEXT),
                (&slot, Type::TEXT),
                (&plan_id, Type::TEXT),
                (&plan_name, Type::TEXT),
                (&plan_days, Type::INT4),
                (&plan_daily, Type::INT8),
                (&plan_offset, Type::INT4),
            ],
        )
        .await
        .map_err(db_err)?;
    Ok(order_from(one(&rows).map_err(Retry::Fail)?))
}

/// One run of [`RelStore::refund_order`]'s transaction (see [`create_order_in`]).
async fn refund_in(
    tx: &Transaction<'_>,
    id: &str,
    reason: &str,
    now_ms: i64,
) -> Result<Result<(Order, Option<LedgerEntry>), StoreError>, Retry> {
    let reference = format!("refund:{id}");
    let sql = format!("SELECT {ORDER_COLS} FROM orders WHERE id = $1 FOR UPDATE");
    let rows = tx
        .query_typed(&sql, &[(&id, Type::TEXT)])
        .await
        .map_err(db_err)?;
    let Some(row) = rows.first() else {
        return Ok(Err(StoreError::UnknownOrder(id.to_owned())));
    };
    let order = order_from(row).map_err(Retry::Fail)?;
    if order.status == OrderStatus::Refunded {
        let sql = format!("SELECT {ENTRY_COLS} FROM ledger WHERE reference = $1");
        let rows = tx
            .query_typed(&sql, &[(&reference, Type::TEXT)])
            .await
            .map_err(db_err)?;
        let entry = rows
            .first()
            .map(entry_from)
            .transpose()
            .map_err(Retry::Fail)?;
        return Ok(Ok((order, entry.flatten())));
    }
    if order.status != OrderStatus::Credited {
        return Ok(Err(StoreError::OrderState {
            id: id.to_owned(),
            status: order.status.as_str().to_owned(),
        }));
    }
    let uid = uid_param(order.uid).map_err(Retry::Fail)?;
    let credits_ = amount(order.credits).map_err(Retry::Fail)?;
    // A plan order's days come off the plan's end (as `plans::after_refund`), read under the
    // balance row's lock.
    let (mut ended, mut new_end) = (String::new(), None::<i64>);
    if let Some(grant) = &order.plan {
        let sql = format!("SELECT {PLAN_COLS} FROM balances b WHERE b.uid = $1 FOR UPDATE");
        let rows = tx
            .query_typed(&sql, &[(&uid, Type::INT8)])
            .await
            .map_err(db_err)?;
        let current = rows
            .first()
            .map(plan_from)
            .transpose()
            .map_err(Retry::Fail)?
            .flatten();
        let today = grant.day_of(now_ms);
        if let Some(p) = crate::after_refund(current.as_ref(), grant, today) {
            ended = crate::plans::refund_note(&p, today);
            new_end = Some(p.end_day);
        }
    }
    let is_plan = order.plan.is_some();
    let why = format!("refund of order {id}: {reason}{ended}");
    let rows = tx
        .query_typed(
            REFUND_DEBIT,
            &[
                (&uid, Type::INT8),
                (&credits_, Type::INT8),
                (&now_ms, Type::INT8),
                (&why, Type::TEXT),
                (&reference, Type::TEXT),
                (&is_plan, Type::BOOL),
                (&new_end, Type::INT8),
            ],
        )
        .await
        .map_err(db_err)?;
    let entry = rows
        .first()
        .map(entry_from)
        .transpose()
        .map_err(Retry::Fail)?;
    let sql = format!(
        "UPDATE orders SET status = 'refunded', refunded_at_ms = $2
         WHERE id = $1 AND status = 'credited' RETURNING {ORDER_COLS}"
    );
    let rows = tx
        .query_typed(&sql, &[(&id, Type::TEXT), (&now_ms, Type::INT8)])
        .await
        .map_err(db_err)?;
    let order = order_from(one(&rows).map_err(Retry::Fail)?).map_err(Retry::Fail)?;
    Ok(Ok((order, entry.flatten())))
}

fn order_from(row: &Row) -> Result<Order, StoreError> {
    let id: String = col(row, "id")?;
    let status: String = col(row, "status")?;
    let status = OrderStatus::parse(&status)
        .ok_or_else(|| StoreError::corrupt("orders", id.clone(), format!("status {status:?}")))?;
    let credits_ = credits(col(row, "credits")?, "orders", || id.clone())?;
    Ok(Order {
        uid: uid_of(row, "uid")?,
        product_id: col(row, "product")?,
        product_name: col(row, "product_name")?,
        channel: col(row, "channel")?,
        method: col(row, "method")?,
        amount_fen: col(row, "amount_fen")?,
        credits: credits_,
        status,
        created_at_ms: col(row, "created_at_ms")?,
        expires_at_ms: col(row, "expires_at_ms")?,
        code_url: col(row, "code_url")?,
        provider_trade_no: col(row, "provider_trade_no")?,
        credited_at_ms: col(row, "credited_at_ms")?,
        closed_at_ms: col(row, "closed_at_ms")?,
        refunded_at_ms: col(row, "refunded_at_ms")?,
        plan: plan_of(row, &id)?,
        id,
    })
}

/// An order's plan (`plan_*` columns: all or none).
fn plan_of(row: &Row, id: &str) -> Result<Option<PlanGrant>, StoreError> {
    let Some(plan) = col::<Option<String>>(row, "plan_id")? else {
        return Ok(None);
    };
    let bad = |what: &str| StoreError::corrupt("orders", id, format!("plan {what}"));
    let days: i32 = col::<Option<i32>>(row, "plan_days")?.ok_or_else(|| bad("days null"))?;
    let daily: i64 =
        col::<Option<i64>>(row, "plan_daily_credits")?.ok_or_else(|| bad("credits null"))?;
    Ok(Some(PlanGrant {
        id: plan,
        name: col::<Option<String>>(row, "plan_name")?.ok_or_else(|| bad("name null"))?,
        days: u32::try_from(days).map_err(|_| bad("days negative"))?,
        daily_credits: credits(daily, "orders", || id.to_owned())?,
        utc_offset_secs: col::<Option<i32>>(row, "plan_utc_offset_secs")?
            .ok_or_else(|| bad("timezone null"))?,
    }))
}

/// A failure to begin a transaction (never a conflict).
fn fail(e: tokio_postgres::Error) -> StoreError {
    match db_err(e) {
        Retry::Again(e) | Retry::Fail(e) => e,
    }
}
