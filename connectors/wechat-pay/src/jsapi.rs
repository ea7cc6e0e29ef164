//! The page parameters of a JSAPI payment (pure, no I/O apart from the
//! clock and the random generator).
//!
//! After [`Client::create_jsapi`] returns a `prepay_id`, the page inside
//! WeChat's browser calls `WeixinJSBridge.invoke('getBrandWCPayRequest',
//! params, cb)` with [`JsapiParams`]. `paySign` is RSA-SHA256 (PKCS#1 v1.5)
//! with the merchant API key over four lines, each ending in `\n`:
//! `appId\ntimeStamp\nnonceStr\npackage\n`. The callback's "ok" proves
//! nothing; only the notification or a query credits an order.

use ring::rand::{SecureRandom as _, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::{Client, PayError, sign_message};

/// Length of the generated `nonceStr` (WeChat's maximum).
const NONCE_LEN: usize = 32;

/// The alphabet of generated nonces.
const NONCE_ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// The object the page passes to `getBrandWCPayRequest`. Serializes with
/// WeChat's exact (camel-case) names:
/// `{"appId","timeStamp","nonceStr","package","signType","paySign"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsapiParams {
    /// The AppID the order was created under (the merchant's bound OA).
    #[serde(rename = "appId")]
    pub app_id: String,
    /// Unix seconds, as a string (WeChat insists on a string).
    #[serde(rename = "timeStamp")]
    pub time_stamp: String,
    /// A random string of at most 32 characters.
    #[serde(rename = "nonceStr")]
    pub nonce_str: String,
    /// `prepay_id=` followed by the order's prepay id.
    pub package: String,
    /// Always `RSA` for API v3.
    #[serde(rename = "signType")]
    pub sign_type: String,
    /// base64 RSA-SHA256 signature with the merchant key over
    /// `appId\ntimeStamp\nnonceStr\npackage\n`.
    #[serde(rename = "paySign")]
    pub pay_sign: String,
}

/// A value that becomes one line of the signed message: a newline inside it
/// would let it forge the lines after it.
fn check_line(name: &str, value: &str, max: usize) -> Result<(), PayError> {
    if (1..=max).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(PayError::InvalidInput(format!(
            "{name} must be 1-{max} visible ASCII characters"
        )))
    }
}

impl Client {
    /// Signed page parameters for `prepay_id` with the current time and a
    /// fresh 32-character random nonce. Call it again (e.g. for each
    /// `GET /api/orders/{id}`) rather than caching: the result is cheap.
    pub fn jsapi_params(&self, prepay_id: &str) -> Result<JsapiParams, PayError> {
        let nonce = random_nonce()?;
        self.jsapi_params_at(prepay_id, chrono::Utc::now().timestamp(), &nonce)
    }

    /// Signed page parameters for `prepay_id` with the given Unix time and
    /// nonce (1-32 letters and digits): deterministic, for tests and
    /// vectors.
    pub fn jsapi_params_at(
        &self,
        prepay_id: &str,
        timestamp_secs: i64,
        nonce: &str,
    ) -> Result<JsapiParams, PayError> {
        check_line("prepay_id", prepay_id, 128)?;
        if nonce.is_empty()
            || nonce.len() > NONCE_LEN
            || !nonce.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(PayError::InvalidInput(
                "nonceStr must be 1-32 ASCII letters or digits".into(),
            ));
        }
        if timestamp_secs <= 0 {
            return Err(PayError::InvalidInput("timeStamp must be positive".into()));
        }
        let app_id = self.config().app_id.clone();
        check_line("app_id", &app_id, 64)?;
        let time_stamp = timestamp_secs.to_string();
        let package = format!("prepay_id={prepay_id}");
        let message = pay_sign_message(&app_id, &time_stamp, nonce, &package);
        let pay_sign = sign_message(self.merchant_key(), message.as_bytes())?;
        Ok(JsapiParams {
            app_id,
            time_stamp,
            nonce_str: nonce.to_owned(),
            package,
            sign_type: "RSA".to_owned(),
            pay_sign,
        })
    }
}

/// The four-line string `paySign` covers.
#[must_use]
pub fn pay_sign_message(app_id: &str, time_stamp: &str, nonce_str: &str, package: &str) -> String {
    format!("{app_id}\n{time_stamp}\n{nonce_str}\n{package}\n")
}

/// [`NONCE_LEN`] letters and digits from the system CSPRNG, uniformly
/// distributed (bytes of 248 and above are dropped: 248 = 4 × 62).
fn random_nonce() -> Result<String, PayError> {
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(NONCE_LEN);
    let mut buf = [0u8; NONCE_LEN];
    while out.len() < NONCE_LEN {
        rng.fill(&mut buf)
            .map_err(|_| PayError::Http("system random generator failed".into()))?;
        for &b in &buf {
            if out.len() < NONCE_LEN && b < 248 {
                let c = NONCE_ALPHABET
                    .get(usize::from(b % 62))
                    .copied()
                    .unwrap_or(b'A');
                out.push(char::from(c));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_is_32_alphanumerics_and_varies() {
        let a = random_nonce().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, random_nonce().unwrap());
    }

    #[test]
    fn message_has_four_terminated_lines() {
        assert_eq!(
            pay_sign_message("wx1", "1700000000", "abc", "prepay_id=wx2"),
            "wx1\n1700000000\nabc\nprepay_id=wx2\n"
        );
    }
}
