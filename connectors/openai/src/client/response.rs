//! Reading an upstream's answer: the body within its size limit and the attempt's deadline,
//! a JSON body that may hold an error object, an error response turned into a [`Failure`]
//! (with what the server said about retrying), and transport errors mapped to [`Error`]
//! without the URL. Shared by every request kind (chat, images, audio, speech).

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{Response, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use crate::error::{Error, api_error_from_body, api_error_from_json};
use crate::retry;

/// Largest non-streaming response body accepted (a chat completion is a few
/// KiB, a base64 image a few MiB; this only stops a broken server from
/// exhausting memory).
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// Largest error body read; the message is in the first few hundred bytes.
pub(super) const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// A failed attempt, with what the server said about retrying.
pub(crate) struct Failure {
    pub(super) error: Error,
    pub(super) should_retry_header: Option<bool>,
    pub(super) retry_after: Option<Duration>,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self {
            error,
            should_retry_header: None,
            retry_after: None,
        }
    }
}

/// Reads a whole successful body before `deadline`; returns it with the
/// response's request id.
pub(crate) async fn read_full(
    resp: Response,
    deadline: Instant,
) -> Result<(Bytes, Option<String>), Failure> {
    let request_id = request_id(resp.headers());
    let (body, truncated) = read_before(deadline, resp, MAX_RESPONSE_BYTES).await?;
    if truncated {
        return Err(Error::decode(
            format!("response body larger than {MAX_RESPONSE_BYTES} bytes"),
            &body,
        )
        .into());
    }
    Ok((body, request_id))
}

/// Builds the [`Failure`] for an error response.
pub(super) fn failure_from_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    request_id: Option<String>,
) -> Failure {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    Failure {
        error: api_error_from_body(status.as_u16(), body, request_id),
        should_retry_header: retry::parse_should_retry(header("x-should-retry")),
        retry_after: retry::parse_retry_after(
            header("retry-after-ms"),
            header("retry-after"),
            chrono::Utc::now(),
        ),
    }
}

/// Reads at most `limit` bytes of the body before `deadline`.
pub(crate) async fn read_before(
    deadline: Instant,
    resp: Response,
    limit: usize,
) -> Result<(Bytes, bool), Failure> {
    match tokio::time::timeout_at(deadline, read_limited(resp, limit)).await {
        Err(_) => Err(Error::Timeout { what: "response" }.into()),
        Ok(Err(e)) => Err(map_reqwest_error(&e).into()),
        Ok(Ok(read)) => Ok(read),
    }
}

/// Reads the body up to `limit` bytes; the flag tells whether it was longer.
pub(super) async fn read_limited(
    mut resp: Response,
    limit: usize,
) -> Result<(Bytes, bool), reqwest::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = limit.saturating_sub(buf.len());
        if chunk.len() > room {
            buf.extend_from_slice(chunk.get(..room).unwrap_or_default());
            return Ok((Bytes::from(buf), true));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((Bytes::from(buf), false))
}

/// Decodes a successful JSON body, treating an embedded `error` object (some
/// gateways send errors with status 200) as an API error.
pub(crate) fn decode_json_response<T: serde::de::DeserializeOwned>(
    body: &[u8],
    request_id: Option<String>,
) -> Result<T, Error> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::decode(format!("response is not JSON: {e}"), body))?;
    if let Some(err) = api_error_from_json(200, &value, request_id) {
        return Err(err);
    }
    serde_json::from_value(value)
        .map_err(|e| Error::decode(format!("unexpected response shape: {e}"), body))
}

pub(crate) fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub(super) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        })
}

/// Maps a transport error. The URL is left out of the message: some
/// providers take credentials in query parameters.
pub(super) fn map_reqwest_error(e: &reqwest::Error) -> Error {
    if e.is_timeout() {
        return Error::Timeout {
            what: if e.is_connect() {
                "connect"
            } else {
                "response"
            },
        };
    }
    if e.is_builder() {
        return Error::InvalidConfig(error_chain(e));
    }
    if e.is_connect() {
        return Error::Network(format!("connect: {}", error_chain(e)));
    }
    Error::Network(error_chain(e))
}

/// The error and its sources on one line, without the URL.
fn error_chain(e: &reqwest::Error) -> String {
    let mut out = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(e);
    let mut first = true;
    while let Some(err) = source {
        let text = if first {
            first = false;
            // Display of a reqwest error appends " for url (...)"; the
            // sources carry the useful detail.
            match err.source() {
                Some(_) => kind_of(e).to_owned(),
                None => err.to_string(),
            }
        } else {
            err.to_string()
        };
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        source = err.source();
    }
    out
}

fn kind_of(e: &reqwest::Error) -> &'static str {
    if e.is_connect() {
        "error connecting"
    } else if e.is_body() || e.is_decode() {
        "error reading the body"
    } else if e.is_request() {
        "error sending the request"
    } else {
        "HTTP error"
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;
    use crate::types::ChatResponse;

    #[test]
    fn json_response_with_error_object_is_api_error() {
        let r: Result<ChatResponse, _> =
            decode_json_response(br#"{"error":{"message":"nope","code":"x"}}"#, None);
        assert!(matches!(r, Err(Error::Api { status: 200, .. })));
        let r: Result<ChatResponse, _> = decode_json_response(b"<html>", None);
        assert!(matches!(r, Err(Error::Decode { ref raw, .. }) if raw == "<html>"));
    }

    #[test]
    fn json_content_type_detection() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert!(is_json(&h));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        assert!(!is_json(&h));
    }
}
