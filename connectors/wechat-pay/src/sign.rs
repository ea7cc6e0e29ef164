//! Request signing (pure, no I/O): the `Authorization` header of API v3.
//!
//! The string to sign is five lines, each ending in `\n`:
//! `METHOD\nCANONICAL_URL\nTIMESTAMP\nNONCE\nBODY\n`, signed with
//! RSASSA-PKCS1-v1_5 / SHA-256 under the merchant API key and base64-encoded.
//! The caller must sign the exact bytes it sends.

use base64::Engine as _;
use ring::{rand::SystemRandom, signature};

use crate::{MerchantKey, PayError};

/// The scheme WeChat expects in front of the header parameters.
pub const AUTH_SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";

/// Signs `message` with RSASSA-PKCS1-v1_5 / SHA-256 and returns the base64
/// signature.
pub fn sign_message(key: &MerchantKey, message: &[u8]) -> Result<String, PayError> {
    let pair = key.key_pair();
    let mut sig = vec![0u8; pair.public().modulus_len()];
    // PKCS#1 v1.5 is deterministic; ring only uses the RNG for blinding.
    pair.sign(
        &signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        message,
        &mut sig,
    )
    .map_err(|_| PayError::InvalidKey("RSA signing failed".into()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(sig))
}

/// Builds the five-line string to sign for a request.
#[must_use]
pub fn request_message(
    method: &str,
    canonical_url: &str,
    timestamp: i64,
    nonce: &str,
    body: &str,
) -> String {
    format!("{method}\n{canonical_url}\n{timestamp}\n{nonce}\n{body}\n")
}

/// Rejects values that would break the quoted `key="value"` header syntax
/// (or smuggle extra header lines) before anything is signed.
fn check_header_value(name: &str, value: &str) -> Result<(), PayError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b',' && b != b'\\');
    if ok {
        Ok(())
    } else {
        Err(PayError::InvalidInput(format!(
            "{name} must be 1-128 printable ASCII characters without quotes or commas"
        )))
    }
}

/// Computes the full `Authorization` header value:
///
/// `WECHATPAY2-SHA256-RSA2048 mchid="..",nonce_str="..",signature="..",timestamp="..",serial_no=".."`
///
/// over `METHOD\nURL\nTS\nNONCE\nBODY\n`. `canonical_url` is the path plus
/// `?query` without scheme and host; `body` is empty for GET. `serial_no` is
/// the serial of the *merchant* API certificate.
#[allow(clippy::too_many_arguments)] // Mirrors the protocol's inputs one to one.
pub fn authorization_header(
    mch_id: &str,
    serial_no: &str,
    key: &MerchantKey,
    method: &str,
    canonical_url: &str,
    timestamp: i64,
    nonce: &str,
    body: &str,
) -> Result<String, PayError> {
    check_header_value("mchid", mch_id)?;
    check_header_value("serial_no", serial_no)?;
    check_header_value("nonce", nonce)?;
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(PayError::InvalidInput(
            "HTTP method must be upper-case letters".into(),
        ));
    }
    if !canonical_url.starts_with('/') || !canonical_url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(PayError::InvalidInput(
            "canonical URL must be an absolute path (plus query) in printable ASCII".into(),
        ));
    }
    let message = request_message(method, canonical_url, timestamp, nonce, body);
    let signature = sign_message(key, message.as_bytes())?;
    Ok(format!(
        "{AUTH_SCHEME} mchid=\"{mch_id}\",nonce_str=\"{nonce}\",signature=\"{signature}\",timestamp=\"{timestamp}\",serial_no=\"{serial_no}\""
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::PlatformKey;

    const MERCHANT_KEY: &str = include_str!("../testdata/test_only_merchant_key.pem");
    const MERCHANT_PUB: &str = include_str!("../testdata/test_only_merchant_pub.pem");

    fn b64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

    #[test]
    fn sign_then_verify_round_trip() {
        let key = MerchantKey::from_pem(MERCHANT_KEY).unwrap();
        let public = PlatformKey::from_pem(MERCHANT_PUB).unwrap();
        let sig = sign_message(&key, b"hello").unwrap();
        assert_eq!(b64(&sig).len(), 256);
        public.verify(b"hello", &b64(&sig)).unwrap();
        assert!(public.verify(b"hellO", &b64(&sig)).is_err());
        // PKCS#1 v1.5 is deterministic.
        assert_eq!(sig, sign_message(&key, b"hello").unwrap());
    }

    /// The wechatpay-java RSAVerifierTest vector: our signer reproduces the
    /// expected signature byte for byte and the certificate's key verifies it.
    #[test]
    fn java_rsa_vector() {
        let all: serde_json::Value =
            serde_json::from_str(include_str!("../testdata/wechatpay_vectors.json")).unwrap();
        let v = all["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == "wechatpay_v3_rsa_verify_java")
            .unwrap();
        let input = &v["input"];
        let message = input["message"].as_str().unwrap().as_bytes();
        let expected = v["expected"]["signature"].as_str().unwrap();

        let key =
            MerchantKey::from_pem(input["merchant_private_key_pem"].as_str().unwrap()).unwrap();
        assert_eq!(sign_message(&key, message).unwrap(), expected);

        let cert_pem = input["merchant_certificate_pem"].as_str().unwrap();
        let (serial, cert_key) = PlatformKey::from_certificate_pem(cert_pem).unwrap();
        assert_eq!(serial, input["certificate_serial"].as_str().unwrap());
        cert_key.verify(message, &b64(expected)).unwrap();
        // from_pem accepts the certificate too.
        PlatformKey::from_pem(cert_pem)
            .unwrap()
            .verify(message, &b64(expected))
            .unwrap();

        // "must fail with a different key": our test platform key.
        let other =
            PlatformKey::from_pem(include_str!("../testdata/test_only_platform_pub.pem")).unwrap();
        assert!(matches!(
            other.verify(message, &b64(expected)),
            Err(PayError::BadSignature)
        ));
        assert!(cert_key.verify(b"messagE", &b64(expected)).is_err());
    }

    /// Parses `SCHEME k="v",k="v"` the way a server would.
    fn parse_auth(header: &str) -> HashMap<String, String> {
        let rest = header.strip_prefix("WECHATPAY2-SHA256-RSA2048 ").unwrap();
        rest.split(',')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                let v = v.strip_prefix('"').unwrap().strip_suffix('"').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    #[test]
    fn authorization_header_format_and_signature() {
        let key = MerchantKey::from_pem(MERCHANT_KEY).unwrap();
        let public = PlatformKey::from_pem(MERCHANT_PUB).unwrap();
        let body = r#"{"mchid":"1900000001"}"#;
        let url = "/v3/pay/transactions/out-trade-no/ORDER_123456/close";
        let h = authorization_header(
            "1900000001",
            "5F1C72E2A8931B72",
            &key,
            "POST",
            url,
            1_700_000_000,
            "593BEC0C930BF1AFEB40B4A08C8FB242",
            body,
        )
        .unwrap();
        let f = parse_auth(&h);
        assert_eq!(f.len(), 5);
        assert_eq!(f["mchid"], "1900000001");
        assert_eq!(f["serial_no"], "5F1C72E2A8931B72");
        assert_eq!(f["timestamp"], "1700000000");
        assert_eq!(f["nonce_str"], "593BEC0C930BF1AFEB40B4A08C8FB242");
        let expected_msg =
            format!("POST\n{url}\n1700000000\n593BEC0C930BF1AFEB40B4A08C8FB242\n{body}\n");
        public
            .verify(expected_msg.as_bytes(), &b64(&f["signature"]))
            .unwrap();
        // Any other message (e.g. missing trailing newline) fails.
        assert!(
            public
                .verify(expected_msg.trim_end().as_bytes(), &b64(&f["signature"]))
                .is_err()
        );

        // GET: the body line is empty.
        let h = authorization_header("1900000001", "S1", &key, "GET", "/v3/x?mchid=1", 5, "n", "")
            .unwrap();
        let f = parse_auth(&h);
        public
            .verify(b"GET\n/v3/x?mchid=1\n5\nn\n\n", &b64(&f["signature"]))
            .unwrap();
    }

    #[test]
    fn authorization_header_rejects_injection() {
        let key = MerchantKey::from_pem(MERCHANT_KEY).unwrap();
        let cases = [
            ("19\"00", "S", "GET", "/v3", "n"),
            ("1900", "S\r\nX: y", "GET", "/v3", "n"),
            ("1900", "S", "get", "/v3", "n"),
            ("1900", "S", "GET", "v3", "n"),
            ("1900", "S", "GET", "/v3 x", "n"),
            ("1900", "S", "GET", "/v3", ""),
            ("", "S", "GET", "/v3", "n"),
        ];
        for (mch, serial, method, url, nonce) in cases {
            assert!(
                matches!(
                    authorization_header(mch, serial, &key, method, url, 1, nonce, ""),
                    Err(PayError::InvalidInput(_))
                ),
                "{mch} {serial} {method} {url} {nonce}"
            );
        }
    }
}
