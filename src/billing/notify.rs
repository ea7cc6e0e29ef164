//! Payment notifications (`POST /pay/wechat/notify`, `POST /pay/alipay/notify`).
//!
//! Notifications are answered "received" only after the credit is on disk; each provider gets
//! the failure reply it expects (WeChat Pay: 4xx/5xx with `{"code":"FAIL"}`; Alipay: anything
//! but `success`), so it retries what we could not take.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;
use tracing::warn;

use super::{Billing, BillingError};
use crate::util::Current;

/// The payment notification routes, over the shop in force.
pub fn routes(billing: Current<Billing>) -> axum::Router {
    axum::Router::new()
        .route("/pay/wechat/notify", post(wechat_notify))
        .route("/pay/alipay/notify", post(alipay_notify))
        .with_state(billing)
}

fn wechat_fail(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"code": "FAIL", "message": message}))).into_response()
}

async fn wechat_notify(
    State(billing): State<Current<Billing>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Ok(body) = body else {
        return wechat_fail(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let h = chatrelay_wechat_pay::NotifyHeaders {
        timestamp: header("wechatpay-timestamp"),
        nonce: header("wechatpay-nonce"),
        signature: header("wechatpay-signature"),
        serial: header("wechatpay-serial"),
    };
    match billing.get().wechat_notify(&h, &body).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            let status = notify_status(&e);
            warn!(status = status.as_u16(), error = %e, "WeChat Pay notification refused");
            wechat_fail(status, "失败")
        }
    }
}

async fn alipay_notify(
    State(billing): State<Current<Billing>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Ok(body) = body else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "fail").into_response();
    };
    match billing.get().alipay_notify(&body).await {
        Ok(()) => "success".into_response(),
        Err(e) => {
            let status = notify_status(&e);
            warn!(status = status.as_u16(), error = %e, "Alipay notification refused");
            (status, "fail").into_response()
        }
    }
}

fn notify_status(e: &BillingError) -> StatusCode {
    match e {
        BillingError::Verification(_) => StatusCode::UNAUTHORIZED,
        BillingError::Mismatch(_) => StatusCode::BAD_REQUEST,
        BillingError::UnknownOrder(_) => StatusCode::NOT_FOUND,
        BillingError::ChannelUnavailable(_) => StatusCode::NOT_FOUND,
        // Ours to fix (store, provider): the provider will retry.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
