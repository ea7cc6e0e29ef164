//! End-to-end tests of `router::Router` over fake OpenAI-compatible servers
//! (axum on 127.0.0.1:0): fallback on the errors that warrant it and only on
//! those, the health counters and circuit breaker, and the bookkeeping of
//! routed streams. No real host is ever contacted. Clients use
//! `max_retries: 0` so that each route costs one request and tests stay fast.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chatrelay_openai::router::{Route, RoutedStream, Router, UpstreamHealth, UpstreamState};
use chatrelay_openai::speech::{SpeechError, SpeechRequest};
use chatrelay_openai::{
    ChatChunk, ChatRequest, Client, ClientConfig, Error, ImageRequest, Message, ModerationRequest,
};
use futures_util::{Stream, StreamExt, stream};
use serde_json::{Value, json};

// === fake servers ===

/// One request a fake server received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    body: Value,
    at: Instant,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Starts a server whose reply to the n-th request (0-based) is
/// `script(n, &request)`.
async fn serve<F>(script: F) -> (String, Log)
where
    F: Fn(usize, &Seen) -> Response + Send + Sync + 'static,
{
    serve_delayed(|_| Duration::ZERO, script).await
}

/// Like `serve`, answering the n-th request after `delay(n)`.
async fn serve_delayed<D, F>(delay: D, script: F) -> (String, Log)
where
    D: Fn(usize) -> Duration + Send + Sync + 'static,
    F: Fn(usize, &Seen) -> Response + Send + Sync + 'static,
{
    let log: Log = Arc::default();
    let delay = Arc::new(delay);
    let script = Arc::new(script);
    let log2 = log.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let log = log2.clone();
        let script = script.clone();
        let delay = delay.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let seen = Seen {
                path: parts.uri.path().to_owned(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                at: Instant::now(),
            };
            let n = {
                let mut log = log.lock().unwrap();
                log.push(seen.clone());
                log.len() - 1
            };
            tokio::time::sleep(delay(n)).await;
            script(n, &seen)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), log)
}

/// A base URL on which nothing listens.
fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/v1")
}

fn client(base_url: &str) -> Client {
    Client::new(ClientConfig {
        base_url: base_url.to_owned(),
        api_keys: vec!["sk-test".into()],
        timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        max_retries: 0,
        ..ClientConfig::default()
    })
    .unwrap()
}

fn router(upstreams: &[(&str, &str)]) -> Router {
    Router::new(
        upstreams
            .iter()
            .map(|(id, url)| ((*id).to_owned(), client(url)))
            .collect(),
    )
}

fn routes(ids: &[&str]) -> Vec<Route> {
    ids.iter()
        .map(|id| Route::new(*id, format!("model-{id}")))
        .collect()
}

fn request() -> ChatRequest {
    ChatRequest {
        model: "whatever-the-user-asked".into(),
        messages: vec![Message::new("user", "What's the weather in San Francisco?")],
        ..ChatRequest::default()
    }
}

fn health(router: &Router, id: &str) -> UpstreamHealth {
    router.health().into_iter().find(|h| h.id == id).unwrap()
}

fn json_reply(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn api_error(status: u16, code: &str) -> Response {
    json_reply(
        status,
        json!({"error": {"message": format!("fake {code}"), "type": "fake_error", "param": null, "code": code}}),
    )
}

fn completion() -> Response {
    json_reply(
        200,
        json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sunny."},
                            "finish_reason": "stop"}]}),
    )
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

/// An event-stream response with `pieces`, then closing or hanging.
fn sse(pieces: Vec<String>, hang: bool) -> Response {
    let body = stream::iter(pieces).then(|p| async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok::<_, std::io::Error>(Bytes::from(p))
    });
    let body = if hang {
        Body::from_stream(body.chain(stream::pending()))
    } else {
        Body::from_stream(body)
    };
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

/// The whole recorded stream, in pieces of 500 bytes.
fn recorded_sse() -> Response {
    let (raw, _) = recorded();
    let pieces = raw
        .as_bytes()
        .chunks(500)
        .map(|c| String::from_utf8_lossy(c).into_owned());
    // Lossy is fine only if no piece cuts a character: the recording is ASCII.
    assert!(raw.is_ascii());
    sse(pieces.collect(), false)
}

/// The first `events` events of the recorded stream, without `[DONE]`.
fn partial_sse(events: usize, hang: bool) -> Response {
    let (raw, _) = recorded();
    sse(
        raw.split_inclusive("\n\n")
            .take(events)
            .map(str::to_owned)
            .collect(),
        hang,
    )
}

async fn drain(mut s: RoutedStream) -> Vec<Result<ChatChunk, Error>> {
    let mut items = Vec::new();
    while let Some(item) = s.next().await {
        items.push(item);
    }
    items
}

// === fallback ===

#[tokio::test]
async fn stream_falls_back_on_500_and_arrives_intact() {
    let (a, log_a) = serve(|_, _| api_error(500, "server_error")).await;
    let (b, log_b) = serve(|_, _| recorded_sse()).await;
    let r = router(&[("a", &a), ("b", &b)]);

    let (stream, index) = r
        .chat_stream(&routes(&["a", "b"]), &request())
        .await
        .unwrap();
    assert_eq!(index, 1);
    assert_eq!(stream.upstream(), "b");
    let chunks: Vec<ChatChunk> = drain(stream)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let (_, expected) = recorded();
    let content: String = chunks.iter().filter_map(ChatChunk::content).collect();
    assert_eq!(content, expected["content"]);
    assert!(chunks.last().unwrap().usage.is_some());

    let a_seen = log_a.lock().unwrap().clone();
    let b_seen = log_b.lock().unwrap().clone();
    assert_eq!(a_seen.len(), 1);
    assert_eq!(a_seen[0].body["model"], "model-a");
    assert_eq!(b_seen.len(), 1);
    assert_eq!(b_seen[0].body["model"], "model-b");
    assert_eq!(b_seen[0].body["stream"], true);
    assert_eq!(b_seen[0].body["messages"][0]["role"], "user");

    let ha = health(&r, "a");
    assert_eq!((ha.requests_total, ha.errors_total), (1, 1));
    assert_eq!(ha.consecutive_failures, 1);
    assert_eq!(ha.state, UpstreamState::Degraded);
    assert!(ha.last_error.unwrap().contains("HTTP 500"));
    assert!(ha.last_error_at_ms.is_some());
    assert_eq!(ha.latency_ms, None);
    let hb = health(&r, "b");
    assert_eq!((hb.requests_total, hb.errors_total), (1, 0));
    assert_eq!(hb.state, UpstreamState::Up);
    assert!(hb.latency_ms.is_some());
    assert_eq!(hb.recent_error_rate, 0.0);
    let v = serde_json::to_value(r.health()).unwrap();
    assert_eq!(v[0]["state"], "degraded");
    assert_eq!(v[1]["id"], "b");
}

#[tokio::test]
async fn falls_back_on_429_rate_limit_and_insufficient_quota() {
    for code in ["rate_limit_exceeded", "insufficient_quota"] {
        let (a, log_a) = serve(move |_, _| api_error(429, code)).await;
        let (b, _) = serve(|_, _| completion()).await;
        let r = router(&[("a", &a), ("b", &b)]);
        let (resp, index) = r.chat(&routes(&["a", "b"]), &request()).await.unwrap();
        assert_eq!((resp.text().as_str(), index), ("Sunny.", 1), "{code}");
        assert_eq!(log_a.lock().unwrap().len(), 1, "{code}");
        assert_eq!(health(&r, "a").errors_total, 1, "{code}");
    }
}

#[tokio::test]
async fn falls_back_on_connection_refused() {
    let a = refused_url();
    let (b, _) = serve(|_, _| recorded_sse()).await;
    let r = router(&[("a", &a), ("b", &b)]);
    let (stream, index) = r
        .chat_stream(&routes(&["a", "b"]), &request())
        .await
        .unwrap();
    assert_eq!(index, 1);
    assert!(drain(stream).await.iter().all(Result::is_ok));
    let ha = health(&r, "a");
    assert_eq!(ha.errors_total, 1);
    assert!(ha.last_error.unwrap().starts_with("network error"));
}

#[tokio::test]
async fn falls_back_on_401() {
    let (a, log_a) = serve(|_, _| api_error(401, "invalid_api_key")).await;
    let (b, log_b) = serve(|_, _| completion()).await;
    let r = router(&[("a", &a), ("b", &b)]);
    let (_, index) = r.chat(&routes(&["a", "b"]), &request()).await.unwrap();
    assert_eq!(index, 1);
    assert_eq!(log_a.lock().unwrap().len(), 1);
    assert_eq!(log_b.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn no_fallback_on_400() {
    let (a, log_a) = serve(|_, _| api_error(400, "context_length_exceeded")).await;
    let (b, log_b) = serve(|_, _| recorded_sse()).await;
    let r = router(&[("a", &a), ("b", &b)]);
    let err = r
        .chat_stream(&routes(&["a", "b"]), &request())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Api { status: 400, ref code, .. } if code.as_deref() == Some("context_length_exceeded")),
        "{err:?}"
    );
    assert_eq!(log_a.lock().unwrap().len(), 1);
    assert_eq!(log_b.lock().unwrap().len(), 0);
    // A refused request is not the upstream's fault.
    let ha = health(&r, "a");
    assert_eq!((ha.requests_total, ha.errors_total), (1, 0));
    assert_eq!(ha.consecutive_failures, 0);
    assert_eq!(ha.last_error, None);
    assert_eq!(ha.state, UpstreamState::Up);
}

#[tokio::test]
async fn every_route_failing_returns_the_last_error() {
    let (a, _) = serve(|_, _| api_error(500, "server_error")).await;
    let (b, _) = serve(|_, _| api_error(503, "overloaded")).await;
    let c = refused_url();
    let r = router(&[("a", &a), ("b", &b), ("c", &c)]);
    let err = r.chat(&routes(&["a", "b"]), &request()).await.unwrap_err();
    assert_eq!(err.status(), Some(503));
    let err = r
        .chat_stream(&routes(&["b", "c"]), &request())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Network(_)), "{err:?}");
    let err = r
        .chat_stream(&routes(&["c", "a"]), &request())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(500));
}

#[tokio::test]
async fn unknown_upstream_or_no_route_is_invalid_config() {
    let (a, log_a) = serve(|_, _| completion()).await;
    let r = router(&[("a", &a)]);
    assert!(r.has_upstream("a") && !r.has_upstream("zz"));
    let err = r.chat(&routes(&["a", "zz"]), &request()).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidConfig(ref m) if m.contains("unknown upstream") && m.contains("zz")),
        "{err:?}"
    );
    // Nothing is sent when the routes are invalid.
    assert_eq!(log_a.lock().unwrap().len(), 0);
    let err = r.chat(&[], &request()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
}

// === health and circuit breaker ===

#[tokio::test]
async fn breaker_opens_demotes_then_half_open_success_closes_it() {
    let a_ok = Arc::new(AtomicBool::new(false));
    let a_ok2 = a_ok.clone();
    let (a, log_a) = serve(move |_, _| {
        if a_ok2.load(Ordering::SeqCst) {
            completion()
        } else {
            api_error(500, "server_error")
        }
    })
    .await;
    let (b, log_b) = serve(|_, _| completion()).await;
    let (c, log_c) = serve(|_, _| api_error(503, "overloaded")).await;
    let cooldown = Duration::from_millis(400);
    let r = router(&[("a", &a), ("b", &b), ("c", &c)]).with_cooldown(cooldown);

    for i in 1..=5 {
        let (_, index) = r.chat(&routes(&["a", "b"]), &request()).await.unwrap();
        assert_eq!(index, 1);
        let ha = health(&r, "a");
        assert_eq!(ha.consecutive_failures, i);
        let expected = if i < 5 {
            UpstreamState::Degraded
        } else {
            UpstreamState::Down
        };
        assert_eq!(ha.state, expected, "after {i} failures");
    }
    assert_eq!(log_a.lock().unwrap().len(), 5);

    // Down: a healthy upstream goes first, and A is not even asked.
    let (_, index) = r.chat(&routes(&["a", "b"]), &request()).await.unwrap();
    assert_eq!(index, 1);
    assert_eq!(log_a.lock().unwrap().len(), 5);
    assert_eq!(log_b.lock().unwrap().len(), 6);

    // Down, but tried after the healthy route fails; its error is the last.
    let err = r.chat(&routes(&["a", "c"]), &request()).await.unwrap_err();
    assert_eq!(err.status(), Some(500));
    let a_at = log_a.lock().unwrap().last().unwrap().at;
    let c_at = log_c.lock().unwrap().last().unwrap().at;
    assert!(c_at < a_at);
    assert_eq!(log_a.lock().unwrap().len(), 6);

    // Everything down: still tried.
    let err = r.chat(&routes(&["a"]), &request()).await.unwrap_err();
    assert_eq!(err.status(), Some(500));
    assert_eq!(log_a.lock().unwrap().len(), 7);
    let ha = health(&r, "a");
    assert_eq!(ha.state, UpstreamState::Down);
    assert_eq!(
        (ha.requests_total, ha.errors_total, ha.consecutive_failures),
        (7, 7, 7)
    );

    // After the cooldown, one request goes to A in its normal place (the
    // probe); it succeeds and A is up again.
    a_ok.store(true, Ordering::SeqCst);
    tokio::time::sleep(cooldown + Duration::from_millis(100)).await;
    let (_, index) = r.chat(&routes(&["a", "b"]), &request()).await.unwrap();
    assert_eq!(index, 0);
    let ha = health(&r, "a");
    assert_eq!(ha.consecutive_failures, 0);
    assert_ne!(ha.state, UpstreamState::Down);
    assert!(ha.latency_ms.is_some());
    let (_, index) = r.chat(&routes(&["a", "b"]), &request()).await.unwrap();
    assert_eq!(index, 0);
}

#[tokio::test]
async fn failed_probe_reopens_and_dropped_probe_frees_the_slot() {
    let a_streams = Arc::new(AtomicBool::new(false));
    let a_streams2 = a_streams.clone();
    let (a, log_a) = serve(move |_, _| {
        if a_streams2.load(Ordering::SeqCst) {
            partial_sse(2, true)
        } else {
            api_error(502, "bad_gateway")
        }
    })
    .await;
    let (b, _) = serve(|_, _| completion()).await;
    let cooldown = Duration::from_millis(300);
    let r = router(&[("a", &a), ("b", &b)]).with_cooldown(cooldown);
    for _ in 0..5 {
        r.chat(&routes(&["a", "b"]), &request()).await.unwrap();
    }
    assert_eq!(health(&r, "a").state, UpstreamState::Down);

    // The probe fails: down again for a whole cooldown.
    tokio::time::sleep(cooldown + Duration::from_millis(50)).await;
    let (_, index) = r.chat(&routes(&["a", "b"]), &request()).await.unwrap();
    assert_eq!(index, 1);
    assert_eq!(log_a.lock().unwrap().len(), 6);
    let (_, index) = r.chat(&routes(&["a", "b"]), &request()).await.unwrap();
    assert_eq!(index, 1);
    assert_eq!(log_a.lock().unwrap().len(), 6);

    // A streaming probe dropped early records nothing and lets the next
    // request probe at once.
    a_streams.store(true, Ordering::SeqCst);
    tokio::time::sleep(cooldown + Duration::from_millis(50)).await;
    let (mut stream, index) = r
        .chat_stream(&routes(&["a", "b"]), &request())
        .await
        .unwrap();
    assert_eq!(index, 0);
    // While the probe is in flight, others go to B first.
    let (_, index) = r.chat(&routes(&["a", "b"]), &request()).await.unwrap();
    assert_eq!(index, 1);
    stream.next().await.unwrap().unwrap();
    drop(stream);
    let ha = health(&r, "a");
    assert_eq!(ha.state, UpstreamState::Down);
    assert_eq!(ha.errors_total, 6);
    let (stream, index) = r
        .chat_stream(&routes(&["a", "b"]), &request())
        .await
        .unwrap();
    assert_eq!(index, 0);
    drop(stream);
}

#[tokio::test]
async fn in_stream_error_is_recorded_as_a_failure() {
    let (b, _) = serve(|_, _| partial_sse(3, false)).await;
    let r = router(&[("b", &b)]);
    let (stream, index) = r.chat_stream(&routes(&["b"]), &request()).await.unwrap();
    assert_eq!(index, 0);
    // Headers arrived, but nothing is recorded before the stream ends.
    assert_eq!(health(&r, "b").errors_total, 0);
    let items = drain(stream).await;
    assert_eq!(items.len(), 4);
    assert!(items[..3].iter().all(Result::is_ok));
    assert_eq!(items[3], Err(Error::Incomplete));
    let hb = health(&r, "b");
    assert_eq!((hb.requests_total, hb.errors_total), (1, 1));
    assert_eq!(hb.consecutive_failures, 1);
    assert_eq!(hb.recent_error_rate, 1.0);
    assert_eq!(
        hb.last_error.as_deref(),
        Some("the stream ended before [DONE]")
    );
    assert_eq!(hb.latency_ms, None);
}

#[tokio::test]
async fn stream_dropped_early_records_nothing() {
    let (b, _) = serve(|_, _| partial_sse(2, true)).await;
    let r = router(&[("b", &b)]);
    let (mut stream, _) = r.chat_stream(&routes(&["b"]), &request()).await.unwrap();
    assert!(stream.next().await.unwrap().is_ok());
    drop(stream);
    let hb = health(&r, "b");
    assert_eq!(hb.requests_total, 1);
    assert_eq!(hb.errors_total, 0);
    assert_eq!(hb.consecutive_failures, 0);
    assert_eq!(hb.recent_error_rate, 0.0);
    assert_eq!(hb.latency_ms, None);
    assert_eq!(hb.last_error, None);
    assert_eq!(hb.state, UpstreamState::Up);
}

#[tokio::test]
async fn latency_is_recorded_after_success() {
    // The headers come after 150 ms, then after 50 ms.
    let (b, _) = serve_delayed(
        |n| Duration::from_millis(if n == 0 { 150 } else { 50 }),
        |_, _| recorded_sse(),
    )
    .await;
    let r = router(&[("b", &b)]);
    let (stream, _) = r.chat_stream(&routes(&["b"]), &request()).await.unwrap();
    assert_eq!(health(&r, "b").latency_ms, None);
    assert!(drain(stream).await.iter().all(Result::is_ok));
    let first = health(&r, "b").latency_ms.unwrap();
    assert!((150..1000).contains(&first), "{first}");
    let (stream, _) = r.chat_stream(&routes(&["b"]), &request()).await.unwrap();
    drain(stream).await;
    let second = health(&r, "b").latency_ms.unwrap();
    // 0.2 * ~50 + 0.8 * first
    assert!(second < first && second > first / 2, "{first} {second}");
}

// === images and moderation ===

#[tokio::test]
async fn images_and_moderation_fall_back_too() {
    let (a, log_a) = serve(|_, _| api_error(503, "overloaded")).await;
    let (b, log_b) = serve(|_, seen| match seen.path.as_str() {
        "/v1/images/generations" => json_reply(
            200,
            json!({"created": 1, "data": [{"url": "https://files.example/1.png"}]}),
        ),
        "/v1/moderations" => json_reply(
            200,
            json!({"id": "modr-1", "model": "text-moderation-007", "results": [
                {"flagged": true, "categories": {"violence": true}, "category_scores": {"violence": 0.9}}]}),
        ),
        _ => api_error(404, "not_found"),
    })
    .await;
    let r = router(&[("a", &a), ("b", &b)]);

    let req = ImageRequest {
        model: "ignored".into(),
        prompt: "a lighthouse".into(),
        ..ImageRequest::default()
    };
    let (images, index) = r.images_generate(&routes(&["a", "b"]), &req).await.unwrap();
    assert_eq!(index, 1);
    assert_eq!(
        images.data[0].url.as_deref(),
        Some("https://files.example/1.png")
    );

    let req = ModerationRequest {
        input: "some text".into(),
        ..ModerationRequest::default()
    };
    let (moderation, index) = r
        .moderate(&[Route::new("a", "m-a"), Route::new("b", "")], &req)
        .await
        .unwrap();
    assert_eq!(index, 1);
    assert_eq!(moderation.flagged_categories(), ["violence"]);

    let a_seen = log_a.lock().unwrap().clone();
    assert_eq!(a_seen[0].path, "/v1/images/generations");
    assert_eq!(a_seen[0].body["model"], "model-a");
    assert_eq!(a_seen[1].path, "/v1/moderations");
    assert_eq!(a_seen[1].body["model"], "m-a");
    let b_seen = log_b.lock().unwrap().clone();
    assert_eq!(
        b_seen[0].body,
        json!({"model": "model-b", "prompt": "a lighthouse"})
    );
    // An empty route model leaves the provider's default.
    assert_eq!(b_seen[1].body, json!({"input": "some text"}));
    assert_eq!(health(&r, "a").errors_total, 2);
    assert_eq!(health(&r, "b").requests_total, 2);
}

// === types ===

#[test]
fn router_and_stream_types_fit_the_daemon() {
    fn stream<T: Stream<Item = Result<ChatChunk, Error>> + Send + Unpin + 'static>() {}
    stream::<RoutedStream>();
    fn shared<T: Send + Sync + Clone + 'static>() {}
    shared::<Router>();
    fn assert_send<T: Send>(_: &T) {}
    let r = router(&[("a", "http://127.0.0.1:9/v1")]);
    let (rs, req) = (routes(&["a"]), request());
    assert_send(&r.chat_stream(&rs, &req));
    assert_send(&r.chat(&rs, &req));
    assert_send(&r.images_generate(&rs, &ImageRequest::default()));
    assert_send(&r.moderate(&rs, &ModerationRequest::default()));
    assert!(r.client("a").is_some() && r.client("b").is_none());
    assert!(format!("{r:?}").contains("\"a\""));
}

#[tokio::test]
async fn speech_falls_back_and_oversize_audio_does_not() {
    let (a, log_a) = serve(|_, _| api_error(503, "overloaded")).await;
    let (b, log_b) = serve(|_, _| {
        Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, "audio/mpeg")
            .body(Body::from(&b"ID3-mp3-audio"[..]))
            .unwrap()
    })
    .await;
    let r = router(&[("a", &a), ("b", &b)]);
    let req = SpeechRequest::new("ignored", "你好", "nova", "mp3");
    let (speech, index) = r.speak(&routes(&["a", "b"]), &req).await.unwrap();
    assert_eq!(index, 1);
    assert_eq!(&speech.audio[..], b"ID3-mp3-audio");
    assert_eq!(log_a.lock().unwrap()[0].path, "/v1/audio/speech");
    assert_eq!(log_a.lock().unwrap()[0].body["model"], "model-a");
    assert_eq!(
        log_b.lock().unwrap()[0].body,
        json!({"model": "model-b", "input": "你好", "voice": "nova", "response_format": "mp3"})
    );

    // Too large for the caller: b answered, so b is not failed over from, nor counted down.
    let small = SpeechRequest {
        max_bytes: 4,
        ..req.clone()
    };
    let err = r.speak(&routes(&["b", "a"]), &small).await.unwrap_err();
    assert_eq!(err, SpeechError::TooLarge { max: 4 });
    assert_eq!(log_b.lock().unwrap().len(), 2);
    assert_eq!(health(&r, "b").errors_total, 0);

    // A text too long is refused before any upstream is asked.
    let long = SpeechRequest::new("x", "a".repeat(4097), "nova", "mp3");
    assert!(matches!(
        r.speak(&routes(&["a", "b"]), &long).await,
        Err(SpeechError::InputTooLong { .. })
    ));
    assert_eq!(log_a.lock().unwrap().len() + log_b.lock().unwrap().len(), 3);
}
