//! End-to-end tests of `Client` against a fake OpenAI-compatible server
//! (axum on 127.0.0.1:0) that speaks the real wire format: the recorded
//! OpenAI event stream, JSON error bodies, retry headers, proxy error pages,
//! stalls and cut connections; plus the image and moderation endpoints and
//! extra headers. No real host is ever contacted.
//!
//! This file is the fake server and its helpers; the tests are in the files beside it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chatrelay_openai::speech::{SpeechError, SpeechRequest};
use chatrelay_openai::{
    ChatChunk, ChatRequest, ChatStream, Client, ClientConfig, Error, ImageRequest, Message,
    ModerationRequest,
};
use futures_util::{StreamExt, stream};
use serde_json::{Value, json};

// === fake server ===

/// One request the fake server received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Value,
    at: Instant,
}

impl Seen {
    fn auth(&self) -> Option<String> {
        self.headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Starts a server whose reply to the n-th request (0-based) is
/// `script(n, &request)`; `None` means never answer.
async fn serve<F>(script: F) -> (String, Log)
where
    F: Fn(usize, &Seen) -> Option<Response> + Send + Sync + 'static,
{
    let log: Log = Arc::default();
    let script = Arc::new(script);
    let log2 = log.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let log = log2.clone();
        let script = script.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let seen = Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                headers: parts.headers,
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                at: Instant::now(),
            };
            let n = {
                let mut log = log.lock().unwrap();
                log.push(seen.clone());
                log.len() - 1
            };
            match script(n, &seen) {
                Some(resp) => resp,
                None => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    StatusCode::GATEWAY_TIMEOUT.into_response()
                }
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), log)
}

fn client(base_url: &str, keys: &[&str]) -> Client {
    Client::new(config(base_url, keys)).unwrap()
}

fn config(base_url: &str, keys: &[&str]) -> ClientConfig {
    ClientConfig {
        base_url: base_url.to_owned(),
        api_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        ..ClientConfig::default()
    }
}

fn request() -> ChatRequest {
    ChatRequest {
        model: "gpt-4o".into(),
        messages: vec![Message::new("user", "What's the weather in San Francisco?")],
        ..ChatRequest::default()
    }
}

/// How a streamed body ends after its pieces.
enum End {
    Close,
    Hang,
    Abort,
}

/// An event-stream response sending `pieces` with `gap` before each.
fn sse(pieces: Vec<Vec<u8>>, gap: Duration, end: End) -> Response {
    let body = stream::iter(pieces).then(move |p| async move {
        tokio::time::sleep(gap).await;
        Ok::<_, std::io::Error>(Bytes::from(p))
    });
    let body = match end {
        End::Close => Body::from_stream(body),
        End::Hang => Body::from_stream(body.chain(stream::pending())),
        End::Abort => Body::from_stream(
            // The pause lets the pieces reach the client before the reset.
            body.chain(stream::once(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(std::io::Error::other("cut"))
            })),
        ),
    };
    (
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (
                header::HeaderName::from_static("x-request-id"),
                "req_stream_1",
            ),
        ],
        body,
    )
        .into_response()
}

fn json_reply(status: u16, headers: &[(&'static str, &'static str)], body: Value) -> Response {
    let mut resp = (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    for (k, v) in headers {
        resp.headers_mut().insert(*k, v.parse().unwrap());
    }
    resp
}

fn api_error(status: u16, code: &str, headers: &[(&'static str, &'static str)]) -> Response {
    json_reply(
        status,
        headers,
        json!({"error": {"message": format!("fake {code}"), "type": "fake_error", "param": null, "code": code}}),
    )
}

fn completion() -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1_727_346_168, "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sunny.", "refusal": null},
                     "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 14, "completion_tokens": 2, "total_tokens": 16},
        "system_fingerprint": "fp_x"
    })
}

fn ok_completion() -> Response {
    json_reply(200, &[("x-request-id", "req_full_1")], completion())
}

fn recorded() -> (String, Value) {
    let v: Value =
        serde_json::from_str(include_str!("../../testdata/openai_vectors.json")).unwrap();
    let entry = v["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "openai_chat_stream_recorded")
        .unwrap()
        .clone();
    (
        entry["input"]["raw_sse"].as_str().unwrap().to_owned(),
        entry["expected"].clone(),
    )
}

/// Splits `bytes` into pieces of the given sizes, cycling through them.
fn split(bytes: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (a, b) = rest.split_at((*size).min(rest.len()));
        out.push(a.to_vec());
        rest = b;
    }
    out
}

async fn drain(mut s: ChatStream) -> Vec<Result<ChatChunk, Error>> {
    let mut items = Vec::new();
    while let Some(item) = s.next().await {
        items.push(item);
    }
    items
}

mod endpoints;
mod network;
mod retries;
mod streaming;
