//! zsxq groups: their state, pause and resume, a new access token without a restart.

use std::sync::Arc;

use axum::Json;
use axum::extract::Path;
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::common::{AdminError, Answer, Body, Result, St, require};
use super::state::AppState;
use crate::channels::zsxq::ZsxqGroup;

/// Every zsxq group with its state.
pub async fn zsxq_list(st: St) -> Answer {
    let today = crate::channels::zsxq::today(&st.engine);
    let all: Vec<_> = st.parts().channels.zsxq.groups().to_vec();
    let mut groups = Vec::with_capacity(all.len());
    for g in &all {
        groups.push(g.status(&st.engine, today).await);
    }
    Ok(Json(json!(groups)))
}

fn zsxq_group(st: &AppState, id: &str) -> Result<Arc<ZsxqGroup>> {
    st.parts()
        .channels
        .zsxq
        .group(id)
        .cloned()
        .ok_or_else(|| AdminError::not_found(format!("no zsxq group {id}")))
}

/// Stops (or starts again) answering a group's questions.
pub async fn set_paused(st: St, Path(id): Path<String>, paused: bool) -> Answer {
    zsxq_group(&st, &id)?.set_paused(paused);
    let what = if paused { "paused" } else { "resumed" };
    info!(group = %id, "admin: zsxq group {what}");
    Ok(Json(json!({"paused": paused})))
}

/// `POST /admin/zsxq/{id}/token`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZsxqToken {
    access_token: String,
}

/// Replaces a group's access token; polling resumes.
pub async fn zsxq_token(st: St, Path(id): Path<String>, Body(req): Body<ZsxqToken>) -> Answer {
    require(&req.access_token, "access_token is empty")?;
    zsxq_group(&st, &id)?.set_token(req.access_token.trim());
    info!(group = %id, "admin: zsxq token replaced; polling resumes");
    Ok(Json(json!({"token_expired": false})))
}
