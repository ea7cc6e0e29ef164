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
    /// as `format` (`opus`, `mp3`), at most `max_bytes` of audio, charging `[speech]
    /// speech_credits`. `None`, at no charge, when the scope does not speak, the answer stays
    /// text ([`speakable`]), the user cannot pay, or the upstream fails; the reason is logged
    /// and counted (`chatrelay_voice_replies_total`).
    pub async fn speak_answer(
        &self,
        key: &UserKey,
        message_ref: &str,
        answer: &str,
        format: &str,
        max_bytes: usize,
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
        let uid = match self.known_user(key) {
            Ok(Some(uid)) => uid,
            Ok(None) => return None,
            Err(e) => {
                warn!(error = %e, "finding the user of a spoken answer failed");
                return None;
            }
        };
        let reference = format!("voice:{message_ref}");
        let cost = sp.speech_credits;
        let reservation = if cost > 0 {
            let (settings, owned) = (s.clone(), reference.clone());
            match self
                .off_worker(move |e| e.reserve(&settings, uid, cost, &owned))
                .await
            {
                Some(Ok(id)) => Some(id),
                _ => {
                    counted("unpaid");
                    return None;
                }
            }
        } else {
            None
        };
        let mut req = SpeechRequest::new(sp.speech_model.clone(), text, sp.voice.clone(), format);
        req.max_bytes = max_bytes;
        let spoken = tokio::select! {
            r = self.llm().speak(req) => r,
            () = self.inner.shutdown.cancelled() => Err(SpeechError::Invalid("shutting down".into())),
        };
        let speech = match spoken {
            Ok(speech) => speech,
            Err(e) => {
                match &e {
                    SpeechError::TooLarge { .. } => counted("too_large"),
                    _ => counted("failed"),
                }
                warn!(error = %e, "speaking an answer failed; it stays text, nothing charged");
                if let Some(id) = reservation {
                    self.release(id).await;
                }
                return None;
            }
        };
        let charged = match reservation {
            Some(id) => {
                let metered = Metered {
                    platform: key.platform,
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    outcome: chatrelay_storage::UsageOutcome::Answered,
                };
                self.settle(id, cost, &sp.speech_model, None, metered)
                    .await
                    .unwrap_or(0)
            }
            None => 0,
        };
        counted("spoken");
        metrics::counter!("chatrelay_credits_charged_total").increment(charged);
        Some(Spoken {
            audio: speech.audio,
            uid,
            reference,
            charged,
        })
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
}
