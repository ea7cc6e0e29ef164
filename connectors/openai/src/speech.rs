//! Text to speech: `POST {base_url}/audio/speech` with `{model, input, voice,
//! response_format}`, answered with the audio file's bytes.
//!
//! Everything that can be refused is refused before a request: an empty or too long input
//! (the API takes at most [`MAX_INPUT_CHARS`] characters), a format the API does not know,
//! names that are empty or carry control characters. The answer is read up to the request's
//! `max_bytes` (WeChat takes voice messages of at most 2 MiB, Telegram 50 MB): a longer one
//! is [`SpeechError::TooLarge`], never kept whole in memory. A `200` with a JSON body (some
//! gateways answer errors that way) is an error, not audio.

use bytes::Bytes;
use reqwest::Method;
use serde::Serialize;

use crate::client::{Client, Failure, decode_json_response, read_before, request_id};
use crate::error::Error;

/// The longest input the speech API takes (OpenAI's limit: 4096 characters).
pub const MAX_INPUT_CHARS: usize = 4096;

/// The largest audio read by default: 8 MiB (about 8 minutes of 128 kbit/s MP3, more than
/// [`MAX_INPUT_CHARS`] characters take to say).
pub const DEFAULT_MAX_AUDIO_BYTES: usize = 8 * 1024 * 1024;

/// The formats `/audio/speech` produces (`response_format`).
pub const FORMATS: [&str; 6] = ["mp3", "opus", "aac", "flac", "wav", "pcm"];

/// `Accept` header of a speech request: audio, or a JSON error.
const ACCEPT_AUDIO: &str = "audio/*, application/json;q=0.5";

/// One text to speak.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpeechRequest {
    /// The text-to-speech model (`tts-1`, `gpt-4o-mini-tts`...).
    pub model: String,
    /// The text to speak.
    pub input: String,
    /// The voice (`alloy`, `nova`...).
    pub voice: String,
    /// The audio format, one of [`FORMATS`] (`opus` is OGG/Opus, what Telegram's voice
    /// notes are; `mp3` is what WeChat takes).
    pub response_format: String,
    /// The largest audio accepted, in bytes; a longer answer is
    /// [`SpeechError::TooLarge`]. Default [`DEFAULT_MAX_AUDIO_BYTES`].
    #[serde(skip)]
    pub max_bytes: usize,
}

impl SpeechRequest {
    /// A request to say `input` with `voice`, as `format`.
    #[must_use]
    pub fn new(
        model: impl Into<String>,
        input: impl Into<String>,
        voice: impl Into<String>,
        format: &str,
    ) -> Self {
        Self {
            model: model.into(),
            input: input.into(),
            voice: voice.into(),
            response_format: format.to_ascii_lowercase(),
            max_bytes: DEFAULT_MAX_AUDIO_BYTES,
        }
    }

    /// Refuses what must not be sent: an empty or too long input, an unknown format,
    /// unusable model or voice names, a zero size limit.
    pub fn check(&self) -> Result<(), SpeechError> {
        if self.input.trim().is_empty() {
            return Err(SpeechError::EmptyInput);
        }
        let chars = self.input.chars().count();
        if chars > MAX_INPUT_CHARS {
            return Err(SpeechError::InputTooLong {
                chars,
                max: MAX_INPUT_CHARS,
            });
        }
        if !FORMATS.contains(&self.response_format.as_str()) {
            return Err(SpeechError::Invalid(format!(
                "the format {:?} is not one of {}",
                self.response_format,
                FORMATS.join(", ")
            )));
        }
        let unusable = |s: &str| s.trim().is_empty() || s.chars().any(char::is_control);
        if unusable(&self.model) {
            return Err(SpeechError::Invalid("the model name is unusable".into()));
        }
        if unusable(&self.voice) {
            return Err(SpeechError::Invalid("the voice name is unusable".into()));
        }
        if self.max_bytes == 0 {
            return Err(SpeechError::Invalid("max_bytes must be at least 1".into()));
        }
        Ok(())
    }
}

/// Spoken audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speech {
    /// The audio file, in the request's format.
    pub audio: Bytes,
    /// The `Content-Type` the server sent, if any.
    pub content_type: Option<String>,
}

/// Why speaking failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpeechError {
    /// Nothing to say; nothing was sent.
    #[error("the text to speak is empty")]
    EmptyInput,
    /// The text is longer than the API takes; nothing was sent.
    #[error("the text to speak has {chars} characters, more than the {max}-character limit")]
    InputTooLong {
        /// The input's length in characters.
        chars: usize,
        /// The limit.
        max: usize,
    },
    /// The request cannot be sent (format, model, voice, limit).
    #[error("invalid speech request: {0}")]
    Invalid(String),
    /// The audio is larger than the request's `max_bytes`; what was read is dropped.
    #[error("the spoken audio is larger than the {max}-byte limit")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// The server (or the way to it) failed, after the client's retries.
    #[error(transparent)]
    Api(#[from] Error),
}

/// What one successful request read: the audio up to the limit, and whether there was more.
#[derive(Debug, Clone)]
pub(crate) struct SpeechRead {
    speech: Speech,
    truncated: bool,
}

impl SpeechRead {
    /// The audio, or [`SpeechError::TooLarge`] when it did not fit in `max`.
    pub(crate) fn into_speech(self, max: usize) -> Result<Speech, SpeechError> {
        if self.truncated {
            return Err(SpeechError::TooLarge { max });
        }
        Ok(self.speech)
    }
}

impl Client {
    /// Speaks a text (`POST {base_url}/audio/speech`), after checking it, with the same
    /// timeouts, retries and error mapping as [`Client::chat`].
    pub async fn speak(&self, req: &SpeechRequest) -> Result<Speech, SpeechError> {
        req.check()?;
        self.post_speech(req).await?.into_speech(req.max_bytes)
    }

    /// The request itself, for a request already [checked](SpeechRequest::check).
    pub(crate) async fn post_speech(&self, req: &SpeechRequest) -> Result<SpeechRead, Error> {
        let body = serde_json::to_vec(req)
            .map_err(|e| Error::InvalidConfig(format!("speech request: {e}")))?;
        let max = req.max_bytes;
        self.execute_as(
            Method::POST,
            "/audio/speech",
            Some(body),
            "application/json",
            ACCEPT_AUDIO,
            move |resp, deadline| async move {
                let request_id = request_id(resp.headers());
                let content_type = resp
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                // An announced length over the limit is refused unread.
                if resp.content_length().is_some_and(|n| n > max as u64) {
                    return Ok(SpeechRead {
                        speech: Speech {
                            audio: Bytes::new(),
                            content_type,
                        },
                        truncated: true,
                    });
                }
                let (audio, truncated) = read_before(deadline, resp, max).await?;
                let is_json = content_type
                    .as_deref()
                    .is_some_and(|t| t.trim_start().starts_with("application/json"));
                if is_json {
                    // An error sent with 200 becomes that error; any other JSON is not audio.
                    decode_json_response::<serde_json::Value>(&audio, request_id)?;
                    return Err(Failure::from(Error::decode(
                        "expected audio, got JSON",
                        &audio,
                    )));
                }
                if audio.is_empty() {
                    return Err(Failure::from(Error::decode("the audio is empty", &audio)));
                }
                Ok(SpeechRead {
                    speech: Speech {
                        audio,
                        content_type,
                    },
                    truncated,
                })
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_before_sending() {
        let ok = SpeechRequest::new("tts-1", "你好", "alloy", "OPUS");
        assert_eq!(ok.response_format, "opus");
        assert_eq!(ok.check(), Ok(()));
        let body: serde_json::Value = serde_json::to_value(&ok).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"model": "tts-1", "input": "你好", "voice": "alloy",
                               "response_format": "opus"})
        );
        assert_eq!(
            SpeechRequest::new("tts-1", " \n", "alloy", "mp3").check(),
            Err(SpeechError::EmptyInput)
        );
        let long = "字".repeat(MAX_INPUT_CHARS + 1);
        assert_eq!(
            SpeechRequest::new("tts-1", long, "alloy", "mp3").check(),
            Err(SpeechError::InputTooLong {
                chars: MAX_INPUT_CHARS + 1,
                max: MAX_INPUT_CHARS
            })
        );
        // Exactly the limit, counted in characters, not bytes.
        let edge = "字".repeat(MAX_INPUT_CHARS);
        assert_eq!(
            SpeechRequest::new("tts-1", edge, "alloy", "mp3").check(),
            Ok(())
        );
        for bad in [
            SpeechRequest::new("tts-1", "hi", "alloy", "amr"),
            SpeechRequest::new("", "hi", "alloy", "mp3"),
            SpeechRequest::new("tts-1", "hi", "al\nloy", "mp3"),
            SpeechRequest {
                max_bytes: 0,
                ..SpeechRequest::new("tts-1", "hi", "alloy", "mp3")
            },
        ] {
            assert!(
                matches!(bad.check(), Err(SpeechError::Invalid(_))),
                "{bad:?}"
            );
        }
    }
}
