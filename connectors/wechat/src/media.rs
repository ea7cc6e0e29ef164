//! Downloading a temporary media file (a voice message's audio) from the Official Account:
//! `GET /cgi-bin/media/get?access_token=&media_id=`. WeChat answers with the file, or with a
//! JSON `{"errcode":..}` body when it refuses; the size is checked against the announced
//! `Content-Length` before reading and again while reading.

use crate::MpClient;
use crate::client::{WechatError, api_result, http_error};

/// Why a media download failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The file is larger than allowed (announced, or found while reading).
    #[error("the media file is larger than {max} bytes")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// WeChat refused (an errcode body) or the request failed.
    #[error(transparent)]
    Api(#[from] WechatError),
}

/// A downloaded media file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Its `Content-Type`, as WeChat sent it.
    pub content_type: Option<String>,
}

impl MpClient {
    /// Downloads the temporary media `media_id` (at most `max_bytes`), refetching the
    /// access_token once when WeChat says it is invalid.
    ///
    /// # Errors
    /// [`MediaError::TooLarge`], or WeChat's refusal (`40007` invalid media_id...) or a
    /// failed request as [`MediaError::Api`].
    pub async fn media_get(&self, media_id: &str, max_bytes: u64) -> Result<Media, MediaError> {
        let token = self.access_token().await?;
        match self.media_get_once(&token, media_id, max_bytes).await {
            Err(MediaError::Api(e)) if e.is_token_invalid() => {
                tracing::warn!(app_id = %self.app_id(), "access_token rejected by media/get; refetching once");
                self.invalidate_token(&token).await;
                let token = self.access_token().await?;
                self.media_get_once(&token, media_id, max_bytes).await
            }
            other => other,
        }
    }

    async fn media_get_once(
        &self,
        token: &str,
        media_id: &str,
        max_bytes: u64,
    ) -> Result<Media, MediaError> {
        let (http, base) = self.media_parts();
        let url = format!("{base}/cgi-bin/media/get");
        let mut resp = http
            .get(&url)
            .query(&[("access_token", token), ("media_id", media_id)])
            .send()
            .await
            .map_err(|e| MediaError::Api(http_error(e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(WechatError::Http(format!("status {status}")).into());
        }
        if resp.content_length().is_some_and(|n| n > max_bytes) {
            return Err(MediaError::TooLarge { max: max_bytes });
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let limit = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| MediaError::Api(http_error(e)))?
        {
            if bytes.len().saturating_add(chunk.len()) > limit {
                return Err(MediaError::TooLarge { max: max_bytes });
            }
            bytes.extend_from_slice(&chunk);
        }
        // A refusal comes as JSON (with a JSON or text content type); audio never starts
        // with `{`.
        let json_type = content_type
            .as_deref()
            .is_some_and(|t| t.contains("json") || t.starts_with("text/"));
        if json_type || bytes.first() == Some(&b'{') {
            api_result(&bytes)?;
            return Err(
                WechatError::Decode("media/get answered JSON without a file".into()).into(),
            );
        }
        Ok(Media {
            bytes,
            content_type,
        })
    }
}
