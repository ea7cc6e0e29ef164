//! Public test vectors (testdata/vectors.json, copied from the shared
//! vector file): wechatpy's signature and XML fixtures, Tencent's official
//! WeCom samples and wechatpy's deterministic crypto tests. WeCom uses the
//! same message crypto as the Official Account with receiveid = corpid, so
//! its samples check `crypto` byte for byte.

use chatrelay_wechat::{
    AesKey, CallbackQuery, CryptoError, IncomingKind, MpEndpoint, ReplyMode, decrypt_message,
    encrypt_message, encrypted_reply_xml, parse_envelope, parse_incoming, sha1_signature,
    verify_sha1_signature,
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

#[test]
fn wx_oa_plain_signature() {
    let v = vector("wx_oa_plain_signature");
    let parts = [
        s(&v, &["input", "token"]),
        s(&v, &["input", "timestamp"]),
        s(&v, &["input", "nonce"]),
    ];
    let expected = s(&v, &["expected", "signature"]);
    assert_eq!(sha1_signature(&parts), expected);
    assert!(verify_sha1_signature(&parts, expected));
    assert!(verify_sha1_signature(&parts, &expected.to_uppercase()));
    assert!(!verify_sha1_signature(
        &parts,
        s(&v, &["negative", "signature"])
    ));
    // Order of the inputs does not matter: they are sorted.
    assert_eq!(sha1_signature(&[parts[2], parts[1], parts[0]]), expected);
}

#[test]
fn wx_oa_xml_fixtures() {
    let v = vector("wx_oa_xml_fixtures");
    let fx = |name: &str| parse_incoming(s(&v, &["fixtures", name]).as_bytes()).unwrap();

    let m = fx("text");
    assert_eq!(
        (m.to_user.as_str(), m.from_user.as_str()),
        ("toUser", "fromUser")
    );
    assert_eq!(m.create_time, 1_348_831_860);
    assert_eq!(m.msg_id, Some(1_234_567_890_123_456));
    assert_eq!(
        m.kind,
        IncomingKind::Text {
            content: "this is a test".into()
        }
    );
    assert_eq!(m.dedupe_id(), "1234567890123456");

    let m = fx("image");
    assert_eq!(
        m.kind,
        IncomingKind::Image {
            pic_url: "this is a url".into(),
            media_id: "media_id".into()
        }
    );

    let m = fx("voice_with_recognition");
    assert_eq!(
        m.kind,
        IncomingKind::Voice {
            media_id: "media_id".into(),
            format: "Format".into(),
            recognition: Some("腾讯微信团队".into())
        }
    );

    // MsgId before Recognition, and Recognition is an empty CDATA.
    let m = fx("voice_empty_recognition_field_order_varies");
    assert_eq!(m.msg_id, Some(7_250_021_412_600_020_992));
    assert_eq!(m.from_user, "oDO796opXuEu2mWrn53BqlVW0u9I");
    assert_eq!(
        m.kind,
        IncomingKind::Voice {
            media_id: "whQK88YniP8QXO5rkRimKmkWEg4V0D9_yDblzDFn9yJMJQNnV7pan6AJg8rgiFs9".into(),
            format: "amr".into(),
            recognition: None
        }
    );

    let m = fx("event_subscribe");
    assert_eq!(m.msg_id, None);
    assert_eq!(
        m.kind,
        IncomingKind::Event {
            event: "subscribe".into(),
            event_key: None,
            ticket: None
        }
    );
    assert_eq!(m.dedupe_id(), "FromUser:123456789:subscribe");

    let m = fx("event_subscribe_qrscene");
    assert_eq!(
        m.kind,
        IncomingKind::Event {
            event: "subscribe".into(),
            event_key: Some("qrscene_123123".into()),
            ticket: Some("TICKET".into())
        }
    );

    let m = fx("event_unsubscribe");
    assert_eq!(
        m.kind,
        IncomingKind::Event {
            event: "unsubscribe".into(),
            event_key: None,
            ticket: None
        }
    );

    let m = fx("event_click");
    assert_eq!(
        m.kind,
        IncomingKind::Event {
            event: "CLICK".into(),
            event_key: Some("EVENTKEY".into()),
            ticket: None
        }
    );
    assert_eq!(m.dedupe_id(), "FromUser:123456789:CLICK");
}

/// Checks one of Tencent's official WeCom samples: GET echostr and POST
/// message, signature and decryption with the corpid as receive id.
fn check_official_sample(id: &str) {
    let v = vector(id);
    let token = s(&v, &["input", "token"]);
    let key = AesKey::from_encoding_aes_key(s(&v, &["input", "encoding_aes_key"])).unwrap();
    let rid = s(&v, &["input", "receiveid"]);

    // GET: the signature covers the URL-decoded echostr.
    let get = &v["input"]["get"];
    let echostr = s(get, &["echostr"]);
    assert!(verify_sha1_signature(
        &[token, s(get, &["timestamp"]), s(get, &["nonce"]), echostr],
        s(get, &["msg_signature"])
    ));
    assert_eq!(
        decrypt_message(&key, echostr, rid).unwrap(),
        s(&v, &["expected", "get_response_body"]).as_bytes()
    );

    // POST: Encrypt from the envelope, signature, decrypt, parse.
    let post = &v["input"]["post"];
    let env = parse_envelope(s(post, &["body"]).as_bytes()).unwrap();
    let encrypt = env.encrypt.unwrap();
    assert_eq!(encrypt, s(post, &["encrypt"]));
    assert_eq!(env.to_user.as_deref(), Some(rid));
    assert!(verify_sha1_signature(
        &[
            token,
            s(post, &["timestamp"]),
            s(post, &["nonce"]),
            &encrypt
        ],
        s(post, &["msg_signature"])
    ));
    let plain = decrypt_message(&key, &encrypt, rid).unwrap();
    assert_eq!(plain, s(&v, &["expected", "post_plaintext"]).as_bytes());
    assert_eq!(
        decrypt_message(&key, &encrypt, "wx0000000000000000"),
        Err(CryptoError::ReceiveId)
    );
    let m = parse_incoming(&plain).unwrap();
    assert_eq!(m.to_user, rid);
    assert!(matches!(m.kind, IncomingKind::Text { .. }));
}

#[test]
fn wecom_official_wx5823() {
    check_official_sample("wecom_official_wx5823");
    let v = vector("wecom_official_wx5823");
    let get = &v["input"]["get"];
    // The URL-encoded echostr decodes (exactly once) to the signed one.
    let url = reqwest::Url::parse(&format!(
        "http://localhost/?echostr={}",
        s(get, &["echostr_urlencoded"])
    ))
    .unwrap();
    let (_, decoded) = url.query_pairs().next().unwrap();
    assert_eq!(decoded, s(get, &["echostr"]));

    let m = parse_incoming(s(&v, &["expected", "post_plaintext"]).as_bytes()).unwrap();
    assert_eq!(m.from_user, "mycreate");
    assert_eq!(m.msg_id, Some(4_561_255_354_251_345_929));
    assert_eq!(
        m.kind,
        IncomingKind::Text {
            content: "hello".into()
        }
    );
}

#[test]
fn wecom_official_ww1436_without_cdata() {
    check_official_sample("wecom_official_ww1436");
    let v = vector("wecom_official_ww1436");
    let m = parse_incoming(s(&v, &["expected", "post_plaintext"]).as_bytes()).unwrap();
    assert_eq!(m.from_user, "ChenJiaShun");
    assert_eq!(m.create_time, 1_476_422_779);
    assert_eq!(m.msg_id, Some(1_456_453_720));
    assert_eq!(
        m.kind,
        IncomingKind::Text {
            content: "你好".into()
        }
    );
}

/// The official ciphertext goes through the whole Official Account check:
/// Tencent's OA C# sample uses the same values with appid wx5823bf96d3bd56c7.
#[test]
fn mp_endpoint_opens_the_official_sample() {
    let v = vector("wecom_official_wx5823");
    let token = s(&v, &["input", "token"]);
    let post = &v["input"]["post"];
    let (ts, nonce) = (s(post, &["timestamp"]), s(post, &["nonce"]));
    let ep = MpEndpoint::new(
        token,
        s(&v, &["input", "receiveid"]),
        Some("6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt"), // another (current) key
        Some(s(&v, &["input", "encoding_aes_key"])),         // the sample's key as previous
    )
    .unwrap();
    let q = CallbackQuery {
        // The plain URL signature is not in the sample; compute it.
        signature: Some(sha1_signature(&[token, ts, nonce])),
        timestamp: Some(ts.into()),
        nonce: Some(nonce.into()),
        encrypt_type: Some("aes".into()),
        msg_signature: Some(s(post, &["msg_signature"]).into()),
        ..CallbackQuery::default()
    };
    let now: i64 = ts.parse().unwrap();
    let opened = ep
        .open(&q, s(post, &["body"]).as_bytes(), now + 10)
        .unwrap();
    assert_eq!(opened.mode, ReplyMode::Encrypted { key_index: 1 });
    assert_eq!(opened.message.msg_id, Some(4_561_255_354_251_345_929));
}

#[test]
fn wecom_wechatpy_work_crypto_byte_exact() {
    let v = vector("wecom_wechatpy_work_crypto");
    let token = s(&v, &["input", "token"]);
    let key = AesKey::from_encoding_aes_key(s(&v, &["input", "encoding_aes_key"])).unwrap();
    let rid = s(&v, &["input", "receiveid"]);

    // verify_url: signature over the echostr, then decrypt it.
    let vu = &v["input"]["verify_url"];
    assert!(verify_sha1_signature(
        &[
            token,
            s(vu, &["timestamp"]),
            s(vu, &["nonce"]),
            s(vu, &["echostr"])
        ],
        s(vu, &["msg_signature"])
    ));
    assert_eq!(
        decrypt_message(&key, s(vu, &["echostr"]), rid).unwrap(),
        s(&v, &["expected", "verify_url_echo"]).as_bytes()
    );

    // Deterministic encryption with wechatpy's fixed random prefix.
    let enc = &v["input"]["encrypt"];
    let random: [u8; 16] = s(enc, &["random_ascii"]).as_bytes().try_into().unwrap();
    let plaintext = s(enc, &["reply_plaintext"]);
    let encrypt = encrypt_message(&key, plaintext.as_bytes(), rid, random);
    assert_eq!(encrypt, s(&v, &["expected", "encrypt"]));
    let (ts, nonce) = (s(enc, &["timestamp"]), s(enc, &["nonce"]));
    let sig = sha1_signature(&[token, ts, nonce, &encrypt]);
    assert_eq!(sig, s(&v, &["expected", "encrypt_msg_signature"]));
    assert_eq!(
        encrypted_reply_xml(&encrypt, &sig, ts, nonce),
        s(&v, &["expected", "encrypted_reply_xml"])
    );
    // Round trip.
    assert_eq!(
        decrypt_message(&key, &encrypt, rid).unwrap(),
        plaintext.as_bytes()
    );

    // Decryption of wechatpy's sample message.
    let dec = &v["input"]["decrypt"];
    assert!(verify_sha1_signature(
        &[
            token,
            s(dec, &["timestamp"]),
            s(dec, &["nonce"]),
            s(dec, &["encrypt"])
        ],
        s(dec, &["msg_signature"])
    ));
    let plain = decrypt_message(&key, s(dec, &["encrypt"]), rid).unwrap();
    assert_eq!(plain, s(&v, &["expected", "decrypt_plaintext"]).as_bytes());
    let m = parse_incoming(&plain).unwrap();
    assert_eq!(m.from_user, "messense");
    assert_eq!(m.msg_id, Some(4_363_689_963_896_700_987));
}

#[test]
fn sample_keys_need_lenient_decoding() {
    // At least one public key has non-zero trailing bits (PROTOCOLS.md §0.1):
    // a strict decoder refuses it, ours does not.
    use base64::Engine as _;
    let mut strict_failures = 0;
    for id in [
        "wecom_official_wx5823",
        "wecom_official_ww1436",
        "wecom_wechatpy_work_crypto",
    ] {
        let v = vector(id);
        let k = s(&v, &["input", "encoding_aes_key"]);
        if base64::engine::general_purpose::STANDARD
            .decode(format!("{k}="))
            .is_err()
        {
            strict_failures += 1;
        }
        assert!(AesKey::from_encoding_aes_key(k).is_ok(), "{id}");
    }
    assert!(strict_failures > 0);
}
