//! Load generator for many concurrent `/v1/chat/completions` streams, used by
//! `scripts/bench/streams.sh`.
//!
//! `stream_load upstream LISTEN TOKENS INTERVAL_MS` serves a fake OpenAI-compatible upstream
//! that streams `TOKENS` tokens per answer, the first at once and then one every
//! `INTERVAL_MS` (a model writing at a fixed rate). `stream_load upstream-h2 ...` serves the
//! same over HTTP/2 without TLS (h2c, prior knowledge), many streams per connection.
//!
//! `stream_load streams URL BEARER N` opens `N` streaming requests against `URL` (a
//! `/v1/chat/completions`, at most 512 connecting at a time) and, once all are open, sends
//! 200 more one after the other as probes; every stream is read to its end. Prints one line:
//! `streams=N ok=N ramp_secs=R secs=S ttfb_p50_ms=A ttfb_p99_ms=B`, where TTFB is the
//! probes' time from sending the request to the first content token, measured while the `N`
//! streams are held open.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> anyhow::Result<&str> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| anyhow::anyhow!("missing argument {i}"))
    };
    match arg(0)? {
        mode @ ("upstream" | "upstream-h2") => {
            let listener = tokio::net::TcpListener::bind(arg(1)?).await?;
            let tokens: usize = arg(2)?.parse()?;
            let interval = Duration::from_millis(arg(3)?.parse()?);
            let app = axum::Router::new().route(
                "/v1/chat/completions",
                axum::routing::post(move || answer(tokens, interval)),
            );
            if mode == "upstream" {
                axum::serve(listener, app).await?;
                return Ok(());
            }
            loop {
                let (tcp, _) = listener.accept().await?;
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                tokio::spawn(async move {
                    let mut h2 = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    h2.max_concurrent_streams(1_000_000);
                    let _ = h2
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        }
        "streams" => {
            let url = arg(1)?.to_owned();
            let bearer = arg(2)?.to_owned();
            let n: usize = arg(3)?.parse()?;
            streams(url, bearer, n).await
        }
        other => anyhow::bail!("unknown mode {other}"),
    }
}

/// One streamed answer: `tokens` chunks, the first at once, then one per `interval`.
async fn answer(tokens: usize, interval: Duration) -> axum::response::Response {
    let chunk = |content: &str| {
        format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"finish_reason\":null}}]}}\n\n"
        )
    };
    let body = futures_util::stream::unfold(0usize, move |i| async move {
        if i > tokens {
            return None;
        }
        if i == tokens {
            let end = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":10,\"total_tokens\":20}}\n\ndata: [DONE]\n\n";
            return Some((Ok::<_, std::io::Error>(end.to_owned()), i + 1));
        }
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        Some((Ok(chunk(&format!("tok{i} "))), i + 1))
    });
    (
        [("content-type", "text/event-stream")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// Sequential requests timed while the streams are held.
const PROBES: usize = 200;

async fn streams(url: String, bearer: String, n: usize) -> anyhow::Result<()> {
    // STREAM_LOAD_H2=1: HTTP/2 without TLS (against `upstream-h2` directly).
    let mut client = reqwest::Client::builder();
    if std::env::var("STREAM_LOAD_H2").is_ok_and(|v| v == "1") {
        client = client.http2_prior_knowledge();
    }
    let client = client
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(600))
        .build()?;
    let body = serde_json::json!({
        "model": "bench",
        "stream": true,
        "messages": [{"role": "user", "content": "stream for a while"}],
    })
    .to_string();
    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(512));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (client, url, bearer, body, gate) = (
            client.clone(),
            url.clone(),
            bearer.clone(),
            body.clone(),
            gate.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // At most 512 connections being opened at once (the listen backlog), then held.
            let mut permit = gate.acquire_owned().await.ok();
            let t = Instant::now();
            let res = client
                .post(&url)
                .bearer_auth(&bearer)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .ok()?;
            if !res.status().is_success() {
                return None;
            }
            let mut stream = res.bytes_stream();
            let mut ttfb = None;
            let mut seen = Vec::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.ok()?;
                if ttfb.is_none() {
                    seen.extend_from_slice(&chunk);
                    if seen.windows(3).any(|w| w == b"tok") {
                        ttfb = Some(t.elapsed());
                        // Held from here on: let the next one connect.
                        drop(permit.take());
                        seen = Vec::new();
                    }
                }
            }
            drop(permit);
            ttfb
        }));
    }
    // Wait until every stream is open (its first token arrived), then probe.
    while gate.available_permits() < 512 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ramp = started.elapsed().as_secs_f64();
    let mut ttfbs = Vec::with_capacity(PROBES);
    for _ in 0..PROBES {
        let t = Instant::now();
        let res = client
            .post(&url)
            .bearer_auth(&bearer)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        let mut stream = res.bytes_stream();
        let mut seen = Vec::new();
        while let Some(chunk) = stream.next().await {
            seen.extend_from_slice(&chunk?);
            if seen.windows(3).any(|w| w == b"tok") {
                ttfbs.push(t.elapsed());
                break;
            }
        }
    }
    let mut ok = 0;
    for t in tasks {
        if let Ok(Some(_)) = t.await {
            ok += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    ttfbs.sort();
    let pct = |p: f64| {
        ttfbs
            .get(((ttfbs.len() as f64 * p) as usize).min(ttfbs.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "streams={n} ok={ok} ramp_secs={ramp:.2} secs={secs:.2} ttfb_p50_ms={:.2} ttfb_p99_ms={:.2}",
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}
