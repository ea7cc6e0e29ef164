//! The Official Account HTTP API: the stable access_token and its cache, and
//! customer-service (客服) messages and typing indicators.
//!
//! The token is fetched from `/cgi-bin/stable_token` (not the classic
//! `/cgi-bin/token`, whose every call invalidates the previous token and
//! would break other processes sharing the appid), cached per client,
//! refreshed five minutes before it expires, and refetched once when WeChat
//! says it is invalid.
//!
//! The module also holds what the crate's other HTTP clients
//! ([`crate::wecom_client`], [`crate::robot`], [`crate::aibot`]) share: the
//! token cache with its single-flight refresh, the size-capped response
//! reader and the URL-free error mapping.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The production API root.
pub const DEFAULT_API_BASE: &str = "https://api.weixin.qq.com";

/// Refresh this long before the token's announced expiry. WeChat's stable
/// token overlaps old and new tokens for five minutes, so a token refreshed
/// in that window is never rejected as expired.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Largest response body read. WeChat's answers are a few hundred bytes; the
/// cap only stops a broken or hostile server from exhausting memory.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// `expires_in` assumed when the token response omits it (WeChat's
/// documented value).
const DEFAULT_EXPIRES_IN_SECS: u64 = 7200;

/// Longest `expires_in` believed. The value comes from the network; capping
/// it keeps a bogus answer from pinning a token forever (or overflowing the
/// clock arithmetic).
const MAX_EXPIRES_IN_SECS: u64 = 24 * 3600;

/// Errors of the Official Account API.
///
/// Messages never contain the AppSecret or an access_token (reqwest errors
/// are stripped of their URL, which carries the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WechatError {
    /// WeChat answered with a non-zero `errcode`. (An OAuth code that is
    /// malformed is refused locally as 40029, see
    /// [`crate::MpClient::oauth_exchange`].)
    #[error("WeChat API error {errcode}: {errmsg}")]
    Api {
        /// WeChat's error code, e.g. 45015.
        errcode: i64,
        /// WeChat's message, e.g. `response out of time limit`.
        errmsg: String,
    },
    /// The request failed: connection, timeout, or a non-2xx status.
    #[error("HTTP error: {0}")]
    Http(String),
    /// The response was not the expected JSON.
    #[error("unexpected response: {0}")]
    Decode(String),
    /// Refused locally, without a request: the client's own rate limit is
    /// exhausted (e.g. a group robot's 20 messages per minute). Drop or
    /// aggregate the message and try later.
    #[error("rate limited: message not sent")]
    RateLimited,
}

impl WechatError {
    /// The `errcode` of an [`Self::Api`] error.
    pub(crate) fn errcode(&self) -> Option<i64> {
        match self {
            Self::Api { errcode, .. } => Some(*errcode),
            Self::Http(_) | Self::Decode(_) | Self::RateLimited => None,
        }
    }

    /// 48001: the account has no permission for this API (e.g. an unverified
    /// subscription account and the customer-service API). Answer passively
    /// instead.
    #[must_use]
    pub fn is_no_permission(&self) -> bool {
        self.errcode() == Some(48001)
    }

    /// 45015 (the user last interacted more than 48 h ago) or 45047 (too many
    /// messages since): pushing is impossible until the user writes again.
    #[must_use]
    pub fn is_outside_window(&self) -> bool {
        matches!(self.errcode(), Some(45015 | 45047))
    }

    /// 40001, 40014 or 42001: the access_token is invalid, not the latest, or
    /// expired.
    #[must_use]
    pub fn is_token_invalid(&self) -> bool {
        matches!(self.errcode(), Some(40001 | 40014 | 42001))
    }

    /// 60020 (WeCom): the server's IP is not among the app's trusted IPs
    /// (可信IP). An operator has to fix the app's settings; retrying is
    /// pointless.
    #[must_use]
    pub fn is_untrusted_ip(&self) -> bool {
        self.errcode() == Some(60020)
    }

    /// [`Self::RateLimited`] (our own limit), or 45009 (Tencent's "api freq
    /// out of limit"): too many messages for now.
    #[must_use]
    pub fn is_rate_limited(&self) -> bool {
        matches!(self, Self::RateLimited) || self.errcode() == Some(45009)
    }
}

/// A client of one Official Account's API. Cheap to clone; clones share the
/// token cache.
#[derive(Clone)]
pub struct MpClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// Shared HTTP client; its timeouts are the caller's choice.
    http: reqwest::Client,
    /// API root without a trailing slash.
    api_base: String,
    /// The appid (not secret; used in logs).
    app_id: String,
    /// The AppSecret; only ever put in the stable_token request body.
    secret: String,
    /// The cached token, fetched by one caller at a time.
    tokens: TokenCache,
}

impl fmt::Debug for MpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MpClient")
            .field("api_base", &self.inner.api_base)
            .field("app_id", &self.inner.app_id)
            .finish_non_exhaustive()
    }
}

// === Token cache, shared with the WeCom client ===

/// An access_token and when to stop using it.
pub(crate) struct CachedToken {
    token: String,
    /// After this instant the token is refetched.
    refresh_at: Instant,
}

/// One API credential's access_token: cached, refreshed early, fetched by a
/// single caller at a time. Used by [`MpClient`] and
/// [`crate::wecom_client::WecomClient`], which differ only in how a token is
/// fetched.
pub(crate) struct TokenCache {
    /// A tokio mutex held across the fetch makes concurrent callers wait for
    /// one request instead of each sending one.
    slot: Mutex<Option<CachedToken>>,
}

impl TokenCache {
    /// An empty cache; nothing is fetched until [`Self::get`].
    pub(crate) fn new() -> Self {
        Self {
            slot: Mutex::new(None),
        }
    }

    /// Returns the cached token while it is fresh; otherwise awaits `fetch`
    /// with the cache locked, so concurrent callers share that one fetch. A
    /// failed fetch caches nothing.
    pub(crate) async fn get<F, Fut>(&self, fetch: F) -> Result<String, WechatError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CachedToken, WechatError>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some(cached) = slot.as_ref()
            && Instant::now() <= cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        // The lock stays held during the fetch: that is the single flight.
        let fresh = fetch().await?;
        let token = fresh.token.clone();
        *slot = Some(fresh);
        Ok(token)
    }

    /// Drops the cached token if it is still `stale`. Comparing first means
    /// that when several calls fail with the same old token, only the first
    /// drops it and the others reuse the replacement.
    pub(crate) async fn invalidate(&self, stale: &str) {
        let mut slot = self.slot.lock().await;
        if slot.as_ref().is_some_and(|c| c.token == stale) {
            *slot = None;
        }
    }
}

/// A token endpoint's answer (stable_token, gettoken): either a token or an
/// error.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    expires_in: Option<u64>,
    errcode: Option<i64>,
    errmsg: Option<String>,
}

/// Turns a token endpoint's body into a [`CachedToken`]. `endpoint` names it
/// in errors (`stable_token`, `gettoken`); `started` is when the request was
/// sent, so a slow answer does not make the token look younger than it is.
///
/// The body holds the token on success, so errors never quote it.
pub(crate) fn parse_token_response(
    bytes: &[u8],
    endpoint: &str,
    started: Instant,
) -> Result<CachedToken, WechatError> {
    let resp: TokenResponse = serde_json::from_slice(bytes).map_err(|e| {
        WechatError::Decode(format!(
            "{endpoint} response is not the expected JSON ({:?})",
            e.classify()
        ))
    })?;
    if let Some(errcode) = resp.errcode.filter(|&c| c != 0) {
        return Err(WechatError::Api {
            errcode,
            errmsg: resp.errmsg.unwrap_or_default(),
        });
    }
    let token = resp
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| WechatError::Decode(format!("{endpoint} response has no access_token")))?;
    let expires_in = Duration::from_secs(
        resp.expires_in
            .unwrap_or(DEFAULT_EXPIRES_IN_SECS)
            .min(MAX_EXPIRES_IN_SECS),
    );
    Ok(CachedToken {
        token,
        refresh_at: started
            .checked_add(token_lifetime(expires_in))
            .unwrap_or(started),
    })
}

impl CachedToken {
    /// Seconds until the token is refetched (for logs).
    pub(crate) fn usable_for_secs(&self) -> u64 {
        self.refresh_at
            .saturating_duration_since(Instant::now())
            .as_secs()
    }
}

// === HTTP helpers, shared by every client of the crate ===

/// The answer of message APIs.
#[derive(Deserialize)]
struct ApiResponse {
    errcode: Option<i64>,
    errmsg: Option<String>,
}

/// Maps a reqwest error without its URL, which may carry the access_token
/// (or, for WeCom's gettoken, the secret; for a robot, its key).
pub(crate) fn http_error(e: reqwest::Error) -> WechatError {
    WechatError::Http(e.without_url().to_string())
}

/// Sends `req` and returns the body of a 2xx response, read up to
/// [`MAX_RESPONSE_BYTES`]. Errors never contain the URL.
pub(crate) async fn send_limited(req: reqwest::RequestBuilder) -> Result<Vec<u8>, WechatError> {
    let mut resp = req.send().await.map_err(http_error)?;
    let status = resp.status();
    if !status.is_success() {
        return Err(WechatError::Http(format!("status {status}")));
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(http_error)? {
        if buf.len().saturating_add(chunk.len()) > MAX_RESPONSE_BYTES {
            return Err(WechatError::Decode("response body too large".into()));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Maps a message API's `{"errcode":..,"errmsg":..}` answer: a missing or
/// zero errcode is success.
pub(crate) fn api_result(bytes: &[u8]) -> Result<(), WechatError> {
    let resp: ApiResponse = decode(bytes)?;
    match resp.errcode {
        None | Some(0) => Ok(()),
        Some(errcode) => Err(WechatError::Api {
            errcode,
            errmsg: resp.errmsg.unwrap_or_default(),
        }),
    }
}

/// How long a token is used: its lifetime minus the margin, or half its
/// lifetime when it is shorter than the margin (so a short-lived token is
/// still reused for a while rather than refetched on every call).
fn token_lifetime(expires_in: Duration) -> Duration {
    match expires_in.checked_sub(REFRESH_MARGIN) {
        Some(d) if !d.is_zero() => d,
        _ => expires_in / 2,
    }
}

impl MpClient {
    /// Creates a client for `app_id` against `api_base` (normally
    /// [`DEFAULT_API_BASE`]; a fake server in tests). No request is made
    /// until a token is needed.
    #[must_use]
    pub fn new(api_base: &str, app_id: &str, app_secret: &str, http: reqwest::Client) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                api_base: api_base.trim_end_matches('/').to_owned(),
                app_id: app_id.to_owned(),
                secret: app_secret.to_owned(),
                tokens: TokenCache::new(),
            }),
        }
    }

    /// The appid this client acts for.
    #[must_use]
    pub fn app_id(&self) -> &str {
        &self.inner.app_id
    }

    /// The shared HTTP client, the API root and the AppSecret, for the web
    /// authorization calls of [`crate::oauth`], which use neither the token
    /// cache nor the account's access_token.
    pub(crate) fn oauth_parts(&self) -> (&reqwest::Client, &str, &str) {
        (&self.inner.http, &self.inner.api_base, &self.inner.secret)
    }

    /// The shared HTTP client and the API root, for [`crate::media`].
    pub(crate) fn media_parts(&self) -> (&reqwest::Client, &str) {
        (&self.inner.http, &self.inner.api_base)
    }

    /// Drops `stale` from the token cache (WeChat said it is invalid).
    pub(crate) async fn invalidate_token(&self, stale: &str) {
        self.inner.tokens.invalidate(stale).await;
    }

    /// Returns a valid access_token, fetching one if none is cached or the
    /// cached one is within five minutes of expiry. Concurrent callers share
    /// a single fetch.
    ///
    /// # Errors
    /// [`WechatError`] from the stable_token request.
    pub async fn access_token(&self) -> Result<String, WechatError> {
        self.inner.tokens.get(|| self.fetch_token()).await
    }

    async fn fetch_token(&self) -> Result<CachedToken, WechatError> {
        let url = format!("{}/cgi-bin/stable_token", self.inner.api_base);
        let body = json!({
            "grant_type": "client_credential",
            "appid": self.inner.app_id,
            "secret": self.inner.secret,
            // Forced refreshes are limited to 20 a day and invalidate the
            // token other processes hold; the normal mode suffices.
            "force_refresh": false,
        });
        let started = Instant::now();
        let bytes = send_limited(self.inner.http.post(&url).json(&body)).await?;
        let fresh = parse_token_response(&bytes, "stable_token", started).inspect_err(|e| {
            if let WechatError::Api { errcode, .. } = e {
                tracing::warn!(app_id = %self.inner.app_id, errcode, "stable_token refused");
            }
        })?;
        tracing::debug!(
            app_id = %self.inner.app_id,
            usable_for_secs = fresh.usable_for_secs(),
            "fetched access_token"
        );
        Ok(fresh)
    }

    /// Calls a message API `path` with the access_token; on a token error
    /// drops the token, fetches a new one and retries once.
    async fn call(&self, path: &str, body: &serde_json::Value) -> Result<(), WechatError> {
        let token = self.access_token().await?;
        match self.call_once(path, &token, body).await {
            Err(e) if e.is_token_invalid() => {
                tracing::warn!(
                    app_id = %self.inner.app_id,
                    errcode = e.errcode().unwrap_or_default(),
                    path,
                    "access_token rejected; refetching once"
                );
                self.inner.tokens.invalidate(&token).await;
                let token = self.access_token().await?;
                self.call_once(path, &token, body).await
            }
            other => other,
        }
    }

    async fn call_once(
        &self,
        path: &str,
        token: &str,
        body: &serde_json::Value,
    ) -> Result<(), WechatError> {
        let url = format!("{}{path}", self.inner.api_base);
        let req = self
            .inner
            .http
            .post(&url)
            .query(&[("access_token", token)])
            .json(body);
        api_result(&send_limited(req).await?)
    }

    /// Sends a customer-service text message to `openid`.
    ///
    /// # Errors
    /// [`WechatError`]; see [`WechatError::is_no_permission`] and
    /// [`WechatError::is_outside_window`] for the cases where pushing is
    /// impossible and the answer must wait for the user's next message.
    pub async fn send_text(&self, openid: &str, content: &str) -> Result<(), WechatError> {
        let body = json!({
            "touser": openid,
            "msgtype": "text",
            "text": { "content": content },
        });
        self.call("/cgi-bin/message/custom/send", &body).await
    }

    /// Sends a customer-service voice message (temporary media `media_id`, from
    /// [`MpClient::upload_voice`]) to `openid`.
    ///
    /// # Errors
    /// [`WechatError`], as [`Self::send_text`].
    pub async fn send_voice(&self, openid: &str, media_id: &str) -> Result<(), WechatError> {
        let body = json!({
            "touser": openid,
            "msgtype": "voice",
            "voice": { "media_id": media_id },
        });
        self.call("/cgi-bin/message/custom/send", &body).await
    }

    /// Shows (`true`) or hides (`false`) the "typing" indicator to `openid`.
    ///
    /// # Errors
    /// [`WechatError`], as [`Self::send_text`].
    pub async fn typing(&self, openid: &str, typing: bool) -> Result<(), WechatError> {
        let body = json!({
            "touser": openid,
            "command": if typing { "Typing" } else { "CancelTyping" },
        });
        self.call("/cgi-bin/message/custom/typing", &body).await
    }
}

/// Decodes a non-secret JSON answer; the error names what was wrong.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WechatError> {
    serde_json::from_slice(bytes).map_err(|e| WechatError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes() {
        let api = |errcode| WechatError::Api {
            errcode,
            errmsg: String::new(),
        };
        assert!(api(48001).is_no_permission());
        assert!(api(45015).is_outside_window());
        assert!(api(45047).is_outside_window());
        for c in [40001, 40014, 42001] {
            assert!(api(c).is_token_invalid());
        }
        assert!(!api(0).is_token_invalid());
        assert!(!WechatError::Http("x".into()).is_no_permission());
        assert!(!WechatError::Decode("x".into()).is_outside_window());
    }

    #[test]
    fn client_is_thread_safe() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<MpClient>();
        assert_send_sync::<WechatError>();
    }

    #[test]
    fn lifetime_keeps_the_margin() {
        assert_eq!(
            token_lifetime(Duration::from_secs(7200)),
            Duration::from_secs(6900)
        );
        assert_eq!(
            token_lifetime(Duration::from_secs(301)),
            Duration::from_secs(1)
        );
        assert_eq!(
            token_lifetime(Duration::from_secs(300)),
            Duration::from_secs(150)
        );
        assert_eq!(token_lifetime(Duration::from_secs(0)), Duration::ZERO);
    }

    #[test]
    fn debug_hides_the_secret() {
        let c = MpClient::new("http://x/", "wxapp", "s3cr3t", reqwest::Client::new());
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t"));
        assert!(dbg.contains("wxapp"));
        assert_eq!(c.inner.api_base, "http://x");
    }
}
