//! User tokens (for the web page and `/v1`): create one for a user, revoke one.

use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::common::{AdminError, Answer, Body, OptionalBody, St, UidPath, existing_user};
use crate::util::now_ms;

/// `POST /admin/users/{uid}/tokens`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    #[serde(default)]
    label: String,
    /// Lifetime in days; none means until revoked.
    #[serde(default)]
    expires_in_days: Option<u32>,
}

/// Creates a token (an empty body: no label, no expiry); the answer is the only place the
/// token is ever shown.
pub async fn create_token(
    st: St,
    UidPath(uid): UidPath,
    OptionalBody(req): OptionalBody<CreateToken>,
) -> Answer {
    let req = req.unwrap_or_default();
    let store = st.engine.store();
    existing_user(store, uid).await?;
    let now = now_ms();
    let expires = req
        .expires_in_days
        .map(|d| now.saturating_add(i64::from(d) * 86_400_000));
    let token = store.create_token(uid, &req.label, expires, now).await?;
    store.flush().await?;
    info!(%uid, "admin: token created");
    Ok(Json(
        json!({"token": token, "uid": uid, "expires_at_ms": expires}),
    ))
}

/// `POST /admin/tokens/revoke`: `{"token"}` (the whole token), or `{"uid", "hash_prefix"}`
/// (one of the user's tokens as the user's page lists it: the console never sees a token).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoke {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    uid: Option<u64>,
    #[serde(default)]
    hash_prefix: Option<String>,
}

/// Revokes a live token.
pub async fn revoke_token(st: St, Body(req): Body<Revoke>) -> Answer {
    let store = st.engine.store();
    let revoked = match (req.token, req.uid, req.hash_prefix) {
        (Some(token), None, None) => store.revoke_token(token.trim(), now_ms()).await?,
        (None, Some(uid), Some(prefix)) => {
            let uid = chatrelay_storage::Uid(uid);
            existing_user(store, uid).await?;
            store.revoke_token_by_hash(uid, &prefix, now_ms()).await?
        }
        _ => {
            return Err(AdminError::bad_request(
                "give either token, or uid and hash_prefix",
            ));
        }
    };
    store.flush().await?;
    if !revoked {
        return Err(AdminError::not_found("no such live token"));
    }
    info!("admin: token revoked");
    Ok(Json(json!({"revoked": true})))
}
