//! Orders: list, export as CSV, show with history, refund.

use axum::Json;
use axum::extract::{Path, Query};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chatrelay_storage::{Order, OrderStatus};
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::common::{AdminError, Answer, Body, Result, St, parse_day, require};
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
    /// Only orders of this channel (`wechat`, `alipay`).
    channel: Option<String>,
    /// Only orders paid (or to be paid) this way (`native`, `jsapi`, `h5`, `precreate`,
    /// `wap`, `page`).
    method: Option<String>,
}

/// What [`OrderFilter`] selects, read and checked.
struct Selection {
    status: Option<OrderStatus>,
    from: Option<i64>,
    to: Option<i64>,
    uid: Option<u64>,
    channel: Option<String>,
    method: Option<String>,
}

/// The channels orders are made in.
const CHANNELS: [&str; 2] = ["wechat", "alipay"];
/// The payment methods of orders.
const METHODS: [&str; 6] = ["native", "jsapi", "h5", "precreate", "wap", "page"];

impl OrderFilter {
    /// Reads the filter; an unknown status, channel, method or a bad day is a `400` naming
    /// what is allowed.
    fn selection(&self) -> Result<Selection> {
        let given = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let status = match given(&self.status) {
            None => None,
            Some(s) => Some(OrderStatus::parse(&s).ok_or_else(|| {
                AdminError::bad_request(format!(
                    "status {s:?} is not one of created, credited, closed, refunded"
                ))
            })?),
        };
        let channel = given(&self.channel);
        if let Some(c) = &channel
            && !CHANNELS.contains(&c.as_str())
        {
            return Err(AdminError::bad_request(format!(
                "channel {c:?} is not one of {}",
                CHANNELS.join(", ")
            )));
        }
        let method = given(&self.method);
        if let Some(m) = &method
            && !METHODS.contains(&m.as_str())
        {
            return Err(AdminError::bad_request(format!(
                "method {m:?} is not one of {}",
                METHODS.join(", ")
            )));
        }
        Ok(Selection {
            status,
            from: parse_day("from", &self.from)?,
            to: parse_day("to", &self.to)?,
            uid: self.uid,
            channel,
            method,
        })
    }
}

impl Selection {
    /// Whether order `o`, created on quota day `day`, is selected.
    fn admits(&self, o: &Order, day: i64) -> bool {
        self.from.is_none_or(|f| day >= f)
            && self.to.is_none_or(|t| day <= t)
            && self.uid.is_none_or(|u| o.uid.0 == u)
            && self.channel.as_ref().is_none_or(|c| o.channel == *c)
            && self.method.as_ref().is_none_or(|m| {
                crate::billing::PayMethod::of(o).is_some_and(|p| p.as_str() == m.as_str())
            })
    }
}

/// The orders a filter selects, newest first.
async fn select_orders(st: &AppState, f: OrderFilter, default_limit: usize) -> Result<Vec<Order>> {
    let sel = f.selection()?;
    let tz = st.engine.settings().tz_offset_secs;
    let limit = f.limit.unwrap_or(default_limit).min(1_000_000);
    let mut orders = st.engine.store().orders(sel.status, usize::MAX).await?;
    orders.retain(|o| sel.admits(o, crate::util::day_number(o.created_at_ms, tz)));
    orders.truncate(limit);
    Ok(orders)
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
        .order(&id)
        .await?
        .ok_or_else(|| AdminError::not_found(format!("no order {id}")))?;
    let events = store.order_events(&id).await?;
    Ok(Json(json!({"order": order, "events": events})))
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

#[cfg(test)]
mod tests {
    use super::*;
    use chatrelay_storage::Uid;

    fn filter(q: &str) -> OrderFilter {
        let uri: axum::http::Uri = format!("/admin/orders?{q}").parse().unwrap();
        Query::<OrderFilter>::try_from_uri(&uri).unwrap().0
    }

    fn order(uid: u64, channel: &str, method: Option<&str>) -> Order {
        Order {
            id: "o".into(),
            uid: Uid(uid),
            product_id: "p".into(),
            product_name: "p".into(),
            channel: channel.into(),
            method: method.map(Into::into),
            amount_fen: 100,
            credits: 10,
            status: OrderStatus::Credited,
            created_at_ms: 0,
            expires_at_ms: 1,
            code_url: None,
            provider_trade_no: None,
            credited_at_ms: None,
            closed_at_ms: None,
            refunded_at_ms: None,
            plan: None,
        }
    }

    #[test]
    fn channel_and_method_select_orders() {
        let wx_qr = order(1, "wechat", None);
        let wx_h5 = order(1, "wechat", Some("h5"));
        let ali_wap = order(2, "alipay", Some("wap"));
        let sel = filter("channel=wechat").selection().unwrap();
        assert!(sel.admits(&wx_qr, 0) && sel.admits(&wx_h5, 0));
        assert!(!sel.admits(&ali_wap, 0));
        // An order from before methods is a QR order: wechat's `native`.
        let sel = filter("method=native").selection().unwrap();
        assert!(sel.admits(&wx_qr, 0) && !sel.admits(&wx_h5, 0));
        let sel = filter("method=wap&uid=2").selection().unwrap();
        assert!(sel.admits(&ali_wap, 0) && !sel.admits(&wx_h5, 0));
        let sel = filter("method=wap&uid=1").selection().unwrap();
        assert!(!sel.admits(&ali_wap, 0));
        // Empty values (a form's "any") select everything.
        let sel = filter("channel=&method=&status=").selection().unwrap();
        assert!(sel.admits(&wx_qr, 0) && sel.admits(&ali_wap, 0));
    }

    #[test]
    fn days_bound_the_selection() {
        let day = crate::stats::day_of("2026-12-07").unwrap();
        let sel = filter("from=2026-12-07&to=2026-12-07").selection().unwrap();
        let o = order(1, "wechat", None);
        assert!(sel.admits(&o, day));
        assert!(!sel.admits(&o, day - 1) && !sel.admits(&o, day + 1));
    }

    #[test]
    fn unknown_values_are_refused_with_what_is_allowed() {
        for (q, named) in [
            ("channel=paypal", "wechat, alipay"),
            ("method=card", "native, jsapi"),
            ("status=paid", "created, credited"),
            ("from=yesterday", "from"),
        ] {
            let Err(e) = filter(q).selection() else {
                panic!("{q} was accepted");
            };
            assert_eq!(e.0, StatusCode::BAD_REQUEST, "{q}");
            assert!(e.1.contains(named), "{q}: {}", e.1);
        }
    }
}
