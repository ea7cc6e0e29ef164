//! Alipay (支付宝) open API client for chatrelay: face-to-face QR payments
//! (`alipay.trade.precreate`), phone and desktop website payments
//! (`alipay.trade.wap.pay`, `alipay.trade.page.pay`), query, close and refund, and verification of
//! the asynchronous payment notifications.
//!
//! Everything Alipay sends is checked with RSA2 (SHA256withRSA) against
//! Alipay's public key before it is believed; money is integer fen, parsed
//! exactly from Alipay's decimal yuan strings, never floating point.
//!
//! # Layout
//!
//! Pure protocol code, no I/O:
//! - [`amount`]: `"12.34"` yuan ⇄ `1234` fen.
//! - [`form`]: strict `application/x-www-form-urlencoded` encoding/decoding.
//! - [`sign`]: the canonical `k=v&...` strings, RSA2 sign and verify.
//! - [`page`]: the signed gateway URL of WAP and page payments
//!   ([`PagePay`], [`PagePayMethod`]).
//! - [`notify`]: parsing and verifying payment notifications.
//! - [`response`]: locating the exact signed text of a gateway response,
//!   verifying it, and mapping error codes.
//! - `keys`: [`AppPrivateKey`] and [`AlipayPublicKey`] loading (PEM or bare
//!   base64).
//! - `error`: [`AlipayError`].
//!
//! I/O:
//! - `client`: [`Client`], the gateway calls.
//!
//! # Handling a notification
//!
//! ```no_run
//! use chatrelay_alipay::{AlipayPublicKey, notify};
//!
//! # fn handle(body: &[u8], alipay_key: &AlipayPublicKey) -> Result<&'static str, chatrelay_alipay::AlipayError> {
//! let n = notify::verify_notification(alipay_key, body)?;
//! // Compare n.app_id, n.out_trade_no, n.total_amount_fen, n.seller_id with
//! // the stored order; credit once if n.trade_status.is_paid().
//! Ok(notify::SUCCESS_REPLY)
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod amount;
mod client;
mod error;
pub mod form;
mod keys;
pub mod notify;
pub mod page;
pub mod response;
pub mod sign;

pub use amount::{format_yuan, parse_yuan};
pub use client::{Client, ClientConfig, DEFAULT_GATEWAY, QueryResult};
pub use error::AlipayError;
pub use keys::{AlipayPublicKey, AppPrivateKey};
pub use notify::{Notification, TradeStatus, parse_form, verify_notification};
pub use page::{PagePay, PagePayMethod};
pub use sign::{request_sign_content, sign, sign_content, verify};
