//! The Telegram connector against a fake Bot API (axum on 127.0.0.1:0) that records every
//! call, with the daemon in-process: streaming edits, 429s, HTML fallback, long answers,
//! webhook secrets, group mentions, and voice notes (a fake transcription endpoint).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chatrelay::app::App;
use chatrelay::config::{self, Config};
use serde_json::{Value, json};
use tokio::time::Instant;

const BOT_ID: i64 = 7_000_000;
const SECRET: &str = "webhook-secret-123";

#[derive(Debug, Clone)]
struct Call {
    method: String,
    body: Value,
    at: Instant,
    status: u16,
}

impl Call {
    fn text(&self) -> &str {
        self.body["text"].as_str().unwrap_or_default()
    }
    fn html(&self) -> bool {
        self.body["parse_mode"] == "HTML"
    }
    fn chat(&self) -> i64 {
        self.body["chat_id"].as_i64().unwrap_or_default()
    }
    fn ok(&self) -> bool {
        self.status == 200
    }
}

#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<Call>>,
    updates: Mutex<Vec<Value>>,
    next_message: AtomicI64,
    /// Reject every HTML message with "can't parse entities".
    reject_html: AtomicBool,
    /// Refuse every sendMessage / editMessageText (Telegram unreachable for this chat).
    refuse_sends: AtomicBool,
    /// Answer this many upcoming editMessageText calls with 429 retry_after 1.
    edits_429: AtomicU32,
    /// What the fake LLM answers.
    llm_answer: Mutex<String>,
    /// How long the fake LLM thinks before answering, in ms.
    llm_delay_ms: AtomicU32,
    /// Bodies of the chat requests the fake LLM received.
    llm_requests: Mutex<Vec<Value>>,
    /// Raw bodies of sendPhoto calls (multipart or JSON).
    photos: Mutex<Vec<String>>,
    /// The voice note served for file ids starting with `voice`.
    voice: Mutex<Vec<u8>>,
    /// Raw bodies (and content types) of transcription uploads.
    transcriptions: Mutex<Vec<(String, Vec<u8>)>>,
    /// File downloads served.
    downloads: AtomicU32,
    /// Raw bodies of sendVoice calls (multipart).
    voices: Mutex<Vec<Vec<u8>>>,
    /// Bodies of the `/v1/audio/speech` requests.
    speech_requests: Mutex<Vec<Value>>,
    /// Answer `/v1/audio/speech` with 503 (the speech upstream is down).
    speech_down: AtomicBool,
}

/// What the fake speech endpoint answers: the start of an OGG/Opus file.
const SPOKEN_OGG: &[u8] = b"OggS\x00\x02\x00\x00OpusHead-spoken-answer";

/// A picture's first bytes (PNG), served for downloads.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\nfake-picture";

fn chat_json(id: i64) -> Value {
    if id < 0 {
        json!({"id": id, "type": "supergroup", "title": "Group"})
    } else {
        json!({"id": id, "type": "private", "first_name": "Ann", "username": "ann"})
    }
}

fn bot_user() -> Value {
    json!({"id": BOT_ID, "is_bot": true, "first_name": "Relay", "username": "relay_bot"})
}

fn ok(result: Value) -> Response {
    Json(json!({"ok": true, "result": result})).into_response()
}

async fn bot_api(
    State(fake): State<Arc<Fake>>,
    Path((_bot, method)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let body_bytes = body.clone();
    let raw = String::from_utf8_lossy(&body).into_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // teloxide writes method names in PascalCase (GetMe); Telegram ignores the case.
    let mut method = method;
    if let Some(first) = method.get(..1) {
        method = first.to_ascii_lowercase() + &method[1..];
    }
    let mut status = 200;
    let response = match method.as_str() {
        "getMe" => ok(json!({
            "id": BOT_ID, "is_bot": true, "first_name": "Relay", "username": "relay_bot",
            "can_join_groups": true, "can_read_all_group_messages": false,
            "supports_inline_queries": false, "can_connect_to_business": false,
            "has_main_web_app": false
        })),
        "setMyCommands" | "sendChatAction" => ok(json!(true)),
        "getFile" => {
            let id = body["file_id"].as_str().unwrap_or_default();
            if id.starts_with("voice") {
                // `voice-big` is announced larger than it is: the size is checked first.
                let size = if id == "voice-big" {
                    50_000_000
                } else {
                    fake.voice.lock().unwrap().len()
                };
                ok(
                    json!({"file_id": id, "file_unique_id": "v1", "file_size": size,
                    "file_path": "voice/file_2.oga"}),
                )
            } else {
                ok(json!({
                    "file_id": body["file_id"], "file_unique_id": "u1", "file_size": PNG.len(),
                    "file_path": "photos/file_1.png"
                }))
            }
        }
        "sendPhoto" => {
            fake.photos.lock().unwrap().push(raw);
            let id = fake.next_message.fetch_add(1, Ordering::SeqCst) + 1000;
            ok(json!({
                "message_id": id, "date": 1_700_000_000, "chat": chat_json(42), "from": bot_user(),
                "photo": [{"file_id": "p", "file_unique_id": "pu", "width": 1, "height": 1}]
            }))
        }
        "sendVoice" => {
            fake.voices.lock().unwrap().push(body_bytes.to_vec());
            let id = fake.next_message.fetch_add(1, Ordering::SeqCst) + 1000;
            ok(json!({
                "message_id": id, "date": 1_700_000_000, "chat": chat_json(42), "from": bot_user(),
                "voice": {"file_id": "v", "file_unique_id": "vu", "duration": 1}
            }))
        }
        "getUpdates" => {
            let offset = body["offset"].as_i64().unwrap_or(0);
            let pending: Vec<Value> = {
                let mut u = fake.updates.lock().unwrap();
                u.retain(|x| x["update_id"].as_i64().unwrap() >= offset);
                u.clone()
            };
            if pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ok(Value::Array(pending))
        }
        "sendMessage" | "editMessageText" => {
            let edit = method == "editMessageText";
            if edit
                && fake
                    .edits_429
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                status = 429;
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({"ok": false, "error_code": 429,
                        "description": "Too Many Requests: retry after 1",
                        "parameters": {"retry_after": 1}})),
                )
                    .into_response()
            } else if fake.refuse_sends.load(Ordering::SeqCst) {
                status = 400;
                (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"ok": false, "error_code": 400,
                        "description": "Bad Request: chat not found"})),
                )
                    .into_response()
            } else if body["parse_mode"] == "HTML" && fake.reject_html.load(Ordering::SeqCst) {
                status = 400;
                (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"ok": false, "error_code": 400,
                        "description": "Bad Request: can't parse entities: Unsupported start tag \"x\" at byte offset 0"})),
                )
                    .into_response()
            } else {
                let chat = body["chat_id"].as_i64().unwrap();
                let id = if edit {
                    body["message_id"].as_i64().unwrap()
                } else {
                    fake.next_message.fetch_add(1, Ordering::SeqCst) + 1000
                };
                let mut m = json!({
                    "message_id": id, "date": 1_700_000_000, "chat": chat_json(chat),
                    "from": bot_user(), "text": body["text"]
                });
                if edit {
                    m["edit_date"] = json!(1_700_000_001);
                }
                ok(m)
            }
        }
        other => panic!("unexpected Bot API method {other}"),
    };
    fake.calls.lock().unwrap().push(Call {
        method,
        body,
        at: Instant::now(),
        status,
    });
    response
}

/// A streaming OpenAI-compatible endpoint answering `llm_answer` in 200-char chunks.
async fn fake_llm(State(fake): State<Arc<Fake>>, body: Bytes) -> Response {
    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
        fake.llm_requests.lock().unwrap().push(v);
    }
    let delay = fake.llm_delay_ms.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
    let answer = fake.llm_answer.lock().unwrap().clone();
    let chars: Vec<char> = answer.chars().collect();
    let mut sse = String::new();
    for chunk in chars.chunks(200) {
        let piece: String = chunk.iter().collect();
        let c = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
        sse.push_str(&format!("data: {c}\n\n"));
    }
    let end = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 100, "total_tokens": 110}});
    sse.push_str(&format!("data: {end}\n\ndata: [DONE]\n\n"));
    ([("content-type", "text/event-stream")], sse).into_response()
}

/// A download through the Bot API's file URL: the voice note, or the picture.
async fn file_download(
    State(fake): State<Arc<Fake>>,
    Path((_bot, path)): Path<(String, String)>,
) -> Vec<u8> {
    fake.downloads.fetch_add(1, Ordering::SeqCst);
    if path.starts_with("voice/") {
        fake.voice.lock().unwrap().clone()
    } else {
        PNG.to_vec()
    }
}

/// `/v1/audio/transcriptions`: records the upload, hears "what is the weather".
async fn fake_transcribe(
    State(fake): State<Arc<Fake>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    fake.transcriptions
        .lock()
        .unwrap()
        .push((content_type, body.to_vec()));
    Json(json!({"text": "what is the weather"})).into_response()
}

/// `/v1/audio/speech`: records the request, answers [`SPOKEN_OGG`] (or 503 when down).
async fn fake_speech(State(fake): State<Arc<Fake>>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    fake.speech_requests.lock().unwrap().push(v);
    if fake.speech_down.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"message": "down", "type": "server_error", "code": null}})),
        )
            .into_response();
    }
    ([("content-type", "audio/ogg")], SPOKEN_OGG).into_response()
}

struct Harness {
    fake: Arc<Fake>,
    daemon: String,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start(extra_bot: &str, llm: Option<&str>) -> Harness {
    let fake = Arc::new(Fake::default());
    if let Some(a) = llm {
        *fake.llm_answer.lock().unwrap() = a.to_owned();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_url = format!("http://{}", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route("/v1/chat/completions", post(fake_llm))
        .route(
            "/v1/images/generations",
            post(|| async {
                Json(json!({"created": 1, "data": [{"url": "https://img.example/drawn.png"}]}))
            }),
        )
        .route("/v1/audio/transcriptions", post(fake_transcribe))
        .route("/v1/audio/speech", post(fake_speech))
        .route("/file/{bot}/{*path}", axum::routing::get(file_download))
        .route("/{bot}/{method}", post(bot_api))
        .with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let llm_cfg = if llm.is_some() {
        format!("base_url = \"{fake_url}/v1\"\napi_keys = [\"sk-test\"]\nmodel = \"m\"\n")
    } else {
        "provider = \"demo\"\ndemo_piece_delay_ms = 30\n".to_owned()
    };
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"test-admin-token-0123456789\"\n\
         shutdown_grace_secs = 2\n[storage]\npath = \"{}\"\n[quota]\nfree_daily = 100\n\
         [llm]\n{llm_cfg}\n[[telegram]]\nid = \"main\"\ntoken = \"123:ABC\"\n\
         api_url = \"{fake_url}\"\nedit_interval_ms = 100\n{extra_bot}",
        dir.path().display()
    );
    let (config, _): (Config, _) = config::parse(&text, &[], None).unwrap();
    let app = App::build(config, None).await.unwrap();
    let daemon = format!("http://{}", app.local_addr().unwrap());
    let shutdown = app.shutdown_token();
    let task = tokio::spawn(app.serve());
    Harness {
        fake,
        daemon,
        shutdown,
        task,
        _dir: dir,
    }
}

impl Harness {
    fn push(&self, update: Value) {
        self.fake.updates.lock().unwrap().push(update);
    }

    fn calls(&self) -> Vec<Call> {
        self.fake.calls.lock().unwrap().clone()
    }

    /// Waits until a successful HTML (final) message reaches `chat`; returns all calls.
    async fn wait_final(&self, chat: i64) -> Vec<Call> {
        self.wait(|c| c.iter().any(|c| c.chat() == chat && c.ok() && is_final(c)))
            .await
    }

    async fn wait(&self, done: impl Fn(&[Call]) -> bool) -> Vec<Call> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let calls = self.calls();
            if done(&calls) {
                // Let trailing calls (further parts) land.
                tokio::time::sleep(Duration::from_millis(400)).await;
                return self.calls();
            }
            assert!(Instant::now() < deadline, "timed out; calls: {calls:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("daemon stops")
            .unwrap()
            .unwrap();
    }
}

/// A final message: HTML (or the plain-text fallback, marked by a preceding rejection).
fn is_final(c: &Call) -> bool {
    c.html() && matches!(c.method.as_str(), "sendMessage" | "editMessageText")
}

fn message(update_id: i64, chat: i64, message_id: i64, text: &str) -> Value {
    json!({
        "update_id": update_id,
        "message": {
            "message_id": message_id, "date": 1_700_000_000, "chat": chat_json(chat),
            "from": {"id": 4242, "is_bot": false, "first_name": "Ann", "language_code": "en"},
            "text": text
        }
    })
}

fn demo(question: &str) -> String {
    chatrelay::engine::llm::demo_answer(question)
}

fn chat_calls(calls: &[Call], chat: i64, method: &str) -> Vec<Call> {
    calls
        .iter()
        .filter(|c| c.chat() == chat && c.method == method)
        .cloned()
        .collect()
}

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
