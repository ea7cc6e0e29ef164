//! Web authorization (网页授权) against a fake api.weixin.qq.com on
//! 127.0.0.1:0 that behaves like WeChat's `sns/oauth2/access_token` (appid
//! and secret checked, codes single-use: 40029 unknown, 40163 used, 40125
//! bad secret) and `sns/userinfo`; plus the exact authorize URL.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use chatrelay_wechat::{MpClient, WechatError, oauth_authorize_url};
use serde_json::{Value, json};

const APP_ID: &str = "wx_test_app";
const SECRET: &str = "app-secret-123";

#[derive(Default)]
struct Fake {
    /// Codes already exchanged (single use).
    used: Mutex<HashSet<String>>,
    /// The decoded query of every access_token / userinfo request.
    queries: Mutex<Vec<HashMap<String, String>>>,
    /// stable_token requests (the account's own token).
    stable_tokens: AtomicUsize,
}

fn token_answer(code: &str) -> Value {
    let mut v = json!({
        "access_token": format!("OAUTH_AT_{code}"), "expires_in": 7200,
        "refresh_token": "RT", "openid": format!("o_{code}"), "scope": "snsapi_base",
    });
    match code {
        "CODE_UNION" => v["unionid"] = json!("u_union_1"),
        "CODE_SNAP" => v["is_snapshotuser"] = json!(1),
        "CODE_NOT_SNAP" => v["is_snapshotuser"] = json!(0),
        "CODE_USERINFO" => v["scope"] = json!("snsapi_userinfo"),
        _ => {}
    }
    v
}

async fn access_token(
    State(fake): State<Arc<Fake>>,
    Query(q): Query<HashMap<String, String>>,
) -> String {
    fake.queries.lock().unwrap().push(q.clone());
    let field = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    if field("appid") != APP_ID || field("grant_type") != "authorization_code" {
        return json!({"errcode": 40013, "errmsg": "invalid appid"}).to_string();
    }
    if field("secret") != SECRET {
        return json!({"errcode": 40125, "errmsg": "invalid appsecret"}).to_string();
    }
    let code = field("code").to_owned();
    if code == "CODE_HTML" {
        return "<html>502 Bad Gateway OAUTH_AT_leak</html>".to_owned();
    }
    if !code.starts_with("CODE_") {
        return json!({"errcode": 40029, "errmsg": "invalid code"}).to_string();
    }
    if !fake.used.lock().unwrap().insert(code.clone()) {
        return json!({"errcode": 40163, "errmsg": "code been used"}).to_string();
    }
    token_answer(&code).to_string()
}

async fn userinfo(
    State(fake): State<Arc<Fake>>,
    Query(q): Query<HashMap<String, String>>,
) -> String {
    fake.queries.lock().unwrap().push(q.clone());
    let field = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    match (field("access_token"), field("openid")) {
        ("OAUTH_AT_CODE_USERINFO", "o_CODE_USERINFO") => json!({
            "openid": "o_CODE_USERINFO", "nickname": "小明 & co", "sex": 0,
            "headimgurl": "", "privilege": [], "unionid": "u_2"
        })
        .to_string(),
        ("OAUTH_AT_CODE_USERINFO", "o_other") => {
            json!({"openid": "o_CODE_USERINFO", "nickname": "someone"}).to_string()
        }
        _ => json!({"errcode": 40001, "errmsg": "invalid credential"}).to_string(),
    }
}

async fn stable_token(State(fake): State<Arc<Fake>>) -> String {
    fake.stable_tokens.fetch_add(1, Ordering::SeqCst);
    json!({"access_token": "CGI_TOKEN", "expires_in": 7200}).to_string()
}

async fn start_with_secret(secret: &str) -> (MpClient, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let app = Router::new()
        .route("/sns/oauth2/access_token", get(access_token))
        .route("/sns/userinfo", get(userinfo))
        .route("/cgi-bin/stable_token", post(stable_token))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let client = MpClient::new(&format!("http://{addr}/"), APP_ID, secret, http);
    (client, fake)
}

async fn start() -> (MpClient, Arc<Fake>) {
    start_with_secret(SECRET).await
}

fn errcode(r: Result<impl std::fmt::Debug, WechatError>) -> i64 {
    match r {
        Err(WechatError::Api { errcode, .. }) => errcode,
        other => panic!("expected an Api error, got {other:?}"),
    }
}

#[tokio::test]
async fn exchange_without_and_with_unionid() {
    let (client, fake) = start().await;
    let t = client.oauth_exchange("CODE_PLAIN").await.unwrap();
    assert_eq!(t.openid, "o_CODE_PLAIN");
    assert_eq!(t.unionid, None);
    assert_eq!(t.scope, "snsapi_base");
    assert_eq!(t.access_token, "OAUTH_AT_CODE_PLAIN");
    assert!(!t.is_snapshot_user);

    let t = client.oauth_exchange("CODE_UNION").await.unwrap();
    assert_eq!(t.openid, "o_CODE_UNION");
    assert_eq!(t.unionid.as_deref(), Some("u_union_1"));

    let q = fake.queries.lock().unwrap()[0].clone();
    let want: HashMap<String, String> = [
        ("appid", APP_ID),
        ("secret", SECRET),
        ("code", "CODE_PLAIN"),
        ("grant_type", "authorization_code"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(q, want);
}

#[tokio::test]
async fn snapshot_user_is_flagged() {
    let (client, _fake) = start().await;
    assert!(
        client
            .oauth_exchange("CODE_SNAP")
            .await
            .unwrap()
            .is_snapshot_user
    );
    assert!(
        !client
            .oauth_exchange("CODE_NOT_SNAP")
            .await
            .unwrap()
            .is_snapshot_user
    );
}

#[tokio::test]
async fn wechat_errcodes_are_api_errors() {
    let (client, _fake) = start().await;
    // Unknown code (or one issued for another AppID).
    let e = client.oauth_exchange("foreign-code").await;
    assert!(e.as_ref().is_err_and(WechatError::is_oauth_code_invalid));
    assert_eq!(errcode(e), 40029);
    // Codes are single-use.
    client.oauth_exchange("CODE_ONCE").await.unwrap();
    let e = client.oauth_exchange("CODE_ONCE").await;
    assert!(e.as_ref().is_err_and(WechatError::is_oauth_code_invalid));
    assert_eq!(errcode(e), 40163);
    // A bad secret is the operator's problem, not a bad code.
    let (bad, _fake) = start_with_secret("wrong-secret").await;
    let e = bad.oauth_exchange("CODE_X").await;
    assert!(!e.as_ref().is_err_and(WechatError::is_oauth_code_invalid));
    assert_eq!(errcode(e), 40125);
}

#[tokio::test]
async fn non_json_body_is_decode_error_without_the_body() {
    let (client, _fake) = start().await;
    match client.oauth_exchange("CODE_HTML").await {
        Err(WechatError::Decode(msg)) => assert!(!msg.contains("OAUTH_AT"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn malformed_codes_are_refused_before_any_request() {
    let (client, fake) = start().await;
    let long = "C".repeat(513);
    for bad in ["", "CODE_\n", "CODE_\u{0}", "CODE_\u{7f}", long.as_str()] {
        let e = client.oauth_exchange(bad).await;
        assert!(
            e.as_ref().is_err_and(WechatError::is_oauth_code_invalid),
            "{bad:?}"
        );
    }
    assert!(fake.queries.lock().unwrap().is_empty());
    // A code full of URL syntax is sent encoded and arrives intact.
    assert_eq!(
        errcode(client.oauth_exchange("a&code=CODE_X#=+ %").await),
        40029
    );
    let q = fake.queries.lock().unwrap()[0].clone();
    assert_eq!(q["code"], "a&code=CODE_X#=+ %");
    assert_eq!(q["grant_type"], "authorization_code");
}

#[tokio::test]
async fn oauth_token_never_enters_the_account_token_cache() {
    let (client, fake) = start().await;
    let t = client.oauth_exchange("CODE_PLAIN").await.unwrap();
    assert_eq!(fake.stable_tokens.load(Ordering::SeqCst), 0);
    let account = client.access_token().await.unwrap();
    assert_eq!(account, "CGI_TOKEN");
    assert_ne!(account, t.access_token);
    assert_eq!(fake.stable_tokens.load(Ordering::SeqCst), 1);
    let dbg = format!("{t:?}");
    assert!(!dbg.contains("OAUTH_AT"), "{dbg}");
}

#[tokio::test]
async fn user_info_gives_nickname_and_checks_openid() {
    let (client, fake) = start().await;
    let t = client.oauth_exchange("CODE_USERINFO").await.unwrap();
    assert_eq!(t.scope, "snsapi_userinfo");
    let info = client
        .oauth_user_info(&t.access_token, &t.openid)
        .await
        .unwrap();
    assert_eq!(info.nickname.as_deref(), Some("小明 & co"));
    assert_eq!(info.unionid.as_deref(), Some("u_2"));
    let q = fake.queries.lock().unwrap()[1].clone();
    assert_eq!(q["lang"], "zh_CN");
    assert_eq!(q["openid"], "o_CODE_USERINFO");

    assert_eq!(
        errcode(client.oauth_user_info("stale", &t.openid).await),
        40001
    );
    assert!(matches!(
        client.oauth_user_info(&t.access_token, "o_other").await,
        Err(WechatError::Decode(_))
    ));
    assert!(matches!(
        client.oauth_user_info("", "o_1").await,
        Err(WechatError::Decode(_))
    ));
}

#[test]
fn authorize_url_exact_form() {
    assert_eq!(
        oauth_authorize_url(
            "https://open.weixin.qq.com/",
            "wx520c15f417810387",
            "https://chat.example.com/auth/wechat/main/callback",
            "snsapi_base",
            "aB3dEf9",
        ),
        "https://open.weixin.qq.com/connect/oauth2/authorize?appid=wx520c15f417810387\
         &redirect_uri=https%3A%2F%2Fchat.example.com%2Fauth%2Fwechat%2Fmain%2Fcallback\
         &response_type=code&scope=snsapi_base&state=aB3dEf9#wechat_redirect"
    );
    // A redirect URI with its own query stays one parameter.
    let url = oauth_authorize_url(
        "http://127.0.0.1:9000",
        "wx1",
        "http://127.0.0.1:8080/cb?a=1&b=2",
        "snsapi_userinfo",
        "S",
    );
    assert_eq!(
        url,
        "http://127.0.0.1:9000/connect/oauth2/authorize?appid=wx1\
         &redirect_uri=http%3A%2F%2F127.0.0.1%3A8080%2Fcb%3Fa%3D1%26b%3D2\
         &response_type=code&scope=snsapi_userinfo&state=S#wechat_redirect"
    );
}
