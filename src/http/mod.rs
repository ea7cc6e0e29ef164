//! The HTTP surface, one axum router on one listener: `/v1` (OpenAI-compatible, metered),
//! `/admin` (bearer = admin token), `/api` (the web page's account API), `/wechat/mp`
//! (Official Account callbacks), `/wecom` (WeCom app and AI bot callbacks), `/pay` (payment
//! notifications), `/healthz`, `/readyz`, `/metrics`.
//!
//! Every request gets an `x-request-id` and a tracing span; bodies, heads, targets, time and
//! requests in flight are limited ([`limits`]); errors
//! keep the shape each caller expects (OpenAI's `{"error":{...}}` on `/v1`).

pub mod api;
pub mod limits;
pub mod mp;
pub mod ops;
pub mod pay;
pub mod v1;
pub mod wecom;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::bot::Engine;
use crate::util::addr;

/// Everything handlers need.
#[derive(Clone)]
pub struct AppState {
    /// The conversation engine (and through it, the store).
    pub engine: Engine,
    /// The configuration-derived parts (config, admin token, accounts, shop...), which a
    /// reload swaps; see [`crate::reload`].
    pub live: crate::reload::Live,
    /// Renders `/metrics`.
    pub metrics: Option<PrometheusHandle>,
    /// Fires when the daemon shuts down; open streams end on it.
    pub shutdown: CancellationToken,
    /// Login codes to tokens, with attempt limits.
    pub login: Arc<crate::auth::Login>,
    /// Limits guest sign-ups per address.
    pub guests: Arc<crate::web::GuestLimiter>,
    /// Largest request body accepted (fixed at start).
    pub body_limit: usize,
    /// Whether the chat page is served (fixed at start).
    pub web_page: bool,
}

impl AppState {
    /// The live parts now (see [`crate::reload::Live::get`]).
    #[must_use]
    pub fn parts(&self) -> Arc<crate::reload::Parts> {
        self.live.get()
    }

    /// The client's address, through the proxies `server.trusted_proxies` names (see
    /// [`addr::client_ip`]). Every per-address limit goes through here.
    #[must_use]
    pub fn client_ip(
        &self,
        peer: std::net::SocketAddr,
        headers: &axum::http::HeaderMap,
    ) -> std::net::IpAddr {
        let trusted = addr::parse_trusted(&self.parts().config.server.trusted_proxies);
        addr::client_ip(peer, headers, &trusted)
    }
}

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
    Router::new()
        .merge(crate::web::routes(page))
        .merge(v1::routes())
        .merge(crate::admin::routes(state.clone()))
        .merge(api::routes())
        .merge(mp::routes())
        .merge(pay::routes())
        .merge(wecom::routes())
        .merge(crate::telegram::routes())
        .merge(ops::routes())
        .with_state(state)
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

/// The bearer token of a request, if any.
#[must_use]
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer sk-1".parse().unwrap());
        assert_eq!(bearer(&h), Some("sk-1"));
        h.insert("authorization", "bearer  sk-2 ".parse().unwrap());
        assert_eq!(bearer(&h), Some("sk-2"));
        h.insert("authorization", "Basic xyz".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
