//! The WeCom (企业微信) server API for a self-built app: the access_token
//! (`/cgi-bin/gettoken`), application messages (`/cgi-bin/message/send`) and temporary media
//! downloads (`/cgi-bin/media/get`: a voice message's AMR audio, size-limited).
//!
//! The token cache is the Official Account client's ([`crate::client`]):
//! one token per client (that is, per app secret), fetched by one caller at
//! a time, refreshed five minutes before it expires and refetched once when
//! WeCom calls it invalid (40001, 40014, 42001). Unlike the Official
//! Account's classic token, fetching a WeCom token again does not invalidate
//! the one other processes hold: within its validity the same token comes
//! back.

use std::fmt;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::client::{
    CachedToken, TokenCache, WechatError, api_result, parse_token_response, send_limited,
};
use crate::media::{Media, MediaError, download};

/// The production WeCom API root.
pub const WECOM_API_BASE: &str = "https://qyapi.weixin.qq.com";

/// A client of one WeCom self-built app's API. Cheap to clone; clones share
/// the token cache.
#[derive(Clone)]
pub struct WecomClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// Shared HTTP client; its timeouts are the caller's choice.
    http: reqwest::Client,
    /// API root without a trailing slash.
    api_base: String,
    /// The corpid (not secret; used in logs).
    corp_id: String,
    /// The app's Secret; only ever put in the gettoken query, whose URL is
    /// stripped from every error.
    secret: String,
    /// The app's AgentId, sent with every message.
    agent_id: i64,
    /// The cached token.
    tokens: TokenCache,
}

impl fmt::Debug for WecomClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WecomClient")
            .field("api_base", &self.inner.api_base)
            .field("corp_id", &self.inner.corp_id)
            .field("agent_id", &self.inner.agent_id)
            .finish_non_exhaustive()
    }
}

impl WecomClient {
    /// Creates a client for the app `agent_id` of `corp_id`, authenticated
    /// by the app's `secret`, against `api_base` (normally
    /// [`WECOM_API_BASE`]; a fake server in tests). No request is made until
    /// a token is needed.
    #[must_use]
    pub fn new(
        api_base: &str,
        corp_id: &str,
        secret: &str,
        agent_id: i64,
        http: reqwest::Client,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                api_base: api_base.trim_end_matches('/').to_owned(),
                corp_id: corp_id.to_owned(),
                secret: secret.to_owned(),
                agent_id,
                tokens: TokenCache::new(),
            }),
        }
    }

    /// The corpid this client acts for.
    #[must_use]
    pub fn corp_id(&self) -> &str {
        &self.inner.corp_id
    }

    /// The app's AgentId.
    #[must_use]
    pub fn agent_id(&self) -> i64 {
        self.inner.agent_id
    }

    /// Returns a valid access_token, fetching one if none is cached or the
    /// cached one is within five minutes of expiry. Concurrent callers share
    /// a single fetch.
    ///
    /// # Errors
    /// [`WechatError`] from the gettoken request (e.g. `40001` for a wrong
    /// secret, `60020` from an untrusted IP).
    pub async fn access_token(&self) -> Result<String, WechatError> {
        self.inner.tokens.get(|| self.fetch_token()).await
    }

    async fn fetch_token(&self) -> Result<CachedToken, WechatError> {
        let url = format!("{}/cgi-bin/gettoken", self.inner.api_base);
        let req = self.inner.http.get(&url).query(&[
            ("corpid", self.inner.corp_id.as_str()),
            ("corpsecret", self.inner.secret.as_str()),
        ]);
        let started = Instant::now();
        let bytes = send_limited(req).await?;
        let fresh = parse_token_response(&bytes, "gettoken", started).inspect_err(|e| {
            if let WechatError::Api { errcode, .. } = e {
                tracing::warn!(
                    corp_id = %self.inner.corp_id,
                    agent_id = self.inner.agent_id,
                    errcode,
                    "gettoken refused"
                );
            }
        })?;
        tracing::debug!(
            corp_id = %self.inner.corp_id,
            agent_id = self.inner.agent_id,
            usable_for_secs = fresh.usable_for_secs(),
            "fetched WeCom access_token"
        );
        Ok(fresh)
    }

    /// Sends a text message from the app to `touser` (a userid, or several
    /// joined with `|`, or `@all`).
    ///
    /// WeCom keeps at most 2048 bytes of `content` and cuts the rest:
    /// split longer answers before calling this.
    ///
    /// # Errors
    /// [`WechatError`]: [`WechatError::Api`] for a non-zero `errcode` (e.g.
    /// `81013` when no recipient is valid; see
    /// [`WechatError::is_untrusted_ip`] for `60020`). A token error is
    /// retried once with a new token first.
    pub async fn send_text(&self, touser: &str, content: &str) -> Result<(), WechatError> {
        let body = json!({
            "touser": touser,
            "msgtype": "text",
            "agentid": self.inner.agent_id,
            "text": { "content": content },
            "safe": 0,
        });
        self.send(&body).await
    }

    /// Sends a markdown message (WeCom's subset: headings, bold, links,
    /// quotes, `<font color>`) from the app to `touser`. Same limits and
    /// errors as [`Self::send_text`]; markdown messages cannot be sent in
    /// safe (confidential) mode, so no `safe` field is sent.
    ///
    /// # Errors
    /// As [`Self::send_text`].
    pub async fn send_markdown(&self, touser: &str, content: &str) -> Result<(), WechatError> {
        let body = json!({
            "touser": touser,
            "msgtype": "markdown",
            "agentid": self.inner.agent_id,
            "markdown": { "content": content },
        });
        self.send(&body).await
    }

    /// Downloads the temporary media `media_id` (a voice message's AMR audio, kept 3 days by
    /// WeCom), at most `max_bytes`: refused on the announced size before reading and while
    /// reading. A token error (40001, 40014, 42001) drops the token and retries once with a
    /// new one.
    ///
    /// # Errors
    /// [`MediaError::TooLarge`], or WeCom's refusal (`40007` invalid media_id...) or a failed
    /// request as [`MediaError::Api`].
    pub async fn media_get(&self, media_id: &str, max_bytes: u64) -> Result<Media, MediaError> {
        let token = self.access_token().await?;
        let base = self.inner.api_base.as_str();
        match download(&self.inner.http, base, &token, media_id, max_bytes).await {
            Err(MediaError::Api(e)) if e.is_token_invalid() => {
                tracing::warn!(
                    corp_id = %self.inner.corp_id,
                    agent_id = self.inner.agent_id,
                    errcode = e.errcode().unwrap_or_default(),
                    "WeCom access_token rejected by media/get; refetching once"
                );
                self.inner.tokens.invalidate(&token).await;
                let token = self.access_token().await?;
                download(&self.inner.http, base, &token, media_id, max_bytes).await
            }
            other => other,
        }
    }

    /// POSTs to `message/send` with the access_token; on a token error drops
    /// the token, fetches a new one and retries once.
    async fn send(&self, body: &Value) -> Result<(), WechatError> {
        let token = self.access_token().await?;
        match self.send_once(&token, body).await {
            Err(e) if e.is_token_invalid() => {
                tracing::warn!(
                    corp_id = %self.inner.corp_id,
                    agent_id = self.inner.agent_id,
                    errcode = e.errcode().unwrap_or_default(),
                    "WeCom access_token rejected; refetching once"
                );
                self.inner.tokens.invalidate(&token).await;
                let token = self.access_token().await?;
                self.send_once(&token, body).await
            }
            other => other,
        }
    }

    async fn send_once(&self, token: &str, body: &Value) -> Result<(), WechatError> {
        let url = format!("{}/cgi-bin/message/send", self.inner.api_base);
        let req = self
            .inner
            .http
            .post(&url)
            .query(&[("access_token", token)])
            .json(body);
        let bytes = send_limited(req).await?;
        api_result(&bytes)?;
        // Success with some recipients refused (outside the app's visible
        // range, ...): the others got it. WeCom answers 81013 when none did.
        if let Ok(answer) = serde_json::from_slice::<Value>(&bytes) {
            let refused = [
                "invaliduser",
                "invalidparty",
                "invalidtag",
                "unlicenseduser",
            ]
            .into_iter()
            .any(|k| {
                answer
                    .get(k)
                    .and_then(Value::as_str)
                    .is_some_and(|v| !v.is_empty())
            });
            if refused {
                tracing::warn!(
                    corp_id = %self.inner.corp_id,
                    agent_id = self.inner.agent_id,
                    "message/send: some recipients were refused"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secret_and_trims_the_base() {
        let c = WecomClient::new(
            "http://x/",
            "ww_corp",
            "s3cr3t",
            1_000_002,
            reqwest::Client::new(),
        );
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        assert!(dbg.contains("ww_corp"));
        assert_eq!(c.inner.api_base, "http://x");
        assert_eq!(c.agent_id(), 1_000_002);
        assert_eq!(c.corp_id(), "ww_corp");
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<WecomClient>();
    }
}
