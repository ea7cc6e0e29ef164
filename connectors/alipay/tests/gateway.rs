//! End-to-end tests of [`chatrelay_alipay::Client`] against a fake Alipay
//! gateway on 127.0.0.1.
//!
//! The fake behaves like the real one where it matters: it checks each
//! request's RSA2 signature with the *app public key* (answering
//! `isv.invalid-signature` otherwise) and signs the exact raw text of its
//! `*_response` value with the *Alipay private key* (or, to simulate an
//! impostor, with another key).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chatrelay_alipay::{
    AlipayError, AlipayPublicKey, AppPrivateKey, Client, ClientConfig, TradeStatus, parse_form,
    request_sign_content, sign, verify,
};

const APP_PRIVATE: &str = include_str!("../testdata/app_private_pkcs8.pem");
const APP_PUBLIC: &str = include_str!("../testdata/app_public.pem");
const ALIPAY_PRIVATE: &str = include_str!("../testdata/alipay_private_pkcs1.pem");
const ALIPAY_PUBLIC: &str = include_str!("../testdata/alipay_public.b64");

const APP_ID: &str = "2021000000000001";
const NOTIFY_URL: &str = "https://relay.example.com/pay/alipay/notify";

/// How the fake signs its answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Signer {
    /// With the Alipay private key, as the real gateway does.
    Alipay,
    /// With the app's key: a response the client must not believe.
    Impostor,
}

/// Decoded form parameters of one request.
type Params = Vec<(String, String)>;

#[derive(Clone)]
struct Fake {
    app_public: Arc<AlipayPublicKey>,
    alipay_private: Arc<AppPrivateKey>,
    impostor_private: Arc<AppPrivateKey>,
    signer: Signer,
    /// Decoded form parameters of every request received.
    seen: Arc<Mutex<Vec<Params>>>,
    /// Content-Type of every request received.
    content_types: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    fn new(signer: Signer) -> Self {
        Self {
            app_public: Arc::new(AlipayPublicKey::from_pem_or_base64(APP_PUBLIC).unwrap()),
            alipay_private: Arc::new(AppPrivateKey::from_pem_or_base64(ALIPAY_PRIVATE).unwrap()),
            impostor_private: Arc::new(AppPrivateKey::from_pem_or_base64(APP_PRIVATE).unwrap()),
            signer,
            seen: Arc::default(),
            content_types: Arc::default(),
        }
    }

    /// Wraps a payload the way the gateway does, signing its exact text.
    fn respond(&self, method: &str, payload: &str) -> Response {
        let key = match self.signer {
            Signer::Alipay => &self.alipay_private,
            Signer::Impostor => &self.impostor_private,
        };
        let sig = sign(key, payload).unwrap();
        let body = format!(
            "{{\"{}_response\":{payload},\"sign\":\"{sig}\"}}",
            method.replace('.', "_")
        );
        ([(header::CONTENT_TYPE, "text/html;charset=utf-8")], body).into_response()
    }

    fn seen(&self) -> Vec<Params> {
        self.seen.lock().unwrap().clone()
    }
}

fn get<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn gateway(State(fake): State<Fake>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(params) = parse_form(&body) else {
        return (StatusCode::BAD_REQUEST, "bad form").into_response();
    };
    fake.seen.lock().unwrap().push(params.clone());
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    fake.content_types.lock().unwrap().push(ct.to_owned());
    let method = get(&params, "method").unwrap_or_default().to_owned();

    // Request signature: sorted k=v of everything but `sign`, app key.
    let sig = get(&params, "sign").unwrap_or_default();
    if verify(&fake.app_public, &request_sign_content(&params), sig).is_err() {
        return fake.respond(
            &method,
            r#"{"code":"40002","msg":"Invalid Arguments","sub_code":"isv.invalid-signature","sub_msg":"验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配"}"#,
        );
    }
    let biz: serde_json::Value =
        serde_json::from_str(get(&params, "biz_content").unwrap_or("{}")).unwrap();
    let out_trade_no = biz["out_trade_no"].as_str().unwrap_or_default();
    match method.as_str() {
        "alipay.trade.precreate" => fake.respond(
            &method,
            &format!(
                r#"{{"code":"10000","msg":"Success","out_trade_no":"{out_trade_no}","qr_code":"https:\/\/qr.alipay.com\/bax08431cmsxu7zxmiwz0017"}}"#
            ),
        ),
        "alipay.trade.query" if out_trade_no == "missing" => fake.respond(
            &method,
            r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_NOT_EXIST","sub_msg":"交易不存在","buyer_pay_amount":"0.00","invoice_amount":"0.00","out_trade_no":"missing","point_amount":"0.00","receipt_amount":"0.00"}"#,
        ),
        // Pretty-printed, nested, with braces and escaped quotes in strings:
        // only the exact received text verifies.
        "alipay.trade.query" => fake.respond(
            &method,
            &format!(
                "{{\n  \"code\": \"10000\",\n  \"msg\": \"Success\",\n  \"buyer_logon_id\": \"159****5620\",\n  \"buyer_pay_amount\": \"12.34\",\n  \"fund_bill_list\": [ {{ \"amount\": \"12.34\", \"fund_channel\": \"ALIPAYACCOUNT\" }} ],\n  \"out_trade_no\": \"{out_trade_no}\",\n  \"note\": \"}} {{ \\\"braces\\\" ]\",\n  \"total_amount\": \"12.34\",\n  \"trade_no\": \"2013112011001004330000121536\",\n  \"trade_status\": \"TRADE_SUCCESS\"\n}}"
            ),
        ),
        "alipay.trade.close" => fake.respond(
            &method,
            &format!(
                r#"{{"code":"10000","msg":"Success","out_trade_no":"{out_trade_no}","trade_no":"2013112111001004500000675971"}}"#
            ),
        ),
        "alipay.trade.refund" => fake.respond(
            &method,
            &format!(
                r#"{{"code":"10000","msg":"Success","buyer_logon_id":"159****5620","fund_change":"Y","gmt_refund_pay":"2014-11-27 15:45:57","out_trade_no":"{out_trade_no}","refund_fee":"{}","trade_no":"2014112611001004680073956707"}}"#,
                biz["refund_amount"].as_str().unwrap_or_default()
            ),
        ),
        _ => fake.respond(
            &method,
            r#"{"code":"40004","msg":"Business Failed","sub_code":"isv.invalid-method"}"#,
        ),
    }
}

/// Starts the fake on 127.0.0.1:0 and returns it with its gateway URL.
async fn start(signer: Signer) -> (Fake, String) {
    let fake = Fake::new(signer);
    let app = axum::Router::new()
        .route("/gateway.do", post(gateway))
        .route(
            "/broken.do",
            post(|| async { (StatusCode::BAD_GATEWAY, "<html>502 Bad Gateway</html>") }),
        )
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, format!("http://{addr}/gateway.do"))
}

fn client(gateway: &str, app_key_pem: &str) -> Client {
    let cfg = ClientConfig {
        gateway: gateway.to_owned(),
        app_id: APP_ID.to_owned(),
        notify_url: Some(NOTIFY_URL.to_owned()),
        timeout: Duration::from_secs(5),
    };
    // No system proxy: the fake is on loopback.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    Client::new(
        cfg,
        AppPrivateKey::from_pem_or_base64(app_key_pem).unwrap(),
        AlipayPublicKey::from_pem_or_base64(ALIPAY_PUBLIC).unwrap(),
        http,
    )
}

#[tokio::test]
async fn precreate_returns_qr_code_and_sends_signed_common_params() {
    let (fake, url) = start(Signer::Alipay).await;
    let qr = client(&url, APP_PRIVATE)
        .precreate("order_1", 1234, "100 credits 积分包 & more", "15m")
        .await
        .unwrap();
    assert_eq!(qr, "https://qr.alipay.com/bax08431cmsxu7zxmiwz0017");

    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let p = &seen[0];
    assert_eq!(get(p, "app_id"), Some(APP_ID));
    assert_eq!(get(p, "method"), Some("alipay.trade.precreate"));
    assert_eq!(get(p, "format"), Some("JSON"));
    assert_eq!(get(p, "charset"), Some("utf-8"));
    assert_eq!(get(p, "sign_type"), Some("RSA2"));
    assert_eq!(get(p, "version"), Some("1.0"));
    assert_eq!(get(p, "notify_url"), Some(NOTIFY_URL));
    let ts = get(p, "timestamp").unwrap();
    chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%d %H:%M:%S").unwrap();
    let biz: serde_json::Value = serde_json::from_str(get(p, "biz_content").unwrap()).unwrap();
    assert_eq!(biz["out_trade_no"], "order_1");
    assert_eq!(biz["total_amount"], "12.34");
    assert_eq!(biz["subject"], "100 credits 积分包 & more");
    assert_eq!(biz["timeout_express"], "15m");
    assert!(fake.content_types.lock().unwrap()[0].starts_with("application/x-www-form-urlencoded"));
}

#[tokio::test]
async fn query_trade_success() {
    let (fake, url) = start(Signer::Alipay).await;
    let r = client(&url, APP_PRIVATE).query("order_1").await.unwrap();
    assert_eq!(r.trade_status, TradeStatus::TradeSuccess);
    assert!(r.trade_status.is_paid());
    assert_eq!(r.total_amount_fen, 1234);
    assert_eq!(r.trade_no.as_deref(), Some("2013112011001004330000121536"));
    let p = &fake.seen()[0];
    assert_eq!(get(p, "method"), Some("alipay.trade.query"));
    // notify_url only rides on order-creating calls.
    assert_eq!(get(p, "notify_url"), None);
}

#[tokio::test]
async fn query_unknown_trade_is_api_error() {
    let (_fake, url) = start(Signer::Alipay).await;
    let err = client(&url, APP_PRIVATE)
        .query("missing")
        .await
        .unwrap_err();
    match err {
        AlipayError::Api {
            code,
            sub_code,
            sub_msg,
            ..
        } => {
            assert_eq!(code, "40004");
            assert_eq!(sub_code.as_deref(), Some("ACQ.TRADE_NOT_EXIST"));
            assert_eq!(sub_msg.as_deref(), Some("交易不存在"));
        }
        other => panic!("expected Api error, got {other:?}"),
    }
}

#[tokio::test]
async fn close_trade() {
    let (fake, url) = start(Signer::Alipay).await;
    client(&url, APP_PRIVATE).close("order_1").await.unwrap();
    let p = &fake.seen()[0];
    assert_eq!(get(p, "method"), Some("alipay.trade.close"));
    let biz: serde_json::Value = serde_json::from_str(get(p, "biz_content").unwrap()).unwrap();
    assert_eq!(biz, serde_json::json!({ "out_trade_no": "order_1" }));
}

#[tokio::test]
async fn refund_trade() {
    let (fake, url) = start(Signer::Alipay).await;
    let resp = client(&url, APP_PRIVATE)
        .refund("order_1", 100, "order_1_r1", "用户申请退款")
        .await
        .unwrap();
    assert_eq!(resp["fund_change"], "Y");
    assert_eq!(resp["refund_fee"], "1.00");
    let p = &fake.seen()[0];
    assert_eq!(get(p, "method"), Some("alipay.trade.refund"));
    let biz: serde_json::Value = serde_json::from_str(get(p, "biz_content").unwrap()).unwrap();
    assert_eq!(biz["refund_amount"], "1.00");
    assert_eq!(biz["out_request_no"], "order_1_r1");
    assert_eq!(biz["refund_reason"], "用户申请退款");
}

#[tokio::test]
async fn response_signed_with_wrong_key_is_rejected() {
    let (_fake, url) = start(Signer::Impostor).await;
    let c = client(&url, APP_PRIVATE);
    assert_eq!(
        c.precreate("order_1", 1234, "x", "15m").await,
        Err(AlipayError::BadSignature)
    );
    assert_eq!(c.query("order_1").await, Err(AlipayError::BadSignature));
    // Even an error answer from an impostor is not believed.
    assert_eq!(c.query("missing").await, Err(AlipayError::BadSignature));
}

#[tokio::test]
async fn request_signed_with_wrong_app_key_is_rejected_by_gateway() {
    let (fake, url) = start(Signer::Alipay).await;
    let err = client(&url, ALIPAY_PRIVATE)
        .query("order_1")
        .await
        .unwrap_err();
    match err {
        AlipayError::Api { code, sub_code, .. } => {
            assert_eq!(code, "40002");
            assert_eq!(sub_code.as_deref(), Some("isv.invalid-signature"));
        }
        other => panic!("expected Api error, got {other:?}"),
    }
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn http_failures_surface() {
    let (_fake, url) = start(Signer::Alipay).await;
    let broken = url.replace("gateway.do", "broken.do");
    let err = client(&broken, APP_PRIVATE)
        .query("order_1")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AlipayError::Http(m) if m.contains("502")),
        "{err:?}"
    );

    // Nothing listens on the discard port of loopback.
    let err = client("http://127.0.0.1:9/gateway.do", APP_PRIVATE)
        .query("order_1")
        .await
        .unwrap_err();
    assert!(matches!(err, AlipayError::Http(_)), "{err:?}");
}

#[tokio::test]
async fn invalid_arguments_are_refused_before_sending() {
    let (fake, url) = start(Signer::Alipay).await;
    let c = client(&url, APP_PRIVATE);
    assert!(matches!(
        c.precreate("order_1", 0, "x", "15m").await,
        Err(AlipayError::InvalidAmount(_))
    ));
    assert!(matches!(
        c.precreate("order 1", 100, "x", "15m").await,
        Err(AlipayError::InvalidInput(_))
    ));
    assert!(matches!(
        c.precreate("order_1", 100, "", "15m").await,
        Err(AlipayError::InvalidInput(_))
    ));
    assert!(matches!(
        c.precreate("order_1", 100, "x", "15 min").await,
        Err(AlipayError::InvalidInput(_))
    ));
    assert!(matches!(
        c.refund("order_1", -5, "r1", "").await,
        Err(AlipayError::InvalidAmount(_))
    ));
    assert!(fake.seen().is_empty());
}
