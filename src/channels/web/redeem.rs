//! `POST /api/redeem {"code": "XXXX-XXXX-XXXX-XXXX"}`: a signed-in user (the page's session
//! token, or any bearer token of the user) redeems a code; the answer says what was added and
//! the new balance. Wrong codes are limited per user and per client address
//! (see [`crate::codes`]).

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;

use super::error;
use crate::channels::web::state::WebState;
use crate::codes::RedeemError;

/// The route.
pub fn routes() -> axum::Router<WebState> {
    axum::Router::new().route("/api/redeem", post(redeem))
}

#[derive(Deserialize)]
struct RedeemRequest {
    code: String,
}

async fn redeem(
    State(st): State<WebState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (uid, req) = match super::authed_json::<RedeemRequest>(
        &st,
        &headers,
        body,
        "send {\"code\": \"XXXX-XXXX-XXXX-XXXX\"}",
    )
    .await
    {
        Ok(got) => got,
        Err(refused) => return *refused,
    };
    let ip = st.client_ip(peer, &headers);
    // On disk before it answers (the code is used and the credits are the user's).
    match st.engine.redeem_code(uid, &req.code, Some(ip)).await {
        Ok(r) => {
            let mut v = json!({
                "code": r.code,
                "added": {"credits": r.credits},
                "balance": r.balance,
            });
            // A plan code: what it granted, and the plan afterwards.
            if let Some(p) = &r.plan {
                v["added"]["plan"] = json!(p.id);
                v["plan"] = super::plans::plan_json(p, st.engine.settings().today());
            }
            Json(v).into_response()
        }
        Err(e) => {
            let status = match &e {
                RedeemError::Throttled => StatusCode::TOO_MANY_REQUESTS,
                RedeemError::Malformed => StatusCode::BAD_REQUEST,
                RedeemError::Unknown => StatusCode::NOT_FOUND,
                RedeemError::AlreadyUsed { .. } | RedeemError::Revoked => StatusCode::CONFLICT,
                RedeemError::Expired => StatusCode::GONE,
                RedeemError::PlanUnavailable => StatusCode::NOT_IMPLEMENTED,
                RedeemError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            error(status, e.code(), e.message())
        }
    }
}
