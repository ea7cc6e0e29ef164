//! Tencent's official WeCom callback samples (wx5823, ww1436) and wechatpy's
//! work-crypto test through [`WecomEndpoint`], including the query string as
//! axum's `Query` extractor decodes it.

use axum::extract::Query;
use axum::http::Uri;
use chatrelay_wechat::{
    AesKey, CallbackError, CryptoError, IncomingKind, WecomEndpoint, WecomQuery, decrypt_message,
    parse_envelope, parse_incoming, verify_sha1_signature,
};
use serde_json::Value;

fn vector(id: &str) -> Value {
    let all: Value = serde_json::from_str(include_str!("../testdata/vectors.json")).unwrap();
    all["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("vector {id} missing"))
        .clone()
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string"))
}

fn endpoint(v: &Value) -> WecomEndpoint {
    WecomEndpoint::new(
        s(v, &["input", "token"]),
        s(v, &["input", "receiveid"]),
        s(v, &["input", "encoding_aes_key"]),
    )
    .unwrap()
}

/// The GET query of an official sample, with `echostr` as decoded.
fn get_query(v: &Value, section: &str) -> WecomQuery {
    WecomQuery {
        msg_signature: Some(s(v, &["input", section, "msg_signature"]).to_owned()),
        timestamp: Some(s(v, &["input", section, "timestamp"]).to_owned()),
        nonce: Some(s(v, &["input", section, "nonce"]).to_owned()),
        echostr: Some(s(v, &["input", section, "echostr"]).to_owned()),
    }
}

fn post_query(v: &Value) -> (WecomQuery, i64) {
    let ts = s(v, &["input", "post", "timestamp"]);
    let q = WecomQuery {
        msg_signature: Some(s(v, &["input", "post", "msg_signature"]).to_owned()),
        timestamp: Some(ts.to_owned()),
        nonce: Some(s(v, &["input", "post", "nonce"]).to_owned()),
        echostr: None,
    };
    (q, ts.parse().unwrap())
}

#[test]
fn wx5823_verify_url_through_axum_query() {
    let v = vector("wecom_official_wx5823");
    let ep = endpoint(&v);
    let expected = s(&v, &["expected", "get_response_body"]);

    // As decoded.
    assert_eq!(ep.verify_url(&get_query(&v, "get")).unwrap(), expected);

    // The real query string (`%2B`, `%2F`, `%3D`) through axum's extractor,
    // which decodes exactly once.
    let uri: Uri = format!(
        "/wecom/main?msg_signature={}&timestamp={}&nonce={}&echostr={}",
        s(&v, &["input", "get", "msg_signature"]),
        s(&v, &["input", "get", "timestamp"]),
        s(&v, &["input", "get", "nonce"]),
        s(&v, &["input", "get", "echostr_urlencoded"]),
    )
    .parse()
    .unwrap();
    let Query(q) = Query::<WecomQuery>::try_from_uri(&uri).unwrap();
    assert_eq!(
        q.echostr.as_deref(),
        Some(s(&v, &["input", "get", "echostr"]))
    );
    assert_eq!(ep.verify_url(&q).unwrap(), expected);

    // Still percent-encoded (decoded zero times): the signature fails.
    let mut raw = get_query(&v, "get");
    raw.echostr = Some(s(&v, &["input", "get", "echostr_urlencoded"]).to_owned());
    assert!(matches!(
        ep.verify_url(&raw),
        Err(CallbackError::BadSignature)
    ));
}

#[test]
fn wx5823_open_the_sample_post() {
    let v = vector("wecom_official_wx5823");
    let ep = endpoint(&v);
    let (q, now) = post_query(&v);
    let body = s(&v, &["input", "post", "body"]);
    let m = ep.open(&q, body.as_bytes(), now).unwrap();
    let expected = parse_incoming(s(&v, &["expected", "post_plaintext"]).as_bytes()).unwrap();
    assert_eq!(m.message, expected);
    assert_eq!(m.message.from_user, "mycreate");
    assert_eq!(m.message.msg_id, Some(4_561_255_354_251_345_929));
    assert_eq!(
        m.message.kind,
        IncomingKind::Text {
            content: "hello".into()
        }
    );
    assert_eq!(m.agent_id.as_deref(), Some("218"));

    // Ten years later the same request is a replay.
    assert!(matches!(
        ep.open(&q, body.as_bytes(), now + 10 * 365 * 86_400),
        Err(CallbackError::StaleTimestamp)
    ));
    // Forged signature.
    let mut forged = q.clone();
    forged.msg_signature = Some("477715d11cdb4164915debcba66cb864d751f3e7".into());
    assert!(matches!(
        ep.open(&forged, body.as_bytes(), now),
        Err(CallbackError::BadSignature)
    ));
}

#[test]
fn wrong_corp_id_is_rejected_on_get_and_post() {
    let v = vector("wecom_official_wx5823");
    let ep = WecomEndpoint::new(
        s(&v, &["input", "token"]),
        "wx5823bf96d3bd56c8",
        s(&v, &["input", "encoding_aes_key"]),
    )
    .unwrap();
    assert!(matches!(
        ep.verify_url(&get_query(&v, "get")),
        Err(CallbackError::Crypto(CryptoError::ReceiveId))
    ));
    let (q, now) = post_query(&v);
    assert!(matches!(
        ep.open(&q, s(&v, &["input", "post", "body"]).as_bytes(), now),
        Err(CallbackError::Crypto(CryptoError::ReceiveId))
    ));
}

#[test]
fn ww1436_get_and_post_without_cdata() {
    let v = vector("wecom_official_ww1436");
    let ep = endpoint(&v);
    assert_eq!(
        ep.verify_url(&get_query(&v, "get")).unwrap(),
        s(&v, &["expected", "get_response_body"])
    );
    let (q, now) = post_query(&v);
    let m = ep
        .open(&q, s(&v, &["input", "post", "body"]).as_bytes(), now)
        .unwrap();
    assert_eq!(m.message.from_user, "ChenJiaShun");
    assert_eq!(m.message.to_user, "ww1436e0e65a779aee");
    assert_eq!(m.message.msg_id, Some(1_456_453_720));
    assert_eq!(
        m.message.kind,
        IncomingKind::Text {
            content: "你好".into()
        }
    );
    assert_eq!(m.agent_id.as_deref(), Some("1000002"));
}

#[test]
fn wechatpy_work_crypto_through_the_endpoint() {
    let v = vector("wecom_wechatpy_work_crypto");
    let ep = endpoint(&v);
    assert_eq!(
        ep.verify_url(&get_query(&v, "verify_url")).unwrap(),
        s(&v, &["expected", "verify_url_echo"])
    );

    let ts = s(&v, &["input", "decrypt", "timestamp"]);
    let q = WecomQuery {
        msg_signature: Some(s(&v, &["input", "decrypt", "msg_signature"]).to_owned()),
        timestamp: Some(ts.to_owned()),
        nonce: Some(s(&v, &["input", "decrypt", "nonce"]).to_owned()),
        echostr: None,
    };
    let body = format!(
        "<xml><ToUserName><![CDATA[{}]]></ToUserName><Encrypt><![CDATA[{}]]></Encrypt><AgentID><![CDATA[1]]></AgentID></xml>",
        s(&v, &["input", "receiveid"]),
        s(&v, &["input", "decrypt", "encrypt"]),
    );
    let m = ep.open(&q, body.as_bytes(), ts.parse().unwrap()).unwrap();
    assert_eq!(
        m.message,
        parse_incoming(s(&v, &["expected", "decrypt_plaintext"]).as_bytes()).unwrap()
    );
    assert_eq!(m.agent_id.as_deref(), Some("1"));

    // A sealed reply opens with wechatpy's key for this corp, and its
    // signature verifies (the random prefix differs from the fixed-vector
    // one, so compare by decryption).
    let reply = s(&v, &["input", "encrypt", "reply_plaintext"]);
    let (nonce, ts) = (
        s(&v, &["input", "encrypt", "nonce"]),
        s(&v, &["input", "encrypt", "timestamp"]),
    );
    let sealed = ep.seal(reply, nonce, ts);
    let encrypt = parse_envelope(sealed.as_bytes()).unwrap().encrypt.unwrap();
    let sig = sealed
        .split("<MsgSignature><![CDATA[")
        .nth(1)
        .and_then(|x| x.split("]]>").next())
        .unwrap();
    assert!(verify_sha1_signature(
        &[s(&v, &["input", "token"]), ts, nonce, &encrypt],
        sig
    ));
    let key = AesKey::from_encoding_aes_key(s(&v, &["input", "encoding_aes_key"])).unwrap();
    assert_eq!(
        decrypt_message(&key, &encrypt, s(&v, &["input", "receiveid"])).unwrap(),
        reply.as_bytes()
    );
    // Same layout as the wechatpy reference apart from the ciphertext and
    // signature.
    let reference = s(&v, &["expected", "encrypted_reply_xml"])
        .replace(s(&v, &["expected", "encrypt"]), &encrypt)
        .replace(s(&v, &["expected", "encrypt_msg_signature"]), sig);
    assert_eq!(sealed, reference);
}
