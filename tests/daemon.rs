//! The daemon in-process on 127.0.0.1:0 with the demo LLM: admin API, metered `/v1`, health,
//! metrics, and a shutdown that ends open streams.

use std::time::Duration;

use chatrelay::app::App;
use chatrelay::config::{self, Config};
use futures_util::StreamExt;
use serde_json::{Value, json};

const ADMIN: &str = "test-admin-token-0123456789";

struct Running {
    url: String,
    client: reqwest::Client,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start(extra: &str) -> Running {
    start_from_file(extra, false).await
}

fn config_text(dir: &std::path::Path, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN}\"\nshutdown_grace_secs = 2\n\
         [storage]\npath = \"{}\"\n[quota]\nfree_daily = 0\n{extra}",
        dir.display()
    )
}

/// Starts the daemon; with `from_file` its configuration is a file in the data directory
/// (`config.toml`), which a reload reads again.
async fn start_from_file(extra: &str, from_file: bool) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), extra);
    let source = from_file.then(|| dir.path().join("config.toml"));
    if let Some(path) = &source {
        std::fs::write(path, &text).unwrap();
    }
    let (config, _): (Config, _) = config::parse(&text, &[], source.as_deref()).unwrap();
    let app = App::build(config, source).await.unwrap();
    let url = format!("http://{}", app.local_addr().unwrap());
    let shutdown = app.shutdown_token();
    let task = tokio::spawn(app.serve());
    Running {
        url,
        client: reqwest::Client::new(),
        shutdown,
        task,
        _dir: dir,
    }
}

impl Running {
    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let res = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn user_with_token(&self, credits: u64) -> (u64, String) {
        let (s, user) = self
            .admin(reqwest::Method::POST, "/admin/users", json!({"name": "t"}))
            .await;
        assert_eq!(s, 201);
        let uid = user["uid"].as_u64().unwrap();
        if credits > 0 {
            let (s, _) = self
                .admin(
                    reqwest::Method::POST,
                    &format!("/admin/users/{uid}/grant"),
                    json!({"credits": credits, "reason": "test", "reference": format!("g-{uid}")}),
                )
                .await;
            assert_eq!(s, 200);
        }
        let (s, t) = self
            .admin(
                reqwest::Method::POST,
                &format!("/admin/users/{uid}/tokens"),
                json!({}),
            )
            .await;
        assert_eq!(s, 200);
        (uid, t["token"].as_str().unwrap().to_owned())
    }

    async fn paid(&self, uid: u64) -> u64 {
        let (_, v) = self
            .admin(
                reqwest::Method::GET,
                &format!("/admin/users/{uid}"),
                Value::Null,
            )
            .await;
        v["balance"]["paid"].as_u64().unwrap()
    }

    async fn web_title(&self) -> String {
        let v: Value = self
            .client
            .get(format!("{}/api/config", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["title"].as_str().unwrap().to_owned()
    }

    fn chat(&self, token: &str, body: Value) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth(token)
            .json(&body)
    }
}

#[tokio::test]
async fn reload_applies_a_good_file_and_refuses_a_bad_one() {
    let d = start_from_file("[web]\ntitle = \"One\"\n", true).await;
    let path = d._dir.path().join("config.toml");
    assert_eq!(d.web_title().await, "One");

    std::fs::write(
        &path,
        config_text(d._dir.path(), "[web]\ntitle = \"Two\"\n"),
    )
    .unwrap();
    let (s, report) = d
        .admin(reqwest::Method::POST, "/admin/reload", Value::Null)
        .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["applied"], json!(["web"]));
    assert_eq!(d.web_title().await, "Two");

    std::fs::write(
        &path,
        config_text(d._dir.path(), "[web]\ntitle = \"Three\"\nunknown_key = 1\n"),
    )
    .unwrap();
    let (s, refused) = d
        .admin(reqwest::Method::POST, "/admin/reload", Value::Null)
        .await;
    assert_eq!(s, 422, "{refused}");
    assert!(
        refused["problems"][0]
            .as_str()
            .unwrap()
            .contains("web.unknown_key"),
        "{refused}"
    );
    assert_eq!(
        d.web_title().await,
        "Two",
        "the running configuration stays"
    );
    d.shutdown.cancel();
    d.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn demo_answers_are_metered_and_idempotent_grants() {
    let d = start("").await;
    let (uid, token) = d.user_with_token(5).await;
    // The same grant reference twice grants once.
    let (s, _) = d
        .admin(
            reqwest::Method::POST,
            &format!("/admin/users/{uid}/grant"),
            json!({"credits": 5, "reason": "test", "reference": format!("g-{uid}")}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(d.paid(uid).await, 5);

    let res = d
        .chat(
            &token,
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "你好"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("演示") && text.contains("你好"), "{text}");
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(d.paid(uid).await, 4);

    // Streaming: role chunk, content chunks, finish chunk, usage chunk, [DONE].
    let res = d
        .chat(
            &token,
            json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "stream please"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let raw = res.text().await.unwrap();
    let datas: Vec<&str> = raw
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(datas.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = datas[..datas.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(content.contains("stream please"), "{content}");
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert!(usage_chunk["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(d.paid(uid).await, 3);

    let (_, audit) = d
        .admin(reqwest::Method::GET, "/admin/audit", Value::Null)
        .await;
    assert_eq!(audit["mismatches"], json!([]), "{audit}");

    d.shutdown.cancel();
    d.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn errors_are_openai_shaped() {
    let d = start("").await;
    let (uid, token) = d.user_with_token(0).await;
    // No credits.
    let res = d
        .chat(
            &token,
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["x-should-retry"], "false");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("额度不足")
    );
    // Unknown model, bad JSON, forged token.
    let res = d
        .chat(
            &token,
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = d
        .client
        .post(format!("{}/v1/chat/completions", d.url))
        .bearer_auth(&token)
        .body("{\"model\":")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["type"],
        "invalid_request_error"
    );
    let res = d
        .chat(
            "sk-cr-forged",
            json!({"model": "gpt-4o-mini", "messages": []}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // Banned users are refused. A ban needs a reason.
    let (s, _) = d
        .admin(
            reqwest::Method::POST,
            &format!("/admin/users/{uid}/ban"),
            json!({"banned": true}),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = d
        .admin(
            reqwest::Method::POST,
            &format!("/admin/users/{uid}/ban"),
            json!({"banned": true, "reason": "test"}),
        )
        .await;
    assert_eq!(s, 200);
    let res = d
        .chat(
            &token,
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // The admin API wants its token.
    let res = d
        .client
        .post(format!("{}/admin/users", d.url))
        .bearer_auth("wrong")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = d
        .client
        .get(format!("{}/admin/users/1", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    d.shutdown.cancel();
    d.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn health_metrics_and_a_bounded_shutdown_with_an_open_stream() {
    let d = start("").await;
    let health: Value = d
        .client
        .get(format!("{}/healthz", d.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready = d
        .client
        .get(format!("{}/readyz", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert!(ready.headers().contains_key("x-request-id"));

    let (_, token) = d.user_with_token(10).await;
    let res = d
        .chat(
            &token,
            json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .unwrap();
    let mut body = res.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("assistant"));

    let metrics = d
        .client
        .get(format!("{}/metrics", d.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("chatrelay_active_streams"), "{metrics}");

    let started = tokio::time::Instant::now();
    d.shutdown.cancel();
    // The stream ends (with an error event or its natural end) and the server stops in time.
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        let mut all = Vec::new();
        while let Some(Ok(b)) = body.next().await {
            all.extend_from_slice(&b);
        }
        all
    })
    .await
    .expect("the stream ended");
    let rest = String::from_utf8_lossy(&rest);
    // Either the answer completed, or the stream ended with an OpenAI-shaped error event
    // (from the HTTP layer or from the engine, whichever saw the shutdown first).
    let last = rest
        .lines()
        .rev()
        .find(|l| l.starts_with("data: "))
        .unwrap_or_default();
    assert!(
        last == "data: [DONE]" || last.starts_with("data: {\"error\""),
        "{rest}"
    );
    tokio::time::timeout(Duration::from_secs(5), d.task)
        .await
        .expect("serve returned within the grace period")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}
