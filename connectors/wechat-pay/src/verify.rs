//! Verification of WeChat Pay signatures on notifications and API responses
//! (pure, no I/O).
//!
//! Both carry `Wechatpay-Timestamp`, `Wechatpay-Nonce`, `Wechatpay-Signature`
//! and `Wechatpay-Serial`; the signed message is `ts\nnonce\nBODY\n` over the
//! raw body bytes exactly as received, so this runs before any parsing.

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;

use crate::error::sanitize_id;
use crate::{PayError, PlatformKey};

/// How far `Wechatpay-Timestamp` may be from our clock, exclusive
/// (wechatpay-go rejects `|now - ts| >= 5 min`).
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// Upper bound for the header values we accept; WeChat's are far shorter
/// and anything bigger is an attack on our allocator.
const MAX_HEADER_LEN: usize = 1024;

/// The platform keys we trust, by `Wechatpay-Serial`: a platform certificate
/// serial (upper-case hex) or a public-key id (`PUB_KEY_ID_…`).
///
/// Several keys can be present at once, which is how WeChat rotates them.
/// Ids are compared case-insensitively (serials are hex).
#[derive(Clone, Default)]
pub struct PlatformKeys {
    keys: HashMap<String, PlatformKey>,
}

impl PlatformKeys {
    /// An empty set; every verification fails with
    /// [`PayError::UnknownSerial`] until keys are inserted.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `key` for messages whose `Wechatpay-Serial` is `id`. Replaces
    /// any key previously stored under the same id.
    pub fn insert(&mut self, id: &str, key: PlatformKey) {
        self.keys.insert(id.trim().to_ascii_uppercase(), key);
    }

    /// The key for `id`, if trusted.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<&PlatformKey> {
        self.keys.get(&id.trim().to_ascii_uppercase())
    }

    /// Number of trusted keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl fmt::Debug for PlatformKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("PlatformKeys").field("ids", &ids).finish()
    }
}

/// The signature headers of a notification or response, borrowed as
/// received. All values are untrusted.
#[derive(Debug, Clone, Copy)]
pub struct NotifyHeaders<'a> {
    /// `Wechatpay-Timestamp`: unix seconds.
    pub timestamp: &'a str,
    /// `Wechatpay-Nonce`.
    pub nonce: &'a str,
    /// `Wechatpay-Signature`: base64 RSA signature.
    pub signature: &'a str,
    /// `Wechatpay-Serial`: which platform key signed.
    pub serial: &'a str,
}

/// Builds the three-line message WeChat signs: `ts\nnonce\nBODY\n`.
fn signed_message(h: &NotifyHeaders<'_>, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(h.timestamp.len() + h.nonce.len() + body.len() + 3);
    m.extend_from_slice(h.timestamp.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(h.nonce.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body);
    m.push(b'\n');
    m
}

/// Parses a strictly decimal unix timestamp (no sign, no spaces).
fn parse_timestamp(ts: &str) -> Option<i64> {
    if ts.is_empty() || ts.len() > 18 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ts.parse().ok()
}

/// Verifies the WeChat Pay signature of a notification (or API response)
/// over the raw `body` bytes.
///
/// Errors: [`PayError::UnknownSerial`] if the serial is not trusted,
/// [`PayError::StaleTimestamp`] if the timestamp is unparsable or
/// `|now - ts| >= 300 s`, [`PayError::BadSignature`] otherwise. WeChat's
/// `WECHATPAY/SIGNTEST/` probe signatures fail like any other bad signature,
/// which is what WeChat expects.
pub fn verify_notification(
    keys: &PlatformKeys,
    h: &NotifyHeaders<'_>,
    body: &[u8],
    now_unix: i64,
) -> Result<(), PayError> {
    let key = keys
        .get(h.serial)
        .ok_or_else(|| PayError::UnknownSerial(sanitize_id(h.serial)))?;

    let ts = parse_timestamp(h.timestamp).ok_or(PayError::StaleTimestamp)?;
    let skew = now_unix
        .checked_sub(ts)
        .map(i64::unsigned_abs)
        .ok_or(PayError::StaleTimestamp)?;
    if skew >= MAX_CLOCK_SKEW_SECS {
        return Err(PayError::StaleTimestamp);
    }

    if h.nonce.len() > MAX_HEADER_LEN || h.signature.len() > MAX_HEADER_LEN {
        return Err(PayError::BadSignature);
    }
    let signature = base64::engine::general_purpose::STANDARD
        .decode(h.signature.trim())
        .map_err(|_| PayError::BadSignature)?;
    key.verify(&signed_message(h, body), &signature)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{MerchantKey, sign_message};

    pub(crate) const PLATFORM_KEY: &str = include_str!("../testdata/test_only_platform_key.pem");
    pub(crate) const PLATFORM_PUB: &str = include_str!("../testdata/test_only_platform_pub.pem");
    pub(crate) const PLATFORM_ID: &str = "PUB_KEY_ID_0114232134912410000000000000000001";
    pub(crate) const NOW: i64 = 1_700_000_000;

    pub(crate) fn platform_keys() -> PlatformKeys {
        let mut keys = PlatformKeys::new();
        keys.insert(PLATFORM_ID, PlatformKey::from_pem(PLATFORM_PUB).unwrap());
        keys
    }

    /// Signs `body` like WeChat would: returns (timestamp, nonce, signature).
    pub(crate) fn wechat_sign(ts: i64, nonce: &str, body: &[u8]) -> (String, String, String) {
        let key = MerchantKey::from_pem(PLATFORM_KEY).unwrap();
        let ts = ts.to_string();
        let h = NotifyHeaders {
            timestamp: &ts,
            nonce,
            signature: "",
            serial: PLATFORM_ID,
        };
        let sig = sign_message(&key, &signed_message(&h, body)).unwrap();
        (ts, nonce.to_owned(), sig)
    }

    const BODY: &[u8] = br#"{"id":"EV-1","event_type":"TRANSACTION.SUCCESS"}"#;

    fn check(
        ts: &str,
        nonce: &str,
        sig: &str,
        serial: &str,
        body: &[u8],
        now: i64,
    ) -> Result<(), PayError> {
        let h = NotifyHeaders {
            timestamp: ts,
            nonce,
            signature: sig,
            serial,
        };
        verify_notification(&platform_keys(), &h, body, now)
    }

    #[test]
    fn good_signature_verifies() {
        let (ts, nonce, sig) = wechat_sign(NOW, "fdasflkja484w", BODY);
        check(&ts, &nonce, &sig, PLATFORM_ID, BODY, NOW).unwrap();
        // Serial lookup ignores case.
        check(&ts, &nonce, &sig, &PLATFORM_ID.to_lowercase(), BODY, NOW).unwrap();
    }

    #[test]
    fn bad_signatures_fail() {
        let (ts, nonce, sig) = wechat_sign(NOW, "fdasflkja484w", BODY);
        // Another valid-looking signature (over a different nonce).
        let (_, _, other) = wechat_sign(NOW, "other", BODY);
        assert!(matches!(
            check(&ts, &nonce, &other, PLATFORM_ID, BODY, NOW),
            Err(PayError::BadSignature)
        ));
        // WeChat's probe.
        let probe = format!("WECHATPAY/SIGNTEST/{sig}");
        assert!(matches!(
            check(&ts, &nonce, &probe, PLATFORM_ID, BODY, NOW),
            Err(PayError::BadSignature)
        ));
        let probe = "WECHATPAY/SIGNTEST/Q3hEYXRlQmF0Y2g=";
        assert!(matches!(
            check(&ts, &nonce, probe, PLATFORM_ID, BODY, NOW),
            Err(PayError::BadSignature)
        ));
        assert!(matches!(
            check(&ts, &nonce, "", PLATFORM_ID, BODY, NOW),
            Err(PayError::BadSignature)
        ));
        // Wrong nonce in the header.
        assert!(matches!(
            check(&ts, "x", &sig, PLATFORM_ID, BODY, NOW),
            Err(PayError::BadSignature)
        ));
    }

    #[test]
    fn tampered_body_fails() {
        let (ts, nonce, sig) = wechat_sign(NOW, "n", BODY);
        for i in [0, BODY.len() / 2, BODY.len() - 1] {
            let mut body = BODY.to_vec();
            body[i] ^= 0x01;
            assert!(matches!(
                check(&ts, &nonce, &sig, PLATFORM_ID, &body, NOW),
                Err(PayError::BadSignature)
            ));
        }
        // Re-serialised JSON (whitespace) is a different body.
        let spaced = br#"{"id": "EV-1","event_type":"TRANSACTION.SUCCESS"}"#;
        assert!(check(&ts, &nonce, &sig, PLATFORM_ID, spaced, NOW).is_err());
    }

    #[test]
    fn timestamp_window_is_300_seconds_exclusive() {
        let (ts, nonce, sig) = wechat_sign(NOW, "n", BODY);
        check(&ts, &nonce, &sig, PLATFORM_ID, BODY, NOW + 299).unwrap();
        check(&ts, &nonce, &sig, PLATFORM_ID, BODY, NOW - 299).unwrap();
        assert!(matches!(
            check(&ts, &nonce, &sig, PLATFORM_ID, BODY, NOW + 300),
            Err(PayError::StaleTimestamp)
        ));
        assert!(matches!(
            check(&ts, &nonce, &sig, PLATFORM_ID, BODY, NOW - 300),
            Err(PayError::StaleTimestamp)
        ));
        for bad in [
            "",
            "abc",
            "-1700000000",
            "+1700000000",
            " 1700000000",
            "99999999999999999999",
        ] {
            assert!(
                matches!(
                    check(bad, &nonce, &sig, PLATFORM_ID, BODY, NOW),
                    Err(PayError::StaleTimestamp)
                ),
                "{bad}"
            );
        }
        // Extreme clock values must not overflow.
        assert!(check(&ts, &nonce, &sig, PLATFORM_ID, BODY, i64::MIN).is_err());
    }

    #[test]
    fn unknown_serial_is_reported() {
        let (ts, nonce, sig) = wechat_sign(NOW, "n", BODY);
        match check(&ts, &nonce, &sig, "PUB_KEY_ID_NOPE\n", BODY, NOW) {
            Err(PayError::UnknownSerial(s)) => assert_eq!(s, "PUB_KEY_ID_NOPE?"),
            other => panic!("{other:?}"),
        }
        let empty = PlatformKeys::new();
        let h = NotifyHeaders {
            timestamp: &ts,
            nonce: &nonce,
            signature: &sig,
            serial: PLATFORM_ID,
        };
        assert!(matches!(
            verify_notification(&empty, &h, BODY, NOW),
            Err(PayError::UnknownSerial(_))
        ));
    }
}
