//! Reading a chat request: exact types and sane ranges for every number, one answer cap.

use axum::http::StatusCode;
use chatrelay_openai::ChatRequest;
use serde_json::{Map, Value};

use super::error::{ApiError, Lang};

/// What a request field must be.
#[derive(Debug, Clone, Copy)]
pub(super) enum Rule {
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
pub(super) const RULES: &[(&str, Rule)] = &[
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

pub(super) fn check_rule(lang: Lang, field: &str, rule: Rule, v: &Value) -> Result<(), ApiError> {
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
pub(super) struct Parsed {
    pub(super) req: ChatRequest,
    /// The smallest of `max_tokens` and `max_completion_tokens`.
    pub(super) cap: Option<u32>,
    /// The client sent its cap only as `max_tokens`.
    pub(super) legacy_cap: bool,
}

/// Parses and checks a chat request: every field the price or the upstream depends on has
/// its exact type and a sane range, or the request is a 400 naming the field.
pub(super) fn parse_request(lang: Lang, body: &[u8]) -> Result<Parsed, ApiError> {
    let value = json_object(lang, body)?;
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
    check_model_and_messages(lang, obj)?;
    for (field, rule) in RULES {
        if let Some(v) = obj.get(*field).filter(|v| !v.is_null()) {
            check_rule(lang, field, *rule, v)?;
        }
    }
    check_objects(lang, obj)?;
    let (cap, legacy_cap) = answer_cap(obj);
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

/// The body as JSON, or a 400 saying where it stops being JSON.
fn json_object(lang: Lang, body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
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
    })
}

/// `model` is a non-empty string; `messages` a non-empty list of messages with known roles
/// and text or content parts.
fn check_model_and_messages(lang: Lang, obj: &Map<String, Value>) -> Result<(), ApiError> {
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
    Ok(())
}

/// The fields that are objects or strings: `stream_options`, `logit_bias`, `user`.
fn check_objects(lang: Lang, obj: &Map<String, Value>) -> Result<(), ApiError> {
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
    Ok(())
}

/// The smallest answer cap the client sent, and whether it sent it only as `max_tokens`.
fn answer_cap(obj: &Map<String, Value>) -> (Option<u32>, bool) {
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
    (cap, max_tokens.is_some() && max_completion.is_none())
}
