//! User tokens (for the web page and `/v1`): create one for a user, revoke one.

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use super::{AdminError, Body, OptionalBody, Result, UidPath, existing_user, paths};
use crate::http::AppState;
use crate::util::now_ms;

pub(super) fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route(paths::USER_TOKENS, post(create_token))
        .route(paths::TOKEN_REVOKE, post(revoke_token))
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

/// Creates a token (an empty body: no label, no expiry); the answer is the only place the
/// token is ever shown.
async fn create_token(
    State(st): State<AppState>,
    UidPath(uid): UidPath,
    OptionalBody(req): OptionalBody<CreateToken>,
) -> Result<Json<Value>> {
    let req = req.unwrap_or_default();
    let store = st.engine.store();
    existing_user(store, uid)?;
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

async fn revoke_token(State(st): State<AppState>, Body(req): Body<Revoke>) -> Result<Json<Value>> {
    let store = st.engine.store();
    let revoked = store.revoke_token(req.token.trim(), now_ms())?;
    store.flush().await?;
    if !revoked {
        return Err(AdminError::not_found("no such live token"));
    }
    info!("admin: token revoked");
    Ok(Json(json!({"revoked": true})))
}
