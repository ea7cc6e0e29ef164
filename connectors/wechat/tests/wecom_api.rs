//! The WeCom HTTP clients against a fake qyapi.weixin.qq.com (axum on
//! 127.0.0.1:0): `WecomClient` (gettoken caching and single flight, the
//! exact `message/send` bodies, the one-time refetch on token errors, API
//! errors, `media/get` downloads: size limits, errcode bodies, the token refetch),
//! `RobotClient` (webhook bodies, truncation, the local rate
//! limit) and `post_response_url`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::routing::{get, post};
use chatrelay_wechat::{MediaError, RobotClient, WechatError, WecomClient, post_response_url};
use serde_json::{Value, json};

const CORP_ID: &str = "ww_test_corp";
const SECRET: &str = "corp-secret-xyz";
const AGENT_ID: i64 = 1_000_002;
const ROBOT_KEY: &str = "robot-key-693a91f6";

/// One recorded request to a non-token endpoint.
#[derive(Debug, Clone)]
struct Call {
    path: String,
    query: HashMap<String, String>,
    body: Value,
}

#[derive(Default)]
struct Fake {
    /// gettoken requests received, with their queries.
    token_queries: Mutex<Vec<HashMap<String, String>>>,
    token_requests: AtomicUsize,
    /// Delay before answering gettoken (widens race windows).
    token_delay: Duration,
    /// Overrides the gettoken answer.
    token_answer: Option<(u16, &'static str)>,
    /// Answers of the other endpoints, in order; `{"errcode":0}` after.
    script: Mutex<VecDeque<(u16, &'static str)>>,
    calls: Mutex<Vec<Call>>,
    /// Files `media/get` serves, by media_id (as audio/amr, with a Content-Length).
    media: HashMap<String, Vec<u8>>,
}

impl Fake {
    fn script(self, answers: &[(u16, &'static str)]) -> Self {
        *self.script.lock().unwrap() = answers.iter().copied().collect();
        self
    }

    fn tokens(&self) -> usize {
        self.token_requests.load(Ordering::SeqCst)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

async fn gettoken(
    State(fake): State<Arc<Fake>>,
    Query(q): Query<HashMap<String, String>>,
) -> (StatusCode, String) {
    let n = fake.token_requests.fetch_add(1, Ordering::SeqCst) + 1;
    fake.token_queries.lock().unwrap().push(q);
    tokio::time::sleep(fake.token_delay).await;
    if let Some((status, body)) = fake.token_answer {
        return (StatusCode::from_u16(status).unwrap(), body.to_owned());
    }
    let answer = json!({
        "errcode": 0, "errmsg": "ok", "access_token": format!("WTOKEN{n}"), "expires_in": 7200
    });
    (StatusCode::OK, answer.to_string())
}

async fn record(
    State(fake): State<Arc<Fake>>,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    body: String,
) -> (StatusCode, String) {
    fake.calls.lock().unwrap().push(Call {
        path: uri.path().to_owned(),
        query,
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
    });
    match fake.script.lock().unwrap().pop_front() {
        None => (
            StatusCode::OK,
            r#"{"errcode":0,"errmsg":"ok","invaliduser":"","msgid":"m1"}"#.to_owned(),
        ),
        Some((status, body)) => (StatusCode::from_u16(status).unwrap(), body.to_owned()),
    }
}

/// `media/get` as WeCom answers it: a scripted (JSON) answer first if any, else the file by
/// media_id (`chunked-N`: N bytes sent without a Content-Length), else errcode 40007.
async fn media_get(
    State(fake): State<Arc<Fake>>,
    Query(query): Query<HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    fake.calls.lock().unwrap().push(Call {
        path: "/cgi-bin/media/get".to_owned(),
        query: query.clone(),
        body: Value::Null,
    });
    let json = |status: u16, body: String| {
        (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json; charset=UTF-8")],
            body,
        )
            .into_response()
    };
    if let Some((status, body)) = fake.script.lock().unwrap().pop_front() {
        return json(status, body.to_owned());
    }
    let id = query.get("media_id").cloned().unwrap_or_default();
    if let Some(n) = id.strip_prefix("chunked-") {
        let n: usize = n.parse().unwrap();
        let chunks = (0..n.div_ceil(100)).map(move |i| {
            Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'#'; 100.min(n - i * 100)]))
        });
        let body = axum::body::Body::from_stream(futures_util::stream::iter(chunks));
        return ([("content-type", "audio/amr")], body).into_response();
    }
    match fake.media.get(&id) {
        Some(bytes) => ([("content-type", "audio/amr")], bytes.clone()).into_response(),
        None => json(
            200,
            r#"{"errcode":40007,"errmsg":"invalid media_id"}"#.to_owned(),
        ),
    }
}

/// Starts the fake on an ephemeral port; returns its base URL.
async fn serve(fake: Fake) -> (String, Arc<Fake>) {
    let fake = Arc::new(fake);
    let app = Router::new()
        .route("/cgi-bin/gettoken", get(gettoken))
        .route("/cgi-bin/message/send", post(record))
        .route("/cgi-bin/webhook/send", post(record))
        .route("/cgi-bin/aibot/response", post(record))
        .route("/cgi-bin/media/get", get(media_get))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), fake)
}

fn http() -> reqwest::Client {
    // no_proxy: a proxy from the environment must not intercept 127.0.0.1.
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn start(fake: Fake) -> (WecomClient, Arc<Fake>) {
    let (base, fake) = serve(fake).await;
    // A trailing slash is tolerated.
    let client = WecomClient::new(&format!("{base}/"), CORP_ID, SECRET, AGENT_ID, http());
    (client, fake)
}

// === WecomClient ===

#[tokio::test]
async fn gettoken_once_and_cached_across_sends() {
    let (client, fake) = start(Fake::default()).await;
    assert_eq!(client.access_token().await.unwrap(), "WTOKEN1");
    client.send_text("zhangsan", "a").await.unwrap();
    client.clone().send_markdown("lisi", "**b**").await.unwrap();
    client.send_text("zhangsan", "c").await.unwrap();
    assert_eq!(fake.tokens(), 1);
    let q = fake.token_queries.lock().unwrap()[0].clone();
    assert_eq!(
        q,
        HashMap::from([
            ("corpid".to_owned(), CORP_ID.to_owned()),
            ("corpsecret".to_owned(), SECRET.to_owned()),
        ])
    );
    let calls = fake.calls();
    assert_eq!(calls.len(), 3);
    for c in &calls {
        assert_eq!(c.path, "/cgi-bin/message/send");
        assert_eq!(
            c.query.get("access_token").map(String::as_str),
            Some("WTOKEN1")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sends_share_one_gettoken() {
    let fake = Fake {
        token_delay: Duration::from_millis(200),
        ..Fake::default()
    };
    let (client, fake) = start(fake).await;
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move { c.send_text("zhangsan", &format!("msg {i}")).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(fake.tokens(), 1);
    let calls = fake.calls();
    assert_eq!(calls.len(), 10);
    assert!(
        calls
            .iter()
            .all(|c| c.query.get("access_token").map(String::as_str) == Some("WTOKEN1"))
    );
}

#[tokio::test]
async fn send_text_and_markdown_post_the_documented_bodies() {
    let (client, fake) = start(Fake::default()).await;
    client
        .send_text("zhangsan|lisi", "你好 \"quoted\" & <b>\n第二行")
        .await
        .unwrap();
    client
        .send_markdown("zhangsan", "# 标题\n> <font color=\"info\">ok</font>")
        .await
        .unwrap();
    let calls = fake.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0].body,
        json!({
            "touser": "zhangsan|lisi",
            "msgtype": "text",
            "agentid": AGENT_ID,
            "text": { "content": "你好 \"quoted\" & <b>\n第二行" },
            "safe": 0
        })
    );
    assert_eq!(
        calls[1].body,
        json!({
            "touser": "zhangsan",
            "msgtype": "markdown",
            "agentid": AGENT_ID,
            "markdown": { "content": "# 标题\n> <font color=\"info\">ok</font>" }
        })
    );
    // agentid is a JSON number, as WeCom requires.
    assert!(calls[0].body["agentid"].is_i64());
    for c in &calls {
        assert_eq!(
            c.query,
            HashMap::from([("access_token".to_owned(), "WTOKEN1".to_owned())])
        );
    }
}

#[tokio::test]
async fn token_errors_refetch_and_retry_once() {
    for (code, body) in [
        (
            42001,
            r#"{"errcode":42001,"errmsg":"access_token expired"}"#,
        ),
        (
            40014,
            r#"{"errcode":40014,"errmsg":"invalid access_token"}"#,
        ),
        (40001, r#"{"errcode":40001,"errmsg":"invalid credential"}"#),
    ] {
        let (client, fake) = start(Fake::default().script(&[(200, body)])).await;
        client.send_text("zhangsan", "hi").await.unwrap();
        assert_eq!(fake.tokens(), 2, "{code}");
        let tokens: Vec<_> = fake
            .calls()
            .into_iter()
            .map(|c| c.query.get("access_token").cloned())
            .collect();
        assert_eq!(
            tokens,
            vec![Some("WTOKEN1".to_owned()), Some("WTOKEN2".to_owned())],
            "{code}"
        );
        // The same body both times.
        let calls = fake.calls();
        assert_eq!(calls[0].body, calls[1].body);
        // The new token is cached.
        client.send_markdown("zhangsan", "again").await.unwrap();
        assert_eq!(fake.tokens(), 2, "{code}");
    }
}

#[tokio::test]
async fn a_second_token_error_is_returned_not_retried_again() {
    let expired = (200, r#"{"errcode":42001,"errmsg":"access_token expired"}"#);
    let (client, fake) = start(Fake::default().script(&[expired, expired])).await;
    let err = client.send_text("zhangsan", "hi").await.unwrap_err();
    assert!(err.is_token_invalid(), "{err:?}");
    assert_eq!(fake.calls().len(), 2);
    assert_eq!(fake.tokens(), 2);
}

#[tokio::test]
async fn api_errors_are_returned_without_retry() {
    let (client, fake) = start(Fake::default().script(&[
        (
            200,
            r#"{"errcode":60020,"errmsg":"not allow to access from your ip, hint: [1700000000], from ip: 1.2.3.4"}"#,
        ),
        (200, r#"{"errcode":81013,"errmsg":"user & party & tag all invalid"}"#),
    ]))
    .await;
    let err = client.send_text("zhangsan", "hi").await.unwrap_err();
    assert!(
        matches!(err, WechatError::Api { errcode: 60020, .. }),
        "{err:?}"
    );
    assert!(err.is_untrusted_ip());
    assert!(!err.is_token_invalid());
    let err = client.send_markdown("nobody", "hi").await.unwrap_err();
    assert_eq!(
        err,
        WechatError::Api {
            errcode: 81013,
            errmsg: "user & party & tag all invalid".into()
        }
    );
    assert_eq!(fake.calls().len(), 2);
    assert_eq!(fake.tokens(), 1);
}

#[tokio::test]
async fn partial_delivery_is_success() {
    let (client, _fake) = start(Fake::default().script(&[(
        200,
        r#"{"errcode":0,"errmsg":"ok","invaliduser":"ghost","msgid":"m"}"#,
    )]))
    .await;
    client.send_text("zhangsan|ghost", "hi").await.unwrap();
}

#[tokio::test]
async fn gettoken_errors_are_not_cached_and_never_leak_the_secret() {
    let fake = Fake {
        token_answer: Some((200, r#"{"errcode":40001,"errmsg":"invalid credential"}"#)),
        ..Fake::default()
    };
    let (client, fake) = start(fake).await;
    let err = client.send_text("zhangsan", "hi").await.unwrap_err();
    assert_eq!(
        err,
        WechatError::Api {
            errcode: 40001,
            errmsg: "invalid credential".into()
        }
    );
    assert!(fake.calls().is_empty());
    assert!(client.access_token().await.is_err());
    assert_eq!(fake.tokens(), 2);

    let fake = Fake {
        token_answer: Some((200, r#"{"errcode":0,"errmsg":"ok"}"#)),
        ..Fake::default()
    };
    let (client, _) = start(fake).await;
    assert!(matches!(
        client.access_token().await,
        Err(WechatError::Decode(_))
    ));

    // The secret travels in the gettoken URL: a failing request must not
    // put it in the error.
    let fake = Fake {
        token_delay: Duration::from_secs(30),
        ..Fake::default()
    };
    let (base, _fake) = serve(fake).await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let client = WecomClient::new(&base, CORP_ID, SECRET, AGENT_ID, impatient);
    let err = client.access_token().await.unwrap_err();
    assert!(matches!(err, WechatError::Http(_)), "{err:?}");
    let text = format!("{err} {err:?} {client:?}");
    assert!(!text.contains(SECRET), "{text}");

    // Connection refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = WecomClient::new(&format!("http://{addr}"), CORP_ID, SECRET, AGENT_ID, http());
    let err = client.send_text("zhangsan", "hi").await.unwrap_err();
    assert!(matches!(err, WechatError::Http(_)), "{err:?}");
    assert!(!format!("{err} {err:?}").contains(SECRET));
}

// === RobotClient ===

#[tokio::test]
async fn robot_posts_the_documented_bodies_with_its_key() {
    let (base, fake) = serve(Fake::default()).await;
    let robot = RobotClient::new(ROBOT_KEY, &base, http());
    robot.send_text("磁盘快满了 \"/var\"").await.unwrap();
    robot.send_markdown("## 告警\n> **db** down").await.unwrap();
    let calls = fake.calls();
    assert_eq!(calls.len(), 2);
    for c in &calls {
        assert_eq!(c.path, "/cgi-bin/webhook/send");
        assert_eq!(
            c.query,
            HashMap::from([("key".to_owned(), ROBOT_KEY.to_owned())])
        );
    }
    assert_eq!(
        calls[0].body,
        json!({"msgtype": "text", "text": {"content": "磁盘快满了 \"/var\""}})
    );
    assert_eq!(
        calls[1].body,
        json!({"msgtype": "markdown", "markdown": {"content": "## 告警\n> **db** down"}})
    );

    // A full webhook URL is used as is.
    let robot = RobotClient::new(
        &format!("{base}/cgi-bin/webhook/send?key=other-key"),
        "http://unused.invalid",
        http(),
    );
    robot.send_text("x").await.unwrap();
    let last = fake.calls().pop().unwrap();
    assert_eq!(last.query.get("key").map(String::as_str), Some("other-key"));
}

#[tokio::test]
async fn robot_truncates_to_the_byte_limits() {
    let (base, fake) = serve(Fake::default()).await;
    let robot = RobotClient::new(ROBOT_KEY, &base, http());
    robot.send_text(&"告".repeat(1000)).await.unwrap();
    robot.send_markdown(&"x".repeat(5000)).await.unwrap();
    let calls = fake.calls();
    let text = calls[0].body["text"]["content"].as_str().unwrap();
    assert!(text.len() <= 2048, "{}", text.len());
    assert!(text.ends_with('…'));
    assert!(text.trim_end_matches('…').chars().all(|c| c == '告'));
    let md = calls[1].body["markdown"]["content"].as_str().unwrap();
    assert_eq!(md.len(), 4096);
    assert!(md.ends_with('…'));
}

#[tokio::test]
async fn robot_21st_message_in_a_minute_is_rate_limited_without_a_request() {
    let (base, fake) = serve(Fake::default()).await;
    let robot = RobotClient::new(ROBOT_KEY, &base, http());
    let clone = robot.clone();
    for i in 0..20 {
        // Clones share the limit.
        let r = if i % 2 == 0 { &robot } else { &clone };
        r.send_text(&format!("alert {i}")).await.unwrap();
    }
    assert_eq!(fake.calls().len(), 20);
    let err = robot.send_markdown("alert 21").await.unwrap_err();
    assert_eq!(err, WechatError::RateLimited);
    assert!(err.is_rate_limited());
    let err = clone.send_text("alert 22").await.unwrap_err();
    assert_eq!(err, WechatError::RateLimited);
    assert_eq!(fake.calls().len(), 20, "no request after the limit");

    // Another robot has its own budget.
    let other = RobotClient::new("another-key", &base, http());
    other.send_text("hi").await.unwrap();
    assert_eq!(fake.calls().len(), 21);
}

#[tokio::test]
async fn robot_errors() {
    let (base, _fake) = serve(Fake::default().script(&[
        (200, r#"{"errcode":93000,"errmsg":"invalid webhook url"}"#),
        (200, r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#),
        (500, "oops"),
    ]))
    .await;
    let robot = RobotClient::new(ROBOT_KEY, &base, http());
    let err = robot.send_text("x").await.unwrap_err();
    assert!(
        matches!(err, WechatError::Api { errcode: 93000, .. }),
        "{err:?}"
    );
    let err = robot.send_text("x").await.unwrap_err();
    assert!(err.is_rate_limited(), "{err:?}");
    let err = robot.send_text("x").await.unwrap_err();
    assert!(matches!(err, WechatError::Http(_)), "{err:?}");
    assert!(!format!("{err} {err:?} {robot:?}").contains(ROBOT_KEY));
}

// === post_response_url ===

#[tokio::test]
async fn post_response_url_posts_plain_markdown() {
    let (base, fake) = serve(Fake::default()).await;
    let url = format!("{base}/cgi-bin/aibot/response?response_code=RC123");
    post_response_url(&http(), &url, "**答案**\n- 一\n- 二")
        .await
        .unwrap();
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, "/cgi-bin/aibot/response");
    assert_eq!(
        calls[0].query,
        HashMap::from([("response_code".to_owned(), "RC123".to_owned())])
    );
    assert_eq!(
        calls[0].body,
        json!({"msgtype": "markdown", "markdown": {"content": "**答案**\n- 一\n- 二"}})
    );
}

#[tokio::test]
async fn post_response_url_errors() {
    let (base, fake) = serve(Fake::default().script(&[(
        200,
        r#"{"errcode":600039,"errmsg":"response_code expired"}"#,
    )]))
    .await;
    let url = format!("{base}/cgi-bin/aibot/response?response_code=SECRETCODE");
    let err = post_response_url(&http(), &url, "late").await.unwrap_err();
    assert!(
        matches!(
            err,
            WechatError::Api {
                errcode: 600039,
                ..
            }
        ),
        "{err:?}"
    );

    for bad in [
        "",
        "not a url",
        "file:///etc/passwd",
        "ftp://x/y",
        "/relative",
    ] {
        let err = post_response_url(&http(), bad, "x").await.unwrap_err();
        assert!(matches!(err, WechatError::Http(_)), "{bad}: {err:?}");
    }
    assert_eq!(fake.calls().len(), 1, "invalid URLs send nothing");

    // A failed connection does not leak the one-time URL.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("http://{addr}/cgi-bin/aibot/response?response_code=SECRETCODE");
    let err = post_response_url(&http(), &url, "x").await.unwrap_err();
    assert!(matches!(err, WechatError::Http(_)), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("SECRETCODE"));
}

// === WecomClient::media_get ===

const AMR: &[u8] = b"#!AMR\n\x3c0123456789012345678901234567890";

fn with_media() -> Fake {
    Fake {
        media: HashMap::from([("voice-1".to_owned(), AMR.to_vec())]),
        ..Fake::default()
    }
}

#[tokio::test]
async fn media_get_downloads_the_file_with_the_token() {
    let (client, fake) = start(with_media()).await;
    let media = client.media_get("voice-1", 1000).await.unwrap();
    assert_eq!(media.bytes, AMR);
    assert_eq!(media.content_type.as_deref(), Some("audio/amr"));
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, "/cgi-bin/media/get");
    assert_eq!(
        calls[0].query,
        HashMap::from([
            ("access_token".to_owned(), "WTOKEN1".to_owned()),
            ("media_id".to_owned(), "voice-1".to_owned()),
        ])
    );
    // Exactly at the limit is fine.
    let exact = AMR.len() as u64;
    assert_eq!(client.media_get("voice-1", exact).await.unwrap().bytes, AMR);
    assert_eq!(fake.tokens(), 1);
}

#[tokio::test]
async fn media_get_refuses_files_over_the_limit_announced_or_not() {
    let (client, fake) = start(with_media()).await;
    let small = AMR.len() as u64 - 1;
    assert_eq!(
        client.media_get("voice-1", small).await.unwrap_err(),
        MediaError::TooLarge { max: small }
    );
    // No Content-Length: stopped while reading.
    assert_eq!(
        client.media_get("chunked-5000", 1000).await.unwrap_err(),
        MediaError::TooLarge { max: 1000 }
    );
    assert_eq!(
        client
            .media_get("chunked-1000", 1000)
            .await
            .unwrap()
            .bytes
            .len(),
        1000
    );
    assert_eq!(fake.calls().len(), 3);
}

#[tokio::test]
async fn media_get_returns_wecoms_refusal() {
    let (client, fake) = start(with_media()).await;
    let err = client.media_get("expired", 1000).await.unwrap_err();
    assert!(
        matches!(
            &err,
            MediaError::Api(WechatError::Api { errcode: 40007, .. })
        ),
        "{err:?}"
    );
    assert_eq!(fake.tokens(), 1, "not a token error: no refetch");
    assert_eq!(fake.calls().len(), 1);
}

#[tokio::test]
async fn media_get_refetches_the_token_once() {
    for body in [
        r#"{"errcode":42001,"errmsg":"access_token expired"}"#,
        r#"{"errcode":40014,"errmsg":"invalid access_token"}"#,
    ] {
        let (client, fake) = start(with_media().script(&[(200, body)])).await;
        assert_eq!(client.media_get("voice-1", 1000).await.unwrap().bytes, AMR);
        assert_eq!(fake.tokens(), 2, "{body}");
        let tokens: Vec<_> = fake
            .calls()
            .into_iter()
            .map(|c| c.query.get("access_token").cloned())
            .collect();
        assert_eq!(
            tokens,
            vec![Some("WTOKEN1".to_owned()), Some("WTOKEN2".to_owned())]
        );
    }
    // Twice in a row: returned, not retried again.
    let expired = (200, r#"{"errcode":42001,"errmsg":"access_token expired"}"#);
    let (client, fake) = start(with_media().script(&[expired, expired])).await;
    let err = client.media_get("voice-1", 1000).await.unwrap_err();
    assert!(
        matches!(
            &err,
            MediaError::Api(WechatError::Api { errcode: 42001, .. })
        ),
        "{err:?}"
    );
    assert_eq!(fake.calls().len(), 2);
}
