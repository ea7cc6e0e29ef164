//! The HTTP client for the Alipay open API gateway.
//!
//! The only module that does I/O (it also hands out the signed page-payment
//! URLs of [`crate::page`], which need its keys but no I/O). Each call builds the common parameters,
//! signs them with the app private key ([`crate::sign::request_sign_content`]),
//! POSTs them as a form, and hands the raw response text to
//! [`crate::response::open`], which verifies Alipay's signature before any
//! field is read.

use std::sync::Arc;
use std::time::Duration;

use chrono::FixedOffset;
use serde_json::{Map, Value, json};

use crate::error::truncate;
use crate::notify::TradeStatus;
use crate::page::{self, PagePay, PagePayMethod};
use crate::{AlipayError, AlipayPublicKey, AppPrivateKey, amount, form, response, sign};

/// Alipay's production gateway.
pub const DEFAULT_GATEWAY: &str = "https://openapi.alipay.com/gateway.do";

/// Largest gateway response read, in bytes. Real ones are a few KiB; the cap
/// keeps a misbehaving proxy from exhausting memory.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Largest single payment Alipay accepts, in fen (100,000,000 yuan).
const MAX_AMOUNT_FEN: i64 = 10_000_000_000;

/// Gateway connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Gateway URL; [`DEFAULT_GATEWAY`] in production, the sandbox or a fake
    /// server in tests.
    pub gateway: String,
    /// The application's `app_id`.
    pub app_id: String,
    /// Where Alipay POSTs payment notifications for orders created by
    /// [`Client::precreate`] and [`Client::page_pay_url`]; without it, only polling with [`Client::query`]
    /// learns about payments.
    pub notify_url: Option<String>,
    /// Timeout of each whole request (connect, send, receive).
    pub timeout: Duration,
}

impl Default for ClientConfig {
    /// Production gateway, 15 s timeout, no notify URL, empty `app_id` (which
    /// every call rejects until set).
    fn default() -> Self {
        Self {
            gateway: DEFAULT_GATEWAY.to_owned(),
            app_id: String::new(),
            notify_url: None,
            timeout: Duration::from_secs(15),
        }
    }
}

/// Result of [`Client::query`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryResult {
    /// Where the trade stands; only [`TradeStatus::is_paid`] means paid.
    pub trade_status: TradeStatus,
    /// The order's `total_amount` in fen.
    pub total_amount_fen: i64,
    /// Alipay's transaction number.
    pub trade_no: Option<String>,
}

/// An Alipay open API client. Cheap to clone; clones share keys and the
/// HTTP connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// What clones of a [`Client`] share.
struct Inner {
    cfg: ClientConfig,
    app_key: AppPrivateKey,
    alipay_key: AlipayPublicKey,
    http: reqwest::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("gateway", &self.inner.cfg.gateway)
            .field("app_id", &self.inner.cfg.app_id)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Creates a client. `http` is shared so the daemon keeps one connection
    /// pool; per-request timeouts come from `cfg.timeout`.
    #[must_use]
    pub fn new(
        cfg: ClientConfig,
        app_key: AppPrivateKey,
        alipay_key: AlipayPublicKey,
        http: reqwest::Client,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                app_key,
                alipay_key,
                http,
            }),
        }
    }

    /// Creates a face-to-face (QR) order, `alipay.trade.precreate`, and
    /// returns the `qr_code` URL to show the buyer.
    ///
    /// `timeout_express` is Alipay's relative expiry (`"15m"`, `"2h"`,
    /// `"1d"`, `"1c"`); empty leaves it to Alipay's default.
    pub async fn precreate(
        &self,
        out_trade_no: &str,
        total_fen: i64,
        subject: &str,
        timeout_express: &str,
    ) -> Result<String, AlipayError> {
        check_trade_no("out_trade_no", out_trade_no)?;
        check_amount(total_fen)?;
        check_text("subject", subject, 256)?;
        let mut biz = Map::new();
        biz.insert("out_trade_no".into(), out_trade_no.into());
        biz.insert("total_amount".into(), amount::format_yuan(total_fen).into());
        biz.insert("subject".into(), subject.into());
        if !timeout_express.is_empty() {
            check_timeout_express(timeout_express)?;
            biz.insert("timeout_express".into(), timeout_express.into());
        }
        let resp = self
            .call("alipay.trade.precreate", &Value::Object(biz), true)
            .await?;
        check_echoed_trade_no(&resp, out_trade_no)?;
        str_field(&resp, "qr_code")
            .map(str::to_owned)
            .ok_or(AlipayError::MissingParam("qr_code"))
    }

    /// Queries an order, `alipay.trade.query`. An order Alipay has never
    /// seen (not scanned yet) is `AlipayError::Api` with `sub_code`
    /// `ACQ.TRADE_NOT_EXIST`.
    pub async fn query(&self, out_trade_no: &str) -> Result<QueryResult, AlipayError> {
        check_trade_no("out_trade_no", out_trade_no)?;
        let resp = self
            .call(
                "alipay.trade.query",
                &json!({ "out_trade_no": out_trade_no }),
                false,
            )
            .await?;
        check_echoed_trade_no(&resp, out_trade_no)?;
        let status =
            str_field(&resp, "trade_status").ok_or(AlipayError::MissingParam("trade_status"))?;
        let total =
            str_field(&resp, "total_amount").ok_or(AlipayError::MissingParam("total_amount"))?;
        Ok(QueryResult {
            trade_status: TradeStatus::parse(status),
            total_amount_fen: amount::parse_yuan(total)?,
            trade_no: str_field(&resp, "trade_no").map(str::to_owned),
        })
    }

    /// Closes an unpaid order, `alipay.trade.close`, so it can no longer be
    /// paid. Alipay answers `ACQ.TRADE_NOT_EXIST` for an order never scanned
    /// and `ACQ.TRADE_STATUS_ERROR` for one already paid.
    pub async fn close(&self, out_trade_no: &str) -> Result<(), AlipayError> {
        check_trade_no("out_trade_no", out_trade_no)?;
        self.call(
            "alipay.trade.close",
            &json!({ "out_trade_no": out_trade_no }),
            false,
        )
        .await?;
        Ok(())
    }

    /// Refunds (part of) a paid order, `alipay.trade.refund`, and returns the
    /// verified response object (`fund_change`, `refund_fee`, ...).
    ///
    /// `out_request_no` identifies this refund: retrying with the same value
    /// is idempotent, a new value is a new partial refund.
    pub async fn refund(
        &self,
        out_trade_no: &str,
        refund_fen: i64,
        out_request_no: &str,
        reason: &str,
    ) -> Result<Value, AlipayError> {
        check_trade_no("out_trade_no", out_trade_no)?;
        check_trade_no("out_request_no", out_request_no)?;
        check_amount(refund_fen)?;
        let mut biz = Map::new();
        biz.insert("out_trade_no".into(), out_trade_no.into());
        biz.insert(
            "refund_amount".into(),
            amount::format_yuan(refund_fen).into(),
        );
        biz.insert("out_request_no".into(), out_request_no.into());
        if !reason.is_empty() {
            check_text("reason", reason, 256)?;
            biz.insert("refund_reason".into(), reason.into());
        }
        let resp = self
            .call("alipay.trade.refund", &Value::Object(biz), false)
            .await?;
        Ok(Value::Object(resp))
    }

    /// The signed gateway URL of a phone (`Wap`, `alipay.trade.wap.pay`) or
    /// desktop (`Page`, `alipay.trade.page.pay`) website payment, to send
    /// the browser to. Built locally and signed like every request (RSA2
    /// over the sorted parameters, `notify_url` from the config); nothing is
    /// sent. Paying is confirmed only by the notification or [`Self::query`].
    pub fn page_pay_url(
        &self,
        method: PagePayMethod,
        req: &PagePay,
    ) -> Result<String, AlipayError> {
        page::page_pay_url(
            &self.inner.cfg,
            &self.inner.app_key,
            method,
            req,
            beijing_timestamp(),
        )
    }

    /// Signs, sends and verifies one API call; returns the verified
    /// `*_response` object of a `code` 10000 answer.
    async fn call(
        &self,
        method: &'static str,
        biz: &Value,
        with_notify_url: bool,
    ) -> Result<Map<String, Value>, AlipayError> {
        let cfg = &self.inner.cfg;
        let mut params = common_params(cfg, method, biz, beijing_timestamp())?;
        if !with_notify_url {
            // Like python-alipay-sdk, only order-creating calls carry notify_url.
            params.retain(|(k, _)| k != "notify_url");
        }
        let signature = sign::sign(&self.inner.app_key, &sign::request_sign_content(&params))?;
        params.push(("sign".into(), signature));

        tracing::debug!(method, gateway = %cfg.gateway, "alipay request");
        let resp = self
            .inner
            .http
            .post(&cfg.gateway)
            .timeout(cfg.timeout)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded;charset=utf-8",
            )
            .body(form::encode(&params))
            .send()
            .await
            .map_err(http_error)?;
        let status = resp.status();
        let body = read_body(resp).await?;
        let text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            return Err(AlipayError::Http(format!(
                "HTTP {status}: {}",
                truncate(&text, 300)
            )));
        }
        let text = std::str::from_utf8(&body)
            .map_err(|_| AlipayError::decode("response is not UTF-8", &text))?;
        let result = response::open(&self.inner.alipay_key, text, method);
        if let Err(e) = &result {
            tracing::debug!(method, error = %e, "alipay call failed");
        }
        result
    }
}

/// The common parameters of every gateway request (`app_id`, `method`,
/// `format`, `charset`, `sign_type`, `timestamp`, `version`,
/// `biz_content`), plus `notify_url` when one is configured. `sign` is added
/// by the caller after everything else.
pub(crate) fn common_params(
    cfg: &ClientConfig,
    method: &str,
    biz: &Value,
    timestamp: String,
) -> Result<Vec<(String, String)>, AlipayError> {
    if cfg.app_id.is_empty() {
        return Err(AlipayError::InvalidInput("app_id is not configured".into()));
    }
    let mut params: Vec<(String, String)> = vec![
        ("app_id".into(), cfg.app_id.clone()),
        ("method".into(), method.into()),
        ("format".into(), "JSON".into()),
        ("charset".into(), "utf-8".into()),
        ("sign_type".into(), "RSA2".into()),
        ("timestamp".into(), timestamp),
        ("version".into(), "1.0".into()),
        ("biz_content".into(), biz.to_string()),
    ];
    if let Some(url) = cfg.notify_url.as_ref().filter(|u| !u.is_empty()) {
        params.push(("notify_url".into(), url.clone()));
    }
    Ok(params)
}

/// Reads the response body, refusing more than [`MAX_RESPONSE_BYTES`].
async fn read_body(mut resp: reqwest::Response) -> Result<Vec<u8>, AlipayError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(http_error)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(AlipayError::Http(format!(
                "response larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Flattens a reqwest error and its causes into one line (reqwest's own
/// `Display` omits the cause, e.g. "connection refused").
fn http_error(e: reqwest::Error) -> AlipayError {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    AlipayError::Http(msg)
}

/// `timestamp` as the gateway wants it: `yyyy-MM-dd HH:mm:ss` in Beijing
/// time (UTC+8), whatever the host's time zone.
pub(crate) fn beijing_timestamp() -> String {
    const FMT: &str = "%Y-%m-%d %H:%M:%S";
    let now = chrono::Utc::now();
    match FixedOffset::east_opt(8 * 3600) {
        Some(cst) => now.with_timezone(&cst).format(FMT).to_string(),
        // Unreachable (8 h is a valid offset); UTC beats panicking.
        None => now.format(FMT).to_string(),
    }
}

/// A non-empty string field of a verified response.
fn str_field<'a>(resp: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    resp.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Guards against a response for another order (a mixed-up proxy cache or
/// gateway bug): if the response names an order, it must be ours.
fn check_echoed_trade_no(resp: &Map<String, Value>, out_trade_no: &str) -> Result<(), AlipayError> {
    match str_field(resp, "out_trade_no") {
        Some(echoed) if echoed != out_trade_no => Err(AlipayError::InvalidInput(format!(
            "response is for order `{}`, not `{out_trade_no}`",
            truncate(echoed, 64)
        ))),
        _ => Ok(()),
    }
}

/// Alipay order and request numbers: 1..=64 characters of letters, digits
/// and `_` (docs: 仅支持字母、数字、下划线); we also allow `-`.
pub(crate) fn check_trade_no(name: &str, value: &str) -> Result<(), AlipayError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(AlipayError::InvalidInput(format!(
            "{name} must be 1 to 64 letters, digits, `_` or `-`"
        )))
    }
}

/// Non-empty, at most `max_chars` characters.
pub(crate) fn check_text(name: &str, value: &str, max_chars: usize) -> Result<(), AlipayError> {
    if value.is_empty() || value.chars().count() > max_chars {
        return Err(AlipayError::InvalidInput(format!(
            "{name} must be 1 to {max_chars} characters"
        )));
    }
    Ok(())
}

/// Alipay's range for one payment or refund: 0.01 to 100,000,000 yuan.
pub(crate) fn check_amount(fen: i64) -> Result<(), AlipayError> {
    if (1..=MAX_AMOUNT_FEN).contains(&fen) {
        Ok(())
    } else {
        Err(AlipayError::InvalidAmount(format!(
            "{} is outside 0.01..=100000000.00 yuan",
            amount::format_yuan(fen)
        )))
    }
}

/// `timeout_express`: a positive count and a unit (m, h, d, or c = end of
/// the day).
fn check_timeout_express(v: &str) -> Result<(), AlipayError> {
    let ok = v.len() >= 2
        && v.ends_with(['m', 'h', 'd', 'c'])
        && v.get(..v.len() - 1)
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()) && n.bytes().any(|b| b != b'0'));
    if ok {
        Ok(())
    } else {
        Err(AlipayError::InvalidInput(format!(
            "timeout_express `{}` is not like 15m, 2h, 1d or 1c",
            truncate(v, 16)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_shape() {
        let ts = beijing_timestamp();
        assert!(
            chrono::NaiveDateTime::parse_from_str(&ts, "%Y-%m-%d %H:%M:%S").is_ok(),
            "{ts}"
        );
    }

    #[test]
    fn input_checks() {
        assert!(check_trade_no("x", "20150320010101001").is_ok());
        assert!(check_trade_no("x", "a_b-C9").is_ok());
        for bad in ["", "a b", "订单", "a&b=c", &"a".repeat(65)] {
            assert!(check_trade_no("x", bad).is_err(), "{bad}");
        }
        assert!(check_amount(1).is_ok());
        assert!(check_amount(MAX_AMOUNT_FEN).is_ok());
        for bad in [0, -1, MAX_AMOUNT_FEN + 1, i64::MIN] {
            assert!(matches!(
                check_amount(bad),
                Err(AlipayError::InvalidAmount(_))
            ));
        }
        for good in ["15m", "2h", "1d", "1c", "90m"] {
            assert!(check_timeout_express(good).is_ok(), "{good}");
        }
        for bad in ["m", "0m", "15", "15s", "-1m", "1.5h", " 1m", "一h"] {
            assert!(check_timeout_express(bad).is_err(), "{bad}");
        }
        assert!(check_text("s", "你好", 2).is_ok());
        assert!(check_text("s", "你好!", 2).is_err());
        assert!(check_text("s", "", 2).is_err());
    }
}
