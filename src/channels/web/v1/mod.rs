//! The OpenAI-compatible API: `POST /v1/chat/completions` (streamed or not),
//! `GET /v1/models` and `GET /v1/models/{id}`. Bearer = a user token; every answer is metered
//! by the engine. Errors use OpenAI's shape (every 404 and 405 under `/v1` too), in one
//! language per request, so the official SDKs raise their usual exceptions.
//!
//! Delivery and money: an answer is charged (durably) before it leaves; a non-streamed answer
//! that cannot reach its reader after that is refunded (`answer::Delivery`), and errors a retry
//! could charge twice for carry `x-should-retry: false`.
//!
//! Parts: this file (routes, authentication, the completion handler, models), `request`
//! (reading and checking a request), `answer` (sending it whole or streamed), `error`
//! (OpenAI-shaped errors and the request's language), `audio` (`/v1/audio/transcriptions`,
//! `/v1/audio/speech`).

use std::sync::OnceLock;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use chatrelay_core::{FailureKind, ReplyEvent};
use chatrelay_storage::Uid;
use serde_json::{Value, json};
use tracing::warn;

mod answer;
mod audio;
mod error;
mod request;
#[cfg(test)]
mod tests;

use answer::*;
use error::*;
pub use error::{ApiError, Lang};
use request::*;

use crate::channels::web::state::WebState;
use crate::engine::ApiRequest;
use crate::util::{now_ms, random_id};

/// When the daemon started, in seconds: the `created` of every model it lists.
static STARTED: OnceLock<i64> = OnceLock::new();

/// The `/v1` routes, with OpenAI-shaped answers for unknown paths and wrong methods.
pub fn routes() -> axum::Router<WebState> {
    STARTED.get_or_init(|| now_ms() / 1000);
    axum::Router::new()
        .route(
            "/v1/chat/completions",
            post(chat_completions).fallback(wrong_method),
        )
        .route(
            "/v1/audio/transcriptions",
            post(audio::transcriptions).fallback(wrong_method),
        )
        .route(
            "/v1/audio/speech",
            post(audio::speech).fallback(wrong_method),
        )
        .route("/v1/models", get(models).fallback(wrong_method))
        .route("/v1/models/{id}", get(model).fallback(wrong_method))
        .route("/v1", any(unknown_path))
        .route("/v1/", any(unknown_path))
        .route("/v1/{*rest}", any(unknown_path))
}

/// Resolves the bearer user token to a uid.
pub async fn authenticate(st: &WebState, headers: &HeaderMap) -> Result<Uid, ApiError> {
    let lang = Lang::of_request(headers, &st.engine.settings().texts);
    let unauthorized = |m: String| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            Some("invalid_api_key"),
            m,
        )
        .no_retry()
    };
    let token = crate::auth::bearer(headers).ok_or_else(|| {
        unauthorized(lang.pick(
            "You didn't provide an API key. Send it as Authorization: Bearer <token>.",
            "没有提供 API 密钥，请以 Authorization: Bearer <token> 发送。",
        ))
    })?;
    match crate::auth::token_user(&st.engine, token).await {
        Ok(Some(uid)) => Ok(uid),
        Ok(None) => Err(unauthorized(
            lang.pick("Incorrect API key provided.", "API 密钥不正确。"),
        )),
        Err(e) => {
            warn!(error = %e, "token lookup failed");
            Err(ApiError::from_failure(
                lang,
                FailureKind::Unavailable,
                String::new(),
            ))
        }
    }
}

async fn chat_completions(
    State(st): State<WebState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let lang = Lang::of_request(&headers, &st.engine.settings().texts);
    let uid = authenticate(&st, &headers).await?;
    let body = body.map_err(|e| body_error(lang, &e))?;
    let Parsed {
        req,
        cap,
        legacy_cap,
    } = parse_request(lang, &body)?;
    if st.engine.settings().model(&req.model).is_none() {
        return Err(unknown_model(lang, &req.model));
    }
    let stream = req.stream.unwrap_or(false);
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let reference = format!("api:{}", random_id());
    let meta = Meta {
        id: format!("chatcmpl-{}", reference.trim_start_matches("api:")),
        created: now_ms() / 1000,
        model: req.model.clone(),
        lang,
    };
    let request = api_request(req, cap, legacy_cap, stream, &reference, &headers);
    let reply = st.engine.complete(uid, request);
    let mut reply = Delivery {
        reply,
        engine: st.engine.clone(),
        uid,
        reference,
        refund_lost: !stream,
        finished: false,
    };
    // Failures before the first token become HTTP errors; later ones, stream errors.
    let first = match reply.next().await {
        Some(ReplyEvent::Failed { kind, message }) => {
            return Err(failure(st.shutdown.is_cancelled(), lang, kind, message));
        }
        Some(event) => event,
        None => return Err(interrupted(st.shutdown.is_cancelled(), lang)),
    };
    tracing::debug!(%request_id, stream, "completion started");
    if stream {
        Ok(stream_response(st, meta, first, reply, include_usage))
    } else {
        complete_response(&st.shutdown, meta, first, reply).await
    }
}

/// Streams an engine reply to the page as `/v1` streams do (OpenAI chat-completion chunks,
/// then `[DONE]`), for answers the web channel starts itself (a platform conversation
/// continued on the page, `chats.rs`). A failure before the first piece
/// is an OpenAI-shaped HTTP error; the reader pays for the pieces it was sent.
pub(super) async fn stream_reply(
    st: WebState,
    headers: &HeaderMap,
    uid: Uid,
    reference: String,
    model: String,
    reply: chatrelay_core::Reply,
) -> Result<Response, ApiError> {
    let lang = Lang::of_request(headers, &st.engine.settings().texts);
    let meta = Meta {
        id: format!("chatcmpl-{}", random_id()),
        created: now_ms() / 1000,
        model,
        lang,
    };
    let mut reply = Delivery {
        reply,
        engine: st.engine.clone(),
        uid,
        reference,
        refund_lost: false,
        finished: false,
    };
    let first = match reply.next().await {
        Some(ReplyEvent::Failed { kind, message }) => {
            return Err(failure(st.shutdown.is_cancelled(), lang, kind, message));
        }
        Some(event) => event,
        None => return Err(interrupted(st.shutdown.is_cancelled(), lang)),
    };
    Ok(stream_response(st, meta, first, reply, false))
}

/// The error for a model that is not configured.
fn unknown_model(lang: Lang, model: &str) -> ApiError {
    ApiError::from_failure(lang, FailureKind::UnknownModel, String::new()).message(lang.pick(
        format!("The model `{model}` does not exist."),
        format!("模型 `{model}` 不存在。"),
    ))
}

/// What the engine is asked: `req` with its caps, `temperature` and `user` passed on as extra
/// fields, billed under `reference`, from the web page or an API client (by its header).
fn api_request(
    req: chatrelay_openai::ChatRequest,
    cap: Option<u32>,
    legacy_cap: bool,
    streamed: bool,
    reference: &str,
    headers: &HeaderMap,
) -> ApiRequest {
    let mut extra = req.extra;
    if let Some(t) = req.temperature {
        extra.insert("temperature".into(), json!(t));
    }
    if let Some(u) = req.user {
        extra.insert("user".into(), json!(u));
    }
    ApiRequest {
        model: req.model,
        messages: req.messages,
        max_completion_tokens: cap,
        legacy_max_tokens: legacy_cap,
        streamed,
        extra,
        reference: reference.to_owned(),
        platform: if headers
            .get("x-chatrelay-client")
            .is_some_and(|v| v.as_bytes() == b"web")
        {
            chatrelay_core::Platform::Web
        } else {
            chatrelay_core::Platform::Api
        },
    }
}

fn model_object(name: &str) -> Value {
    json!({"id": name, "object": "model", "created": STARTED.get().copied().unwrap_or(0), "owned_by": "chatrelay"})
}

async fn models(State(st): State<WebState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authenticate(&st, &headers).await?;
    let data: Vec<Value> = st
        .engine
        .settings()
        .models
        .iter()
        .map(|m| model_object(&m.name))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

async fn model(
    State(st): State<WebState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate(&st, &headers).await?;
    let settings = st.engine.settings();
    match settings.model(&id) {
        Some(m) => Ok(Json(model_object(&m.name)).into_response()),
        None => {
            let lang = Lang::of_request(&headers, &settings.texts);
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found"),
                lang.pick(
                    format!("The model `{id}` does not exist."),
                    format!("模型 `{id}` 不存在。"),
                ),
            )
            .param("model")
            .no_retry())
        }
    }
}

/// Any other path under `/v1`: OpenAI's 404.
async fn unknown_path(
    State(st): State<WebState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiError {
    route_error(&st, StatusCode::NOT_FOUND, &method, &uri, &headers)
}

/// A known `/v1` path with the wrong method: OpenAI's 405.
async fn wrong_method(
    State(st): State<WebState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiError {
    route_error(&st, StatusCode::METHOD_NOT_ALLOWED, &method, &uri, &headers)
}

/// OpenAI's words for a path it does not serve (404) or a method it does not take (405).
fn route_error(
    st: &WebState,
    status: StatusCode,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> ApiError {
    let lang = Lang::of_request(headers, &st.engine.settings().texts);
    let path = uri.path();
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        lang.pick(
            format!("Invalid method for URL ({method} {path})"),
            format!("该 URL 不支持此方法（{method} {path}）"),
        )
    } else {
        lang.pick(
            format!("Invalid URL ({method} {path})"),
            format!("无效的 URL（{method} {path}）"),
        )
    };
    ApiError::new(status, "invalid_request_error", None, message).no_retry()
}
