//! The HTTP surface, one axum router on one listener. It merges the channels' routes
//! ([`crate::channels::router`]: `/`, `/api`, `/v1`, `/wechat/mp`, `/wecom`, `/telegram`) and
//! billing's (`/pay`, payment notifications) with its own: `/admin` (bearer = admin token),
//! `/healthz`, `/readyz`, `/metrics`.
//!
//! Every request gets an `x-request-id` and a tracing span; bodies, heads, targets, time and
//! requests in flight are limited ([`limits`]); errors
//! keep the shape each caller expects (OpenAI's `{"error":{...}}` on `/v1`).

pub mod assets;
pub mod limits;
pub mod ops;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

pub use crate::admin::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids: a per-process random prefix and a counter, cheap and unique enough to
/// correlate logs.
#[derive(Clone)]
struct RequestIds {
    prefix: Arc<str>,
    counter: Arc<AtomicU64>,
}

impl RequestIds {
    fn new() -> Self {
        let mut bytes = [0u8; 4];
        // A fixed prefix only costs uniqueness across restarts, not correctness.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
        Self {
            prefix: hex::encode(bytes).into(),
            counter: Arc::new(AtomicU64::new(1)),
        }
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("req-{}-{n}", self.prefix)
            .parse()
            .ok()
            .map(RequestId::new)
    }
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let limit = state.body_limit;
    let page = state.web_page;
    let limits = limits::Limits::new(state.live.clone());
    let channels = crate::channels::router(state.channels.clone(), page);
    let notify = crate::billing::notify::routes(state.live.billing());
    Router::new()
        .merge(crate::admin::routes(state.clone()))
        .merge(ops::routes())
        .merge(crate::console::routes())
        .with_state(state)
        .merge(channels)
        .merge(notify)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(limits, limits::limit))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let id = req
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
                })
                .on_response(
                    |res: &axum::response::Response, latency: Duration, _span: &tracing::Span| {
                        metrics::counter!("chatrelay_http_responses_total", "status" => res.status().as_u16().to_string())
                            .increment(1);
                        tracing::debug!(status = res.status().as_u16(), ms = latency.as_millis() as u64, "response");
                    },
                ),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, RequestIds::new()))
}
