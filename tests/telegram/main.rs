//! The Telegram connector against a fake Bot API (axum on 127.0.0.1:0) that records every
//! call, with the daemon in-process: streaming edits, 429s, HTML fallback, long answers,
//! webhook secrets, group mentions, and voice notes (a fake transcription endpoint).
//!
//! This file is the harness (the fake Bot API, LLM, transcription and speech endpoints, and
//! the daemon started against them); `chat.rs` has the chat tests, `voice.rs` the voice ones.

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

mod chat;
mod voice;
