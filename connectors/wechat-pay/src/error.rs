//! The one error type of this crate.
//!
//! Variants are coarse on purpose: callers mostly need to tell "WeChat said
//! no" ([`PayError::Api`]) from "we could not trust or read what came back"
//! (the signature, decrypt and decode variants) from "the network failed"
//! ([`PayError::Http`]). Messages never contain key material, the APIv3 key
//! or decrypted payer data.

/// Everything that can go wrong while signing, verifying, decrypting or
/// talking to WeChat Pay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayError {
    /// A key (merchant private key, platform public key/certificate, APIv3
    /// key) could not be loaded. The message says why, never what the key is.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A value we were asked to send is not acceptable (for example an
    /// `out_trade_no` outside WeChat's alphabet, a non-positive amount).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A notification or response names a platform key/certificate we do
    /// not know. The id is sanitised and truncated; it is attacker input.
    #[error("unknown WeChat Pay serial / public key id: {0}")]
    UnknownSerial(String),
    /// `Wechatpay-Timestamp` is missing, not a number, or 300 s or more away
    /// from our clock (replay protection).
    #[error("stale or invalid Wechatpay-Timestamp")]
    StaleTimestamp,
    /// The RSA signature does not verify (or the signature headers are
    /// missing/malformed). WeChat's deliberate `WECHATPAY/SIGNTEST/` probes
    /// land here too.
    #[error("WeChat Pay signature verification failed")]
    BadSignature,
    /// A notification body is larger than we are willing to process.
    #[error("body too large")]
    TooLarge,
    /// AES-256-GCM decryption failed: wrong APIv3 key, tampered ciphertext,
    /// tag, nonce or associated data, or an unsupported algorithm.
    #[error("resource decryption failed")]
    Decrypt,
    /// A (verified) body could not be parsed. `raw` holds a truncated copy of
    /// the body for bug reports, or a placeholder when the body was
    /// decrypted payer data that must not be logged.
    #[error("cannot decode WeChat Pay payload: {message}")]
    Decode {
        /// What the parser complained about.
        message: String,
        /// Truncated raw body, or a redaction placeholder.
        raw: String,
    },
    /// WeChat Pay answered with a non-2xx status and (usually) a
    /// `{"code","message"}` body, e.g. 404 `ORDER_NOT_EXIST`.
    #[error("WeChat Pay API error {status} {code}: {message}")]
    Api {
        /// HTTP status code.
        status: u16,
        /// WeChat's error code (`PARAM_ERROR`, `ORDER_NOT_EXIST`, ...), or
        /// `UNKNOWN` when the body was not the usual JSON.
        code: String,
        /// WeChat's human-readable message (or the truncated body).
        message: String,
    },
    /// Transport failure: connect, TLS, timeout, reading the body.
    #[error("http error: {0}")]
    Http(String),
}

/// Longest excerpt of a foreign body kept inside an error.
const RAW_EXCERPT_LIMIT: usize = 2048;

/// Keeps at most [`RAW_EXCERPT_LIMIT`] bytes of `body` (lossy UTF-8) so that
/// errors stay small even when the peer sends megabytes.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let cut = body.get(..RAW_EXCERPT_LIMIT).unwrap_or(body);
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if body.len() > RAW_EXCERPT_LIMIT {
        s.push_str("…(truncated)");
    }
    s
}

/// Makes an attacker-supplied identifier safe to put into an error/log line:
/// printable ASCII only, at most 64 characters.
pub(crate) fn sanitize_id(id: &str) -> String {
    id.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}
