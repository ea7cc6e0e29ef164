//! Paid credits by hand: grants and take-backs, each one ledger entry with the reason,
//! idempotent on its reference and flushed before the answer.

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use chatrelay_storage::EntryKind;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use super::{AdminError, Body, Result, UidPath, existing_user, paths, require};
use crate::http::AppState;
use crate::util::now_ms;

pub(super) fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route(paths::GRANT, post(grant))
        .route(paths::REVOKE, post(revoke_credits))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Grant {
    credits: u64,
    reason: String,
    /// Idempotency key; a retried request with the same reference grants once.
    reference: Option<String>,
}

async fn grant(st: State<AppState>, uid: UidPath, req: Body<Grant>) -> Result<Json<Value>> {
    change_credits(st, uid, req, true).await
}

/// Takes credits back (a mistaken grant, abuse): at most the paid credits not held by an
/// answer in progress.
async fn revoke_credits(
    st: State<AppState>,
    uid: UidPath,
    req: Body<Grant>,
) -> Result<Json<Value>> {
    change_credits(st, uid, req, false).await
}

/// Grants (`add`) or takes back paid credits.
async fn change_credits(
    State(st): State<AppState>,
    UidPath(uid): UidPath,
    Body(req): Body<Grant>,
    add: bool,
) -> Result<Json<Value>> {
    if req.credits == 0 {
        return Err(AdminError::bad_request("credits must be at least 1"));
    }
    require(&req.reason, "a reason is required")?;
    let prefix = if add { "admin" } else { "admin-revoke" };
    let reference = req
        .reference
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| format!("{prefix}:{}", crate::util::random_id()));
    let store = st.engine.store();
    existing_user(store, uid)?;
    let (reason, now) = (req.reason.trim(), now_ms());
    let entry = if add {
        store.grant(uid, req.credits, EntryKind::Grant, reason, &reference, now)?
    } else {
        store.debit(uid, req.credits, EntryKind::Adjust, reason, &reference, now)?
    };
    store.flush().await?;
    info!(%uid, credits = req.credits, %reference, add, "admin: credits changed");
    Ok(Json(json!(entry)))
}
