//! `/v1` errors in OpenAI's wire shape, in the language of the request.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chatrelay_core::FailureKind;
use serde_json::{Value, json};

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
    pub(super) fn of_text(text: &str) -> Lang {
        if text.chars().any(|c| {
            ('\u{3400}'..='\u{9fff}').contains(&c) || ('\u{f900}'..='\u{faff}').contains(&c)
        }) {
            Lang::Zh
        } else {
            Lang::En
        }
    }

    pub(super) fn pick(self, en: impl Into<String>, zh: impl Into<String>) -> String {
        match self {
            Lang::En => en.into(),
            Lang::Zh => zh.into(),
        }
    }
}

/// The most preferred of `zh` and `en` in an `Accept-Language` value.
pub(super) fn preferred_language(header: &str) -> Option<Lang> {
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
    pub(super) status: StatusCode,
    pub(super) kind: &'static str,
    pub(super) code: Option<&'static str>,
    pub(super) param: Option<String>,
    pub(super) message: String,
    pub(super) retry: bool,
}

impl ApiError {
    pub(super) fn new(
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

    pub(super) fn no_retry(mut self) -> Self {
        self.retry = false;
        self
    }

    pub(super) fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// A 400 about the request field `param`.
    pub(super) fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            message,
        )
        .param(param)
        .no_retry()
    }

    pub(super) fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }

    /// The error for an engine failure, in `lang`: the engine's message when it is in that
    /// language (the configured texts), else the built-in one.
    pub(super) fn from_failure(lang: Lang, kind: FailureKind, message: String) -> Self {
        let w = wire_shape(kind);
        let text =
            if !message.is_empty() && message != "cancelled" && Lang::of_text(&message) == lang {
                message
            } else {
                lang.pick(w.en, w.zh)
            };
        let mut e = Self::new(w.status, w.kind, w.code, text);
        if let Some(p) = w.param {
            e = e.param(p);
        }
        if w.retry { e } else { e.no_retry() }
    }

    /// The server is shutting down: retryable (nothing was charged), elsewhere or later.
    pub(super) fn shutting_down(lang: Lang) -> Self {
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

pub(super) fn body_error(lang: Lang, e: &BytesRejection) -> ApiError {
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

/// The error for a failure the engine reported; "shutting down" while the server stops.
pub(super) fn failure(stopping: bool, lang: Lang, kind: FailureKind, message: String) -> ApiError {
    if kind == FailureKind::Unavailable && stopping {
        ApiError::shutting_down(lang)
    } else {
        ApiError::from_failure(lang, kind, message)
    }
}

/// The engine ended without a last word (it stopped): nothing is charged for such an answer
/// ([`Delivery`] refunds a settled one), so a retry is safe.
pub(super) fn interrupted(stopping: bool, lang: Lang) -> ApiError {
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
    pub(super) fn message(mut self, message: String) -> Self {
        self.message = message;
        self
    }
}

/// How an engine failure looks on the wire.
struct WireShape {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<&'static str>,
    /// A retry is safe (nothing was charged) and useful.
    retry: bool,
    en: &'static str,
    zh: &'static str,
}

/// The wire shape of each engine failure, with its built-in messages (a table: kept as one).
#[rustfmt::skip]
fn wire_shape(kind: FailureKind) -> WireShape {
    use FailureKind as F;
    let shape = |status, kind, code, param, retry, en, zh| WireShape {
        status,
        kind,
        code,
        param,
        retry,
        en,
        zh,
    };
    let bad = StatusCode::BAD_REQUEST;
    let invalid = "invalid_request_error";
    match kind {
        F::InsufficientQuota => shape(
            StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", Some("insufficient_quota"), None, false,
            "You do not have enough credits for this request.", "额度不足，无法完成本次请求。"),
        F::RateLimited => shape(
            StatusCode::TOO_MANY_REQUESTS, "requests", Some("rate_limit_exceeded"), None, true,
            "Too many requests; please slow down.", "请求太频繁了，请稍后再试。"),
        F::Banned => shape(
            StatusCode::FORBIDDEN, "permission_error", Some("account_deactivated"), None, false,
            "This account has been deactivated.", "你的账号已被停用。"),
        F::UnknownModel => shape(
            StatusCode::NOT_FOUND, invalid, Some("model_not_found"), Some("model"), false,
            "The model does not exist.", "模型不存在。"),
        F::InvalidRequest | F::Duplicate => shape(
            bad, invalid, None, Some("messages"), false,
            "The request is not valid.", "请求无效。"),
        F::Refused => shape(
            bad, invalid, Some("content_filter"), Some("messages"), false,
            "The request was refused by the content policy.", "请求内容不符合使用规范，已被拒绝。"),
        F::NotAllowed => shape(
            StatusCode::FORBIDDEN, "permission_error", Some("model_not_allowed"), Some("model"), false,
            "You may not use this model.", "你无权使用该模型。"),
        // The engine already retried upstream; a client retry would only multiply load.
        F::Upstream => shape(
            StatusCode::BAD_GATEWAY, "server_error", Some("upstream_error"), None, false,
            "The AI service failed; nothing was charged. Please try again later.",
            "AI 服务暂时不可用，本次没有扣除额度，请稍后再试。"),
        // Nothing was charged (a failure costs nothing): a retry, elsewhere or later, is safe
        // and what the SDKs do.
        F::Unavailable => shape(
            StatusCode::SERVICE_UNAVAILABLE, "server_error", Some("service_unavailable"), None, true,
            "The service is temporarily unavailable; please try again later.",
            "服务暂时不可用，请稍后再试。"),
    }
}
