//! The change log of the admin API: the layer that records every change (any method but
//! `GET`/`HEAD`/`OPTIONS`) that passed the auth check, after its handler answered, and
//! `GET /admin/changes`, its listing (newest first).
//!
//! A record says when, who (`console`: an operator's console session, `token`: the admin
//! token, i.e. the CLI or a script), from which address (behind `server.trusted_proxies`,
//! the client's), what (method, path, status, a summary of the request's fields) and why (the
//! request's `reason`). Bodies may hold secrets (a zsxq group's `access_token`, a user's
//! token being revoked): the summary keeps only the allow-listed fields of
//! [`SUMMARY_FIELDS`] and names the others under `redacted`, never their values.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chatrelay_storage::{ChangeCursor, ChangeRecord};
use serde_json::{Map, Value, json};
use tracing::warn;

use super::common::{AdminError, Answer, St};
use super::state::AppState;
use crate::util::now_ms;

/// Request fields a change record keeps (values cut to [`MAX_VALUE_CHARS`]): none of them
/// can hold a secret. `reason` is kept on its own.
pub const SUMMARY_FIELDS: &[&str] = &[
    "credits",
    "banned",
    "key",
    "add",
    "remove",
    "name",
    "label",
    "expires_in_days",
    "reference",
    "hash_prefix",
    "uid",
    "count",
    "plan",
    "expires_at",
    "note",
];

/// Longest kept text value of a summary, in characters.
const MAX_VALUE_CHARS: usize = 100;

/// Most elements kept of a list value (a user's groups).
const MAX_LIST: usize = 20;

/// Most names of redacted fields kept.
const MAX_REDACTED: usize = 10;

/// Whether a request with this method changes something (and is recorded).
fn is_change(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The recording layer (inside the auth layer: refused requests are not recorded, so
/// nobody without the token can fill the log).
pub(super) async fn record_changes(
    State(st): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if !is_change(req.method()) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let actor = if crate::auth::bearer(&parts.headers).is_some() {
        "token"
    } else {
        "console"
    };
    let address = match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(peer)) => {
            let config = st.parts();
            let trusted = crate::util::addr::parse_trusted(&config.config.server.trusted_proxies);
            crate::util::addr::client_ip(*peer, &parts.headers, &trusted).to_string()
        }
        None => "unknown".to_owned(),
    };
    let method = parts.method.to_string();
    let path = parts.uri.path().to_owned();
    // Read once (within the daemon's body limit) and handed on unchanged.
    let (bytes, response) = match axum::body::to_bytes(body, st.body_limit).await {
        Ok(bytes) => {
            let req = Request::from_parts(parts, Body::from(bytes.clone()));
            (bytes, next.run(req).await)
        }
        Err(_) => (
            axum::body::Bytes::new(),
            AdminError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {} bytes", st.body_limit),
            )
            .into_response(),
        ),
    };
    let (reason, mut summary) = summarize(&bytes);
    let response = if response.status().is_client_error() || response.status().is_server_error() {
        let (response, error) = error_of(response).await;
        if let (Some(error), Some(fields)) = (error, summary.as_object_mut()) {
            fields.insert("error".to_owned(), Value::String(error));
        }
        response
    } else {
        response
    };
    let record = ChangeRecord {
        at_ms: now_ms(),
        id: 0,
        actor: actor.to_owned(),
        address,
        method,
        path,
        status: response.status().as_u16(),
        reason,
        summary,
    };
    let store = st.engine.store();
    // The change is made whatever happens here: a record that cannot be written is logged,
    // not turned into an error answer for a change that happened. Flushed before the answer
    // like the change itself, so that a crash does not keep the change and lose its record.
    let written = match store.record_change(record).await {
        Ok(_) => store.flush().await,
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        warn!(error = %e, "admin: recording a change in the change log failed");
    }
    response
}

/// The `error` of a refusal (`{"error": "..."}`, cut to [`MAX_VALUE_CHARS`]), and the same
/// response to send on: why a change was refused is worth keeping next to it. Answers
/// larger than [`MAX_ERROR_BODY`] are passed on without a look.
async fn error_of(response: Response) -> (Response, Option<String>) {
    let (parts, body) = response.into_parts();
    // A whole body knows its size; a stream (none of the admin errors) is left alone.
    let small = axum::body::HttpBody::size_hint(&body)
        .exact()
        .is_some_and(|n| n <= MAX_ERROR_BODY as u64);
    if !small {
        return (Response::from_parts(parts, body), None);
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ERROR_BODY).await else {
        return (
            AdminError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "unreadable answer".into(),
            )
            .into_response(),
            None,
        );
    };
    let error = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .map(|e| match bounded(Value::String(e)) {
            Value::String(s) => s,
            _ => String::new(),
        });
    (Response::from_parts(parts, Body::from(bytes)), error)
}

/// Largest error answer read for its message, in bytes.
const MAX_ERROR_BODY: usize = 8 * 1024;

/// A request body's `reason` (trimmed, if a non-empty text) and its summary: the
/// allow-listed fields, and the names of the others under `redacted`. A body that is not a
/// JSON object gives an empty summary (noting its size when not empty).
#[must_use]
pub fn summarize(body: &[u8]) -> (Option<String>, Value) {
    if body.is_empty() {
        return (None, json!({}));
    }
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return (None, json!({"body_bytes": body.len()}));
    };
    let mut reason = None;
    let mut kept = Map::new();
    let mut redacted = Vec::new();
    for (name, value) in fields {
        if name == "reason" {
            reason = value
                .as_str()
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_owned);
        } else if SUMMARY_FIELDS.contains(&name.as_str()) {
            kept.insert(name, bounded(value));
        } else if redacted.len() < MAX_REDACTED {
            redacted.push(Value::String(name.chars().take(40).collect()));
        }
    }
    if !redacted.is_empty() {
        kept.insert("redacted".to_owned(), Value::Array(redacted));
    }
    (reason, Value::Object(kept))
}

/// A summary value: scalars with text cut, lists of at most [`MAX_LIST`] such values,
/// nested objects dropped (none of the allow-listed fields is one).
fn bounded(value: Value) -> Value {
    match value {
        Value::String(s) if s.chars().count() > MAX_VALUE_CHARS => {
            let mut cut: String = s.chars().take(MAX_VALUE_CHARS).collect();
            cut.push('…');
            Value::String(cut)
        }
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .take(MAX_LIST)
                .map(|v| match v {
                    Value::Array(_) | Value::Object(_) => Value::Null,
                    other => bounded(other),
                })
                .collect(),
        ),
        Value::Object(_) => json!("(object)"),
        other => other,
    }
}

/// A record as the API shows it.
fn record_json(r: &ChangeRecord) -> Value {
    json!({
        "id": r.id,
        "at_ms": r.at_ms,
        "actor": r.actor,
        "address": r.address,
        "method": r.method,
        "path": r.path,
        "status": r.status,
        "reason": r.reason,
        "summary": r.summary,
    })
}

/// `GET /admin/changes` query.
#[derive(serde::Deserialize)]
pub struct ChangesQuery {
    /// The `next` of the previous page (`AT_MS-ID`), or a time in ms.
    before: Option<String>,
    /// Records per page, 1 to 500 (default 50).
    limit: Option<usize>,
}

/// `GET /admin/changes?before=&limit=`: a page of the change log, newest first (`limit`
/// 1 to 500, default 50), with `next` (the `before` of the next, older page) or `null`.
pub async fn list_changes(st: St, Query(q): Query<ChangesQuery>) -> Answer {
    let before = q
        .before
        .filter(|b| !b.is_empty())
        .map(|b| b.parse::<ChangeCursor>())
        .transpose()
        .map_err(AdminError::bad_request)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=chatrelay_storage::MAX_CHANGE_PAGE).contains(&limit) {
        return Err(AdminError::bad_request(format!(
            "limit={limit} is not a number from 1 to {}",
            chatrelay_storage::MAX_CHANGE_PAGE
        )));
    }
    let page = st.engine.store().changes(before, limit).await?;
    Ok(Json(json!({
        "changes": page.records.iter().map(record_json).collect::<Vec<_>>(),
        "next": page.next.map(|c| c.to_string()),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_the_summary() {
        let (reason, summary) =
            summarize(br#"{"access_token": "zsxq-secret-value", "reason": " rotated "}"#);
        assert_eq!(reason.as_deref(), Some("rotated"));
        assert_eq!(summary, json!({"redacted": ["access_token"]}));
        let (_, summary) = summarize(br#"{"token": "sk-cr-0123456789abcdef"}"#);
        assert!(!summary.to_string().contains("sk-cr-"), "{summary}");
        assert_eq!(summary, json!({"redacted": ["token"]}));
    }

    #[test]
    fn allow_listed_fields_are_kept_bounded() {
        let long = "x".repeat(500);
        let body = json!({
            "credits": 50, "reason": "ticket 9", "reference": long,
            "add": (0..30).map(|i| format!("g{i}")).collect::<Vec<_>>(),
            "name": {"nested": "secret"},
        });
        let (reason, summary) = summarize(body.to_string().as_bytes());
        assert_eq!(reason.as_deref(), Some("ticket 9"));
        assert_eq!(summary["credits"], 50);
        assert_eq!(summary["reference"].as_str().unwrap().chars().count(), 101);
        assert_eq!(summary["add"].as_array().unwrap().len(), MAX_LIST);
        assert_eq!(summary["name"], "(object)");
        assert!(summary.get("reason").is_none());
    }

    #[test]
    fn odd_bodies_give_empty_summaries() {
        assert_eq!(summarize(b""), (None, json!({})));
        assert_eq!(summarize(b"not json"), (None, json!({"body_bytes": 8})));
        assert_eq!(summarize(b"[1,2]"), (None, json!({"body_bytes": 5})));
        assert_eq!(summarize(br#"{"reason": "  "}"#), (None, json!({})));
        assert_eq!(summarize(br#"{"reason": 5}"#), (None, json!({})));
    }

    #[test]
    fn reads_are_not_changes() {
        assert!(!is_change(&Method::GET));
        assert!(!is_change(&Method::HEAD));
        assert!(is_change(&Method::POST));
        assert!(is_change(&Method::DELETE));
    }
}
