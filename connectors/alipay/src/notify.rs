//! Alipay asynchronous payment notifications (异步通知).
//!
//! Alipay POSTs `application/x-www-form-urlencoded` to the `notify_url`
//! given at order creation. Anyone can POST there, so the body is hostile
//! until its RSA2 signature (Java `rsaCheckV1` rule, see [`crate::sign`])
//! verifies with Alipay's public key; only then are fields read.
//!
//! After [`verify_notification`] succeeds the caller must still check that
//! `app_id`, `out_trade_no`, `total_amount_fen` and `seller_id` match its own
//! records, treat only [`TradeStatus::is_paid`] as paid, process idempotently
//! (Alipay retries), and answer with the plain body [`SUCCESS_REPLY`].

use crate::{AlipayError, AlipayPublicKey, amount, form, sign};

/// Largest notification body accepted. Real notifies are a few KiB; the cap
/// bounds the work an anonymous POST can cause.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The exact body to answer a handled notification with (7 bytes, no
/// newline); anything else makes Alipay retry for about 25 hours.
pub const SUCCESS_REPLY: &str = "success";

/// Decodes a notification body into `(key, value)` pairs in body order.
///
/// Strict `application/x-www-form-urlencoded`: `+` is a space, `%XX` a
/// byte, values must be UTF-8. Bodies over [`MAX_BODY_BYTES`] are
/// [`AlipayError::TooLarge`]; malformed escapes, invalid UTF-8, empty or
/// duplicate keys are [`AlipayError::Form`]. Does not check the signature.
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, AlipayError> {
    check_size(body)?;
    form::decode(body)
}

/// Parses and verifies a notification, then extracts the fields.
///
/// Order matters: size, form syntax, `charset` (only UTF-8, or absent),
/// `sign_type` (only `RSA2`, or absent), signature — and only then are the
/// business fields read. Errors: [`AlipayError::TooLarge`],
/// [`AlipayError::Form`], [`AlipayError::UnsupportedCharset`],
/// [`AlipayError::MissingParam`] (`sign`, or a required field),
/// [`AlipayError::BadSignature`], [`AlipayError::InvalidAmount`],
/// [`AlipayError::InvalidInput`] (unsupported `sign_type`).
pub fn verify_notification(
    key: &AlipayPublicKey,
    body: &[u8],
) -> Result<Notification, AlipayError> {
    check_size(body)?;
    let raw = form::decode_bytes(body)?;
    // Look at `charset` before insisting on UTF-8, so a GBK notify is
    // reported as such instead of as "invalid UTF-8".
    if let Some((_, cs)) = raw.iter().find(|(k, _)| k == b"charset") {
        let cs_text = String::from_utf8_lossy(cs);
        if !(cs_text.eq_ignore_ascii_case("utf-8") || cs_text.eq_ignore_ascii_case("utf8")) {
            return Err(AlipayError::UnsupportedCharset(
                crate::error::truncate(&cs_text, 32).to_owned(),
            ));
        }
    }
    let params = raw
        .into_iter()
        .map(form::pair_to_utf8)
        .collect::<Result<Vec<_>, _>>()?;
    let signature = get(&params, "sign").ok_or(AlipayError::MissingParam("sign"))?;
    if let Some(t) = get(&params, "sign_type")
        && t != "RSA2"
    {
        // RSA (SHA1) is deprecated and we only hold an RSA2 key setup.
        return Err(AlipayError::InvalidInput(format!(
            "unsupported sign_type `{}`",
            crate::error::truncate(t, 16)
        )));
    }
    sign::verify(key, &sign::sign_content(&params), signature)?;

    // Trusted from here on.
    let required = |name: &'static str| {
        get(&params, name)
            .map(str::to_owned)
            .ok_or(AlipayError::MissingParam(name))
    };
    let optional = |name: &str| get(&params, name).map(str::to_owned);
    let total_amount =
        get(&params, "total_amount").ok_or(AlipayError::MissingParam("total_amount"))?;
    Ok(Notification {
        app_id: required("app_id")?,
        out_trade_no: required("out_trade_no")?,
        trade_no: optional("trade_no"),
        trade_status: TradeStatus::parse(&required("trade_status")?),
        total_amount_fen: amount::parse_yuan(total_amount)?,
        seller_id: optional("seller_id"),
        notify_id: optional("notify_id"),
        gmt_payment: optional("gmt_payment"),
        params,
    })
}

/// A verified payment notification.
///
/// Every field comes from a signed body, but the caller must still compare
/// `app_id`, `out_trade_no`, `total_amount_fen` and `seller_id` with its own
/// order before crediting anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The app the payment belongs to; must be ours.
    pub app_id: String,
    /// Our order number, as sent in precreate.
    pub out_trade_no: String,
    /// Alipay's transaction number.
    pub trade_no: Option<String>,
    /// Where the trade stands; only [`TradeStatus::is_paid`] means paid.
    pub trade_status: TradeStatus,
    /// `total_amount` (the order amount) in fen, parsed exactly.
    pub total_amount_fen: i64,
    /// The merchant's Alipay user id (2088...); should be ours.
    pub seller_id: Option<String>,
    /// Notification id, stable across Alipay's retries of one notification.
    pub notify_id: Option<String>,
    /// Payment time, `yyyy-MM-dd HH:mm:ss` Beijing time, as sent.
    pub gmt_payment: Option<String>,
    /// All decoded parameters in body order, `sign` included, for auditing
    /// and for fields not lifted into this struct.
    pub params: Vec<(String, String)>,
}

/// `trade_status` of an Alipay trade.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TradeStatus {
    /// `WAIT_BUYER_PAY`: created, not paid yet.
    WaitBuyerPay,
    /// `TRADE_CLOSED`: timed out unpaid, or fully refunded.
    TradeClosed,
    /// `TRADE_SUCCESS`: paid, still refundable.
    TradeSuccess,
    /// `TRADE_FINISHED`: paid, no longer refundable (may follow
    /// `TRADE_SUCCESS`).
    TradeFinished,
    /// A value this crate does not know; never treated as paid.
    Other(String),
}

impl TradeStatus {
    /// Maps Alipay's wire value; unknown values become [`TradeStatus::Other`].
    #[must_use]
    pub fn parse(s: &str) -> Self {
        match s {
            "WAIT_BUYER_PAY" => Self::WaitBuyerPay,
            "TRADE_CLOSED" => Self::TradeClosed,
            "TRADE_SUCCESS" => Self::TradeSuccess,
            "TRADE_FINISHED" => Self::TradeFinished,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The wire value.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Self::WaitBuyerPay => "WAIT_BUYER_PAY",
            Self::TradeClosed => "TRADE_CLOSED",
            Self::TradeSuccess => "TRADE_SUCCESS",
            Self::TradeFinished => "TRADE_FINISHED",
            Self::Other(s) => s,
        }
    }

    /// Whether the buyer has paid: `TRADE_SUCCESS` or `TRADE_FINISHED`.
    #[must_use]
    pub fn is_paid(&self) -> bool {
        matches!(self, Self::TradeSuccess | Self::TradeFinished)
    }
}

impl std::fmt::Display for TradeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rejects bodies over [`MAX_BODY_BYTES`].
fn check_size(body: &[u8]) -> Result<(), AlipayError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(AlipayError::TooLarge);
    }
    Ok(())
}

/// The non-empty value of `name`. Empty counts as absent, as in signing:
/// an empty value is not covered by the signature's content string.
fn get<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AppPrivateKey;

    const ALIPAY_PRIVATE: &str = include_str!("../testdata/alipay_private_pkcs8.pem");
    const ALIPAY_PUBLIC: &str = include_str!("../testdata/alipay_public.b64");
    const APP_PRIVATE: &str = include_str!("../testdata/app_private_pkcs1.pem");
    const APP_PUBLIC: &str = include_str!("../testdata/app_public.pem");

    /// The docs' sample notify fields (with an empty `passback_params`).
    fn sample_params() -> Vec<(String, String)> {
        [
            ("gmt_create", "2015-04-27 15:45:57"),
            ("charset", "utf-8"),
            ("seller_email", "zen_gwen@hotmail.com"),
            ("subject", "当面付 & =测试"),
            ("buyer_id", "2088102122524333"),
            ("invoice_amount", "88.88"),
            ("notify_id", "4a91b7a78a503640467525113fb7d8bg8e"),
            (
                "fund_bill_list",
                r#"[{"amount":"88.88","fundChannel":"ALIPAYACCOUNT"}]"#,
            ),
            ("notify_type", "trade_status_sync"),
            ("trade_status", "TRADE_SUCCESS"),
            ("receipt_amount", "88.88"),
            ("app_id", "2014072300007148"),
            ("buyer_pay_amount", "88.88"),
            ("seller_id", "2088102119685838"),
            ("gmt_payment", "2015-04-27 15:45:57"),
            ("notify_time", "2015-04-27 15:45:58"),
            ("passback_params", ""),
            ("version", "1.0"),
            ("out_trade_no", "20150423001001"),
            ("total_amount", "88.88"),
            ("trade_no", "2015042321001004720200028594"),
            ("auth_app_id", "2014072300007148"),
            ("buyer_logon_id", "csq***@sandbox.com"),
            ("point_amount", "0.00"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }

    /// Signs `params` as Alipay would and returns the form body.
    fn signed_body(params: &[(String, String)], key_pem: &str) -> Vec<u8> {
        let key = AppPrivateKey::from_pem_or_base64(key_pem).unwrap();
        let sig = sign::sign(&key, &sign::sign_content(params)).unwrap();
        let mut all = params.to_vec();
        all.push(("sign".into(), sig));
        all.push(("sign_type".into(), "RSA2".into()));
        form::encode(&all).into_bytes()
    }

    fn alipay_key() -> AlipayPublicKey {
        AlipayPublicKey::from_pem_or_base64(ALIPAY_PUBLIC).unwrap()
    }

    #[test]
    fn verifies_docs_style_notification() {
        let body = signed_body(&sample_params(), ALIPAY_PRIVATE);
        let n = verify_notification(&alipay_key(), &body).unwrap();
        assert_eq!(n.app_id, "2014072300007148");
        assert_eq!(n.out_trade_no, "20150423001001");
        assert_eq!(n.trade_no.as_deref(), Some("2015042321001004720200028594"));
        assert_eq!(n.trade_status, TradeStatus::TradeSuccess);
        assert!(n.trade_status.is_paid());
        assert_eq!(n.total_amount_fen, 8888);
        assert_eq!(n.seller_id.as_deref(), Some("2088102119685838"));
        assert_eq!(
            n.notify_id.as_deref(),
            Some("4a91b7a78a503640467525113fb7d8bg8e")
        );
        assert_eq!(n.gmt_payment.as_deref(), Some("2015-04-27 15:45:57"));
        assert!(
            n.params
                .iter()
                .any(|(k, v)| k == "passback_params" && v.is_empty())
        );
        assert!(
            n.params
                .iter()
                .any(|(k, v)| k == "subject" && v == "当面付 & =测试")
        );
    }

    #[test]
    fn verifies_without_charset_and_sign_type() {
        let mut params = sample_params();
        params.retain(|(k, _)| k != "charset");
        let mut body = signed_body(&params, ALIPAY_PRIVATE);
        let s = String::from_utf8(body.clone()).unwrap();
        body = s.replace("&sign_type=RSA2", "").into_bytes();
        verify_notification(&alipay_key(), &body).unwrap();
    }

    /// Replaces one parameter's value in a signed body (re-encoding it).
    fn with_param(body: &[u8], name: &str, value: Option<&str>) -> Vec<u8> {
        let mut params = parse_form(body).unwrap();
        match value {
            Some(v) => {
                if let Some(p) = params.iter_mut().find(|(k, _)| k == name) {
                    p.1 = v.to_owned();
                } else {
                    params.push((name.to_owned(), v.to_owned()));
                }
            }
            None => params.retain(|(k, _)| k != name),
        }
        form::encode(&params).into_bytes()
    }

    #[test]
    fn rejects_tampering() {
        let key = alipay_key();
        let body = signed_body(&sample_params(), ALIPAY_PRIVATE);
        let cases: &[(&str, Option<&str>)] = &[
            ("total_amount", Some("0.01")),
            ("trade_status", Some("TRADE_FINISHED")),
            ("out_trade_no", Some("20150423001002")),
            ("passback_params", Some("x")),
            ("extra_field", Some("1")),
            ("seller_id", None),
        ];
        for (name, value) in cases {
            let tampered = with_param(&body, name, *value);
            assert_eq!(
                verify_notification(&key, &tampered),
                Err(AlipayError::BadSignature),
                "{name} -> {value:?}"
            );
        }
        // Empty values are outside the signature, so adding one is harmless
        // — and by the same rule it can never change a non-empty field.
        let added_empty = with_param(&body, "body", Some(""));
        verify_notification(&key, &added_empty).unwrap();
    }

    #[test]
    fn rejects_wrong_key_and_missing_sign() {
        let body = signed_body(&sample_params(), APP_PRIVATE);
        assert_eq!(
            verify_notification(&alipay_key(), &body),
            Err(AlipayError::BadSignature)
        );
        // The app's own public key is the classic misconfiguration.
        let good = signed_body(&sample_params(), ALIPAY_PRIVATE);
        let app_pub = AlipayPublicKey::from_pem_or_base64(APP_PUBLIC).unwrap();
        assert_eq!(
            verify_notification(&app_pub, &good),
            Err(AlipayError::BadSignature)
        );

        let unsigned = with_param(&good, "sign", None);
        assert_eq!(
            verify_notification(&alipay_key(), &unsigned),
            Err(AlipayError::MissingParam("sign"))
        );
        let empty_sign = with_param(&good, "sign", Some(""));
        assert_eq!(
            verify_notification(&alipay_key(), &empty_sign),
            Err(AlipayError::MissingParam("sign"))
        );
        let rsa1 = with_param(&good, "sign_type", Some("RSA"));
        assert!(matches!(
            verify_notification(&alipay_key(), &rsa1),
            Err(AlipayError::InvalidInput(_))
        ));
    }

    #[test]
    fn rejects_other_charsets() {
        let key = alipay_key();
        let mut params = sample_params();
        for p in &mut params {
            if p.0 == "charset" {
                p.1 = "gbk".into();
            }
        }
        let body = signed_body(&params, ALIPAY_PRIVATE);
        assert_eq!(
            verify_notification(&key, &body),
            Err(AlipayError::UnsupportedCharset("gbk".into()))
        );
        // GBK bytes for 你好 (not UTF-8): still reported as a charset problem.
        let gbk = b"charset=GBK&subject=%C4%E3%BA%C3&sign=AAAA";
        assert_eq!(
            verify_notification(&key, gbk),
            Err(AlipayError::UnsupportedCharset("GBK".into()))
        );
        // Case-insensitive UTF-8 is fine.
        let mut params = sample_params();
        for p in &mut params {
            if p.0 == "charset" {
                p.1 = "UTF-8".into();
            }
        }
        verify_notification(&key, &signed_body(&params, ALIPAY_PRIVATE)).unwrap();
    }

    #[test]
    fn signed_but_incomplete_or_bad_amount() {
        let key = alipay_key();
        let mut params = sample_params();
        params.retain(|(k, _)| k != "out_trade_no");
        let body = signed_body(&params, ALIPAY_PRIVATE);
        assert_eq!(
            verify_notification(&key, &body),
            Err(AlipayError::MissingParam("out_trade_no"))
        );

        let mut params = sample_params();
        for p in &mut params {
            if p.0 == "total_amount" {
                p.1 = "88.888".into();
            }
        }
        let body = signed_body(&params, ALIPAY_PRIVATE);
        assert!(matches!(
            verify_notification(&key, &body),
            Err(AlipayError::InvalidAmount(_))
        ));
    }

    #[test]
    fn parse_form_limits() {
        assert_eq!(
            parse_form(&vec![b'a'; MAX_BODY_BYTES + 1]),
            Err(AlipayError::TooLarge)
        );
        assert_eq!(parse_form(&vec![b'a'; MAX_BODY_BYTES]).unwrap().len(), 1);
        let key = alipay_key();
        assert_eq!(
            verify_notification(&key, &vec![b'a'; MAX_BODY_BYTES + 1]),
            Err(AlipayError::TooLarge)
        );
        assert_eq!(
            parse_form(b"a=1+2&b=%2B&c=%E4%BD%A0&d=").unwrap(),
            vec![
                ("a".to_owned(), "1 2".to_owned()),
                ("b".to_owned(), "+".to_owned()),
                ("c".to_owned(), "你".to_owned()),
                ("d".to_owned(), String::new()),
            ]
        );
        for bad in [&b"a=%zz"[..], b"a=%C4%E3", b"a=1&a=1", b"a=%"] {
            assert!(
                matches!(parse_form(bad), Err(AlipayError::Form(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn trade_status_mapping() {
        for (s, paid) in [
            ("WAIT_BUYER_PAY", false),
            ("TRADE_CLOSED", false),
            ("TRADE_SUCCESS", true),
            ("TRADE_FINISHED", true),
            ("trade_success", false),
            ("", false),
        ] {
            let t = TradeStatus::parse(s);
            assert_eq!(t.is_paid(), paid, "{s}");
            assert_eq!(t.as_str(), s);
        }
    }

    /// Xorshift64: deterministic, dependency-free pseudo-randomness.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap()
        }
    }

    /// Garbage never panics. A mutated signed body either fails or, when the
    /// mutation left the signed content alone (`%2b` for `%2B`, a renamed
    /// empty or unsigned parameter such as `sign_type`), yields exactly the
    /// original signed content and fields.
    #[test]
    fn garbage_never_panics() {
        let key = alipay_key();
        let good = signed_body(&sample_params(), ALIPAY_PRIVATE);
        let good_n = verify_notification(&key, &good).unwrap();
        let good_content = sign::sign_content(&good_n.params);
        let alphabet = b"%&=+aA0fF9gG sign_typecharsetutf-8total_amount.\xff\xe4\xbd\xa0\x00";
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        for round in 0..20_000 {
            let body: Vec<u8> = if round % 2 == 0 {
                // Random bytes, biased towards form syntax.
                let len = rng.below(200);
                (0..len)
                    .map(|_| {
                        if rng.below(4) == 0 {
                            u8::try_from(rng.below(256)).unwrap()
                        } else {
                            alphabet[rng.below(alphabet.len())]
                        }
                    })
                    .collect()
            } else {
                // The signed body with a few random byte changes.
                let mut b = good.clone();
                for _ in 0..=rng.below(3) {
                    let i = rng.below(b.len());
                    b[i] = u8::try_from(rng.below(256)).unwrap();
                }
                b
            };
            let _ = parse_form(&body);
            if let Ok(n) = verify_notification(&key, &body) {
                let ctx = String::from_utf8_lossy(&body);
                assert_eq!(sign::sign_content(&n.params), good_content, "{ctx}");
                let strip = |n: &Notification| Notification {
                    params: Vec::new(),
                    ..n.clone()
                };
                assert_eq!(strip(&n), strip(&good_n), "{ctx}");
            }
        }
    }
}
