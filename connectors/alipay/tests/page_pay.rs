//! `Client::page_pay_url` (WAP and page payments): the URL is parsed back
//! with `url`'s decoder (not ours) and its RSA2 signature is checked the way
//! Alipay's gateway does, with the app's *public* key through ring directly,
//! over the sorted `k=v` string built here, independently of the crate.

use std::time::Duration;

use base64::Engine as _;
use chatrelay_alipay::{
    AlipayError, AlipayPublicKey, AppPrivateKey, Client, ClientConfig, PagePay, PagePayMethod,
};
use reqwest::Url;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use serde_json::{Value, json};

const APP_PRIVATE: &str = include_str!("../testdata/app_private_pkcs8.pem");
const APP_PUBLIC: &str = include_str!("../testdata/app_public.pem");
const ALIPAY_PUBLIC: &str = include_str!("../testdata/alipay_public.b64");

const APP_ID: &str = "2021000000000001";
const GATEWAY: &str = "https://openapi.alipay.com/gateway.do";
const NOTIFY_URL: &str = "https://relay.example.com/pay/alipay/notify";
const RETURN_URL: &str = "https://relay.example.com/?order=42";

fn client(notify_url: Option<&str>) -> Client {
    let cfg = ClientConfig {
        gateway: GATEWAY.into(),
        app_id: APP_ID.into(),
        notify_url: notify_url.map(str::to_owned),
        timeout: Duration::from_secs(5),
    };
    Client::new(
        cfg,
        AppPrivateKey::from_pem_or_base64(APP_PRIVATE).unwrap(),
        AlipayPublicKey::from_pem_or_base64(ALIPAY_PUBLIC).unwrap(),
        reqwest::Client::new(),
    )
}

fn pay(subject: &str) -> PagePay {
    PagePay {
        out_trade_no: "CR20240101000021".into(),
        amount_fen: 990,
        subject: subject.into(),
        time_expire: Some("2024-01-01 12:30:00".into()),
        return_url: Some(RETURN_URL.into()),
        quit_url: Some("https://relay.example.com/?order=42&quit=1".into()),
    }
}

/// The RSA public key inside `app_public.pem` (SPKI), as ring wants it.
fn app_public_pkcs1() -> Vec<u8> {
    let b64: String = APP_PUBLIC
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let spki = spki::SubjectPublicKeyInfoRef::try_from(der.as_slice()).unwrap();
    spki.subject_public_key.raw_bytes().to_vec()
}

/// Parses the URL back and checks what the gateway checks: every parameter
/// once, and `sign` = RSA2 over the sorted non-empty `k=v` pairs (all but
/// `sign`) with the app public key. Returns the parameters.
fn open(url: &str) -> Vec<(String, String)> {
    let parsed = Url::parse(url).unwrap();
    assert_eq!(
        format!(
            "{}://{}{}",
            parsed.scheme(),
            parsed.host_str().unwrap(),
            parsed.path()
        ),
        GATEWAY
    );
    let params: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    let mut keys: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    let n = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), n, "a parameter given twice");

    let sign = get(&params, "sign").unwrap();
    let mut signed: Vec<&(String, String)> = params
        .iter()
        .filter(|(k, v)| k != "sign" && !v.is_empty())
        .collect();
    signed.sort_by(|a, b| a.0.cmp(&b.0));
    let content: Vec<String> = signed.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let content = content.join("&");
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sign)
        .unwrap();
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, app_public_pkcs1())
        .verify(content.as_bytes(), &sig)
        .expect("RSA2 signature must verify with the app public key");
    params
}

fn get<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn biz(params: &[(String, String)]) -> Value {
    serde_json::from_str(get(params, "biz_content").unwrap()).unwrap()
}

#[test]
fn wap_url_is_signed_and_complete() {
    let url = client(Some(NOTIFY_URL))
        .page_pay_url(PagePayMethod::Wap, &pay("100 credits"))
        .unwrap();
    assert!(url.starts_with(&format!("{GATEWAY}?")), "{url}");
    let p = open(&url);
    assert_eq!(get(&p, "app_id"), Some(APP_ID));
    assert_eq!(get(&p, "method"), Some("alipay.trade.wap.pay"));
    assert_eq!(get(&p, "charset"), Some("utf-8"));
    assert_eq!(get(&p, "sign_type"), Some("RSA2"));
    assert_eq!(get(&p, "version"), Some("1.0"));
    assert_eq!(get(&p, "format"), Some("JSON"));
    assert_eq!(get(&p, "notify_url"), Some(NOTIFY_URL));
    assert_eq!(get(&p, "return_url"), Some(RETURN_URL));
    let ts = get(&p, "timestamp").unwrap();
    assert!(chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%d %H:%M:%S").is_ok());
    assert_eq!(
        biz(&p),
        json!({
            "out_trade_no": "CR20240101000021", "total_amount": "9.90",
            "subject": "100 credits", "product_code": "QUICK_WAP_WAY",
            "time_expire": "2024-01-01 12:30:00",
            "quit_url": "https://relay.example.com/?order=42&quit=1",
        })
    );
}

#[test]
fn page_url_uses_the_desktop_product_and_omits_optional_fields() {
    let mut req = pay("100 credits");
    req.amount_fen = 5;
    req.time_expire = None;
    req.return_url = None;
    let p = open(
        &client(None)
            .page_pay_url(PagePayMethod::Page, &req)
            .unwrap(),
    );
    assert_eq!(get(&p, "method"), Some("alipay.trade.page.pay"));
    assert_eq!(get(&p, "notify_url"), None);
    assert_eq!(get(&p, "return_url"), None);
    // quit_url is a WAP-only field.
    assert_eq!(
        biz(&p),
        json!({
            "out_trade_no": "CR20240101000021", "total_amount": "0.05",
            "subject": "100 credits", "product_code": "FAST_INSTANT_TRADE_PAY",
        })
    );
}

#[test]
fn awkward_subject_survives_encoding() {
    let subject = "积分 & 会员=VIP + 100% a+b?c#d/e";
    let url = client(Some(NOTIFY_URL))
        .page_pay_url(PagePayMethod::Wap, &pay(subject))
        .unwrap();
    // Nothing raw that could split the query or start a fragment.
    let query = url.split_once('?').unwrap().1;
    assert!(!query.contains(['#', ' ', '?']), "{query}");
    assert!(query.is_ascii());
    let p = open(&url);
    assert_eq!(biz(&p)["subject"], subject);
    assert_eq!(get(&p, "return_url"), Some(RETURN_URL));
}

#[test]
fn tampered_url_fails_the_signature_check() {
    let url = client(Some(NOTIFY_URL))
        .page_pay_url(PagePayMethod::Wap, &pay("100 credits"))
        .unwrap();
    let tampered = url.replace("9.90", "0.01");
    assert_ne!(tampered, url);
    let result = std::panic::catch_unwind(|| open(&tampered));
    assert!(result.is_err(), "a changed amount must not verify");
}

#[test]
fn invalid_requests_are_refused() {
    let c = client(Some(NOTIFY_URL));
    let variants: Vec<fn(&mut PagePay)> = vec![
        |r| r.out_trade_no = "bad no".into(),
        |r| r.out_trade_no = String::new(),
        |r| r.subject = String::new(),
        |r| r.subject = "x".repeat(257),
        |r| r.time_expire = Some("2024-01-01T12:30:00".into()),
        |r| r.return_url = Some("javascript:alert(1)".into()),
        |r| r.return_url = Some("https://a.example/\r\nx".into()),
        |r| r.quit_url = Some("//evil.example".into()),
    ];
    for (i, f) in variants.iter().enumerate() {
        let mut r = pay("100 credits");
        f(&mut r);
        assert!(
            matches!(
                c.page_pay_url(PagePayMethod::Wap, &r),
                Err(AlipayError::InvalidInput(_))
            ),
            "variant {i}"
        );
    }
    for fen in [0, -1, 10_000_000_001] {
        let mut r = pay("100 credits");
        r.amount_fen = fen;
        assert!(matches!(
            c.page_pay_url(PagePayMethod::Page, &r),
            Err(AlipayError::InvalidAmount(_))
        ));
    }
    let mut no_app = ClientConfig {
        gateway: GATEWAY.into(),
        ..ClientConfig::default()
    };
    no_app.app_id.clear();
    let c = Client::new(
        no_app,
        AppPrivateKey::from_pem_or_base64(APP_PRIVATE).unwrap(),
        AlipayPublicKey::from_pem_or_base64(ALIPAY_PUBLIC).unwrap(),
        reqwest::Client::new(),
    );
    assert!(matches!(
        c.page_pay_url(PagePayMethod::Wap, &pay("x")),
        Err(AlipayError::InvalidInput(_))
    ));
}
