//! `Client` against a fake api.zsxq.com (axum on 127.0.0.1:0) that records
//! every request: headers and cookie, query parameters, the answer JSON,
//! error mapping (1059, HTTP 401, 5xx), timeouts, request spacing and
//! token replacement.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chatrelay_zsxq::{Client, ClientConfig, TopicId, ZsxqError};
use serde_json::{Value, json};

const TOKEN: &str = "0a1b2c3d-4e5f-6789-abcd-ef0123456789_A1B2C3D4E5F60718";

/// One request as the fake saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

/// The fake's scripted answer: status, body, delay.
type Reply = (u16, String, Duration);

#[derive(Clone)]
struct Fake {
    seen: Arc<Mutex<Vec<Seen>>>,
    reply: Arc<dyn Fn(&Seen) -> Reply + Send + Sync>,
}

async fn handle(State(fake): State<Fake>, req: Request) -> Response {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let query = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let seen = Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query,
        headers: parts.headers,
        body,
        at,
    };
    let (status, body, delay) = (fake.reply)(&seen);
    fake.seen.lock().unwrap().push(seen);
    tokio::time::sleep(delay).await;
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body,
    )
        .into_response()
}

/// Starts a fake answering with `reply`; returns it and a client for it.
async fn start(
    reply: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    min_interval: Duration,
    timeout: Duration,
) -> (Fake, Client) {
    let fake = Fake {
        seen: Arc::default(),
        reply: Arc::new(reply),
    };
    let app = Router::new().fallback(handle).with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let cfg = ClientConfig {
        api_base: format!("http://{addr}/"),
        access_token: TOKEN.into(),
        min_interval,
        timeout,
        ..ClientConfig::default()
    };
    (fake, Client::new(cfg, reqwest::Client::new()))
}

fn ok(body: Value) -> impl Fn(&Seen) -> Reply + Send + Sync + 'static {
    let body = body.to_string();
    move |_| (200, body.clone(), Duration::ZERO)
}

fn seen(fake: &Fake) -> Vec<Seen> {
    fake.seen.lock().unwrap().clone()
}

fn header<'a>(s: &'a Seen, name: &str) -> &'a str {
    s.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no header {name}"))
}

const FAST: Duration = Duration::ZERO;
const TIMEOUT: Duration = Duration::from_secs(5);

fn sample() -> Value {
    serde_json::from_str(include_str!("../testdata/topics_sample.json")).unwrap()
}

#[tokio::test]
async fn unanswered_questions_sends_cookie_headers_and_query() {
    let (fake, client) = start(ok(sample()), FAST, TIMEOUT).await;
    let end = "2023-02-19T11:14:49.231+0800";
    let qs = client
        .unanswered_questions("88885511815222", 20, Some(end))
        .await
        .unwrap();
    assert_eq!(qs.len(), 1);
    assert_eq!(qs[0].topic_id, TopicId(412_851_145_544_158));
    assert_eq!(qs[0].text, "测试");

    let first = client
        .unanswered_questions("88885511815222", 10, None)
        .await
        .unwrap();
    assert_eq!(first, qs);

    let seen = seen(&fake);
    assert_eq!(seen.len(), 2);
    let s = &seen[0];
    assert_eq!(s.method, "GET");
    assert_eq!(s.path, "/v2/groups/88885511815222/topics");
    assert_eq!(
        s.query.get("scope").map(String::as_str),
        Some("unanswered_questions")
    );
    assert_eq!(s.query.get("count").map(String::as_str), Some("20"));
    // Decoded back, end_time equals the raw create_time ('+' survived).
    assert_eq!(s.query.get("end_time").map(String::as_str), Some(end));
    assert_eq!(header(s, "cookie"), format!("zsxq_access_token={TOKEN}"));
    assert!(header(s, "user-agent").starts_with("Mozilla/5.0"));
    assert_eq!(header(s, "origin"), "https://wx.zsxq.com");
    assert_eq!(header(s, "referer"), "https://wx.zsxq.com/");
    assert_eq!(header(s, "accept"), "application/json, text/plain, */*");
    assert_eq!(header(s, "x-version"), "2.91.0");
    let rid = header(s, "x-request-id");
    assert_eq!(rid.len(), 36);
    assert!(rid.chars().all(|c| c.is_ascii_hexdigit() || c == '-'));
    assert_ne!(rid, header(&seen[1], "x-request-id"));
    let ts: u64 = header(s, "x-timestamp").parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(ts <= now && now - ts < 60, "{ts} vs {now}");
    assert!(!seen[1].query.contains_key("end_time"));
    assert_eq!(seen[1].query.get("count").map(String::as_str), Some("10"));
}

#[tokio::test]
async fn bad_group_ids_never_reach_the_server() {
    let (fake, client) = start(ok(sample()), FAST, TIMEOUT).await;
    for bad in [
        "",
        "12/../../v2/topics",
        "12?x=1",
        "-1",
        "１２",
        "123456789012345678901",
    ] {
        let e = client
            .unanswered_questions(bad, 20, None)
            .await
            .unwrap_err();
        assert!(matches!(e, ZsxqError::InvalidInput(_)), "{bad}: {e:?}");
    }
    for count in [0, 31] {
        let e = client
            .unanswered_questions("1", count, None)
            .await
            .unwrap_err();
        assert!(matches!(e, ZsxqError::InvalidInput(_)));
    }
    assert!(seen(&fake).is_empty());
}

#[tokio::test]
async fn answer_posts_the_exact_json() {
    let reply =
        ok(json!({"succeeded":true,"resp_data":{"topic":{"answered":true,"answer":{"text":"x"}}}}));
    let (fake, client) = start(reply, FAST, TIMEOUT).await;
    let id = TopicId(18_446_744_073_709_551);
    client
        .answer(id, "答案 \"quoted\"\nline", true)
        .await
        .unwrap();
    client.answer(id, "public", false).await.unwrap();
    let seen = seen(&fake);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/v2/topics/18446744073709551/answer");
    assert!(header(&seen[0], "content-type").starts_with("application/json"));
    assert_eq!(
        header(&seen[0], "cookie"),
        format!("zsxq_access_token={TOKEN}")
    );
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        body,
        json!({"req_data":{"text":"答案 \"quoted\"\nline","image_ids":[],"silenced":true}})
    );
    let body: Value = serde_json::from_slice(&seen[1].body).unwrap();
    assert_eq!(
        body,
        json!({"req_data":{"text":"public","image_ids":[],"silenced":false}})
    );
    let e = client.answer(id, "  ", true).await.unwrap_err();
    assert!(matches!(e, ZsxqError::InvalidInput(_)));
}

#[tokio::test]
async fn code_1059_is_too_frequent_and_other_codes_are_api_errors() {
    let (_fake, client) = start(
        ok(json!({"succeeded":false,"code":1059,"info":"请求过于频繁"})),
        FAST,
        TIMEOUT,
    )
    .await;
    let e = client
        .unanswered_questions("1", 20, None)
        .await
        .unwrap_err();
    assert_eq!(e, ZsxqError::TooFrequent);
    assert!(!e.is_ambiguous());
    assert_eq!(
        client.answer(TopicId(1), "x", true).await,
        Err(ZsxqError::TooFrequent)
    );

    let (_fake, client) = start(
        ok(json!({"succeeded":false,"code":14210,"info":"无权限"})),
        FAST,
        TIMEOUT,
    )
    .await;
    assert_eq!(
        client.answer(TopicId(1), "x", true).await,
        Err(ZsxqError::Api {
            code: 14210,
            info: "无权限".into()
        })
    );
}

#[tokio::test]
async fn http_401_is_unauthorized_and_errors_hide_the_token() {
    let (_fake, client) = start(
        |_: &Seen| (401, r#"{"succeeded":false}"#.to_owned(), Duration::ZERO),
        FAST,
        TIMEOUT,
    )
    .await;
    let e = client
        .unanswered_questions("1", 20, None)
        .await
        .unwrap_err();
    assert_eq!(e, ZsxqError::Unauthorized);
    assert!(!format!("{e} {e:?}").contains(TOKEN));

    // Other statuses: 4xx is a plain HTTP error, 5xx is unconfirmed.
    let (_fake, client) = start(
        |s: &Seen| {
            let status = if s.method == "POST" { 502 } else { 403 };
            (status, "<html/>".to_owned(), Duration::ZERO)
        },
        FAST,
        TIMEOUT,
    )
    .await;
    let e = client.is_answered(TopicId(1)).await.unwrap_err();
    assert!(
        matches!(&e, ZsxqError::Http(m) if m.contains("403")),
        "{e:?}"
    );
    assert!(!e.is_ambiguous());
    let e = client.answer(TopicId(1), "x", true).await.unwrap_err();
    assert!(
        matches!(&e, ZsxqError::Unconfirmed(m) if m.contains("502")),
        "{e:?}"
    );
    assert!(e.is_ambiguous());
}

#[tokio::test]
async fn a_slow_server_times_out_ambiguously() {
    let (fake, client) = start(
        |_: &Seen| {
            (
                200,
                r#"{"succeeded":true}"#.to_owned(),
                Duration::from_secs(3),
            )
        },
        FAST,
        Duration::from_millis(300),
    )
    .await;
    let started = Instant::now();
    let e = client.answer(TopicId(5), "x", true).await.unwrap_err();
    assert_eq!(e, ZsxqError::Timeout);
    assert!(e.is_ambiguous());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(seen(&fake).len(), 1);
}

#[tokio::test]
async fn a_refused_connection_is_not_ambiguous() {
    // Bind and drop a listener to get a port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = Client::new(
        ClientConfig {
            api_base: format!("http://{addr}"),
            access_token: TOKEN.into(),
            min_interval: FAST,
            ..ClientConfig::default()
        },
        reqwest::Client::new(),
    );
    let e = client.answer(TopicId(5), "x", true).await.unwrap_err();
    assert!(matches!(e, ZsxqError::Http(_)), "{e:?}");
    assert!(!e.is_ambiguous());
    assert!(!format!("{e} {e:?}").contains(TOKEN));
}

#[tokio::test]
async fn concurrent_calls_are_spaced() {
    let interval = Duration::from_millis(200);
    let (fake, client) = start(ok(sample()), interval, TIMEOUT).await;
    let other = client.clone();
    let started = Instant::now();
    let (a, b, c) = tokio::join!(
        client.unanswered_questions("1", 20, None),
        other.is_answered(TopicId(1)),
        client.answer(TopicId(1), "x", true),
    );
    a.unwrap();
    // The sample has no resp_data.topic: a decode error, but a request.
    assert!(matches!(b, Err(ZsxqError::Decode { .. })));
    c.unwrap();
    let mut times: Vec<Instant> = seen(&fake).iter().map(|s| s.at).collect();
    times.sort();
    assert_eq!(times.len(), 3);
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        // Loopback jitter allowance of 10 ms.
        assert!(gap >= interval - Duration::from_millis(10), "gap {gap:?}");
    }
    assert!(started.elapsed() >= interval * 2);
}

#[tokio::test]
async fn set_access_token_changes_the_next_cookie() {
    let (fake, client) = start(ok(sample()), FAST, TIMEOUT).await;
    client.unanswered_questions("1", 20, None).await.unwrap();
    client.clone().set_access_token("  new-token-42\n");
    client.unanswered_questions("1", 20, None).await.unwrap();
    let seen = seen(&fake);
    assert_eq!(
        header(&seen[0], "cookie"),
        format!("zsxq_access_token={TOKEN}")
    );
    assert_eq!(header(&seen[1], "cookie"), "zsxq_access_token=new-token-42");

    // A token that would inject another cookie is refused locally.
    client.set_access_token("a; other=1");
    let e = client
        .unanswered_questions("1", 20, None)
        .await
        .unwrap_err();
    assert!(matches!(e, ZsxqError::InvalidInput(_)));
    assert!(!e.to_string().contains("other=1"));
    assert_eq!(fake.seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn is_answered_reads_the_topic_flag() {
    let (fake, client) = start(
        |s: &Seen| {
            let answered = s.path.ends_with("/2");
            let body =
                json!({"succeeded":true,"resp_data":{"topic":{"topic_id":1,"answered":answered}}});
            (200, body.to_string(), Duration::ZERO)
        },
        FAST,
        TIMEOUT,
    )
    .await;
    assert!(!client.is_answered(TopicId(1)).await.unwrap());
    assert!(client.is_answered(TopicId(2)).await.unwrap());
    let seen = seen(&fake);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path, "/v2/topics/1");
    assert_eq!(seen[1].path, "/v2/topics/2");
}
