//! Voice messages in: the platform's transcript, or the audio downloaded (size- and
//! length-limited), converted by ffmpeg where the upstream cannot read it (WeChat's AMR and
//! Speex) and transcribed through `[speech]`; and what that costs.
//!
//! The voice price (`[speech] credits` plus `credits_per_minute` per started minute) is added
//! to the answer's price as a surcharge: one reservation, one ledger entry under the message's
//! own reference (idempotent like any answer), released whole when the answer fails. So a
//! voice message refused, too big, unreadable or not answered costs nothing.

use chatrelay_core::voice::{Voice, VoiceError};
use chatrelay_openai::audio::{AudioError, TranscriptionRequest};

use super::*;

/// What a voice message said, and its price.
pub(super) struct Heard {
    /// The transcript.
    pub(super) text: String,
    /// Credits the voice adds to the answer's price.
    pub(super) credits: u64,
    /// "你说的是：…" to put before the answer (`[speech] show_text`, where the platform could
    /// not show it as a message of its own).
    pub(super) prefix: Option<String>,
}

/// Formats the upstream reads as they are (OpenAI's list); anything else goes through ffmpeg.
const READABLE: &[&str] = &[
    "flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "opus", "wav", "webm",
];

/// The voice price: `credits`, plus `per_minute` for each started minute when the length is
/// known.
#[must_use]
pub fn voice_price(credits: u64, per_minute: u64, ms: Option<u64>) -> u64 {
    let minutes = ms.map_or(0, |ms| ms.div_ceil(60_000));
    credits.saturating_add(minutes.saturating_mul(per_minute))
}

impl Engine {
    /// The text of a voice message, or the reply that ends it (free of charge).
    pub(super) async fn hear(&self, s: &Settings, voice: &Voice) -> Result<Heard, ReplyEvent> {
        let recognition = voice
            .recognition
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(sp) = &s.speech else {
            // Without `[speech]`, the platform's own transcript still works, at no extra cost.
            return match recognition {
                Some(text) => Ok(Heard {
                    text: text.to_owned(),
                    credits: 0,
                    prefix: None,
                }),
                None => Err(self.voice_refused("off", &s.texts.voice_off)),
            };
        };
        let declared_ms = voice.declared_seconds.map(|s| s.saturating_mul(1000));
        let (text, ms) = match recognition {
            Some(text) => (text.to_owned(), declared_ms),
            None => self.transcribe_voice(s, sp, voice).await?,
        };
        let text = text.trim().to_owned();
        if text.is_empty() {
            return Err(self.voice_refused("empty", &s.texts.voice_failed));
        }
        metrics::counter!("chatrelay_voice_total", "outcome" => "heard").increment(1);
        let mut prefix = None;
        if sp.show_text {
            let shown = match &voice.source {
                Some(source) => source.show_heard(&text).await,
                None => false,
            };
            if !shown {
                prefix = Some(fill(&s.texts.voice_heard, &[("text", &text)]));
            }
        }
        Ok(Heard {
            credits: voice_price(sp.credits, sp.credits_per_minute, ms),
            text,
            prefix,
        })
    }

    /// Downloads, converts and transcribes a voice message; returns the transcript and the
    /// audio's length in ms when known.
    async fn transcribe_voice(
        &self,
        s: &Settings,
        sp: &crate::config::SpeechConfig,
        voice: &Voice,
    ) -> Result<(String, Option<u64>), ReplyEvent> {
        let too_long = || self.too_long(s, sp);
        let max_ms = sp.max_seconds.saturating_mul(1000);
        let ms = voice.declared_seconds.map(|s| s.saturating_mul(1000));
        if ms.is_some_and(|ms| ms > max_ms)
            || voice.declared_bytes.is_some_and(|b| b > sp.max_bytes)
        {
            return Err(too_long());
        }
        let format = voice.format.trim().to_ascii_lowercase();
        let convert = !READABLE.contains(&format.as_str());
        // Checked before the download: without ffmpeg, AMR cannot be understood anyway.
        if convert && !ffmpeg::ffmpeg_available(&sp.ffmpeg).await {
            info!(%format, "a voice message needs ffmpeg, which is not installed");
            return Err(self.voice_refused("no_ffmpeg", &s.texts.voice_off));
        }
        let Some(source) = &voice.source else {
            return Err(self.voice_refused("off", &s.texts.voice_off));
        };
        let audio = match source.fetch(sp.max_bytes).await {
            Ok(audio) => audio,
            Err(VoiceError::TooBig { .. }) => return Err(too_long()),
            Err(e) => {
                warn!(error = %e, "downloading a voice message failed");
                return Err(self.voice_refused("download", &s.texts.voice_failed));
            }
        };
        let (bytes, ext, ms) = self.prepare_audio(s, sp, audio.bytes, &format, ms).await?;
        let text = self.transcribe_prepared(s, sp, bytes, &ext).await?;
        Ok((text, ms))
    }

    /// `/v1/audio/transcriptions` for `uid`: `bytes` of `format` (a file extension) checked,
    /// converted when needed and transcribed through `[speech]`, charged `[speech] credits`
    /// plus `credits_per_minute` per started minute (of the length measured, see
    /// `prepare_audio`) under `reference`. The refusal, when it fails, costs
    /// nothing. Returns the transcript and the credits charged.
    pub async fn transcribe_api(
        &self,
        uid: Uid,
        bytes: Vec<u8>,
        format: &str,
        reference: &str,
    ) -> Result<(String, u64), ReplyEvent> {
        let s = self.settings();
        let Some(sp) = s.speech.clone() else {
            return Err(self.voice_refused("off", &s.texts.voice_off));
        };
        self.inner.stats.active(s.today(), uid);
        if let Some(refused) = self.guard(uid).await {
            return Err(refused);
        }
        let format = format.trim().to_ascii_lowercase();
        let (bytes, ext, ms) = self.prepare_audio(&s, &sp, bytes, &format, None).await?;
        let cost = voice_price(sp.credits, sp.credits_per_minute, ms);
        let (settings, owned_reference) = (s.clone(), reference.to_owned());
        let reservation = self
            .off_worker(
                move |e| async move { e.reserve(&settings, uid, cost, &owned_reference).await },
            )
            .await
            .unwrap_or_else(|| Err(failed(FailureKind::Unavailable, &s.texts.unavailable)))?;
        let text = match self.transcribe_prepared(&s, &sp, bytes, &ext).await {
            Ok(text) => text,
            Err(refused) => {
                self.release(reservation).await;
                return Err(refused);
            }
        };
        let metered = Metered {
            platform: chatrelay_core::Platform::Api,
            prompt_tokens: 0,
            completion_tokens: 0,
            outcome: chatrelay_storage::UsageOutcome::Answered,
        };
        let charged = self
            .settle(reservation, cost, &sp.model, None, metered)
            .await
            .unwrap_or(0);
        metrics::counter!("chatrelay_voice_total", "outcome" => "heard").increment(1);
        metrics::counter!("chatrelay_credits_charged_total").increment(charged);
        Ok((text, charged))
    }

    /// The too-long refusal (`max_seconds`).
    fn too_long(&self, s: &Settings, sp: &crate::config::SpeechConfig) -> ReplyEvent {
        self.voice_refused(
            "too_long",
            fill(
                &s.texts.voice_too_long,
                &[("seconds", &sp.max_seconds.to_string())],
            ),
        )
    }

    /// Checks audio of `format` against the limits and converts what the upstream cannot read
    /// (AMR, Speex...) to WAV with ffmpeg; returns the bytes to send, their format and the
    /// length in ms to price (`ms`: what the platform said).
    ///
    /// Audio whose length neither the platform nor its own framing says (a browser's webm,
    /// an MP3 or OGG sent to `/v1`) is measured by converting it too, so that `max_seconds`
    /// holds and `credits_per_minute` is charged for what was said. Without ffmpeg such audio
    /// is sent as it is and priced as the longest allowed (`max_seconds`): never less than
    /// what it may cost upstream.
    async fn prepare_audio(
        &self,
        s: &Settings,
        sp: &crate::config::SpeechConfig,
        bytes: Vec<u8>,
        format: &str,
        mut ms: Option<u64>,
    ) -> Result<(Vec<u8>, String, Option<u64>), ReplyEvent> {
        let max_ms = sp.max_seconds.saturating_mul(1000);
        if bytes.len() as u64 > sp.max_bytes {
            return Err(self.too_long(s, sp));
        }
        if bytes.is_empty() {
            return Err(self.voice_refused("corrupt", &s.texts.voice_failed));
        }
        let readable = READABLE.contains(&format);
        if !readable && !ffmpeg::ffmpeg_available(&sp.ffmpeg).await {
            info!(%format, "audio needs ffmpeg, which is not installed");
            return Err(self.voice_refused("no_ffmpeg", &s.texts.voice_off));
        }
        if format == "amr" {
            // Its length is in its framing: a cut or mislabelled file stops here.
            let Some(amr) = ffmpeg::amr_ms(&bytes) else {
                return Err(self.voice_refused("corrupt", &s.texts.voice_failed));
            };
            ms = Some(amr);
        } else if format == "wav" {
            ms = ms.or_else(|| ffmpeg::wav_ms(&bytes));
        }
        if ms.is_some_and(|ms| ms > max_ms) {
            return Err(self.too_long(s, sp));
        }
        if readable && (ms.is_some() || !ffmpeg::ffmpeg_available(&sp.ffmpeg).await) {
            return Ok((bytes, format.to_owned(), Some(ms.unwrap_or(max_ms))));
        }
        let timeout = Duration::from_secs(sp.ffmpeg_timeout_secs);
        let limit = ffmpeg::wav_limit(sp.max_seconds);
        let wav = match ffmpeg::to_wav(&sp.ffmpeg, bytes, timeout, limit).await {
            Ok(wav) => wav,
            Err(ffmpeg::ConvertError::TooLarge(_)) => return Err(self.too_long(s, sp)),
            Err(e) => {
                warn!(error = %e, %format, "converting audio failed");
                return Err(self.voice_refused("corrupt", &s.texts.voice_failed));
            }
        };
        let wav_ms = ffmpeg::converted_wav_ms(&wav);
        if wav_ms > max_ms {
            return Err(self.too_long(s, sp));
        }
        Ok((wav, "wav".to_owned(), ms.or(Some(wav_ms))))
    }

    /// Sends prepared audio to the transcription upstream (with its fallbacks).
    async fn transcribe_prepared(
        &self,
        s: &Settings,
        sp: &crate::config::SpeechConfig,
        bytes: Vec<u8>,
        ext: &str,
    ) -> Result<String, ReplyEvent> {
        let mut req = TranscriptionRequest::new(sp.model.clone(), bytes, ext);
        req.max_bytes = usize::try_from(sp.max_bytes)
            .unwrap_or(usize::MAX)
            .max(ffmpeg::wav_limit(sp.max_seconds));
        let started = Instant::now();
        let heard = tokio::select! {
            r = self.llm().transcribe(req) => r,
            () = self.inner.shutdown.cancelled() => {
                return Err(failed(FailureKind::Unavailable, &s.texts.unavailable));
            }
        };
        metrics::histogram!("chatrelay_transcription_seconds")
            .record(started.elapsed().as_secs_f64());
        match heard {
            Ok(text) => Ok(text),
            Err(AudioError::Api(chatrelay_openai::Error::InvalidConfig(e))) => {
                warn!(error = %e, "no transcription upstream");
                Err(self.voice_refused("off", &s.texts.voice_off))
            }
            Err(AudioError::TooLarge { .. }) => Err(self.too_long(s, sp)),
            Err(AudioError::Api(e)) => {
                warn!(error = %e, "transcription failed; nothing charged");
                metrics::counter!("chatrelay_voice_total", "outcome" => "upstream_error")
                    .increment(1);
                Err(failed(FailureKind::Upstream, &s.texts.voice_failed))
            }
            Err(e) => {
                warn!(error = %e, "transcription refused; nothing charged");
                Err(self.voice_refused("corrupt", &s.texts.voice_failed))
            }
        }
    }

    /// A voice message ended without an answer (counted by `why`), nothing charged.
    fn voice_refused(&self, why: &'static str, text: impl Into<String>) -> ReplyEvent {
        metrics::counter!("chatrelay_voice_total", "outcome" => why).increment(1);
        failed(FailureKind::InvalidRequest, text)
    }
}

/// Puts what was heard in front of an answer (or of what was said instead of one).
pub(super) fn with_heard(prefix: Option<String>, event: ReplyEvent) -> ReplyEvent {
    let Some(prefix) = prefix else {
        return event;
    };
    match event {
        ReplyEvent::Final {
            text,
            usage,
            charged,
            images,
        } => ReplyEvent::Final {
            text: format!("{prefix}\n\n{text}"),
            usage,
            charged,
            images,
        },
        ReplyEvent::Failed { kind, message }
            if kind != FailureKind::Duplicate && !message.is_empty() =>
        {
            ReplyEvent::Failed {
                kind,
                message: format!("{prefix}\n\n{message}"),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_price_counts_started_minutes() {
        assert_eq!(voice_price(2, 3, None), 2);
        assert_eq!(voice_price(2, 3, Some(0)), 2);
        assert_eq!(voice_price(2, 3, Some(1)), 5);
        assert_eq!(voice_price(2, 3, Some(60_000)), 5);
        assert_eq!(voice_price(2, 3, Some(60_001)), 8);
        assert_eq!(voice_price(u64::MAX, 3, Some(60_001)), u64::MAX);
    }

    #[test]
    fn what_was_heard_goes_before_answers_not_silence() {
        let fin = with_heard(Some("你说的是：hi".into()), free_answer("hello".into()));
        assert_eq!(fin.user_text().as_deref(), Some("你说的是：hi\n\nhello"));
        let dup = with_heard(Some("x".into()), failed(FailureKind::Duplicate, ""));
        assert_eq!(dup.user_text(), None);
        let plain = with_heard(None, free_answer("hello".into()));
        assert_eq!(plain.user_text().as_deref(), Some("hello"));
    }
}
