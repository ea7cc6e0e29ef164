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

use super::state::AppState;
use crate::util::now_ms;

/// The `/admin` routes.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/admin/users", post(create_user).get(find_users))
        .route("/admin/users/{uid}", get(show_user))
        .route("/admin/users/{uid}/grant", post(grant))
        .route("/admin/users/{uid}/revoke", post(revoke_credits))
        .route("/admin/users/{uid}/ban", post(ban))
        .route("/admin/users/{uid}/tokens", post(create_token))
        .route("/admin/users/{uid}/identities", post(link_identity))
        .route(
            "/admin/users/{uid}/identities/{key}",
            axum::routing::delete(unlink_identity),
        )
        .route("/admin/stats", get(stats))
        .route("/admin/users/{uid}/groups", post(change_groups))
        .route("/admin/hits", get(content_hits))
        .route("/admin/upstreams", get(upstreams))
        .route("/admin/reload", post(reload))
        .route("/admin/orders.csv", get(export_orders))
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
            StoreError::Unsupported(m) => AdminError(StatusCode::NOT_IMPLEMENTED, m),
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

fn parse_body<T: DeserializeOwned>(body: std::result::Result<Bytes, BytesRejection>) -> Result<T> {
    let body = body.map_err(|e| AdminError(e.status(), e.body_text()))?;
    serde_json::from_slice(&body)
        .map_err(|e| AdminError(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

/// `400 message` when a required text field is blank.
fn require(value: &str, message: &str) -> Result<()> {
    if value.trim().is_empty() {
        Err(AdminError(StatusCode::BAD_REQUEST, message.to_owned()))
    } else {
        Ok(())
    }
}

/// A `YYYY-MM-DD` query parameter as a day number (absent or empty: `None`).
fn parse_day(name: &str, value: &Option<String>) -> Result<Option<i64>> {
    value
        .as_deref()
        .filter(|d| !d.trim().is_empty())
        .map(|d| {
            crate::stats::day_of(d).ok_or_else(|| {
                AdminError(
                    StatusCode::BAD_REQUEST,
                    format!("{name}={d:?} is not a date like 2026-11-27"),
                )
            })
        })
        .transpose()
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

#[derive(Deserialize)]
struct ShowQuery {
    /// How many of the newest ledger entries (default 20).
    ledger: Option<usize>,
}

async fn show_user(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(uid): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    let uid = parse_uid(&uid)?;
    let store = st.engine.store();
    let user = store
        .user(uid)?
        .ok_or_else(|| AdminError(StatusCode::NOT_FOUND, format!("no user {uid}")))?;
    let s = st.engine.settings();
    let balance = store.balance(uid, s.today(), s.free_daily)?;
    let identities = store.identities_of(uid)?;
    // The engine keeps one conversation per identity (the web chat keeps its own in the
    // browser); the last few turns are what an admin needs to understand a complaint.
    let mut conversations = Vec::new();
    for key in &identities {
        let turns = store.conversation(&key.to_string())?;
        if turns.is_empty() {
            continue;
        }
        let recent: Vec<Value> = turns
            .iter()
            .rev()
            .take(RECENT_TURNS)
            .rev()
            .map(|t| {
                json!({
                    "role": t.role,
                    "content": excerpt(&t.content, 300),
                    "at_ms": t.at_ms,
                })
            })
            .collect();
        conversations.push(json!({"key": key.to_string(), "turns": turns.len(), "recent": recent}));
    }
    Ok(Json(json!({
        "user": user,
        "balance": balance,
        "identities": identities.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "tokens": store.tokens_of(uid)?,
        "ledger": store.ledger(uid, q.ledger.unwrap_or(20).clamp(1, 100_000))?,
        "conversations": conversations,
    })))
}

/// Turns of each conversation shown by `show_user`.
const RECENT_TURNS: usize = 6;

/// The first `max` characters of `text`, with an ellipsis when cut.
fn excerpt(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

#[derive(Deserialize)]
struct FindQuery {
    #[serde(default)]
    q: String,
    limit: Option<usize>,
    /// Listing (no `q`): `active` (newest activity first, the default), `balance` (most
    /// available credits first), `uid`, `created` (newest first).
    sort: Option<String>,
    /// Listing: users to skip.
    offset: Option<usize>,
}

/// Lists every user, sorted and paged (`GET /admin/users` without `q`).
async fn list_users(st: AppState, f: FindQuery) -> Result<Json<Value>> {
    let sort = f.sort.unwrap_or_else(|| "active".to_owned());
    if !matches!(sort.as_str(), "active" | "balance" | "uid" | "created") {
        return Err(AdminError(
            StatusCode::BAD_REQUEST,
            format!("sort {sort:?} is not one of active, balance, uid, created"),
        ));
    }
    let limit = f.limit.unwrap_or(50).clamp(1, 500);
    let offset = f.offset.unwrap_or(0);
    let store = st.engine.store().clone();
    let settings = st.engine.settings();
    let page = tokio::task::spawn_blocking(move || -> std::result::Result<Value, StoreError> {
        let mut rows = Vec::new();
        for a in store.user_activity()? {
            let balance = store.balance(a.user.uid, settings.today(), settings.free_daily)?;
            rows.push((a, balance));
        }
        match sort.as_str() {
            "active" => rows.sort_by_key(|(a, _)| (std::cmp::Reverse(a.last_active_ms), a.user.uid.0)),
            "balance" => rows.sort_by_key(|(a, b)| (std::cmp::Reverse(b.available), a.user.uid.0)),
            "created" => rows.sort_by_key(|(a, _)| (std::cmp::Reverse(a.user.created_at_ms), a.user.uid.0)),
            _ => rows.sort_by_key(|(a, _)| a.user.uid.0),
        }
        let total = rows.len();
        let mut users = Vec::new();
        for (a, balance) in rows.into_iter().skip(offset).take(limit) {
            let uid = a.user.uid;
            users.push(json!({
                "uid": uid,
                "name": a.user.name,
                "banned": a.user.banned,
                "ban_reason": a.user.ban_reason,
                "created_at_ms": a.user.created_at_ms,
                "last_active_ms": a.last_active_ms,
                "available": balance.available,
                "paid": balance.paid,
                "identities": store.identities_of(uid)?.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }));
        }
        Ok(json!({"total": total, "offset": offset, "limit": limit, "sort": sort, "users": users}))
    })
    .await
    .map_err(|e| AdminError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(page))
}

/// Finds users by uid, by a whole or partial platform key (`mp:main:o6_…`, a bare openid,
/// a Telegram id) or by name; without `q`, lists them all (see [`list_users`]).
async fn find_users(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(f): Query<FindQuery>,
) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    let q = f.q.trim().to_owned();
    if q.is_empty() {
        return list_users(st, f).await;
    }
    let limit = f.limit.unwrap_or(20).clamp(1, 500);
    let store = st.engine.store().clone();
    let settings = st.engine.settings();
    let found = tokio::task::spawn_blocking(move || -> std::result::Result<Vec<Value>, StoreError> {
        let mut hits: Vec<(Uid, String)> = Vec::new();
        let push = |uid: Uid, how: String, hits: &mut Vec<(Uid, String)>| {
            if !hits.iter().any(|(u, _)| *u == uid) {
                hits.push((uid, how));
            }
        };
        if let Ok(n) = q.parse::<u64>()
            && store.user(Uid(n))?.is_some()
        {
            push(Uid(n), "uid".into(), &mut hits);
        }
        if let Ok(key) = q.parse::<UserKey>()
            && let Some(uid) = store.identity(&key)?
        {
            push(uid, format!("key {key}"), &mut hits);
        }
        for (key, uid) in store.find_identities(&q, limit)? {
            push(uid, format!("key {key}"), &mut hits);
        }
        for user in store.find_users_by_name(&q, limit)? {
            push(user.uid, "name".into(), &mut hits);
        }
        hits.truncate(limit);
        let mut out = Vec::new();
        for (uid, how) in hits {
            let Some(user) = store.user(uid)? else { continue };
            let balance = store.balance(uid, settings.today(), settings.free_daily)?;
            out.push(json!({
                "uid": uid,
                "name": user.name,
                "banned": user.banned,
                "ban_reason": user.ban_reason,
                "created_at_ms": user.created_at_ms,
                "available": balance.available,
                "paid": balance.paid,
                "identities": store.identities_of(uid)?.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "matched": how,
            }));
        }
        Ok(out)
    })
    .await
    .map_err(|e| AdminError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(json!(found)))
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
    change_credits(&st, &headers, &uid, body, true).await
}

/// Takes credits back (a mistaken grant, abuse): at most the paid credits not held by an
/// answer in progress; a ledger entry with the reason, idempotent on its reference.
async fn revoke_credits(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(uid): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<Value>> {
    change_credits(&st, &headers, &uid, body, false).await
}

/// Grants (`add`) or takes back paid credits: one ledger entry with the reason, idempotent on
/// its reference, flushed before the answer.
async fn change_credits(
    st: &AppState,
    headers: &HeaderMap,
    uid: &str,
    body: std::result::Result<Bytes, BytesRejection>,
    add: bool,
) -> Result<Json<Value>> {
    check_admin(st, headers)?;
    let uid = parse_uid(uid)?;
    let req: Grant = parse_body(body)?;
    if req.credits == 0 {
        return Err(AdminError(
            StatusCode::BAD_REQUEST,
            "credits must be at least 1".into(),
        ));
    }
    require(&req.reason, "a reason is required")?;
    let prefix = if add { "admin" } else { "admin-revoke" };
    let reference = req
        .reference
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| format!("{prefix}:{}", crate::util::random_id()));
    let store = st.engine.store();
    if store.user(uid)?.is_none() {
        return Err(AdminError(StatusCode::NOT_FOUND, format!("no user {uid}")));
    }
    let (kind, reason, now) = (
        if add {
            EntryKind::Grant
        } else {
            EntryKind::Adjust
        },
        req.reason.trim(),
        now_ms(),
    );
    let entry = if add {
        store.grant(uid, req.credits, kind, reason, &reference, now)?
    } else {
        store.debit(uid, req.credits, kind, reason, &reference, now)?
    };
    store.flush().await?;
    info!(%uid, credits = req.credits, %reference, add, "admin: credits changed");
    Ok(Json(json!(entry)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ban {
    banned: bool,
    /// Why (required to ban; kept on the user for other admins).
    #[serde(default)]
    reason: Option<String>,
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
    let reason = req
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    if req.banned && reason.is_none() {
        return Err(AdminError(
            StatusCode::BAD_REQUEST,
            "a reason is required to ban".into(),
        ));
    }
    let user = st.engine.store().set_banned(uid, req.banned, reason)?;
    st.engine.store().flush().await?;
    info!(%uid, banned = req.banned, reason = reason.unwrap_or(""), "admin: ban changed");
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Groups {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// Puts a user in groups or takes them out (models can be limited to groups).
async fn change_groups(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(uid): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    let uid = parse_uid(&uid)?;
    let req: Groups = parse_body(body)?;
    let store = st.engine.store();
    let user = store.change_groups(uid, &req.add, &req.remove)?;
    store.flush().await?;
    info!(%uid, groups = ?user.groups, "admin: groups changed");
    Ok(Json(json!(user)))
}

#[derive(Deserialize)]
struct HitsQuery {
    limit: Option<usize>,
    uid: Option<u64>,
}

/// Content-rule hits, newest first: who, where, which rule, what.
async fn content_hits(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HitsQuery>,
) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    let store = st.engine.store().clone();
    let limit = q.limit.unwrap_or(50).clamp(1, 10_000);
    let hits = tokio::task::spawn_blocking(move || {
        store
            .checkpoints_with_prefix(crate::bot::HIT_PREFIX)
            .map(|all| {
                all.into_iter()
                    .rev()
                    .filter_map(|(_, v)| serde_json::from_str::<Value>(&v).ok())
                    .filter(|v| q.uid.is_none_or(|u| v["uid"].as_u64() == Some(u)))
                    .take(limit)
                    .collect::<Vec<_>>()
            })
    })
    .await
    .map_err(|e| AdminError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(json!(hits)))
}

/// Each LLM upstream's health: requests, errors, latency, state.
async fn upstreams(State(st): State<AppState>, headers: HeaderMap) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    Ok(Json(json!(st.engine.llm().health())))
}

async fn unlink_identity(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((uid, key)): Path<(String, String)>,
) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    let uid = parse_uid(&uid)?;
    let key: UserKey = key
        .parse()
        .map_err(|e| AdminError(StatusCode::BAD_REQUEST, format!("{e}")))?;
    let store = st.engine.store();
    match store.identity(&key)? {
        Some(owner) if owner == uid => {}
        Some(owner) => {
            return Err(AdminError(
                StatusCode::CONFLICT,
                format!("{key} belongs to user {owner}, not {uid}"),
            ));
        }
        None => {
            return Err(AdminError(
                StatusCode::NOT_FOUND,
                format!("{key} belongs to no user"),
            ));
        }
    }
    store.unlink_identity(&key)?;
    store.flush().await?;
    info!(%uid, %key, "admin: identity unlinked");
    Ok(Json(
        json!({"key": key.to_string(), "uid": uid, "unlinked": true}),
    ))
}

#[derive(Deserialize)]
struct StatsQuery {
    /// First day, `YYYY-MM-DD` (default: `days` before `to`).
    from: Option<String>,
    /// Last day, `YYYY-MM-DD` (default: today).
    to: Option<String>,
    /// How many days up to `to` when `from` is not given (default 7).
    days: Option<u32>,
}

/// Per-day figures: active users, messages by platform, tokens, LLM cost, revenue.
async fn stats(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<StatsQuery>,
) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    let s = st.engine.settings();
    let to = parse_day("to", &q.to)?.unwrap_or_else(|| s.today());
    let from = match parse_day("from", &q.from)? {
        Some(f) => f,
        None => to - i64::from(q.days.unwrap_or(7).clamp(1, 366)) + 1,
    };
    if from > to || to - from > 366 {
        return Err(AdminError(
            StatusCode::BAD_REQUEST,
            "give at most 366 days, from before to".into(),
        ));
    }
    let engine = st.engine.clone();
    let report = tokio::task::spawn_blocking(move || {
        // What is still in memory belongs in the figures.
        engine.stats().flush(engine.store())?;
        let days: Vec<i64> = (from..=to).collect();
        crate::stats::report(engine.store(), &days, &s.models, s.tz_offset_secs)
    })
    .await
    .map_err(|e| AdminError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(json!(report)))
}

/// Reads the configuration file again and applies it (like SIGHUP). An invalid file is
/// refused with every problem listed, and the running configuration stays.
async fn reload(State(st): State<AppState>, headers: HeaderMap) -> Result<Response> {
    check_admin(&st, &headers)?;
    match st.live.reload().await {
        Ok(report) => Ok(Json(json!(report)).into_response()),
        Err(crate::reload::ReloadError::Invalid(e)) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "error": "the new configuration is invalid; the running one stays",
                "problems": e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })),
        )
            .into_response()),
        Err(e) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "error": "the new configuration cannot be applied; the running one stays",
                "problems": [e.to_string()],
            })),
        )
            .into_response()),
    }
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
    /// Created on or after this day (`YYYY-MM-DD`, quota timezone).
    from: Option<String>,
    /// Created on or before this day.
    to: Option<String>,
    /// Only this user's orders.
    uid: Option<u64>,
}

/// The orders a filter selects, newest first.
async fn select_orders(
    st: &AppState,
    f: OrderFilter,
    default_limit: usize,
) -> Result<Vec<chatrelay_storage::Order>> {
    let status = match f.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(chatrelay_storage::OrderStatus::parse(s).ok_or_else(|| {
            AdminError(
                StatusCode::BAD_REQUEST,
                format!("status {s:?} is not one of created, credited, closed, refunded"),
            )
        })?),
    };
    let (from, to) = (parse_day("from", &f.from)?, parse_day("to", &f.to)?);
    let tz = st.engine.settings().tz_offset_secs;
    let store = st.engine.store().clone();
    let limit = f.limit.unwrap_or(default_limit).min(1_000_000);
    let uid = f.uid;
    tokio::task::spawn_blocking(move || {
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
    .map_err(|e| AdminError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(Into::into)
}

/// Orders as CSV (UTF-8 with a BOM, which Excel needs to read Chinese product names).
async fn export_orders(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(f): Query<OrderFilter>,
) -> Result<Response> {
    check_admin(&st, &headers)?;
    let orders = select_orders(&st, f, usize::MAX).await?;
    let mut out = String::from(
        "\u{feff}id,uid,product_id,product_name,channel,amount_fen,amount_yuan,credits,status,created_at,credited_at,refunded_at,provider_trade_no\r\n",
    );
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
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/csv; charset=utf-8"),
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

async fn list_orders(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(f): Query<OrderFilter>,
) -> Result<Json<Value>> {
    check_admin(&st, &headers)?;
    let orders = select_orders(&st, f, 100).await?;
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
    require(&req.reason, "a reason is required")?;
    use crate::billing::BillingError as B;
    match st.parts().billing.refund(&id, req.reason.trim()).await {
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
    let today = crate::channels::zsxq::today(&st.engine);
    let groups: Vec<_> = st
        .parts()
        .channels
        .zsxq
        .groups()
        .iter()
        .map(|g| g.status(st.engine.store(), today))
        .collect();
    Ok(Json(json!(groups)))
}

fn zsxq_group(st: &AppState, id: &str) -> Result<std::sync::Arc<crate::channels::zsxq::ZsxqGroup>> {
    st.parts()
        .channels
        .zsxq
        .group(id)
        .cloned()
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
    require(&req.access_token, "access_token is empty")?;
    zsxq_group(&st, &id)?.set_token(req.access_token.trim());
    info!(group = %id, "admin: zsxq token replaced; polling resumes");
    Ok(Json(json!({"token_expired": false})))
}

/// Streams a consistent snapshot of the database: it is written to a temporary file (writers
/// wait only the instant the snapshot starts, see `Store::export_backup`), then sent.
async fn backup(State(st): State<AppState>, headers: HeaderMap) -> Result<Response> {
    check_admin(&st, &headers)?;
    let store = st.engine.store().clone();
    let dir = st.parts().config.storage.path.join("backups");
    let path = dir.join(format!("backup-{}.tmp", crate::util::random_id()));
    let tmp = path.clone();
    let failed = |e: String| {
        AdminError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("backup failed: {e}"),
        )
    };
    let summary = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|e| failed(e.to_string()))?;
        let file = std::fs::File::create(&tmp).map_err(|e| failed(e.to_string()))?;
        let mut out = std::io::BufWriter::new(file);
        let written = match store.export_backup(&mut out, now_ms()) {
            // Not for this store (PostgreSQL): the store's own words, and its status.
            Err(e @ StoreError::Unsupported(_)) => Err(AdminError::from(e)),
            Err(e) => Err(failed(e.to_string())),
            Ok(summary) => std::io::Write::flush(&mut out)
                .map(|()| summary)
                .map_err(|e| failed(e.to_string())),
        };
        if written.is_err() {
            // A failed export leaves nothing behind.
            let _ = std::fs::remove_file(&tmp);
        }
        written
    })
    .await
    .map_err(|e| AdminError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
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
