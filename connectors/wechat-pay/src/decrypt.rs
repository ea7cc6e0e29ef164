//! Notification resource decryption and the complete "open a payment
//! notification" path (pure, no I/O).
//!
//! Order matters: size check, then the signature over the raw bytes, then
//! JSON parsing, then AES-256-GCM, then the Transaction. Nothing from the
//! body is interpreted before the signature verified.

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};

use crate::error::excerpt;
use crate::{ApiV3Key, NotifyHeaders, PayError, PlatformKeys, Transaction, verify_notification};

/// Largest notification body we process. Real ones are ~1 KiB.
pub const MAX_NOTIFY_BODY: usize = 64 * 1024;

/// The only algorithm WeChat Pay v3 uses for resources.
pub const RESOURCE_ALGORITHM: &str = "AEAD_AES_256_GCM";

/// The `resource` object of a notification (also used for downloaded
/// platform certificates).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedResource {
    /// `AEAD_AES_256_GCM`.
    pub algorithm: String,
    /// base64(ciphertext || 16-byte tag).
    pub ciphertext: String,
    /// AES-GCM additional authenticated data (`transaction` for payments).
    #[serde(default)]
    pub associated_data: Option<String>,
    /// The 12-character GCM nonce, used as its ASCII bytes.
    pub nonce: String,
    /// What the plaintext is (`transaction`, `refund`, ...).
    #[serde(default)]
    pub original_type: Option<String>,
}

/// A verified, decrypted payment notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Notification id (`EV-…`); WeChat retries with the same id.
    pub id: String,
    /// `TRANSACTION.SUCCESS` for payments.
    pub event_type: String,
    /// The decrypted order. Still check `mchid`, `appid`, `out_trade_no`
    /// and `amount.total` against the stored order before crediting.
    pub transaction: Transaction,
}

/// The outer, unencrypted notification JSON.
#[derive(Deserialize)]
struct Envelope {
    id: String,
    event_type: String,
    resource: EncryptedResource,
}

/// Decrypts a resource with AES-256-GCM under the APIv3 key: nonce = the
/// `nonce` string's bytes (must be 12), AAD = `associated_data` (empty if
/// absent), input = base64(ciphertext || tag).
///
/// Any failure (wrong algorithm, bad base64, wrong nonce length, tag
/// mismatch) is [`PayError::Decrypt`]; distinguishing them would only help
/// an attacker.
pub fn decrypt_resource(key: &ApiV3Key, r: &EncryptedResource) -> Result<Vec<u8>, PayError> {
    if r.algorithm != RESOURCE_ALGORITHM {
        return Err(PayError::Decrypt);
    }
    let nonce =
        Nonce::try_assume_unique_for_key(r.nonce.as_bytes()).map_err(|_| PayError::Decrypt)?;
    let mut buf = base64::engine::general_purpose::STANDARD
        .decode(r.ciphertext.as_bytes())
        .map_err(|_| PayError::Decrypt)?;
    let unbound = UnboundKey::new(&AES_256_GCM, key.bytes()).map_err(|_| PayError::Decrypt)?;
    let aad = r.associated_data.as_deref().unwrap_or("");
    // ring compares the tag in constant time and refuses inputs shorter than
    // the tag.
    let plain_len = LessSafeKey::new(unbound)
        .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
        .map_err(|_| PayError::Decrypt)?
        .len();
    buf.truncate(plain_len);
    Ok(buf)
}

/// Verifies, parses and decrypts a payment notification.
///
/// `body` must be the raw request body and `h` its `Wechatpay-*` headers.
/// Bodies over [`MAX_NOTIFY_BODY`] are [`PayError::TooLarge`]. Non-payment
/// resources (e.g. a refund notification, `original_type` ≠ `transaction`)
/// are [`PayError::Decode`]. Decode errors about the decrypted resource
/// never carry its plaintext (payer data).
pub fn open_notification(
    keys: &PlatformKeys,
    api_v3_key: &ApiV3Key,
    h: &NotifyHeaders<'_>,
    body: &[u8],
    now_unix: i64,
) -> Result<Notification, PayError> {
    if body.len() > MAX_NOTIFY_BODY {
        return Err(PayError::TooLarge);
    }
    verify_notification(keys, h, body, now_unix)?;

    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| PayError::Decode {
        message: format!("notification envelope: {e}"),
        raw: excerpt(body),
    })?;
    if let Some(kind) = envelope
        .resource
        .original_type
        .as_deref()
        .filter(|k| *k != "transaction")
    {
        return Err(PayError::Decode {
            message: format!(
                "unsupported resource original_type {:?}",
                crate::error::sanitize_id(kind)
            ),
            raw: excerpt(body),
        });
    }
    let plain = decrypt_resource(api_v3_key, &envelope.resource)?;
    let transaction: Transaction =
        serde_json::from_slice(&plain).map_err(|e| PayError::Decode {
            // serde_json's Display can quote offending values (payer
            // data), so only the error class and position are kept.
            message: format!(
                "decrypted transaction: {:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ),
            raw: "<decrypted resource redacted>".into(),
        })?;
    Ok(Notification {
        id: envelope.id,
        event_type: envelope.event_type,
        transaction,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TradeState;
    use crate::verify::tests::{NOW, PLATFORM_ID, platform_keys, wechat_sign};

    const API_V3_KEY: &str = "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb";

    fn encrypt(key: &str, nonce: &str, aad: &str, plain: &[u8]) -> String {
        let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_bytes()).unwrap());
        let mut buf = plain.to_vec();
        k.seal_in_place_append_tag(
            Nonce::try_assume_unique_for_key(nonce.as_bytes()).unwrap(),
            Aad::from(aad.as_bytes()),
            &mut buf,
        )
        .unwrap();
        base64::engine::general_purpose::STANDARD.encode(buf)
    }

    fn resource(ciphertext: &str, aad: Option<&str>, nonce: &str) -> EncryptedResource {
        EncryptedResource {
            algorithm: RESOURCE_ALGORITHM.into(),
            ciphertext: ciphertext.into(),
            associated_data: aad.map(str::to_owned),
            nonce: nonce.into(),
            original_type: Some("transaction".into()),
        }
    }

    fn java_vector() -> serde_json::Value {
        let all: serde_json::Value =
            serde_json::from_str(include_str!("../testdata/wechatpay_vectors.json")).unwrap();
        all["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == "wechatpay_v3_aes_gcm_java")
            .unwrap()
            .clone()
    }

    #[test]
    fn java_aes_gcm_vector_and_negatives() {
        let v = java_vector();
        let input = &v["input"];
        let key = ApiV3Key::new(input["apiv3_key"].as_str().unwrap()).unwrap();
        let ct = v["expected"]["ciphertext_b64"].as_str().unwrap();
        let nonce = input["nonce"].as_str().unwrap();
        let aad = input["associated_data"].as_str().unwrap();
        let plain = decrypt_resource(&key, &resource(ct, Some(aad), nonce)).unwrap();
        assert_eq!(plain, input["plaintext"].as_str().unwrap().as_bytes());
        // Our test encryptor agrees with Java byte for byte.
        assert_eq!(
            encrypt(input["apiv3_key"].as_str().unwrap(), nonce, aad, b"message"),
            ct
        );

        for neg in v["negative"].as_array().unwrap() {
            let aad = neg["associated_data"].as_str().unwrap_or(aad);
            let nonce = neg["nonce"].as_str().unwrap_or(nonce);
            assert!(matches!(
                decrypt_resource(&key, &resource(ct, Some(aad), nonce)),
                Err(PayError::Decrypt)
            ));
        }
    }

    #[test]
    fn tampering_is_rejected() {
        let key = ApiV3Key::new(API_V3_KEY).unwrap();
        let nonce = "0123456789ab";
        let good = encrypt(API_V3_KEY, nonce, "transaction", br#"{"a":1}"#);
        decrypt_resource(&key, &resource(&good, Some("transaction"), nonce)).unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&good)
            .unwrap();
        let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);

        let mut ct = raw.clone();
        ct[0] ^= 1; // ciphertext byte
        let mut tag = raw.clone();
        *tag.last_mut().unwrap() ^= 1; // tag byte
        let cases = [
            resource(&b64(&ct), Some("transaction"), nonce),
            resource(&b64(&tag), Some("transaction"), nonce),
            resource(&b64(&raw[..raw.len() - 1]), Some("transaction"), nonce), // truncated tag
            resource(&b64(&raw[..10]), Some("transaction"), nonce),            // shorter than a tag
            resource("", Some("transaction"), nonce),
            resource("not base64!", Some("transaction"), nonce),
            resource(&good, Some("transactioN"), nonce), // AAD
            resource(&good, None, nonce),                // AAD missing
            resource(&good, Some("transaction"), "0123456789aB"), // nonce
            resource(&good, Some("transaction"), "0123456789a"), // short nonce
            resource(&good, Some("transaction"), "0123456789abc"), // long nonce
        ];
        for (i, r) in cases.iter().enumerate() {
            assert!(
                matches!(decrypt_resource(&key, r), Err(PayError::Decrypt)),
                "case {i}"
            );
        }
        let wrong_key = ApiV3Key::new("b7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb").unwrap();
        assert!(
            decrypt_resource(&wrong_key, &resource(&good, Some("transaction"), nonce)).is_err()
        );
        let mut other_alg = resource(&good, Some("transaction"), nonce);
        other_alg.algorithm = "AEAD_AES_128_GCM".into();
        assert!(decrypt_resource(&key, &other_alg).is_err());
    }

    const TRANSACTION: &str = r#"{"mchid":"1900000001","appid":"wxd678efh567hg6787","out_trade_no":"CR20240101000001","transaction_id":"4200001234202401010000000001","trade_type":"NATIVE","trade_state":"SUCCESS","trade_state_desc":"支付成功","bank_type":"OTHERS","attach":"","success_time":"2024-01-01T12:00:00+08:00","payer":{"openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},"amount":{"total":990,"payer_total":990,"currency":"CNY","payer_currency":"CNY"}}"#;

    /// Builds a notification body the way WeChat does.
    fn notification_body(plain: &[u8], original_type: &str) -> String {
        let nonce = "fdasfjihihih";
        let ct = encrypt(API_V3_KEY, nonce, "transaction", plain);
        serde_json::json!({
            "id": "EV-2018022511223320873",
            "create_time": "2024-01-01T12:00:01+08:00",
            "resource_type": "encrypt-resource",
            "event_type": "TRANSACTION.SUCCESS",
            "summary": "支付成功",
            "resource": {
                "original_type": original_type,
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": ct,
                "associated_data": "transaction",
                "nonce": nonce
            }
        })
        .to_string()
    }

    fn open(body: &[u8], sig_body: &[u8]) -> Result<Notification, PayError> {
        let (ts, nonce, sig) = wechat_sign(NOW, "5K8264ILTKCH16CQ2502SI8ZNMTM67VS", sig_body);
        let h = NotifyHeaders {
            timestamp: &ts,
            nonce: &nonce,
            signature: &sig,
            serial: PLATFORM_ID,
        };
        open_notification(
            &platform_keys(),
            &ApiV3Key::new(API_V3_KEY).unwrap(),
            &h,
            body,
            NOW + 5,
        )
    }

    #[test]
    fn open_notification_full_path() {
        let body = notification_body(TRANSACTION.as_bytes(), "transaction");
        let n = open(body.as_bytes(), body.as_bytes()).unwrap();
        assert_eq!(n.id, "EV-2018022511223320873");
        assert_eq!(n.event_type, "TRANSACTION.SUCCESS");
        let t = &n.transaction;
        assert_eq!(t.trade_state, TradeState::Success);
        assert_eq!(t.out_trade_no, "CR20240101000001");
        assert_eq!(t.mchid, "1900000001");
        assert_eq!(t.amount.as_ref().unwrap().total, 990);
        assert_eq!(
            t.transaction_id.as_deref(),
            Some("4200001234202401010000000001")
        );
    }

    #[test]
    fn open_notification_checks_signature_before_anything() {
        let body = notification_body(TRANSACTION.as_bytes(), "transaction");
        let mut tampered = body.clone().into_bytes();
        let i = tampered.iter().position(|b| *b == b'E').unwrap();
        tampered[i] = b'F';
        assert!(matches!(
            open(&tampered, body.as_bytes()),
            Err(PayError::BadSignature)
        ));
        // Signed but not JSON: a decode error, with the raw excerpt.
        match open(b"not json", b"not json") {
            Err(PayError::Decode { raw, .. }) => assert_eq!(raw, "not json"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn open_notification_rejects_big_bodies_and_other_resources() {
        let big = vec![b' '; MAX_NOTIFY_BODY + 1];
        assert!(matches!(open(&big, b""), Err(PayError::TooLarge)));
        let refund = notification_body(TRANSACTION.as_bytes(), "refund");
        assert!(matches!(
            open(refund.as_bytes(), refund.as_bytes()),
            Err(PayError::Decode { .. })
        ));
    }

    #[test]
    fn decrypted_garbage_is_a_redacted_decode_error() {
        let plains: [&[u8]; 3] = [
            br#"{"openid":"secret-payer-data"}"#,
            br#"{"appid":"a","mchid":"m","out_trade_no":"o","trade_state":"SUCCESS","amount":"secret-payer-data"}"#,
            br#"{"appid":"a","mchid":"m","out_trade_no":"o","trade_state":"SUCCESS","payer":{"openid":["secret-payer-data"]}}"#,
        ];
        for plain in plains {
            let body = notification_body(plain, "transaction");
            match open(body.as_bytes(), body.as_bytes()) {
                Err(e @ PayError::Decode { .. }) => {
                    let shown = format!("{e} {e:?}");
                    assert!(!shown.contains("secret-payer-data"), "{shown}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// xorshift64*: deterministic, dependency-free noise.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn bytes(&mut self, max: usize) -> Vec<u8> {
            let len = (self.next() % (max as u64 + 1)) as usize;
            (0..len).map(|_| self.next() as u8).collect()
        }
        fn string(&mut self, max: usize) -> String {
            String::from_utf8_lossy(&self.bytes(max)).into_owned()
        }
    }

    #[test]
    fn garbage_never_panics() {
        let keys = platform_keys();
        let api = ApiV3Key::new(API_V3_KEY).unwrap();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let valid = notification_body(TRANSACTION.as_bytes(), "transaction").into_bytes();

        // 1. Random headers and bodies, plus mutations of a real body.
        for i in 0u32..3000 {
            let body = if i.is_multiple_of(2) {
                rng.bytes(300)
            } else {
                let mut b = valid.clone();
                for _ in 0..=(rng.next() % 4) {
                    let at = (rng.next() as usize) % b.len();
                    b[at] = rng.next() as u8;
                }
                b
            };
            let ts = if i.is_multiple_of(3) {
                NOW.to_string()
            } else {
                rng.string(24)
            };
            let nonce = rng.string(40);
            let sig = rng.string(400);
            let serial = if i.is_multiple_of(4) {
                PLATFORM_ID.to_owned()
            } else {
                rng.string(40)
            };
            let h = NotifyHeaders {
                timestamp: &ts,
                nonce: &nonce,
                signature: &sig,
                serial: &serial,
            };
            assert!(open_notification(&keys, &api, &h, &body, NOW).is_err());
        }

        // 2. Correctly signed garbage: exercises the parsers behind the
        //    signature check.
        for i in 0u32..400 {
            let body: Vec<u8> = match i % 3 {
                0 => rng.bytes(200),
                1 => {
                    let mut b = valid.clone();
                    let at = (rng.next() as usize) % b.len();
                    b[at] = rng.next() as u8;
                    b
                }
                _ => {
                    // Valid envelope around a garbage (but authentic) plaintext.
                    let mut plain = TRANSACTION.as_bytes().to_vec();
                    let at = (rng.next() as usize) % plain.len();
                    plain[at] = rng.next() as u8;
                    plain.truncate((rng.next() as usize) % (plain.len() + 1));
                    notification_body(&plain, "transaction").into_bytes()
                }
            };
            let (ts, nonce, sig) = wechat_sign(NOW, "n", &body);
            let h = NotifyHeaders {
                timestamp: &ts,
                nonce: &nonce,
                signature: &sig,
                serial: PLATFORM_ID,
            };
            let _ = open_notification(&keys, &api, &h, &body, NOW);
        }

        // 3. Random resources straight into the decryptor.
        for _ in 0..2000 {
            let r = EncryptedResource {
                algorithm: if rng.next().is_multiple_of(2) {
                    RESOURCE_ALGORITHM.into()
                } else {
                    rng.string(20)
                },
                ciphertext: base64::engine::general_purpose::STANDARD.encode(rng.bytes(64)),
                associated_data: Some(rng.string(16)),
                nonce: if rng.next().is_multiple_of(2) {
                    "0123456789ab".into()
                } else {
                    rng.string(16)
                },
                original_type: None,
            };
            assert!(decrypt_resource(&api, &r).is_err());
        }
    }
}
