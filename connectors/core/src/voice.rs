//! Voice messages as the engine sees them: what the platform said about the audio (its own
//! transcript, format, size, length) and a [`VoiceSource`] the connector implements to
//! download it. The engine decides whether to download, converts and transcribes, and meters.

use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;

/// The audio of a voice message, downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audio {
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// The format, as a file extension (`amr`, `speex`, `ogg`, `mp3`, `wav`, `m4a`...).
    pub format: String,
}

/// Why a voice message's audio could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VoiceError {
    /// Larger than the limit (said before the download, or found while reading).
    #[error("the audio is larger than {max} bytes")]
    TooBig {
        /// The limit, in bytes.
        max: u64,
    },
    /// The platform refused or failed the download.
    #[error("downloading the audio failed: {0}")]
    Download(String),
}

/// Where a voice message's audio comes from; implemented by the connector that received it
/// (it holds the platform's client and token).
pub trait VoiceSource: Send + Sync {
    /// Downloads the audio, refusing anything larger than `max_bytes` (before reading when
    /// the platform says the size, and while reading).
    fn fetch(&self, max_bytes: u64) -> BoxFuture<'static, Result<Audio, VoiceError>>;

    /// Shows the user what was heard as a message of its own, where the platform can send one
    /// (Telegram). `false`: it cannot, and the engine puts it in front of the answer instead
    /// (the Official Account's passive reply is one message).
    fn show_heard(&self, text: &str) -> BoxFuture<'static, bool> {
        let _ = text;
        Box::pin(async { false })
    }
}

/// A voice message.
#[derive(Clone)]
pub struct Voice {
    /// The platform's own transcript (WeChat's `Recognition`), when it gave a non-empty one:
    /// used as the text, nothing downloaded.
    pub recognition: Option<String>,
    /// The audio's format as the platform names it (`amr`, `speex`, `ogg`...).
    pub format: String,
    /// The size the platform declared, in bytes, if any (checked before the download).
    pub declared_bytes: Option<u64>,
    /// The length the platform declared, in seconds, if any.
    pub declared_seconds: Option<u64>,
    /// How to download the audio; `None` when it cannot be downloaded.
    pub source: Option<Arc<dyn VoiceSource>>,
}

impl Voice {
    /// A voice message of `format` downloadable from `source`.
    #[must_use]
    pub fn new(format: impl Into<String>, source: Option<Arc<dyn VoiceSource>>) -> Self {
        Self {
            recognition: None,
            format: format.into(),
            declared_bytes: None,
            declared_seconds: None,
            source,
        }
    }
}

impl fmt::Debug for Voice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Voice")
            .field("recognition", &self.recognition)
            .field("format", &self.format)
            .field("declared_bytes", &self.declared_bytes)
            .field("declared_seconds", &self.declared_seconds)
            .field("source", &self.source.is_some())
            .finish()
    }
}

/// Two voice messages are equal when the platform said the same of them and they download
/// from the same source (the same object).
impl PartialEq for Voice {
    fn eq(&self, other: &Self) -> bool {
        let same_source = match (&self.source, &other.source) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        self.recognition == other.recognition
            && self.format == other.format
            && self.declared_bytes == other.declared_bytes
            && self.declared_seconds == other.declared_seconds
            && same_source
    }
}

impl Eq for Voice {}
