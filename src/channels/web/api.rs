//! The web page's account API: `POST /api/login` (a code from a chat platform for a user
//! token) and `GET /api/me`.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tracing::warn;

use super::error;
use crate::auth::LoginError;
use crate::channels::web::state::WebState;

/// The `/api` routes.
pub fn routes() -> axum::Router<WebState> {
    axum::Router::new()
        .route("/api/login", post(login))
        .route("/api/me", get(me))
}

#[derive(Deserialize)]
struct LoginRequest {
    code: String,
}

async fn login(
    State(st): State<WebState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Ok(body) = body else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_request",
            "the request body is too large",
        );
    };
    let Ok(req) = serde_json::from_slice::<LoginRequest>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "send {\"code\": \"K7QM-2XRT\"}",
        );
    };
    let ip = st.client_ip(peer, &headers);
    match st.login.sign_in(&st.engine, &req.code, ip).await {
        Ok(t) => {
            Json(json!({"token": t.token, "uid": t.uid, "expires_at": t.expires_at_ms / 1000}))
                .into_response()
        }
        Err(LoginError::BadCode) => {
            error(StatusCode::UNAUTHORIZED, "bad_code", "验证码错误或已过期")
        }
        Err(LoginError::Throttled) => error(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            "尝试次数过多，请稍后再试",
        ),
        Err(LoginError::Store(e)) => {
            warn!(error = %e, "login failed in the store");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "服务暂时不可用",
            )
        }
    }
}

async fn me(State(st): State<WebState>, headers: HeaderMap) -> Response {
    let uid = match super::v1::authenticate(&st, &headers).await {
        Ok(uid) => uid,
        Err(e) => return e.into_response(),
    };
    match st.engine.account(uid, 20).await {
        Ok(Some(account)) => {
            let usage: Vec<serde_json::Value> = account
                .recent
                .iter()
                .map(|e| {
                    json!({
                        "at": e.at_ms / 1000,
                        "kind": e.kind,
                        "free_delta": e.free_delta,
                        "paid_delta": e.paid_delta,
                        "reason": e.reason,
                    })
                })
                .collect();
            Json(json!({
                "uid": uid,
                "name": account.user.name,
                "balance": account.balance,
                "free_daily": account.free_daily,
                "plan": account.plan.as_ref().map(|p| super::plans::plan_json(p, account.today)),
                "usage": usage,
            }))
            .into_response()
        }
        Ok(None) => error(StatusCode::UNAUTHORIZED, "invalid_api_key", "no such user"),
        Err(e) => {
            warn!(error = %e, "reading the account failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "服务暂时不可用",
            )
        }
    }
}
