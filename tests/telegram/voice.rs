//! Voice on Telegram: notes transcribed, shown, answered and charged; refusals at no
//! charge; spoken answers for scopes with `voice_reply`.

use super::*;

/// The uid's usage charges, through the admin API.
async fn usage_debits(h: &Harness, uid: u64) -> Vec<i64> {
    let user: Value = reqwest::Client::new()
        .get(format!("{}/admin/users/{uid}", h.daemon))
        .bearer_auth("test-admin-token-0123456789")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    user["ledger"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "usage")
        .map(|e| e["free_delta"].as_i64().unwrap() + e["paid_delta"].as_i64().unwrap_or(0))
        .collect()
}

fn voice_update(
    update_id: i64,
    message_id: i64,
    file_id: &str,
    seconds: u32,
    size: usize,
) -> Value {
    json!({
        "update_id": update_id,
        "message": {
            "message_id": message_id, "date": 1_700_000_000, "chat": chat_json(42),
            "from": {"id": 4242, "is_bot": false, "first_name": "Ann"},
            "voice": {"file_id": file_id, "file_unique_id": format!("u-{file_id}"),
                "duration": seconds, "mime_type": "audio/ogg", "file_size": size}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_notes_are_transcribed_shown_answered_and_charged() {
    let h = start(
        "[speech]\nmodel = \"whisper-1\"\ncredits = 2\ncredits_per_minute = 3\n\
         max_bytes = 4096\nmax_seconds = 120\n",
        Some("sunny all day"),
    )
    .await;
    // An OGG/Opus voice note as Telegram stores it, passed to the upstream as it is.
    let ogg = b"OggS\x00\x02\x00\x00fake-opus-voice-note".to_vec();
    *h.fake.voice.lock().unwrap() = ogg.clone();
    h.push(voice_update(1, 1, "voice-1", 61, ogg.len()));
    let calls = h.wait_final(42).await;
    let get_file: Vec<&Call> = calls.iter().filter(|c| c.method == "getFile").collect();
    assert_eq!(get_file.len(), 1);
    assert_eq!(get_file[0].body["file_id"], "voice-1");
    let (content_type, upload) = h.fake.transcriptions.lock().unwrap()[0].clone();
    assert!(
        content_type.starts_with("multipart/form-data; boundary="),
        "{content_type}"
    );
    let text = String::from_utf8_lossy(&upload);
    assert!(
        text.contains("name=\"model\"\r\n\r\nwhisper-1\r\n"),
        "{text}"
    );
    assert!(
        text.contains("name=\"response_format\"\r\n\r\njson\r\n"),
        "{text}"
    );
    assert!(
        text.contains("filename=\"voice.ogg\"\r\nContent-Type: audio/ogg\r\n\r\n"),
        "{text}"
    );
    assert!(
        upload.windows(ogg.len()).any(|w| w == ogg.as_slice()),
        "the file's bytes as sent"
    );
    // What was heard comes first, as a message of its own, then the answer.
    let sent = chat_calls(&calls, 42, "sendMessage");
    assert_eq!(sent[0].text(), "你说的是：what is the weather");
    assert!(
        calls
            .iter()
            .any(|c| c.chat() == 42 && is_final(c) && c.text().contains("sunny all day"))
    );
    let asked = h.fake.llm_requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        asked["messages"].as_array().unwrap().last().unwrap()["content"],
        "what is the weather"
    );
    // 61 s: two started minutes; the answer's own price is 1 credit (the default model).
    let debits = usage_debits(&h, 1).await;
    assert_eq!(debits.len(), 1, "{debits:?}");
    assert_eq!(
        debits[0],
        -(2 + 2 * 3 + 1),
        "the voice price rides with the answer's one entry"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_voice_is_refused_before_downloading_at_no_charge() {
    let h = start(
        "[speech]\nmodel = \"whisper-1\"\ncredits = 2\nmax_bytes = 4096\nmax_seconds = 60\n",
        Some("never asked"),
    )
    .await;
    *h.fake.voice.lock().unwrap() = vec![b'x'; 100];
    // Announced too big in the update: refused before getFile.
    h.push(voice_update(1, 1, "voice-1", 5, 1_000_000));
    let calls = h
        .wait(|c| {
            c.iter()
                .any(|c| c.method == "sendMessage" && c.chat() == 42)
        })
        .await;
    assert!(
        chat_calls(&calls, 42, "sendMessage")[0]
            .text()
            .contains("语音太长了"),
        "{calls:#?}"
    );
    assert!(!calls.iter().any(|c| c.method == "getFile"));
    // The update says nothing of its size, getFile announces it too big: no download.
    h.push(voice_update(2, 2, "voice-big", 5, 0));
    let calls = h
        .wait(|c| chat_calls(c, 42, "sendMessage").len() >= 2)
        .await;
    assert!(
        chat_calls(&calls, 42, "sendMessage")[1]
            .text()
            .contains("语音太长了")
    );
    assert_eq!(calls.iter().filter(|c| c.method == "getFile").count(), 1);
    // Too long a voice note, by its announced duration.
    h.push(voice_update(3, 3, "voice-1", 61, 100));
    let calls = h
        .wait(|c| chat_calls(c, 42, "sendMessage").len() >= 3)
        .await;
    assert!(
        chat_calls(&calls, 42, "sendMessage")[2]
            .text()
            .contains("60 秒")
    );
    assert_eq!(
        h.fake.downloads.load(Ordering::SeqCst),
        0,
        "nothing downloaded"
    );
    assert!(h.fake.transcriptions.lock().unwrap().is_empty());
    assert!(h.fake.llm_requests.lock().unwrap().is_empty());
    assert!(usage_debits(&h, 1).await.is_empty(), "nothing charged");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_the_payer_cannot_afford_is_not_downloaded() {
    // 100 free credits a day; the model costs 200.
    let h = start(
        "[[llm.models]]\nname = \"m\"\ncredits = 200\n\
         [speech]\nmodel = \"whisper-1\"\ncredits = 2\nmax_bytes = 4096\n",
        Some("never asked"),
    )
    .await;
    *h.fake.voice.lock().unwrap() = b"OggS-voice".to_vec();
    h.push(voice_update(1, 1, "voice-1", 5, 10));
    let calls = h
        .wait(|c| {
            c.iter()
                .any(|c| c.method == "sendMessage" && c.chat() == 42)
        })
        .await;
    let text = chat_calls(&calls, 42, "sendMessage")[0].text().to_owned();
    assert!(text.contains("额度不足") && text.contains("202"), "{text}");
    assert!(
        !calls.iter().any(|c| c.method == "getFile"),
        "nothing downloaded"
    );
    assert!(
        h.fake.transcriptions.lock().unwrap().is_empty(),
        "nor transcribed"
    );
    assert!(usage_debits(&h, 1).await.is_empty());
    h.stop().await;
}

const VOICE_REPLY: &str = "[speech]\nmodel = \"whisper-1\"\nspeech_model = \"tts-1\"\nvoice = \"nova\"\n\
                           reply_max_chars = 40\nspeech_credits = 3\n\
                           [[scopes]]\nscope = \"telegram\"\nvoice_reply = true\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_reply_scopes_get_the_text_then_a_voice_note_charged_apart() {
    let h = start(VOICE_REPLY, Some("**Sunny** all day")).await;
    h.push(message(1, 42, 1, "weather?"));
    let calls = h.wait(|c| c.iter().any(|c| c.method == "sendVoice")).await;
    // The text first, whole, then the voice.
    let final_at = calls
        .iter()
        .position(|c| c.chat() == 42 && is_final(c) && c.text().contains("Sunny"))
        .expect("the text answer");
    let voice_at = calls.iter().position(|c| c.method == "sendVoice").unwrap();
    assert!(final_at < voice_at, "text before voice");
    let asked = h.fake.speech_requests.lock().unwrap().clone();
    assert_eq!(
        asked,
        [
            json!({"model": "tts-1", "input": "Sunny all day", "voice": "nova", "response_format": "opus"})
        ],
        "markdown marks are not read aloud; Telegram gets OGG/Opus"
    );
    let upload = h.fake.voices.lock().unwrap()[0].clone();
    let text = String::from_utf8_lossy(&upload);
    assert!(text.contains("name=\"chat_id\"\r\n\r\n42\r\n"), "{text}");
    assert!(text.contains("filename=\"voice.ogg\""), "{text}");
    assert!(
        upload.windows(SPOKEN_OGG.len()).any(|w| w == SPOKEN_OGG),
        "the upstream's audio, as it came"
    );
    // The answer's own entry (1 credit), and the voice's own (speech_credits).
    let mut debits = usage_debits(&h, 1).await;
    debits.sort_unstable();
    assert_eq!(debits, [-3, -1]);

    // A redelivered update is not answered nor spoken again.
    h.push(message(2, 42, 1, "weather?"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(h.fake.speech_requests.lock().unwrap().len(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_replies_fall_back_to_text_at_no_charge() {
    let long = "a long answer that is read rather than listened to, past forty";
    let h = start(VOICE_REPLY, Some(long)).await;
    h.push(message(1, 42, 1, "tell me"));
    h.wait_final(42).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        h.fake.speech_requests.lock().unwrap().is_empty(),
        "longer than reply_max_chars: text only, no upstream call"
    );

    // The speech upstream down: the text stands, no voice, nothing charged for it.
    *h.fake.llm_answer.lock().unwrap() = "short".into();
    h.fake.speech_down.store(true, Ordering::SeqCst);
    h.push(message(2, 42, 2, "again"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.fake.speech_requests.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the voice was never asked for");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(h.calls().iter().all(|c| c.method != "sendVoice"));
    assert!(h.calls().iter().any(|c| is_final(c) && c.text() == "short"));
    assert_eq!(usage_debits(&h, 1).await, [-1, -1], "two answers, no voice");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_without_voice_reply_are_not_spoken() {
    let h = start(
        "[speech]\nmodel = \"whisper-1\"\n[[scopes]]\nscope = \"telegram:other\"\nvoice_reply = true\n",
        Some("hi"),
    )
    .await;
    h.push(message(1, 42, 1, "hello"));
    h.wait_final(42).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(h.fake.speech_requests.lock().unwrap().is_empty());
    h.stop().await;
}
