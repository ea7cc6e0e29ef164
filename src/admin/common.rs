//! What every admin handler shares: the auth check, the error type and its answers, body and
//! path readers, and the wrapper for blocking work.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chatrelay_storage::{Store, StoreError, Uid};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::warn;

use super::state::AppState;

/// The auth layer: a request without the admin token never reaches a handler.
pub(super) async fn require_admin(
    State(st): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let admitted = if crate::auth::bearer(req.headers()).is_none()
        && let Some(id) = crate::console::sessions::session_cookie(req.headers())
    {
        check_console(&st, id, req.method(), req.headers())
    } else {
        check_admin(&st, req.headers())
    };
    match admitted {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// A request without a bearer token but with a console session cookie: `401` unless the
/// session is live for the current admin token, `403` for a change without its CSRF token.
fn check_console(
    st: &AppState,
    id: &str,
    method: &axum::http::Method,
    headers: &HeaderMap,
) -> Result<()> {
    let csrf = headers
        .get(crate::console::sessions::CSRF_HEADER)
        .and_then(|v| v.to_str().ok());
    match st
        .console
        .admit(id, st.parts().admin_token.expose(), method, csrf)
    {
        Ok(()) => Ok(()),
        Err(crate::console::sessions::Refusal::NoSession) => Err(AdminError(
            StatusCode::UNAUTHORIZED,
            "the console session has ended; log in again".into(),
        )),
        Err(crate::console::sessions::Refusal::Csrf) => Err(AdminError(
            StatusCode::FORBIDDEN,
            "missing or wrong X-CSRF-Token".into(),
        )),
    }
}

/// `401` unless the request carries the admin token (compared in constant time).
pub(super) fn check_admin(st: &AppState, headers: &HeaderMap) -> Result<()> {
    match crate::auth::bearer(headers) {
        Some(t) if crate::util::secrets_equal(t, st.parts().admin_token.expose()) => Ok(()),
        Some(_) => {
            warn!("admin API: wrong token");
            Err(AdminError(
                StatusCode::UNAUTHORIZED,
                "wrong admin token".into(),
            ))
        }
        None => Err(AdminError(
            StatusCode::UNAUTHORIZED,
            "missing admin token (Authorization: Bearer <server.admin_token>)".into(),
        )),
    }
}

/// An admin API error: `{"error": "..."}` with a status.
#[derive(Debug)]
pub struct AdminError(pub(super) StatusCode, pub(super) String);

impl AdminError {
    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }

    pub(super) fn not_found(message: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, message.into())
    }

    pub(super) fn conflict(message: impl Into<String>) -> Self {
        Self(StatusCode::CONFLICT, message.into())
    }

    pub(super) fn internal(message: impl Into<String>) -> Self {
        Self(StatusCode::INTERNAL_SERVER_ERROR, message.into())
    }

    pub(super) fn no_user(uid: Uid) -> Self {
        Self::not_found(format!("no user {uid}"))
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownUser(uid) => AdminError::no_user(uid),
            StoreError::InsufficientCredits { available, needed } => AdminError::conflict(format!(
                "not enough credits: {available} available, {needed} needed"
            )),
            StoreError::InvalidInput(m) => AdminError::bad_request(m),
            StoreError::Unsupported(m) => AdminError(StatusCode::NOT_IMPLEMENTED, m),
            other => {
                warn!(error = %other, "admin request failed in the store");
                AdminError::internal(format!("store error: {other}"))
            }
        }
    }
}

pub(super) type Result<T> = std::result::Result<T, AdminError>;

/// What most handlers answer.
pub(super) type Answer = Result<Json<Value>>;

/// The handlers' state (it derefs to [`AppState`]).
pub(super) type St = State<AppState>;

/// A JSON request body; a malformed one is `400 invalid JSON body: ...`, an unreadable one
/// (too large) keeps its own status.
pub(super) struct Body<T>(pub(super) T);

/// Like [`Body`], but an empty body is `None`.
pub(super) struct OptionalBody<T>(pub(super) Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalBody<T> {
    type Rejection = AdminError;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| AdminError(e.status(), e.body_text()))?;
        if body.is_empty() {
            return Ok(Self(None));
        }
        parse_json(&body).map(|v| Self(Some(v)))
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = AdminError;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        match OptionalBody::from_request(req, state).await? {
            OptionalBody(Some(v)) => Ok(Self(v)),
            OptionalBody(None) => parse_json(b"").map(Self),
        }
    }
}

pub(super) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| AdminError::bad_request(format!("invalid JSON body: {e}")))
}

/// The `{uid}` of the path: `400 "x" is not a uid` unless it is a number.
pub(super) struct UidPath(pub(super) Uid);

impl<S: Send + Sync> FromRequestParts<S> for UidPath {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> std::result::Result<Self, Response> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let raw = params
            .into_iter()
            .find_map(|(k, v)| (k == "uid").then_some(v))
            .unwrap_or_default();
        raw.parse::<u64>()
            .map(|n| Self(Uid(n)))
            .map_err(|_| AdminError::bad_request(format!("{raw:?} is not a uid")).into_response())
    }
}

/// `400 message` when a required text field is blank.
pub(super) fn require(value: &str, message: &str) -> Result<()> {
    if value.trim().is_empty() {
        Err(AdminError::bad_request(message))
    } else {
        Ok(())
    }
}

/// `404 no user` unless `uid` exists.
pub(super) async fn existing_user(store: &Store, uid: Uid) -> Result<()> {
    match store.user(uid).await? {
        Some(_) => Ok(()),
        None => Err(AdminError::no_user(uid)),
    }
}

/// A `YYYY-MM-DD` query parameter as a day number (absent or empty: `None`).
pub(super) fn parse_day(name: &str, value: &Option<String>) -> Result<Option<i64>> {
    value
        .as_deref()
        .filter(|d| !d.trim().is_empty())
        .map(|d| {
            crate::stats::day_of(d).ok_or_else(|| {
                AdminError::bad_request(format!("{name}={d:?} is not a date like 2026-11-27"))
            })
        })
        .transpose()
}

/// Runs blocking work (a backup written to a file) off the async workers; a task that dies
/// is a `500`.
pub(super) async fn blocking<T, E>(
    f: impl FnOnce() -> std::result::Result<T, E> + Send + 'static,
) -> Result<T>
where
    T: Send + 'static,
    E: Into<AdminError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AdminError::internal(e.to_string()))?
        .map_err(Into::into)
}
