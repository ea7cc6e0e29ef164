//! The OpenAI-compatible API: `POST /v1/chat/completions` (streamed or not),
//! `GET /v1/models` and `GET /v1/models/{id}`. Bearer = a user token; every answer is metered
//! by the engine. Errors use OpenAI's shape (every 404 and 405 under `/v1` too), in one
//! language per request, so the official SDKs raise their usual exceptions.
//!
//! Delivery and money: an answer is charged (durably) before it leaves; a non-streamed answer
//! that cannot reach its reader after that is refunded ([`Delivery`]), and errors a retry
//! could charge twice for carry `x-should-retry: false`.

use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use chatrelay_core::{FailureKind, Reply, ReplyEvent, Usage};
use chatrelay_openai::ChatRequest;
use chatrelay_storage::Uid;
use futures_util::FutureExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::warn;

use super::AppState;
use crate::bot::{ApiRequest, Engine};
use crate::util::{now_ms, random_id};

/// When the daemon started, in seconds: the `created` of every model it lists.
static STARTED: OnceLock<i64> = OnceLock::new();

/// How long an open stream waits, once shutdown begins, for the engine to end its answer
/// (the engine ends it at once; this only bounds a stuck one).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// The `/v1` routes, with OpenAI-shaped answers for unknown paths and wrong methods.
pub fn routes() -> axum::Router<AppState> {
    STARTED.get_or_init(|| now_ms() / 1000);
    axum::Router::new()
        .route(
            "/v1/chat/completions",
            post(chat_completions).fallback(wrong_method),
        )
        .route("/v1/models", get(models).fallback(wrong_method))
        .route("/v1/models/{id}", get(model).fallback(wrong_method))
        .route("/v1", any(unknown_path))
        .route("/v1/", any(unknown_path))
        .route("/v1/{*rest}", any(unknown_path))
}

/// The language of a request's error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// 中文.
    Zh,
    /// English.
    En,
}

impl Lang {
    /// The language a request asked for with `Accept-Language` (the preferred of `zh` and
    /// `en`), else the one the configured texts are written in.
    #[must_use]
    pub fn of_request(headers: &HeaderMap, texts: &crate::config::Texts) -> Lang {
        let asked = headers
            .get(axum::http::header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .and_then(preferred_language);
        asked.unwrap_or_else(|| Lang::of_text(&texts.unavailable))
    }

    /// Chinese when `text` has Chinese characters, else English.
    fn of_text(text: &str) -> Lang {
        if text.chars().any(|c| {
            ('\u{3400}'..='\u{9fff}').contains(&c) || ('\u{f900}'..='\u{faff}').contains(&c)
        }) {
            Lang::Zh
        } else {
            Lang::En
        }
    }

    fn pick(self, en: impl Into<String>, zh: impl Into<String>) -> String {
        match self {
            Lang::En => en.into(),
            Lang::Zh => zh.into(),
        }
    }
}

/// The most preferred of `zh` and `en` in an `Accept-Language` value.
fn preferred_language(header: &str) -> Option<Lang> {
    let mut best: Option<(f32, Lang)> = None;
    for part in header.split(',').take(32) {
        let mut fields = part.split(';');
        let tag = fields.next().unwrap_or("").trim().to_ascii_lowercase();
        let primary = tag.split('-').next().unwrap_or("");
        let lang = match primary {
            "zh" => Lang::Zh,
            "en" => Lang::En,
            _ => continue,
        };
        let q = fields
            .find_map(|f| f.trim().strip_prefix("q="))
            .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok())
            .unwrap_or(0.0);
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, lang));
        }
    }
    best.map(|(_, l)| l)
}

/// An error in OpenAI's wire shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<String>,
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
            param: None,
            message: message.into(),
            retry: true,
        }
    }

    fn no_retry(mut self) -> Self {
        self.retry = false;
        self
    }

    fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// A 400 about the request field `param`.
    fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            message,
        )
        .param(param)
        .no_retry()
    }

    fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }

    /// The error for an engine failure, in `lang`: the engine's message when it is in that
    /// language (the configured texts), else the built-in one.
    fn from_failure(lang: Lang, kind: FailureKind, message: String) -> Self {
        use FailureKind as F;
        let text = |en: &str, zh: &str| {
            if !message.is_empty() && message != "cancelled" && Lang::of_text(&message) == lang {
                message.clone()
            } else {
                lang.pick(en, zh)
            }
        };
        match kind {
            F::InsufficientQuota => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                Some("insufficient_quota"),
                text(
                    "You do not have enough credits for this request.",
                    "额度不足，无法完成本次请求。",
                ),
            )
            .no_retry(),
            F::RateLimited => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                Some("rate_limit_exceeded"),
                text(
                    "Too many requests; please slow down.",
                    "请求太频繁了，请稍后再试。",
                ),
            ),
            F::Banned => Self::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                Some("account_deactivated"),
                text("This account has been deactivated.", "你的账号已被停用。"),
            )
            .no_retry(),
            F::UnknownModel => Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found"),
                text("The model does not exist.", "模型不存在。"),
            )
            .param("model")
            .no_retry(),
            F::InvalidRequest | F::Duplicate => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                text("The request is not valid.", "请求无效。"),
            )
            .param("messages")
            .no_retry(),
            F::Refused => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("content_filter"),
                text(
                    "The request was refused by the content policy.",
                    "请求内容不符合使用规范，已被拒绝。",
                ),
            )
            .param("messages")
            .no_retry(),
            F::NotAllowed => Self::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                Some("model_not_allowed"),
                text("You may not use this model.", "你无权使用该模型。"),
            )
            .param("model")
            .no_retry(),
            // The engine already retried upstream; a client retry would only multiply load.
            F::Upstream => Self::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                Some("upstream_error"),
                text(
                    "The AI service failed; nothing was charged. Please try again later.",
                    "AI 服务暂时不可用，本次没有扣除额度，请稍后再试。",
                ),
            )
            .no_retry(),
            // Nothing was charged (a failure costs nothing): a retry, elsewhere or later, is
            // safe and what the SDKs do.
            F::Unavailable => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("service_unavailable"),
                text(
                    "The service is temporarily unavailable; please try again later.",
                    "服务暂时不可用，请稍后再试。",
                ),
            ),
        }
    }

    /// The server is shutting down: retryable (nothing was charged), elsewhere or later.
    fn shutting_down(lang: Lang) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("service_unavailable"),
            lang.pick(
                "The server is shutting down; nothing was charged. Please try again.",
                "服务正在重启，本次没有扣除额度，请重试。",
            ),
        )
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
    let token = super::bearer(headers).ok_or_else(|| {
        unauthorized(lang.pick(
            "You didn't provide an API key. Send it as Authorization: Bearer <token>.",
            "没有提供 API 密钥，请以 Authorization: Bearer <token> 发送。",
        ))
    })?;
    match st.engine.store().token_uid(token, now_ms()) {
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

fn body_error(lang: Lang, e: &BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("request_too_large"),
            lang.pick("The request body is too large.", "请求体太大。"),
        )
        .no_retry()
    } else {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            lang.pick(
                format!("Could not read the request body: {e}"),
                "无法读取请求体。",
            ),
        )
        .no_retry()
    }
}

/// What a request field must be.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// Exactly the integer 1 (`n`: one answer per request, so the price is for one).
    One,
    /// A number (integer or not) in a closed range.
    Number(f64, f64),
    /// An integer (no fraction, no exponent) in a closed range.
    Integer(i64, i64),
    /// `true` or `false`.
    Bool,
}

/// The request fields with a type the price or the upstream depends on. `null` is allowed
/// for each (it means "not set").
const RULES: &[(&str, Rule)] = &[
    ("n", Rule::One),
    ("temperature", Rule::Number(0.0, 2.0)),
    ("top_p", Rule::Number(0.0, 1.0)),
    ("presence_penalty", Rule::Number(-2.0, 2.0)),
    ("frequency_penalty", Rule::Number(-2.0, 2.0)),
    ("max_tokens", Rule::Integer(1, u32::MAX as i64)),
    ("max_completion_tokens", Rule::Integer(1, u32::MAX as i64)),
    ("seed", Rule::Integer(i64::MIN, i64::MAX)),
    ("logprobs", Rule::Bool),
    ("top_logprobs", Rule::Integer(0, 20)),
    ("stream", Rule::Bool),
    ("parallel_tool_calls", Rule::Bool),
    ("store", Rule::Bool),
];

fn check_rule(lang: Lang, field: &str, rule: Rule, v: &Value) -> Result<(), ApiError> {
    let ok = match rule {
        Rule::One => v.as_u64() == Some(1),
        Rule::Number(lo, hi) => v
            .as_f64()
            .is_some_and(|x| x.is_finite() && (lo..=hi).contains(&x)),
        Rule::Integer(lo, hi) => v.as_i64().is_some_and(|x| (lo..=hi).contains(&x)),
        Rule::Bool => v.is_boolean(),
    };
    if ok {
        return Ok(());
    }
    let (en, zh) = match rule {
        Rule::One => (
            "exactly the integer 1 (one answer per request)".to_owned(),
            "整数 1（每次请求只生成一个回答）".to_owned(),
        ),
        Rule::Number(lo, hi) => (
            format!("a number from {lo} to {hi}"),
            format!("{lo} 到 {hi} 之间的数"),
        ),
        Rule::Integer(i64::MIN, i64::MAX) => ("an integer".to_owned(), "整数".to_owned()),
        Rule::Integer(lo, hi) => (
            format!("an integer from {lo} to {hi}"),
            format!("{lo} 到 {hi} 之间的整数"),
        ),
        Rule::Bool => ("true or false".to_owned(), "true 或 false".to_owned()),
    };
    Err(ApiError::invalid(
        field,
        lang.pick(
            format!("`{field}` must be {en}."),
            format!("`{field}` 必须是{zh}。"),
        ),
    ))
}

/// A checked chat request and the answer cap the client asked for.
struct Parsed {
    req: ChatRequest,
    /// The smallest of `max_tokens` and `max_completion_tokens`.
    cap: Option<u32>,
    /// The client sent its cap only as `max_tokens`.
    legacy_cap: bool,
}

/// Parses and checks a chat request: every field the price or the upstream depends on has
/// its exact type and a sane range, or the request is a 400 naming the field.
fn parse_request(lang: Lang, body: &[u8]) -> Result<Parsed, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            lang.pick(
                format!("Invalid JSON body: {e}"),
                format!(
                    "请求体不是有效的 JSON（第 {} 行第 {} 列）。",
                    e.line(),
                    e.column()
                ),
            ),
        )
        .no_retry()
    })?;
    let Some(obj) = value.as_object() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            lang.pick(
                "The request body must be a JSON object.",
                "请求体必须是 JSON 对象。",
            ),
        )
        .no_retry());
    };
    match obj.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => {}
        _ => {
            return Err(ApiError::invalid(
                "model",
                lang.pick(
                    "`model` must be a non-empty string.",
                    "`model` 必须是非空字符串。",
                ),
            ));
        }
    }
    let messages = match obj.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        _ => {
            return Err(ApiError::invalid(
                "messages",
                lang.pick(
                    "`messages` must contain at least one message.",
                    "`messages` 至少要有一条消息。",
                ),
            ));
        }
    };
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                lang.pick(
                    format!("messages[{i}].role must be one of system, developer, user, assistant, tool."),
                    format!("messages[{i}].role 必须是 system、developer、user、assistant、tool 之一。"),
                ),
            ));
        }
        let content = m.get("content").unwrap_or(&Value::Null);
        if !(content.is_string() || content.is_array() || content.is_null()) {
            return Err(ApiError::invalid(
                format!("messages[{i}].content"),
                lang.pick(
                    format!("messages[{i}].content must be a string or an array of content parts."),
                    format!("messages[{i}].content 必须是字符串或内容数组。"),
                ),
            ));
        }
    }
    for (field, rule) in RULES {
        if let Some(v) = obj.get(*field).filter(|v| !v.is_null()) {
            check_rule(lang, field, *rule, v)?;
        }
    }
    match obj.get("stream_options") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            if let Some(v) = o.get("include_usage").filter(|v| !v.is_null()) {
                check_rule(lang, "stream_options.include_usage", Rule::Bool, v)?;
            }
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                lang.pick(
                    "`stream_options` must be an object.",
                    "`stream_options` 必须是对象。",
                ),
            ));
        }
    }
    match obj.get("logit_bias") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o))
            if o.values()
                .all(|v| v.as_f64().is_some_and(|x| (-100.0..=100.0).contains(&x))) => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "logit_bias",
                lang.pick(
                    "`logit_bias` must map token ids to numbers from -100 to 100.",
                    "`logit_bias` 必须把 token id 映射到 -100 到 100 之间的数。",
                ),
            ));
        }
    }
    if let Some(v) = obj.get("user").filter(|v| !v.is_null())
        && !v.is_string()
    {
        return Err(ApiError::invalid(
            "user",
            lang.pick("`user` must be a string.", "`user` 必须是字符串。"),
        ));
    }
    let cap_of = |f: &str| {
        obj.get(f)
            .and_then(Value::as_u64)
            .map(|c| u32::try_from(c).unwrap_or(u32::MAX))
    };
    let (max_tokens, max_completion) = (cap_of("max_tokens"), cap_of("max_completion_tokens"));
    let cap = match (max_tokens, max_completion) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let legacy_cap = max_tokens.is_some() && max_completion.is_none();
    let mut req: ChatRequest = serde_json::from_value(value).map_err(|e| {
        ApiError::invalid(
            "messages",
            lang.pick(format!("Invalid request: {e}"), "请求格式不正确。"),
        )
    })?;
    // The cap goes upstream only as the engine sets it (what was reserved for).
    req.extra.remove("max_tokens");
    req.max_completion_tokens = None;
    Ok(Parsed {
        req,
        cap,
        legacy_cap,
    })
}

async fn chat_completions(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let lang = Lang::of_request(&headers, &st.engine.settings().texts);
    let uid = authenticate(&st, &headers)?;
    let body = body.map_err(|e| body_error(lang, &e))?;
    let Parsed {
        req,
        cap,
        legacy_cap,
    } = parse_request(lang, &body)?;
    if st.engine.settings().model(&req.model).is_none() {
        return Err(
            ApiError::from_failure(lang, FailureKind::UnknownModel, String::new()).message(
                lang.pick(
                    format!("The model `{}` does not exist.", req.model),
                    format!("模型 `{}` 不存在。", req.model),
                ),
            ),
        );
    }
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
        lang,
    };
    let reply = st.engine.complete(
        uid,
        ApiRequest {
            model: req.model,
            messages: req.messages,
            max_completion_tokens: cap,
            legacy_max_tokens: legacy_cap,
            streamed: stream,
            extra,
            reference: reference.clone(),
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

/// The error for a failure the engine reported; "shutting down" while the server stops.
fn failure(stopping: bool, lang: Lang, kind: FailureKind, message: String) -> ApiError {
    if kind == FailureKind::Unavailable && stopping {
        ApiError::shutting_down(lang)
    } else {
        ApiError::from_failure(lang, kind, message)
    }
}

/// The engine ended without a last word (it stopped): nothing is charged for such an answer
/// ([`Delivery`] refunds a settled one), so a retry is safe.
fn interrupted(stopping: bool, lang: Lang) -> ApiError {
    if stopping {
        ApiError::shutting_down(lang)
    } else {
        ApiError::from_failure(
            lang,
            FailureKind::Unavailable,
            lang.pick("The answer was interrupted.", "回答被中断了。"),
        )
    }
}

impl ApiError {
    fn message(mut self, message: String) -> Self {
        self.message = message;
        self
    }
}

/// A reply on its way to a `/v1` client. An answer the engine settled and sent, but which
/// was still in the channel when the reader went away (the client left, the handler was
/// dropped), never reached anyone: for a non-streamed request it is refunded here (the
/// engine refunds one it could not even send). Streamed readers got the pieces, and pay
/// for them.
struct Delivery {
    reply: Reply,
    engine: Engine,
    uid: Uid,
    reference: String,
    /// Refund a settled answer lost in the channel (non-streamed requests).
    refund_lost: bool,
    /// The last event was read (and handed on by the reader).
    finished: bool,
}

impl Delivery {
    async fn next(&mut self) -> Option<ReplyEvent> {
        let event = self.reply.next().await;
        if event.as_ref().is_none_or(ReplyEvent::is_terminal) {
            self.finished = true;
        }
        event
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if self.finished || !self.refund_lost {
            return;
        }
        // What is in the channel now, without waiting: a settled answer nobody will read.
        while let Some(Some(event)) = self.reply.next().now_or_never() {
            if let ReplyEvent::Final { charged, .. } = event {
                self.engine
                    .refund_undelivered(self.uid, &self.reference, charged);
                break;
            }
            if event.is_terminal() {
                break;
            }
        }
    }
}

struct Meta {
    id: String,
    created: i64,
    model: String,
    lang: Lang,
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

/// Waits for the whole answer: any number of pieces, then the final event (which carries the
/// whole text).
async fn complete_response(
    shutdown: &tokio_util::sync::CancellationToken,
    meta: Meta,
    first: ReplyEvent,
    mut reply: Delivery,
) -> Result<Response, ApiError> {
    let mut event = Some(first);
    loop {
        let next = match event.take() {
            Some(e) => Some(e),
            None => reply.next().await,
        };
        match next {
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
                return Err(failure(shutdown.is_cancelled(), meta.lang, kind, message));
            }
            None => return Err(interrupted(shutdown.is_cancelled(), meta.lang)),
        }
    }
}

fn stream_response(
    st: AppState,
    meta: Meta,
    first: ReplyEvent,
    mut reply: Delivery,
    include_usage: bool,
) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(32);
    let shutdown = st.shutdown.clone();
    // The pump owns the reply: when the client goes away the send fails, the reply is dropped
    // and the engine stops the upstream call (and charges what was sent). On shutdown the
    // engine ends the answer itself (uncharged) and the pump passes that on.
    st.engine.tracker().spawn(async move {
        metrics::gauge!("chatrelay_active_streams").increment(1.0);
        let lang = meta.lang;
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
        let mut stopping: Option<tokio::time::Instant> = None;
        while ok {
            let event = match next.take() {
                Some(e) => Some(e),
                None => {
                    let give_up = async {
                        match stopping {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        biased;
                        e = reply.next() => e,
                        () = shutdown.cancelled(), if stopping.is_none() => {
                            stopping = Some(tokio::time::Instant::now() + SHUTDOWN_WAIT);
                            continue;
                        }
                        () = give_up => {
                            let err = ApiError::shutting_down(lang);
                            let _ = tx.send(data(err.body())).await;
                            break;
                        }
                    }
                }
            };
            match event {
                Some(ReplyEvent::Delta(d)) => {
                    streamed = true;
                    ok = tx
                        .send(data(meta.delta(json!({"content": d}), None)))
                        .await
                        .is_ok();
                }
                Some(ReplyEvent::Final {
                    usage,
                    text,
                    charged,
                    ..
                }) => {
                    if !streamed
                        && !text.is_empty()
                        && tx
                            .send(data(meta.delta(json!({"content": text}), None)))
                            .await
                            .is_err()
                    {
                        // A one-piece answer (a picture) that never left.
                        reply
                            .engine
                            .refund_undelivered(reply.uid, &reply.reference, charged);
                        break;
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
                    let err = if stopping.is_some() && kind == FailureKind::Unavailable {
                        ApiError::shutting_down(lang)
                    } else {
                        ApiError::from_failure(lang, kind, message)
                    };
                    let _ = tx.send(data(err.body())).await;
                    break;
                }
                None => {
                    let err = interrupted(stopping.is_some(), lang);
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

fn model_object(name: &str) -> Value {
    json!({"id": name, "object": "model", "created": STARTED.get().copied().unwrap_or(0), "owned_by": "chatrelay"})
}

async fn models(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authenticate(&st, &headers)?;
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
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate(&st, &headers)?;
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
    State(st): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiError {
    route_error(&st, StatusCode::NOT_FOUND, &method, &uri, &headers)
}

/// A known `/v1` path with the wrong method: OpenAI's 405.
async fn wrong_method(
    State(st): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiError {
    route_error(&st, StatusCode::METHOD_NOT_ALLOWED, &method, &uri, &headers)
}

/// OpenAI's words for a path it does not serve (404) or a method it does not take (405).
fn route_error(
    st: &AppState,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Parsed, ApiError> {
        parse_request(Lang::En, body.as_bytes())
    }

    fn param_of(body: &str) -> Option<String> {
        match parse(body) {
            Ok(_) => None,
            Err(e) => {
                assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
                assert!(!e.retry);
                e.param
            }
        }
    }

    #[test]
    fn request_validation() {
        assert!(parse("{").is_err());
        assert!(parse("[]").is_err());
        assert_eq!(param_of(r#"{"model":"m"}"#).as_deref(), Some("messages"));
        assert_eq!(
            param_of(r#"{"model":"m","messages":[]}"#).as_deref(),
            Some("messages")
        );
        assert_eq!(
            param_of(r#"{"model":"","messages":[{"role":"user","content":"x"}]}"#).as_deref(),
            Some("model")
        );
        assert_eq!(
            param_of(r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#).as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            param_of(r#"{"model":"m","messages":[{"role":"user","content":5}]}"#).as_deref(),
            Some("messages[0].content")
        );
        let ok = parse(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"top_p":0.5,"n":1,"seed":-3,"logprobs":true,"top_logprobs":2,"temperature":null}"#,
        )
        .unwrap();
        assert_eq!(ok.req.extra.get("top_p"), Some(&json!(0.5)));
    }

    #[test]
    fn numbers_must_have_their_exact_type_and_a_sane_range() {
        let with = |field: &str, v: &str| {
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"{field}":{v}}}"#)
        };
        for (field, bad) in [
            (
                "n",
                vec![
                    "2", "2.0", "1.0", "\"2\"", "\"1\"", "1e9", "1e0", "0", "-1", "true", "[1]",
                ],
            ),
            ("temperature", vec!["\"1\"", "2.5", "-0.1", "1e9", "true"]),
            ("top_p", vec!["1.5", "-1", "\"0.5\""]),
            ("presence_penalty", vec!["3", "\"0\""]),
            ("frequency_penalty", vec!["-2.5", "{}"]),
            (
                "max_tokens",
                vec!["0", "-5", "10.0", "1e5", "\"100\"", "4294967296"],
            ),
            (
                "max_completion_tokens",
                vec!["0", "2.5", "\"7\"", "99999999999"],
            ),
            ("seed", vec!["1.5", "\"1\"", "18446744073709551615"]),
            ("logprobs", vec!["1", "\"true\""]),
            ("top_logprobs", vec!["21", "-1", "2.0"]),
            ("stream", vec!["1", "\"true\""]),
        ] {
            for v in bad {
                assert_eq!(
                    param_of(&with(field, v)).as_deref(),
                    Some(field),
                    "{field} = {v}"
                );
            }
        }
        assert_eq!(
            param_of(&with("stream_options", r#"{"include_usage":"yes"}"#)).as_deref(),
            Some("stream_options.include_usage")
        );
        assert_eq!(
            param_of(&with("logit_bias", r#"{"50":500}"#)).as_deref(),
            Some("logit_bias")
        );
        assert_eq!(param_of(&with("user", "5")).as_deref(), Some("user"));
        for (field, good) in [
            ("n", "1"),
            ("n", "null"),
            ("max_tokens", "1"),
            ("seed", "0"),
        ] {
            assert!(parse(&with(field, good)).is_ok(), "{field} = {good}");
        }
    }

    #[test]
    fn the_smallest_cap_is_kept_and_none_passes_through() {
        let p = parse(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":100000,"max_completion_tokens":50}"#).unwrap();
        assert_eq!((p.cap, p.legacy_cap), (Some(50), false));
        assert!(p.req.extra.get("max_tokens").is_none());
        assert!(p.req.max_completion_tokens.is_none());
        let p = parse(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":7,"max_completion_tokens":90}"#).unwrap();
        assert_eq!((p.cap, p.legacy_cap), (Some(7), false));
        let p = parse(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":7}"#)
            .unwrap();
        assert_eq!((p.cap, p.legacy_cap), (Some(7), true));
        let p = parse(r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#).unwrap();
        assert_eq!(p.cap, None);
    }

    #[test]
    fn errors_speak_the_requests_language() {
        let texts = crate::config::Texts::default();
        let mut h = HeaderMap::new();
        assert_eq!(
            Lang::of_request(&h, &texts),
            Lang::Zh,
            "the configured texts are Chinese"
        );
        let english = crate::config::Texts {
            unavailable: "Unavailable, try later.".into(),
            ..crate::config::Texts::default()
        };
        assert_eq!(Lang::of_request(&h, &english), Lang::En);
        for (header, lang) in [
            ("en-US,en;q=0.9", Lang::En),
            ("zh-CN,zh;q=0.9,en;q=0.8", Lang::Zh),
            ("fr-FR, en;q=0.5, zh;q=0.7", Lang::Zh),
            ("de, en;q=0", Lang::Zh),
            ("en;q=0.1, zh-TW;q=0.05", Lang::En),
        ] {
            h.insert("accept-language", header.parse().unwrap());
            assert_eq!(Lang::of_request(&h, &texts), lang, "{header}");
        }
        // A configured Chinese text is not mixed into an English error, and the reverse.
        let e = ApiError::from_failure(Lang::En, FailureKind::InsufficientQuota, "额度不足".into());
        assert_eq!(Lang::of_text(&e.message), Lang::En);
        let e = ApiError::from_failure(
            Lang::Zh,
            FailureKind::InsufficientQuota,
            "额度不足：需要 3".into(),
        );
        assert_eq!(e.message, "额度不足：需要 3");
        let e = ApiError::from_failure(Lang::Zh, FailureKind::Upstream, "boom".into());
        assert_eq!(Lang::of_text(&e.message), Lang::Zh);
        let e = parse_request(
            Lang::Zh,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#,
        )
        .err()
        .unwrap();
        assert_eq!(Lang::of_text(&e.message), Lang::Zh);
        assert_eq!(e.body()["error"]["param"], "n");
    }

    #[test]
    fn quota_error_is_openai_shaped_and_final() {
        let res = ApiError::from_failure(Lang::En, FailureKind::InsufficientQuota, "no".into())
            .into_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers().get("x-should-retry").unwrap(), "false");
    }

    fn engine() -> (Engine, chatrelay_storage::Store) {
        let store = chatrelay_storage::Store::open_temporary().unwrap();
        let config = crate::config::Config::default();
        let engine = Engine::new(
            store.clone(),
            std::sync::Arc::new(crate::bot::llm::DemoBackend::default()),
            crate::bot::Settings::from_config(&config).unwrap(),
            tokio_util::sync::CancellationToken::new(),
            tokio_util::task::TaskTracker::new(),
        );
        (engine, store)
    }

    fn meta() -> Meta {
        Meta {
            id: "chatcmpl-x".into(),
            created: 1,
            model: "m".into(),
            lang: Lang::En,
        }
    }

    fn final_event(text: &str, charged: u64) -> ReplyEvent {
        ReplyEvent::Final {
            text: text.into(),
            usage: None,
            charged,
            images: Vec::new(),
        }
    }

    async fn body_of(res: Response) -> Value {
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_non_streamed_answer_of_any_number_of_pieces_comes_back_whole() {
        let (engine, _store) = engine();
        for pieces in [0usize, 1, 2, 5] {
            let (tx, reply) = Reply::channel();
            let text: String = (0..pieces).map(|i| format!("p{i} ")).collect();
            for i in 0..pieces {
                assert!(tx.send(ReplyEvent::Delta(format!("p{i} "))).await);
            }
            assert!(tx.send(final_event(&text, 1)).await);
            drop(tx);
            let mut reply = Delivery {
                reply,
                engine: engine.clone(),
                uid: Uid(1),
                reference: format!("api:t{pieces}"),
                refund_lost: true,
                finished: false,
            };
            let first = reply.next().await.unwrap();
            let token = tokio_util::sync::CancellationToken::new();
            let res = complete_response(&token, meta(), first, reply)
                .await
                .unwrap_or_else(|e| panic!("{pieces} pieces: {e:?}"));
            assert_eq!(res.status(), StatusCode::OK);
            let body = body_of(res).await;
            assert_eq!(
                body["choices"][0]["message"]["content"], text,
                "{pieces} pieces"
            );
        }
    }

    #[tokio::test]
    async fn a_settled_answer_the_reader_never_read_is_refunded_once() {
        let (engine, store) = engine();
        let uid = store.create_user("r").unwrap().uid;
        let paid = |store: &chatrelay_storage::Store| {
            let s = engine.settings();
            store.balance(uid, s.today(), s.free_daily).unwrap().paid
        };
        let before = paid(&store);
        for _ in 0..2 {
            let (tx, reply) = Reply::channel();
            assert!(tx.send(ReplyEvent::Delta("a".into())).await);
            assert!(tx.send(final_event("a", 3)).await);
            drop(Delivery {
                reply,
                engine: engine.clone(),
                uid,
                reference: "api:lost".into(),
                refund_lost: true,
                finished: false,
            });
        }
        assert_eq!(paid(&store), before + 3, "refunded, and only once");
        // A streamed reader got the pieces: nothing is given back for it.
        let (tx, reply) = Reply::channel();
        assert!(tx.send(final_event("a", 3)).await);
        drop(Delivery {
            reply,
            engine: engine.clone(),
            uid,
            reference: "api:streamed".into(),
            refund_lost: false,
            finished: false,
        });
        assert_eq!(paid(&store), before + 3);
    }
}
