//! RSA2 signing and verification, and the strings Alipay signs.
//!
//! Alipay signs a canonical `k=v&k=v` string, never the bytes on the wire:
//! keys sorted in byte (ASCII) order, empty values dropped, values raw
//! (decoded, not re-encoded). Which keys are left out differs by direction:
//!
//! - Notifications (`rsaCheckV1` in alipay-sdk-java) leave out `sign` *and*
//!   `sign_type`: [`sign_content`].
//! - Requests (`AlipaySignature.getSignatureContent` in alipay-sdk-java,
//!   `sign_data` in python-alipay-sdk) leave out only `sign`; `sign_type=RSA2`
//!   is signed too: [`request_sign_content`].
//!
//! RSA2 is SHA256withRSA with PKCS#1 v1.5 padding; signatures are base64.

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::RSA_PKCS1_SHA256;

use crate::keys::SIGN_B64;
use crate::{AlipayError, AlipayPublicKey, AppPrivateKey};

/// The string a notification's `sign` covers (Java `getSignCheckContentV1`
/// with empty values dropped): every parameter except `sign` and
/// `sign_type`, empty values dropped, sorted by key in byte order, joined as
/// `k=v` with `&`, values exactly as decoded.
#[must_use]
pub fn sign_content(params: &[(String, String)]) -> String {
    content_without(params, &["sign", "sign_type"])
}

/// The string a gateway request's `sign` covers: like [`sign_content`] but
/// `sign_type` stays in. The gateway checks requests this way; leaving it out
/// gets `isv.invalid-signature`.
#[must_use]
pub fn request_sign_content(params: &[(String, String)]) -> String {
    content_without(params, &["sign"])
}

/// Sorted, empty-dropped `k=v&...` of `params` minus the `excluded` keys.
fn content_without(params: &[(String, String)], excluded: &[&str]) -> String {
    let mut kept: Vec<&(String, String)> = params
        .iter()
        .filter(|(k, v)| !k.is_empty() && !v.is_empty() && !excluded.contains(&k.as_str()))
        .collect();
    // `str` orders by bytes, which for the ASCII keys Alipay uses is the
    // ASCII order Java's TreeMap gives.
    kept.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::new();
    for (i, (k, v)) in kept.into_iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Signs the UTF-8 bytes of `content` with the app private key (RSA2) and
/// returns the base64 signature.
pub fn sign(key: &AppPrivateKey, content: &str) -> Result<String, AlipayError> {
    let mut sig = vec![0; key.0.public().modulus_len()];
    key.0
        .sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            content.as_bytes(),
            &mut sig,
        )
        // ring only fails here if the system RNG fails.
        .map_err(|_| AlipayError::InvalidKey("RSA signing failed".into()))?;
    Ok(SIGN_B64.encode(sig))
}

/// Verifies a base64 RSA2 signature over the UTF-8 bytes of `content` with
/// Alipay's public key. Undecodable base64 is [`AlipayError::BadSignature`]
/// too: either way nothing signed can be trusted.
pub fn verify(key: &AlipayPublicKey, content: &str, sign_b64: &str) -> Result<(), AlipayError> {
    let sig = SIGN_B64
        .decode(sign_b64.as_bytes())
        .map_err(|_| AlipayError::BadSignature)?;
    key.verify_raw(content.as_bytes(), &sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP_PKCS8_PEM: &str = include_str!("../testdata/app_private_pkcs8.pem");
    const APP_PUBLIC_PEM: &str = include_str!("../testdata/app_public.pem");
    const ALIPAY_PUBLIC_PEM: &str = include_str!("../testdata/alipay_public.pem");
    const OPENSSL_VECTOR: &str = include_str!("../testdata/openssl_sign_vector.txt");

    fn p(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn content_drops_empty_and_sign_fields_and_sorts() {
        let params = p(&[
            ("total_amount", "2.00"),
            ("sign", "xxx"),
            ("sign_type", "RSA2"),
            ("passback_params", ""),
            ("app_id", "2014072300007148"),
            ("Zeta", "capital sorts first"),
            (
                "a_b",
                "underscore after letters? no: '_' (0x5F) < 'a' (0x61)",
            ),
            ("ab", "1"),
        ]);
        assert_eq!(
            sign_content(&params),
            "Zeta=capital sorts first&a_b=underscore after letters? no: '_' (0x5F) < 'a' (0x61)\
             &ab=1&app_id=2014072300007148&total_amount=2.00"
        );
        assert_eq!(
            request_sign_content(&params),
            "Zeta=capital sorts first&a_b=underscore after letters? no: '_' (0x5F) < 'a' (0x61)\
             &ab=1&app_id=2014072300007148&sign_type=RSA2&total_amount=2.00"
        );
    }

    #[test]
    fn content_keeps_values_raw() {
        let params = p(&[
            ("subject", "你好 & a=b + %20"),
            (
                "fund_bill_list",
                r#"[{"amount":"2.00","fundChannel":"ALIPAYACCOUNT"}]"#,
            ),
        ]);
        assert_eq!(
            sign_content(&params),
            r#"fund_bill_list=[{"amount":"2.00","fundChannel":"ALIPAYACCOUNT"}]&subject=你好 & a=b + %20"#
        );
        assert_eq!(sign_content(&[]), "");
    }

    #[test]
    fn sign_verify_round_trip() {
        let key = AppPrivateKey::from_pem_or_base64(APP_PKCS8_PEM).unwrap();
        let public = AlipayPublicKey::from_pem_or_base64(APP_PUBLIC_PEM).unwrap();
        let content = "a=1&b=你好";
        let sig = sign(&key, content).unwrap();
        verify(&public, content, &sig).unwrap();
        assert_eq!(
            verify(&public, "a=1&b=你好!", &sig),
            Err(AlipayError::BadSignature)
        );
        let other = AlipayPublicKey::from_pem_or_base64(ALIPAY_PUBLIC_PEM).unwrap();
        assert_eq!(
            verify(&other, content, &sig),
            Err(AlipayError::BadSignature)
        );
        assert_eq!(
            verify(&public, content, "not base64!"),
            Err(AlipayError::BadSignature)
        );
        assert_eq!(verify(&public, content, ""), Err(AlipayError::BadSignature));
    }

    /// Interoperability: a signature made by `openssl dgst -sha256 -sign`
    /// verifies, and ours is byte-identical (PKCS#1 v1.5 is deterministic).
    #[test]
    fn matches_openssl_vector() {
        let lines: Vec<&str> = OPENSSL_VECTOR
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect();
        let (content, openssl_sig) = (lines[0], lines[1]);
        let public = AlipayPublicKey::from_pem_or_base64(APP_PUBLIC_PEM).unwrap();
        verify(&public, content, openssl_sig).unwrap();
        let key = AppPrivateKey::from_pem_or_base64(APP_PKCS8_PEM).unwrap();
        assert_eq!(sign(&key, content).unwrap(), openssl_sig);
    }
}
