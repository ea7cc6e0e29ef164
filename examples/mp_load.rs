//! Load generator for the Official Account callback, used by `scripts/bench/mp_throughput.sh`.
//!
//! `mp_load hello LISTEN` serves a bare axum hello-world (the baseline).
//! `mp_load upstream LISTEN` serves a fake OpenAI-compatible `/v1/chat/completions` that answers
//! at once, the whole response (headers and body, streamed or not as asked) in one write on a
//! socket with `TCP_NODELAY`: an instant model, so that what is measured is the daemon. Its
//! answer repeats the question (`答：<question>`), which the `mp` mode checks.
//! `mp_load get URL N CONCURRENCY` loads a plain GET URL.
//! `mp_load mp URL TOKEN AES_KEY APP_ID N CONCURRENCY [USERS]` sends N distinct safe-mode
//! text messages (encrypted and signed like WeChat, prepared before the clock starts) from
//! `USERS` followers (default: a new follower per message) and checks every reply is an
//! encrypted passive reply whose decrypted text repeats its own question (as the `upstream`
//! mode answers); `MP_CHECK=encrypted` only checks that the reply is encrypted (another LLM).
//!
//! `URL` may be several, separated by commas (daemons sharing one database): request `i`
//! goes to the `i mod count`-th, round-robin, so a follower's messages land on every daemon.
//!
//! Prints one line: `requests=N ok=N secs=S rps=R p50_ms=A p99_ms=B max_ms=C`, and with
//! several URLs one more per URL: `target=URL requests=N ok=N`.
//!
//! With `MP_RATE=R` (requests per second) the requests go out at that steady rate instead of
//! back to back (at most CONCURRENCY in flight), and each latency counts from when its request
//! was due, so a stall shows in full even when the client falls behind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatrelay_wechat::{AesKey, encrypt_message, sha1_signature};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> anyhow::Result<&str> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| anyhow::anyhow!("missing argument {i}"))
    };
    match arg(0)? {
        "hello" => {
            let listener = tokio::net::TcpListener::bind(arg(1)?).await?;
            let app =
                axum::Router::new().route("/", axum::routing::get(|| async { "Hello, World!" }));
            axum::serve(listener, app).await?;
            Ok(())
        }
        "upstream" => upstream(arg(1)?).await,
        "get" => {
            let urls = targets(arg(1)?)?;
            let n: usize = arg(2)?.parse()?;
            let c: usize = arg(3)?.parse()?;
            let requests: Vec<Request> = (0..n)
                .map(|i| {
                    let target = i % urls.len();
                    (target, urls[target].clone(), Vec::new(), String::new())
                })
                .collect();
            run(&urls, requests, c, None).await
        }
        "mp" => {
            let urls = targets(arg(1)?)?;
            let (token, aes, app_id) = (arg(2)?, arg(3)?, arg(4)?);
            let n: usize = arg(5)?.parse()?;
            let c: usize = arg(6)?.parse()?;
            let users: usize = args.get(7).map_or(Ok(n), |u| u.parse())?.max(1);
            let key = AesKey::from_encoding_aes_key(aes).map_err(|e| anyhow::anyhow!("{e}"))?;
            let ts = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs())
            .to_string();
            let run_id = std::process::id();
            let requests = (0..n)
                .map(|i| {
                    let nonce = format!("n{run_id}x{i}");
                    let xml = format!(
                        "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[o_bench_{run_id}_{}]]></FromUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好，这是第 {i} 条压测消息]]></Content><MsgId>{}</MsgId></xml>",
                        i % users,
                        u64::from(run_id) * 10_000_000 + i as u64
                    );
                    let mut random = [0u8; 16];
                    random[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    let encrypt = encrypt_message(&key, xml.as_bytes(), app_id, random);
                    let signature = sha1_signature(&[token, &ts, &nonce]);
                    let msg_signature = sha1_signature(&[token, &ts, &nonce, &encrypt]);
                    let body = format!("<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>");
                    let target = i % urls.len();
                    let url = &urls[target];
                    let full = format!(
                        "{url}?signature={signature}&timestamp={ts}&nonce={nonce}&openid=o_bench_{run_id}_{}&encrypt_type=aes&msg_signature={msg_signature}",
                        i % users
                    );
                    (target, full, body.into_bytes(), format!("第 {i} 条压测消息"))
                })
                .collect();
            let check = if std::env::var("MP_CHECK").is_ok_and(|v| v == "encrypted") {
                Check::Encrypted
            } else {
                Check::Answer {
                    key,
                    app_id: app_id.to_owned(),
                }
            };
            run(&urls, requests, c, Some(check)).await
        }
        other => anyhow::bail!("unknown mode {other}"),
    }
}

/// A request: the index of its target, its full URL, its body, and what its reply must say
/// (the `mp` mode).
type Request = (usize, String, Vec<u8>, String);

/// How the replies of the `mp` mode are checked.
enum Check {
    /// An encrypted passive reply, whatever it says.
    Encrypted,
    /// An encrypted passive reply that decrypts (with `key`, for `app_id`) to a text message
    /// containing the request's expected text.
    Answer { key: AesKey, app_id: String },
}

impl Check {
    fn accepts(&self, reply: &str, expected: &str) -> bool {
        let Some(encrypt) = between(reply, "<Encrypt><![CDATA[", "]]></Encrypt>") else {
            return false;
        };
        match self {
            Check::Encrypted => true,
            Check::Answer { key, app_id } => {
                let Ok(plain) = chatrelay_wechat::decrypt_message(key, encrypt, app_id) else {
                    return false;
                };
                let plain = String::from_utf8_lossy(&plain);
                between(&plain, "<Content><![CDATA[", "]]></Content>")
                    .is_some_and(|text| text.contains(expected))
            }
        }
    }
}

/// The text between `start` and the next `end`.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text.get(from..)?.find(end)?;
    text.get(from..from + len)
}

/// The fake upstream: HTTP/1.1 keep-alive, one write per response, `TCP_NODELAY`.
async fn upstream(listen: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (sock, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = serve_upstream(sock).await;
        });
    }
}

async fn serve_upstream(mut sock: tokio::net::TcpStream) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    sock.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        // The head, then the body by its Content-Length.
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 8192];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: serde_json::Value =
            serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or_default();
        buf.drain(..head_end + length);
        let question = body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or("");
        let answer = serde_json::Value::String(format!("答：{question}")).to_string();
        let usage = r#"{"prompt_tokens":20,"completion_tokens":20,"total_tokens":40}"#;
        let (content_type, payload) = if body["stream"].as_bool() == Some(true) {
            (
                "text/event-stream",
                format!(
                    "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":{answer}}},\"finish_reason\":null}}]}}\n\n\
                     data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}],\"usage\":{usage}}}\n\n\
                     data: [DONE]\n\n"
                ),
            )
        } else {
            (
                "application/json",
                format!(
                    "{{\"id\":\"c\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":{answer}}},\"finish_reason\":\"stop\"}}],\"usage\":{usage}}}"
                ),
            )
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n{payload}",
            payload.len()
        );
        sock.write_all(response.as_bytes()).await?;
    }
}

/// The comma-separated target URLs.
fn targets(arg: &str) -> anyhow::Result<Vec<String>> {
    let urls: Vec<String> = arg
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(!urls.is_empty(), "no target URL");
    Ok(urls)
}

async fn run(
    urls: &[String],
    requests: Vec<Request>,
    concurrency: usize,
    check: Option<Check>,
) -> anyhow::Result<()> {
    let check = Arc::new(check);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let n = requests.len();
    let targets = urls.len();
    let rate: Option<f64> = std::env::var("MP_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r: &f64| *r > 0.0);
    let queue = Arc::new(std::sync::Mutex::new(requests.into_iter().enumerate()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let queue = queue.clone();
        let client = client.clone();
        let check = check.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut ok = 0usize;
            // Per target: requests sent, replies that were right.
            let mut per_target: Vec<(usize, usize)> = vec![(0, 0); targets];
            loop {
                let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
                let Some((i, (target, url, body, expected))) = next else {
                    break;
                };
                per_target[target].0 += 1;
                let t = match rate {
                    Some(rate) => {
                        let due = started + Duration::from_secs_f64(i as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                let res = if check.is_some() {
                    client.post(&url).body(body).send().await
                } else {
                    client.get(&url).send().await
                };
                if let Ok(r) = res {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    let right = match check.as_ref() {
                        None => true,
                        Some(check) => check.accepts(&text, &expected),
                    };
                    if status.is_success() && right {
                        ok += 1;
                        per_target[target].1 += 1;
                    }
                }
                latencies.push(t.elapsed());
            }
            (ok, latencies, per_target)
        }));
    }
    let mut ok = 0;
    let mut all: Vec<Duration> = Vec::with_capacity(n);
    let mut by_target = vec![(0usize, 0usize); targets];
    for t in tasks {
        let (o, l, per) = t.await?;
        ok += o;
        all.extend(l);
        for (sum, (sent, good)) in by_target.iter_mut().zip(per) {
            sum.0 += sent;
            sum.1 += good;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "requests={n} ok={ok} secs={secs:.2} rps={:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        n as f64 / secs,
        pct(0.50),
        pct(0.99),
        all.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    if targets > 1 {
        for (url, (sent, good)) in urls.iter().zip(by_target) {
            println!("target={url} requests={sent} ok={good}");
        }
    }
    Ok(())
}
