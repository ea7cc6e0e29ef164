//! Speech to text: `POST {base_url}/audio/transcriptions`, a multipart upload of the audio
//! file with the model's name, answered with `{"text": ...}` (`response_format=json`).
//!
//! The multipart body is built here, whole, rather than with a streaming form: a retry (or a
//! fallback upstream) must send the same bytes again, and voice messages are small (WeChat's
//! are at most 2 MiB; the API takes at most 25 MiB). The size is checked before anything is
//! sent.

use bytes::Bytes;
use reqwest::Method;
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use crate::client::{ACCEPT_JSON, Client, decode_json_response, read_full};
use crate::error::Error;

/// The largest upload the transcription API takes (OpenAI's limit: 25 MB).
pub const MAX_UPLOAD_BYTES: usize = 25 * 1024 * 1024;

/// One audio file to transcribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptionRequest {
    /// The transcription model (`whisper-1`, `gpt-4o-mini-transcribe`...).
    pub model: String,
    /// The audio.
    pub file: Bytes,
    /// The file's name as uploaded; its extension tells the server the format
    /// (`voice.wav`, `voice.ogg`).
    pub filename: String,
    /// The file's MIME type (`audio/wav`, `audio/ogg`).
    pub content_type: String,
    /// The language spoken (ISO-639-1, `zh`), when known: it helps accuracy.
    pub language: Option<String>,
    /// The largest file sent; a larger one is refused before any request. Default
    /// [`MAX_UPLOAD_BYTES`].
    pub max_bytes: usize,
}

impl TranscriptionRequest {
    /// A request for `file`, named and typed after its `format` (a file extension: `wav`,
    /// `ogg`, `mp3`...).
    #[must_use]
    pub fn new(model: impl Into<String>, file: impl Into<Bytes>, format: &str) -> Self {
        let ext: String = format
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(8)
            .collect::<String>()
            .to_ascii_lowercase();
        let ext = if ext.is_empty() {
            "bin".to_owned()
        } else {
            ext
        };
        Self {
            model: model.into(),
            file: file.into(),
            content_type: content_type_of(&ext).to_owned(),
            filename: format!("voice.{ext}"),
            language: None,
            max_bytes: MAX_UPLOAD_BYTES,
        }
    }

    /// Refuses what must not be sent: an empty or too large file, a name or type that would
    /// break the multipart framing.
    pub fn check(&self) -> Result<(), AudioError> {
        if self.file.is_empty() {
            return Err(AudioError::Empty);
        }
        let max = self.max_bytes.min(MAX_UPLOAD_BYTES);
        if self.file.len() > max {
            return Err(AudioError::TooLarge {
                size: self.file.len(),
                max,
            });
        }
        let unsafe_text = |s: &str| s.is_empty() || s.chars().any(|c| c.is_control() || c == '"');
        if unsafe_text(&self.filename) || unsafe_text(&self.content_type) {
            return Err(AudioError::InvalidFile(
                "file name and content type must be non-empty, without quotes or control characters"
                    .into(),
            ));
        }
        if self.model.trim().is_empty() || unsafe_text(&self.model) {
            return Err(AudioError::InvalidFile("the model name is unusable".into()));
        }
        Ok(())
    }
}

/// The MIME type of an audio file extension (what OpenAI's API accepts, plus WeChat's).
#[must_use]
pub fn content_type_of(ext: &str) -> &'static str {
    match ext {
        "wav" => "audio/wav",
        "mp3" | "mpga" | "mpeg" => "audio/mpeg",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "webm" => "audio/webm",
        "m4a" | "mp4" => "audio/mp4",
        "flac" => "audio/flac",
        "amr" => "audio/amr",
        "speex" | "spx" => "audio/speex",
        _ => "application/octet-stream",
    }
}

/// What the server heard.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Transcription {
    /// The transcript.
    #[serde(default)]
    pub text: String,
    /// Other fields (`usage`, `duration`, `language`...), kept as sent.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Why a transcription failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AudioError {
    /// The file is larger than the request's (or the API's) limit; nothing was sent.
    #[error("audio file of {size} bytes is larger than the {max}-byte limit")]
    TooLarge {
        /// The file's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The file is empty; nothing was sent.
    #[error("the audio file is empty")]
    Empty,
    /// The request cannot be framed (file name, content type, model).
    #[error("invalid transcription request: {0}")]
    InvalidFile(String),
    /// The server (or the way to it) failed, after the client's retries.
    #[error(transparent)]
    Api(#[from] Error),
}

impl Client {
    /// Transcribes an audio file (`POST {base_url}/audio/transcriptions`), after checking its
    /// size, with the same timeouts, retries and error mapping as [`Client::chat`].
    pub async fn transcribe(
        &self,
        req: &TranscriptionRequest,
    ) -> Result<Transcription, AudioError> {
        req.check()?;
        Ok(self.post_transcription(req).await?)
    }

    /// The request itself, for a request already [checked](TranscriptionRequest::check).
    pub(crate) async fn post_transcription(
        &self,
        req: &TranscriptionRequest,
    ) -> Result<Transcription, Error> {
        let boundary = self.boundary_for(&req.file);
        let body = multipart_body(req, &boundary);
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let (body, request_id) = self
            .execute_as(
                Method::POST,
                "/audio/transcriptions",
                Some(body),
                &content_type,
                ACCEPT_JSON,
                read_full,
            )
            .await?;
        let t: Transcription = decode_json_response(&body, request_id)?;
        Ok(t)
    }

    /// A random multipart boundary that does not occur in `file`.
    fn boundary_for(&self, file: &[u8]) -> String {
        loop {
            let mut raw = [0u8; 16];
            // A failing system RNG leaves zeros; the occurrence check below still holds.
            let _ = self.rng().fill(&mut raw);
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            let boundary = format!("chatrelay-{hex}");
            if !contains(file, boundary.as_bytes()) {
                return boundary;
            }
        }
    }
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The `multipart/form-data` body: `model`, `response_format=json`, the optional
/// `language`, then `file`.
fn multipart_body(req: &TranscriptionRequest, boundary: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(req.file.len() + 512);
    let mut field = |name: &str, value: &str| {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    };
    field("model", &req.model);
    field("response_format", "json");
    if let Some(lang) = req
        .language
        .as_deref()
        .filter(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    {
        field("language", lang);
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\nContent-Type: {}\r\n\r\n",
            req.filename, req.content_type
        )
        .as_bytes(),
    );
    body.extend_from_slice(&req.file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_named_after_their_format_and_checked() {
        let req = TranscriptionRequest::new("whisper-1", vec![1u8, 2, 3], "OGG");
        assert_eq!(req.filename, "voice.ogg");
        assert_eq!(req.content_type, "audio/ogg");
        assert_eq!(req.check(), Ok(()));
        let odd = TranscriptionRequest::new("whisper-1", vec![1u8], "x\"\r\n");
        assert_eq!(odd.filename, "voice.x");
        let mut big = TranscriptionRequest::new("whisper-1", vec![0u8; 11], "wav");
        big.max_bytes = 10;
        assert_eq!(big.check(), Err(AudioError::TooLarge { size: 11, max: 10 }));
        let empty = TranscriptionRequest::new("whisper-1", Vec::<u8>::new(), "wav");
        assert_eq!(empty.check(), Err(AudioError::Empty));
        let mut bad = TranscriptionRequest::new("whisper-1", vec![1u8], "wav");
        bad.filename = "a\"b".into();
        assert!(matches!(bad.check(), Err(AudioError::InvalidFile(_))));
    }

    #[test]
    fn the_body_carries_every_field_and_the_file_bytes() {
        let mut req = TranscriptionRequest::new("whisper-1", b"RIFF\x00\x01audio".to_vec(), "wav");
        req.language = Some("zh".into());
        let body = multipart_body(&req, "BOUNDARY");
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with(
            "--BOUNDARY\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
        ));
        assert!(text.contains("name=\"response_format\"\r\n\r\njson\r\n"));
        assert!(text.contains("name=\"language\"\r\n\r\nzh\r\n"));
        assert!(text.contains(
            "name=\"file\"; filename=\"voice.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\u{0}\u{1}audio\r\n--BOUNDARY--\r\n"
        ));
        assert!(contains(&body, b"RIFF\x00\x01audio"));
        assert!(!contains(b"abc", b""));
    }
}
