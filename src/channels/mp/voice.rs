//! Voice answers on the Official Account (scopes with `voice_reply`): the text answer is
//! spoken as MP3, checked against WeChat's limits (60 s, 2 MB), uploaded as temporary media
//! and sent as a customer-service voice message after the text. Anything failing leaves the
//! text alone and gives the voice's credits back.

use chatrelay_core::UserKey;
use tracing::{Instrument, warn};

use crate::engine::Engine;
use chatrelay_wechat::MpClient;

/// WeChat's limits on a voice message: 2 MB (checked by the upload) and 60 s.
const MAX_VOICE_MS: u64 = 60_000;

/// Whether spoken MP3 audio fits a WeChat voice message (its length read from its frames;
/// unreadable audio does not).
fn fits_wechat(mp3: &[u8]) -> bool {
    crate::engine::speak::mp3_ms(mp3).is_some_and(|ms| ms <= MAX_VOICE_MS)
}

/// For scopes with `voice_reply`: speaks the answer `event` to message `message_id`, just
/// delivered as text, and sends it as a customer-service voice message (temporary media).
/// `client`: the account's, when it has an AppSecret and may push (else nothing is spoken).
/// Anything failing leaves the text alone, at no charge.
pub(super) fn speak_later(
    engine: &Engine,
    client: Option<&MpClient>,
    key: &UserKey,
    message_id: &str,
    event: &chatrelay_core::ReplyEvent,
) {
    let chatrelay_core::ReplyEvent::Final { text, .. } = event else {
        return;
    };
    let Some(client) = client.filter(|_| engine.voice_reply_for(key)) else {
        return;
    };
    let (engine2, client, key, message_id, text) = (
        engine.clone(),
        client.clone(),
        key.clone(),
        message_id.to_owned(),
        text.clone(),
    );
    engine.tracker().spawn(
        async move { send_spoken(&engine2, &client, &key, &message_id, &text).await }
            .in_current_span(),
    );
}

/// Speaks `answer` (MP3), uploads it and sends it as a voice message; gives the credits back
/// when WeChat refuses.
pub(super) async fn send_spoken(
    engine: &Engine,
    client: &MpClient,
    key: &UserKey,
    message_id: &str,
    answer: &str,
) {
    let reference = format!("{key}:{message_id}");
    let Some(spoken) = engine
        .speak_answer(
            key,
            &reference,
            answer,
            "mp3",
            chatrelay_wechat::media::MAX_VOICE_UPLOAD_BYTES,
            fits_wechat,
        )
        .await
    else {
        return;
    };
    let sent = match client.upload_voice(&spoken.audio).await {
        Ok(media_id) => client
            .send_voice(&key.user, &media_id)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match sent {
        Ok(()) => metrics::counter!("chatrelay_mp_voice_replies_total").increment(1),
        Err(e) => {
            warn!(error = %e, "sending a spoken answer failed; the text stands, its credits are given back");
            if spoken.charged > 0 {
                engine.refund_undelivered(spoken.uid, &spoken.reference, spoken.charged);
            }
        }
    }
}
