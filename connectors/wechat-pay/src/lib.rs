//! WeChat Pay API v3 client for Native (QR code), JSAPI (inside WeChat) and
//! H5 (phone browser) payments, 直连 merchants.
//!
//! # Layout
//!
//! Protocol code is pure (no I/O) so it can be tested byte for byte against
//! public vectors; only [`client`] talks to the network.
//!
//! * [`keys`]: [`MerchantKey`] (request signing), [`PlatformKey`]
//!   (WeChat's public key or certificate), [`ApiV3Key`] (resource AES key).
//! * [`sign`]: the `Authorization: WECHATPAY2-SHA256-RSA2048 …` header.
//! * [`verify`]: [`PlatformKeys`] and signature checks on notifications and
//!   responses (`ts\nnonce\nbody\n` over the raw bytes, 300 s window).
//! * [`decrypt`]: AES-256-GCM resource decryption and
//!   [`open_notification`], the one-call path for the notify endpoint.
//! * [`types`]: [`Transaction`], [`TradeState`], [`NativeOrder`] and input
//!   validation (`out_trade_no`).
//! * [`client`]: [`Client`]: create (Native, JSAPI, H5)/query/close/refund,
//!   signed requests and verified responses.
//! * [`jsapi`]: [`JsapiParams`], the signed page parameters of a JSAPI
//!   payment (`paySign`).
//! * `error`: [`PayError`].
//!
//! Money is integer fen everywhere. Keys and the APIv3 key never appear in
//! `Debug` output or errors.

#![warn(missing_docs)]

mod error;
mod pem;

pub mod client;
pub mod decrypt;
pub mod jsapi;
pub mod keys;
pub mod sign;
pub mod types;
pub mod verify;

pub use client::{CLIENT_USER_AGENT, Client, ClientConfig, DEFAULT_API_BASE};
pub use decrypt::{
    EncryptedResource, MAX_NOTIFY_BODY, Notification, decrypt_resource, open_notification,
};
pub use error::PayError;
pub use jsapi::{JsapiParams, pay_sign_message};
pub use keys::{ApiV3Key, MerchantKey, PlatformKey};
pub use sign::{AUTH_SCHEME, authorization_header, request_message, sign_message};
pub use types::{
    NativeOrder, Payer, TradeState, Transaction, TransactionAmount, validate_out_refund_no,
    validate_out_trade_no,
};
pub use verify::{MAX_CLOCK_SKEW_SECS, NotifyHeaders, PlatformKeys, verify_notification};
