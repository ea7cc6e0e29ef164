//! Page payments: `alipay.trade.wap.pay` (手机网站支付) and
//! `alipay.trade.page.pay` (电脑网站支付) as a signed gateway GET URL.
//!
//! Unlike precreate these are not server-to-server calls: the full
//! parameter set (the common parameters, `notify_url`, `return_url`,
//! `biz_content`) is signed with the app key exactly like a gateway request
//! and the browser is sent to the gateway with it. Nothing here does I/O.
//! `return_url` only brings the user back; crediting still waits for the
//! verified notification or `alipay.trade.query`.

use serde_json::{Map, Value};

use crate::client::{ClientConfig, check_amount, check_text, check_trade_no, common_params};
use crate::error::truncate;
use crate::{AlipayError, AppPrivateKey, amount, form, sign};

/// Longest `return_url` / `quit_url` accepted, in bytes (Alipay's limit).
const MAX_URL_BYTES: usize = 256;

/// Which page payment to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagePayMethod {
    /// `alipay.trade.wap.pay`, product `QUICK_WAP_WAY`: phone browsers.
    Wap,
    /// `alipay.trade.page.pay`, product `FAST_INSTANT_TRADE_PAY`: desktop
    /// browsers.
    Page,
}

impl PagePayMethod {
    /// The gateway `method` parameter.
    #[must_use]
    pub fn api_method(self) -> &'static str {
        match self {
            Self::Wap => "alipay.trade.wap.pay",
            Self::Page => "alipay.trade.page.pay",
        }
    }

    /// The `product_code` of `biz_content`.
    #[must_use]
    pub fn product_code(self) -> &'static str {
        match self {
            Self::Wap => "QUICK_WAP_WAY",
            Self::Page => "FAST_INSTANT_TRADE_PAY",
        }
    }
}

/// One page payment to build a URL for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagePay {
    /// Our order number: 1-64 letters, digits, `_` or `-`.
    pub out_trade_no: String,
    /// Price in fen (0.01 to 100,000,000 yuan); sent as yuan with two
    /// decimals.
    pub amount_fen: i64,
    /// Order title shown in the cashier, 1-256 characters.
    pub subject: String,
    /// Absolute expiry, `yyyy-MM-dd HH:mm:ss` in Beijing time.
    pub time_expire: Option<String>,
    /// Where the browser returns after paying (http or https, at most 256
    /// bytes); a hint to poll, never proof of payment.
    pub return_url: Option<String>,
    /// WAP only: where the cashier's back button leads. Not sent for
    /// [`PagePayMethod::Page`], whose cashier has no such button.
    pub quit_url: Option<String>,
}

/// Builds the signed gateway URL: `{gateway}?{every parameter
/// URL-encoded, sign last}`. `timestamp` is the `timestamp` parameter
/// (`yyyy-MM-dd HH:mm:ss`, Beijing time).
pub(crate) fn page_pay_url(
    cfg: &ClientConfig,
    key: &AppPrivateKey,
    method: PagePayMethod,
    req: &PagePay,
    timestamp: String,
) -> Result<String, AlipayError> {
    let gateway = cfg.gateway.as_str();
    if !(gateway.starts_with("https://") || gateway.starts_with("http://")) || gateway.contains('#')
    {
        return Err(AlipayError::InvalidInput(
            "gateway must be an http(s) URL without a fragment".into(),
        ));
    }
    let biz = biz_content(method, req)?;
    let mut params = common_params(cfg, method.api_method(), &biz, timestamp)?;
    if let Some(url) = &req.return_url {
        check_url("return_url", url)?;
        params.push(("return_url".into(), url.clone()));
    }
    let signature = sign::sign(key, &sign::request_sign_content(&params))?;
    params.push(("sign".into(), signature));
    let sep = if gateway.contains('?') { '&' } else { '?' };
    Ok(format!("{gateway}{sep}{}", form::encode(&params)))
}

/// Validates the request and builds its `biz_content`.
fn biz_content(method: PagePayMethod, req: &PagePay) -> Result<Value, AlipayError> {
    check_trade_no("out_trade_no", &req.out_trade_no)?;
    check_amount(req.amount_fen)?;
    check_text("subject", &req.subject, 256)?;
    let mut biz = Map::new();
    biz.insert("out_trade_no".into(), req.out_trade_no.clone().into());
    biz.insert(
        "total_amount".into(),
        amount::format_yuan(req.amount_fen).into(),
    );
    biz.insert("subject".into(), req.subject.clone().into());
    biz.insert("product_code".into(), method.product_code().into());
    if let Some(t) = &req.time_expire {
        check_time_expire(t)?;
        biz.insert("time_expire".into(), t.clone().into());
    }
    if let (PagePayMethod::Wap, Some(url)) = (method, &req.quit_url) {
        check_url("quit_url", url)?;
        biz.insert("quit_url".into(), url.clone().into());
    }
    Ok(Value::Object(biz))
}

/// `yyyy-MM-dd HH:mm:ss`, a real date and time, nothing more.
fn check_time_expire(t: &str) -> Result<(), AlipayError> {
    const FMT: &str = "%Y-%m-%d %H:%M:%S";
    let exact =
        chrono::NaiveDateTime::parse_from_str(t, FMT).is_ok_and(|d| d.format(FMT).to_string() == t);
    if exact {
        Ok(())
    } else {
        Err(AlipayError::InvalidInput(format!(
            "time_expire `{}` is not yyyy-MM-dd HH:mm:ss",
            truncate(t, 32)
        )))
    }
}

/// An absolute http(s) URL of visible ASCII, at most [`MAX_URL_BYTES`].
fn check_url(name: &str, url: &str) -> Result<(), AlipayError> {
    let host_follows = |rest: &str| !rest.is_empty() && !rest.starts_with('/');
    let ok = url.len() <= MAX_URL_BYTES
        && url.bytes().all(|b| b.is_ascii_graphic())
        && (url.strip_prefix("https://").is_some_and(host_follows)
            || url.strip_prefix("http://").is_some_and(host_follows));
    if ok {
        Ok(())
    } else {
        Err(AlipayError::InvalidInput(format!(
            "{name} must be an http(s) URL of at most {MAX_URL_BYTES} visible ASCII characters"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_expire_shape() {
        check_time_expire("2024-01-01 12:30:00").unwrap();
        for bad in [
            "2024-1-1 12:30:00",
            "2024-01-01T12:30:00",
            "2024-01-01 12:30",
            "2024-02-30 12:30:00",
            "2024-01-01 12:30:00 ",
            "",
        ] {
            assert!(check_time_expire(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn url_checks() {
        check_url("u", "https://chat.example.com/?order=42").unwrap();
        check_url("u", "http://127.0.0.1:8080/").unwrap();
        let long = format!("https://a.example/{}", "x".repeat(256));
        for bad in [
            "",
            "chat.example.com",
            "javascript:alert(1)",
            "https://",
            "https:///path",
            "https://a.example/ x",
            "https://a.example/\n",
            long.as_str(),
        ] {
            assert!(check_url("u", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn methods_and_products() {
        assert_eq!(PagePayMethod::Wap.api_method(), "alipay.trade.wap.pay");
        assert_eq!(PagePayMethod::Wap.product_code(), "QUICK_WAP_WAY");
        assert_eq!(PagePayMethod::Page.api_method(), "alipay.trade.page.pay");
        assert_eq!(PagePayMethod::Page.product_code(), "FAST_INSTANT_TRADE_PAY");
    }
}
