//! What the WeCom app and AI bot share: the answer to a callback that failed its checks.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chatrelay_wechat::CallbackError;
use tracing::warn;

/// Counts and logs a refused callback (`what`, for app or bot `id`) and answers it with the
/// status its error calls for.
pub fn refused(e: &CallbackError, what: &str, id: &str) -> Response {
    metrics::counter!("chatrelay_wecom_rejected_total").increment(1);
    warn!(%id, error = %e, "{what} refused");
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    (status, "refused").into_response()
}
