//! `MpClient` against a fake api.weixin.qq.com (axum on 127.0.0.1:0):
//! token caching and single flight, early refresh, the customer-service
//! calls, the one-time refetch on token errors, and error mapping.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::routing::post;
use chatrelay_wechat::{MpClient, WechatError};
use serde_json::{Value, json};

const APP_ID: &str = "wx_test_app";
const SECRET: &str = "app-secret-123";

/// One scripted answer of the message endpoints.
#[derive(Clone)]
enum Answer {
    Json(u16, &'static str),
    /// Never answers in time (the client's timeout fires).
    Hang,
}

#[derive(Default)]
struct Fake {
    /// Number of stable_token requests received.
    token_requests: AtomicUsize,
    /// Their JSON bodies.
    token_bodies: Mutex<Vec<Value>>,
    /// `expires_in` the fake announces.
    expires_in: u64,
    /// Delay before answering a token request (widens race windows).
    token_delay: Duration,
    /// Overrides the token answer (status, body).
    token_answer: Option<(u16, &'static str)>,
    /// Answers for the message endpoints, in order; `{"errcode":0}` after.
    script: Mutex<VecDeque<Answer>>,
    /// Every message call: (path, access_token query parameter, body).
    calls: Mutex<Vec<(String, Option<String>, Value)>>,
    /// Every media upload: (type, content type, raw body).
    uploads: Mutex<Vec<(String, String, Vec<u8>)>>,
}

impl Fake {
    fn new(expires_in: u64) -> Self {
        Self {
            expires_in,
            ..Self::default()
        }
    }

    fn script(self, answers: &[Answer]) -> Self {
        *self.script.lock().unwrap() = answers.iter().cloned().collect();
        self
    }

    fn tokens(&self) -> usize {
        self.token_requests.load(Ordering::SeqCst)
    }

    fn calls(&self) -> Vec<(String, Option<String>, Value)> {
        self.calls.lock().unwrap().clone()
    }
}

async fn stable_token(State(fake): State<Arc<Fake>>, body: String) -> (StatusCode, String) {
    let n = fake.token_requests.fetch_add(1, Ordering::SeqCst) + 1;
    fake.token_bodies
        .lock()
        .unwrap()
        .push(serde_json::from_str(&body).unwrap_or(Value::Null));
    tokio::time::sleep(fake.token_delay).await;
    if let Some((status, body)) = fake.token_answer {
        return (StatusCode::from_u16(status).unwrap(), body.to_owned());
    }
    let answer = json!({ "access_token": format!("TOKEN{n}"), "expires_in": fake.expires_in });
    (StatusCode::OK, answer.to_string())
}

async fn message(
    State(fake): State<Arc<Fake>>,
    uri: Uri,
    Query(q): Query<std::collections::HashMap<String, String>>,
    body: String,
) -> (StatusCode, String) {
    fake.calls.lock().unwrap().push((
        uri.path().to_owned(),
        q.get("access_token").cloned(),
        serde_json::from_str(&body).unwrap_or(Value::Null),
    ));
    let next = fake.script.lock().unwrap().pop_front();
    match next {
        None => (StatusCode::OK, r#"{"errcode":0,"errmsg":"ok"}"#.to_owned()),
        Some(Answer::Json(status, body)) => {
            (StatusCode::from_u16(status).unwrap(), body.to_owned())
        }
        Some(Answer::Hang) => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            (StatusCode::OK, String::new())
        }
    }
}

/// `media/upload`: records (type, content type, raw body); answers from the script, else a
/// media_id.
async fn upload(
    State(fake): State<Arc<Fake>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    fake.uploads.lock().unwrap().push((
        q.get("type").cloned().unwrap_or_default(),
        content_type,
        body.to_vec(),
    ));
    match fake.script.lock().unwrap().pop_front() {
        Some(Answer::Json(status, body)) => {
            (StatusCode::from_u16(status).unwrap(), body.to_owned())
        }
        _ => (
            StatusCode::OK,
            r#"{"type":"voice","media_id":"MEDIA_1","created_at":1700000000}"#.to_owned(),
        ),
    }
}

/// Starts the fake on an ephemeral port and returns a client for it.
async fn start(fake: Fake) -> (MpClient, Arc<Fake>) {
    start_with(fake, reqwest::Client::builder()).await
}

async fn start_with(fake: Fake, http: reqwest::ClientBuilder) -> (MpClient, Arc<Fake>) {
    let fake = Arc::new(fake);
    let app = Router::new()
        .route("/cgi-bin/stable_token", post(stable_token))
        .route("/cgi-bin/message/custom/send", post(message))
        .route("/cgi-bin/message/custom/typing", post(message))
        .route("/cgi-bin/media/upload", post(upload))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    // no_proxy: a proxy from the environment must not intercept 127.0.0.1.
    let http = http.no_proxy().build().unwrap();
    let client = MpClient::new(&format!("http://{addr}/"), APP_ID, SECRET, http);
    (client, fake)
}

#[tokio::test]
async fn token_is_fetched_once_and_cached() {
    let (client, fake) = start(Fake::new(7200)).await;
    assert_eq!(client.access_token().await.unwrap(), "TOKEN1");
    assert_eq!(client.access_token().await.unwrap(), "TOKEN1");
    client.send_text("o_user", "a").await.unwrap();
    client.clone().send_text("o_user", "b").await.unwrap();
    assert_eq!(fake.tokens(), 1);
    assert_eq!(
        fake.token_bodies.lock().unwrap()[0],
        json!({
            "grant_type": "client_credential",
            "appid": APP_ID,
            "secret": SECRET,
            "force_refresh": false
        })
    );
    assert!(
        fake.calls()
            .iter()
            .all(|(_, token, _)| token.as_deref() == Some("TOKEN1"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_share_one_fetch() {
    let mut fake = Fake::new(7200);
    fake.token_delay = Duration::from_millis(200);
    let (client, fake) = start(fake).await;
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.access_token().await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "TOKEN1");
    }
    assert_eq!(fake.tokens(), 1);
}

#[tokio::test]
async fn token_is_refreshed_after_expires_in_minus_300s() {
    // 301 s announced, 300 s margin: usable for one second.
    let (client, fake) = start(Fake::new(301)).await;
    assert_eq!(client.access_token().await.unwrap(), "TOKEN1");
    assert_eq!(client.access_token().await.unwrap(), "TOKEN1");
    assert_eq!(fake.tokens(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(client.access_token().await.unwrap(), "TOKEN2");
    assert_eq!(fake.tokens(), 2);
}

#[tokio::test]
async fn send_text_posts_the_documented_body() {
    let (client, fake) = start(Fake::new(7200)).await;
    client
        .send_text("o_user", "你好 \"quoted\" & <b>")
        .await
        .unwrap();
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    let (path, token, body) = &calls[0];
    assert_eq!(path, "/cgi-bin/message/custom/send");
    assert_eq!(token.as_deref(), Some("TOKEN1"));
    assert_eq!(
        body,
        &json!({"touser": "o_user", "msgtype": "text", "text": {"content": "你好 \"quoted\" & <b>"}})
    );
}

#[tokio::test]
async fn typing_commands() {
    let (client, fake) = start(Fake::new(7200)).await;
    client.typing("o_user", true).await.unwrap();
    client.typing("o_user", false).await.unwrap();
    let calls = fake.calls();
    assert_eq!(calls[0].0, "/cgi-bin/message/custom/typing");
    assert_eq!(calls[0].2, json!({"touser": "o_user", "command": "Typing"}));
    assert_eq!(
        calls[1].2,
        json!({"touser": "o_user", "command": "CancelTyping"})
    );
    assert_eq!(fake.tokens(), 1);
}

#[tokio::test]
async fn invalid_token_triggers_one_refetch_and_one_retry() {
    for code in ["40001", "40014", "42001"] {
        let body: &'static str = match code {
            "40001" => r#"{"errcode":40001,"errmsg":"invalid credential"}"#,
            "40014" => r#"{"errcode":40014,"errmsg":"invalid access_token"}"#,
            _ => r#"{"errcode":42001,"errmsg":"access_token expired"}"#,
        };
        let (client, fake) = start(Fake::new(7200).script(&[Answer::Json(200, body)])).await;
        client.send_text("o_user", "hi").await.unwrap();
        assert_eq!(fake.tokens(), 2, "{code}");
        let tokens: Vec<_> = fake.calls().into_iter().map(|(_, t, _)| t).collect();
        assert_eq!(
            tokens,
            vec![Some("TOKEN1".to_owned()), Some("TOKEN2".to_owned())]
        );
        // The new token is cached for later calls.
        client.send_text("o_user", "again").await.unwrap();
        assert_eq!(fake.tokens(), 2);
    }
}

#[tokio::test]
async fn invalid_token_twice_gives_up_after_one_retry() {
    let bad = Answer::Json(200, r#"{"errcode":40001,"errmsg":"invalid credential"}"#);
    let (client, fake) = start(Fake::new(7200).script(&[bad.clone(), bad])).await;
    let err = client.send_text("o_user", "hi").await.unwrap_err();
    assert!(err.is_token_invalid(), "{err:?}");
    assert_eq!(fake.calls().len(), 2);
    assert_eq!(fake.tokens(), 2);
}

#[tokio::test]
async fn no_permission_and_window_errors_are_classified_and_not_retried() {
    let (client, fake) = start(Fake::new(7200).script(&[
        Answer::Json(200, r#"{"errcode":48001,"errmsg":"api unauthorized"}"#),
        Answer::Json(
            200,
            r#"{"errcode":45015,"errmsg":"response out of time limit"}"#,
        ),
    ]))
    .await;
    let err = client.send_text("o_user", "hi").await.unwrap_err();
    assert!(err.is_no_permission(), "{err:?}");
    assert_eq!(
        err,
        WechatError::Api {
            errcode: 48001,
            errmsg: "api unauthorized".into()
        }
    );
    let err = client.send_text("o_user", "hi").await.unwrap_err();
    assert!(err.is_outside_window(), "{err:?}");
    assert_eq!(fake.calls().len(), 2);
    assert_eq!(fake.tokens(), 1);
}

#[tokio::test]
async fn http_and_decode_errors() {
    let (client, _fake) = start(Fake::new(7200).script(&[
        Answer::Json(500, "internal error"),
        Answer::Json(200, "<html>not json</html>"),
        Answer::Json(502, r#"{"errcode":0}"#),
    ]))
    .await;
    let err = client.send_text("o_user", "hi").await.unwrap_err();
    assert!(matches!(err, WechatError::Http(_)), "{err:?}");
    let err = client.send_text("o_user", "hi").await.unwrap_err();
    assert!(matches!(err, WechatError::Decode(_)), "{err:?}");
    let err = client.typing("o_user", true).await.unwrap_err();
    assert!(matches!(err, WechatError::Http(_)), "{err:?}");
}

#[tokio::test]
async fn token_endpoint_errors() {
    let mut fake = Fake::new(7200);
    fake.token_answer = Some((200, r#"{"errcode":40013,"errmsg":"invalid appid"}"#));
    let (client, fake) = start(fake).await;
    let err = client.send_text("o_user", "hi").await.unwrap_err();
    assert_eq!(
        err,
        WechatError::Api {
            errcode: 40013,
            errmsg: "invalid appid".into()
        }
    );
    // A token error is not retried, and nothing was sent.
    assert_eq!(fake.tokens(), 1);
    assert!(fake.calls().is_empty());
    // Nothing was cached: the next call asks again.
    assert!(client.access_token().await.is_err());
    assert_eq!(fake.tokens(), 2);

    let mut fake = Fake::new(7200);
    fake.token_answer = Some((500, "oops"));
    let (client, _) = start(fake).await;
    assert!(matches!(
        client.access_token().await,
        Err(WechatError::Http(_))
    ));

    let mut fake = Fake::new(7200);
    fake.token_answer = Some((200, r#"{"access_token":"#));
    let (client, _) = start(fake).await;
    let err = client.access_token().await.unwrap_err();
    assert!(matches!(err, WechatError::Decode(_)), "{err:?}");

    let mut fake = Fake::new(7200);
    fake.token_answer = Some((200, r#"{"expires_in":7200}"#));
    let (client, _) = start(fake).await;
    assert!(matches!(
        client.access_token().await,
        Err(WechatError::Decode(_))
    ));
}

#[tokio::test]
async fn errors_never_contain_the_token_or_secret() {
    // The send times out; reqwest's error would normally include the URL,
    // and with it `?access_token=TOKEN1`.
    let (client, _fake) = start_with(
        Fake::new(7200).script(&[Answer::Hang]),
        reqwest::Client::builder().timeout(Duration::from_millis(300)),
    )
    .await;
    let err = client.send_text("o_user", "hi").await.unwrap_err();
    assert!(matches!(err, WechatError::Http(_)), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("TOKEN1"), "{text}");
    assert!(!text.contains(SECRET), "{text}");

    // Connection refused on the token request.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let client = MpClient::new(&format!("http://{addr}"), APP_ID, SECRET, http);
    let err = client.access_token().await.unwrap_err();
    assert!(matches!(err, WechatError::Http(_)), "{err:?}");
    assert!(!format!("{err} {err:?}").contains(SECRET));
}

#[tokio::test]
async fn voice_answers_are_uploaded_then_sent_as_voice_messages() {
    let (client, fake) = start(Fake::new(7200)).await;
    let mp3 = b"ID3\x04\x00fake-mp3-voice";
    let media_id = client.upload_voice(mp3).await.unwrap();
    assert_eq!(media_id, "MEDIA_1");
    let (kind, content_type, body) = fake.uploads.lock().unwrap()[0].clone();
    assert_eq!(kind, "voice");
    let boundary = content_type
        .strip_prefix("multipart/form-data; boundary=")
        .expect(&content_type);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.starts_with(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"voice.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\n"
        )),
        "{text}"
    );
    assert!(body.windows(mp3.len()).any(|w| w == mp3));
    assert!(text.ends_with(&format!("\r\n--{boundary}--\r\n")));
    client.send_voice("o_user", &media_id).await.unwrap();
    assert_eq!(
        fake.calls()[0].2,
        json!({"touser": "o_user", "msgtype": "voice", "voice": {"media_id": "MEDIA_1"}})
    );
}

#[tokio::test]
async fn voice_uploads_over_2_mb_or_refused_are_errors() {
    let fake = Fake::new(7200).script(&[Answer::Json(
        200,
        r#"{"errcode":40004,"errmsg":"invalid media type"}"#,
    )]);
    let (client, fake) = start(fake).await;
    let big = vec![0u8; 2 * 1024 * 1024 + 1];
    assert!(matches!(
        client.upload_voice(&big).await,
        Err(chatrelay_wechat::media::MediaError::TooLarge { .. })
    ));
    assert!(client.upload_voice(&[]).await.is_err());
    assert!(fake.uploads.lock().unwrap().is_empty(), "nothing sent");
    let err = client.upload_voice(b"ID3").await.unwrap_err();
    let chatrelay_wechat::media::MediaError::Api(WechatError::Api { errcode, .. }) = err else {
        panic!("{err:?}")
    };
    assert_eq!(errcode, 40004);
}
