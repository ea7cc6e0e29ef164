//! The HTTP client for the payment APIs (Native, JSAPI and H5 orders,
//! query, close, refund): the only module that does I/O.
//!
//! Every request is signed over the exact bytes sent; every 2xx response
//! with a body is verified against the platform keys before it is parsed,
//! because a response that merely *looks* like it came from WeChat must not
//! be able to mark an order paid.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, USER_AGENT};
use ring::rand::{SecureRandom as _, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::error::excerpt;
use crate::types::{validate_out_refund_no, validate_out_trade_no};
use crate::{
    MerchantKey, NativeOrder, NotifyHeaders, PayError, PlatformKeys, Transaction,
    authorization_header, verify_notification,
};

/// Production API origin.
pub const DEFAULT_API_BASE: &str = "https://api.mch.weixin.qq.com";

/// Sent as `User-Agent`; WeChat asks integrators to identify themselves.
pub const CLIENT_USER_AGENT: &str = concat!(
    "chatrelay-wechat-pay/",
    env!("CARGO_PKG_VERSION"),
    " (Rust)"
);

/// Largest response body we read; real ones are a few KiB.
const MAX_RESPONSE_BODY: usize = 1024 * 1024;

/// Longest refund `reason` WeChat accepts.
const MAX_REFUND_REASON_CHARS: usize = 80;

/// Static settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// API origin without a path, e.g. [`DEFAULT_API_BASE`] or a test
    /// server. The canonical URL that gets signed is the request path only,
    /// so a base with a path prefix would produce wrong signatures.
    pub api_base: String,
    /// Merchant id (`mchid`), digits.
    pub mch_id: String,
    /// The app id (公众号/小程序/移动应用) the merchant is bound to.
    pub app_id: String,
    /// Serial number of the merchant API certificate, sent as `serial_no`
    /// so WeChat knows which key signed.
    pub serial_no: String,
    /// Per-request timeout (connect + response).
    pub timeout: Duration,
}

impl ClientConfig {
    /// A config for production with a 10 s timeout.
    #[must_use]
    pub fn new(mch_id: &str, app_id: &str, serial_no: &str) -> Self {
        Self {
            api_base: DEFAULT_API_BASE.to_owned(),
            mch_id: mch_id.to_owned(),
            app_id: app_id.to_owned(),
            serial_no: serial_no.to_owned(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// A WeChat Pay v3 client for Native, JSAPI and H5 orders. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    cfg: ClientConfig,
    key: MerchantKey,
    platform_keys: PlatformKeys,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("cfg", &self.inner.cfg)
            .field("platform_keys", &self.inner.platform_keys)
            .finish_non_exhaustive()
    }
}

/// `amount` of requests.
#[derive(Serialize)]
struct RequestAmount {
    total: i64,
    currency: &'static str,
}

/// Body of `POST /v3/pay/transactions/{native,jsapi,h5}`: the Native
/// fields, plus `payer` (JSAPI) or `scene_info` (H5).
#[derive(Serialize)]
struct OrderRequest<'a> {
    appid: &'a str,
    mchid: &'a str,
    description: &'a str,
    out_trade_no: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_expire: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attach: Option<&'a str>,
    notify_url: &'a str,
    amount: RequestAmount,
    #[serde(skip_serializing_if = "Option::is_none")]
    payer: Option<RequestPayer<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scene_info: Option<SceneInfo>,
}

/// `payer` of a JSAPI order.
#[derive(Serialize)]
struct RequestPayer<'a> {
    openid: &'a str,
}

/// `scene_info` of an H5 order.
#[derive(Serialize)]
struct SceneInfo {
    payer_client_ip: String,
    h5_info: H5Info,
}

/// `scene_info.h5_info`; `type` is `Wap` for a phone website.
#[derive(Serialize)]
struct H5Info {
    #[serde(rename = "type")]
    kind: &'static str,
}

/// What distinguishes the three order kinds on the wire.
enum OrderKind<'a> {
    Native,
    Jsapi { openid: &'a str },
    H5 { payer_client_ip: String },
}

/// Body of the refund request.
#[derive(Serialize)]
struct RefundRequest<'a> {
    out_trade_no: &'a str,
    out_refund_no: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    amount: RefundAmount,
}

/// `amount` of the refund request.
#[derive(Serialize)]
struct RefundAmount {
    refund: i64,
    total: i64,
    currency: &'static str,
}

/// WeChat's error body.
#[derive(Deserialize)]
struct ApiErrorBody {
    code: String,
    #[serde(default)]
    message: String,
}

/// A create-order response: `code_url` (Native), `prepay_id` (JSAPI) or
/// `h5_url` (H5).
#[derive(Deserialize)]
struct CreateResponse {
    #[serde(default)]
    code_url: Option<String>,
    #[serde(default)]
    prepay_id: Option<String>,
    #[serde(default)]
    h5_url: Option<String>,
    /// An excerpt of the body, for the error when the field is missing.
    #[serde(skip)]
    raw: String,
}

/// The one field a create-order call is for, which must be non-empty.
fn required(value: Option<String>, name: &str, raw: String) -> Result<String, PayError> {
    value.filter(|v| !v.is_empty()).ok_or(PayError::Decode {
        message: format!("missing or empty {name}"),
        raw,
    })
}

/// An openid goes into the signed JSON body; WeChat's are 28 characters, so
/// anything empty, long or with spaces/control characters is a caller bug.
fn validate_openid(openid: &str) -> Result<(), PayError> {
    if (1..=128).contains(&openid.len()) && openid.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(PayError::InvalidInput(
            "payer openid must be 1-128 visible ASCII characters".into(),
        ))
    }
}

fn http_err(e: &reqwest::Error) -> PayError {
    PayError::Http(e.to_string())
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, PayError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or(PayError::BadSignature)
}

impl Client {
    /// Builds a client. `http` should have sensible connect timeouts; pass
    /// the daemon's shared `reqwest::Client` so connections are pooled.
    #[must_use]
    pub fn new(
        cfg: ClientConfig,
        merchant_key: MerchantKey,
        platform_keys: PlatformKeys,
        http: reqwest::Client,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                cfg,
                key: merchant_key,
                platform_keys,
            }),
        }
    }

    /// The configuration this client was built with.
    #[must_use]
    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// The merchant key, for signing the JSAPI page parameters.
    pub(crate) fn merchant_key(&self) -> &MerchantKey {
        &self.inner.key
    }

    /// `mch_id` goes into query strings, so it must not need escaping.
    fn mch_id_checked(&self) -> Result<&str, PayError> {
        let id = self.inner.cfg.mch_id.as_str();
        if (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(id)
        } else {
            Err(PayError::InvalidInput(
                "mch_id must be 1-32 ASCII letters/digits".into(),
            ))
        }
    }

    /// Creates a Native order and returns its `code_url` (render it as a QR
    /// code).
    pub async fn create_native(&self, order: &NativeOrder) -> Result<String, PayError> {
        let resp = self.create_order(order, OrderKind::Native).await?;
        required(resp.code_url, "code_url", resp.raw)
    }

    /// Creates a JSAPI order (公众号支付, paid inside WeChat's browser) for
    /// `payer_openid`, an openid of the payer under this client's `app_id`,
    /// and returns the `prepay_id` (valid 2 hours). Hand it to
    /// [`Client::jsapi_params`] for the page's `getBrandWCPayRequest`.
    ///
    /// An openid under another AppID is WeChat's `PARAM_ERROR`
    /// ([`PayError::Api`]).
    pub async fn create_jsapi(
        &self,
        order: &NativeOrder,
        payer_openid: &str,
    ) -> Result<String, PayError> {
        validate_openid(payer_openid)?;
        let kind = OrderKind::Jsapi {
            openid: payer_openid,
        };
        let resp = self.create_order(order, kind).await?;
        required(resp.prepay_id, "prepay_id", resp.raw)
    }

    /// Creates an H5 order (phone browsers outside WeChat) and returns the
    /// `h5_url` (valid 5 minutes) the browser opens, with `&redirect_url=`
    /// appended by the page. `payer_client_ip` is the user's address, IPv4
    /// or IPv6, as the daemon determined it.
    pub async fn create_h5(
        &self,
        order: &NativeOrder,
        payer_client_ip: &str,
    ) -> Result<String, PayError> {
        let ip: IpAddr = payer_client_ip.parse().map_err(|_| {
            PayError::InvalidInput("payer_client_ip must be an IPv4 or IPv6 address".into())
        })?;
        let kind = OrderKind::H5 {
            payer_client_ip: ip.to_string(),
        };
        let resp = self.create_order(order, kind).await?;
        required(resp.h5_url, "h5_url", resp.raw)
    }

    /// Validates `order`, sends it to the endpoint of `kind` and parses the
    /// (verified) answer.
    async fn create_order(
        &self,
        order: &NativeOrder,
        kind: OrderKind<'_>,
    ) -> Result<CreateResponse, PayError> {
        order.validate()?;
        let cfg = &self.inner.cfg;
        let mut req = OrderRequest {
            appid: &cfg.app_id,
            mchid: self.mch_id_checked()?,
            description: &order.description,
            out_trade_no: &order.out_trade_no,
            time_expire: order
                .time_expire
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false)),
            attach: order.attach.as_deref(),
            notify_url: &order.notify_url,
            amount: RequestAmount {
                total: order.amount_fen,
                currency: "CNY",
            },
            payer: None,
            scene_info: None,
        };
        let path = match kind {
            OrderKind::Native => "/v3/pay/transactions/native",
            OrderKind::Jsapi { openid } => {
                req.payer = Some(RequestPayer { openid });
                "/v3/pay/transactions/jsapi"
            }
            OrderKind::H5 { payer_client_ip } => {
                req.scene_info = Some(SceneInfo {
                    payer_client_ip,
                    h5_info: H5Info { kind: "Wap" },
                });
                "/v3/pay/transactions/h5"
            }
        };
        let resp = self.call(Method::POST, path, Some(&req)).await?;
        let mut parsed: CreateResponse =
            serde_json::from_slice(&resp).map_err(|e| PayError::Decode {
                message: format!("create order response: {e}"),
                raw: excerpt(&resp),
            })?;
        parsed.raw = excerpt(&resp);
        Ok(parsed)
    }

    /// Queries an order by our `out_trade_no`. An unknown order is
    /// `PayError::Api { status: 404, code: "ORDER_NOT_EXIST", .. }`.
    ///
    /// The answer must be about the order and merchant we asked for;
    /// otherwise it is a [`PayError::Decode`].
    pub async fn query(&self, out_trade_no: &str) -> Result<Transaction, PayError> {
        validate_out_trade_no(out_trade_no)?;
        let mch_id = self.mch_id_checked()?;
        let path = format!("/v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={mch_id}");
        let resp = self.call::<()>(Method::GET, &path, None).await?;
        let t: Transaction = serde_json::from_slice(&resp).map_err(|e| PayError::Decode {
            message: format!("transaction: {e}"),
            raw: excerpt(&resp),
        })?;
        if t.out_trade_no != out_trade_no || t.mchid != mch_id {
            return Err(PayError::Decode {
                message: "query answer is for another order or merchant".into(),
                raw: excerpt(&resp),
            });
        }
        Ok(t)
    }

    /// Closes an unpaid order (WeChat answers 204). Close before giving up
    /// on an order, so a late payment cannot arrive for it.
    pub async fn close(&self, out_trade_no: &str) -> Result<(), PayError> {
        validate_out_trade_no(out_trade_no)?;
        #[derive(Serialize)]
        struct CloseRequest<'a> {
            mchid: &'a str,
        }
        let path = format!("/v3/pay/transactions/out-trade-no/{out_trade_no}/close");
        let body = CloseRequest {
            mchid: self.mch_id_checked()?,
        };
        self.call(Method::POST, &path, Some(&body)).await?;
        Ok(())
    }

    /// Requests a refund of `refund_fen` out of the order's `total_fen`
    /// (both in fen, CNY). Returns WeChat's verified refund object as JSON
    /// (`refund_id`, `status`, ...); the refund itself completes later.
    pub async fn refund(
        &self,
        out_trade_no: &str,
        out_refund_no: &str,
        refund_fen: i64,
        total_fen: i64,
        reason: &str,
    ) -> Result<serde_json::Value, PayError> {
        validate_out_trade_no(out_trade_no)?;
        validate_out_refund_no(out_refund_no)?;
        if refund_fen <= 0 || total_fen <= 0 || refund_fen > total_fen {
            return Err(PayError::InvalidInput(format!(
                "refund must satisfy 0 < refund ({refund_fen}) <= total ({total_fen}) fen"
            )));
        }
        if reason.chars().count() > MAX_REFUND_REASON_CHARS {
            return Err(PayError::InvalidInput(
                "refund reason must be at most 80 characters".into(),
            ));
        }
        let body = RefundRequest {
            out_trade_no,
            out_refund_no,
            reason: (!reason.is_empty()).then_some(reason),
            amount: RefundAmount {
                refund: refund_fen,
                total: total_fen,
                currency: "CNY",
            },
        };
        let resp = self
            .call(Method::POST, "/v3/refund/domestic/refunds", Some(&body))
            .await?;
        serde_json::from_slice(&resp).map_err(|e| PayError::Decode {
            message: format!("refund response: {e}"),
            raw: excerpt(&resp),
        })
    }

    /// Signs and sends one request; returns the body of a 2xx response
    /// (verified if non-empty), or the error WeChat reported.
    async fn call<B: Serialize>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&B>,
    ) -> Result<Vec<u8>, PayError> {
        let inner = &*self.inner;
        let body = match body {
            Some(b) => {
                serde_json::to_string(b).map_err(|e| PayError::InvalidInput(e.to_string()))?
            }
            None => String::new(),
        };
        let timestamp = chrono::Utc::now().timestamp();
        let nonce = new_nonce()?;
        let auth = authorization_header(
            &inner.cfg.mch_id,
            &inner.cfg.serial_no,
            &inner.key,
            method.as_str(),
            path_and_query,
            timestamp,
            &nonce,
            &body,
        )?;
        let url = format!(
            "{}{path_and_query}",
            inner.cfg.api_base.trim_end_matches('/')
        );
        tracing::debug!(method = %method, path = path_and_query, "wechat pay request");

        let mut req = inner
            .http
            .request(method.clone(), url)
            .timeout(inner.cfg.timeout)
            .header(AUTHORIZATION, auth)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, CLIENT_USER_AGENT);
        if !body.is_empty() {
            // The very string that was signed.
            req = req.body(body);
        }
        let resp = req.send().await.map_err(|e| http_err(&e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let raw = read_limited(resp).await?;
        tracing::debug!(method = %method, path = path_and_query, status = status.as_u16(), "wechat pay response");

        if !status.is_success() {
            // Error bodies are only reported, never acted on, so they are
            // not required to carry a valid signature.
            return Err(api_error(status.as_u16(), &raw));
        }
        if !raw.is_empty() {
            let h = NotifyHeaders {
                timestamp: header_str(&headers, "wechatpay-timestamp")?,
                nonce: header_str(&headers, "wechatpay-nonce")?,
                signature: header_str(&headers, "wechatpay-signature")?,
                serial: header_str(&headers, "wechatpay-serial")?,
            };
            verify_notification(
                &inner.platform_keys,
                &h,
                &raw,
                chrono::Utc::now().timestamp(),
            )
            .inspect_err(|e| tracing::warn!(path = path_and_query, error = %e, "unverifiable wechat pay response"))?;
        }
        Ok(raw)
    }
}

/// Reads a response body, refusing more than [`MAX_RESPONSE_BODY`] bytes.
async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, PayError> {
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BODY as u64)
    {
        return Err(PayError::TooLarge);
    }
    let mut raw = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| http_err(&e))? {
        if raw.len() + chunk.len() > MAX_RESPONSE_BODY {
            return Err(PayError::TooLarge);
        }
        raw.extend_from_slice(&chunk);
    }
    Ok(raw)
}

/// The [`PayError::Api`] of a non-2xx answer: WeChat's `{"code","message"}`,
/// or `UNKNOWN` with an excerpt of whatever else came back.
fn api_error(status: u16, raw: &[u8]) -> PayError {
    match serde_json::from_slice::<ApiErrorBody>(raw) {
        Ok(e) => PayError::Api {
            status,
            code: e.code,
            message: e.message,
        },
        Err(_) => PayError::Api {
            status,
            code: "UNKNOWN".into(),
            message: excerpt(raw),
        },
    }
}

/// 32 upper-case hex characters from the system CSPRNG. The nonce only has
/// to be unique, but a predictable one would make replay easier.
fn new_nonce() -> Result<String, PayError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PayError::Http("system random generator failed".into()))?;
    Ok(hex::encode_upper(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_is_32_hex_and_varies() {
        let a = new_nonce().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_nonce().unwrap());
    }

    #[test]
    fn user_agent_names_the_crate() {
        assert!(CLIENT_USER_AGENT.starts_with("chatrelay-wechat-pay/"));
    }
}
