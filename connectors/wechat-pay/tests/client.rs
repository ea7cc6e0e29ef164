//! Integration tests: the real [`Client`] against a fake WeChat Pay server on
//! 127.0.0.1:0 that checks our `Authorization` signature with the merchant
//! public key and signs its responses with the test platform private key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chatrelay_wechat_pay::{
    Client, ClientConfig, MerchantKey, NativeOrder, PayError, PlatformKey, PlatformKeys,
    TradeState, sign_message,
};
use serde_json::{Value, json};

const MCH_ID: &str = "1900000001";
const APP_ID: &str = "wxd678efh567hg6787";
const MERCHANT_SERIAL: &str = "3775B6A45ACD588826D15E583A95F5DD0000TEST";
const PLATFORM_ID: &str = "PUB_KEY_ID_0114232134912410000000000000000001";

const MERCHANT_KEY: &str = include_str!("../testdata/test_only_merchant_key.pem");
const MERCHANT_PUB: &str = include_str!("../testdata/test_only_merchant_pub.pem");
const PLATFORM_KEY: &str = include_str!("../testdata/test_only_platform_key.pem");
const PLATFORM_PUB: &str = include_str!("../testdata/test_only_platform_pub.pem");

/// What the fake saw of one request that passed the signature check.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path_and_query: String,
    body: Vec<u8>,
    user_agent: String,
    accept: String,
    content_type: String,
}

struct Fake {
    merchant_pub: PlatformKey,
    platform_key: MerchantKey,
    seen: Mutex<Vec<Seen>>,
    rejected: Mutex<usize>,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_default()
}

/// Parses `WECHATPAY2-SHA256-RSA2048 k="v",...` like WeChat does.
fn parse_auth(header: &str) -> Option<HashMap<String, String>> {
    let rest = header.strip_prefix("WECHATPAY2-SHA256-RSA2048 ")?;
    rest.split(',')
        .map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let v = v.strip_prefix('"')?.strip_suffix('"')?;
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

impl Fake {
    /// The server half of request signing: rebuild the 5-line message from
    /// what arrived on the wire and verify it with the merchant public key.
    fn check_auth(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> bool {
        let Some(fields) = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_auth)
        else {
            return false;
        };
        let (Some(mchid), Some(nonce), Some(sig), Some(ts), Some(serial)) = (
            fields.get("mchid"),
            fields.get("nonce_str"),
            fields.get("signature"),
            fields.get("timestamp"),
            fields.get("serial_no"),
        ) else {
            return false;
        };
        if mchid != MCH_ID || serial != MERCHANT_SERIAL {
            return false;
        }
        let Ok(ts_num) = ts.parse::<i64>() else {
            return false;
        };
        if (now() - ts_num).abs() >= 300 {
            return false;
        }
        let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
        let mut msg = format!("{method}\n{path_and_query}\n{ts}\n{nonce}\n").into_bytes();
        msg.extend_from_slice(body);
        msg.push(b'\n');
        self.merchant_pub.verify(&msg, &b64(sig)).is_ok()
    }

    /// A response signed like WeChat's: `ts\nnonce\nbody\n`.
    fn signed(&self, status: StatusCode, body: Value) -> Response {
        let body = body.to_string();
        let sig = self.sign(&body);
        self.with_sig(status, body, &sig)
    }

    fn sign(&self, body: &str) -> (String, String, String) {
        let ts = now().to_string();
        let nonce = "8F3E2D1C0B0A09080706050403020100".to_owned();
        let msg = format!("{ts}\n{nonce}\n{body}\n");
        let sig = sign_message(&self.platform_key, msg.as_bytes()).unwrap();
        (ts, nonce, sig)
    }

    fn with_sig(
        &self,
        status: StatusCode,
        body: String,
        sig: &(String, String, String),
    ) -> Response {
        let mut resp = (status, body).into_response();
        let h = resp.headers_mut();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert(
            "wechatpay-timestamp",
            HeaderValue::from_str(&sig.0).unwrap(),
        );
        h.insert("wechatpay-nonce", HeaderValue::from_str(&sig.1).unwrap());
        h.insert(
            "wechatpay-signature",
            HeaderValue::from_str(&sig.2).unwrap(),
        );
        h.insert("wechatpay-serial", HeaderValue::from_static(PLATFORM_ID));
        h.insert(
            "wechatpay-signature-type",
            HeaderValue::from_static("WECHATPAY2-SHA256-RSA2048"),
        );
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

fn transaction(out_trade_no: &str, state: &str) -> Value {
    let mut t = json!({
        "appid": APP_ID, "mchid": MCH_ID, "out_trade_no": out_trade_no,
        "trade_type": "NATIVE", "trade_state": state, "trade_state_desc": "desc",
        "amount": {"total": 990, "currency": "CNY"}
    });
    if state == "SUCCESS" {
        t["transaction_id"] = json!("4200001234202401010000000001");
        t["success_time"] = json!("2024-01-01T12:00:00+08:00");
        t["payer"] = json!({"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"});
        t["amount"] =
            json!({"total": 990, "payer_total": 990, "currency": "CNY", "payer_currency": "CNY"});
    }
    t
}

async fn handle(
    State(fake): State<Arc<Fake>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !fake.check_auth(&method, &uri, &headers, &body) {
        *fake.rejected.lock().unwrap() += 1;
        return error(StatusCode::UNAUTHORIZED, "SIGN_ERROR", "签名错误");
    }
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    fake.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path_and_query: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        body: body.to_vec(),
        user_agent: header("user-agent"),
        accept: header("accept"),
        content_type: header("content-type"),
    });

    let path = uri.path();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["v3", "pay", "transactions", "native"]) => fake.signed(
            StatusCode::OK,
            json!({"code_url": "weixin://wxpay/bizpayurl?pr=p4lpSuKzz"}),
        ),
        ("GET", ["v3", "pay", "transactions", "out-trade-no", no]) => {
            if uri.query() != Some(&format!("mchid={MCH_ID}")) {
                return error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "mchid");
            }
            match *no {
                "PAID_000001" => fake.signed(StatusCode::OK, transaction(no, "SUCCESS")),
                "NOTPAY_00001" => fake.signed(StatusCode::OK, transaction(no, "NOTPAY")),
                "BADSIG_00001" => {
                    // Signed, then tampered with on the way (NOTPAY -> SUCCESS).
                    let sig = fake.sign(&transaction(no, "NOTPAY").to_string());
                    fake.with_sig(StatusCode::OK, transaction(no, "SUCCESS").to_string(), &sig)
                }
                "SIGTEST_0001" => {
                    let body = transaction(no, "SUCCESS").to_string();
                    let (ts, nonce, sig) = fake.sign(&body);
                    let probe = (ts, nonce, format!("WECHATPAY/SIGNTEST/{sig}"));
                    fake.with_sig(StatusCode::OK, body, &probe)
                }
                "NOSIG_000001" => {
                    (StatusCode::OK, transaction(no, "SUCCESS").to_string()).into_response()
                }
                "OTHER_000001" => {
                    fake.signed(StatusCode::OK, transaction("SOMEONE_ELSE", "SUCCESS"))
                }
                _ => error(StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "订单不存在"),
            }
        }
        ("POST", ["v3", "pay", "transactions", "out-trade-no", _no, "close"]) => {
            StatusCode::NO_CONTENT.into_response()
        }
        ("POST", ["v3", "refund", "domestic", "refunds"]) => {
            let req: Value = serde_json::from_slice(&body).unwrap_or_default();
            fake.signed(
                StatusCode::OK,
                json!({
                    "refund_id": "50000000382019052709732678859",
                    "out_refund_no": req["out_refund_no"],
                    "out_trade_no": req["out_trade_no"],
                    "status": "PROCESSING",
                    "amount": req["amount"],
                }),
            )
        }
        _ => error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such API"),
    }
}

struct Harness {
    fake: Arc<Fake>,
    base: String,
}

async fn start() -> Harness {
    let fake = Arc::new(Fake {
        merchant_pub: PlatformKey::from_pem(MERCHANT_PUB).unwrap(),
        platform_key: MerchantKey::from_pem(PLATFORM_KEY).unwrap(),
        seen: Mutex::new(Vec::new()),
        rejected: Mutex::new(0),
    });
    let app = Router::new().fallback(handle).with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Harness {
        fake,
        base: format!("http://{addr}"),
    }
}

fn platform_keys() -> PlatformKeys {
    let mut keys = PlatformKeys::new();
    keys.insert(PLATFORM_ID, PlatformKey::from_pem(PLATFORM_PUB).unwrap());
    keys
}

impl Harness {
    fn client_with(&self, merchant_key_pem: &str, keys: PlatformKeys) -> Client {
        let cfg = ClientConfig {
            api_base: self.base.clone(),
            timeout: Duration::from_secs(5),
            ..ClientConfig::new(MCH_ID, APP_ID, MERCHANT_SERIAL)
        };
        // No proxy: the environment must not reroute 127.0.0.1.
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Client::new(
            cfg,
            MerchantKey::from_pem(merchant_key_pem).unwrap(),
            keys,
            http,
        )
    }

    fn client(&self) -> Client {
        self.client_with(MERCHANT_KEY, platform_keys())
    }

    fn seen(&self) -> Vec<Seen> {
        self.fake.seen.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn create_native_sends_exact_fields_and_returns_code_url() {
    let h = start().await;
    let expire = chrono::DateTime::parse_from_rfc3339("2024-01-01T12:30:00+08:00").unwrap();
    let order = NativeOrder {
        description: "chatrelay 100 credits".into(),
        out_trade_no: "CR20240101000001".into(),
        amount_fen: 990,
        notify_url: "https://pay.example.com/wxpay/notify".into(),
        time_expire: Some(expire),
        attach: Some("pack=100".into()),
    };
    let code_url = h.client().create_native(&order).await.unwrap();
    assert_eq!(code_url, "weixin://wxpay/bizpayurl?pr=p4lpSuKzz");

    let seen = h.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "POST");
    assert_eq!(s.path_and_query, "/v3/pay/transactions/native");
    assert_eq!(s.accept, "application/json");
    assert_eq!(s.content_type, "application/json");
    assert!(s.user_agent.starts_with("chatrelay-wechat-pay/"));
    let body: Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(
        body,
        json!({
            "appid": APP_ID, "mchid": MCH_ID, "description": "chatrelay 100 credits",
            "out_trade_no": "CR20240101000001",
            "notify_url": "https://pay.example.com/wxpay/notify",
            "amount": {"total": 990, "currency": "CNY"},
            "time_expire": "2024-01-01T12:30:00+08:00",
            "attach": "pack=100",
        })
    );
    // Integer fen on the wire, never a float.
    assert!(String::from_utf8_lossy(&s.body).contains("\"total\":990,"));
}

#[tokio::test]
async fn create_native_omits_optional_fields_and_validates_first() {
    let h = start().await;
    let client = h.client();
    let mut order = NativeOrder {
        description: "credits".into(),
        out_trade_no: "CR20240101000002".into(),
        amount_fen: 1,
        notify_url: "https://pay.example.com/n".into(),
        time_expire: None,
        attach: None,
    };
    client.create_native(&order).await.unwrap();
    let body: Value = serde_json::from_slice(&h.seen()[0].body).unwrap();
    assert!(body.get("time_expire").is_none() && body.get("attach").is_none());

    order.amount_fen = 0;
    assert!(matches!(
        client.create_native(&order).await,
        Err(PayError::InvalidInput(_))
    ));
    assert_eq!(h.seen().len(), 1, "invalid order must not be sent");
}

#[tokio::test]
async fn query_success_and_notpay() {
    let h = start().await;
    let client = h.client();
    let paid = client.query("PAID_000001").await.unwrap();
    assert_eq!(paid.trade_state, TradeState::Success);
    assert!(paid.trade_state.is_paid());
    assert_eq!(paid.amount.unwrap().total, 990);
    assert_eq!(
        paid.transaction_id.as_deref(),
        Some("4200001234202401010000000001")
    );

    let unpaid = client.query("NOTPAY_00001").await.unwrap();
    assert_eq!(unpaid.trade_state, TradeState::NotPay);
    assert!(!unpaid.trade_state.is_paid() && !unpaid.trade_state.is_final_unpaid());

    let seen = h.seen();
    assert_eq!(seen[0].method, "GET");
    assert_eq!(
        seen[0].path_and_query,
        format!("/v3/pay/transactions/out-trade-no/PAID_000001?mchid={MCH_ID}")
    );
    assert!(seen[0].body.is_empty());
}

#[tokio::test]
async fn query_unknown_order_is_api_404() {
    let h = start().await;
    match h.client().query("MISSING_0001").await {
        Err(PayError::Api {
            status,
            code,
            message,
        }) => {
            assert_eq!(status, 404);
            assert_eq!(code, "ORDER_NOT_EXIST");
            assert_eq!(message, "订单不存在");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn query_rejects_answers_for_another_order() {
    let h = start().await;
    assert!(matches!(
        h.client().query("OTHER_000001").await,
        Err(PayError::Decode { .. })
    ));
}

#[tokio::test]
async fn close_gets_204() {
    let h = start().await;
    h.client().close("NOTPAY_00001").await.unwrap();
    let s = &h.seen()[0];
    assert_eq!(s.method, "POST");
    assert_eq!(
        s.path_and_query,
        "/v3/pay/transactions/out-trade-no/NOTPAY_00001/close"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&s.body).unwrap(),
        json!({"mchid": MCH_ID})
    );
}

#[tokio::test]
async fn refund_sends_amounts_in_fen() {
    let h = start().await;
    let client = h.client();
    let r = client
        .refund("PAID_000001", "RF_PAID_000001_1", 500, 990, "用户申请退款")
        .await
        .unwrap();
    assert_eq!(r["status"], "PROCESSING");
    assert_eq!(r["refund_id"], "50000000382019052709732678859");
    let s = &h.seen()[0];
    assert_eq!(s.path_and_query, "/v3/refund/domestic/refunds");
    assert_eq!(
        serde_json::from_slice::<Value>(&s.body).unwrap(),
        json!({
            "out_trade_no": "PAID_000001", "out_refund_no": "RF_PAID_000001_1",
            "reason": "用户申请退款",
            "amount": {"refund": 500, "total": 990, "currency": "CNY"}
        })
    );

    for (refund, total) in [(0, 990), (991, 990), (-1, 990), (1, 0)] {
        assert!(matches!(
            client
                .refund("PAID_000001", "RF_X", refund, total, "")
                .await,
            Err(PayError::InvalidInput(_))
        ));
    }
    assert_eq!(h.seen().len(), 1);
}

#[tokio::test]
async fn responses_with_bad_or_missing_signatures_are_rejected() {
    let h = start().await;
    let client = h.client();
    assert!(matches!(
        client.query("BADSIG_00001").await,
        Err(PayError::BadSignature)
    ));
    assert!(matches!(
        client.query("SIGTEST_0001").await,
        Err(PayError::BadSignature)
    ));
    assert!(matches!(
        client.query("NOSIG_000001").await,
        Err(PayError::BadSignature)
    ));
    // A client that does not trust the fake's key.
    let untrusting = h.client_with(MERCHANT_KEY, PlatformKeys::new());
    assert!(matches!(
        untrusting.query("PAID_000001").await,
        Err(PayError::UnknownSerial(_))
    ));
    // A different key under the right id.
    let mut wrong = PlatformKeys::new();
    wrong.insert(PLATFORM_ID, PlatformKey::from_pem(MERCHANT_PUB).unwrap());
    let wrong = h.client_with(MERCHANT_KEY, wrong);
    assert!(matches!(
        wrong.query("PAID_000001").await,
        Err(PayError::BadSignature)
    ));
}

#[tokio::test]
async fn wrong_merchant_key_is_refused_by_the_server() {
    let h = start().await;
    // The wechatpay-java test key: a valid RSA key, just not ours.
    let vectors: Value =
        serde_json::from_str(include_str!("../testdata/wechatpay_vectors.json")).unwrap();
    let other_key = vectors["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == "wechatpay_v3_rsa_verify_java")
        .unwrap()["input"]["merchant_private_key_pem"]
        .as_str()
        .unwrap()
        .to_owned();
    let client = h.client_with(&other_key, platform_keys());
    match client.query("PAID_000001").await {
        Err(PayError::Api { status, code, .. }) => {
            assert_eq!(status, 401);
            assert_eq!(code, "SIGN_ERROR");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(*h.fake.rejected.lock().unwrap(), 1);
    assert!(h.seen().is_empty());
    // The right key passes on the same server.
    h.client().query("PAID_000001").await.unwrap();
    assert_eq!(*h.fake.rejected.lock().unwrap(), 1);
}

#[tokio::test]
async fn invalid_out_trade_no_never_reaches_the_network() {
    let h = start().await;
    let client = h.client();
    for bad in [
        "../../v3/refund",
        "ab",
        "PAID_000001?mchid=2",
        "PAID 000001",
        "订单00000001",
    ] {
        assert!(
            matches!(client.query(bad).await, Err(PayError::InvalidInput(_))),
            "{bad}"
        );
        assert!(
            matches!(client.close(bad).await, Err(PayError::InvalidInput(_))),
            "{bad}"
        );
    }
    assert!(h.seen().is_empty());
    assert_eq!(*h.fake.rejected.lock().unwrap(), 0);
}

#[tokio::test]
async fn unreachable_server_is_http_error() {
    // Bind then drop to get a port nobody listens on.
    let port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let h = Harness {
        fake: start().await.fake,
        base: format!("http://127.0.0.1:{port}"),
    };
    assert!(matches!(
        h.client().query("PAID_000001").await,
        Err(PayError::Http(_))
    ));
}
