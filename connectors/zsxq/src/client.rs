//! The HTTP client: lists unanswered questions, posts answers, reads a
//! topic's answered flag.
//!
//! Every request carries the browser-like headers zsxq expects and the
//! access token as the `zsxq_access_token` cookie (in a header marked
//! sensitive). Requests of one client and all its clones are spaced at
//! least [`ClientConfig::min_interval`] apart, because zsxq answers bursts
//! with code 1059 and then bans the token. The token can be replaced at run
//! time ([`Client::set_access_token`]) after an operator logs in again.
//!
//! Errors never contain the token: reqwest errors lose their URL, and the
//! `Debug` forms of [`Client`] and [`ClientConfig`] redact it.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::error::ZsxqError;
use crate::types::{self, Question, TopicId};

/// The production API root; paths start with `/v2`.
pub const DEFAULT_API_BASE: &str = "https://api.zsxq.com";

/// A current desktop Chrome user agent.
pub const DEFAULT_USER_AGENT: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

/// The web client's `X-Version` (2026); without it zsxq answers code 2.
pub const DEFAULT_X_VERSION: &str = "2.91.0";

/// The web client's origin, sent as `Origin` and (with `/`) `Referer`.
const WEB_ORIGIN: &str = "https://wx.zsxq.com";

/// Largest response body read; a page of 30 topics is well under this.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Most topics asked for in one page (community advice: 10–20).
const MAX_COUNT: u32 = 30;

/// Longest group id accepted (a u64 has 20 digits).
const MAX_GROUP_ID_LEN: usize = 20;

/// Longest access token accepted.
const MAX_TOKEN_LEN: usize = 512;

/// Longest `end_time` accepted (zsxq's are 28 characters).
const MAX_END_TIME_LEN: usize = 64;

/// How a [`Client`] talks to zsxq.
#[derive(Clone)]
pub struct ClientConfig {
    /// API root without `/v2` ([`DEFAULT_API_BASE`]; a fake in tests).
    pub api_base: String,
    /// The `zsxq_access_token` cookie of a logged-in member. Secret.
    pub access_token: String,
    /// Least time between the start of any two requests of the client
    /// (default 1.5 s).
    pub min_interval: Duration,
    /// Timeout of each request, from sending to the end of the body
    /// (default 15 s).
    pub timeout: Duration,
    /// `User-Agent` ([`DEFAULT_USER_AGENT`]).
    pub user_agent: String,
    /// `X-Version` ([`DEFAULT_X_VERSION`]).
    pub x_version: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            api_base: DEFAULT_API_BASE.to_owned(),
            access_token: String::new(),
            min_interval: Duration::from_millis(1500),
            timeout: Duration::from_secs(15),
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            x_version: DEFAULT_X_VERSION.to_owned(),
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("api_base", &self.api_base)
            .field("access_token", &redacted(&self.access_token))
            .field("min_interval", &self.min_interval)
            .field("timeout", &self.timeout)
            .field("user_agent", &self.user_agent)
            .field("x_version", &self.x_version)
            .finish()
    }
}

/// What `Debug` shows of a secret.
fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() {
        "<empty>"
    } else {
        "<redacted>"
    }
}

/// A zsxq web API client. Cheap to clone; clones share the token and the
/// request spacing.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// API root without a trailing slash.
    api_base: String,
    /// The access token; replaced by [`Client::set_access_token`].
    token: RwLock<String>,
    min_interval: Duration,
    timeout: Duration,
    user_agent: String,
    x_version: String,
    /// When the last request was sent; held while waiting for the next
    /// slot, so concurrent callers queue.
    last_request: Mutex<Option<Instant>>,
    rng: SystemRandom,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("api_base", &self.inner.api_base)
            .field("min_interval", &self.inner.min_interval)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Creates a client. `http` is shared (its own timeouts and proxy
    /// apply; this client adds [`ClientConfig::timeout`] per request). No
    /// request is made until a method is called; a bad token or header value
    /// is reported by the first call as [`ZsxqError::InvalidInput`].
    #[must_use]
    pub fn new(cfg: ClientConfig, http: reqwest::Client) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                api_base: cfg.api_base.trim_end_matches('/').to_owned(),
                token: RwLock::new(cfg.access_token.trim().to_owned()),
                min_interval: cfg.min_interval,
                timeout: cfg.timeout,
                user_agent: cfg.user_agent,
                x_version: cfg.x_version,
                last_request: Mutex::new(None),
                rng: SystemRandom::new(),
            }),
        }
    }

    /// Replaces the access token (surrounding whitespace trimmed) for all
    /// later requests of this client and its clones, e.g. after an operator
    /// logs in again following [`ZsxqError::Unauthorized`].
    pub fn set_access_token(&self, token: &str) {
        let mut slot = self
            .inner
            .token
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = token.trim().to_owned();
    }

    /// Lists up to `count` (1–30) unanswered questions of `group_id`, newest
    /// first; pass the last question's [`Question::create_time_raw`] as
    /// `end_time` for the next page.
    ///
    /// # Errors
    /// [`ZsxqError::InvalidInput`] for a `group_id` that is not digits, a
    /// `count` out of range or an unusable token; otherwise the request's and
    /// [`crate::parse_topics`]'s errors.
    pub async fn unanswered_questions(
        &self,
        group_id: &str,
        count: u32,
        end_time: Option<&str>,
    ) -> Result<Vec<Question>, ZsxqError> {
        if group_id.is_empty()
            || group_id.len() > MAX_GROUP_ID_LEN
            || !group_id.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(ZsxqError::InvalidInput(
                "group id must be 1 to 20 decimal digits".into(),
            ));
        }
        if !(1..=MAX_COUNT).contains(&count) {
            return Err(ZsxqError::InvalidInput(format!(
                "count must be between 1 and {MAX_COUNT}"
            )));
        }
        let mut query = vec![
            ("scope", "unanswered_questions".to_owned()),
            ("count", count.to_string()),
        ];
        if let Some(end_time) = end_time {
            if end_time.is_empty() || end_time.len() > MAX_END_TIME_LEN {
                return Err(ZsxqError::InvalidInput(
                    "end_time must be a create_time as received".into(),
                ));
            }
            query.push(("end_time", end_time.to_owned()));
        }
        let path = format!("/v2/groups/{group_id}/topics");
        let body = self.request(Method::GET, &path, &query, None).await?;
        types::parse_topics(&body)
    }

    /// Answers the question `topic_id` with `text` (plain text; see
    /// [`crate::render_answer`]). `silenced` makes the answer visible only to
    /// the asker.
    ///
    /// # Errors
    /// [`ZsxqError::InvalidInput`] for an empty text; the request's and the
    /// envelope's errors. When [`ZsxqError::is_ambiguous`], the answer may
    /// have been posted: check [`Self::is_answered`] before retrying.
    pub async fn answer(
        &self,
        topic_id: TopicId,
        text: &str,
        silenced: bool,
    ) -> Result<(), ZsxqError> {
        if text.trim().is_empty() {
            return Err(ZsxqError::InvalidInput("answer text is empty".into()));
        }
        let body = json!({
            "req_data": { "text": text, "image_ids": [], "silenced": silenced }
        });
        let path = format!("/v2/topics/{topic_id}/answer");
        let resp = self.request(Method::POST, &path, &[], Some(&body)).await?;
        types::parse_envelope(&resp).map(|_| ())
    }

    /// Whether topic `topic_id` is answered (`resp_data.topic.answered` of
    /// `GET /v2/topics/{id}`).
    ///
    /// # Errors
    /// The request's and the envelope's errors; [`ZsxqError::Decode`] when
    /// the flag is missing.
    pub async fn is_answered(&self, topic_id: TopicId) -> Result<bool, ZsxqError> {
        let path = format!("/v2/topics/{topic_id}");
        let resp = self.request(Method::GET, &path, &[], None).await?;
        types::parse_answered(&resp)
    }

    /// Sends one request in its turn and returns the body of a 2xx answer.
    async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<Vec<u8>, ZsxqError> {
        // Check the token and headers before taking a turn.
        let mut headers = self.static_headers()?;
        self.wait_turn().await;
        headers.insert(
            HeaderName::from_static("x-request-id"),
            HeaderValue::try_from(self.request_id()?)
                .map_err(|_| ZsxqError::Http("request id is not a header value".into()))?,
        );
        headers.insert(
            HeaderName::from_static("x-timestamp"),
            HeaderValue::from(unix_secs()),
        );
        let url = format!("{}{path}", self.inner.api_base);
        let mut req = self
            .inner
            .http
            .request(method.clone(), &url)
            .headers(headers)
            .timeout(self.inner.timeout);
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        tracing::debug!(%method, path, "zsxq request");
        let mut resp = req.send().await.map_err(send_error)?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            tracing::warn!(path, "zsxq rejected the access token (HTTP 401)");
            return Err(ZsxqError::Unauthorized);
        }
        if status.is_server_error() {
            return Err(ZsxqError::Unconfirmed(format!("status {status}")));
        }
        if !status.is_success() {
            return Err(ZsxqError::Http(format!("status {status}")));
        }
        let mut buf = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(read_error)? {
            if buf.len().saturating_add(chunk.len()) > MAX_RESPONSE_BYTES {
                return Err(types::decode_error("response body too large", &buf));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    }

    /// Waits until [`Inner::min_interval`] has passed since the previous
    /// request of this client (and its clones), then claims the slot.
    async fn wait_turn(&self) {
        let mut last = self.inner.last_request.lock().await;
        if let Some(prev) = *last
            && let Some(next) = prev.checked_add(self.inner.min_interval)
        {
            tokio::time::sleep_until(next).await;
        }
        *last = Some(Instant::now());
    }

    /// The headers that do not change per request; the cookie is marked
    /// sensitive.
    fn static_headers(&self) -> Result<HeaderMap, ZsxqError> {
        let token = self
            .inner
            .token
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        check_token(&token)?;
        let mut cookie = HeaderValue::try_from(format!("zsxq_access_token={token}"))
            .map_err(|_| ZsxqError::InvalidInput("access token is not a cookie value".into()))?;
        cookie.set_sensitive(true);
        let value = |name: &str, v: &str| {
            HeaderValue::try_from(v)
                .map_err(|_| ZsxqError::InvalidInput(format!("{name} is not a header value")))
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, cookie);
        headers.insert(
            header::USER_AGENT,
            value("user_agent", &self.inner.user_agent)?,
        );
        headers.insert(header::ORIGIN, HeaderValue::from_static(WEB_ORIGIN));
        headers.insert(
            header::REFERER,
            HeaderValue::from_static("https://wx.zsxq.com/"),
        );
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/plain, */*"),
        );
        headers.insert(
            HeaderName::from_static("x-version"),
            value("x_version", &self.inner.x_version)?,
        );
        Ok(headers)
    }

    /// A random UUID (version 4 layout) for `X-Request-Id`.
    fn request_id(&self) -> Result<String, ZsxqError> {
        let mut b = [0u8; 16];
        self.inner
            .rng
            .fill(&mut b)
            .map_err(|_| ZsxqError::Http("system random generator failed".into()))?;
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h = hex::encode(b);
        Ok(format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        ))
    }
}

/// Refuses a token that is empty, too long, or holds characters that could
/// break out of the cookie (`;`, `,`, quotes, spaces, controls). The message
/// never quotes the token.
fn check_token(token: &str) -> Result<(), ZsxqError> {
    if token.is_empty() {
        return Err(ZsxqError::InvalidInput("access token is empty".into()));
    }
    if token.len() > MAX_TOKEN_LEN
        || !token
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"' | b'\\'))
    {
        return Err(ZsxqError::InvalidInput(
            "access token has characters a cookie cannot hold".into(),
        ));
    }
    Ok(())
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A reqwest error's message without its URL, with its causes.
fn message(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// Maps a failed send. A connect failure (including a connect timeout)
/// means zsxq never saw the request; a timeout or failure later may mean it
/// did.
fn send_error(e: reqwest::Error) -> ZsxqError {
    let e = e.without_url();
    if e.is_connect() || e.is_builder() || e.is_redirect() {
        ZsxqError::Http(message(&e))
    } else if e.is_timeout() {
        ZsxqError::Timeout
    } else {
        ZsxqError::Unconfirmed(message(&e))
    }
}

/// Maps a failure while reading the body: zsxq had answered, so the
/// request reached it.
fn read_error(e: reqwest::Error) -> ZsxqError {
    let e = e.without_url();
    if e.is_timeout() {
        ZsxqError::Timeout
    } else {
        ZsxqError::Unconfirmed(message(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_token() {
        let cfg = ClientConfig {
            access_token: "TOKEN-5ecret-1234".into(),
            ..ClientConfig::default()
        };
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("5ecret"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
        let client = Client::new(cfg, reqwest::Client::new());
        let dbg = format!("{client:?}");
        assert!(!dbg.contains("5ecret"), "{dbg}");
        assert!(dbg.contains("api.zsxq.com"));
    }

    #[test]
    fn tokens_that_break_the_cookie_are_refused() {
        assert!(check_token("0a1b2c3d-4e5f-6789-abcd-ef0123456789_5E3FA8").is_ok());
        for bad in ["", "a;b=c", "a b", "a\r\nX: y", "a,b", "\"a\"", "é"] {
            let e = check_token(bad).unwrap_err();
            assert!(matches!(e, ZsxqError::InvalidInput(_)));
            if !bad.is_empty() {
                assert!(!e.to_string().contains(bad), "{e}");
            }
        }
    }

    #[test]
    fn request_ids_look_like_uuids() {
        let c = Client::new(ClientConfig::default(), reqwest::Client::new());
        let a = c.request_id().unwrap();
        let b = c.request_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        let parts: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert_eq!(a.as_bytes()[14], b'4');
    }

    #[test]
    fn client_is_thread_safe() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Client>();
        assert_send_sync::<ZsxqError>();
    }
}
