//! WeChat Official Account (公众号) and WeCom (企业微信) protocols for
//! chatrelay.
//!
//! This crate owns everything the daemon says to and hears from WeChat for an
//! Official Account, and from WeCom for a self-built app, an AI bot and a
//! group robot: callback signatures, the safe-mode message crypto (also
//! used by WeCom), the message XML, the whole callback check, and the HTTP
//! API for access tokens and customer-service messages. It knows nothing
//! about users, quotas or LLMs, and nothing about axum: the daemon's handler
//! hands it the query string and raw body.
//!
//! # Layout
//!
//! Pure protocol code, no I/O:
//! - [`signature`]: `sha1(sort(parts))` signatures and their constant-time check.
//! - [`crypto`]: AES-256-CBC with 32-byte PKCS#7 padding and Tencent's framing;
//!   [`AesKey`] from the 43-character EncodingAESKey.
//! - [`xml`]: tolerant parsing of incoming messages and the safe-mode envelope;
//!   passive reply XML.
//! - [`callback`]: [`MpEndpoint`]: URL verification, opening a pushed message
//!   (signature, replay window, decryption with key rotation) and sealing the
//!   reply in the same mode.
//! - [`wecom`]: [`WecomEndpoint`]: the WeCom (企业微信) self-built app
//!   callback (encrypted `echostr` verification, opening a pushed message
//!   with its `AgentID`, sealing a passive reply); receive id = corpid.
//! - [`aibot`]: [`AibotEndpoint`]: the WeCom AI bot (智能机器人) JSON
//!   callback (receive id `""`), its stream and welcome replies; plus
//!   [`post_response_url`] for late answers.
//!
//! I/O:
//! - [`client`]: [`MpClient`]: the stable access_token cache (single flight,
//!   early refresh, refetch on 40001/40014/42001), `message/custom/send` and
//!   `message/custom/typing`. Its token cache and HTTP helpers serve the
//!   WeCom clients too.
//! - [`media`]: `media/get`, a voice message's audio (size-limited).
//! - [`oauth`]: web authorization (网页授权): [`oauth_authorize_url`],
//!   [`MpClient::oauth_exchange`] (code → openid) and
//!   [`MpClient::oauth_user_info`]; its per-user token never touches the
//!   account's token cache.
//! - [`wecom_client`]: [`WecomClient`]: WeCom's `gettoken` with the same
//!   cache, and app messages (`message/send`, text and markdown).
//! - [`robot`]: [`RobotClient`]: a WeCom group robot webhook for operator
//!   alerts (text and markdown, 20 messages per minute enforced locally).
//!
//! # Example
//!
//! ```
//! use chatrelay_wechat::{CallbackQuery, MpEndpoint, sha1_signature, text_reply_xml};
//!
//! let ep = MpEndpoint::new("token", "wx0123456789abcdef", None, None).unwrap();
//! let q = CallbackQuery {
//!     signature: Some(sha1_signature(&["token", "1700000000", "n"])),
//!     timestamp: Some("1700000000".into()),
//!     nonce: Some("n".into()),
//!     ..CallbackQuery::default()
//! };
//! let body = b"<xml><ToUserName>gh_1</ToUserName><FromUserName>o_1</FromUserName>\
//!     <CreateTime>1700000000</CreateTime><MsgType>text</MsgType><Content>hi</Content>\
//!     <MsgId>1</MsgId></xml>";
//! let opened = ep.open(&q, body, 1_700_000_010).unwrap();
//! let m = &opened.message;
//! let reply = text_reply_xml(&m.from_user, &m.to_user, 1_700_000_011, "hello");
//! let response_body = ep.seal(&opened, &reply, "n", "1700000011");
//! assert_eq!(response_body, reply); // plaintext mode: sent as is
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod aibot;
pub mod callback;
pub mod client;
pub mod crypto;
pub mod media;
pub mod oauth;
pub mod robot;
pub mod signature;
pub mod wecom;
pub mod wecom_client;
pub mod xml;

pub use aibot::{
    AibotCallback, AibotEndpoint, AibotKind, MAX_AIBOT_BODY_BYTES, MAX_STREAM_CONTENT_BYTES,
    parse_aibot_callback, post_response_url, stream_reply_json, text_reply_json,
};
pub use callback::{CallbackError, CallbackQuery, Delivery, MpEndpoint, Opened, ReplyMode};
pub use client::{DEFAULT_API_BASE, MpClient, WechatError};
pub use crypto::{AesKey, CryptoError, decrypt_message, encrypt_message};
pub use media::{Media, MediaError, MediaVoice};
pub use oauth::{OAuthToken, OAuthUserInfo, oauth_authorize_url};
pub use robot::RobotClient;
pub use signature::{sha1_signature, verify_sha1_signature};
pub use wecom::{WecomEndpoint, WecomMessage, WecomQuery};
pub use wecom_client::{WECOM_API_BASE, WecomClient};
pub use xml::{
    Envelope, Incoming, IncomingKind, XmlError, encrypted_reply_xml, parse_envelope,
    parse_incoming, text_reply_xml,
};
