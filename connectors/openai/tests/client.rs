//! End-to-end tests of `Client` against a fake OpenAI-compatible server
//! (axum on 127.0.0.1:0) that speaks the real wire format: the recorded
//! OpenAI event stream, JSON error bodies, retry headers, proxy error pages,
//! stalls and cut connections; plus the image and moderation endpoints and
//! extra headers. No real host is ever contacted.

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
    let v: Value = serde_json::from_str(include_str!("../testdata/openai_vectors.json")).unwrap();
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

// === streaming ===

#[tokio::test]
async fn streams_the_recorded_body_in_pieces() {
    let (raw, expected) = recorded();
    let pieces = split(raw.as_bytes(), &[7, 300, 1, 64, 1000, 2, 150]);
    assert!(pieces.len() > 20);
    let (url, log) =
        serve(move |_, _| Some(sse(pieces.clone(), Duration::from_millis(1), End::Close))).await;
    let c = client(&url, &["sk-test-A"]);

    let stream = c.chat_stream(&request()).await.unwrap();
    assert_eq!(stream.request_id(), Some("req_stream_1"));
    let chunks: Vec<ChatChunk> = drain(stream)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    assert_eq!(
        chunks.len() as u64,
        expected["data_events"].as_u64().unwrap()
    );
    let content: String = chunks.iter().filter_map(ChatChunk::content).collect();
    assert_eq!(content, expected["content"]);
    let last = chunks.last().unwrap();
    assert!(last.choices.is_empty());
    assert_eq!(
        serde_json::to_value(last.usage.as_ref().unwrap()).unwrap(),
        expected["usage"]
    );
    assert_eq!(chunks[31].choices[0].finish_reason.as_deref(), Some("stop"));

    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(req.auth().as_deref(), Some("Bearer sk-test-A"));
    assert_eq!(req.body["stream"], true);
    assert_eq!(req.body["stream_options"]["include_usage"], true);
    assert_eq!(req.body["model"], "gpt-4o");
    assert_eq!(req.body["messages"][0]["role"], "user");
    assert_eq!(req.headers[header::ACCEPT], "text/event-stream");
    assert_eq!(req.headers[header::CONTENT_TYPE], "application/json");
    assert!(
        req.headers[header::USER_AGENT]
            .to_str()
            .unwrap()
            .starts_with("chatrelay/")
    );
}

#[tokio::test]
async fn multibyte_utf8_split_across_pieces_and_extra_fields() {
    let words = ["你好", "，世界", "🙂", "！"];
    let mut body = String::new();
    body.push_str(": OPENROUTER PROCESSING\n\n");
    body.push_str(
        r#"data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"deepseek-reasoner","choices":[{"index":0,"delta":{"role":"assistant","content":null,"reasoning_content":"思考中"},"finish_reason":null}]}"#,
    );
    body.push_str("\r\n\r\n");
    for w in words {
        body.push_str(&format!(
            "data: {}\n\n",
            json!({"id":"x","object":"chat.completion.chunk","created":1,"model":"deepseek-reasoner",
                   "choices":[{"index":0,"delta":{"content":w},"finish_reason":null}]})
        ));
    }
    body.push_str("data: [DONE]\n\n");
    // Pieces of 1, 2 and 4 bytes put cuts inside every multi-byte character.
    let pieces = split(body.as_bytes(), &[1, 2, 4, 1]);
    let (url, _log) =
        serve(move |_, _| Some(sse(pieces.clone(), Duration::from_micros(200), End::Close))).await;
    let c = client(&url, &[]);
    let chunks: Vec<ChatChunk> = drain(c.chat_stream(&request()).await.unwrap())
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(chunks.len(), 5);
    assert_eq!(
        chunks[0].choices[0].delta.extra["reasoning_content"],
        "思考中"
    );
    let content: String = chunks.iter().filter_map(ChatChunk::content).collect();
    assert_eq!(content, words.concat());
}

#[tokio::test]
async fn stalled_stream_is_idle_timeout() {
    let (raw, _) = recorded();
    let first_two: Vec<u8> = raw
        .split_inclusive("\n\n")
        .take(2)
        .collect::<String>()
        .into_bytes();
    let (url, _log) =
        serve(move |_, _| Some(sse(vec![first_two.clone()], Duration::ZERO, End::Hang))).await;
    let c = Client::new(ClientConfig {
        idle_timeout: Duration::from_millis(300),
        ..config(&url, &[])
    })
    .unwrap();
    let started = Instant::now();
    let items = drain(c.chat_stream(&request()).await.unwrap()).await;
    let elapsed = started.elapsed();
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(items[0].is_ok() && items[1].is_ok());
    assert_eq!(items[2], Err(Error::Timeout { what: "idle" }));
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn stream_closed_without_done_is_incomplete() {
    let (raw, _) = recorded();
    let without_done = raw.replace("data: [DONE]\n\n", "");
    let pieces = split(without_done.as_bytes(), &[500]);
    let (url, _log) =
        serve(move |_, _| Some(sse(pieces.clone(), Duration::ZERO, End::Close))).await;
    let items = drain(client(&url, &[]).chat_stream(&request()).await.unwrap()).await;
    assert_eq!(items.len(), 34);
    assert!(items[..33].iter().all(Result::is_ok));
    assert_eq!(items[33], Err(Error::Incomplete));
}

#[tokio::test]
async fn stream_cut_mid_way_is_incomplete() {
    let (raw, _) = recorded();
    let half = raw.as_bytes()[..raw.len() / 2].to_vec();
    let (url, _log) =
        serve(move |_, _| Some(sse(vec![half.clone()], Duration::ZERO, End::Abort))).await;
    let items = drain(client(&url, &[]).chat_stream(&request()).await.unwrap()).await;
    let (last, ok) = items.split_last().unwrap();
    assert!(ok.len() > 5 && ok.iter().all(Result::is_ok), "{items:?}");
    assert_eq!(last, &Err(Error::Incomplete));
}

#[tokio::test]
async fn error_object_inside_stream() {
    let (raw, _) = recorded();
    let mut body: String = raw.split_inclusive("\n\n").take(3).collect();
    body.push_str(
        "data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n",
    );
    body.push_str("data: [DONE]\n\n");
    let (url, _log) = serve(move |_, _| {
        Some(sse(
            vec![body.clone().into_bytes()],
            Duration::ZERO,
            End::Close,
        ))
    })
    .await;
    let items = drain(client(&url, &[]).chat_stream(&request()).await.unwrap()).await;
    assert_eq!(items.len(), 4);
    match &items[3] {
        Err(
            e @ Error::Api {
                status: 0,
                kind,
                message,
                request_id,
                ..
            },
        ) => {
            assert_eq!(kind.as_deref(), Some("server_error"));
            assert!(message.contains("server had an error"));
            assert_eq!(request_id.as_deref(), Some("req_stream_1"));
            assert!(!e.is_retryable());
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn json_error_with_200_on_stream_request() {
    let (url, _log) = serve(|_, _| Some(api_error(200, "model_not_found", &[]))).await;
    let err = client(&url, &[]).chat_stream(&request()).await.unwrap_err();
    assert!(
        matches!(err, Error::Api { status: 200, ref code, .. } if code.as_deref() == Some("model_not_found")),
        "{err:?}"
    );
}

// === non-streaming ===

#[tokio::test]
async fn non_streaming_chat() {
    let (url, log) = serve(|_, _| Some(ok_completion())).await;
    let mut req = request();
    req.temperature = Some(0.2);
    req.extra.insert("stream".into(), json!(true)); // must not leak through
    req.extra.insert("top_p".into(), json!(0.5));
    let resp = client(&url, &["sk-test-A"]).chat(&req).await.unwrap();
    assert_eq!(resp.text(), "Sunny.");
    assert_eq!(resp.choices[0].finish_reason.as_deref(), Some("stop"));
    assert_eq!(resp.usage.as_ref().unwrap().total_tokens, 16);
    assert_eq!(resp.extra["system_fingerprint"], "fp_x");

    let seen = log.lock().unwrap()[0].clone();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.auth().as_deref(), Some("Bearer sk-test-A"));
    assert_eq!(seen.body["stream"], false);
    assert!(seen.body.get("stream_options").is_none());
    assert_eq!(seen.body["temperature"], 0.2);
    assert_eq!(seen.body["top_p"], 0.5);
}

#[tokio::test]
async fn models_are_listed_without_auth_when_no_keys() {
    let (url, log) = serve(|_, _| {
        Some(json_reply(
            200,
            &[],
            json!({"object": "list", "data": [
                {"id": "gpt-4o", "object": "model", "created": 1, "owned_by": "system"},
                {"id": "qwen2.5:7b", "object": "model", "owned_by": "library"}
            ]}),
        ))
    })
    .await;
    // A trailing slash on the base URL is tolerated.
    let models = client(&format!("{url}/"), &[]).models().await.unwrap();
    let ids: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["gpt-4o", "qwen2.5:7b"]);
    assert_eq!(models[1].owned_by, "library");
    let seen = log.lock().unwrap()[0].clone();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("GET", "/v1/models")
    );
    assert_eq!(seen.auth(), None);
}

// === errors and retries ===

#[tokio::test]
async fn retries_500_500_then_succeeds() {
    let (url, log) = serve(|n, _| {
        Some(if n < 2 {
            api_error(500, "server_error", &[])
        } else {
            ok_completion()
        })
    })
    .await;
    let resp = client(&url, &["sk-A"]).chat(&request()).await.unwrap();
    assert_eq!(resp.text(), "Sunny.");
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn streaming_request_is_retried_before_the_stream_starts() {
    let (raw, _) = recorded();
    let (url, log) = serve(move |n, _| {
        Some(if n == 0 {
            api_error(503, "overloaded", &[])
        } else {
            sse(vec![raw.clone().into_bytes()], Duration::ZERO, End::Close)
        })
    })
    .await;
    let items = drain(client(&url, &[]).chat_stream(&request()).await.unwrap()).await;
    assert_eq!(items.len(), 33);
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn gives_up_after_max_retries() {
    let (url, log) = serve(|_, _| {
        Some(api_error(
            500,
            "server_error",
            &[("x-request-id", "req_500")],
        ))
    })
    .await;
    let err = client(&url, &[]).chat(&request()).await.unwrap_err();
    assert_eq!(err.status(), Some(500));
    assert!(
        matches!(err, Error::Api { ref request_id, .. } if request_id.as_deref() == Some("req_500"))
    );
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn retry_after_ms_is_honoured() {
    let (url, log) = serve(|n, _| {
        Some(if n == 0 {
            api_error(
                429,
                "rate_limit_exceeded",
                &[("retry-after-ms", "400"), ("retry-after", "1")],
            )
        } else {
            ok_completion()
        })
    })
    .await;
    client(&url, &[]).chat(&request()).await.unwrap();
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    // retry-after-ms (400 ms) wins over retry-after (1 s) and over the 5 ms backoff.
    assert!(
        gap >= Duration::from_millis(380) && gap < Duration::from_millis(950),
        "{gap:?}"
    );
}

#[tokio::test]
async fn retry_after_longer_than_allowed_gives_up() {
    let (url, log) = serve(|_, _| {
        Some(api_error(
            429,
            "rate_limit_exceeded",
            &[("retry-after", "3600")],
        ))
    })
    .await;
    let started = Instant::now();
    let err = client(&url, &[]).chat(&request()).await.unwrap_err();
    assert_eq!(err.status(), Some(429));
    assert_eq!(log.lock().unwrap().len(), 1);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn insufficient_quota_is_not_retried() {
    let (url, log) = serve(|_, _| Some(api_error(429, "insufficient_quota", &[]))).await;
    let err = client(&url, &["sk-A"]).chat(&request()).await.unwrap_err();
    assert!(err.is_insufficient_quota());
    assert_eq!(err.status(), Some(429));
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn x_should_retry_header_overrides_status() {
    let (url, log) = serve(|_, _| {
        Some(api_error(
            500,
            "server_error",
            &[("x-should-retry", "false")],
        ))
    })
    .await;
    let err = client(&url, &[]).chat(&request()).await.unwrap_err();
    assert_eq!(err.status(), Some(500));
    assert_eq!(log.lock().unwrap().len(), 1);

    let (url, log) = serve(|n, _| {
        Some(if n == 0 {
            api_error(400, "flaky", &[("x-should-retry", "true")])
        } else {
            ok_completion()
        })
    })
    .await;
    client(&url, &[]).chat(&request()).await.unwrap();
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn rejected_key_is_skipped_and_set_aside() {
    let (url, log) = serve(|_, seen| {
        Some(match seen.auth().as_deref() {
            Some("Bearer sk-A") => api_error(401, "invalid_api_key", &[]),
            _ => ok_completion(),
        })
    })
    .await;
    let c = client(&url, &["sk-A", "sk-B"]);
    c.chat(&request()).await.unwrap();
    c.chat(&request()).await.unwrap();
    // A clone shares the key state.
    c.clone().chat(&request()).await.unwrap();
    let auths: Vec<Option<String>> = log.lock().unwrap().iter().map(Seen::auth).collect();
    assert_eq!(
        auths,
        [
            Some("Bearer sk-A"),
            Some("Bearer sk-B"),
            Some("Bearer sk-B"),
            Some("Bearer sk-B")
        ]
        .map(|a| a.map(str::to_owned))
    );
}

#[tokio::test]
async fn echoed_key_is_redacted_from_the_error() {
    let (url, _log) = serve(|_, _| {
        Some(json_reply(
            401,
            &[],
            json!({"error": {"message": "Incorrect API key provided: sk-echoed-secret", "code": "invalid_api_key"}}),
        ))
    })
    .await;
    let err = client(&url, &["sk-echoed-secret"])
        .chat(&request())
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("sk-echoed-secret"), "{text}");
    assert!(text.contains("key#"), "{text}");
}

#[test]
fn client_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let c = client("http://127.0.0.1:9/v1", &[]);
    let req = request();
    assert_send(&c.chat(&req));
    assert_send(&c.chat_stream(&req));
    assert_send(&c.models());
    assert_send(&c.images_generate(&ImageRequest::default()));
    assert_send(&c.moderate(&ModerationRequest::default()));
    fn assert_sync<T: Send + Sync + Clone>() {}
    assert_sync::<Client>();
}

#[tokio::test]
async fn keys_are_used_round_robin_and_401_with_one_key_fails() {
    let (url, log) = serve(|_, _| Some(ok_completion())).await;
    let c = client(&url, &["sk-A", "sk-B"]);
    for _ in 0..4 {
        c.chat(&request()).await.unwrap();
    }
    let auths: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.auth().unwrap())
        .collect();
    assert_eq!(
        auths,
        ["Bearer sk-A", "Bearer sk-B", "Bearer sk-A", "Bearer sk-B"]
    );

    let (url, log) = serve(|_, _| Some(api_error(401, "invalid_api_key", &[]))).await;
    let err = client(&url, &["sk-only"])
        .chat(&request())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn rate_limited_key_is_set_aside_for_the_retry() {
    let (url, log) = serve(|n, _| {
        Some(if n == 0 {
            api_error(429, "rate_limit_exceeded", &[])
        } else {
            ok_completion()
        })
    })
    .await;
    let c = client(&url, &["sk-A", "sk-B", "sk-C"]);
    c.chat(&request()).await.unwrap();
    c.chat(&request()).await.unwrap();
    c.chat(&request()).await.unwrap();
    let auths: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.auth().unwrap())
        .collect();
    // A throttled; retry on B; then C, then B again (A is cooling down).
    assert_eq!(
        auths,
        ["Bearer sk-A", "Bearer sk-B", "Bearer sk-C", "Bearer sk-B"]
    );
}

#[tokio::test]
async fn proxy_html_502_is_an_api_error() {
    let (url, log) = serve(|_, _| {
        Some(
            (
                StatusCode::BAD_GATEWAY,
                [(header::CONTENT_TYPE, "text/html")],
                "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.18.0</center>\r\n</body>\r\n</html>\r\n",
            )
                .into_response(),
        )
    })
    .await;
    let c = Client::new(ClientConfig {
        max_retries: 0,
        ..config(&url, &[])
    })
    .unwrap();
    let err = c.chat_stream(&request()).await.unwrap_err();
    assert_eq!(err.status(), Some(502));
    assert!(err.is_retryable());
    assert!(err.to_string().contains("502 Bad Gateway"), "{err}");
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn non_json_success_body_is_decode_error() {
    let (url, _log) =
        serve(|_, _| Some((StatusCode::OK, "<html>login page</html>").into_response())).await;
    let err = client(&url, &[]).chat(&request()).await.unwrap_err();
    assert!(
        matches!(err, Error::Decode { ref raw, .. } if raw.contains("login page")),
        "{err:?}"
    );
}

// === timeouts and network ===

#[tokio::test]
async fn server_that_never_answers_times_out_and_is_retried() {
    let (url, log) = serve(|_, _| None).await;
    let c = Client::new(ClientConfig {
        timeout: Duration::from_millis(300),
        max_retries: 1,
        ..config(&url, &[])
    })
    .unwrap();
    let started = Instant::now();
    let err = c.chat(&request()).await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err, Error::Timeout { what: "response" });
    assert!(
        elapsed >= Duration::from_millis(550) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    assert_eq!(log.lock().unwrap().len(), 2);

    // Streaming: the timeout applies until the headers arrive.
    let c = Client::new(ClientConfig {
        timeout: Duration::from_millis(300),
        max_retries: 0,
        ..config(&url, &[])
    })
    .unwrap();
    let err = c.chat_stream(&request()).await.unwrap_err();
    assert_eq!(err, Error::Timeout { what: "response" });
}

#[tokio::test]
async fn slow_stream_within_idle_timeout_is_not_cut_by_the_request_timeout() {
    let (raw, _) = recorded();
    let pieces = split(raw.as_bytes(), &[2000]);
    assert!(pieces.len() >= 5);
    // Total time (>= 5 x 100 ms) exceeds `timeout` (250 ms); gaps stay under idle.
    let (url, _log) =
        serve(move |_, _| Some(sse(pieces.clone(), Duration::from_millis(100), End::Close))).await;
    let c = Client::new(ClientConfig {
        timeout: Duration::from_millis(250),
        idle_timeout: Duration::from_secs(2),
        ..config(&url, &[])
    })
    .unwrap();
    let items = drain(c.chat_stream(&request()).await.unwrap()).await;
    assert_eq!(items.len(), 33);
    assert!(items.iter().all(Result::is_ok));
}

#[tokio::test]
async fn connection_refused_is_network_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let c = Client::new(ClientConfig {
        max_retries: 0,
        ..config(&format!("http://{addr}/v1"), &[])
    })
    .unwrap();
    let err = c.chat(&request()).await.unwrap_err();
    assert!(matches!(err, Error::Network(_)), "{err:?}");
    assert!(err.is_retryable());
}

// === extra headers ===

#[tokio::test]
async fn extra_headers_are_sent_on_every_request() {
    let (url, log) = serve(|n, _| {
        Some(if n == 0 {
            ok_completion()
        } else {
            json_reply(200, &[], json!({"data": []}))
        })
    })
    .await;
    let c = Client::new(ClientConfig {
        headers: vec![
            ("X-DashScope-SSE".into(), "enable".into()),
            ("OpenAI-Organization".into(), " org-42 ".into()),
        ],
        ..config(&url, &["sk-A"])
    })
    .unwrap();
    c.chat(&request()).await.unwrap();
    c.models().await.unwrap();
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for req in &seen {
        assert_eq!(req.headers["x-dashscope-sse"], "enable");
        assert_eq!(req.headers["openai-organization"], "org-42");
        assert_eq!(req.auth().as_deref(), Some("Bearer sk-A"));
        assert_eq!(req.headers.get_all(header::ACCEPT).iter().count(), 1);
    }
}

// === images ===

fn image_request() -> ImageRequest {
    let mut req = ImageRequest {
        model: "dall-e-3".into(),
        prompt: "a red panda reading a newspaper".into(),
        n: Some(1),
        size: Some("1024x1024".into()),
        response_format: Some("b64_json".into()),
        ..ImageRequest::default()
    };
    req.extra.insert("quality".into(), json!("hd"));
    req
}

fn images_ok() -> Response {
    json_reply(
        200,
        &[],
        json!({"created": 1_713_833_628, "data": [
            {"b64_json": "iVBORw0KGgo=", "revised_prompt": "A red panda ..."},
            {"url": "https://files.example/img.png"}
        ]}),
    )
}

#[tokio::test]
async fn images_generate_posts_and_decodes() {
    let (url, log) = serve(|_, _| Some(images_ok())).await;
    let resp = client(&url, &["sk-A"])
        .images_generate(&image_request())
        .await
        .unwrap();
    assert_eq!(resp.created, 1_713_833_628);
    assert_eq!(resp.data.len(), 2);
    assert_eq!(resp.data[0].b64_json.as_deref(), Some("iVBORw0KGgo="));
    assert_eq!(
        resp.data[0].revised_prompt.as_deref(),
        Some("A red panda ...")
    );
    assert_eq!(
        resp.data[1].url.as_deref(),
        Some("https://files.example/img.png")
    );
    assert_eq!(resp.data[1].b64_json, None);

    let seen = log.lock().unwrap()[0].clone();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/v1/images/generations")
    );
    assert_eq!(seen.auth().as_deref(), Some("Bearer sk-A"));
    assert_eq!(seen.headers[header::ACCEPT], "application/json");
    assert_eq!(
        seen.body,
        json!({"model": "dall-e-3", "prompt": "a red panda reading a newspaper", "n": 1,
               "size": "1024x1024", "response_format": "b64_json", "quality": "hd"})
    );
}

#[tokio::test]
async fn images_generate_api_error_and_retry() {
    let (url, log) = serve(|_, _| {
        Some(json_reply(
            400,
            &[("x-request-id", "req_img")],
            json!({"error": {"message": "Your request was rejected by the safety system.",
                             "type": "invalid_request_error", "code": "content_policy_violation"}}),
        ))
    })
    .await;
    let err = client(&url, &[])
        .images_generate(&image_request())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Api { status: 400, ref code, ref request_id, .. }
            if code.as_deref() == Some("content_policy_violation") && request_id.as_deref() == Some("req_img")),
        "{err:?}"
    );
    assert_eq!(log.lock().unwrap().len(), 1);

    let (url, log) = serve(|n, _| {
        Some(if n == 0 {
            api_error(500, "server_error", &[])
        } else {
            images_ok()
        })
    })
    .await;
    let resp = client(&url, &[])
        .images_generate(&image_request())
        .await
        .unwrap();
    assert_eq!(resp.data.len(), 2);
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn large_b64_image_within_the_limit() {
    let b64 = "A".repeat(6 * 1024 * 1024);
    let body = json!({"created": 1, "data": [{"b64_json": b64}]});
    let (url, _log) = serve(move |_, _| Some(json_reply(200, &[], body.clone()))).await;
    let resp = client(&url, &[])
        .images_generate(&image_request())
        .await
        .unwrap();
    assert_eq!(
        resp.data[0].b64_json.as_ref().unwrap().len(),
        6 * 1024 * 1024
    );
}

// === moderation ===

fn moderation_ok() -> Response {
    json_reply(
        200,
        &[],
        json!({"id": "modr-970d409ef3bef3b70c73d8232df86e7d", "model": "omni-moderation-latest",
               "results": [{"flagged": true,
                            "categories": {"sexual": false, "harassment": true, "violence": true,
                                           "violence/graphic": false},
                            "category_scores": {"sexual": 0.0001, "harassment": 0.81, "violence": 0.97,
                                                "violence/graphic": 0.02},
                            "category_applied_input_types": {"violence": ["text"]}}]}),
    )
}

#[tokio::test]
async fn moderate_posts_and_decodes() {
    let (url, log) = serve(|_, _| Some(moderation_ok())).await;
    let req = ModerationRequest {
        model: Some("omni-moderation-latest".into()),
        input: "I will hurt you".into(),
        ..ModerationRequest::default()
    };
    let resp = client(&url, &["sk-A"]).moderate(&req).await.unwrap();
    assert_eq!(resp.model, "omni-moderation-latest");
    assert!(resp.is_flagged());
    assert_eq!(resp.flagged_categories(), ["harassment", "violence"]);
    assert_eq!(resp.results[0].category_scores["violence"], 0.97);

    let seen = log.lock().unwrap()[0].clone();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/v1/moderations")
    );
    assert_eq!(
        seen.body,
        json!({"model": "omni-moderation-latest", "input": "I will hurt you"})
    );
}

#[tokio::test]
async fn moderate_api_error_and_retry() {
    let req = ModerationRequest {
        input: "hello".into(),
        ..ModerationRequest::default()
    };
    let (url, log) = serve(|_, _| Some(api_error(404, "model_not_found", &[]))).await;
    let err = client(&url, &[]).moderate(&req).await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(log.lock().unwrap().len(), 1);
    assert_eq!(log.lock().unwrap()[0].body, json!({"input": "hello"}));

    let (url, log) = serve(|n, _| {
        Some(if n == 0 {
            api_error(500, "server_error", &[])
        } else {
            json_reply(
                200,
                &[],
                json!({"id": "modr-2", "results": [{"flagged": false}]}),
            )
        })
    })
    .await;
    let resp = client(&url, &[]).moderate(&req).await.unwrap();
    assert!(!resp.is_flagged());
    assert!(resp.results[0].categories.is_empty());
    assert_eq!(log.lock().unwrap().len(), 2);
}

// === text to speech ===

/// An audio answer: `bytes` as `audio/ogg`.
fn audio_reply(bytes: &'static [u8]) -> Response {
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "audio/ogg")
        .body(Body::from(bytes))
        .unwrap()
}

#[tokio::test]
async fn speak_posts_the_text_and_returns_the_audio_bytes() {
    let (url, log) = serve(|_, _| Some(audio_reply(b"OggS\x00\x02opus-audio"))).await;
    let req = SpeechRequest::new("tts-1", "你好，世界", "alloy", "opus");
    let speech = client(&url, &["sk-A"]).speak(&req).await.unwrap();
    assert_eq!(&speech.audio[..], b"OggS\x00\x02opus-audio");
    assert_eq!(speech.content_type.as_deref(), Some("audio/ogg"));
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/v1/audio/speech");
    assert_eq!(seen[0].auth().as_deref(), Some("Bearer sk-A"));
    assert_eq!(
        seen[0].body,
        json!({"model": "tts-1", "input": "你好，世界", "voice": "alloy", "response_format": "opus"})
    );
}

#[tokio::test]
async fn speak_refuses_bad_requests_before_any_call() {
    let (url, log) = serve(|_, _| Some(audio_reply(b"never"))).await;
    let c = client(&url, &["sk-A"]);
    let empty = SpeechRequest::new("tts-1", "  ", "alloy", "mp3");
    assert_eq!(c.speak(&empty).await, Err(SpeechError::EmptyInput));
    let long = SpeechRequest::new("tts-1", "a".repeat(5000), "alloy", "mp3");
    assert!(matches!(
        c.speak(&long).await,
        Err(SpeechError::InputTooLong { chars: 5000, .. })
    ));
    let amr = SpeechRequest::new("tts-1", "hi", "alloy", "amr");
    assert!(matches!(c.speak(&amr).await, Err(SpeechError::Invalid(_))));
    assert!(log.lock().unwrap().is_empty(), "nothing may be sent");
}

#[tokio::test]
async fn speak_bounds_the_audio_it_reads() {
    // Announced length over the limit.
    let (url, _) = serve(|_, _| Some(audio_reply(&[7u8; 64]))).await;
    let mut req = SpeechRequest::new("tts-1", "hi", "alloy", "mp3");
    req.max_bytes = 63;
    let c = client(&url, &["sk-A"]);
    assert_eq!(c.speak(&req).await, Err(SpeechError::TooLarge { max: 63 }));
    req.max_bytes = 64;
    assert_eq!(c.speak(&req).await.unwrap().audio.len(), 64);
    // No announced length (chunked): cut while reading.
    let (url, _) = serve(|_, _| {
        let chunks =
            stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(&[1u8; 1000]))));
        Some(
            Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, "audio/mpeg")
                .body(Body::from_stream(chunks))
                .unwrap(),
        )
    })
    .await;
    req.max_bytes = 2500;
    assert_eq!(
        client(&url, &["sk-A"]).speak(&req).await,
        Err(SpeechError::TooLarge { max: 2500 })
    );
}

#[tokio::test]
async fn speak_errors_are_typed_not_audio() {
    let req = SpeechRequest::new("tts-1", "hi", "alloy", "mp3");
    // An error sent with 200 (some gateways do).
    let (url, _) = serve(|_, _| Some(api_error(200, "model_not_found", &[]))).await;
    let Err(SpeechError::Api(Error::Api { code, .. })) = client(&url, &["sk-A"]).speak(&req).await
    else {
        panic!("a JSON error must be an API error");
    };
    assert_eq!(code.as_deref(), Some("model_not_found"));
    // A plain 400.
    let (url, log) = serve(|_, _| Some(api_error(400, "invalid_value", &[]))).await;
    let err = client(&url, &["sk-A"]).speak(&req).await.unwrap_err();
    let SpeechError::Api(e) = err else {
        panic!("{err:?}")
    };
    assert_eq!(e.status(), Some(400));
    assert_eq!(log.lock().unwrap().len(), 1, "400 is not retried");
    // An empty body is not a voice message.
    let (url, _) = serve(|_, _| Some(audio_reply(b""))).await;
    assert!(matches!(
        client(&url, &["sk-A"]).speak(&req).await,
        Err(SpeechError::Api(Error::Decode { .. }))
    ));
}
