//! `GET /api/usage?before=&limit=`: the user's usage log (用量明细), newest first, for the web
//! page and API clients (the same bearer token as `/api/me`, a web login's included).
//!
//! Answer: `{"data": [record...], "has_more": bool, "next_before": "AT_MS-ID" | null}`; pass
//! `next_before` as `before` for the next (older) page. A record is [`record_json`], which
//! the admin API (`GET /admin/users/{uid}/usage`) answers too.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chatrelay_storage::{MAX_USAGE_PAGE, UsageCursor, UsagePage, UsageRecord};
use serde_json::{Value, json};
use tracing::warn;

use super::error;
use crate::channels::web::state::WebState;

/// Records per page when `limit` is not given.
pub const DEFAULT_USAGE_PAGE: usize = 20;

/// The route.
pub fn routes() -> axum::Router<WebState> {
    axum::Router::new().route("/api/usage", get(usage))
}

/// One usage record as the APIs show it.
#[must_use]
pub fn record_json(r: &UsageRecord) -> Value {
    json!({
        "id": r.cursor().to_string(),
        "at": r.at_ms / 1000,
        "at_ms": r.at_ms,
        "platform": r.platform,
        "model": r.model,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "credits": {
            "free": r.free,
            "paid": r.paid,
            "plan": r.plan,
            "total": r.charged(),
        },
        "refunded": r.refunded,
        "outcome": r.outcome.as_str(),
        "ledger_seq": r.ledger_seq,
    })
}

/// A page as the APIs answer it.
#[must_use]
pub fn page_json(page: &UsagePage) -> Value {
    json!({
        "data": page.records.iter().map(record_json).collect::<Vec<_>>(),
        "has_more": page.next.is_some(),
        "next_before": page.next.map(|c| c.to_string()),
    })
}

/// `before` and `limit` of a query string; the message of a `400` otherwise.
pub fn parse_page_query(query: Option<&str>) -> Result<(Option<UsageCursor>, usize), String> {
    let (mut before, mut limit) = (None, DEFAULT_USAGE_PAGE);
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "before" if !value.is_empty() => {
                // Cursors are digits and one dash: nothing to percent-decode.
                before = Some(value.parse::<UsageCursor>()?);
            }
            "before" => {}
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_USAGE_PAGE).contains(n))
                    .ok_or_else(|| format!("limit must be a number from 1 to {MAX_USAGE_PAGE}"))?;
            }
            _ => {}
        }
    }
    Ok((before, limit))
}

async fn usage(
    State(st): State<WebState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let uid = match super::v1::authenticate(&st, &headers).await {
        Ok(uid) => uid,
        Err(e) => return e.into_response(),
    };
    let (before, limit) = match parse_page_query(query.as_deref()) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_request", &message),
    };
    // One page (at most `MAX_USAGE_PAGE` records) from the store's domain interface.
    match st.engine.store().usage(uid, before, limit).await {
        Ok(page) => Json(page_json(&page)).into_response(),
        Err(e) => {
            warn!(error = %e, "reading the usage log failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "服务暂时不可用",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_queries_are_read_and_checked() {
        assert_eq!(parse_page_query(None), Ok((None, DEFAULT_USAGE_PAGE)));
        assert_eq!(
            parse_page_query(Some("before=1700-3&limit=5")),
            Ok((Some(UsageCursor { at_ms: 1700, id: 3 }), 5))
        );
        assert_eq!(
            parse_page_query(Some("before=&x=1")),
            Ok((None, DEFAULT_USAGE_PAGE))
        );
        for bad in ["limit=0", "limit=101", "limit=x", "before=abc", "before=-5"] {
            assert!(parse_page_query(Some(bad)).is_err(), "{bad}");
        }
    }
}
