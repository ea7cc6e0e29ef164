//! Downloading a temporary media file (a voice message's audio) from the Official Account:
//! `GET /cgi-bin/media/get?access_token=&media_id=`. WeChat answers with the file, or with a
//! JSON `{"errcode":..}` body when it refuses; the size is checked against the announced
//! `Content-Length` before reading and again while reading. WeCom's `media/get` (qyapi) is the
//! same call: [`crate::WecomClient::media_get`] shares the reader ([`download`]).
//! [`MediaVoice`] is such a file as the engine's [`VoiceSource`]: fetched when it asks.
//!
//! And the other way: uploading a voice answer as temporary media
//! (`POST /cgi-bin/media/upload?type=voice`, multipart field `media`; WeChat takes AMR or MP3
//! of at most 2 MB and 60 s) and sending it as a customer-service voice message.

use chatrelay_core::voice::{Audio, VoiceError, VoiceSource};
use futures_util::future::BoxFuture;

use crate::client::{WechatError, api_result, http_error, send_limited};
use crate::{MpClient, WecomClient};

/// The largest voice file WeChat takes as temporary media (2 MB).
pub const MAX_VOICE_UPLOAD_BYTES: usize = 2 * 1024 * 1024;

/// A multipart boundary that does not occur in `file`.
fn boundary_for(file: &[u8]) -> String {
    let mut n = file.len();
    loop {
        let b = format!("chatrelay-media-{n:016x}");
        if !file.windows(b.len()).any(|w| w == b.as_bytes()) {
            return b;
        }
        n = n.wrapping_add(1);
    }
}

/// The `multipart/form-data` body of a media upload: one part, `media`.
fn upload_body(file: &[u8], filename: &str, content_type: &str, boundary: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(file.len() + 256);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

/// What `media/upload` answers.
#[derive(serde::Deserialize)]
struct Uploaded {
    #[serde(default)]
    media_id: Option<String>,
}

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

/// `GET {base}/cgi-bin/media/get?access_token=&media_id=`, read up to `max_bytes` (refused
/// on the announced `Content-Length` before reading, and while reading). The Official Account
/// and WeCom (qyapi) answer this call the same way: the file, or a JSON `{"errcode":..}` body.
pub(crate) async fn download(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    media_id: &str,
    max_bytes: u64,
) -> Result<Media, MediaError> {
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
        return Err(WechatError::Decode("media/get answered JSON without a file".into()).into());
    }
    Ok(Media {
        bytes,
        content_type,
    })
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
        download(http, base, token, media_id, max_bytes).await
    }

    /// Uploads an MP3 voice answer as temporary media (kept 3 days by WeChat); returns its
    /// `media_id`. Files over [`MAX_VOICE_UPLOAD_BYTES`] or empty are refused unsent.
    ///
    /// # Errors
    /// [`MediaError::TooLarge`], or WeChat's refusal / a failed request as [`MediaError::Api`].
    pub async fn upload_voice(&self, mp3: &[u8]) -> Result<String, MediaError> {
        if mp3.len() > MAX_VOICE_UPLOAD_BYTES {
            return Err(MediaError::TooLarge {
                max: MAX_VOICE_UPLOAD_BYTES as u64,
            });
        }
        if mp3.is_empty() {
            return Err(WechatError::Decode("an empty voice file".into()).into());
        }
        let token = self.access_token().await?;
        match self.upload_voice_once(&token, mp3).await {
            Err(MediaError::Api(e)) if e.is_token_invalid() => {
                tracing::warn!(app_id = %self.app_id(), "access_token rejected by media/upload; refetching once");
                self.invalidate_token(&token).await;
                let token = self.access_token().await?;
                self.upload_voice_once(&token, mp3).await
            }
            other => other,
        }
    }

    async fn upload_voice_once(&self, token: &str, mp3: &[u8]) -> Result<String, MediaError> {
        let (http, base) = self.media_parts();
        let url = format!("{base}/cgi-bin/media/upload");
        let boundary = boundary_for(mp3);
        let body = upload_body(mp3, "voice.mp3", "audio/mpeg", &boundary);
        let req = http
            .post(&url)
            .query(&[("access_token", token), ("type", "voice")])
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body);
        let bytes = send_limited(req).await?;
        api_result(&bytes)?;
        let uploaded: Uploaded = serde_json::from_slice(&bytes)
            .map_err(|e| WechatError::Decode(format!("media/upload: {e}")))?;
        uploaded
            .media_id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| WechatError::Decode("media/upload answered no media_id".into()).into())
    }
}

/// A voice message's audio kept as temporary media by the Official Account or a WeCom app,
/// fetched with `media/get` (and that client's token) only when the engine asks for it: a
/// message with a transcript, or refused before the download, costs no request.
pub struct MediaVoice {
    client: MediaClient,
    media_id: String,
    /// As the platform named it (`amr`, `speex`).
    format: String,
}

/// Whose `media/get` a [`MediaVoice`] uses.
enum MediaClient {
    Mp(MpClient),
    Wecom(WecomClient),
}

impl MediaVoice {
    /// Audio `media_id` of an Official Account's voice message, in `format`.
    #[must_use]
    pub fn mp(client: MpClient, media_id: &str, format: &str) -> Self {
        Self::new(MediaClient::Mp(client), media_id, format)
    }

    /// Audio `media_id` of a voice message to a WeCom app, in `format`.
    #[must_use]
    pub fn wecom(client: WecomClient, media_id: &str, format: &str) -> Self {
        Self::new(MediaClient::Wecom(client), media_id, format)
    }

    fn new(client: MediaClient, media_id: &str, format: &str) -> Self {
        Self {
            client,
            media_id: media_id.to_owned(),
            format: format.to_owned(),
        }
    }
}

impl VoiceSource for MediaVoice {
    fn fetch(&self, max_bytes: u64) -> BoxFuture<'static, Result<Audio, VoiceError>> {
        let (media_id, format) = (self.media_id.clone(), self.format.clone());
        let got: BoxFuture<'static, Result<Media, MediaError>> = match &self.client {
            MediaClient::Mp(c) => {
                let c = c.clone();
                Box::pin(async move { c.media_get(&media_id, max_bytes).await })
            }
            MediaClient::Wecom(c) => {
                let c = c.clone();
                Box::pin(async move { c.media_get(&media_id, max_bytes).await })
            }
        };
        Box::pin(async move {
            match got.await {
                Ok(media) => Ok(Audio {
                    bytes: media.bytes,
                    format,
                }),
                Err(MediaError::TooLarge { max }) => Err(VoiceError::TooBig { max }),
                Err(MediaError::Api(e)) => Err(VoiceError::Download(e.to_string())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upload_body_frames_the_file_once() {
        let file = b"ID3\x04chatrelay-media-0000000000000009x";
        let b = boundary_for(file);
        assert!(!file.windows(b.len()).any(|w| w == b.as_bytes()));
        let body = upload_body(file, "voice.mp3", "audio/mpeg", "BND");
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with(
            "--BND\r\nContent-Disposition: form-data; name=\"media\"; filename=\"voice.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\nID3"
        ));
        assert!(text.ends_with("x\r\n--BND--\r\n"));
    }
}
