//! The OpenAI-compatible API: `POST /v1/chat/completions` (streamed or not) and
//! `GET /v1/models`. Bearer = a user token; every answer is metered by the engine.
//! Errors use OpenAI's shape, so the official SDKs raise their usual exceptions.

use std::convert::Infallible;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chatrelay_core::{FailureKind, Reply, ReplyEvent, Usage};
use chatrelay_openai::ChatRequest;
use chatrelay_storage::Uid;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::warn;

use super::AppState;
use crate::bot::{ApiRequest, now_ms};

/// The `/v1` routes.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
}

/// An error in OpenAI's wire shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    message: String,
    retry: bool,
}

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            message: message.into(),
            retry: true,
        }
    }

    fn no_retry(mut self) -> Self {
        self.retry = false;
        self
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            message,
        )
        .no_retry()
    }

    fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}})
    }

    /// The error for an engine failure.
    fn from_failure(kind: FailureKind, message: String) -> Self {
        use FailureKind as F;
        match kind {
            F::InsufficientQuota => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                Some("insufficient_quota"),
                message,
            )
            .no_retry(),
            F::RateLimited => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                Some("rate_limit_exceeded"),
                message,
            ),
            F::Banned => Self::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                Some("account_deactivated"),
                message,
            )
            .no_retry(),
            F::UnknownModel => Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found"),
                message,
            )
            .no_retry(),
            F::InvalidRequest | F::Duplicate => Self::invalid(message),
            F::Refused => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("content_filter"),
                message,
            )
            .no_retry(),
            F::NotAllowed => Self::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                Some("model_not_allowed"),
                message,
            )
            .no_retry(),
            // The engine already retried upstream; a client retry would only multiply load.
            F::Upstream => Self::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                Some("upstream_error"),
                message,
            )
            .no_retry(),
            F::Unavailable => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("service_unavailable"),
                message,
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(self.body())).into_response();
        if !self.retry {
            res.headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
        res
    }
}

/// Resolves the bearer user token to a uid.
pub fn authenticate(st: &AppState, headers: &HeaderMap) -> Result<Uid, ApiError> {
    let unauthorized = |m: &str| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            Some("invalid_api_key"),
            m,
        )
        .no_retry()
    };
    let token = super::bearer(headers).ok_or_else(|| {
        unauthorized("You didn't provide an API key. Send it as Authorization: Bearer <token>.")
    })?;
    match st.engine.store().token_uid(token, now_ms()) {
        Ok(Some(uid)) => Ok(uid),
        Ok(None) => Err(unauthorized("Incorrect API key provided.")),
        Err(e) => {
            warn!(error = %e, "token lookup failed");
            Err(ApiError::from_failure(
                FailureKind::Unavailable,
                "the service is temporarily unavailable".into(),
            ))
        }
    }
}

fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("request_too_large"),
            "The request body is too large.",
        )
        .no_retry()
    } else {
        ApiError::invalid(format!("Could not read the request body: {e}"))
    }
}

/// Parses and checks a chat request.
fn parse_request(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let req: ChatRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("Invalid JSON body: {e}")))?;
    if req.model.trim().is_empty() {
        return Err(ApiError::invalid("`model` must not be empty."));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "`messages` must contain at least one message.",
        ));
    }
    for (i, m) in req.messages.iter().enumerate() {
        if !matches!(
            m.role.as_str(),
            "system" | "developer" | "user" | "assistant" | "tool"
        ) {
            return Err(ApiError::invalid(format!(
                "messages[{i}].role {:?} is not one of system, developer, user, assistant, tool.",
                m.role
            )));
        }
        if !(m.content.is_string() || m.content.is_array() || m.content.is_null()) {
            return Err(ApiError::invalid(format!(
                "messages[{i}].content must be a string or an array of content parts."
            )));
        }
    }
    if req
        .extra
        .get("n")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 1)
    {
        return Err(ApiError::invalid("Only n = 1 is supported."));
    }
    Ok(req)
}

async fn chat_completions(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let uid = authenticate(&st, &headers)?;
    let body = body.map_err(body_error)?;
    let req = parse_request(&body)?;
    let stream = req.stream.unwrap_or(false);
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let reference = format!("api:{}", random_id());
    let mut extra = req.extra;
    if let Some(t) = req.temperature {
        extra.insert("temperature".into(), json!(t));
    }
    if let Some(u) = req.user {
        extra.insert("user".into(), json!(u));
    }
    let meta = Meta {
        id: format!("chatcmpl-{}", reference.trim_start_matches("api:")),
        created: now_ms() / 1000,
        model: req.model.clone(),
    };
    let mut reply = st.engine.complete(
        uid,
        ApiRequest {
            model: req.model,
            messages: req.messages,
            max_completion_tokens: req.max_completion_tokens,
            extra,
            reference,
            platform: if headers
                .get("x-chatrelay-client")
                .is_some_and(|v| v.as_bytes() == b"web")
            {
                chatrelay_core::Platform::Web
            } else {
                chatrelay_core::Platform::Api
            },
        },
    );
    // Failures before the first token become HTTP errors; later ones, stream errors.
    let first = match reply.next().await {
        Some(ReplyEvent::Failed { kind, message }) => {
            return Err(ApiError::from_failure(kind, message));
        }
        Some(event) => event,
        None => {
            return Err(ApiError::from_failure(
                FailureKind::Unavailable,
                "the answer was interrupted".into(),
            ));
        }
    };
    tracing::debug!(%request_id, stream, "completion started");
    if stream {
        Ok(stream_response(st, meta, first, reply, include_usage))
    } else {
        complete_response(meta, first, reply).await
    }
}

struct Meta {
    id: String,
    created: i64,
    model: String,
}

impl Meta {
    fn chunk(&self, choices: Value, usage: Option<&Usage>) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = usage_json(u);
        }
        v
    }

    fn delta(&self, delta: Value, finish: Option<&str>) -> Value {
        self.chunk(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]),
            None,
        )
    }
}

fn usage_json(u: &Usage) -> Value {
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total()})
}

async fn complete_response(
    meta: Meta,
    first: ReplyEvent,
    mut reply: Reply,
) -> Result<Response, ApiError> {
    let mut event = Some(first);
    loop {
        match event.take().or(reply.next().await) {
            Some(ReplyEvent::Delta(_)) => {}
            Some(ReplyEvent::Final { text, usage, .. }) => {
                let usage = usage.unwrap_or_default();
                let body = json!({
                    "id": meta.id,
                    "object": "chat.completion",
                    "created": meta.created,
                    "model": meta.model,
                    "system_fingerprint": null,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": null},
                        "logprobs": null,
                        "finish_reason": "stop",
                    }],
                    "usage": usage_json(&usage),
                });
                return Ok(Json(body).into_response());
            }
            Some(ReplyEvent::Failed { kind, message }) => {
                return Err(ApiError::from_failure(kind, message));
            }
            None => {
                return Err(ApiError::from_failure(
                    FailureKind::Unavailable,
                    "the answer was interrupted".into(),
                ));
            }
        }
    }
}

fn stream_response(
    st: AppState,
    meta: Meta,
    first: ReplyEvent,
    mut reply: Reply,
    include_usage: bool,
) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(32);
    let shutdown = st.shutdown.clone();
    // The pump owns the reply: when the client goes away the send fails, the reply is dropped
    // and the engine stops the upstream call.
    tokio::spawn(async move {
        metrics::gauge!("chatrelay_active_streams").increment(1.0);
        let data = |v: Value| Event::default().data(v.to_string());
        let mut ok = tx
            .send(data(meta.delta(
                json!({"role": "assistant", "content": "", "refusal": null}),
                None,
            )))
            .await
            .is_ok();
        let mut next = Some(first);
        // Answers the engine makes itself (keyword replies, pictures) come as one final event
        // with no deltas before it: their text is streamed as one piece.
        let mut streamed = false;
        while ok {
            let event = match next.take() {
                Some(e) => Some(e),
                None => tokio::select! {
                    e = reply.next() => e,
                    () = shutdown.cancelled() => {
                        let err = ApiError::from_failure(FailureKind::Unavailable, "the server is shutting down".into());
                        let _ = tx.send(data(err.body())).await;
                        break;
                    }
                },
            };
            match event {
                Some(ReplyEvent::Delta(d)) => {
                    streamed = true;
                    ok = tx
                        .send(data(meta.delta(json!({"content": d}), None)))
                        .await
                        .is_ok();
                }
                Some(ReplyEvent::Final { usage, text, .. }) => {
                    if !streamed && !text.is_empty() {
                        let _ = tx
                            .send(data(meta.delta(json!({"content": text}), None)))
                            .await;
                    }
                    let _ = tx.send(data(meta.delta(json!({}), Some("stop")))).await;
                    if include_usage {
                        let _ = tx
                            .send(data(
                                meta.chunk(json!([]), Some(&usage.unwrap_or_default())),
                            ))
                            .await;
                    }
                    let _ = tx.send(Event::default().data("[DONE]")).await;
                    break;
                }
                Some(ReplyEvent::Failed { kind, message }) => {
                    let _ = tx
                        .send(data(ApiError::from_failure(kind, message).body()))
                        .await;
                    break;
                }
                None => {
                    let err = ApiError::from_failure(
                        FailureKind::Unavailable,
                        "the answer was interrupted".into(),
                    );
                    let _ = tx.send(data(err.body())).await;
                    break;
                }
            }
        }
        metrics::gauge!("chatrelay_active_streams").decrement(1.0);
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    let mut res = Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response();
    res.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    res.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    res
}

async fn models(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authenticate(&st, &headers)?;
    let data: Vec<Value> = st
        .engine
        .settings()
        .models
        .iter()
        .map(|m| json!({"id": m.name, "object": "model", "created": 0, "owned_by": "chatrelay"}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

/// 16 random bytes in hex: unique references for ledger entries and response ids.
#[must_use]
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        // The OS RNG failing is not something to serve through; fall back to time + counter.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return format!("{:x}{n:x}", now_ms());
    }
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_validation() {
        assert!(parse_request(b"{").is_err());
        assert!(parse_request(b"[]").is_err());
        assert!(parse_request(br#"{"model":"m"}"#).is_err());
        assert!(parse_request(br#"{"model":"m","messages":[]}"#).is_err());
        assert!(
            parse_request(br#"{"model":"","messages":[{"role":"user","content":"x"}]}"#).is_err()
        );
        assert!(
            parse_request(br#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#)
                .is_err()
        );
        assert!(
            parse_request(br#"{"model":"m","messages":[{"role":"user","content":5}]}"#).is_err()
        );
        assert!(
            parse_request(br#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#)
                .is_err()
        );
        let ok = parse_request(
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"top_p":0.5}"#,
        )
        .unwrap();
        assert_eq!(ok.extra.get("top_p"), Some(&json!(0.5)));
    }

    #[test]
    fn quota_error_is_openai_shaped_and_final() {
        let res =
            ApiError::from_failure(FailureKind::InsufficientQuota, "no".into()).into_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers().get("x-should-retry").unwrap(), "false");
    }
}
