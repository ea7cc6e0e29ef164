//! WeCom (企业微信) self-built app callbacks, framework-free: URL
//! verification (GET, with an encrypted `echostr`), opening a pushed message
//! (POST: `msg_signature`, replay window, decryption, parsing) and sealing a
//! passive reply.
//!
//! WeCom always encrypts (there is no plaintext mode) with the same scheme as
//! an Official Account in safe mode (see [`crate::crypto`]); the receive id
//! is the corpid. The message XML is the Official Account's plus `AgentID`,
//! so [`parse_incoming`] reads it. The daemon acknowledges at once and
//! answers through [`crate::WecomClient`]; [`WecomEndpoint::seal`] is there
//! for passive replies all the same.
//!
//! The signed-ciphertext core (the crate-private `MsgCrypt`) is shared with
//! the AI bot ([`crate::aibot`]), which uses the same checks around a JSON
//! body and an empty receive id. No I/O here apart from drawing the random
//! prefix of an encrypted reply from the OS.

use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;

use crate::callback::{CallbackError, MAX_BODY_BYTES, MAX_CLOCK_SKEW_SECS};
use crate::crypto::{AesKey, CryptoError, decrypt_message, encrypt_message};
use crate::signature::{sha1_signature, verify_sha1_signature};
use crate::xml::{
    Incoming, XmlError, child_text, encrypted_reply_xml, parse_envelope, parse_incoming,
};

/// The query string of a WeCom callback (self-built app or AI bot; GET or
/// POST).
///
/// Every field is optional so that a missing parameter becomes a precise
/// [`CallbackError::MissingParam`] instead of an extractor rejection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct WecomQuery {
    /// `msg_signature`: SHA-1 over `(token, timestamp, nonce, echostr)` on
    /// GET, `(token, timestamp, nonce, Encrypt)` on POST.
    pub msg_signature: Option<String>,
    /// `timestamp`: Unix seconds, as a decimal string.
    pub timestamp: Option<String>,
    /// `nonce`: a random string chosen by WeCom.
    pub nonce: Option<String>,
    /// `echostr`: GET only; the encrypted challenge, **URL-decoded once**
    /// (axum's `Query` and `serde_urlencoded` already do that; do not decode
    /// it again).
    pub echostr: Option<String>,
}

/// A verified, decrypted and parsed self-built app callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WecomMessage {
    /// The message or event. `to_user` is the corpid, `from_user` the
    /// member's userid; events have `MsgType=event` (`subscribe`,
    /// `enter_agent`, `click`, ...).
    pub message: Incoming,
    /// `AgentID` of the decrypted message: the app it was sent to. The
    /// envelope's copy is ignored because `msg_signature` does not cover it.
    /// `None` when the message has none.
    pub agent_id: Option<String>,
}

// === MsgCrypt: the signed-ciphertext checks shared with the AI bot ===

/// Token, key and receive id of one WeCom callback URL: Tencent's
/// `WXBizMsgCrypt` without the XML or JSON around it.
pub(crate) struct MsgCrypt {
    /// The callback "Token"; secret, it keys every signature.
    token: String,
    /// The decoded EncodingAESKey.
    key: AesKey,
    /// The corpid (self-built app) or `""` (AI bot).
    receive_id: String,
    /// Source of the random prefix of encrypted replies.
    rng: SystemRandom,
}

/// The signature parameters of a POST, checked for presence and freshness.
pub(crate) struct SignedQuery<'q> {
    timestamp: &'q str,
    nonce: &'q str,
    msg_signature: &'q str,
}

impl fmt::Debug for MsgCrypt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsgCrypt")
            .field("token", &"<redacted>")
            .field("key", &self.key)
            .field("receive_id", &self.receive_id)
            .finish()
    }
}

impl MsgCrypt {
    /// # Errors
    /// [`CryptoError::InvalidKey`] unless the key is 43 base64 characters.
    pub(crate) fn new(
        token: &str,
        encoding_aes_key: &str,
        receive_id: &str,
    ) -> Result<Self, CryptoError> {
        Ok(Self {
            token: token.to_owned(),
            key: AesKey::from_encoding_aes_key(encoding_aes_key)?,
            receive_id: receive_id.to_owned(),
            rng: SystemRandom::new(),
        })
    }

    /// The receive id messages must carry.
    pub(crate) fn receive_id(&self) -> &str {
        &self.receive_id
    }

    /// URL verification: checks `msg_signature` over the `echostr` and
    /// returns its decrypted content.
    pub(crate) fn verify_url(&self, q: &WecomQuery) -> Result<String, CallbackError> {
        let msg_signature = required(q.msg_signature.as_deref(), "msg_signature")?;
        let timestamp = required(q.timestamp.as_deref(), "timestamp")?;
        let nonce = required(q.nonce.as_deref(), "nonce")?;
        let echostr = required(q.echostr.as_deref(), "echostr")?;
        // base64 has no spaces: a space can only be a `+` that reached a
        // form decoder unescaped. Restoring it is safe (the signature is
        // still checked) and saves a failed verification.
        let echostr = echostr.trim().replace(' ', "+");
        if !verify_sha1_signature(&[&self.token, timestamp, nonce, &echostr], msg_signature) {
            return Err(CallbackError::BadSignature);
        }
        let plain = decrypt_message(&self.key, &echostr, &self.receive_id)?;
        String::from_utf8(plain).map_err(|_| CallbackError::InvalidParam("echostr"))
    }

    /// Checks that the POST's signature parameters are present and that
    /// `timestamp` is within [`MAX_CLOCK_SKEW_SECS`] of `now_unix`.
    pub(crate) fn check_query<'q>(
        q: &'q WecomQuery,
        now_unix: i64,
    ) -> Result<SignedQuery<'q>, CallbackError> {
        let msg_signature = required(q.msg_signature.as_deref(), "msg_signature")?;
        let timestamp = required(q.timestamp.as_deref(), "timestamp")?;
        let nonce = required(q.nonce.as_deref(), "nonce")?;
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| CallbackError::InvalidParam("timestamp"))?;
        if now_unix.abs_diff(ts) > MAX_CLOCK_SKEW_SECS {
            return Err(CallbackError::StaleTimestamp);
        }
        Ok(SignedQuery {
            timestamp,
            nonce,
            msg_signature,
        })
    }

    /// Verifies `msg_signature` over `encrypt`, then decrypts it. The
    /// signature is checked first, so nothing is decrypted for a request
    /// that did not come from WeCom (no padding oracle).
    pub(crate) fn open(
        &self,
        sq: &SignedQuery<'_>,
        encrypt: &str,
    ) -> Result<Vec<u8>, CallbackError> {
        if !verify_sha1_signature(
            &[&self.token, sq.timestamp, sq.nonce, encrypt],
            sq.msg_signature,
        ) {
            return Err(CallbackError::BadSignature);
        }
        Ok(decrypt_message(&self.key, encrypt, &self.receive_id)?)
    }

    /// Encrypts `plaintext` with a fresh random prefix and signs it: returns
    /// `(encrypt, msg_signature)`, or `None` if the OS random source fails.
    pub(crate) fn seal(
        &self,
        plaintext: &[u8],
        nonce: &str,
        timestamp: &str,
    ) -> Option<(String, String)> {
        let mut random = [0u8; 16];
        if self.rng.fill(&mut random).is_err() {
            tracing::error!(
                receive_id = %self.receive_id,
                "OS random source failed; sending an empty reply"
            );
            return None;
        }
        let encrypt = encrypt_message(&self.key, plaintext, &self.receive_id, random);
        let msg_signature = sha1_signature(&[&self.token, timestamp, nonce, &encrypt]);
        Some((encrypt, msg_signature))
    }
}

fn required<'q>(value: Option<&'q str>, name: &'static str) -> Result<&'q str, CallbackError> {
    value.ok_or(CallbackError::MissingParam(name))
}

// === WecomEndpoint ===

/// One WeCom self-built app's callback settings.
pub struct WecomEndpoint {
    crypt: MsgCrypt,
}

impl fmt::Debug for WecomEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WecomEndpoint")
            .field("token", &"<redacted>")
            .field("corp_id", &self.crypt.receive_id())
            .finish_non_exhaustive()
    }
}

impl WecomEndpoint {
    /// Builds an endpoint from the app's callback settings (Token and
    /// EncodingAESKey from the console) and the corpid.
    ///
    /// # Errors
    /// [`CryptoError::InvalidKey`] if `encoding_aes_key` is not 43 base64
    /// characters.
    pub fn new(token: &str, corp_id: &str, encoding_aes_key: &str) -> Result<Self, CryptoError> {
        Ok(Self {
            crypt: MsgCrypt::new(token, encoding_aes_key, corp_id)?,
        })
    }

    /// The corpid messages must be addressed to.
    #[must_use]
    pub fn corp_id(&self) -> &str {
        self.crypt.receive_id()
    }

    /// Answers WeCom's URL verification (GET): checks `msg_signature` over
    /// `(token, timestamp, nonce, echostr)`, decrypts `echostr` (it must be
    /// addressed to this corpid) and returns the plaintext, to be sent back
    /// verbatim as the response body (no quotes, no newline).
    ///
    /// `q.echostr` must be URL-decoded exactly once, as axum's `Query`
    /// gives it. A space in it is read as the `+` it must have been.
    ///
    /// # Errors
    /// [`CallbackError::MissingParam`], [`CallbackError::BadSignature`],
    /// [`CallbackError::Crypto`], or [`CallbackError::InvalidParam`] if the
    /// plaintext is not UTF-8.
    pub fn verify_url(&self, q: &WecomQuery) -> Result<String, CallbackError> {
        self.crypt.verify_url(q)
    }

    /// Opens a pushed message (POST).
    ///
    /// 1. `msg_signature`, `timestamp` and `nonce` must be present, and
    ///    `timestamp` within [`MAX_CLOCK_SKEW_SECS`] of `now_unix`.
    /// 2. The body `<xml><ToUserName/><Encrypt/><AgentID/></xml>` must hold
    ///    an `Encrypt` that matches `msg_signature`.
    /// 3. It must decrypt and be addressed to this corpid.
    /// 4. The decrypted XML is parsed with [`parse_incoming`]; its `AgentID`
    ///    is returned alongside.
    ///
    /// # Errors
    /// Any [`CallbackError`]; nothing about the message can be trusted then.
    pub fn open(
        &self,
        q: &WecomQuery,
        body: &[u8],
        now_unix: i64,
    ) -> Result<WecomMessage, CallbackError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(CallbackError::TooLarge);
        }
        let sq = MsgCrypt::check_query(q, now_unix)?;
        let encrypt = parse_envelope(body)?
            .encrypt
            .ok_or(XmlError::MissingField("Encrypt"))?;
        let plain = self.crypt.open(&sq, &encrypt)?;
        let message = parse_incoming(&plain)?;
        let agent_id = child_text(&plain, "AgentID")?;
        Ok(WecomMessage { message, agent_id })
    }

    /// Encrypts a passive reply (e.g. [`crate::text_reply_xml`]) for this
    /// corpid and wraps it with a fresh `msg_signature` in the reply
    /// envelope. `nonce` and `timestamp` may be the request's own.
    ///
    /// Returns an empty body (WeCom's "no reply") if the OS random source
    /// fails.
    #[must_use]
    pub fn seal(&self, reply_xml: &str, nonce: &str, timestamp: &str) -> String {
        match self.crypt.seal(reply_xml.as_bytes(), nonce, timestamp) {
            Some((encrypt, msg_signature)) => {
                encrypted_reply_xml(&encrypt, &msg_signature, timestamp, nonce)
            }
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{IncomingKind, text_reply_xml};

    const TOKEN: &str = "QDG6eK";
    const CORP_ID: &str = "ww1234567890abcdef";
    const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
    const NOW: i64 = 1_700_000_000;

    fn endpoint() -> WecomEndpoint {
        WecomEndpoint::new(TOKEN, CORP_ID, KEY).unwrap()
    }

    fn text_xml(content: &str) -> String {
        format!(
            "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[zhangsan]]></FromUserName>\
             <CreateTime>{NOW}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
             <Content><![CDATA[{content}]]></Content><MsgId>1234</MsgId><AgentID>1000002</AgentID></xml>"
        )
    }

    /// A POST as WeCom would send it: `inner` encrypted for `receive_id`,
    /// signed with `token`, stamped `ts`.
    fn request(token: &str, receive_id: &str, inner: &str, ts: i64) -> (WecomQuery, String) {
        let key = AesKey::from_encoding_aes_key(KEY).unwrap();
        let encrypt = encrypt_message(&key, inner.as_bytes(), receive_id, *b"0123456789abcdef");
        let ts = ts.to_string();
        let q = WecomQuery {
            msg_signature: Some(sha1_signature(&[token, &ts, "n0nce", &encrypt])),
            timestamp: Some(ts),
            nonce: Some("n0nce".into()),
            echostr: None,
        };
        let body = format!(
            "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt>\
             <AgentID><![CDATA[999]]></AgentID></xml>"
        );
        (q, body)
    }

    #[test]
    fn opens_a_text_message_with_its_agent_id() {
        let (q, body) = request(TOKEN, CORP_ID, &text_xml("你好 <b>&amp;</b>"), NOW);
        let m = endpoint().open(&q, body.as_bytes(), NOW).unwrap();
        assert_eq!(m.message.from_user, "zhangsan");
        assert_eq!(m.message.to_user, CORP_ID);
        assert_eq!(m.message.msg_id, Some(1234));
        assert_eq!(
            m.message.kind,
            IncomingKind::Text {
                content: "你好 <b>&amp;</b>".into()
            }
        );
        // The signed inner AgentID, not the envelope's unsigned 999.
        assert_eq!(m.agent_id.as_deref(), Some("1000002"));
    }

    #[test]
    fn events_and_messages_without_agent_id() {
        let xml = format!(
            "<xml><ToUserName>{CORP_ID}</ToUserName><FromUserName>lisi</FromUserName>\
             <CreateTime>{NOW}</CreateTime><MsgType>event</MsgType><Event>enter_agent</Event>\
             <EventKey></EventKey></xml>"
        );
        let (q, body) = request(TOKEN, CORP_ID, &xml, NOW);
        let m = endpoint().open(&q, body.as_bytes(), NOW).unwrap();
        assert_eq!(m.agent_id, None);
        assert!(matches!(
            m.message.kind,
            IncomingKind::Event { ref event, .. } if event == "enter_agent"
        ));
    }

    #[test]
    fn wrong_corp_id_is_rejected() {
        let (q, body) = request(TOKEN, "ww_other_corp", &text_xml("hi"), NOW);
        assert!(matches!(
            endpoint().open(&q, body.as_bytes(), NOW),
            Err(CallbackError::Crypto(CryptoError::ReceiveId))
        ));
        // The AI bot's empty receive id is not this app's either.
        let (q, body) = request(TOKEN, "", &text_xml("hi"), NOW);
        assert!(matches!(
            endpoint().open(&q, body.as_bytes(), NOW),
            Err(CallbackError::Crypto(CryptoError::ReceiveId))
        ));
    }

    #[test]
    fn forged_signatures_are_rejected() {
        let ep = endpoint();
        let (q, body) = request("other-token", CORP_ID, &text_xml("hi"), NOW);
        assert!(matches!(
            ep.open(&q, body.as_bytes(), NOW),
            Err(CallbackError::BadSignature)
        ));
        let (mut q, body) = request(TOKEN, CORP_ID, &text_xml("hi"), NOW);
        q.msg_signature = Some("0".repeat(40));
        assert!(matches!(
            ep.open(&q, body.as_bytes(), NOW),
            Err(CallbackError::BadSignature)
        ));
        // A nonce changed after signing.
        let (mut q, body) = request(TOKEN, CORP_ID, &text_xml("hi"), NOW);
        q.nonce = Some("other".into());
        assert!(matches!(
            ep.open(&q, body.as_bytes(), NOW),
            Err(CallbackError::BadSignature)
        ));
        // The ciphertext swapped for another validly encrypted one.
        let (q, _) = request(TOKEN, CORP_ID, &text_xml("hi"), NOW);
        let (_, other_body) = request(TOKEN, CORP_ID, &text_xml("evil"), NOW);
        assert!(matches!(
            ep.open(&q, other_body.as_bytes(), NOW),
            Err(CallbackError::BadSignature)
        ));
    }

    #[test]
    fn stale_and_invalid_timestamps_are_rejected() {
        let ep = endpoint();
        for (ts, ok) in [
            (NOW - 300, true),
            (NOW + 300, true),
            (NOW - 301, false),
            (NOW + 301, false),
        ] {
            let (q, body) = request(TOKEN, CORP_ID, &text_xml("hi"), ts);
            let r = ep.open(&q, body.as_bytes(), NOW);
            if ok {
                assert!(r.is_ok(), "{ts}");
            } else {
                assert!(matches!(r, Err(CallbackError::StaleTimestamp)), "{ts}");
            }
        }
        let (mut q, body) = request(TOKEN, CORP_ID, &text_xml("hi"), NOW);
        q.timestamp = Some("soon".into());
        assert!(matches!(
            ep.open(&q, body.as_bytes(), NOW),
            Err(CallbackError::InvalidParam("timestamp"))
        ));
        let (q, body) = request(TOKEN, CORP_ID, &text_xml("hi"), i64::MIN);
        assert!(matches!(
            ep.open(&q, body.as_bytes(), i64::MAX),
            Err(CallbackError::StaleTimestamp)
        ));
    }

    #[test]
    fn missing_parts_and_oversized_bodies() {
        let ep = endpoint();
        let (q, body) = request(TOKEN, CORP_ID, &text_xml("hi"), NOW);
        for (field, name) in [(0, "msg_signature"), (1, "timestamp"), (2, "nonce")] {
            let mut q = q.clone();
            match field {
                0 => q.msg_signature = None,
                1 => q.timestamp = None,
                _ => q.nonce = None,
            }
            assert!(
                matches!(ep.open(&q, body.as_bytes(), NOW), Err(CallbackError::MissingParam(n)) if n == name),
                "{name}"
            );
        }
        assert!(matches!(
            ep.open(&q, b"<xml><ToUserName>x</ToUserName></xml>", NOW),
            Err(CallbackError::Xml(XmlError::MissingField("Encrypt")))
        ));
        assert!(matches!(
            ep.open(&q, &vec![b' '; MAX_BODY_BYTES + 1], NOW),
            Err(CallbackError::TooLarge)
        ));
        assert!(matches!(
            ep.open(&q, b"not xml", NOW),
            Err(CallbackError::Xml(_))
        ));
    }

    #[test]
    fn verify_url_round_trip_and_rejections() {
        let ep = endpoint();
        let key = AesKey::from_encoding_aes_key(KEY).unwrap();
        // A random prefix that makes the ciphertext contain `+`.
        let mut echostr = String::new();
        for seed in 0u8..=255 {
            echostr = encrypt_message(&key, b"8873426598721", CORP_ID, [seed; 16]);
            if echostr.contains('+') {
                break;
            }
        }
        assert!(echostr.contains('+'));
        let q = WecomQuery {
            msg_signature: Some(sha1_signature(&[TOKEN, "1", "n", &echostr])),
            timestamp: Some("1".into()),
            nonce: Some("n".into()),
            echostr: Some(echostr.clone()),
        };
        assert_eq!(ep.verify_url(&q).unwrap(), "8873426598721");
        // `+` turned into a space by a form decoder.
        let mut spaced = q.clone();
        spaced.echostr = Some(echostr.replace('+', " "));
        assert_eq!(ep.verify_url(&spaced).unwrap(), "8873426598721");

        let mut bad = q.clone();
        bad.msg_signature = Some(sha1_signature(&["x", "1", "n", &echostr]));
        assert!(matches!(
            ep.verify_url(&bad),
            Err(CallbackError::BadSignature)
        ));
        let mut bad = q.clone();
        bad.echostr = None;
        assert!(matches!(
            ep.verify_url(&bad),
            Err(CallbackError::MissingParam("echostr"))
        ));
        // Signed, but for another corp.
        let other = encrypt_message(&key, b"1", "ww_other", [1; 16]);
        let q = WecomQuery {
            msg_signature: Some(sha1_signature(&[TOKEN, "1", "n", &other])),
            timestamp: Some("1".into()),
            nonce: Some("n".into()),
            echostr: Some(other),
        };
        assert!(matches!(
            ep.verify_url(&q),
            Err(CallbackError::Crypto(CryptoError::ReceiveId))
        ));
    }

    #[test]
    fn seal_round_trips() {
        let ep = endpoint();
        let reply = text_reply_xml("zhangsan", CORP_ID, NOW, "答案");
        let sealed = ep.seal(&reply, "abc", "1700000001");
        let env = parse_envelope(sealed.as_bytes()).unwrap();
        let encrypt = env.encrypt.unwrap();
        let sig = child_text(sealed.as_bytes(), "MsgSignature")
            .unwrap()
            .unwrap();
        assert!(verify_sha1_signature(
            &[TOKEN, "1700000001", "abc", &encrypt],
            &sig
        ));
        let key = AesKey::from_encoding_aes_key(KEY).unwrap();
        assert_eq!(
            decrypt_message(&key, &encrypt, CORP_ID).unwrap(),
            reply.as_bytes()
        );
        assert_ne!(ep.seal(&reply, "abc", "1700000001"), sealed);
    }

    #[test]
    fn bad_key_and_redacted_debug() {
        assert!(WecomEndpoint::new(TOKEN, CORP_ID, "short").is_err());
        let dbg = format!("{:?}", endpoint());
        assert!(!dbg.contains(TOKEN), "{dbg}");
        assert!(dbg.contains(CORP_ID));
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<WecomEndpoint>();
        assert_send_sync::<WecomMessage>();
    }

    #[test]
    fn query_deserializes() {
        let q: WecomQuery = serde_json::from_value(serde_json::json!({
            "msg_signature": "s", "timestamp": "1", "nonce": "n", "echostr": "e", "extra": 1
        }))
        .unwrap();
        assert_eq!(q.echostr.as_deref(), Some("e"));
        assert_eq!(q.msg_signature.as_deref(), Some("s"));
    }

    /// xorshift64 for the garbage loops.
    fn rng(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    #[test]
    fn signed_garbage_never_panics() {
        use base64::Engine as _;
        let ep = endpoint();
        let key = AesKey::from_encoding_aes_key(KEY).unwrap();
        let mut next = rng(0x0DDB_1A5E_5BAD_5EED);
        let valid = text_xml("hi");
        for round in 0..600 {
            // For round % 3 == 2: how much of the valid message is encrypted.
            let mut cut = 0;
            let encrypt = match round % 3 {
                // Noise as the ciphertext.
                0 => {
                    let len = (next() % 8 * 16) as usize;
                    let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                    base64::engine::general_purpose::STANDARD.encode(bytes)
                }
                // Correctly encrypted noise as the plaintext.
                1 => {
                    let len = (next() % 200) as usize;
                    let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                    encrypt_message(&key, &bytes, CORP_ID, [2; 16])
                }
                // Correctly encrypted truncations of a valid message.
                _ => {
                    cut = (next() as usize) % (valid.len() + 1);
                    encrypt_message(&key, &valid.as_bytes()[..cut], CORP_ID, [3; 16])
                }
            };
            let q = WecomQuery {
                msg_signature: Some(sha1_signature(&[TOKEN, &NOW.to_string(), "n", &encrypt])),
                timestamp: Some(NOW.to_string()),
                nonce: Some("n".into()),
                echostr: Some(encrypt.clone()),
            };
            let body = format!("<xml><Encrypt>{encrypt}</Encrypt></xml>");
            let opened = ep.open(&q, body.as_bytes(), NOW);
            if round % 3 == 2 {
                // Only the whole message parses.
                assert_eq!(opened.is_ok(), cut == valid.len(), "cut {cut}");
            }
            let _ = ep.verify_url(&q);
        }
    }
}
