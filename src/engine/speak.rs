//! Voice out: an answer spoken through `[speech] speech_model` / `voice` for scopes with
//! `voice_reply = true`, and what that costs.
//!
//! The text answer is always delivered first and on its own: the voice is an extra, made
//! after it. So a voice that cannot be made (too long an answer, code in it, upstream down,
//! out of credits, audio over the platform's limit) changes nothing for the user but the
//! missing voice, and costs nothing. The price (`[speech] speech_credits`) is its own ledger
//! entry under the reference `voice:<message reference>`: reserved before the upstream call,
//! settled when the audio is back, released on any failure; idempotent like any answer (a
//! redelivered message is not spoken twice). The channel gives the credits back
//! ([`Engine::refund_undelivered`]) when the platform then refuses the voice message.

use bytes::Bytes;
use chatrelay_core::UserKey;
use chatrelay_openai::speech::{SpeechError, SpeechRequest};

use super::*;

/// A spoken answer, ready to send.
#[derive(Debug, Clone)]
pub struct Spoken {
    /// The audio, in the format asked for.
    pub audio: Bytes,
    /// Who paid, and under which reference (for [`Engine::refund_undelivered`]).
    pub uid: Uid,
    /// The ledger reference of the charge.
    pub reference: String,
    /// Credits charged.
    pub charged: u64,
}

/// What of an answer is said aloud: `None` when it should stay text only (empty, longer than
/// `max_chars`, or with code, which is read, not listened to). Markdown marks are dropped.
#[must_use]
pub fn speakable(answer: &str, max_chars: usize) -> Option<String> {
    if answer.contains("```") {
        return None;
    }
    let text: String = answer
        .chars()
        .filter(|c| !matches!(c, '*' | '#' | '`' | '>' | '|'))
        .collect();
    let text = text.trim();
    if text.is_empty() || text.chars().count() > max_chars {
        return None;
    }
    Some(text.to_owned())
}

/// The length of an MP3 (MPEG audio layer III) file in ms, summed over its frames (after an
/// ID3v2 tag); `None` when it holds no frame or is cut inside one. Other tags (ID3v1 `TAG`
/// at the end) end the count.
#[must_use]
pub fn mp3_ms(file: &[u8]) -> Option<u64> {
    const MPEG1: [u32; 15] = [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ];
    const MPEG2: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    let mut at = 0usize;
    if file.get(..3) == Some(b"ID3") {
        let size = file.get(6..10)?;
        let size = size
            .iter()
            .fold(0usize, |acc, b| (acc << 7) | usize::from(b & 0x7f));
        at = 10usize.checked_add(size)?;
    }
    let (mut frames, mut micros) = (0u64, 0u64);
    while let Some(h) = file.get(at..at.checked_add(4)?) {
        let header = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        if header >> 21 != 0x7ff || (header >> 17) & 3 != 1 {
            break; // not a layer III frame: a trailing tag, or junk
        }
        let version = (header >> 19) & 3; // 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
        let bitrate_index = ((header >> 12) & 0xf) as usize;
        let rate_index = ((header >> 10) & 3) as usize;
        let padding = ((header >> 9) & 1) as usize;
        let rates: [u32; 3] = match version {
            3 => [44_100, 48_000, 32_000],
            2 => [22_050, 24_000, 16_000],
            0 => [11_025, 12_000, 8_000],
            _ => return None,
        };
        let kbps = if version == 3 { MPEG1 } else { MPEG2 }
            .get(bitrate_index)
            .copied()?;
        let rate = rates.get(rate_index).copied()?;
        if kbps == 0 {
            return None; // "free" bitrate: no length to read
        }
        let (samples, factor) = if version == 3 {
            (1152u64, 144)
        } else {
            (576, 72)
        };
        let len = (factor * kbps as usize * 1000 / rate as usize) + padding;
        at = at.checked_add(len)?;
        if at > file.len() {
            return None;
        }
        frames += 1;
        micros += samples * 1_000_000 / u64::from(rate);
    }
    (frames > 0).then_some(micros / 1000)
}

impl Engine {
    /// Whether answers to `key` are spoken: its scope has `voice_reply` and `[speech]` is set.
    #[must_use]
    pub fn voice_reply_for(&self, key: &UserKey) -> bool {
        let s = self.settings();
        s.speech.is_some()
            && policy::scope_defaults(&s.scopes, &policy::scope_of(key))
                .is_some_and(|sc| sc.voice_reply)
    }

    /// Speaks `answer` (the text already delivered for the message `message_ref` of `key`)
    /// as `format` (`opus`, `mp3`), at most `max_bytes` of audio that `fits` the platform (a
    /// length limit), charging `[speech] speech_credits`. `None`, at no charge, when the
    /// scope does not speak, the answer stays text ([`speakable`]), the user cannot pay, or
    /// the upstream fails; the reason is logged and counted (`chatrelay_voice_replies_total`).
    pub async fn speak_answer(
        &self,
        key: &UserKey,
        message_ref: &str,
        answer: &str,
        format: &str,
        max_bytes: usize,
        fits: fn(&[u8]) -> bool,
    ) -> Option<Spoken> {
        let counted = |outcome: &'static str| {
            metrics::counter!("chatrelay_voice_replies_total", "outcome" => outcome).increment(1);
        };
        if !self.voice_reply_for(key) {
            return None;
        }
        let s = self.settings();
        let sp = s.speech.clone()?;
        let Some(text) = speakable(answer, sp.reply_max_chars) else {
            counted("text_only");
            return None;
        };
        let uid = match self.known_user(key).await {
            Ok(Some(uid)) => uid,
            Ok(None) => return None,
            Err(e) => {
                warn!(error = %e, "finding the user of a spoken answer failed");
                return None;
            }
        };
        let reference = format!("voice:{message_ref}");
        let mut req = SpeechRequest::new(sp.speech_model.clone(), text, sp.voice.clone(), format);
        req.max_bytes = max_bytes;
        let (audio, charged) = match self
            .speak_metered(&s, uid, key.platform, &reference, req, fits)
            .await
        {
            Ok(done) => done,
            Err(why) => {
                counted(why.outcome());
                return None;
            }
        };
        counted("spoken");
        Some(Spoken {
            audio,
            uid,
            reference,
            charged,
        })
    }

    /// `/v1/audio/speech` for `uid`: `input` spoken with `voice` (else `[speech] voice`) as
    /// `format`, by `[speech] speech_model`, charged `speech_credits` under `reference`. The
    /// refusal, when it fails, costs nothing. Returns the audio and the credits charged.
    pub async fn speak_api(
        &self,
        uid: Uid,
        input: &str,
        voice: Option<&str>,
        format: &str,
        reference: &str,
    ) -> Result<(Bytes, u64), ReplyEvent> {
        let s = self.settings();
        let Some(sp) = s.speech.clone() else {
            return Err(failed(FailureKind::InvalidRequest, &s.texts.voice_off));
        };
        self.inner.stats.active(s.today(), uid);
        if let Some(refused) = self.guard(uid).await {
            return Err(refused);
        }
        let voice = voice.unwrap_or(&sp.voice);
        let req = SpeechRequest::new(sp.speech_model.clone(), input, voice, format);
        // Refused before anything is reserved: the message says what was wrong.
        if let Err(e) = req.check() {
            return Err(failed(FailureKind::InvalidRequest, e.to_string()));
        }
        match self
            .speak_metered(
                &s,
                uid,
                chatrelay_core::Platform::Api,
                reference,
                req,
                |_| true,
            )
            .await
        {
            Ok(done) => {
                metrics::counter!("chatrelay_voice_replies_total", "outcome" => "api").increment(1);
                Ok(done)
            }
            Err(NotSpoken::Unpaid(refused)) => Err(refused),
            Err(NotSpoken::Failed(SpeechError::Api(chatrelay_openai::Error::InvalidConfig(e)))) => {
                warn!(error = %e, "no speech upstream");
                Err(failed(FailureKind::InvalidRequest, &s.texts.voice_off))
            }
            Err(NotSpoken::Failed(SpeechError::Api(_)) | NotSpoken::TooLong) => {
                Err(failed(FailureKind::Upstream, &s.texts.upstream_error))
            }
            Err(NotSpoken::Failed(e)) => Err(failed(FailureKind::InvalidRequest, e.to_string())),
        }
    }

    /// Reserves `[speech] speech_credits` of `uid` under `reference`, speaks `req`, checks
    /// that the audio `fits`, settles (its own ledger entry); releases the reservation on
    /// any failure. Returns the audio and the credits charged.
    async fn speak_metered(
        &self,
        s: &Arc<Settings>,
        uid: Uid,
        platform: chatrelay_core::Platform,
        reference: &str,
        req: SpeechRequest,
        fits: fn(&[u8]) -> bool,
    ) -> Result<(Bytes, u64), NotSpoken> {
        let cost = s.speech.as_ref().map_or(0, |sp| sp.speech_credits);
        let model = req.model.clone();
        let reservation = if cost > 0 {
            let (settings, owned) = (s.clone(), reference.to_owned());
            match self
                .off_worker(move |e| async move { e.reserve(&settings, uid, cost, &owned).await })
                .await
            {
                Some(Ok(id)) => Some(id),
                Some(Err(refused)) => return Err(NotSpoken::Unpaid(refused)),
                None => {
                    return Err(NotSpoken::Unpaid(failed(
                        FailureKind::Unavailable,
                        &s.texts.unavailable,
                    )));
                }
            }
        } else {
            None
        };
        let spoken = tokio::select! {
            r = self.llm().speak(req) => r,
            () = self.inner.shutdown.cancelled() => Err(SpeechError::Invalid("shutting down".into())),
        };
        let outcome = match spoken {
            Ok(speech) if fits(&speech.audio) => Ok(speech.audio),
            Ok(speech) => {
                info!(
                    bytes = speech.audio.len(),
                    "spoken audio is over the platform's limits; nothing charged"
                );
                Err(NotSpoken::TooLong)
            }
            Err(e) => {
                warn!(error = %e, "speaking failed; nothing charged");
                Err(NotSpoken::Failed(e))
            }
        };
        let audio = match outcome {
            Ok(audio) => audio,
            Err(why) => {
                if let Some(id) = reservation {
                    self.release(id).await;
                }
                return Err(why);
            }
        };
        let charged = match reservation {
            Some(id) => {
                let metered = Metered {
                    platform,
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    outcome: chatrelay_storage::UsageOutcome::Answered,
                };
                self.settle(id, cost, &model, None, metered)
                    .await
                    .unwrap_or(0)
            }
            None => 0,
        };
        metrics::counter!("chatrelay_credits_charged_total").increment(charged);
        Ok((audio, charged))
    }
}

/// Why no voice was made (nothing charged).
enum NotSpoken {
    /// The credits could not be reserved (the refusal says why).
    Unpaid(ReplyEvent),
    /// The upstream failed or refused.
    Failed(SpeechError),
    /// The audio is over the platform's limits.
    TooLong,
}

impl NotSpoken {
    /// The `chatrelay_voice_replies_total` outcome.
    fn outcome(&self) -> &'static str {
        match self {
            Self::Unpaid(_) => "unpaid",
            Self::Failed(SpeechError::TooLarge { .. }) => "too_large",
            Self::Failed(_) => "failed",
            Self::TooLong => "too_long",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_answers_are_spoken() {
        assert_eq!(
            speakable("**Sunny** all day. # ok", 100).as_deref(),
            Some("Sunny all day.  ok")
        );
        assert_eq!(speakable("  ", 100), None);
        assert_eq!(speakable("abc", 2), None);
        assert_eq!(speakable("字字", 2).as_deref(), Some("字字"));
        assert_eq!(speakable("run:\n```sh\nls\n```", 100), None);
    }

    /// `n` MPEG-1 layer III frames, 128 kbit/s at 44.1 kHz (417 or 418 bytes with padding).
    fn mp3(n: usize, id3: bool) -> Vec<u8> {
        let mut f = Vec::new();
        if id3 {
            f.extend_from_slice(b"ID3\x04\x00\x00\x00\x00\x01\x00"); // a 128-byte tag
            f.extend_from_slice(&[0u8; 128]);
        }
        for _ in 0..n {
            let mut frame = vec![0u8; 417];
            frame[..4].copy_from_slice(&[0xFF, 0xFB, 0x90, 0x00]);
            f.extend_from_slice(&frame);
        }
        f
    }

    #[test]
    fn mp3_length_is_summed_over_frames() {
        // 1152 samples at 44.1 kHz: 26.122 ms a frame.
        assert_eq!(mp3_ms(&mp3(1, false)), Some(26));
        assert_eq!(mp3_ms(&mp3(100, true)), Some(2612));
        let mut tagged = mp3(10, false);
        tagged.extend_from_slice(b"TAG");
        tagged.extend_from_slice(&[0u8; 125]);
        assert_eq!(mp3_ms(&tagged), Some(261));
        let whole = mp3(3, false);
        assert_eq!(
            mp3_ms(&whole[..whole.len() - 1]),
            None,
            "cut inside a frame"
        );
        assert_eq!(mp3_ms(b"OggS\x00"), None);
        assert_eq!(mp3_ms(&[]), None);
        assert_eq!(mp3_ms(b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f"), None);
        // MPEG-2 layer III, 32 kbit/s at 24 kHz (what TTS services often send): 24 ms a frame.
        let mut m2 = Vec::new();
        for _ in 0..50 {
            let mut frame = vec![0u8; 96];
            frame[..4].copy_from_slice(&[0xFF, 0xF3, 0x44, 0x00]);
            m2.extend_from_slice(&frame);
        }
        assert_eq!(mp3_ms(&m2), Some(1200));
    }
}
