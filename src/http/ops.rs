//! Operations endpoints: liveness, readiness and Prometheus metrics.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::admin::state::AppState;

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
    let store = st.engine.store();
    // Ready means the store answers and takes writes: a full disk makes sled refuse writes
    // while reads still work, and nearly every request writes. Writability is what the
    // store doctor's last probe found (every 2 s): probing here would wait out a backup.
    let checked = store.user(chatrelay_storage::Uid(0)).await.and_then(|_| {
        if store.last_probe_ok() {
            Ok(())
        } else {
            Err(chatrelay_storage::StoreError::InvalidInput(
                "the store refuses writes (disk full?); it is reopened when it takes them again"
                    .into(),
            ))
        }
    });
    match checked {
        Ok(()) => Json(json!({"status": "ready", "llm": st.engine.backend_name()})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "store failing", "error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn metrics_text(State(st): State<AppState>) -> Response {
    // Upstream health is a snapshot: refreshed on each scrape rather than on a timer.
    for h in st.engine.llm().health() {
        let state = match h.state {
            chatrelay_openai::router::UpstreamState::Up => 0.0,
            chatrelay_openai::router::UpstreamState::Degraded => 1.0,
            chatrelay_openai::router::UpstreamState::Down => 2.0,
        };
        metrics::gauge!("chatrelay_upstream_state", "upstream" => h.id.clone()).set(state);
        metrics::gauge!("chatrelay_upstream_error_rate", "upstream" => h.id.clone())
            .set(h.recent_error_rate);
        metrics::gauge!("chatrelay_upstream_consecutive_failures", "upstream" => h.id.clone())
            .set(f64::from(h.consecutive_failures));
        if let Some(ms) = h.latency_ms {
            metrics::gauge!("chatrelay_upstream_latency_ms", "upstream" => h.id.clone())
                .set(ms as f64);
        }
    }
    // Group-commit counters too, so that a benchmark can read them around a run.
    export_store_counters();
    match &st.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

/// Sets the store's group-commit and write-lane counters (read by `/metrics` and the
/// periodic gauges).
pub(crate) fn export_store_counters() {
    let (flushes, requests) = chatrelay_storage::flush_counts();
    metrics::counter!("chatrelay_store_flushes_total").absolute(flushes);
    metrics::counter!("chatrelay_store_flush_requests_total").absolute(requests);
    let (steps, step_secs, flush_secs) = chatrelay_storage::lane_counts();
    metrics::counter!("chatrelay_store_lane_steps_total").absolute(steps);
    metrics::gauge!("chatrelay_store_lane_step_seconds_total").set(step_secs);
    metrics::gauge!("chatrelay_store_lane_flush_seconds_total").set(flush_secs);
    metrics::counter!("chatrelay_store_statements_total")
        .absolute(chatrelay_storage::statement_count());
}
