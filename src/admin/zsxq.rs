//! zsxq groups: their state, pause and resume, a new access token without a restart.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use super::{AdminError, Body, Result, paths, require};
use crate::http::AppState;
use crate::zsxq::ZsxqGroup;

pub(super) fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route(paths::ZSXQ, get(zsxq_list))
        .route(paths::ZSXQ_PAUSE, post(|st, id| set_paused(st, id, true)))
        .route(paths::ZSXQ_RESUME, post(|st, id| set_paused(st, id, false)))
        .route(paths::ZSXQ_TOKEN, post(zsxq_token))
}

async fn zsxq_list(State(st): State<AppState>) -> Result<Json<Value>> {
    let today = crate::zsxq::today(&st.engine);
    let groups: Vec<_> = st
        .parts()
        .zsxq
        .groups()
        .iter()
        .map(|g| g.status(st.engine.store(), today))
        .collect();
    Ok(Json(json!(groups)))
}

fn zsxq_group(st: &AppState, id: &str) -> Result<Arc<ZsxqGroup>> {
    st.parts()
        .zsxq
        .group(id)
        .cloned()
        .ok_or_else(|| AdminError::not_found(format!("no zsxq group {id}")))
}

/// Stops (or starts again) answering a group's questions.
async fn set_paused(
    State(st): State<AppState>,
    Path(id): Path<String>,
    paused: bool,
) -> Result<Json<Value>> {
    zsxq_group(&st, &id)?.set_paused(paused);
    let what = if paused { "paused" } else { "resumed" };
    info!(group = %id, "admin: zsxq group {what}");
    Ok(Json(json!({"paused": paused})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZsxqToken {
    access_token: String,
}

async fn zsxq_token(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Body(req): Body<ZsxqToken>,
) -> Result<Json<Value>> {
    require(&req.access_token, "access_token is empty")?;
    zsxq_group(&st, &id)?.set_token(req.access_token.trim());
    info!(group = %id, "admin: zsxq token replaced; polling resumes");
    Ok(Json(json!({"token_expired": false})))
}
