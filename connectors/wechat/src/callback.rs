//! The Official Account callback check, framework-free: URL verification
//! (GET), opening a pushed message (POST: signature, replay window,
//! safe-mode decryption with key rotation, parsing) and sealing the passive
//! reply in the same mode.
//!
//! The daemon's HTTP handler only extracts the query and raw body, calls
//! [`MpEndpoint::verify_url`] or [`MpEndpoint::open`], and sends back what
//! [`MpEndpoint::seal`] returns. No I/O here apart from drawing the random
//! prefix of an encrypted reply from the OS.

use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;

use crate::crypto::{AesKey, CryptoError, decrypt_message, encrypt_message};
use crate::signature::{sha1_signature, verify_sha1_signature};
use crate::xml::{
    Incoming, MAX_XML_BYTES, XmlError, encrypted_reply_xml, parse_envelope, parse_incoming,
};

/// Largest callback body accepted (the same bound as the XML parser).
pub const MAX_BODY_BYTES: usize = MAX_XML_BYTES;

/// Largest accepted difference between the request's `timestamp` and our
/// clock, in seconds. WeChat retries within 15 s; five minutes also absorbs
/// clock skew while keeping a captured URL from being replayed later.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// The query string of a callback request (GET or POST).
///
/// Every field is optional so that a missing parameter becomes a precise
/// [`CallbackError::MissingParam`] instead of an extractor rejection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CallbackQuery {
    /// `signature`: SHA-1 over `(token, timestamp, nonce)`.
    pub signature: Option<String>,
    /// `timestamp`: Unix seconds, as a decimal string.
    pub timestamp: Option<String>,
    /// `nonce`: a random string chosen by WeChat.
    pub nonce: Option<String>,
    /// `echostr`: GET only, echoed back verbatim on success.
    pub echostr: Option<String>,
    /// `encrypt_type`: `aes` in safe and compatible mode.
    pub encrypt_type: Option<String>,
    /// `msg_signature`: SHA-1 over `(token, timestamp, nonce, Encrypt)` in
    /// safe and compatible mode.
    pub msg_signature: Option<String>,
    /// `openid`: the sender (POST only); the body's `FromUserName` is what
    /// counts, this is informational.
    pub openid: Option<String>,
}

/// Why a callback request was refused.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// A required query parameter is absent.
    #[error("missing query parameter `{0}`")]
    MissingParam(&'static str),
    /// A query parameter is present but unusable (e.g. a non-numeric
    /// `timestamp`).
    #[error("invalid query parameter `{0}`")]
    InvalidParam(&'static str),
    /// `signature` or `msg_signature` does not match.
    #[error("bad signature")]
    BadSignature,
    /// `timestamp` is more than [`MAX_CLOCK_SKEW_SECS`] away from now.
    #[error("timestamp outside the accepted window")]
    StaleTimestamp,
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("request body too large")]
    TooLarge,
    /// The request is encrypted (`encrypt_type=aes`) but this endpoint has no
    /// EncodingAESKey configured.
    #[error("encrypted callback but no EncodingAESKey is configured")]
    NoAesKey,
    /// Decryption failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The (decrypted) XML is unusable.
    #[error(transparent)]
    Xml(#[from] XmlError),
    /// The (decrypted) JSON of a WeCom AI bot callback is unusable. The
    /// text says what was wrong and where, never the content.
    #[error("unusable JSON: {0}")]
    Json(String),
}

impl CallbackError {
    /// The HTTP status a refused callback gets: 413 for a body too large, 403 when it failed
    /// authentication (signature, timestamp, a missing signed parameter), else 400.
    #[must_use]
    pub fn http_status(&self) -> u16 {
        match self {
            Self::TooLarge => 413,
            Self::BadSignature | Self::StaleTimestamp | Self::MissingParam(_) => 403,
            _ => 400,
        }
    }
}

/// How the request arrived, and so how the reply must be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMode {
    /// Plaintext mode: the reply XML goes out as is.
    Plain,
    /// Safe or compatible mode: the reply is encrypted with the key that
    /// decrypted the request.
    Encrypted {
        /// Index of that key: 0 = current, 1 = previous.
        key_index: usize,
    },
}

/// A verified, decrypted and parsed callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The message or event.
    pub message: Incoming,
    /// How to send the passive reply; pass this back to [`MpEndpoint::seal`].
    pub mode: ReplyMode,
    /// What the caller must remember to refuse replays of this signed request.
    pub delivery: Delivery,
}

/// One signed delivery, as the caller must remember it to refuse replays.
///
/// The plain `signature` covers only the token, `timestamp` and `nonce`, never the body: a
/// captured callback URL (a proxy's log) could otherwise carry any body, as any sender, for as
/// long as its timestamp is accepted. So the caller remembers each `(timestamp, nonce)` with a
/// hash of the message it came with, until [`Delivery::expires_unix`], and refuses the same
/// pair with another message.
///
/// The *same* message under the same pair is let through on purpose: whether WeChat's retries
/// (3 tries, 5 s apart) carry a new timestamp and nonce or repeat the first request is not
/// documented, and a repeated request must join the answer being made (the message-id dedupe
/// handles it) rather than leave the user without one. A replay of the identical request
/// gains an attacker nothing the original did not carry. "The message" is the body in
/// plaintext mode and the decrypted XML in safe mode, so that a retry WeChat encrypted afresh
/// (a new random prefix) is still the same message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// SHA-256 (hex) of `timestamp` and `nonce`: a fixed-length name for the pair.
    pub key: String,
    /// SHA-256 (hex) of the message: the body in plaintext mode, the decrypted XML in safe
    /// mode.
    pub message_sha256: String,
    /// Unix seconds after which the timestamp check refuses the pair anyway, so the caller
    /// need not remember it longer.
    pub expires_unix: i64,
}

impl Delivery {
    fn new(timestamp: &str, ts: i64, nonce: &str, message: &[u8]) -> Self {
        let mut pair = ring::digest::Context::new(&ring::digest::SHA256);
        // Length-prefixed, so that ("1", "23") and ("12", "3") differ.
        pair.update(&(timestamp.len() as u64).to_be_bytes());
        pair.update(timestamp.as_bytes());
        pair.update(nonce.as_bytes());
        Self {
            key: hex::encode(pair.finish()),
            message_sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, message)),
            expires_unix: ts
                .saturating_add(MAX_CLOCK_SKEW_SECS as i64)
                .saturating_add(1),
        }
    }
}

/// One Official Account's callback settings.
pub struct MpEndpoint {
    /// The "Token" from the console; secret, it keys every signature.
    token: String,
    /// The account's appid: the receive id inside every encrypted message.
    app_id: String,
    /// Decryption keys in order of preference: the current EncodingAESKey,
    /// then the previous one so that messages encrypted just before a key
    /// change still open.
    keys: Vec<AesKey>,
    /// Source of the random prefix of encrypted replies.
    rng: SystemRandom,
}

impl fmt::Debug for MpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MpEndpoint")
            .field("token", &"<redacted>")
            .field("app_id", &self.app_id)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl MpEndpoint {
    /// Builds an endpoint. Without an EncodingAESKey only plaintext mode is
    /// accepted. A previous key without a current one is ignored, since
    /// encryption always needs the current key.
    ///
    /// # Errors
    /// [`CryptoError::InvalidKey`] if a given key is not 43 base64 characters.
    pub fn new(
        token: &str,
        app_id: &str,
        encoding_aes_key: Option<&str>,
        previous_encoding_aes_key: Option<&str>,
    ) -> Result<Self, CryptoError> {
        let mut keys = Vec::new();
        if let Some(current) = encoding_aes_key {
            keys.push(AesKey::from_encoding_aes_key(current)?);
            if let Some(previous) = previous_encoding_aes_key {
                keys.push(AesKey::from_encoding_aes_key(previous)?);
            }
        }
        Ok(Self {
            token: token.to_owned(),
            app_id: app_id.to_owned(),
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// The account's appid.
    #[must_use]
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// Answers WeChat's URL verification (GET): checks `signature` and
    /// returns `echostr`, to be sent back verbatim as the response body.
    ///
    /// # Errors
    /// [`CallbackError::MissingParam`] or [`CallbackError::BadSignature`].
    pub fn verify_url(&self, q: &CallbackQuery) -> Result<String, CallbackError> {
        self.check_plain_signature(q)?;
        q.echostr
            .clone()
            .ok_or(CallbackError::MissingParam("echostr"))
    }

    /// Opens a pushed message (POST).
    ///
    /// 1. The plain `signature` must verify (on every POST, in every mode).
    /// 2. `timestamp` must be within [`MAX_CLOCK_SKEW_SECS`] of `now_unix`; the caller then
    ///    refuses a replay of the pair with another body (see [`Delivery`]).
    /// 3. With `encrypt_type=aes`: the envelope's `Encrypt` must match
    ///    `msg_signature`, decrypt with the current key or else the previous
    ///    one, and be addressed to this appid. Otherwise the body is the
    ///    plaintext message.
    ///
    /// # Errors
    /// Any [`CallbackError`]; nothing about the message can be trusted then.
    pub fn open(
        &self,
        q: &CallbackQuery,
        body: &[u8],
        now_unix: i64,
    ) -> Result<Opened, CallbackError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(CallbackError::TooLarge);
        }
        let (timestamp, nonce) = self.check_plain_signature(q)?;
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| CallbackError::InvalidParam("timestamp"))?;
        if now_unix.abs_diff(ts) > MAX_CLOCK_SKEW_SECS {
            return Err(CallbackError::StaleTimestamp);
        }

        let encrypted = q
            .encrypt_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("aes"));
        if !encrypted {
            let message = parse_incoming(body)?;
            return Ok(Opened {
                message,
                mode: ReplyMode::Plain,
                delivery: Delivery::new(timestamp, ts, nonce, body),
            });
        }

        if self.keys.is_empty() {
            return Err(CallbackError::NoAesKey);
        }
        let msg_signature = q
            .msg_signature
            .as_deref()
            .ok_or(CallbackError::MissingParam("msg_signature"))?;
        let encrypt = parse_envelope(body)?
            .encrypt
            .ok_or(XmlError::MissingField("Encrypt"))?;
        // The signature covers the ciphertext, so nothing is decrypted for a
        // request that did not come from WeChat (no padding oracle).
        if !verify_sha1_signature(&[&self.token, timestamp, nonce, &encrypt], msg_signature) {
            return Err(CallbackError::BadSignature);
        }

        let mut first_error = None;
        for (key_index, key) in self.keys.iter().enumerate() {
            match decrypt_message(key, &encrypt, &self.app_id) {
                Ok(plain) => {
                    if key_index > 0 {
                        tracing::info!(
                            app_id = %self.app_id,
                            "callback decrypted with the previous EncodingAESKey"
                        );
                    }
                    let message = parse_incoming(&plain)?;
                    return Ok(Opened {
                        message,
                        mode: ReplyMode::Encrypted { key_index },
                        delivery: Delivery::new(timestamp, ts, nonce, &plain),
                    });
                }
                // The current key's error is the meaningful one (e.g. a
                // receive id mismatch); a wrong previous key only adds noise.
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or(CryptoError::Padding).into())
    }

    /// Turns a passive reply into the response body, in the mode the request
    /// came in: as is for plaintext mode; for safe mode encrypted with the
    /// key that opened the request and wrapped with a fresh `msg_signature`.
    /// `nonce` and `timestamp` may be the request's own.
    ///
    /// Don't seal the bare `success` or an empty body: WeChat accepts those
    /// unencrypted in every mode.
    ///
    /// Returns an empty body (WeChat's "no reply", which it does not retry)
    /// in the should-never-happen cases where encryption is impossible: the
    /// OS random source fails, or `opened` came from an endpoint with other
    /// keys.
    #[must_use]
    pub fn seal(&self, opened: &Opened, reply_xml: &str, nonce: &str, timestamp: &str) -> String {
        let key_index = match opened.mode {
            ReplyMode::Plain => return reply_xml.to_owned(),
            ReplyMode::Encrypted { key_index } => key_index,
        };
        let Some(key) = self.keys.get(key_index) else {
            tracing::error!(app_id = %self.app_id, key_index, "no such EncodingAESKey; sending an empty reply");
            return String::new();
        };
        let mut random = [0u8; 16];
        if self.rng.fill(&mut random).is_err() {
            tracing::error!(app_id = %self.app_id, "OS random source failed; sending an empty reply");
            return String::new();
        }
        let encrypt = encrypt_message(key, reply_xml.as_bytes(), &self.app_id, random);
        let msg_signature = sha1_signature(&[&self.token, timestamp, nonce, &encrypt]);
        encrypted_reply_xml(&encrypt, &msg_signature, timestamp, nonce)
    }

    /// Checks the plain `signature` and returns `(timestamp, nonce)`.
    fn check_plain_signature<'q>(
        &self,
        q: &'q CallbackQuery,
    ) -> Result<(&'q str, &'q str), CallbackError> {
        let signature = q
            .signature
            .as_deref()
            .ok_or(CallbackError::MissingParam("signature"))?;
        let timestamp = q
            .timestamp
            .as_deref()
            .ok_or(CallbackError::MissingParam("timestamp"))?;
        let nonce = q
            .nonce
            .as_deref()
            .ok_or(CallbackError::MissingParam("nonce"))?;
        if verify_sha1_signature(&[&self.token, timestamp, nonce], signature) {
            Ok((timestamp, nonce))
        } else {
            Err(CallbackError::BadSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{IncomingKind, text_reply_xml};

    const TOKEN: &str = "tok3n";

    #[test]
    fn refusals_map_to_their_http_status() {
        assert_eq!(CallbackError::TooLarge.http_status(), 413);
        for e in [
            CallbackError::BadSignature,
            CallbackError::StaleTimestamp,
            CallbackError::MissingParam("nonce"),
        ] {
            assert_eq!(e.http_status(), 403, "{e}");
        }
        assert_eq!(CallbackError::InvalidParam("timestamp").http_status(), 400);
        assert_eq!(CallbackError::NoAesKey.http_status(), 400);
    }
    const APP_ID: &str = "wx1234567890abcdef";
    // wechatpy's and Tencent's public sample keys, reused as "current" and
    // "previous".
    const KEY_NEW: &str = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
    const KEY_OLD: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
    const NOW: i64 = 1_700_000_000;

    fn text_xml(content: &str) -> String {
        format!(
            "<xml><ToUserName><![CDATA[gh_abc]]></ToUserName><FromUserName><![CDATA[o_user]]></FromUserName>\
             <CreateTime>{NOW}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
             <Content><![CDATA[{content}]]></Content><MsgId>99</MsgId></xml>"
        )
    }

    fn plain_query(ts: i64, nonce: &str) -> CallbackQuery {
        let ts = ts.to_string();
        CallbackQuery {
            signature: Some(sha1_signature(&[TOKEN, &ts, nonce])),
            timestamp: Some(ts),
            nonce: Some(nonce.into()),
            openid: Some("o_user".into()),
            ..CallbackQuery::default()
        }
    }

    /// A safe-mode request as WeChat would send it, encrypted with `key43`
    /// for `app_id`.
    fn aes_request(key43: &str, app_id: &str, inner: &str) -> (CallbackQuery, String) {
        let key = AesKey::from_encoding_aes_key(key43).unwrap();
        let encrypt = encrypt_message(&key, inner.as_bytes(), app_id, *b"0123456789abcdef");
        let mut q = plain_query(NOW, "n0nce");
        q.encrypt_type = Some("aes".into());
        q.msg_signature = Some(sha1_signature(&[
            TOKEN,
            &NOW.to_string(),
            "n0nce",
            &encrypt,
        ]));
        let body = format!(
            "<xml><ToUserName><![CDATA[gh_abc]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        );
        (q, body)
    }

    fn endpoint() -> MpEndpoint {
        MpEndpoint::new(TOKEN, APP_ID, Some(KEY_NEW), Some(KEY_OLD)).unwrap()
    }

    #[test]
    fn verify_url_ok_and_bad() {
        let ep = MpEndpoint::new(TOKEN, APP_ID, None, None).unwrap();
        let mut q = plain_query(NOW, "abc");
        q.echostr = Some("echo 123".into());
        assert_eq!(ep.verify_url(&q).unwrap(), "echo 123");

        let mut bad = q.clone();
        bad.signature = Some("0".repeat(40));
        assert!(matches!(
            ep.verify_url(&bad),
            Err(CallbackError::BadSignature)
        ));
        let mut bad = q.clone();
        bad.nonce = Some("abd".into());
        assert!(matches!(
            ep.verify_url(&bad),
            Err(CallbackError::BadSignature)
        ));
        let mut missing = q.clone();
        missing.echostr = None;
        assert!(matches!(
            ep.verify_url(&missing),
            Err(CallbackError::MissingParam("echostr"))
        ));
        assert!(matches!(
            ep.verify_url(&CallbackQuery::default()),
            Err(CallbackError::MissingParam("signature"))
        ));
    }

    #[test]
    fn post_plain_ok() {
        let ep = endpoint();
        let opened = ep
            .open(&plain_query(NOW, "n"), text_xml("hi").as_bytes(), NOW)
            .unwrap();
        assert_eq!(opened.mode, ReplyMode::Plain);
        assert_eq!(opened.message.from_user, "o_user");
        assert_eq!(
            opened.message.kind,
            IncomingKind::Text {
                content: "hi".into()
            }
        );
        let reply = text_reply_xml("o_user", "gh_abc", NOW, "answer");
        assert_eq!(ep.seal(&opened, &reply, "n", "1"), reply);
    }

    #[test]
    fn post_bad_signature_is_rejected() {
        let ep = endpoint();
        let mut q = plain_query(NOW, "n");
        q.signature = Some(sha1_signature(&["other-token", &NOW.to_string(), "n"]));
        assert!(matches!(
            ep.open(&q, text_xml("hi").as_bytes(), NOW),
            Err(CallbackError::BadSignature)
        ));
        // The plain signature is required in safe mode too.
        let (mut q, body) = aes_request(KEY_NEW, APP_ID, &text_xml("hi"));
        q.signature = None;
        assert!(matches!(
            ep.open(&q, body.as_bytes(), NOW),
            Err(CallbackError::MissingParam("signature"))
        ));
    }

    #[test]
    fn stale_timestamps_are_rejected() {
        let ep = endpoint();
        let body = text_xml("hi");
        assert!(
            ep.open(&plain_query(NOW - 300, "n"), body.as_bytes(), NOW)
                .is_ok()
        );
        assert!(
            ep.open(&plain_query(NOW + 300, "n"), body.as_bytes(), NOW)
                .is_ok()
        );
        assert!(matches!(
            ep.open(&plain_query(NOW - 301, "n"), body.as_bytes(), NOW),
            Err(CallbackError::StaleTimestamp)
        ));
        assert!(matches!(
            ep.open(&plain_query(NOW + 301, "n"), body.as_bytes(), NOW),
            Err(CallbackError::StaleTimestamp)
        ));
        // Extreme values must not overflow.
        assert!(matches!(
            ep.open(&plain_query(i64::MIN, "n"), body.as_bytes(), i64::MAX),
            Err(CallbackError::StaleTimestamp)
        ));
        let mut q = plain_query(NOW, "n");
        q.timestamp = Some("soon".into());
        q.signature = Some(sha1_signature(&[TOKEN, "soon", "n"]));
        assert!(matches!(
            ep.open(&q, body.as_bytes(), NOW),
            Err(CallbackError::InvalidParam("timestamp"))
        ));
    }

    #[test]
    fn delivery_names_the_signed_pair_and_the_body() {
        let ep = endpoint();
        let a = ep
            .open(&plain_query(NOW, "n1"), text_xml("hi").as_bytes(), NOW)
            .unwrap()
            .delivery;
        // The same signed query with another body: same pair, another body hash.
        let b = ep
            .open(&plain_query(NOW, "n1"), text_xml("hijack").as_bytes(), NOW)
            .unwrap()
            .delivery;
        assert_eq!(a.key, b.key);
        assert_ne!(a.message_sha256, b.message_sha256);
        assert_eq!(a.expires_unix, NOW + MAX_CLOCK_SKEW_SECS as i64 + 1);
        assert_eq!(a.key.len(), 64);
        // Another nonce or timestamp is another pair; the split between them counts.
        let c = ep
            .open(&plain_query(NOW, "n2"), text_xml("hi").as_bytes(), NOW)
            .unwrap()
            .delivery;
        assert_ne!(a.key, c.key);
        assert_eq!(a.message_sha256, c.message_sha256);
        assert_ne!(
            Delivery::new("12", 12, "3", b"").key,
            Delivery::new("1", 1, "23", b"").key
        );
        // Safe mode names the decrypted message: the same message encrypted afresh (another
        // random prefix, as a retry may be) is the same, another message is not.
        let (q, body) = aes_request(KEY_NEW, APP_ID, &text_xml("hi"));
        let d = ep.open(&q, body.as_bytes(), NOW).unwrap().delivery;
        assert_eq!(d, a_with_pair(&a, "n0nce"));
        let key = AesKey::from_encoding_aes_key(KEY_NEW).unwrap();
        let again = encrypt_message(
            &key,
            text_xml("hi").as_bytes(),
            APP_ID,
            *b"fedcba9876543210",
        );
        let mut q2 = q.clone();
        q2.msg_signature = Some(sha1_signature(&[TOKEN, &NOW.to_string(), "n0nce", &again]));
        let body2 = format!("<xml><Encrypt><![CDATA[{again}]]></Encrypt></xml>");
        assert_ne!(body, body2);
        assert_eq!(ep.open(&q2, body2.as_bytes(), NOW).unwrap().delivery, d);
    }

    fn a_with_pair(a: &Delivery, nonce: &str) -> Delivery {
        Delivery {
            key: Delivery::new(&NOW.to_string(), NOW, nonce, b"").key,
            ..a.clone()
        }
    }

    #[test]
    fn oversized_body_is_rejected() {
        let ep = endpoint();
        let body = vec![b' '; MAX_BODY_BYTES + 1];
        assert!(matches!(
            ep.open(&plain_query(NOW, "n"), &body, NOW),
            Err(CallbackError::TooLarge)
        ));
    }

    #[test]
    fn aes_with_current_key() {
        let ep = endpoint();
        let (q, body) = aes_request(KEY_NEW, APP_ID, &text_xml("secret question"));
        let opened = ep.open(&q, body.as_bytes(), NOW).unwrap();
        assert_eq!(opened.mode, ReplyMode::Encrypted { key_index: 0 });
        assert_eq!(
            opened.message.kind,
            IncomingKind::Text {
                content: "secret question".into()
            }
        );
    }

    /// Decrypts a sealed reply the way WeChat would, with `key43`.
    fn unseal(sealed: &str, key43: &str, nonce: &str, timestamp: &str) -> String {
        let env = parse_envelope(sealed.as_bytes()).unwrap();
        let encrypt = env.encrypt.unwrap();
        let sig = sealed
            .split("<MsgSignature><![CDATA[")
            .nth(1)
            .and_then(|s| s.split("]]>").next())
            .unwrap();
        assert!(verify_sha1_signature(
            &[TOKEN, timestamp, nonce, &encrypt],
            sig
        ));
        assert!(sealed.contains(&format!("<TimeStamp>{timestamp}</TimeStamp>")));
        assert!(sealed.contains(&format!("<Nonce><![CDATA[{nonce}]]></Nonce>")));
        let key = AesKey::from_encoding_aes_key(key43).unwrap();
        String::from_utf8(decrypt_message(&key, &encrypt, APP_ID).unwrap()).unwrap()
    }

    #[test]
    fn aes_with_previous_key_and_reply_sealed_with_it() {
        let ep = endpoint();
        let (q, body) = aes_request(KEY_OLD, APP_ID, &text_xml("old key"));
        let opened = ep.open(&q, body.as_bytes(), NOW).unwrap();
        assert_eq!(opened.mode, ReplyMode::Encrypted { key_index: 1 });

        let reply = text_reply_xml("o_user", "gh_abc", NOW, "answer ]]> here");
        let sealed = ep.seal(&opened, &reply, "n0nce", "1700000001");
        assert_eq!(unseal(&sealed, KEY_OLD, "n0nce", "1700000001"), reply);
        // Not decryptable with the current key.
        let env = parse_envelope(sealed.as_bytes()).unwrap();
        let new = AesKey::from_encoding_aes_key(KEY_NEW).unwrap();
        assert!(decrypt_message(&new, &env.encrypt.unwrap(), APP_ID).is_err());

        // And a current-key request is answered with the current key.
        let (q, body) = aes_request(KEY_NEW, APP_ID, &text_xml("new key"));
        let opened = ep.open(&q, body.as_bytes(), NOW).unwrap();
        let sealed = ep.seal(&opened, &reply, "x", "2");
        assert_eq!(unseal(&sealed, KEY_NEW, "x", "2"), reply);
        // Two seals of the same reply differ (fresh random prefix).
        assert_ne!(ep.seal(&opened, &reply, "x", "2"), sealed);
    }

    #[test]
    fn aes_rejections() {
        let ep = endpoint();
        // Addressed to another appid.
        let (q, body) = aes_request(KEY_NEW, "wx_someone_else", &text_xml("hi"));
        assert!(matches!(
            ep.open(&q, body.as_bytes(), NOW),
            Err(CallbackError::Crypto(CryptoError::ReceiveId))
        ));
        // Encrypted with a key we do not have.
        let (q, body) = aes_request(
            "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt",
            APP_ID,
            &text_xml("hi"),
        );
        assert!(matches!(
            ep.open(&q, body.as_bytes(), NOW),
            Err(CallbackError::Crypto(_))
        ));
        // msg_signature over another ciphertext.
        let (mut q, body) = aes_request(KEY_NEW, APP_ID, &text_xml("hi"));
        q.msg_signature = Some(sha1_signature(&[TOKEN, &NOW.to_string(), "n0nce", "other"]));
        assert!(matches!(
            ep.open(&q, body.as_bytes(), NOW),
            Err(CallbackError::BadSignature)
        ));
        q.msg_signature = None;
        assert!(matches!(
            ep.open(&q, body.as_bytes(), NOW),
            Err(CallbackError::MissingParam("msg_signature"))
        ));
        // Envelope without Encrypt.
        let (q, _) = aes_request(KEY_NEW, APP_ID, &text_xml("hi"));
        assert!(matches!(
            ep.open(&q, b"<xml><ToUserName>gh</ToUserName></xml>", NOW),
            Err(CallbackError::Xml(XmlError::MissingField("Encrypt")))
        ));
        // An endpoint without keys cannot open safe-mode requests.
        let plain_only = MpEndpoint::new(TOKEN, APP_ID, None, Some(KEY_OLD)).unwrap();
        let (q, body) = aes_request(KEY_NEW, APP_ID, &text_xml("hi"));
        assert!(matches!(
            plain_only.open(&q, body.as_bytes(), NOW),
            Err(CallbackError::NoAesKey)
        ));
    }

    #[test]
    fn bad_keys_are_refused_and_debug_is_redacted() {
        assert!(MpEndpoint::new(TOKEN, APP_ID, Some("short"), None).is_err());
        assert!(MpEndpoint::new(TOKEN, APP_ID, Some(KEY_NEW), Some("short")).is_err());
        let dbg = format!("{:?}", endpoint());
        assert!(!dbg.contains(TOKEN));
        assert!(dbg.contains(APP_ID));
    }

    #[test]
    fn shared_types_are_thread_safe() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<MpEndpoint>();
        assert_send_sync::<CallbackError>();
        assert_send_sync::<Opened>();
    }

    #[test]
    fn signed_garbage_never_panics() {
        // Properly signed requests whose Encrypt is noise: every one must be
        // refused by both keys without a panic.
        use base64::Engine as _;
        let ep = endpoint();
        let mut x: u64 = 0x1234_5678_9ABC_DEF1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..500 {
            let len = if round % 2 == 0 {
                (next() % 8 * 16) as usize
            } else {
                (next() % 100) as usize
            };
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let encrypt = base64::engine::general_purpose::STANDARD.encode(bytes);
            let mut q = plain_query(NOW, "n");
            q.encrypt_type = Some("aes".into());
            q.msg_signature = Some(sha1_signature(&[TOKEN, &NOW.to_string(), "n", &encrypt]));
            let body = format!("<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>");
            assert!(ep.open(&q, body.as_bytes(), NOW).is_err());
        }
    }

    #[test]
    fn query_deserializes_from_a_query_string() {
        let q: CallbackQuery = serde_json::from_value(serde_json::json!({
            "signature": "s", "timestamp": "1", "nonce": "n",
            "openid": "o", "encrypt_type": "aes", "msg_signature": "m"
        }))
        .unwrap();
        assert_eq!(q.encrypt_type.as_deref(), Some("aes"));
        assert_eq!(q.echostr, None);
    }
}
