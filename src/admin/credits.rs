//! Paid credits by hand: grants and take-backs, each one ledger entry with the reason,
//! idempotent on its reference and flushed before the answer.

use axum::Json;
use chatrelay_storage::EntryKind;
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::common::{AdminError, Answer, Body, St, UidPath, existing_user, require};
use crate::util::now_ms;

/// A grant or a take-back.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    credits: u64,
    reason: String,
    /// Idempotency key; a retried request with the same reference grants once.
    reference: Option<String>,
}

/// Adds paid credits.
pub async fn grant(st: St, uid: UidPath, req: Body<Grant>) -> Answer {
    change_credits(st, uid, req, true).await
}

/// Takes credits back (a mistaken grant, abuse): at most the paid credits not held by an
/// answer in progress.
pub async fn revoke_credits(st: St, uid: UidPath, req: Body<Grant>) -> Answer {
    change_credits(st, uid, req, false).await
}

/// Grants (`add`) or takes back paid credits.
async fn change_credits(
    st: St,
    UidPath(uid): UidPath,
    Body(req): Body<Grant>,
    add: bool,
) -> Answer {
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
    existing_user(store, uid).await?;
    let (reason, now) = (req.reason.trim(), now_ms());
    let entry = if add {
        // A replayed reference returns the entry written the first time: counted once (two
        // replays racing each other could both count; these are figures, not credits).
        let replay = store.ledger_by_reference(&reference).await?.is_some();
        let entry = store
            .grant(uid, req.credits, EntryKind::Grant, reason, &reference, now)
            .await?;
        if !replay {
            let today = st.engine.settings().today();
            st.engine.stats().granted(today, req.credits);
        }
        entry
    } else {
        store
            .debit(uid, req.credits, EntryKind::Adjust, reason, &reference, now)
            .await?
    };
    store.flush().await?;
    info!(%uid, credits = req.credits, %reference, add, "admin: credits changed");
    Ok(Json(json!(entry)))
}
