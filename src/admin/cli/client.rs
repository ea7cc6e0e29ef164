//! The admin CLI's HTTP client: where the daemon is, how to reach it, and what its answers
//! become (an error status is an error with the API's message, in one place).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::commands::{Answer, Call};
use super::render::text;
use crate::config::Config;

/// Where the daemon's admin API is and how to authenticate.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// The admin token.
    pub token: String,
}

/// Finds the daemon: `--url`/`--token` first, then `server.listen` and `server.admin_token`
/// (or the generated token in the data directory) from the configuration.
pub fn target(
    config: &Config,
    url: Option<String>,
    token: Option<String>,
) -> anyhow::Result<Target> {
    let url = match url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => {
            let listen = &config.server.listen;
            let host_port = listen
                .replace("0.0.0.0:", "127.0.0.1:")
                .replace("[::]:", "[::1]:");
            format!("http://{host_port}")
        }
    };
    let token = match token {
        Some(t) => t,
        None => match &config.server.admin_token {
            Some(t) => t.expose().to_owned(),
            None => {
                let path = crate::app::admin_token_path(config);
                std::fs::read_to_string(&path)
                    .map(|t| t.trim().to_owned())
                    .with_context(|| {
                        format!(
                            "no admin token: set server.admin_token, pass --token, or run the daemon once so it writes {}",
                            path.display()
                        )
                    })?
            }
        },
    };
    Ok(Target { url, token })
}

/// The admin API, as the CLI calls it.
pub struct Api {
    client: reqwest::Client,
    target: Target,
}

impl Api {
    /// A client for `target`.
    pub fn new(target: &Target) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            client,
            target: target.clone(),
        })
    }

    /// Makes `call`; the answer to print, `None` when it went to stdout already (a CSV).
    pub async fn execute(&self, call: Call) -> anyhow::Result<Option<Value>> {
        let Call {
            method,
            path,
            body,
            answer,
        } = call;
        match answer {
            Answer::Json => {
                let (status, text) = self.send(method, &path, body).await?;
                check(status, &text)?;
                Ok(Some(
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                ))
            }
            Answer::Problems => self.problems(method, &path).await.map(Some),
            Answer::Csv(file) => {
                let (status, csv) = self.send(method, &path, body).await?;
                check(status, &csv)?;
                save_csv(&file, &csv)
            }
            Answer::Download(file) => {
                let summary = self.download(&path, &file).await?;
                Ok(Some(json!({"file": file, "summary": summary})))
            }
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, String)> {
        let url = format!("{}{path}", self.target.url);
        let mut req = self
            .client
            .request(method, &url)
            .bearer_auth(&self.target.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the daemon at {}: {e} (is `chatrelay run` running? use --url otherwise)",
                self.target.url
            )
        })?;
        let status = res.status();
        // Bytes, not `text()`: that one drops a BOM, which the CSV export keeps on purpose.
        let body = res.bytes().await.unwrap_or_default();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// A call whose error answers list problems (reload): those become the error.
    async fn problems(&self, method: Method, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.send(method, path, None).await?;
        let v = match serde_json::from_str::<Value>(&body) {
            Ok(v) if v.is_object() => v,
            _ if status.is_success() => Value::String(body),
            _ => bail!("{status}: {body}"),
        };
        if let Some(problems) = v.get("problems").and_then(Value::as_array) {
            let list: Vec<String> = problems
                .iter()
                .map(|p| format!("  - {}", text(p)))
                .collect();
            bail!("{}:\n{}", text(&v["error"]), list.join("\n"));
        }
        Ok(v)
    }

    /// Downloads a backup into `file` (written to a temporary name, renamed when complete).
    async fn download(&self, path: &str, file: &Path) -> anyhow::Result<String> {
        use futures_util::StreamExt;
        use std::io::Write;
        if file.exists() {
            bail!("{} exists; choose another file", file.display());
        }
        let res = self
            .client
            .get(format!("{}{path}", self.target.url))
            .bearer_auth(&self.target.token)
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach the daemon at {}: {e}", self.target.url))?;
        if !res.status().is_success() {
            let status = res.status();
            bail!("{status}: {}", res.text().await.unwrap_or_default());
        }
        let records = res
            .headers()
            .get("x-backup-records")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_owned();
        let partial = file.with_extension("partial");
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&partial)
                .with_context(|| format!("creating {}", partial.display()))?,
        );
        let mut bytes = 0u64;
        let mut stream = res.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("the backup download was interrupted")?;
            bytes += chunk.len() as u64;
            out.write_all(&chunk).context("writing the backup")?;
        }
        out.flush().context("writing the backup")?;
        out.get_ref().sync_all().context("writing the backup")?;
        std::fs::rename(&partial, file)
            .with_context(|| format!("renaming to {}", file.display()))?;
        Ok(format!(
            "backup written to {}: {records} records, {bytes} bytes",
            file.display()
        ))
    }
}

/// An error status becomes an error with the API's message (its `error`, else the body).
fn check(status: StatusCode, text: &str) -> anyhow::Result<()> {
    if status.is_success() {
        return Ok(());
    }
    let msg = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| text.to_owned());
    bail!("{status}: {msg}");
}

/// Writes an order export to `file` (`-`: stdout, and `None`: nothing more to print); never
/// over an existing file.
fn save_csv(file: &str, csv: &str) -> anyhow::Result<Option<Value>> {
    let rows = csv.lines().count().saturating_sub(1);
    if file == "-" {
        let mut stdout = std::io::stdout().lock();
        std::io::Write::write_all(&mut stdout, csv.as_bytes()).context("writing to stdout")?;
        return Ok(None);
    }
    let path = Path::new(file);
    if path.exists() {
        bail!("{file} exists; choose another file");
    }
    std::fs::write(path, csv.as_bytes()).with_context(|| format!("writing {file}"))?;
    Ok(Some(json!({"file": file, "orders": rows})))
}
