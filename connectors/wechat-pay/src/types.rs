//! Wire types of the Native payment APIs and input validation (pure, no I/O).
//!
//! Money is always integer fen (分): WeChat's `amount.total` is an integer
//! and floats would eventually round a price wrong.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::PayError;

/// A WeChat Pay order as returned by the query API or inside a
/// `TRANSACTION.SUCCESS` notification.
///
/// Fields WeChat leaves out for unpaid orders (`transaction_id`,
/// `success_time`, `payer`, ...) are optional; everything we do not model
/// lands in `extra` so nothing is silently lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    /// App id the order was created under; check it is ours.
    pub appid: String,
    /// Merchant id; check it is ours.
    pub mchid: String,
    /// Our order number.
    pub out_trade_no: String,
    /// WeChat's order number, present once paid.
    #[serde(default)]
    pub transaction_id: Option<String>,
    /// The state machine position; see [`TradeState`].
    pub trade_state: TradeState,
    /// Human-readable state description (Chinese).
    #[serde(default)]
    pub trade_state_desc: Option<String>,
    /// RFC 3339 payment time, present once paid.
    #[serde(default)]
    pub success_time: Option<String>,
    /// Amounts in fen; compare `total` with the stored order before crediting.
    #[serde(default)]
    pub amount: Option<TransactionAmount>,
    /// Who paid (an openid only; nothing else is sent for Native).
    #[serde(default)]
    pub payer: Option<Payer>,
    /// Every other field (`trade_type`, `bank_type`, `attach`,
    /// `promotion_detail`, ...).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// `amount` of a [`Transaction`], integer fen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionAmount {
    /// Order total in fen.
    pub total: i64,
    /// What the user actually paid in fen (after coupons).
    #[serde(default)]
    pub payer_total: Option<i64>,
    /// Currency, `CNY`.
    #[serde(default)]
    pub currency: Option<String>,
}

/// `payer` of a [`Transaction`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Payer {
    /// The payer's openid under the order's appid.
    #[serde(default)]
    pub openid: Option<String>,
}

/// `trade_state` of an order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TradeState {
    /// `SUCCESS`: paid.
    Success,
    /// `REFUND`: paid, then a refund was started.
    Refund,
    /// `NOTPAY`: not paid yet; the user can still pay, so not final.
    NotPay,
    /// `CLOSED`: closed, final.
    Closed,
    /// `REVOKED`: revoked (payment-code orders only).
    Revoked,
    /// `USERPAYING`: waiting for the user (payment-code orders only).
    UserPaying,
    /// `PAYERROR`: payment failed (payment-code orders only).
    PayError,
    /// Anything else, kept verbatim so a new state is visible, not dropped.
    Other(String),
}

impl TradeState {
    /// Maps WeChat's exact upper-case strings; unknown ones become
    /// [`TradeState::Other`].
    #[must_use]
    pub fn parse(s: &str) -> Self {
        match s {
            "SUCCESS" => Self::Success,
            "REFUND" => Self::Refund,
            "NOTPAY" => Self::NotPay,
            "CLOSED" => Self::Closed,
            "REVOKED" => Self::Revoked,
            "USERPAYING" => Self::UserPaying,
            "PAYERROR" => Self::PayError,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The wire string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Self::Success => "SUCCESS",
            Self::Refund => "REFUND",
            Self::NotPay => "NOTPAY",
            Self::Closed => "CLOSED",
            Self::Revoked => "REVOKED",
            Self::UserPaying => "USERPAYING",
            Self::PayError => "PAYERROR",
            Self::Other(s) => s,
        }
    }

    /// The money arrived: `SUCCESS`, or `REFUND` (a refund was started
    /// later, but the payment itself happened).
    #[must_use]
    pub fn is_paid(&self) -> bool {
        matches!(self, Self::Success | Self::Refund)
    }

    /// The order can no longer be paid: `CLOSED`, `REVOKED` or `PAYERROR`.
    /// `NOTPAY`/`USERPAYING`/unknown states are not final.
    #[must_use]
    pub fn is_final_unpaid(&self) -> bool {
        matches!(self, Self::Closed | Self::Revoked | Self::PayError)
    }
}

impl fmt::Display for TradeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TradeState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TradeState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Self::parse(&s))
    }
}

/// A Native (QR code) order to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeOrder {
    /// Goods description shown to the payer, 1–127 characters.
    pub description: String,
    /// Our order number; see [`validate_out_trade_no`].
    pub out_trade_no: String,
    /// Price in fen, > 0.
    pub amount_fen: i64,
    /// HTTPS URL for the payment notification, without query string.
    pub notify_url: String,
    /// When the QR code stops working; sent as RFC 3339 with offset.
    pub time_expire: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// Opaque data echoed back in query and notification, ≤ 128 characters.
    pub attach: Option<String>,
}

impl NativeOrder {
    /// Checks the constraints WeChat documents, so a bad order fails here
    /// with a clear message instead of as a `PARAM_ERROR` round trip.
    pub fn validate(&self) -> Result<(), PayError> {
        validate_out_trade_no(&self.out_trade_no)?;
        let desc_len = self.description.chars().count();
        if desc_len == 0 || desc_len > 127 {
            return Err(PayError::InvalidInput(
                "description must be 1-127 characters".into(),
            ));
        }
        if self.amount_fen <= 0 || self.amount_fen > i64::from(i32::MAX) {
            return Err(PayError::InvalidInput(format!(
                "amount_fen must be positive (and fit WeChat's int), got {}",
                self.amount_fen
            )));
        }
        validate_notify_url(&self.notify_url)?;
        if self
            .attach
            .as_ref()
            .is_some_and(|a| a.chars().count() > 128)
        {
            return Err(PayError::InvalidInput(
                "attach must be at most 128 characters".into(),
            ));
        }
        Ok(())
    }
}

/// `notify_url` must be HTTPS, reachable, and must not carry a query string
/// (WeChat drops/rejects it).
fn validate_notify_url(url: &str) -> Result<(), PayError> {
    let ok = url.len() <= 256
        && url
            .strip_prefix("https://")
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        && url.bytes().all(|b| b.is_ascii_graphic())
        && !url.contains(['?', '#']);
    if ok {
        Ok(())
    } else {
        Err(PayError::InvalidInput(
            "notify_url must be an https:// URL without query or fragment".into(),
        ))
    }
}

/// Characters WeChat allows in `out_trade_no` (and we allow in URL paths).
fn is_order_no_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'|' | b'*')
}

/// Checks an `out_trade_no`: 6–32 characters of `[0-9A-Za-z_-|*]`.
///
/// This is also what makes it safe to put into a URL path: none of those
/// characters needs percent-encoding or can change the path structure.
pub fn validate_out_trade_no(no: &str) -> Result<(), PayError> {
    if (6..=32).contains(&no.len()) && no.bytes().all(is_order_no_char) {
        Ok(())
    } else {
        Err(PayError::InvalidInput(
            "out_trade_no must be 6-32 characters of [0-9A-Za-z_-|*]".into(),
        ))
    }
}

/// Checks an `out_refund_no`: 1–64 characters of `[0-9A-Za-z_-|*@]`.
pub fn validate_out_refund_no(no: &str) -> Result<(), PayError> {
    if (1..=64).contains(&no.len()) && no.bytes().all(|b| is_order_no_char(b) || b == b'@') {
        Ok(())
    } else {
        Err(PayError::InvalidInput(
            "out_refund_no must be 1-64 characters of [0-9A-Za-z_-|*@]".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trade_state_parsing_including_unknown() {
        let cases = [
            ("SUCCESS", TradeState::Success),
            ("REFUND", TradeState::Refund),
            ("NOTPAY", TradeState::NotPay),
            ("CLOSED", TradeState::Closed),
            ("REVOKED", TradeState::Revoked),
            ("USERPAYING", TradeState::UserPaying),
            ("PAYERROR", TradeState::PayError),
        ];
        for (s, want) in cases {
            let got: TradeState = serde_json::from_str(&format!("\"{s}\"")).unwrap();
            assert_eq!(got, want);
            assert_eq!(serde_json::to_string(&got).unwrap(), format!("\"{s}\""));
        }
        // Case matters and unknown values are kept.
        assert_eq!(
            TradeState::parse("success"),
            TradeState::Other("success".into())
        );
        let got: TradeState = serde_json::from_str("\"FROZEN\"").unwrap();
        assert_eq!(got, TradeState::Other("FROZEN".into()));
        assert_eq!(got.to_string(), "FROZEN");
        assert!(!got.is_paid() && !got.is_final_unpaid());

        assert!(TradeState::Success.is_paid() && TradeState::Refund.is_paid());
        assert!(!TradeState::NotPay.is_paid() && !TradeState::NotPay.is_final_unpaid());
        assert!(!TradeState::UserPaying.is_final_unpaid());
        for s in [
            TradeState::Closed,
            TradeState::Revoked,
            TradeState::PayError,
        ] {
            assert!(s.is_final_unpaid() && !s.is_paid());
        }
    }

    #[test]
    fn transaction_success_parses_with_extras() {
        let json = r#"{"amount":{"currency":"CNY","payer_currency":"CNY","payer_total":1,"total":1},
            "appid":"wxd678efh567hg6787","attach":"custom","bank_type":"OTHERS","mchid":"1230000109",
            "out_trade_no":"1217752501201407033233368018","payer":{"openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
            "promotion_detail":[],"success_time":"2018-06-08T10:34:56+08:00","trade_state":"SUCCESS",
            "trade_state_desc":"支付成功","trade_type":"NATIVE","transaction_id":"1217752501201407033233368018"}"#;
        let t: Transaction = serde_json::from_str(json).unwrap();
        assert_eq!(t.trade_state, TradeState::Success);
        assert_eq!(t.amount.as_ref().unwrap().total, 1);
        assert_eq!(t.amount.as_ref().unwrap().payer_total, Some(1));
        assert_eq!(
            t.payer.as_ref().unwrap().openid.as_deref(),
            Some("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")
        );
        assert_eq!(t.extra["trade_type"], "NATIVE");
        assert_eq!(t.extra["attach"], "custom");
        assert!(!t.extra.contains_key("appid"));
    }

    #[test]
    fn transaction_notpay_omits_fields() {
        let json = r#"{"appid":"wx1","mchid":"1900","out_trade_no":"ORDER_0001","trade_state":"NOTPAY",
            "trade_state_desc":"订单未支付","amount":{"total":100,"currency":"CNY"}}"#;
        let t: Transaction = serde_json::from_str(json).unwrap();
        assert_eq!(t.trade_state, TradeState::NotPay);
        assert!(t.transaction_id.is_none() && t.payer.is_none() && t.success_time.is_none());
        // Fractional amounts are not fen.
        let bad = json.replace("\"total\":100", "\"total\":1.5");
        assert!(serde_json::from_str::<Transaction>(&bad).is_err());
        // trade_state is mandatory.
        let bad = json.replace("\"trade_state\":\"NOTPAY\",", "");
        assert!(serde_json::from_str::<Transaction>(&bad).is_err());
    }

    #[test]
    fn out_trade_no_validation() {
        for ok in ["123456", "ORDER_2024-01|a*b", &"x".repeat(32)] {
            validate_out_trade_no(ok).unwrap();
        }
        for bad in [
            "",
            "12345",
            &"x".repeat(33),
            "order/../../v3",
            "order?mchid=1",
            "order 0001",
            "order%2F001",
            "订单号00001",
            "order#00001",
            "order.0001",
            "abc\n12345",
        ] {
            assert!(
                matches!(validate_out_trade_no(bad), Err(PayError::InvalidInput(_))),
                "{bad:?}"
            );
        }
        validate_out_refund_no("R@1").unwrap();
        assert!(validate_out_refund_no("").is_err());
        assert!(validate_out_refund_no("R/1").is_err());
        assert!(validate_out_refund_no(&"r".repeat(65)).is_err());
    }

    #[test]
    fn native_order_validation() {
        let good = NativeOrder {
            description: "100 credits".into(),
            out_trade_no: "CR20240101000001".into(),
            amount_fen: 990,
            notify_url: "https://pay.example.com/wxpay/notify".into(),
            time_expire: None,
            attach: None,
        };
        good.validate().unwrap();
        let variants: Vec<fn(&mut NativeOrder)> = vec![
            |o| o.amount_fen = 0,
            |o| o.amount_fen = -1,
            |o| o.amount_fen = i64::from(i32::MAX) + 1,
            |o| o.description.clear(),
            |o| o.description = "x".repeat(128),
            |o| o.notify_url = "http://pay.example.com/n".into(),
            |o| o.notify_url = "https://pay.example.com/n?a=1".into(),
            |o| o.notify_url = "https://".into(),
            |o| o.attach = Some("a".repeat(129)),
            |o| o.out_trade_no = "bad/no".into(),
        ];
        for (i, f) in variants.iter().enumerate() {
            let mut o = good.clone();
            f(&mut o);
            assert!(
                matches!(o.validate(), Err(PayError::InvalidInput(_))),
                "variant {i}"
            );
        }
    }
}
