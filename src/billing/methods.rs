//! The ways to pay within a channel: WeChat Pay Native (a QR code), JSAPI (inside WeChat's
//! browser, with the payer's openid under the merchant's AppID), H5 (a WeChat page for phone
//! browsers); Alipay precreate (a QR code), WAP and page (a signed redirect to Alipay's
//! cashier). What each asks of the provider is in `provider.rs`.

use std::net::IpAddr;

use chatrelay_storage::{Order, Uid};

use crate::config::Config;
use chatrelay_wechat_pay as wxpay;

/// One way to pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayMethod {
    /// WeChat Pay Native: a QR code to scan with another phone (desktop).
    Native,
    /// WeChat Pay JSAPI: inside WeChat's browser.
    Jsapi,
    /// WeChat Pay H5: a phone browser other than WeChat's.
    H5,
    /// Alipay face-to-face: a QR code.
    Precreate,
    /// Alipay phone website payment (手机网站支付).
    Wap,
    /// Alipay desktop website payment (电脑网站支付).
    Page,
}

impl PayMethod {
    const ALL: [PayMethod; 6] = [
        PayMethod::Native,
        PayMethod::Jsapi,
        PayMethod::H5,
        PayMethod::Precreate,
        PayMethod::Wap,
        PayMethod::Page,
    ];

    /// The name in the API, the configuration and the order.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            PayMethod::Native => "native",
            PayMethod::Jsapi => "jsapi",
            PayMethod::H5 => "h5",
            PayMethod::Precreate => "precreate",
            PayMethod::Wap => "wap",
            PayMethod::Page => "page",
        }
    }

    /// `wechat` or `alipay`.
    #[must_use]
    pub fn channel(self) -> &'static str {
        match self {
            PayMethod::Native | PayMethod::Jsapi | PayMethod::H5 => "wechat",
            PayMethod::Precreate | PayMethod::Wap | PayMethod::Page => "alipay",
        }
    }

    /// The method `name` of `channel`; no name is the channel's QR method (the behaviour
    /// from before methods existed). `None` for a name the channel does not have.
    #[must_use]
    pub fn parse(channel: &str, name: Option<&str>) -> Option<PayMethod> {
        let name = name.unwrap_or(match channel {
            "wechat" => "native",
            _ => "precreate",
        });
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == name && m.channel() == channel)
    }

    /// The method an order was made with (orders from before methods are QR orders).
    #[must_use]
    pub fn of(order: &Order) -> Option<PayMethod> {
        Self::parse(&order.channel, order.method.as_deref())
    }
}

/// Who is paying, as far as a method needs to know.
#[derive(Debug, Clone, Copy)]
pub struct Payer {
    /// The buyer.
    pub uid: Uid,
    /// The buyer's address (H5 sends it to WeChat; through the trusted proxies).
    pub client_ip: IpAddr,
}

/// What the page does to pay an order, by method.
#[derive(Debug)]
pub enum PayAction {
    /// Show this as a QR code (Native, precreate).
    Qr(String),
    /// Call `WeixinJSBridge.invoke('getBrandWCPayRequest', …)` with these (JSAPI).
    Jsapi(wxpay::JsapiParams),
    /// Send the browser here (H5, WAP, page).
    Redirect(String),
}

/// The methods the configuration offers, the Official Accounts bound to the WeChat Pay
/// merchant (their openids pay by JSAPI), and the one of those with web authorization.
pub(super) fn offered(config: &Config) -> (Vec<PayMethod>, Vec<String>, Option<String>) {
    let pay = &config.pay;
    let mut methods = Vec::new();
    let mut jsapi_accounts = Vec::new();
    if let Some(cfg) = &pay.wechat {
        let names = cfg.methods_in_force(&config.wechat_mp);
        methods.extend(
            names
                .iter()
                .filter_map(|m| PayMethod::parse("wechat", Some(m))),
        );
        jsapi_accounts = config
            .wechat_mp
            .iter()
            .filter(|a| a.app_id == cfg.app_id)
            .map(|a| a.id.clone())
            .collect();
    }
    if let Some(cfg) = &pay.alipay {
        let names = cfg.methods_in_force();
        methods.extend(
            names
                .iter()
                .filter_map(|m| PayMethod::parse("alipay", Some(m))),
        );
    }
    let login = config
        .wechat_mp
        .iter()
        .find(|a| a.oauth && jsapi_accounts.contains(&a.id))
        .map(|a| a.id.clone());
    (methods, jsapi_accounts, login)
}

#[cfg(test)]
mod tests {
    use super::PayMethod;

    #[test]
    fn methods_belong_to_their_channel_and_default_to_the_qr_code() {
        assert_eq!(PayMethod::parse("wechat", None), Some(PayMethod::Native));
        assert_eq!(PayMethod::parse("alipay", None), Some(PayMethod::Precreate));
        assert_eq!(
            PayMethod::parse("wechat", Some("jsapi")),
            Some(PayMethod::Jsapi)
        );
        assert_eq!(
            PayMethod::parse("alipay", Some("wap")),
            Some(PayMethod::Wap)
        );
        assert_eq!(PayMethod::parse("alipay", Some("jsapi")), None);
        assert_eq!(PayMethod::parse("wechat", Some("page")), None);
        assert_eq!(PayMethod::parse("paypal", None), None);
        for m in PayMethod::ALL {
            assert_eq!(PayMethod::parse(m.channel(), Some(m.as_str())), Some(m));
        }
    }
}
