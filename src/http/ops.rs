//! Operations endpoints: liveness, readiness and Prometheus metrics.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::AppState;

/// The operations routes.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
}

/// Alive: the process answers HTTP.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// Ready: not shutting down, and the store answers.
async fn readyz(State(st): State<AppState>) -> Response {
    if st.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting down"})),
        )
            .into_response();
    }
    let store = st.engine.store().clone();
    match tokio::task::spawn_blocking(move || store.user(chatrelay_storage::Uid(0))).await {
        Ok(Ok(_)) => {
            Json(json!({"status": "ready", "llm": st.engine.backend_name()})).into_response()
        }
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "store failing", "error": e.to_string()})),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "store failing", "error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn metrics_text(State(st): State<AppState>) -> Response {
    match &st.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}
