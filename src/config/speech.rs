//! `[speech]`: voice in (transcription) and voice out (spoken answers), their upstreams,
//! prices and limits, and the ffmpeg that converts WeChat's audio.

use serde::{Deserialize, Serialize};

/// `[speech]`: voice messages users send, transcribed through an OpenAI-compatible
/// `/audio/transcriptions` upstream and answered like typed text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeechConfig {
    /// The transcription model at its upstream (`whisper-1`, `gpt-4o-mini-transcribe`,
    /// `SenseVoiceSmall`...).
    pub model: String,
    /// Which upstream transcribes (`[[llm.upstreams]] id`, default `default`).
    #[serde(default)]
    pub upstream: Option<String>,
    /// Upstreams tried in order when the first is down or rate limited, with the same model.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Credits per voice message, on top of the answer's own price.
    #[serde(default)]
    pub credits: u64,
    /// Credits per started minute of audio (when its length is known), on top of `credits`.
    #[serde(default)]
    pub credits_per_minute: u64,
    /// The largest audio file downloaded, in bytes (WeChat's own limit: 2 MiB).
    #[serde(default = "two_mib")]
    pub max_bytes: u64,
    /// The longest voice message transcribed, in seconds (WeChat's own limit: 60).
    #[serde(default = "sixty")]
    pub max_seconds: u64,
    /// Show the user what was heard ("你说的是：…") before the answer: a message of its own
    /// where the platform can send one (Telegram), else in front of the answer.
    #[serde(default = "yes")]
    pub show_text: bool,
    /// The ffmpeg program converting WeChat's AMR/Speex audio (a name on `PATH` or a path);
    /// detected at start. Without it, such voice messages need WeChat's `Recognition`.
    #[serde(default = "default_ffmpeg")]
    pub ffmpeg: String,
    /// Longest an ffmpeg conversion may take, in seconds.
    #[serde(default = "default_ffmpeg_timeout")]
    pub ffmpeg_timeout_secs: u64,
    /// The voice spoken answers use (`/audio/speech` `voice`: `alloy`, `nova`...).
    #[serde(default = "default_voice")]
    pub voice: String,
    /// The text-to-speech model at its upstream (`tts-1`, `gpt-4o-mini-tts`...); spoken
    /// answers go to the same `upstream` and `fallbacks` as transcriptions.
    #[serde(default = "default_speech_model")]
    pub speech_model: String,
    /// Answers longer than this many characters stay text only (`voice_reply` scopes): a
    /// long answer is read, not listened to, and would pass WeChat's 60 s anyway.
    #[serde(default = "default_reply_max_chars")]
    pub reply_max_chars: usize,
    /// Credits per spoken answer, on top of the answer's own price; a voice that could not
    /// be made or sent costs nothing.
    #[serde(default)]
    pub speech_credits: u64,
}

impl Default for SpeechConfig {
    fn default() -> Self {
        Self {
            model: "whisper-1".to_owned(),
            upstream: None,
            fallbacks: Vec::new(),
            credits: 0,
            credits_per_minute: 0,
            max_bytes: two_mib(),
            max_seconds: sixty(),
            show_text: true,
            ffmpeg: default_ffmpeg(),
            ffmpeg_timeout_secs: default_ffmpeg_timeout(),
            voice: default_voice(),
            speech_model: default_speech_model(),
            reply_max_chars: default_reply_max_chars(),
            speech_credits: 0,
        }
    }
}

fn default_voice() -> String {
    "alloy".to_owned()
}

fn default_speech_model() -> String {
    "tts-1".to_owned()
}

fn default_reply_max_chars() -> usize {
    300
}

fn two_mib() -> u64 {
    2 * 1024 * 1024
}

fn sixty() -> u64 {
    60
}

fn yes() -> bool {
    true
}

fn default_ffmpeg() -> String {
    "ffmpeg".to_owned()
}

fn default_ffmpeg_timeout() -> u64 {
    20
}
