//! The crate's error type and the pure mapping from an HTTP error response
//! (status + body) to it.
//!
//! Error bodies come from the provider, or from whatever proxy sits in front
//! of it, so they are parsed leniently: OpenAI's `{"error":{...}}`, the flat
//! `{"message":..}` some compatible servers use, and non-JSON bodies such as
//! an nginx HTML 502 page all become an [`Error::Api`] with a readable,
//! length-bounded message.

use serde_json::Value;

/// Longest error message kept from a non-JSON body, in bytes.
const MAX_MESSAGE_BYTES: usize = 300;
/// Longest raw body kept in [`Error::Decode`] for bug reports, in bytes.
pub(crate) const MAX_RAW_BYTES: usize = 1024;

/// Everything that can go wrong talking to an OpenAI-compatible server.
///
/// Messages are for humans and logs and may change; match on the variants
/// and use [`Error::is_retryable`] / [`Error::status`] instead of the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error: an HTTP error status, or an error
    /// object inside a successful response or stream.
    #[error(
        "API error (HTTP {status}{}): {message}",
        .code.as_deref().map(|c| format!(", {c}")).unwrap_or_default()
    )]
    Api {
        /// HTTP status; `0` when the error came inside a 200 event stream.
        status: u16,
        /// `error.type`, e.g. `invalid_request_error`.
        kind: Option<String>,
        /// `error.code`, e.g. `insufficient_quota`, `context_length_exceeded`.
        code: Option<String>,
        /// `error.message`, or a truncated summary of a non-JSON body.
        message: String,
        /// The `x-request-id` response header, to quote to the provider.
        request_id: Option<String>,
    },
    /// A deadline passed.
    #[error("timed out waiting for the {what}")]
    Timeout {
        /// `"connect"`, `"response"` (headers, or the whole body when not
        /// streaming) or `"idle"` (gap between two stream chunks).
        what: &'static str,
    },
    /// The connection failed: refused, reset, DNS, TLS, ...
    #[error("network error: {0}")]
    Network(String),
    /// The server sent something that is not the expected JSON.
    #[error("could not decode the response: {message}")]
    Decode {
        /// What failed to decode and why.
        message: String,
        /// The first ~1 KiB of the offending body, for bug reports.
        raw: String,
    },
    /// The event stream ended (or broke) before `data: [DONE]`.
    #[error("the stream ended before [DONE]")]
    Incomplete,
    /// The [`ClientConfig`](crate::ClientConfig) cannot be used.
    #[error("invalid client configuration: {0}")]
    InvalidConfig(String),
}

impl Error {
    /// Whether the same request may succeed if sent again: HTTP 408, 409,
    /// 429 and 5xx (except `insufficient_quota`, which waiting does not fix),
    /// network errors, and connect/response timeouts.
    ///
    /// The client additionally honours the `x-should-retry` header, which
    /// this error does not carry.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api { status, .. } => {
                !self.is_insufficient_quota()
                    && (matches!(status, 408 | 409 | 429) || *status >= 500)
            }
            Self::Network(_) => true,
            Self::Timeout { what } => *what != "idle",
            Self::Decode { .. } | Self::Incomplete | Self::InvalidConfig(_) => false,
        }
    }

    /// Whether the account behind the key has run out of credit
    /// (`code == "insufficient_quota"`, sent with HTTP 429).
    #[must_use]
    pub fn is_insufficient_quota(&self) -> bool {
        matches!(self, Self::Api { code: Some(c), .. } if c == "insufficient_quota")
    }

    /// The HTTP status of an [`Error::Api`]; `None` for other errors and for
    /// errors that arrived inside a stream (whose HTTP status was 200).
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } if *status != 0 => Some(*status),
            _ => None,
        }
    }

    /// Replaces every occurrence of `secret` in the texts the server sent
    /// (some servers echo the rejected key in their error message), so the
    /// error can be logged and shown safely.
    pub(crate) fn redact(&mut self, secret: &str, replacement: &str) {
        if secret.is_empty() {
            return;
        }
        let texts: Vec<&mut String> = match self {
            Self::Api { message, .. } => vec![message],
            Self::Decode { message, raw } => vec![message, raw],
            _ => Vec::new(),
        };
        for text in texts {
            if text.contains(secret) {
                *text = text.replace(secret, replacement);
            }
        }
    }

    /// Builds an [`Error::Decode`] keeping the start of the body.
    pub(crate) fn decode(message: impl Into<String>, body: &[u8]) -> Self {
        Self::Decode {
            message: message.into(),
            raw: truncate_lossy(body, MAX_RAW_BYTES),
        }
    }
}

/// Maps an error response (any status, usually >= 400) to [`Error::Api`].
pub(crate) fn api_error_from_body(status: u16, body: &[u8], request_id: Option<String>) -> Error {
    if let Ok(value) = serde_json::from_slice::<Value>(body)
        && let Some(err) = api_error_from_json(status, &value, request_id.clone())
    {
        return err;
    }
    Error::Api {
        status,
        kind: None,
        code: None,
        message: summarize_non_json(status, body),
        request_id,
    }
}

/// Extracts an error from a JSON body, if it contains one:
/// `{"error":{"message","type","code"}}`, `{"error":"text"}`, or a flat
/// `{"message":..,"type":..,"code":..}` (vLLM, some gateways).
///
/// Used both for error responses and for `data:` events of a stream, where
/// `status` is 0.
pub(crate) fn api_error_from_json(
    status: u16,
    value: &Value,
    request_id: Option<String>,
) -> Option<Error> {
    let obj = value.as_object()?;
    let (source, message) = match obj.get("error") {
        // Empty objects and strings are "no error", as in openai-python,
        // which tests the truthiness of `data.get("error")`.
        Some(Value::Object(inner)) if !inner.is_empty() => {
            (inner, inner.get("message").and_then(scalar_to_string))
        }
        Some(Value::String(s)) if !s.is_empty() => (obj, Some(s.clone())),
        // A flat error object is only trusted on an error status: a 200
        // chunk that happens to have a `message` field is not an error.
        _ if status >= 400 && obj.contains_key("message") => {
            (obj, obj.get("message").and_then(scalar_to_string))
        }
        _ => return None,
    };
    let message = message
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| format!("HTTP {status} without an error message"));
    Some(Error::Api {
        status,
        kind: source.get("type").and_then(scalar_to_string),
        code: source.get("code").and_then(scalar_to_string),
        message,
        request_id,
    })
}

/// Strings as-is, numbers and booleans as text (some providers send numeric
/// codes), anything else (null, objects) as `None`.
fn scalar_to_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A short, single-line description of a non-JSON error body: the HTML
/// `<title>` when there is one (proxies' error pages), else the first few
/// hundred bytes with whitespace collapsed.
fn summarize_non_json(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let snippet = html_title(&text).unwrap_or(&text);
    let collapsed = snippet.split_whitespace().collect::<Vec<_>>().join(" ");
    let summary = truncate_lossy(collapsed.as_bytes(), MAX_MESSAGE_BYTES);
    if summary.is_empty() {
        format!("HTTP {status} with an empty body")
    } else {
        format!("HTTP {status}: {summary}")
    }
}

/// The text inside `<title>...</title>`, found case-insensitively.
fn html_title(text: &str) -> Option<&str> {
    // ASCII lowercasing keeps byte offsets identical, so indexes found in the
    // lowercased copy are valid (and on char boundaries) in the original.
    let lower = text.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let start = open + lower.get(open..)?.find('>')? + 1;
    let end = start + lower.get(start..)?.find("</title")?;
    let title = text.get(start..end)?.trim();
    (!title.is_empty()).then_some(title)
}

/// The first `max` bytes of `bytes` as text, cut on a character boundary,
/// with `…` appended when something was cut.
pub(crate) fn truncate_lossy(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.len() <= max {
        return text.into_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = text.get(..end).unwrap_or_default().to_owned();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn openai_error_body() {
        let body = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        let err = api_error_from_body(429, body, Some("req_1".into()));
        assert_eq!(
            err,
            Error::Api {
                status: 429,
                kind: Some("insufficient_quota".into()),
                code: Some("insufficient_quota".into()),
                message: "You exceeded your current quota".into(),
                request_id: Some("req_1".into()),
            }
        );
        assert!(err.is_insufficient_quota());
        assert!(!err.is_retryable());
        assert_eq!(err.status(), Some(429));
        assert_eq!(
            err.to_string(),
            "API error (HTTP 429, insufficient_quota): You exceeded your current quota"
        );
    }

    #[test]
    fn rate_limit_and_server_errors_are_retryable() {
        let body =
            br#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#;
        assert!(api_error_from_body(429, body, None).is_retryable());
        for status in [408, 409, 500, 502, 503, 529] {
            assert!(
                api_error_from_body(status, b"{}", None).is_retryable(),
                "{status}"
            );
        }
        for status in [400, 401, 403, 404, 422] {
            assert!(
                !api_error_from_body(status, b"{}", None).is_retryable(),
                "{status}"
            );
        }
    }

    #[test]
    fn numeric_code_and_flat_and_string_errors() {
        let err = api_error_from_body(400, br#"{"error":{"message":"bad","code":1113}}"#, None);
        assert!(matches!(err, Error::Api { code: Some(ref c), .. } if c == "1113"));
        let err = api_error_from_body(
            400,
            br#"{"object":"error","message":"maximum context length","type":"BadRequestError","code":400}"#,
            None,
        );
        assert!(
            matches!(err, Error::Api { ref message, ref kind, .. } if message == "maximum context length" && kind.as_deref() == Some("BadRequestError"))
        );
        let err = api_error_from_body(500, br#"{"error":"upstream exploded"}"#, None);
        assert!(matches!(err, Error::Api { ref message, .. } if message == "upstream exploded"));
    }

    #[test]
    fn html_proxy_page() {
        let body = b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
        let err = api_error_from_body(502, body, None);
        assert_eq!(err.status(), Some(502));
        assert!(err.is_retryable());
        assert!(
            matches!(err, Error::Api { ref message, code: None, .. } if message == "HTTP 502: 502 Bad Gateway"),
            "{err:?}"
        );
    }

    #[test]
    fn long_and_binary_bodies_are_truncated() {
        let body = "错".repeat(1000);
        let err = api_error_from_body(503, body.as_bytes(), None);
        let Error::Api { message, .. } = err else {
            panic!("not an api error")
        };
        assert!(message.len() < MAX_MESSAGE_BYTES + 40, "{}", message.len());
        assert!(message.ends_with('…'));
        let err = api_error_from_body(500, b"\xFF\xFE\x00garbage", None);
        assert!(matches!(err, Error::Api { status: 500, .. }));
        let err = api_error_from_body(500, b"", None);
        assert!(
            matches!(err, Error::Api { ref message, .. } if message == "HTTP 500 with an empty body")
        );
    }

    #[test]
    fn error_in_stream_chunk() {
        let v = json!({"error": {"message": "overloaded", "type": "server_error", "code": null}});
        let err = api_error_from_json(0, &v, None).unwrap();
        assert!(
            matches!(err, Error::Api { status: 0, ref kind, code: None, .. } if kind.as_deref() == Some("server_error"))
        );
        assert_eq!(err.status(), None);
        assert!(!err.is_retryable());
        // A normal chunk is not an error, even if it has a `message` field.
        let chunk = json!({"id": "x", "choices": [], "message": "hi"});
        assert!(api_error_from_json(0, &chunk, None).is_none());
        assert!(api_error_from_json(0, &json!({"error": null}), None).is_none());
        assert!(api_error_from_json(0, &json!({"error": {}}), None).is_none());
        assert!(api_error_from_json(0, &json!({"error": ""}), None).is_none());
    }

    #[test]
    fn decode_keeps_first_kib() {
        let body = vec![b'a'; 5000];
        let Error::Decode { raw, .. } = Error::decode("bad", &body) else {
            panic!()
        };
        assert_eq!(raw.len(), MAX_RAW_BYTES + '…'.len_utf8());
    }

    #[test]
    fn redact_removes_echoed_keys() {
        let mut err = api_error_from_body(
            401,
            br#"{"error":{"message":"Incorrect API key provided: sk-live-123. Check it.","code":"invalid_api_key"}}"#,
            None,
        );
        err.redact("sk-live-123", "key#abcd");
        assert!(
            matches!(err, Error::Api { ref message, .. } if message == "Incorrect API key provided: key#abcd. Check it.")
        );
        let mut err = Error::decode("bad", b"token=sk-live-123");
        err.redact("sk-live-123", "key#abcd");
        assert!(!format!("{err:?}").contains("sk-live-123"));
    }

    #[test]
    fn other_variants() {
        assert!(Error::Network("reset".into()).is_retryable());
        assert!(Error::Timeout { what: "connect" }.is_retryable());
        assert!(Error::Timeout { what: "response" }.is_retryable());
        assert!(!Error::Timeout { what: "idle" }.is_retryable());
        assert!(!Error::Incomplete.is_retryable());
        assert_eq!(Error::Incomplete.status(), None);
    }
}
