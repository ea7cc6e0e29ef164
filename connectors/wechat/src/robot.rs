//! The WeCom group robot (群机器人) webhook: send-only text and markdown
//! messages into one group chat, used for operator alerts.
//!
//! The webhook `key` is the only credential, so it never appears in logs,
//! errors or `Debug`. WeCom allows 20 messages per minute per robot; the
//! client keeps its own rolling count and refuses the 21st locally with
//! [`WechatError::RateLimited`] instead of letting WeCom answer 45009, so
//! the caller can drop or aggregate alerts during an incident.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::aibot::truncate_utf8;
use crate::client::{WechatError, api_result, send_limited};

/// Largest text message, in UTF-8 bytes.
pub const ROBOT_TEXT_MAX_BYTES: usize = 2048;

/// Largest markdown message, in UTF-8 bytes (WeCom answers 40058 beyond).
pub const ROBOT_MARKDOWN_MAX_BYTES: usize = 4096;

/// Messages allowed per robot in any rolling [`ROBOT_RATE_WINDOW`].
pub const ROBOT_MESSAGES_PER_WINDOW: usize = 20;

/// The window of [`ROBOT_MESSAGES_PER_WINDOW`].
pub const ROBOT_RATE_WINDOW: Duration = Duration::from_secs(60);

/// Appended to a message cut to fit its limit.
const ELLIPSIS: &str = "…";

/// A sender to one group robot. Cheap to clone; clones share the rate
/// limit.
#[derive(Clone)]
pub struct RobotClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// Shared HTTP client; its timeouts are the caller's choice.
    http: reqwest::Client,
    /// The webhook URL; with `key` absent it is the full URL as configured
    /// (and holds the key in its query).
    url: String,
    /// The robot key, sent as the `key` query parameter when the client was
    /// built from a bare key.
    key: Option<String>,
    /// Send times of the last minute.
    window: Mutex<RateWindow>,
}

impl fmt::Debug for RobotClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL of a full-URL client holds the key: show the host only.
        let host = reqwest::Url::parse(&self.inner.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        f.debug_struct("RobotClient")
            .field("host", &host)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A rolling-window counter: at most `limit` acquisitions in any `window`.
#[derive(Debug)]
struct RateWindow {
    sent: VecDeque<Instant>,
    limit: usize,
    window: Duration,
}

impl RateWindow {
    fn new(limit: usize, window: Duration) -> Self {
        Self {
            sent: VecDeque::with_capacity(limit),
            limit,
            window,
        }
    }

    /// Records a send at `now` and returns true, or returns false when
    /// `limit` sends already happened within `window` before `now`.
    fn try_acquire(&mut self, now: Instant) -> bool {
        while self
            .sent
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= self.window)
        {
            self.sent.pop_front();
        }
        if self.sent.len() >= self.limit {
            return false;
        }
        self.sent.push_back(now);
        true
    }
}

/// `content` cut to at most `max_bytes` bytes, ending with "…" when cut.
fn fit(content: &str, max_bytes: usize) -> String {
    if content.len() <= max_bytes {
        return content.to_owned();
    }
    let head = truncate_utf8(content, max_bytes.saturating_sub(ELLIPSIS.len()));
    format!("{head}{ELLIPSIS}")
}

impl RobotClient {
    /// Creates a sender from the robot's full webhook URL
    /// (`https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=KEY`, used as
    /// is) or from its bare key, sent to `{api_base}/cgi-bin/webhook/send`
    /// (`api_base` normally [`crate::WECOM_API_BASE`]; unused for a full
    /// URL).
    #[must_use]
    pub fn new(webhook_url_or_key: &str, api_base: &str, http: reqwest::Client) -> Self {
        let given = webhook_url_or_key.trim();
        let lower = given.to_ascii_lowercase();
        let (url, key) = if lower.starts_with("https://") || lower.starts_with("http://") {
            (given.to_owned(), None)
        } else {
            (
                format!("{}/cgi-bin/webhook/send", api_base.trim_end_matches('/')),
                Some(given.to_owned()),
            )
        };
        Self {
            inner: Arc::new(Inner {
                http,
                url,
                key,
                window: Mutex::new(RateWindow::new(
                    ROBOT_MESSAGES_PER_WINDOW,
                    ROBOT_RATE_WINDOW,
                )),
            }),
        }
    }

    /// Sends a text message, cut to [`ROBOT_TEXT_MAX_BYTES`] (ending with
    /// "…") at a char boundary.
    ///
    /// # Errors
    /// [`WechatError::RateLimited`] without any request when 20 messages
    /// went out in the last minute; otherwise [`WechatError`] from the
    /// request ([`WechatError::Api`] for a non-zero `errcode`, e.g. 93000
    /// for an invalid key).
    pub async fn send_text(&self, content: &str) -> Result<(), WechatError> {
        let body = json!({
            "msgtype": "text",
            "text": { "content": fit(content, ROBOT_TEXT_MAX_BYTES) },
        });
        self.send(&body).await
    }

    /// Sends a markdown message, cut to [`ROBOT_MARKDOWN_MAX_BYTES`] (ending
    /// with "…") at a char boundary. A cut may leave markdown unbalanced;
    /// WeCom renders it anyway.
    ///
    /// # Errors
    /// As [`Self::send_text`].
    pub async fn send_markdown(&self, content: &str) -> Result<(), WechatError> {
        let body = json!({
            "msgtype": "markdown",
            "markdown": { "content": fit(content, ROBOT_MARKDOWN_MAX_BYTES) },
        });
        self.send(&body).await
    }

    async fn send(&self, body: &Value) -> Result<(), WechatError> {
        let allowed = self
            .inner
            .window
            .lock()
            // The counter stays consistent even if a holder panicked.
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .try_acquire(Instant::now());
        if !allowed {
            tracing::debug!("group robot rate limit reached; message not sent");
            return Err(WechatError::RateLimited);
        }
        let mut req = self.inner.http.post(&self.inner.url).json(body);
        if let Some(key) = &self.inner.key {
            req = req.query(&[("key", key.as_str())]);
        }
        api_result(&send_limited(req).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_window() {
        let start = Instant::now();
        let mut w = RateWindow::new(3, Duration::from_secs(60));
        assert!(w.try_acquire(start));
        assert!(w.try_acquire(start + Duration::from_secs(10)));
        assert!(w.try_acquire(start + Duration::from_secs(20)));
        assert!(!w.try_acquire(start + Duration::from_secs(30)));
        // Refused attempts are not counted.
        assert!(!w.try_acquire(start + Duration::from_secs(59)));
        // The first send leaves the window after 60 s; one slot frees up.
        assert!(w.try_acquire(start + Duration::from_secs(60)));
        assert!(!w.try_acquire(start + Duration::from_secs(61)));
        assert!(w.try_acquire(start + Duration::from_secs(70)));
        // Much later everything has expired.
        for i in 0..3 {
            assert!(w.try_acquire(start + Duration::from_secs(1000 + i)));
        }
        assert!(!w.try_acquire(start + Duration::from_secs(1003)));
        // A clock reading before the recorded sends does not underflow.
        assert!(!w.try_acquire(start));
    }

    #[test]
    fn fit_cuts_at_char_boundaries_with_an_ellipsis() {
        assert_eq!(fit("short", 2048), "short");
        let exact = "a".repeat(2048);
        assert_eq!(fit(&exact, 2048), exact);
        let long = "a".repeat(3000);
        let cut = fit(&long, 2048);
        assert_eq!(cut.len(), 2048);
        assert!(cut.ends_with('…'));
        // 2045 bytes of room: 681 CJK chars (2043 bytes) + "…".
        let cjk = "警".repeat(1000);
        let cut = fit(&cjk, 2048);
        assert_eq!(cut.len(), 2046);
        assert_eq!(cut.chars().count(), 682);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn key_or_url_and_redacted_debug() {
        let http = reqwest::Client::new();
        let c = RobotClient::new("secret-key-1", "https://qyapi.example/", http.clone());
        assert_eq!(c.inner.url, "https://qyapi.example/cgi-bin/webhook/send");
        assert_eq!(c.inner.key.as_deref(), Some("secret-key-1"));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("secret-key-1"), "{dbg}");
        assert!(dbg.contains("qyapi.example"));

        let c = RobotClient::new(
            " HTTPS://hook.example/cgi-bin/webhook/send?key=secret-key-2 ",
            "unused",
            http,
        );
        assert_eq!(
            c.inner.url,
            "HTTPS://hook.example/cgi-bin/webhook/send?key=secret-key-2"
        );
        assert_eq!(c.inner.key, None);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("secret-key-2"), "{dbg}");
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<RobotClient>();
    }
}
