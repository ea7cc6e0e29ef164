//! Chat on Telegram: streaming edits, 429s, HTML fallback, long answers, webhook secrets,
//! group mentions, typing, pictures, and answers owed after a failed send.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_question_streams_by_edits_then_html() {
    let h = start("", None).await;
    h.push(message(1, 42, 1, "hello"));
    let calls = h.wait_final(42).await;
    let ours: Vec<&Call> = calls.iter().filter(|c| c.chat() == 42).collect();
    assert_eq!(ours[0].method, "sendChatAction");
    assert_eq!(ours[0].body["action"], "typing");
    assert_eq!(ours[1].method, "sendMessage");
    assert!(!ours[1].html());
    let edits = chat_calls(&calls, 42, "editMessageText");
    let progressive = edits.iter().filter(|c| !c.html()).count();
    assert!(progressive >= 2, "only {progressive} progressive edits");
    // The edits grow and are spaced by the edit interval.
    for w in edits.windows(2) {
        assert!(w[1].at - w[0].at >= Duration::from_millis(90));
    }
    let last = ours.last().unwrap();
    assert_eq!(last.method, "editMessageText");
    assert!(last.html());
    assert_eq!(last.text(), chatrelay_telegram::to_html(&demo("hello")));
    assert_eq!(chat_calls(&calls, 42, "sendMessage").len(), 1);
    // Offsets confirm the update: it is not answered twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(chat_calls(&h.calls(), 42, "sendMessage").len(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_edit_waits_retry_after() {
    let h = start("", None).await;
    h.fake.edits_429.store(1, Ordering::SeqCst);
    h.push(message(1, 43, 1, "hello"));
    let calls = h.wait_final(43).await;
    let edits = chat_calls(&calls, 43, "editMessageText");
    let limited = edits.iter().position(|c| c.status == 429).expect("a 429");
    let next = edits.get(limited + 1).expect("an edit after the 429");
    let waited = next.at - edits[limited].at;
    assert!(
        waited >= Duration::from_millis(990),
        "waited only {waited:?}"
    );
    assert!(edits.last().unwrap().html() && edits.last().unwrap().ok());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_html_is_resent_as_plain_text() {
    let h = start("", None).await;
    h.fake.reject_html.store(true, Ordering::SeqCst);
    h.push(message(1, 44, 1, "hello"));
    let calls = h
        .wait(|c| c.iter().any(|c| c.chat() == 44 && c.status == 400))
        .await;
    let ours: Vec<&Call> = calls.iter().filter(|c| c.chat() == 44).collect();
    let rejected = ours.iter().position(|c| c.status == 400).unwrap();
    assert!(ours[rejected].html());
    let after = &ours[rejected + 1..];
    assert_eq!(after.len(), 1, "{after:#?}");
    assert_eq!(after[0].method, "editMessageText");
    assert!(!after[0].html());
    assert!(after[0].ok());
    assert_eq!(after[0].text(), demo("hello"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_answer_is_split_at_4096_utf16_units() {
    let line = "第一行中文回答😀，包含表情 and ASCII words 🎉🎉 更多文字。\n";
    let mut answer = String::new();
    while answer.chars().count() < 10_000 {
        answer.push_str(line);
    }
    let answer: String = answer.chars().take(10_000).collect();
    assert!(answer.encode_utf16().count() > 2 * 4096);
    let h = start("", Some(&answer)).await;
    h.push(message(1, 45, 1, "write a lot"));
    let calls = h
        .wait(|c| {
            let finals: String = c
                .iter()
                .filter(|c| c.chat() == 45 && c.ok() && is_final(c))
                .map(Call::text)
                .collect();
            finals.len() >= answer.len()
        })
        .await;
    let finals: Vec<&Call> = calls
        .iter()
        .filter(|c| c.chat() == 45 && c.ok() && is_final(c))
        .collect();
    assert!(finals.len() >= 3, "{} parts", finals.len());
    assert_eq!(finals[0].method, "editMessageText");
    assert!(finals[1..].iter().all(|c| c.method == "sendMessage"));
    for c in &finals {
        let units = c.text().encode_utf16().count();
        assert!(units <= 4096, "a part of {units} UTF-16 units");
    }
    let joined: String = finals.iter().map(|c| c.text()).collect();
    assert_eq!(joined, answer);
    // Progress edits never exceed the limit either.
    for c in calls.iter().filter(|c| c.chat() == 45) {
        assert!(c.text().encode_utf16().count() <= 4096);
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_checks_the_secret() {
    let h = start(
        &format!("mode = \"webhook\"\nwebhook_secret = \"{SECRET}\"\n"),
        None,
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/telegram/main", h.daemon);
    let post = |secret: Option<&str>, update: Value| {
        let mut req = client.post(&url).json(&update);
        if let Some(s) = secret {
            req = req.header("X-Telegram-Bot-Api-Secret-Token", s);
        }
        req.send()
    };
    let r = post(Some("wrong-secret-123"), message(1, 46, 1, "hello"))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = post(None, message(2, 46, 2, "hello")).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = post(Some(SECRET), message(3, 47, 3, "hello"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let calls = h.wait_final(47).await;
    assert!(
        calls.iter().all(|c| c.chat() != 46),
        "a refused update was processed"
    );
    assert!(calls.iter().all(|c| c.method != "getUpdates"));
    let r = client
        .post(format!("{}/telegram/nope", h.daemon))
        .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
        .json(&message(4, 47, 4, "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_answer_only_mentions() {
    let h = start("", None).await;
    h.push(message(1, -100, 10, "hello everyone"));
    h.push(message(2, -100, 11, "@relay_bot what is rust?"));
    let calls = h.wait_final(-100).await;
    let ours: Vec<&Call> = calls.iter().filter(|c| c.chat() == -100).collect();
    assert!(
        ours.iter()
            .all(|c| c.body["reply_parameters"]["message_id"] != 10)
    );
    let first = ours.iter().find(|c| c.method == "sendMessage").unwrap();
    assert_eq!(first.body["reply_parameters"]["message_id"], 11);
    let last = ours.last().unwrap();
    assert_eq!(
        last.text(),
        chatrelay_telegram::to_html(&demo("what is rust?"))
    );
    // One answer only: the unaddressed message was ignored.
    assert_eq!(ours.iter().filter(|c| c.method == "sendMessage").count(), 1);
    assert_eq!(
        ours.iter().filter(|c| c.method == "sendChatAction").count(),
        1
    );
    h.stop().await;
}

#[test]
fn config_is_validated() {
    let parse = |t: &str| {
        config::parse(t, &[], None)
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
    };
    assert!(parse("[[telegram]]\nid = \"a\"\ntoken = \"1:x\"\n").is_ok());
    let e = parse("[[telegram]]\nid = \"a\"\n").unwrap_err();
    assert!(e.contains("telegram[0].token"), "{e}");
    let e = parse("[[telegram]]\nid = \"a b\"\ntoken = \"1:x\"\n").unwrap_err();
    assert!(e.contains("telegram[0].id"), "{e}");
    let e = parse(
        "[[telegram]]\nid = \"a\"\ntoken = \"1:x\"\n[[telegram]]\nid = \"a\"\ntoken = \"2:y\"\n",
    )
    .unwrap_err();
    assert!(e.contains("telegram[1].id"), "{e}");
    let e = parse("[[telegram]]\nid = \"a\"\ntoken = \"1:x\"\nmode = \"webhook\"\n").unwrap_err();
    assert!(e.contains("telegram[0].webhook_secret"), "{e}");
    let e = parse("[[telegram]]\nid = \"a\"\ntoken = \"1:x\"\nmode = \"webhook\"\nwebhook_secret = \"short\"\n")
        .unwrap_err();
    assert!(e.contains("telegram[0].webhook_secret"), "{e}");
    assert!(parse("[[telegram]]\nid = \"a\"\ntoken = \"1:x\"\nmode = \"webhook\"\nwebhook_secret = \"long-enough_1\"\n").is_ok());
    let e = parse("[[telegram]]\nid = \"a\"\ntoken = \"1:x\"\nmode = \"push\"\n").unwrap_err();
    assert!(e.contains("telegram[0].mode"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_repeated_while_the_model_thinks() {
    let h = start("", Some("想好了。")).await;
    h.fake
        .llm_delay_ms
        .store(4_600, std::sync::atomic::Ordering::SeqCst);
    h.push(message(1, 77, 1, "慢慢想"));
    let calls = h.wait_final(77).await;
    let typing = chat_calls(&calls, 77, "sendChatAction");
    assert!(typing.len() >= 2, "typing was shown once only: {typing:#?}");
    let first_message = chat_calls(&calls, 77, "sendMessage");
    assert!(
        typing[1].at < first_message[0].at,
        "typing repeats before the answer"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn photos_reach_a_vision_model_and_drawings_come_back_as_photos() {
    // The fake Telegram serves the photo on loopback, which only a trusted host reaches.
    let h = start(
        "[bot]\npicture_trusted_hosts = [\"127.0.0.1\"]\n\
         [[llm.models]]\nname = \"m\"\nvision = true\n[images]\nmodel = \"draw\"\ncredits = 2\n",
        Some("a cat on a mat"),
    )
    .await;
    h.push(json!({
        "update_id": 1,
        "message": {
            "message_id": 1, "date": 1_700_000_000, "chat": chat_json(42),
            "from": {"id": 4242, "is_bot": false, "first_name": "Ann"},
            "photo": [
                {"file_id": "small", "file_unique_id": "s", "width": 90, "height": 90},
                {"file_id": "large", "file_unique_id": "l", "width": 800, "height": 600}
            ],
            "caption": "what is this?"
        }
    }));
    let calls = h.wait_final(42).await;
    let get_file: Vec<&Call> = calls.iter().filter(|c| c.method == "getFile").collect();
    assert_eq!(get_file.len(), 1);
    assert_eq!(
        get_file[0].body["file_id"], "large",
        "the largest size is used"
    );
    let sent = h.fake.llm_requests.lock().unwrap().last().cloned().unwrap();
    let parts = sent["messages"].as_array().unwrap().last().unwrap()["content"].clone();
    assert_eq!(parts[0]["text"], "what is this?");
    assert!(
        parts[1]["image_url"]["url"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,"),
        "{parts}"
    );
    assert!(
        chat_calls(&calls, 42, "sendMessage")
            .iter()
            .any(|c| c.text().contains("cat"))
    );

    h.push(message(2, 42, 2, "/image a red kite"));
    let photos = h.wait(|_| !h.fake.photos.lock().unwrap().is_empty()).await;
    drop(photos);
    let photo = h.fake.photos.lock().unwrap()[0].clone();
    assert!(photo.contains("https://img.example/drawn.png"), "{photo}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_could_not_be_sent_comes_with_the_next_message() {
    let h = start("", None).await;
    h.fake.refuse_sends.store(true, Ordering::SeqCst);
    h.push(message(1, 46, 1, "first question"));
    // Every try of the final answer is refused.
    h.wait(|c| {
        c.iter()
            .any(|c| c.chat() == 46 && c.status == 400 && is_final(c))
    })
    .await;
    h.fake.refuse_sends.store(false, Ordering::SeqCst);
    h.push(message(2, 46, 2, "second question"));
    let calls = h
        .wait(|c| {
            c.iter().any(|c| {
                c.chat() == 46 && c.ok() && is_final(c) && c.text().contains("「second question」")
            })
        })
        .await;
    // (The demo answer has markdown: sent as Telegram HTML, so its text is compared by the
    // question it echoes.)
    let delivered: Vec<&Call> = calls.iter().filter(|c| c.chat() == 46 && c.ok()).collect();
    let owed = delivered
        .iter()
        .position(|c| c.text().contains("「first question」"))
        .expect("the paid answer that could not be sent was delivered later");
    let next = delivered
        .iter()
        .position(|c| c.text().contains("「second question」") && is_final(c))
        .unwrap();
    assert!(owed < next, "the owed answer comes first");
    h.stop().await;
}
