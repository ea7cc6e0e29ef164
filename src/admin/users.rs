//! Users: find and list, show, create, ban, link and unlink identities, groups.

use axum::Json;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chatrelay_core::UserKey;
use chatrelay_storage::{Balance, Store, StoreError, Uid, User};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use super::common::{AdminError, Answer, Body, Result, St, UidPath, existing_user};
use super::state::AppState;

/// `POST /admin/users`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    name: String,
}

/// Creates a user (`201` with the user).
pub async fn create_user(st: St, Body(req): Body<CreateUser>) -> Result<Response> {
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(AdminError::bad_request("name must be 1 to 100 characters"));
    }
    let user = st.engine.store().create_user(name).await?;
    info!(uid = %user.uid, "admin: user created");
    Ok((StatusCode::CREATED, Json(json!(user))).into_response())
}

/// `GET /admin/users/{uid}`.
#[derive(Deserialize)]
pub struct ShowQuery {
    /// How many of the newest ledger entries (default 20).
    ledger: Option<usize>,
}

/// A user with balance, identities, tokens, recent ledger and conversations.
pub async fn show_user(st: St, UidPath(uid): UidPath, Query(q): Query<ShowQuery>) -> Answer {
    let store = st.engine.store();
    let user = store
        .user(uid)
        .await?
        .ok_or_else(|| AdminError::no_user(uid))?;
    let s = st.engine.settings();
    let balance = store.balance(uid, s.today(), s.free_daily).await?;
    let identities = store.identities_of(uid).await?;
    // The engine keeps one conversation per identity (the web chat keeps its own in the
    // browser); the last few turns are what an admin needs to understand a complaint.
    let mut conversations = Vec::new();
    for key in &identities {
        let turns = store.conversation(&key.to_string()).await?;
        if turns.is_empty() {
            continue;
        }
        let recent: Vec<Value> = turns
            .iter()
            .rev()
            .take(RECENT_TURNS)
            .rev()
            .map(|t| json!({"role": t.role, "content": excerpt(&t.content, 300), "at_ms": t.at_ms}))
            .collect();
        conversations.push(json!({"key": key.to_string(), "turns": turns.len(), "recent": recent}));
    }
    let today = s.today();
    let plan = store.plan(uid).await?.map(|p| {
        json!({
            "id": p.id,
            "name": p.name,
            "daily_credits": p.daily_credits,
            "active": p.active_on(today),
            "days_left": p.days_left(today),
            "last_date": chatrelay_storage::date_of_day(p.last_day()),
        })
    });
    let tokens = store.tokens_of(uid).await?;
    let ledger = store
        .ledger(uid, q.ledger.unwrap_or(20).clamp(1, 100_000))
        .await?;
    Ok(Json(json!({
        "user": user,
        "balance": balance,
        "plan": plan,
        "identities": identities.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "tokens": tokens,
        "ledger": ledger,
        "conversations": conversations,
    })))
}

/// `GET /admin/users/{uid}/ledger`.
#[derive(Deserialize)]
pub struct LedgerQuery {
    /// Only entries with a lower seq (the `next` of the previous page).
    before: Option<u64>,
    /// Entries per page, 1 to 500 (default 50).
    limit: Option<usize>,
}

/// A page of the user's ledger, newest first, with `next` (the `before` of the next,
/// older page) or `null`; `404` for an unknown user.
pub async fn user_ledger(st: St, UidPath(uid): UidPath, Query(q): Query<LedgerQuery>) -> Answer {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(AdminError::bad_request(format!(
            "limit={limit} is not a number from 1 to 500"
        )));
    }
    let store = st.engine.store();
    existing_user(store, uid).await?;
    let (entries, next) = store.ledger_page(uid, q.before, limit).await?;
    Ok(Json(json!({"entries": entries, "next": next})))
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

/// `GET /admin/users`: a search with `q`, else a page of every user.
#[derive(Deserialize)]
pub struct FindQuery {
    #[serde(default)]
    q: String,
    limit: Option<usize>,
    /// Listing (no `q`): `active` (newest activity first, the default), `balance` (most
    /// available credits first), `uid`, `created` (newest first).
    sort: Option<String>,
    /// Listing: users to skip.
    offset: Option<usize>,
}

/// One user as a row of a list or a search: who, credits, identities, and `extra` (how the
/// row was found or when the user was last active).
async fn user_row(
    store: &Store,
    user: &User,
    balance: &Balance,
    extra: (&str, Value),
) -> std::result::Result<Value, StoreError> {
    let identities = store.identities_of(user.uid).await?;
    let mut row = json!({
        "uid": user.uid,
        "name": user.name,
        "banned": user.banned,
        "ban_reason": user.ban_reason,
        "created_at_ms": user.created_at_ms,
        "available": balance.available,
        "paid": balance.paid,
        "identities": identities.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    row[extra.0] = extra.1;
    Ok(row)
}

/// Lists every user, sorted and paged (`GET /admin/users` without `q`).
async fn list_users(st: AppState, f: FindQuery) -> Answer {
    let sort = f.sort.unwrap_or_else(|| "active".to_owned());
    if !matches!(sort.as_str(), "active" | "balance" | "uid" | "created") {
        return Err(AdminError::bad_request(format!(
            "sort {sort:?} is not one of active, balance, uid, created"
        )));
    }
    let limit = f.limit.unwrap_or(50).clamp(1, 500);
    let offset = f.offset.unwrap_or(0);
    let store = st.engine.store();
    let settings = st.engine.settings();
    let page = async {
        let mut rows = Vec::new();
        for a in store.user_activity().await? {
            let balance = store
                .balance(a.user.uid, settings.today(), settings.free_daily)
                .await?;
            rows.push((a, balance));
        }
        match sort.as_str() {
            "active" => {
                rows.sort_by_key(|(a, _)| (std::cmp::Reverse(a.last_active_ms), a.user.uid.0))
            }
            "balance" => rows.sort_by_key(|(a, b)| (std::cmp::Reverse(b.available), a.user.uid.0)),
            "created" => {
                rows.sort_by_key(|(a, _)| (std::cmp::Reverse(a.user.created_at_ms), a.user.uid.0))
            }
            _ => rows.sort_by_key(|(a, _)| a.user.uid.0),
        }
        let total = rows.len();
        let mut users = Vec::new();
        for (a, balance) in rows.into_iter().skip(offset).take(limit) {
            users.push(
                user_row(
                    store,
                    &a.user,
                    &balance,
                    ("last_active_ms", json!(a.last_active_ms)),
                )
                .await?,
            );
        }
        Ok::<_, StoreError>(
            json!({"total": total, "offset": offset, "limit": limit, "sort": sort, "users": users}),
        )
    }
    .await?;
    Ok(Json(page))
}

/// Finds users by uid, by a whole or partial platform key (`mp:main:o6_…`, a bare openid,
/// a Telegram id), by one of their tokens (a whole `sk-cr-…` token, or the start of its
/// hash as the user's page shows it, 6 hex characters or more) or by name; without `q`, lists them all (see [`list_users`]).
pub async fn find_users(st: St, Query(f): Query<FindQuery>) -> Answer {
    let q = f.q.trim().to_owned();
    if q.is_empty() {
        return list_users(st.0, f).await;
    }
    let limit = f.limit.unwrap_or(20).clamp(1, 500);
    let store = st.engine.store();
    let settings = st.engine.settings();
    let found = async {
        let mut out = Vec::new();
        for (uid, how) in matches(store, &q, limit).await? {
            let Some(user) = store.user(uid).await? else {
                continue;
            };
            let balance = store
                .balance(uid, settings.today(), settings.free_daily)
                .await?;
            out.push(user_row(store, &user, &balance, ("matched", json!(how))).await?);
        }
        Ok::<_, StoreError>(out)
    }
    .await?;
    Ok(Json(json!(found)))
}

/// The users `q` names, at most `limit`, each once with how it matched: by uid, by a whole
/// key, by part of a key, by name.
async fn matches(
    store: &Store,
    q: &str,
    limit: usize,
) -> std::result::Result<Vec<(Uid, String)>, StoreError> {
    let mut hits: Vec<(Uid, String)> = Vec::new();
    let push = |uid: Uid, how: String, hits: &mut Vec<(Uid, String)>| {
        if !hits.iter().any(|(u, _)| *u == uid) {
            hits.push((uid, how));
        }
    };
    if let Ok(n) = q.parse::<u64>()
        && store.user(Uid(n)).await?.is_some()
    {
        push(Uid(n), "uid".into(), &mut hits);
    }
    if let Ok(key) = q.parse::<UserKey>()
        && let Some(uid) = store.identity(&key).await?
    {
        push(uid, format!("key {key}"), &mut hits);
    }
    for (key, uid) in store.find_identities(q, limit).await? {
        push(uid, format!("key {key}"), &mut hits);
    }
    for (uid, hash) in store.find_tokens(q, limit).await? {
        push(uid, format!("token {hash}"), &mut hits);
    }
    for user in store.find_users_by_name(q, limit).await? {
        push(user.uid, "name".into(), &mut hits);
    }
    hits.truncate(limit);
    Ok(hits)
}

/// `POST /admin/users/{uid}/ban`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ban {
    banned: bool,
    /// Why (required to ban; kept on the user for other admins).
    #[serde(default)]
    reason: Option<String>,
}

/// Bans (with a reason) or unbans a user.
pub async fn ban(st: St, UidPath(uid): UidPath, Body(req): Body<Ban>) -> Answer {
    let reason = req
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    if req.banned && reason.is_none() {
        return Err(AdminError::bad_request("a reason is required to ban"));
    }
    let store = st.engine.store();
    let user = store.set_banned(uid, req.banned, reason).await?;
    store.flush().await?;
    info!(%uid, banned = req.banned, reason = reason.unwrap_or(""), "admin: ban changed");
    Ok(Json(json!(user)))
}

/// `POST /admin/users/{uid}/identities`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    key: String,
}

/// A platform key from outside: `400` with the parser's words unless it is one.
fn parse_key(raw: &str) -> Result<UserKey> {
    raw.parse()
        .map_err(|e| AdminError::bad_request(format!("{e}")))
}

/// Binds a platform identity to a user (taking it from its previous owner).
pub async fn link_identity(st: St, UidPath(uid): UidPath, Body(req): Body<Link>) -> Answer {
    let key = parse_key(&req.key)?;
    let store = st.engine.store();
    existing_user(store, uid).await?;
    let previous = store.link_identity(&key, uid).await?;
    info!(%uid, %key, "admin: identity linked");
    Ok(Json(
        json!({"key": key.to_string(), "uid": uid, "previous_uid": previous}),
    ))
}

/// Detaches a platform identity from the user who owns it.
pub async fn unlink_identity(
    st: St,
    UidPath(uid): UidPath,
    Path((_, key)): Path<(String, String)>,
) -> Answer {
    let key = parse_key(&key)?;
    let store = st.engine.store();
    match store.identity(&key).await? {
        Some(owner) if owner == uid => {}
        Some(owner) => {
            return Err(AdminError::conflict(format!(
                "{key} belongs to user {owner}, not {uid}"
            )));
        }
        None => return Err(AdminError::not_found(format!("{key} belongs to no user"))),
    }
    store.unlink_identity(&key).await?;
    store.flush().await?;
    info!(%uid, %key, "admin: identity unlinked");
    Ok(Json(
        json!({"key": key.to_string(), "uid": uid, "unlinked": true}),
    ))
}

/// `POST /admin/users/{uid}/groups`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Groups {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// Puts a user in groups or takes them out (models can be limited to groups).
pub async fn change_groups(st: St, UidPath(uid): UidPath, Body(req): Body<Groups>) -> Answer {
    let store = st.engine.store();
    let user = store.change_groups(uid, &req.add, &req.remove).await?;
    store.flush().await?;
    info!(%uid, groups = ?user.groups, "admin: groups changed");
    Ok(Json(json!(user)))
}
