//! [`Client`]: the HTTP side of the crate. Sends chat, model, image and
//! moderation requests to one OpenAI-compatible server with timeouts, retries (see [`crate::retry`])
//! and API key rotation (see [`crate::keys`]), and maps every failure to
//! [`Error`].
//!
//! Retries only ever happen before a response is handed to the caller; for
//! streams that means before the first chunk, so a user never sees text
//! twice.
//!
//! `response.rs` reads what comes back (bodies within their limits, error responses, transport
//! errors), for this file and the audio and speech requests.

mod response;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Response};
use serde_json::Value;
use tokio::time::Instant;

pub(crate) use self::response::{
    Failure, decode_json_response, read_before, read_full, request_id,
};
use self::response::{
    MAX_ERROR_BODY_BYTES, failure_from_response, is_json, map_reqwest_error, read_limited,
};
use crate::error::{Error, api_error_from_json};
use crate::keys::KeyRing;
use crate::retry::{self, Backoff, TooLong};
use crate::stream::ChatStream;
use crate::types::{
    ChatRequest, ChatResponse, ImageRequest, ImagesResponse, ModelInfo, ModelList,
    ModerationRequest, ModerationResponse, StreamOptions,
};

/// Settings of a [`Client`]. All durations apply per attempt.
#[derive(Clone)]
pub struct ClientConfig {
    /// API root, e.g. `https://api.openai.com/v1`; requests go to
    /// `{base_url}/chat/completions` and `{base_url}/models`. A trailing
    /// slash is tolerated.
    pub base_url: String,
    /// Keys used in turn (round robin). Empty for local servers that need
    /// none; then no `Authorization` header is sent.
    pub api_keys: Vec<String>,
    /// Longest time to establish a connection (TCP + TLS). Default 5 s.
    pub connect_timeout: Duration,
    /// Non-streaming: the whole request, body included. Streaming: until the
    /// response headers. Default 600 s (long answers from slow models).
    pub timeout: Duration,
    /// Streaming: longest gap between two received chunks. Default 60 s.
    pub idle_timeout: Duration,
    /// Retries after the first attempt. Default 2 (so up to 3 attempts).
    pub max_retries: u32,
    /// First backoff delay, doubled for each further retry. Default 500 ms.
    pub initial_backoff: Duration,
    /// Cap of the backoff delay. Default 8 s.
    pub max_backoff: Duration,
    /// Longest server-requested delay (`retry-after[-ms]`) honoured; a longer
    /// one makes the request fail with the server's error. Default 120 s.
    pub max_retry_after: Duration,
    /// How long a key that got 401, 403 or 429 is set aside. Default 60 s.
    pub key_cooldown: Duration,
    /// `User-Agent` header. Default `chatrelay/<version>`.
    pub user_agent: String,
    /// Extra `(name, value)` headers sent with every request, for providers
    /// and gateways that want one (`X-DashScope-SSE`, `OpenAI-Organization`,
    /// a gateway's routing header, ...). Default empty. Values are treated as
    /// secrets: never logged nor shown by `Debug`. `Authorization`,
    /// `Content-Type`, `Accept` and the HTTP framing headers (`Host`,
    /// `Content-Length`, `Transfer-Encoding`, `Connection`) are refused: the
    /// client sets them itself.
    pub headers: Vec<(String, String)>,
    /// Speak HTTP/2 without TLS from the first byte (h2c "prior knowledge"), for plain-HTTP
    /// servers and gateways that support it: one connection then carries every concurrent
    /// request instead of one connection (and its buffers) each. Default false. HTTPS
    /// servers need nothing: HTTP/2 is negotiated with the ones that offer it.
    pub http2_prior_knowledge: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com/v1".to_owned(),
            api_keys: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(60),
            max_retries: 2,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(120),
            key_cooldown: Duration::from_secs(60),
            user_agent: concat!("chatrelay/", env!("CARGO_PKG_VERSION")).to_owned(),
            headers: Vec::new(),
            http2_prior_knowledge: false,
        }
    }
}

impl fmt::Debug for ClientConfig {
    // Hand-written so that keys can never end up in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url)
            .field(
                "api_keys",
                &format_args!("[{} redacted]", self.api_keys.len()),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_retries", &self.max_retries)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("max_retry_after", &self.max_retry_after)
            .field("key_cooldown", &self.key_cooldown)
            .field("user_agent", &self.user_agent)
            .field("http2_prior_knowledge", &self.http2_prior_knowledge)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(name, _)| format!("{name}: <redacted>"))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Client for one OpenAI-compatible server. Cheap to clone: clones share one
/// connection pool and one key rotation.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// `base_url` without trailing slashes.
    base_url: String,
    keys: KeyRing,
    timeout: Duration,
    idle_timeout: Duration,
    max_retries: u32,
    key_cooldown: Duration,
    backoff: Backoff,
    rng: ring::rand::SystemRandom,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.base_url)
            .field("keys", &self.inner.keys.len())
            .finish_non_exhaustive()
    }
}

/// `Accept` header of JSON requests.
pub(crate) const ACCEPT_JSON: &str = "application/json";
/// `Content-Type` of JSON bodies.
const CONTENT_JSON: &str = "application/json";
/// `Accept` header of streaming requests.
const ACCEPT_SSE: &str = "text/event-stream";

impl Client {
    /// Builds a client; fails if the URL, a key or a timeout is unusable.
    pub fn new(cfg: ClientConfig) -> Result<Self, Error> {
        let base_url = cfg.base_url.trim().trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base_url)
            .map_err(|e| Error::InvalidConfig(format!("base_url {base_url:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::InvalidConfig(format!(
                "base_url {base_url:?} must start with http:// or https://"
            )));
        }
        for (i, key) in cfg.api_keys.iter().enumerate() {
            // The message names the key by position only: it must not leak.
            let bad = key.is_empty()
                || key.chars().any(char::is_whitespace)
                || HeaderValue::from_str(&format!("Bearer {key}")).is_err();
            if bad {
                return Err(Error::InvalidConfig(format!(
                    "api_keys[{i}] is empty or contains characters not allowed in a header"
                )));
            }
        }
        let extra_headers = extra_headers(&cfg.headers)?;
        for (name, d) in [
            ("connect_timeout", cfg.connect_timeout),
            ("timeout", cfg.timeout),
            ("idle_timeout", cfg.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::InvalidConfig(format!("{name} must not be zero")));
            }
        }
        let mut http = reqwest::Client::builder();
        if cfg.http2_prior_knowledge {
            http = http.http2_prior_knowledge();
        }
        let http = http
            .connect_timeout(cfg.connect_timeout)
            .user_agent(cfg.user_agent.clone())
            // Default headers go on every request; the ones the client sets
            // per request cannot clash, since `extra_headers` refuses them.
            .default_headers(extra_headers)
            // Streams can sit quietly for a while; keepalive lets dead peers
            // be noticed and keeps NAT mappings open.
            .tcp_keepalive(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::InvalidConfig(format!("HTTP client: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base_url,
                keys: KeyRing::new(&cfg.api_keys),
                timeout: cfg.timeout,
                idle_timeout: cfg.idle_timeout,
                max_retries: cfg.max_retries,
                key_cooldown: cfg.key_cooldown,
                backoff: Backoff {
                    initial: cfg.initial_backoff,
                    max: cfg.max_backoff,
                    max_retry_after: cfg.max_retry_after,
                },
                rng: ring::rand::SystemRandom::new(),
            }),
        })
    }

    /// The client's random source (multipart boundaries).
    pub(crate) fn rng(&self) -> &ring::rand::SystemRandom {
        &self.inner.rng
    }

    /// Sends a non-streaming chat completion (`stream` is forced to `false`
    /// and `stream_options` removed) and returns the whole answer.
    pub async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, Error> {
        let mut req = req.clone();
        req.stream = Some(false);
        req.stream_options = None;
        strip_stream_extras(&mut req);
        self.post_json("/chat/completions", &req).await
    }

    /// Starts a streaming chat completion (`stream: true`, and
    /// `stream_options.include_usage: true` so the last chunk carries the
    /// token usage). Retries happen only until the response headers arrive;
    /// after that, failures are reported by the returned [`ChatStream`].
    pub async fn chat_stream(&self, req: &ChatRequest) -> Result<ChatStream, Error> {
        let mut req = req.clone();
        req.stream = Some(true);
        req.stream_options = Some(StreamOptions {
            include_usage: true,
        });
        strip_stream_extras(&mut req);
        let body = encode(&req)?;
        // The body is left unread: it is the stream.
        let resp = self
            .execute(
                Method::POST,
                "/chat/completions",
                Some(body),
                ACCEPT_SSE,
                |resp, _| std::future::ready(Ok(resp)),
            )
            .await?;
        let request_id = request_id(resp.headers());
        if is_json(resp.headers()) {
            // Some gateways answer a streaming request with a plain JSON
            // body (typically an error with status 200). Report it as what
            // it is instead of as an empty, incomplete stream.
            return Err(self.json_instead_of_stream(resp, request_id).await);
        }
        tracing::debug!(request_id = ?request_id, "chat stream started");
        Ok(ChatStream::from_bytes(
            resp.bytes_stream(),
            self.inner.idle_timeout,
            request_id,
        ))
    }

    /// Lists the models the server offers (`GET {base_url}/models`).
    pub async fn models(&self) -> Result<Vec<ModelInfo>, Error> {
        let (body, request_id) = self
            .execute(Method::GET, "/models", None, ACCEPT_JSON, read_full)
            .await?;
        let list: ModelList = decode_json_response(&body, request_id)?;
        Ok(list.data)
    }

    /// Generates images (`POST {base_url}/images/generations`), with the
    /// same timeouts, retries and error mapping as [`Client::chat`]. The
    /// request timeout covers the whole generation, which can take a minute.
    pub async fn images_generate(&self, req: &ImageRequest) -> Result<ImagesResponse, Error> {
        self.post_json("/images/generations", req).await
    }

    /// Classifies a text with the provider's moderation model
    /// (`POST {base_url}/moderations`), with the same timeouts, retries and
    /// error mapping as [`Client::chat`].
    pub async fn moderate(&self, req: &ModerationRequest) -> Result<ModerationResponse, Error> {
        self.post_json("/moderations", req).await
    }

    /// A non-streaming JSON request: POSTs `body` to `path` and decodes the
    /// whole (size-limited) answer.
    async fn post_json<B, T>(&self, path: &str, body: &B) -> Result<T, Error>
    where
        B: serde::Serialize + ?Sized,
        T: serde::de::DeserializeOwned,
    {
        let body = encode(body)?;
        let (body, request_id) = self
            .execute(Method::POST, path, Some(body), ACCEPT_JSON, read_full)
            .await?;
        decode_json_response(&body, request_id)
    }

    async fn json_instead_of_stream(&self, resp: Response, request_id: Option<String>) -> Error {
        let status = resp.status().as_u16();
        let read =
            tokio::time::timeout(self.inner.timeout, read_limited(resp, MAX_ERROR_BODY_BYTES))
                .await;
        let body = match read {
            Ok(Ok((body, _))) => body,
            Ok(Err(e)) => return map_reqwest_error(&e),
            Err(_) => return Error::Timeout { what: "response" },
        };
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => api_error_from_json(status, &v, request_id).unwrap_or_else(|| {
                Error::decode(
                    "expected an event stream but got a JSON body (streaming unsupported?)",
                    &body,
                )
            }),
            Err(e) => Error::decode(format!("expected an event stream: {e}"), &body),
        }
    }

    /// Runs attempts until one succeeds or the retry policy gives up.
    /// `on_success` consumes a 2xx response before the attempt's deadline;
    /// its failures (e.g. a body read timeout) are retried like any other.
    async fn execute<T, F, Fut>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        accept: &'static str,
        on_success: F,
    ) -> Result<T, Error>
    where
        F: Fn(Response, Instant) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        self.execute_as(method, path, body, CONTENT_JSON, accept, on_success)
            .await
    }

    /// [`Client::execute`] with a body of `content_type` (a multipart upload's, say).
    pub(crate) async fn execute_as<T, F, Fut>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
        accept: &'static str,
        on_success: F,
    ) -> Result<T, Error>
    where
        F: Fn(Response, Instant) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let inner = &self.inner;
        let url = format!("{}{}", inner.base_url, path);
        let body = body.map(Bytes::from);
        let mut retries = 0u32;
        // Immediate retries with another key after 401/403; bounded so that
        // a request tries each key at most once for that reason.
        let mut key_switches = 0usize;
        loop {
            let key = inner.keys.pick(Instant::now());
            let fp = key.map_or("none", |k| inner.keys.fingerprint(k));
            tracing::debug!(%method, path, key = fp, retries, "sending request");
            let attempt = self.attempt(
                &method,
                &url,
                body.clone().map(|b| (b, content_type)),
                key,
                accept,
                &on_success,
            );
            let mut failure = match attempt.await {
                Ok(success) => return Ok(success),
                Err(failure) => failure,
            };
            if let Some(secret) = key.and_then(|k| inner.keys.secret(k)) {
                failure.error.redact(secret, fp);
            }
            let status = failure.error.status();
            if let (Some(k), Some(s @ (401 | 403 | 429))) = (key, status) {
                tracing::warn!(key = fp, status = s, cooldown = ?inner.key_cooldown, "setting API key aside");
                inner.keys.set_aside(k, Instant::now(), inner.key_cooldown);
            }
            if matches!(status, Some(401 | 403))
                && failure.should_retry_header != Some(false)
                && key_switches + 1 < inner.keys.len()
                && inner.keys.any_available(Instant::now())
            {
                key_switches += 1;
                tracing::warn!(
                    status = ?status,
                    key = fp,
                    error = %failure.error,
                    "key rejected; retrying with the next key"
                );
                continue;
            }
            if retries >= inner.max_retries
                || !retry::should_retry(&failure.error, failure.should_retry_header)
            {
                return Err(failure.error);
            }
            let jitter = retry::jitter(&inner.rng);
            let delay = match inner.backoff.delay(failure.retry_after, retries, jitter) {
                Ok(delay) => delay,
                Err(TooLong(asked)) => {
                    tracing::warn!(
                        status = ?status,
                        retry_after = ?asked,
                        max = ?inner.backoff.max_retry_after,
                        "server asks to wait longer than allowed; giving up"
                    );
                    return Err(failure.error);
                }
            };
            retries += 1;
            tracing::warn!(
                status = ?status,
                attempt = retries + 1,
                max_attempts = inner.max_retries + 1,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                error = %failure.error,
                "request failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One HTTP exchange. The timeout covers sending and the response
    /// headers, plus whatever `on_success` reads, or the error body.
    async fn attempt<T, F, Fut>(
        &self,
        method: &Method,
        url: &str,
        body: Option<(Bytes, &str)>,
        key: Option<usize>,
        accept: &'static str,
        on_success: &F,
    ) -> Result<T, Failure>
    where
        F: Fn(Response, Instant) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.timeout;
        let mut rb = inner
            .http
            .request(method.clone(), url)
            .header(ACCEPT, accept);
        if let Some((body, content_type)) = body {
            rb = rb.header(CONTENT_TYPE, content_type).body(body);
        }
        if let Some(secret) = key.and_then(|k| inner.keys.secret(k)) {
            // `bearer_auth` marks the header sensitive, so it is redacted
            // from reqwest's and hyper's debug output.
            rb = rb.bearer_auth(secret);
        }
        let resp = match tokio::time::timeout_at(deadline, rb.send()).await {
            Err(_) => return Err(Error::Timeout { what: "response" }.into()),
            Ok(Err(e)) => return Err(map_reqwest_error(&e).into()),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        if status.is_success() {
            return on_success(resp, deadline).await;
        }
        let headers = resp.headers().clone();
        // The status alone is enough to report the error, so a body that
        // cannot be read (reset, timeout) just leaves the message generic.
        let body = match read_before(deadline, resp, MAX_ERROR_BODY_BYTES).await {
            Ok((body, _)) => body,
            Err(_) => Bytes::new(),
        };
        Err(failure_from_response(
            status,
            &headers,
            &body,
            request_id(&headers),
        ))
    }
}

/// Headers set by the client itself (or by the HTTP layer), which an extra
/// header must not override or duplicate.
const RESERVED_HEADERS: [&str; 7] = [
    "authorization",
    "content-type",
    "accept",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
];

/// Validates [`ClientConfig::headers`] into a header map. Errors name the
/// header (by position and name) but never echo a value, which may be a
/// credential.
fn extra_headers(headers: &[(String, String)]) -> Result<HeaderMap, Error> {
    let mut map = HeaderMap::new();
    for (i, (name, value)) in headers.iter().enumerate() {
        let name = name.trim();
        let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            Error::InvalidConfig(format!("headers[{i}]: {name:?} is not a valid header name"))
        })?;
        if RESERVED_HEADERS.contains(&header_name.as_str()) {
            return Err(Error::InvalidConfig(format!(
                "headers[{i}]: {name} is set by the client and cannot be overridden"
            )));
        }
        let mut header_value = HeaderValue::from_str(value.trim()).map_err(|_| {
            Error::InvalidConfig(format!(
                "headers[{i}]: the value of {name} contains characters not allowed in a header"
            ))
        })?;
        // Keeps the value out of reqwest's and hyper's debug output.
        header_value.set_sensitive(true);
        map.append(header_name, header_value);
    }
    Ok(map)
}

/// Serializes a request body.
fn encode<B: serde::Serialize + ?Sized>(req: &B) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(req).map_err(|e| Error::Decode {
        message: format!("could not encode the request: {e}"),
        raw: String::new(),
    })
}

/// `stream` and `stream_options` are set by the client; copies left in
/// `extra` would be serialized as duplicate JSON keys.
fn strip_stream_extras(req: &mut ChatRequest) {
    req.extra.remove("stream");
    req.extra.remove("stream_options");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults() {
        let cfg = ClientConfig::default();
        assert_eq!(cfg.connect_timeout, Duration::from_secs(5));
        assert_eq!(cfg.timeout, Duration::from_secs(600));
        assert_eq!(cfg.idle_timeout, Duration::from_secs(60));
        assert_eq!(cfg.max_retries, 2);
        assert_eq!(cfg.initial_backoff, Duration::from_millis(500));
        assert_eq!(cfg.max_backoff, Duration::from_secs(8));
        assert_eq!(cfg.max_retry_after, Duration::from_secs(120));
        assert_eq!(cfg.key_cooldown, Duration::from_secs(60));
        assert!(cfg.user_agent.starts_with("chatrelay/"));
        assert!(cfg.headers.is_empty());
    }

    #[test]
    fn config_debug_redacts_keys() {
        let cfg = ClientConfig {
            api_keys: vec!["sk-very-secret".into()],
            ..ClientConfig::default()
        };
        let text = format!("{cfg:?}");
        assert!(!text.contains("sk-very-secret"), "{text}");
        assert!(text.contains("1 redacted"));
    }

    #[test]
    fn invalid_configs_are_rejected_without_leaking_keys() {
        let bad = |cfg: ClientConfig| Client::new(cfg).unwrap_err();
        assert!(matches!(
            bad(ClientConfig {
                base_url: "not a url".into(),
                ..Default::default()
            }),
            Error::InvalidConfig(_)
        ));
        assert!(matches!(
            bad(ClientConfig {
                base_url: "ftp://x/v1".into(),
                ..Default::default()
            }),
            Error::InvalidConfig(_)
        ));
        let err = bad(ClientConfig {
            api_keys: vec!["sk-ok".into(), "sk-bad key\n".into()],
            ..Default::default()
        });
        let text = err.to_string();
        assert!(
            text.contains("api_keys[1]") && !text.contains("sk-bad"),
            "{text}"
        );
        assert!(matches!(
            bad(ClientConfig {
                idle_timeout: Duration::ZERO,
                ..Default::default()
            }),
            Error::InvalidConfig(_)
        ));
        let ok = Client::new(ClientConfig {
            base_url: "http://127.0.0.1:1/v1/".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ok.inner.base_url, "http://127.0.0.1:1/v1");
        assert!(!format!("{ok:?}").is_empty());
    }

    #[test]
    fn extra_headers_are_validated_without_echoing_values() {
        let cfg = |headers: &[(&str, &str)]| ClientConfig {
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            ..ClientConfig::default()
        };
        let ok = cfg(&[
            ("X-DashScope-SSE", "enable"),
            ("OpenAI-Organization", "org-1"),
        ]);
        assert!(Client::new(ok.clone()).is_ok());
        let debug = format!("{ok:?}");
        assert!(debug.contains("X-DashScope-SSE: <redacted>"), "{debug}");
        assert!(!debug.contains("org-1"), "{debug}");

        for reserved in ["Authorization", "content-type", "ACCEPT", "Host"] {
            let err = Client::new(cfg(&[("X-Ok", "1"), (reserved, "sk-secret-value")]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("headers[1]") && err.contains(reserved) && !err.contains("sk-secret"),
                "{err}"
            );
        }
        let err = Client::new(cfg(&[("Bad Name", "v")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"Bad Name\""), "{err}");
        let err = Client::new(cfg(&[("X-Token", "sk-secret\nvalue")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("X-Token") && !err.contains("sk-secret"),
            "{err}"
        );
        assert!(extra_headers(&[]).unwrap().is_empty());
    }

    #[test]
    fn stream_fields_in_extra_are_removed() {
        let mut req = ChatRequest::default();
        req.extra.insert("stream".into(), Value::Bool(false));
        req.extra.insert("stream_options".into(), Value::Null);
        req.extra.insert("top_p".into(), Value::from(1));
        strip_stream_extras(&mut req);
        assert_eq!(req.extra.len(), 1);
    }
}
