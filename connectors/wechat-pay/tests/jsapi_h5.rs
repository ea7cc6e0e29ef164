//! JSAPI and H5 orders and the JSAPI page parameters: the real [`Client`]
//! against a fake WeChat Pay server on 127.0.0.1:0 that checks our
//! `Authorization` signature with the merchant public key and the order
//! body, and signs its answers with the test platform key. `paySign` is
//! checked with ring's RSA verifier on the merchant public key and against a
//! signature made by the `openssl` CLI, never against our own signer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chatrelay_wechat_pay::{
    Client, ClientConfig, JsapiParams, MerchantKey, NativeOrder, PayError, PlatformKey,
    PlatformKeys, sign_message,
};
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use serde_json::{Value, json};

const MCH_ID: &str = "1900000001";
const APP_ID: &str = "wxd678efh567hg6787";
const MERCHANT_SERIAL: &str = "3775B6A45ACD588826D15E583A95F5DD0000TEST";
const PLATFORM_ID: &str = "PUB_KEY_ID_0114232134912410000000000000000001";
const OPENID: &str = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";
const PREPAY_ID: &str = "wx201410272009395522657a690389285100";
const H5_URL: &str = "https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id=wx2016121516420242444321ca0631331346&package=1405458241";

const MERCHANT_KEY: &str = include_str!("../testdata/test_only_merchant_key.pem");
const MERCHANT_PUB: &str = include_str!("../testdata/test_only_merchant_pub.pem");
const MERCHANT_PUB_PKCS1: &str = include_str!("../testdata/test_only_merchant_pub_pkcs1.pem");
const PLATFORM_KEY: &str = include_str!("../testdata/test_only_platform_key.pem");
const PLATFORM_PUB: &str = include_str!("../testdata/test_only_platform_pub.pem");

/// `openssl dgst -sha256 -sign test_only_merchant_key.pem` over
/// `wxd678efh567hg6787\n1700000000\n5K8264ILTKCH16CQ2502SI8ZNMTM67VS\nprepay_id=wx201410272009395522657a690389285100\n`.
const OPENSSL_PAY_SIGN: &str = "WwMtCk88UdQqB/BYtEkwzy7zDnMWmwHWxXlE+1KC5phWgBYMMwUWrAh9uHSikn81hdpUGX/cn4btbL/NwqhJnGgLJQMmwKlo8D/6ApGOSCrpINbA70Buq55G2Nm+juBi5L6XKTG4sWjLMZ1lOWDT6CK+Jnr2g/0xM8YmLct17RLtDSAUUPfWWAq8bpkNznop5eNk5RZTYSa+9EeiZ/P+oMlLxTPzU9iDmvIqGGP5YZFpFl3J0BkxmNcfaHCR4s40zm9mnDNT5RYicADu9uUZNhWFJic0jhxlQw1wOjW+WntsfQzfo44WGKi4LlcNHnmM8cKTN7VimZvxG93OldYh9g==";

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_default()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The DER inside a one-block PEM file.
fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    b64(&body)
}

/// ring's own RSA-SHA256 PKCS#1 v1.5 check with the merchant public key.
fn merchant_pub_verifies(message: &str, sig_b64: &str) -> bool {
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pem_der(MERCHANT_PUB_PKCS1))
        .verify(message.as_bytes(), &b64(sig_b64))
        .is_ok()
}

struct Fake {
    merchant_pub: PlatformKey,
    platform_key: MerchantKey,
    /// (path, body) of every request whose signature verified.
    seen: Mutex<Vec<(String, Value)>>,
}

impl Fake {
    /// Rebuilds `METHOD\nURL\nTS\nNONCE\nBODY\n` from the wire and checks it
    /// with the merchant public key, as WeChat does.
    fn check_auth(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> bool {
        let Some(rest) = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.strip_prefix("WECHATPAY2-SHA256-RSA2048 "))
        else {
            return false;
        };
        let field = |name: &str| {
            rest.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_owned())
            })
        };
        let (Some(mchid), Some(nonce), Some(sig), Some(ts), Some(serial)) = (
            field("mchid"),
            field("nonce_str"),
            field("signature"),
            field("timestamp"),
            field("serial_no"),
        ) else {
            return false;
        };
        if mchid != MCH_ID || serial != MERCHANT_SERIAL {
            return false;
        }
        if ts.parse::<i64>().map_or(true, |t| (now() - t).abs() >= 300) {
            return false;
        }
        let pq = uri.path_and_query().map_or("", |p| p.as_str());
        let mut msg = format!("{method}\n{pq}\n{ts}\n{nonce}\n").into_bytes();
        msg.extend_from_slice(body);
        msg.push(b'\n');
        self.merchant_pub.verify(&msg, &b64(&sig)).is_ok()
    }

    fn signed(&self, body: &Value) -> Response {
        let body = body.to_string();
        let ts = now().to_string();
        let nonce = "8F3E2D1C0B0A09080706050403020100";
        let sig = sign_message(
            &self.platform_key,
            format!("{ts}\n{nonce}\n{body}\n").as_bytes(),
        )
        .unwrap();
        let mut resp = (StatusCode::OK, body).into_response();
        let h = resp.headers_mut();
        h.insert("wechatpay-timestamp", HeaderValue::from_str(&ts).unwrap());
        h.insert("wechatpay-nonce", HeaderValue::from_static(nonce));
        h.insert("wechatpay-signature", HeaderValue::from_str(&sig).unwrap());
        h.insert("wechatpay-serial", HeaderValue::from_static(PLATFORM_ID));
        resp
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        json!({"code": code, "message": message}).to_string(),
    )
        .into_response()
}

/// WeChat's side of JSAPI and H5 ordering, with the checks it documents.
async fn handle(
    State(fake): State<Arc<Fake>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !fake.check_auth(&method, &uri, &headers, &body) {
        return error(StatusCode::UNAUTHORIZED, "SIGN_ERROR", "签名错误");
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "body");
    };
    fake.seen
        .lock()
        .unwrap()
        .push((uri.path().to_owned(), req.clone()));
    match (method.as_str(), uri.path()) {
        ("POST", "/v3/pay/transactions/jsapi") => match req["payer"]["openid"].as_str() {
            Some(OPENID) => fake.signed(&json!({"prepay_id": PREPAY_ID})),
            Some("o_empty_answer") => fake.signed(&json!({"prepay_id": ""})),
            _ => error(
                StatusCode::BAD_REQUEST,
                "PARAM_ERROR",
                "openid和appid不匹配",
            ),
        },
        ("POST", "/v3/pay/transactions/h5") => {
            let scene = &req["scene_info"];
            if scene["h5_info"]["type"] != "Wap" || !scene["payer_client_ip"].is_string() {
                return error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "scene_info");
            }
            fake.signed(&json!({"h5_url": H5_URL}))
        }
        _ => error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such API"),
    }
}

async fn start() -> (Client, Arc<Fake>) {
    let fake = Arc::new(Fake {
        merchant_pub: PlatformKey::from_pem(MERCHANT_PUB).unwrap(),
        platform_key: MerchantKey::from_pem(PLATFORM_KEY).unwrap(),
        seen: Mutex::new(Vec::new()),
    });
    let app = Router::new().fallback(handle).with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let cfg = ClientConfig {
        api_base: format!("http://{addr}"),
        timeout: Duration::from_secs(5),
        ..ClientConfig::new(MCH_ID, APP_ID, MERCHANT_SERIAL)
    };
    let mut keys = PlatformKeys::new();
    keys.insert(PLATFORM_ID, PlatformKey::from_pem(PLATFORM_PUB).unwrap());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let client = Client::new(
        cfg,
        MerchantKey::from_pem(MERCHANT_KEY).unwrap(),
        keys,
        http,
    );
    (client, fake)
}

fn order(out_trade_no: &str) -> NativeOrder {
    NativeOrder {
        description: "chatrelay 100 credits".into(),
        out_trade_no: out_trade_no.into(),
        amount_fen: 990,
        notify_url: "https://pay.example.com/wxpay/notify".into(),
        time_expire: None,
        attach: None,
    }
}

fn seen(fake: &Fake) -> Vec<(String, Value)> {
    fake.seen.lock().unwrap().clone()
}

#[tokio::test]
async fn create_jsapi_sends_payer_openid_and_returns_prepay_id() {
    let (client, fake) = start().await;
    let prepay = client
        .create_jsapi(&order("CR20240101000011"), OPENID)
        .await
        .unwrap();
    assert_eq!(prepay, PREPAY_ID);
    let seen = seen(&fake);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "/v3/pay/transactions/jsapi");
    assert_eq!(
        seen[0].1,
        json!({
            "appid": APP_ID, "mchid": MCH_ID, "description": "chatrelay 100 credits",
            "out_trade_no": "CR20240101000011",
            "notify_url": "https://pay.example.com/wxpay/notify",
            "amount": {"total": 990, "currency": "CNY"},
            "payer": {"openid": OPENID},
        })
    );
}

#[tokio::test]
async fn create_h5_sends_scene_info_and_returns_h5_url() {
    let (client, fake) = start().await;
    let url = client
        .create_h5(&order("CR20240101000012"), "203.0.113.7")
        .await
        .unwrap();
    assert_eq!(url, H5_URL);
    let v6 = client
        .create_h5(&order("CR20240101000013"), "2001:db8::1")
        .await
        .unwrap();
    assert_eq!(v6, H5_URL);
    let seen = seen(&fake);
    assert_eq!(seen[0].0, "/v3/pay/transactions/h5");
    assert_eq!(
        seen[0].1,
        json!({
            "appid": APP_ID, "mchid": MCH_ID, "description": "chatrelay 100 credits",
            "out_trade_no": "CR20240101000012",
            "notify_url": "https://pay.example.com/wxpay/notify",
            "amount": {"total": 990, "currency": "CNY"},
            "scene_info": {"payer_client_ip": "203.0.113.7", "h5_info": {"type": "Wap"}},
        })
    );
    assert_eq!(seen[1].1["scene_info"]["payer_client_ip"], "2001:db8::1");
    assert!(seen[0].1.get("payer").is_none());
}

#[tokio::test]
async fn param_error_from_wechat_is_api_error() {
    let (client, _fake) = start().await;
    match client
        .create_jsapi(&order("CR20240101000014"), "o_of_another_appid")
        .await
    {
        Err(PayError::Api { status, code, .. }) => {
            assert_eq!(status, 400);
            assert_eq!(code, "PARAM_ERROR");
        }
        other => panic!("{other:?}"),
    }
    // An empty prepay_id in a signed 200 is not a usable order.
    assert!(matches!(
        client
            .create_jsapi(&order("CR20240101000015"), "o_empty_answer")
            .await,
        Err(PayError::Decode { .. })
    ));
}

#[tokio::test]
async fn bad_openid_ip_or_order_never_reach_the_network() {
    let (client, fake) = start().await;
    let long = "o".repeat(129);
    for bad in ["", "o id", "o\nid", "openid\u{7f}", "用户", long.as_str()] {
        assert!(
            matches!(
                client.create_jsapi(&order("CR20240101000016"), bad).await,
                Err(PayError::InvalidInput(_))
            ),
            "{bad:?}"
        );
    }
    for bad in [
        "",
        "localhost",
        "1.2.3",
        "1.2.3.4:80",
        " 1.2.3.4",
        "1.2.3.4\n",
    ] {
        assert!(
            matches!(
                client.create_h5(&order("CR20240101000017"), bad).await,
                Err(PayError::InvalidInput(_))
            ),
            "{bad:?}"
        );
    }
    let mut zero = order("CR20240101000018");
    zero.amount_fen = 0;
    assert!(matches!(
        client.create_jsapi(&zero, OPENID).await,
        Err(PayError::InvalidInput(_))
    ));
    assert!(matches!(
        client.create_h5(&zero, "203.0.113.7").await,
        Err(PayError::InvalidInput(_))
    ));
    assert!(seen(&fake).is_empty());
}

#[tokio::test]
async fn jsapi_params_match_the_openssl_vector_and_verify() {
    let (client, _fake) = start().await;
    let p = client
        .jsapi_params_at(PREPAY_ID, 1_700_000_000, "5K8264ILTKCH16CQ2502SI8ZNMTM67VS")
        .unwrap();
    let expected_message = "wxd678efh567hg6787\n1700000000\n5K8264ILTKCH16CQ2502SI8ZNMTM67VS\nprepay_id=wx201410272009395522657a690389285100\n";
    assert!(merchant_pub_verifies(expected_message, &p.pay_sign));
    assert_eq!(p.pay_sign, OPENSSL_PAY_SIGN);
    // The signature covers every line: change one and it fails.
    assert!(!merchant_pub_verifies(
        &expected_message.replace("1700000000", "1700000001"),
        &p.pay_sign
    ));
    assert!(!merchant_pub_verifies(
        expected_message.trim_end(),
        &p.pay_sign
    ));
    // Exact wire shape for WeixinJSBridge.
    let v = serde_json::to_value(&p).unwrap();
    assert_eq!(
        v,
        json!({
            "appId": APP_ID, "timeStamp": "1700000000",
            "nonceStr": "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
            "package": format!("prepay_id={PREPAY_ID}"), "signType": "RSA",
            "paySign": OPENSSL_PAY_SIGN,
        })
    );
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 6);
    assert!(v["timeStamp"].is_string());
    let back: JsapiParams = serde_json::from_value(v).unwrap();
    assert_eq!(back, p);
}

#[tokio::test]
async fn jsapi_params_fresh_timestamp_and_nonce() {
    let (client, _fake) = start().await;
    let a = client.jsapi_params(PREPAY_ID).unwrap();
    let b = client.jsapi_params(PREPAY_ID).unwrap();
    assert_eq!(a.nonce_str.len(), 32);
    assert!(a.nonce_str.bytes().all(|c| c.is_ascii_alphanumeric()));
    assert_ne!(a.nonce_str, b.nonce_str);
    let ts: i64 = a.time_stamp.parse().unwrap();
    assert!((now() - ts).abs() < 60);
    assert_eq!(a.package, format!("prepay_id={PREPAY_ID}"));
    assert_eq!(a.sign_type, "RSA");
    let msg = format!(
        "{}\n{}\n{}\n{}\n",
        a.app_id, a.time_stamp, a.nonce_str, a.package
    );
    assert!(merchant_pub_verifies(&msg, &a.pay_sign));
}

#[tokio::test]
async fn jsapi_params_reject_line_breaking_input() {
    let (client, _fake) = start().await;
    let too_long = "n".repeat(33);
    let cases: [(&str, i64, &str); 7] = [
        ("", 1_700_000_000, "abc"),
        ("wx1\nappId", 1_700_000_000, "abc"),
        ("wx 1", 1_700_000_000, "abc"),
        (PREPAY_ID, 1_700_000_000, ""),
        (PREPAY_ID, 1_700_000_000, "a\nb"),
        (PREPAY_ID, 1_700_000_000, &too_long),
        (PREPAY_ID, 0, "abc"),
    ];
    for (prepay, ts, nonce) in cases {
        assert!(
            matches!(
                client.jsapi_params_at(prepay, ts, nonce),
                Err(PayError::InvalidInput(_))
            ),
            "{prepay:?} {ts} {nonce:?}"
        );
    }
}
