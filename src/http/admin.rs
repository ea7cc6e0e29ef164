//! The admin API under `/admin`, bearer = `server.admin_token`. The admin CLI is its client;
//! the daemon owns the database, so this is the only way to change users from outside.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chatrelay_core::UserKey;
use chatrelay_storage::{EntryKind, StoreError, Uid};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::AppState;
use crate::bot::now_ms;

/// The `/admin` routes.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/admin/users", post(create_user))
        .route("/admin/users/{uid}", get(show_user))
        .route("/admin/users/{uid}/grant", post(grant))
        .route("/admin/users/{uid}/ban", post(ban))
        .route("/admin/users/{uid}/tokens", post(create_token))
        .route("/admin/users/{uid}/identities", post(link_identity))
        .route("/admin/tokens/revoke", post(revoke_token))
        .route("/admin/audit", get(audit))
        .route("/admin/orders", get(list_orders))
        .route("/admin/orders/{id}", get(show_order))
        .route("/admin/orders/{id}/refund", post(refund_order))
        .route("/admin/backup", get(backup))
        .route("/admin/zsxq", get(zsxq_list))
        .route("/admin/zsxq/{id}/pause", post(zsxq_pause))
        .route("/admin/zsxq/{id}/resume", post(zsxq_resume))
        .route("/admin/zsxq/{id}/token", post(zsxq_token))
}

/// An admin API error: `{"error": "..."}` with a status.
#[derive(Debug)]
pub struct AdminError(StatusCode, String);

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownUser(uid) => {
                AdminError(StatusCode::NOT_FOUND, format!("no user {uid}"))
            }
            StoreError::InsufficientCredits { available, needed } => AdminError(
                StatusCode::CONFLICT,
                format!("not enough credits: {available} available, {needed} needed"),
            ),
            StoreError::InvalidInput(m) => AdminError(StatusCode::BAD_REQUEST, m),
            other => {
                warn!(error = %other, "admin request failed in the store");
                AdminError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("store error: {other}"),
                )
            }
        }
    }
}

type Result<T> = std::result::Result<T, AdminError>;

fn check_admin(st: &AppState, headers: &HeaderMap) -> Result<()> {
    match super::bearer(headers) {
        Some(t) if super::secrets_equal(t, st.admin_token.expose()) => Ok(()),
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

fn parse_body<T: DeserializeOwned>(body: std::result::Result<Bytes, BytesRejection>) -> Result<T> {
    let body = body.map_err(|e| AdminError(e.status(), e.body_text()))?;
    serde_json::from_slice(&body)
        .map_err(|e| AdminError(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

fn parse_uid(raw: &str) -> Result<Uid> {
    raw.parse::<u64>()
        .map(Uid)
        .map_err(|_| AdminError(StatusCode::BAD_REQUEST, format!("{raw:?} is not a uid")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    name: String,
}

async fn create_user(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    check_admin(&st, &headers)?;
    let req: CreateUser = parse_body(body)?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(AdminError(
            StatusCode::BAD_REQUEST,
            "name must be 1 to 100 characters".into(),
        ));
    }
    let user = st.engine.store().create_user(name)?;
    info!(uid = %user.uid, "admin: user created");
    Ok((StatusCode::CREATED, Json(json!(user))).into_response())
}

async fn show_user(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(uid): Path<String>,
) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    let uid = parse_uid(&uid)?;
    let store = st.engine.store();
    let user = store
        .user(uid)?
        .ok_or_else(|| AdminError(StatusCode::NOT_FOUND, format!("no user {uid}")))?;
    let s = st.engine.settings();
    let balance = store.balance(uid, s.today(), s.free_daily)?;
    Ok(Json(json!({
        "user": user,
        "balance": balance,
        "identities": store.identities_of(uid)?.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "tokens": store.tokens_of(uid)?,
        "ledger": store.ledger(uid, 20)?,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Grant {
    credits: u64,
    reason: String,
    /// Idempotency key; a retried request with the same reference grants once.
    reference: Option<String>,
}

async fn grant(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(uid): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    let uid = parse_uid(&uid)?;
    let req: Grant = parse_body(body)?;
    if req.credits == 0 {
        return Err(AdminError(
            StatusCode::BAD_REQUEST,
            "credits must be at least 1".into(),
        ));
    }
    if req.reason.trim().is_empty() {
        return Err(AdminError(
            StatusCode::BAD_REQUEST,
            "a reason is required".into(),
        ));
    }
    let reference = req
        .reference
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| format!("admin:{}", super::v1::random_id()));
    let store = st.engine.store();
    if store.user(uid)?.is_none() {
        return Err(AdminError(StatusCode::NOT_FOUND, format!("no user {uid}")));
    }
    let entry = store.grant(
        uid,
        req.credits,
        EntryKind::Grant,
        req.reason.trim(),
        &reference,
        now_ms(),
    )?;
    store.flush().await?;
    info!(%uid, credits = req.credits, %reference, "admin: credits granted");
    Ok(Json(json!(entry)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ban {
    banned: bool,
}

async fn ban(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(uid): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    let uid = parse_uid(&uid)?;
    let req: Ban = parse_body(body)?;
    let user = st.engine.store().set_banned(uid, req.banned)?;
    info!(%uid, banned = req.banned, "admin: ban changed");
    Ok(Json(json!(user)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    #[serde(default)]
    label: String,
    /// Lifetime in days; none means until revoked.
    #[serde(default)]
    expires_in_days: Option<u32>,
}

async fn create_token(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(uid): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    let uid = parse_uid(&uid)?;
    let req: CreateToken = match body {
        Ok(b) if b.is_empty() => CreateToken::default(),
        other => parse_body(other)?,
    };
    let store = st.engine.store();
    if store.user(uid)?.is_none() {
        return Err(AdminError(StatusCode::NOT_FOUND, format!("no user {uid}")));
    }
    let now = now_ms();
    let expires = req
        .expires_in_days
        .map(|d| now.saturating_add(i64::from(d) * 86_400_000));
    let token = store.create_token(uid, &req.label, expires, now)?;
    store.flush().await?;
    info!(%uid, "admin: token created");
    Ok(Json(
        json!({"token": token, "uid": uid, "expires_at_ms": expires}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    token: String,
}

async fn revoke_token(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    let req: Revoke = parse_body(body)?;
    let store = st.engine.store();
    let revoked = store.revoke_token(req.token.trim(), now_ms())?;
    store.flush().await?;
    if !revoked {
        return Err(AdminError(
            StatusCode::NOT_FOUND,
            "no such live token".into(),
        ));
    }
    info!("admin: token revoked");
    Ok(Json(json!({"revoked": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Link {
    key: String,
}

async fn link_identity(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(uid): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    let uid = parse_uid(&uid)?;
    let req: Link = parse_body(body)?;
    let key: UserKey = req
        .key
        .parse()
        .map_err(|e| AdminError(StatusCode::BAD_REQUEST, format!("{e}")))?;
    let store = st.engine.store();
    if store.user(uid)?.is_none() {
        return Err(AdminError(StatusCode::NOT_FOUND, format!("no user {uid}")));
    }
    let previous = store.link_identity(&key, uid)?;
    info!(%uid, %key, "admin: identity linked");
    Ok(Json(
        json!({"key": key.to_string(), "uid": uid, "previous_uid": previous}),
    ))
}

async fn audit(State(st): State<AppState>, headers: HeaderMap) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    let store = st.engine.store().clone();
    let report = tokio::task::spawn_blocking(move || store.audit())
        .await
        .map_err(|e| AdminError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(json!(report)))
}

#[derive(Deserialize)]
struct OrderFilter {
    status: Option<String>,
    limit: Option<usize>,
}

async fn list_orders(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(f): Query<OrderFilter>,
) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    let status = match f.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(chatrelay_storage::OrderStatus::parse(s).ok_or_else(|| {
            AdminError(
                StatusCode::BAD_REQUEST,
                format!("status {s:?} is not one of created, credited, closed, refunded"),
            )
        })?),
    };
    let store = st.engine.store().clone();
    let limit = f.limit.unwrap_or(100).min(10_000);
    let orders = tokio::task::spawn_blocking(move || store.orders(status, limit))
        .await
        .map_err(|e| AdminError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(json!(orders)))
}

async fn show_order(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    let store = st.engine.store();
    let order = store
        .order(&id)?
        .ok_or_else(|| AdminError(StatusCode::NOT_FOUND, format!("no order {id}")))?;
    Ok(Json(
        json!({"order": order, "events": store.order_events(&id)?}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Refund {
    reason: String,
}

async fn refund_order(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    let req: Refund = parse_body(body)?;
    if req.reason.trim().is_empty() {
        return Err(AdminError(
            StatusCode::BAD_REQUEST,
            "a reason is required".into(),
        ));
    }
    use crate::billing::BillingError as B;
    match st.billing.refund(&id, req.reason.trim()).await {
        Ok((order, entry)) => {
            info!(order = %id, "admin: order refunded");
            Ok(Json(json!({"order": order, "debit": entry})))
        }
        Err(B::UnknownOrder(_)) => Err(AdminError(StatusCode::NOT_FOUND, format!("no order {id}"))),
        Err(B::State(m)) => Err(AdminError(StatusCode::CONFLICT, m)),
        Err(B::Provider(m)) => Err(AdminError(StatusCode::BAD_GATEWAY, m)),
        Err(B::Store(e)) => Err(e.into()),
        Err(e) => Err(AdminError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn zsxq_list(State(st): State<AppState>, headers: HeaderMap) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    let today = crate::zsxq::today(&st.engine);
    let groups: Vec<_> = st
        .zsxq
        .groups()
        .iter()
        .map(|g| g.status(st.engine.store(), today))
        .collect();
    Ok(Json(json!(groups)))
}

fn zsxq_group<'a>(
    st: &'a AppState,
    id: &str,
) -> Result<&'a std::sync::Arc<crate::zsxq::ZsxqGroup>> {
    st.zsxq
        .group(id)
        .ok_or_else(|| AdminError(StatusCode::NOT_FOUND, format!("no zsxq group {id}")))
}

async fn zsxq_pause(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    zsxq_group(&st, &id)?.set_paused(true);
    info!(group = %id, "admin: zsxq group paused");
    Ok(Json(json!({"paused": true})))
}

async fn zsxq_resume(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    zsxq_group(&st, &id)?.set_paused(false);
    info!(group = %id, "admin: zsxq group resumed");
    Ok(Json(json!({"paused": false})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZsxqToken {
    access_token: String,
}

async fn zsxq_token(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    let req: ZsxqToken = parse_body(body)?;
    if req.access_token.trim().is_empty() {
        return Err(AdminError(
            StatusCode::BAD_REQUEST,
            "access_token is empty".into(),
        ));
    }
    zsxq_group(&st, &id)?.set_token(req.access_token.trim());
    info!(group = %id, "admin: zsxq token replaced; polling resumes");
    Ok(Json(json!({"token_expired": false})))
}

/// Streams a consistent snapshot of the database (writers wait while it is taken).
async fn backup(State(st): State<AppState>, headers: HeaderMap) -> Result<Response> {
    check_admin(&st, &headers)?;
    let store = st.engine.store().clone();
    let dir = st.config.storage.path.join("backups");
    let path = dir.join(format!("backup-{}.tmp", crate::http::v1::random_id()));
    let tmp = path.clone();
    let summary = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
        let mut out = std::io::BufWriter::new(file);
        let written = store
            .export_backup(&mut out, now_ms())
            .map_err(|e| e.to_string())
            .and_then(|summary| {
                std::io::Write::flush(&mut out).map_err(|e| e.to_string())?;
                Ok(summary)
            });
        if written.is_err() {
            // A failed export leaves nothing behind.
            let _ = std::fs::remove_file(&tmp);
        }
        written
    })
    .await
    .map_err(|e| AdminError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| {
        AdminError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("backup failed: {e}"),
        )
    })?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| AdminError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    // The open file keeps its data; the name can go now.
    let _ = tokio::fs::remove_file(&path).await;
    info!(
        records = summary.records,
        bytes = summary.bytes,
        "admin: backup taken"
    );
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-ndjson"),
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&summary.records.to_string()) {
        h.insert("x-backup-records", v);
    }
    Ok(res)
}
