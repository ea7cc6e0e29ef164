//! Load generator for the Official Account callback, used by `scripts/bench/mp_throughput.sh`.
//!
//! `mp_load hello LISTEN` serves a bare axum hello-world (the baseline).
//! `mp_load get URL N CONCURRENCY` loads a plain GET URL.
//! `mp_load mp URL TOKEN AES_KEY APP_ID N CONCURRENCY [USERS]` sends N distinct safe-mode
//! text messages (encrypted and signed like WeChat, prepared before the clock starts) from
//! `USERS` followers (default: a new follower per message) and checks every reply is an
//! encrypted passive reply.
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
        "get" => {
            let urls = targets(arg(1)?)?;
            let n: usize = arg(2)?.parse()?;
            let c: usize = arg(3)?.parse()?;
            let requests: Vec<Request> = (0..n)
                .map(|i| (i % urls.len(), urls[i % urls.len()].clone(), Vec::new()))
                .collect();
            run(&urls, requests, c, false).await
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
                    (target, full, body.into_bytes())
                })
                .collect();
            run(&urls, requests, c, true).await
        }
        other => anyhow::bail!("unknown mode {other}"),
    }
}

/// A request: the index of its target, its full URL and its body.
type Request = (usize, String, Vec<u8>);

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
    post: bool,
) -> anyhow::Result<()> {
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
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut ok = 0usize;
            // Per target: requests sent, replies that were right.
            let mut per_target: Vec<(usize, usize)> = vec![(0, 0); targets];
            loop {
                let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
                let Some((i, (target, url, body))) = next else {
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
                let res = if post {
                    client.post(&url).body(body).send().await
                } else {
                    client.get(&url).send().await
                };
                if let Ok(r) = res {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    if status.is_success() && (!post || text.contains("<Encrypt>")) {
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
