//! The WeCom AI bot (智能机器人, API mode): its encrypted JSON callback, the
//! stream replies, and the final answer through `response_url`.
//!
//! The crypto and signatures are the self-built app's ([`crate::wecom`])
//! with an **empty** receive id, around JSON instead of XML: the POST body
//! is `{"encrypt":".."}` and a passive reply is
//! `{"encrypt","msgsignature","timestamp","nonce"}`.
//!
//! The flow the daemon drives: a user message arrives
//! ([`AibotKind::Text`]); the daemon answers at once with a
//! [`stream_reply_json`] (`finish: false`) under a stream id of its choice;
//! WeCom then POSTs a refresh ([`AibotKind::StreamRefresh`]) about once a
//! second for up to six minutes, each answered with the whole text so far,
//! until one says `finish: true`. An answer later than that goes to the
//! message's `response_url` with [`post_response_url`].
//!
//! Everything here is pure apart from [`post_response_url`] and the OS
//! random source used by [`AibotEndpoint::seal_json`].

use std::fmt;

use serde_json::{Value, json};

use crate::callback::CallbackError;
use crate::client::{WechatError, api_result, send_limited};
use crate::crypto::CryptoError;
use crate::wecom::{MsgCrypt, WecomQuery};

/// Largest callback body accepted. Callbacks are a few KiB; the bound only
/// limits the work a caller can cause.
pub const MAX_AIBOT_BODY_BYTES: usize = 256 * 1024;

/// Largest `stream.content`, in UTF-8 bytes, that WeCom accepts.
pub const MAX_STREAM_CONTENT_BYTES: usize = 20_480;

/// The receive id of every AI bot message.
const AIBOT_RECEIVE_ID: &str = "";

/// One AI bot's callback settings.
pub struct AibotEndpoint {
    crypt: MsgCrypt,
}

impl fmt::Debug for AibotEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AibotEndpoint")
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A verified, decrypted AI bot callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AibotCallback {
    /// `msgid`: deduplicate on it (WeCom retries unanswered callbacks).
    pub msgid: String,
    /// `aibotid`: the bot's id.
    pub aibotid: Option<String>,
    /// `chatid`: the group chat's id; `None` in a single chat.
    pub chatid: Option<String>,
    /// `chattype`: `single` or `group`.
    pub chattype: Option<String>,
    /// `from.userid`: the member who wrote.
    pub from_userid: Option<String>,
    /// `response_url`: where a late final answer goes (valid for an hour,
    /// usable once); see [`post_response_url`].
    pub response_url: Option<String>,
    /// What was sent.
    pub kind: AibotKind,
}

/// The type-specific part of an [`AibotCallback`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AibotKind {
    /// `msgtype: text`. In a group the text starts with the bot's
    /// @mention; see [`AibotCallback::text_without_mention`].
    Text {
        /// `text.content`, exactly as sent.
        content: String,
    },
    /// `msgtype: voice`.
    Voice {
        /// `voice.content`: WeCom's transcript (empty when missing).
        content: String,
    },
    /// `msgtype: stream`: WeCom asks for the current state of a stream the
    /// daemon started. Answer with [`stream_reply_json`].
    StreamRefresh {
        /// `stream.id`, as chosen by the daemon.
        stream_id: String,
    },
    /// `msgtype: event`.
    Event {
        /// `event.eventtype`: `enter_chat` (a welcome may be answered with
        /// [`text_reply_json`]), `template_card_event`, `feedback_event`,
        /// ...
        eventtype: String,
    },
    /// Any other `msgtype` (`image`, `mixed`, `file`, `video`, ...).
    Other {
        /// The `msgtype` as sent.
        msgtype: String,
    },
}

impl AibotCallback {
    /// True when `chattype` is `group`.
    #[must_use]
    pub fn is_group(&self) -> bool {
        self.chattype.as_deref() == Some("group")
    }

    /// What the user said, ready for the LLM:
    ///
    /// - [`AibotKind::Text`]: the content without one leading @mention
    ///   (`"@Bot hello"` gives `"hello"`) unless the chat is a single chat,
    ///   where an `@` is the user's own text. The mention runs to the first
    ///   whitespace (WeCom separates it with a space or U+2005), so a bot
    ///   name with spaces is cut at its first space. A message that is only
    ///   the mention gives `""`.
    /// - [`AibotKind::Voice`]: the transcript.
    /// - Anything else: `None`.
    #[must_use]
    pub fn text_without_mention(&self) -> Option<String> {
        match &self.kind {
            AibotKind::Text { content } => {
                if self.chattype.as_deref() == Some("single") {
                    return Some(content.clone());
                }
                Some(strip_mention(content).to_owned())
            }
            AibotKind::Voice { content } => Some(content.clone()),
            AibotKind::StreamRefresh { .. } | AibotKind::Event { .. } | AibotKind::Other { .. } => {
                None
            }
        }
    }
}

/// Removes one leading `@name` and the whitespace after it.
fn strip_mention(content: &str) -> &str {
    let trimmed = content.trim_start();
    let Some(after_at) = trimmed.strip_prefix('@') else {
        return content;
    };
    match after_at.find(char::is_whitespace) {
        Some(end) => after_at.get(end..).unwrap_or_default().trim_start(),
        None => "",
    }
}

impl AibotEndpoint {
    /// Builds an endpoint from the bot's callback Token and EncodingAESKey.
    ///
    /// # Errors
    /// [`CryptoError::InvalidKey`] if `encoding_aes_key` is not 43 base64
    /// characters.
    pub fn new(token: &str, encoding_aes_key: &str) -> Result<Self, CryptoError> {
        Ok(Self {
            crypt: MsgCrypt::new(token, encoding_aes_key, AIBOT_RECEIVE_ID)?,
        })
    }

    /// Answers the URL verification (GET) exactly as
    /// [`crate::WecomEndpoint::verify_url`] does, with the empty receive id.
    ///
    /// # Errors
    /// As [`crate::WecomEndpoint::verify_url`].
    pub fn verify_url(&self, q: &WecomQuery) -> Result<String, CallbackError> {
        self.crypt.verify_url(q)
    }

    /// Opens a callback (POST).
    ///
    /// 1. `msg_signature`, `timestamp` and `nonce` must be present, and
    ///    `timestamp` within [`crate::callback::MAX_CLOCK_SKEW_SECS`] of
    ///    `now_unix`.
    /// 2. The body `{"encrypt":".."}` must match `msg_signature`.
    /// 3. It must decrypt, with the empty receive id.
    /// 4. The JSON is parsed with [`parse_aibot_callback`].
    ///
    /// # Errors
    /// Any [`CallbackError`]: [`CallbackError::TooLarge`] over
    /// [`MAX_AIBOT_BODY_BYTES`], [`CallbackError::Json`] for an unusable
    /// body or payload.
    pub fn open(
        &self,
        q: &WecomQuery,
        body: &[u8],
        now_unix: i64,
    ) -> Result<AibotCallback, CallbackError> {
        if body.len() > MAX_AIBOT_BODY_BYTES {
            return Err(CallbackError::TooLarge);
        }
        let sq = MsgCrypt::check_query(q, now_unix)?;
        let outer: Value = serde_json::from_slice(body).map_err(|e| json_error("body", &e))?;
        let encrypt = outer
            .get("encrypt")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .ok_or_else(|| CallbackError::Json("body has no `encrypt` string".into()))?;
        let plain = self.crypt.open(&sq, encrypt)?;
        parse_aibot_callback(&plain)
    }

    /// Encrypts a reply (e.g. [`stream_reply_json`]) and returns the
    /// response body `{"encrypt","msgsignature","timestamp","nonce"}`.
    /// `nonce` and `timestamp` may be the request's own.
    ///
    /// Returns an empty body (no reply) if the OS random source fails.
    #[must_use]
    pub fn seal_json(&self, plaintext_json: &str, nonce: &str, timestamp: &str) -> String {
        match self.crypt.seal(plaintext_json.as_bytes(), nonce, timestamp) {
            Some((encrypt, msg_signature)) => json!({
                "encrypt": encrypt,
                "msgsignature": msg_signature,
                "timestamp": timestamp,
                "nonce": nonce,
            })
            .to_string(),
            None => String::new(),
        }
    }
}

/// Describes a serde_json error by kind and position only: the message of
/// some errors quotes the input, which is user content.
fn json_error(what: &str, e: &serde_json::Error) -> CallbackError {
    CallbackError::Json(format!(
        "{what} is not valid JSON ({:?} at line {}, column {})",
        e.classify(),
        e.line(),
        e.column()
    ))
}

/// A string field, or a number written as a string (ids); `None` when
/// missing, null, empty or of another type.
fn str_field(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    match cur {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses a decrypted AI bot payload. Tolerant: unknown fields are ignored,
/// ids may be strings or numbers, and optional fields of the wrong type
/// count as missing.
///
/// # Errors
/// [`CallbackError::Json`] if the payload is not a JSON object, lacks
/// `msgid` or `msgtype`, or lacks the field its type needs (`text.content`,
/// `stream.id`, `event.eventtype`).
pub fn parse_aibot_callback(json: &[u8]) -> Result<AibotCallback, CallbackError> {
    let v: Value = serde_json::from_slice(json).map_err(|e| json_error("payload", &e))?;
    if !v.is_object() {
        return Err(CallbackError::Json("payload is not a JSON object".into()));
    }
    let missing = |what: &str| CallbackError::Json(format!("payload has no `{what}`"));
    let msgid = str_field(&v, &["msgid"]).ok_or_else(|| missing("msgid"))?;
    let msgtype = str_field(&v, &["msgtype"]).ok_or_else(|| missing("msgtype"))?;
    let kind = match msgtype.as_str() {
        "text" => AibotKind::Text {
            // Content is kept verbatim, so read it without the empty-string
            // filter of `str_field`.
            content: v
                .get("text")
                .and_then(|t| t.get("content"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| missing("text.content"))?,
        },
        "voice" => AibotKind::Voice {
            content: v
                .get("voice")
                .and_then(|t| t.get("content"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        },
        "stream" => AibotKind::StreamRefresh {
            stream_id: str_field(&v, &["stream", "id"]).ok_or_else(|| missing("stream.id"))?,
        },
        "event" => AibotKind::Event {
            eventtype: str_field(&v, &["event", "eventtype"])
                .ok_or_else(|| missing("event.eventtype"))?,
        },
        _ => AibotKind::Other { msgtype },
    };
    Ok(AibotCallback {
        msgid,
        aibotid: str_field(&v, &["aibotid"]),
        chatid: str_field(&v, &["chatid"]),
        chattype: str_field(&v, &["chattype"]),
        from_userid: str_field(&v, &["from", "userid"]),
        response_url: str_field(&v, &["response_url"]),
        kind,
    })
}

/// The longest prefix of `s` of at most `max_bytes` bytes that ends on a
/// char boundary.
pub(crate) fn truncate_utf8(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    // is_char_boundary(0) is true, so this stops.
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// Builds the plaintext of a stream reply:
/// `{"msgtype":"stream","stream":{"id","finish","content"}}`, to be sealed
/// with [`AibotEndpoint::seal_json`].
///
/// `content` is cumulative: the whole answer so far, not the new part.
/// WeCom takes at most [`MAX_STREAM_CONTENT_BYTES`] bytes, so a longer
/// content is cut to its **first** 20480 bytes (at a char boundary): the
/// start of the answer stays stable between refreshes while the end grows
/// out of view. Send what did not fit through [`post_response_url`].
#[must_use]
pub fn stream_reply_json(stream_id: &str, content: &str, finish: bool) -> String {
    json!({
        "msgtype": "stream",
        "stream": {
            "id": stream_id,
            "finish": finish,
            "content": truncate_utf8(content, MAX_STREAM_CONTENT_BYTES),
        },
    })
    .to_string()
}

/// Builds the plaintext of a text reply `{"msgtype":"text","text":{"content"}}`,
/// which WeCom accepts only as the answer to an `enter_chat` event (a
/// welcome). Seal it with [`AibotEndpoint::seal_json`].
#[must_use]
pub fn text_reply_json(content: &str) -> String {
    json!({
        "msgtype": "text",
        "text": { "content": content },
    })
    .to_string()
}

/// POSTs a final answer to a callback's `response_url`, unencrypted, as
/// `{"msgtype":"markdown","markdown":{"content"}}`. The URL is valid for an
/// hour and can be used once.
///
/// # Errors
/// [`WechatError::Http`] if `response_url` is not an `http(s)` URL or the
/// request fails (the URL, which carries a one-time credential, is never in
/// the error); [`WechatError::Api`] for a non-zero `errcode`;
/// [`WechatError::Decode`] for an answer that is not JSON.
pub async fn post_response_url(
    http: &reqwest::Client,
    response_url: &str,
    markdown: &str,
) -> Result<(), WechatError> {
    let url = reqwest::Url::parse(response_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| WechatError::Http("response_url is not an http(s) URL".into()))?;
    let body = json!({
        "msgtype": "markdown",
        "markdown": { "content": markdown },
    });
    let bytes = send_limited(http.post(url).json(&body)).await?;
    api_result(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{AesKey, decrypt_message, encrypt_message};
    use crate::signature::{sha1_signature, verify_sha1_signature};

    const TOKEN: &str = "aibot-token";
    const KEY: &str = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt";
    const NOW: i64 = 1_700_000_000;

    fn endpoint() -> AibotEndpoint {
        AibotEndpoint::new(TOKEN, KEY).unwrap()
    }

    fn key() -> AesKey {
        AesKey::from_encoding_aes_key(KEY).unwrap()
    }

    /// A callback as WeCom would send it: `payload` encrypted with receive
    /// id `receive_id`, signed with `token`.
    fn request_with(token: &str, receive_id: &str, payload: &str) -> (WecomQuery, String) {
        let encrypt = encrypt_message(&key(), payload.as_bytes(), receive_id, *b"fedcba9876543210");
        let ts = NOW.to_string();
        let q = WecomQuery {
            msg_signature: Some(sha1_signature(&[token, &ts, "nonce1", &encrypt])),
            timestamp: Some(ts),
            nonce: Some("nonce1".into()),
            echostr: None,
        };
        (q, json!({ "encrypt": encrypt }).to_string())
    }

    fn request(payload: &str) -> (WecomQuery, String) {
        request_with(TOKEN, "", payload)
    }

    fn open(payload: &str) -> Result<AibotCallback, CallbackError> {
        let (q, body) = request(payload);
        endpoint().open(&q, body.as_bytes(), NOW)
    }

    #[test]
    fn opens_a_group_text_message() {
        let cb = open(
            r#"{"msgid":"CAIQ16HMjQYY","aibotid":"aib123","chatid":"wrkSFfCgAA","chattype":"group",
                "from":{"userid":"zhangsan"},"response_url":"https://qyapi.weixin.qq.com/cgi-bin/aibot/response?response_code=abc",
                "msgtype":"text","text":{"content":"@RobotA 你好 world"},"quote":{"msgtype":"text"}}"#,
        )
        .unwrap();
        assert_eq!(
            cb,
            AibotCallback {
                msgid: "CAIQ16HMjQYY".into(),
                aibotid: Some("aib123".into()),
                chatid: Some("wrkSFfCgAA".into()),
                chattype: Some("group".into()),
                from_userid: Some("zhangsan".into()),
                response_url: Some(
                    "https://qyapi.weixin.qq.com/cgi-bin/aibot/response?response_code=abc".into()
                ),
                kind: AibotKind::Text {
                    content: "@RobotA 你好 world".into()
                },
            }
        );
        assert!(cb.is_group());
        assert_eq!(cb.text_without_mention().as_deref(), Some("你好 world"));
    }

    #[test]
    fn opens_stream_refresh_event_voice_and_unknown_types() {
        let cb = open(
            r#"{"msgid":"m2","aibotid":"aib","chattype":"single","from":{"userid":"u"},
                "msgtype":"stream","stream":{"id":"STREAM123"}}"#,
        )
        .unwrap();
        assert_eq!(
            cb.kind,
            AibotKind::StreamRefresh {
                stream_id: "STREAM123".into()
            }
        );
        assert_eq!(cb.chatid, None);
        assert_eq!(cb.text_without_mention(), None);

        let cb = open(
            r#"{"msgid":"m3","create_time":1700000000,"aibotid":"aib","from":{"corpid":"ww","userid":"u"},
                "msgtype":"event","event":{"eventtype":"enter_chat"}}"#,
        )
        .unwrap();
        assert_eq!(
            cb.kind,
            AibotKind::Event {
                eventtype: "enter_chat".into()
            }
        );

        let cb =
            open(r#"{"msgid":"m4","msgtype":"voice","voice":{"content":"语音转写"}}"#).unwrap();
        assert_eq!(
            cb.kind,
            AibotKind::Voice {
                content: "语音转写".into()
            }
        );
        assert_eq!(cb.text_without_mention().as_deref(), Some("语音转写"));

        for t in ["image", "mixed", "file", "video", "something_new"] {
            let cb = open(&format!(
                r#"{{"msgid":"m5","msgtype":"{t}","{t}":{{"url":"https://x"}}}}"#
            ))
            .unwrap();
            assert_eq!(cb.kind, AibotKind::Other { msgtype: t.into() });
            assert_eq!(cb.text_without_mention(), None);
        }

        // Numeric ids are read as strings.
        let cb = open(r#"{"msgid":12345,"msgtype":"text","text":{"content":""}}"#).unwrap();
        assert_eq!(cb.msgid, "12345");
        assert_eq!(
            cb.kind,
            AibotKind::Text {
                content: String::new()
            }
        );
    }

    #[test]
    fn unusable_payloads_are_json_errors() {
        for payload in [
            "",
            "not json",
            "[1,2]",
            "null",
            r#"{"msgtype":"text","text":{"content":"x"}}"#,
            r#"{"msgid":"m"}"#,
            r#"{"msgid":"m","msgtype":"text"}"#,
            r#"{"msgid":"m","msgtype":"text","text":{"content":5}}"#,
            r#"{"msgid":"m","msgtype":"stream","stream":{}}"#,
            r#"{"msgid":"m","msgtype":"event","event":{"eventtype":""}}"#,
            r#"{"msgid":"","msgtype":"text","text":{"content":"x"}}"#,
        ] {
            assert!(
                matches!(open(payload), Err(CallbackError::Json(_))),
                "{payload:?}"
            );
        }
        // The error never quotes the content.
        let Err(CallbackError::Json(msg)) =
            open(r#"{"msgid":"m","msgtype":"text","text":{"content":"secret-words"}"#)
        else {
            panic!("expected a JSON error");
        };
        assert!(!msg.contains("secret-words"), "{msg}");
    }

    #[test]
    fn rejections_before_decryption() {
        let ep = endpoint();
        let payload = r#"{"msgid":"m","msgtype":"text","text":{"content":"hi"}}"#;
        // Signed with another token.
        let (q, body) = request_with("wrong", "", payload);
        assert!(matches!(
            ep.open(&q, body.as_bytes(), NOW),
            Err(CallbackError::BadSignature)
        ));
        // Encrypted for a corp (the self-built app's receive id), not the bot.
        let (q, body) = request_with(TOKEN, "ww1436e0e65a779aee", payload);
        assert!(matches!(
            ep.open(&q, body.as_bytes(), NOW),
            Err(CallbackError::Crypto(CryptoError::ReceiveId))
        ));
        let (q, body) = request(payload);
        assert!(matches!(
            ep.open(&q, body.as_bytes(), NOW + 301),
            Err(CallbackError::StaleTimestamp)
        ));
        let mut no_sig = q.clone();
        no_sig.msg_signature = None;
        assert!(matches!(
            ep.open(&no_sig, body.as_bytes(), NOW),
            Err(CallbackError::MissingParam("msg_signature"))
        ));
        for bad_body in [
            &b"{}"[..],
            b"{\"encrypt\":5}",
            b"{\"encrypt\":\"\"}",
            b"<xml/>",
        ] {
            assert!(
                matches!(ep.open(&q, bad_body, NOW), Err(CallbackError::Json(_))),
                "{bad_body:?}"
            );
        }
        assert!(matches!(
            ep.open(&q, &vec![b' '; MAX_AIBOT_BODY_BYTES + 1], NOW),
            Err(CallbackError::TooLarge)
        ));
    }

    #[test]
    fn verify_url_uses_the_empty_receive_id() {
        let ep = endpoint();
        let echostr = encrypt_message(&key(), b"42424242", "", [7; 16]);
        let q = WecomQuery {
            msg_signature: Some(sha1_signature(&[TOKEN, "1", "n", &echostr])),
            timestamp: Some("1".into()),
            nonce: Some("n".into()),
            echostr: Some(echostr),
        };
        assert_eq!(ep.verify_url(&q).unwrap(), "42424242");
        let corp = encrypt_message(&key(), b"42424242", "ww_corp", [7; 16]);
        let q = WecomQuery {
            msg_signature: Some(sha1_signature(&[TOKEN, "1", "n", &corp])),
            echostr: Some(corp),
            ..q
        };
        assert!(matches!(
            ep.verify_url(&q),
            Err(CallbackError::Crypto(CryptoError::ReceiveId))
        ));
    }

    #[test]
    fn seal_json_round_trip() {
        let ep = endpoint();
        let plain = stream_reply_json("s1", "部分答案", false);
        let sealed = ep.seal_json(&plain, "nonce9", "1700000009");
        let v: Value = serde_json::from_str(&sealed).unwrap();
        assert_eq!(v["timestamp"], "1700000009");
        assert_eq!(v["nonce"], "nonce9");
        let encrypt = v["encrypt"].as_str().unwrap();
        assert!(verify_sha1_signature(
            &[TOKEN, "1700000009", "nonce9", encrypt],
            v["msgsignature"].as_str().unwrap()
        ));
        let back = decrypt_message(&key(), encrypt, "").unwrap();
        assert_eq!(back, plain.as_bytes());
        assert_eq!(v.as_object().unwrap().len(), 4);
        // What we seal, we (and WeCom) can open.
        let q = WecomQuery {
            msg_signature: v["msgsignature"].as_str().map(str::to_owned),
            timestamp: Some("1700000009".into()),
            nonce: Some("nonce9".into()),
            echostr: None,
        };
        let body = json!({ "encrypt": encrypt }).to_string();
        // The sealed plaintext is a reply, not a callback: it has no msgid.
        assert!(matches!(
            ep.open(&q, body.as_bytes(), 1_700_000_009),
            Err(CallbackError::Json(_))
        ));
    }

    #[test]
    fn stream_reply_shape_and_byte_cap() {
        let v: Value = serde_json::from_str(&stream_reply_json("sid", "1", true)).unwrap();
        assert_eq!(
            v,
            json!({"msgtype":"stream","stream":{"id":"sid","finish":true,"content":"1"}})
        );
        // 20479 ASCII bytes, then a 3-byte CJK char straddling the limit.
        let content = format!("{}中文", "a".repeat(MAX_STREAM_CONTENT_BYTES - 1));
        let v: Value = serde_json::from_str(&stream_reply_json("sid", &content, false)).unwrap();
        let got = v["stream"]["content"].as_str().unwrap();
        assert_eq!(got.len(), MAX_STREAM_CONTENT_BYTES - 1);
        assert!(content.starts_with(got));
        // CJK only: 6826 chars × 3 bytes = 20478 bytes fit, the 6827th does not.
        let cjk = "中".repeat(7000);
        let v: Value = serde_json::from_str(&stream_reply_json("sid", &cjk, false)).unwrap();
        let got = v["stream"]["content"].as_str().unwrap();
        assert_eq!(got.len(), 20_478);
        assert_eq!(got.chars().count(), 6826);
        // Exactly at the limit: untouched.
        let exact = "a".repeat(MAX_STREAM_CONTENT_BYTES);
        let v: Value = serde_json::from_str(&stream_reply_json("sid", &exact, false)).unwrap();
        assert_eq!(v["stream"]["content"].as_str().unwrap(), exact);
        // JSON specials survive.
        let v: Value =
            serde_json::from_str(&stream_reply_json("s\"1", "a\"b\\c\n</x>", false)).unwrap();
        assert_eq!(v["stream"]["id"], "s\"1");
        assert_eq!(v["stream"]["content"], "a\"b\\c\n</x>");
    }

    #[test]
    fn truncate_utf8_edges() {
        assert_eq!(truncate_utf8("", 0), "");
        assert_eq!(truncate_utf8("abc", 0), "");
        assert_eq!(truncate_utf8("abc", 5), "abc");
        assert_eq!(truncate_utf8("中", 2), "");
        assert_eq!(truncate_utf8("a中", 3), "a");
        assert_eq!(truncate_utf8("a中", 4), "a中");
        assert_eq!(truncate_utf8("😀x", 4), "😀");
    }

    #[test]
    fn text_reply_shape() {
        let v: Value = serde_json::from_str(&text_reply_json("欢迎")).unwrap();
        assert_eq!(v, json!({"msgtype":"text","text":{"content":"欢迎"}}));
    }

    fn text_cb(chattype: Option<&str>, content: &str) -> AibotCallback {
        AibotCallback {
            msgid: "m".into(),
            aibotid: None,
            chatid: None,
            chattype: chattype.map(str::to_owned),
            from_userid: None,
            response_url: None,
            kind: AibotKind::Text {
                content: content.into(),
            },
        }
    }

    #[test]
    fn mention_stripping() {
        let g = |c: &str| text_cb(Some("group"), c).text_without_mention().unwrap();
        assert_eq!(g("@RobotA hello"), "hello");
        assert_eq!(g("  @RobotA   hello  "), "hello  ");
        assert_eq!(g("@RobotA\u{2005}你好"), "你好");
        assert_eq!(g("@机器人 问题"), "问题");
        assert_eq!(g("@RobotA"), "");
        // Only one mention is removed.
        assert_eq!(g("@RobotA @lisi look"), "@lisi look");
        // No leading mention: untouched (including an inner @).
        assert_eq!(g("hello @RobotA"), "hello @RobotA");
        assert_eq!(g(" plain "), " plain ");
        assert_eq!(g(""), "");
        assert_eq!(g("@"), "");
        // Unknown chat type: treated like a group.
        assert_eq!(
            text_cb(None, "@Bot hi").text_without_mention().as_deref(),
            Some("hi")
        );
        // A single chat has no mention to strip.
        assert_eq!(
            text_cb(Some("single"), "@home remind me")
                .text_without_mention()
                .as_deref(),
            Some("@home remind me")
        );
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
    fn garbage_never_panics() {
        let mut next = rng(0xA1B0_7C0F_FEE0_0001);
        let valid = r#"{"msgid":"m","aibotid":"a","chatid":"c","chattype":"group","from":{"userid":"u"},"response_url":"https://x/y","msgtype":"text","text":{"content":"@B hi"}}"#;
        let alphabet =
            br#"{}[]":,0123456789.-eE+truefalsnl \ "msgidtypetextcontentstreameventfrom@"#;
        let ep = endpoint();
        for round in 0..3000 {
            let payload: Vec<u8> = match round % 4 {
                // Random bytes.
                0 => (0..(next() % 120)).map(|_| next() as u8).collect(),
                // Random JSON-ish tokens.
                1 => (0..(next() % 160))
                    .map(|_| alphabet[(next() as usize) % alphabet.len()])
                    .collect(),
                // Truncations of a valid payload.
                2 => {
                    let cut = (next() as usize) % (valid.len() + 1);
                    valid.as_bytes()[..cut].to_vec()
                }
                // A valid payload with one byte changed.
                _ => {
                    let mut b = valid.as_bytes().to_vec();
                    let i = (next() as usize) % b.len();
                    b[i] = next() as u8;
                    b
                }
            };
            if let Ok(cb) = parse_aibot_callback(&payload) {
                let _ = cb.text_without_mention();
            }
            // Through the whole endpoint, properly signed, every few rounds.
            if round % 10 == 0 {
                let encrypt = encrypt_message(&key(), &payload, "", [1; 16]);
                let ts = NOW.to_string();
                let q = WecomQuery {
                    msg_signature: Some(sha1_signature(&[TOKEN, &ts, "n", &encrypt])),
                    timestamp: Some(ts),
                    nonce: Some("n".into()),
                    echostr: None,
                };
                let _ = ep.open(
                    &q,
                    json!({ "encrypt": encrypt }).to_string().as_bytes(),
                    NOW,
                );
                let _ = ep.open(&q, &payload, NOW);
            }
        }
        // Deep nesting is refused by serde_json's recursion limit, not by a
        // stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_aibot_callback(deep.as_bytes()).is_err());
    }

    #[test]
    fn debug_is_redacted() {
        let dbg = format!("{:?}", endpoint());
        assert!(!dbg.contains(TOKEN), "{dbg}");
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<AibotEndpoint>();
        assert_send_sync::<AibotCallback>();
    }
}
