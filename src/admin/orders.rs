//! Orders: list, export as CSV, show with history, refund.

use axum::Json;
use axum::extract::{Path, Query};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chatrelay_storage::{Order, OrderStatus, StoreError};
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::common::{AdminError, Answer, Body, Result, St, blocking, parse_day, require};
use super::state::AppState;

/// Which orders (list and CSV).
#[derive(Deserialize)]
pub struct OrderFilter {
    status: Option<String>,
    limit: Option<usize>,
    /// Created on or after this day (`YYYY-MM-DD`, quota timezone).
    from: Option<String>,
    /// Created on or before this day.
    to: Option<String>,
    /// Only this user's orders.
    uid: Option<u64>,
}

/// The orders a filter selects, newest first.
async fn select_orders(st: &AppState, f: OrderFilter, default_limit: usize) -> Result<Vec<Order>> {
    let status = match f.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(OrderStatus::parse(s).ok_or_else(|| {
            AdminError::bad_request(format!(
                "status {s:?} is not one of created, credited, closed, refunded"
            ))
        })?),
    };
    let (from, to) = (parse_day("from", &f.from)?, parse_day("to", &f.to)?);
    let tz = st.engine.settings().tz_offset_secs;
    let store = st.engine.store().clone();
    let limit = f.limit.unwrap_or(default_limit).min(1_000_000);
    let uid = f.uid;
    blocking(move || {
        let mut orders = store.orders(status, usize::MAX)?;
        orders.retain(|o| {
            let d = crate::util::day_number(o.created_at_ms, tz);
            from.is_none_or(|f| d >= f)
                && to.is_none_or(|t| d <= t)
                && uid.is_none_or(|u| o.uid.0 == u)
        });
        orders.truncate(limit);
        Ok::<_, StoreError>(orders)
    })
    .await
}

/// The orders a filter selects, newest first (100 unless `limit` says otherwise).
pub async fn list_orders(st: St, Query(f): Query<OrderFilter>) -> Answer {
    let orders = select_orders(&st, f, 100).await?;
    Ok(Json(json!(orders)))
}

/// The CSV header, after the BOM.
const CSV_HEADER: &str = "id,uid,product_id,product_name,channel,method,amount_fen,amount_yuan,credits,status,created_at,credited_at,refunded_at,provider_trade_no";

/// Orders as CSV (UTF-8 with a BOM, which Excel needs to read Chinese product names).
pub async fn export_orders(st: St, Query(f): Query<OrderFilter>) -> Result<Response> {
    let orders = select_orders(&st, f, usize::MAX).await?;
    let mut out = format!("\u{feff}{CSV_HEADER}\r\n");
    let time = |ms: Option<i64>| {
        ms.and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default()
    };
    for o in &orders {
        let row = [
            o.id.clone(),
            o.uid.0.to_string(),
            o.product_id.clone(),
            o.product_name.clone(),
            o.channel.clone(),
            crate::billing::PayMethod::of(o)
                .map(|m| m.as_str().to_owned())
                .unwrap_or_default(),
            o.amount_fen.to_string(),
            crate::util::yuan(o.amount_fen),
            o.credits.to_string(),
            o.status.as_str().to_owned(),
            time(Some(o.created_at_ms)),
            time(o.credited_at_ms),
            time(o.refunded_at_ms),
            o.provider_trade_no.clone().unwrap_or_default(),
        ];
        let cells: Vec<String> = row.iter().map(|c| csv_cell(c)).collect();
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    }
    info!(orders = orders.len(), "admin: orders exported");
    let mut res = out.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    Ok(res)
}

/// One CSV cell (RFC 4180), with formula-looking text defused so a spreadsheet shows it
/// instead of running it (a product name is operator text, but a trade number is not).
fn csv_cell(value: &str) -> String {
    let mut v = value.to_owned();
    if v.starts_with(['=', '+', '-', '@']) && v.parse::<f64>().is_err() {
        v.insert(0, '\'');
    }
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

/// One order with its events.
pub async fn show_order(st: St, Path(id): Path<String>) -> Answer {
    let store = st.engine.store();
    let order = store
        .order(&id)?
        .ok_or_else(|| AdminError::not_found(format!("no order {id}")))?;
    Ok(Json(
        json!({"order": order, "events": store.order_events(&id)?}),
    ))
}

/// `POST /admin/orders/{id}/refund`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refund {
    reason: String,
}

/// Refunds an order in full at its provider and takes its credits back.
pub async fn refund_order(st: St, Path(id): Path<String>, Body(req): Body<Refund>) -> Answer {
    require(&req.reason, "a reason is required")?;
    use crate::billing::BillingError as B;
    match st.parts().billing.refund(&id, req.reason.trim()).await {
        Ok((order, entry)) => {
            info!(order = %id, "admin: order refunded");
            Ok(Json(json!({"order": order, "debit": entry})))
        }
        Err(B::UnknownOrder(_)) => Err(AdminError::not_found(format!("no order {id}"))),
        Err(B::State(m)) => Err(AdminError::conflict(m)),
        Err(B::Provider(m)) => Err(AdminError(StatusCode::BAD_GATEWAY, m)),
        Err(B::Store(e)) => Err(e.into()),
        Err(e) => Err(AdminError::internal(e.to_string())),
    }
}
