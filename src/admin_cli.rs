//! The admin CLI: a client of the running daemon's admin API (the daemon holds the
//! database lock, so the CLI never opens the database itself).

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::config::Config;

/// `chatrelay admin ...`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Users: create, show, ban, unban, link an identity.
    #[command(subcommand)]
    User(UserCommand),
    /// Add paid credits to a user (recorded in the ledger with the reason).
    Grant {
        /// The user's uid.
        uid: u64,
        /// Credits to add.
        credits: u64,
        /// Why (kept in the ledger).
        #[arg(long)]
        reason: String,
        /// Idempotency key: the same reference grants once, however often it is sent.
        #[arg(long)]
        reference: Option<String>,
    },
    /// User tokens for the web page and the `/v1` API.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Check that every user's ledger sums to their balance.
    Audit,
    /// Orders: list, show, refund.
    #[command(subcommand)]
    Order(OrderCommand),
    /// zsxq groups: list with their state, pause, resume, replace the token.
    #[command(subcommand)]
    Zsxq(ZsxqCommand),
    /// Save a consistent snapshot of the running daemon's database to FILE.
    Backup {
        /// Where to write the backup (refuses to overwrite an existing file).
        file: std::path::PathBuf,
    },
}

/// `chatrelay admin zsxq ...`
#[derive(Debug, Subcommand)]
pub enum ZsxqCommand {
    /// Every group: last poll, answers today, token expired? (JSON)
    List,
    /// Stop answering a group's questions.
    Pause {
        /// The group's configured id.
        id: String,
    },
    /// Answer a paused group's questions again.
    Resume {
        /// The group's configured id.
        id: String,
    },
    /// Replace a group's access token (after it expired) without a restart.
    Token {
        /// The group's configured id.
        id: String,
        /// The new zsxq_access_token.
        access_token: String,
    },
}

/// `chatrelay admin order ...`
#[derive(Debug, Subcommand)]
pub enum OrderCommand {
    /// List orders, newest first (JSON).
    List {
        /// Only orders in this state: created, credited, closed, refunded.
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show an order with its history (JSON).
    Show {
        /// The order id.
        id: String,
    },
    /// Refund an order in full at its provider and take back its credits (never below zero).
    Refund {
        /// The order id.
        id: String,
        /// Why (kept in the ledger and sent to the provider).
        #[arg(long)]
        reason: String,
    },
}

/// `chatrelay admin user ...`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; prints the uid.
    Create {
        /// Display name.
        #[arg(long)]
        name: String,
    },
    /// Show a user with balance, identities, tokens and recent ledger (JSON).
    Show {
        /// The user's uid.
        uid: u64,
    },
    /// Stop a user from using the service.
    Ban {
        /// The user's uid.
        uid: u64,
    },
    /// Let a banned user back in.
    Unban {
        /// The user's uid.
        uid: u64,
    },
    /// Bind a platform identity (e.g. `mp:main:o6_bm...`) to a user.
    Link {
        /// The user's uid.
        uid: u64,
        /// The identity key.
        key: String,
    },
}

/// `chatrelay admin token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token for a user; prints it (it is shown only once).
    Create {
        /// The user's uid.
        uid: u64,
        /// A label to recognise the token by.
        #[arg(long, default_value = "")]
        label: String,
        /// Lifetime in days (default: until revoked).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// Revoke a token.
    Revoke {
        /// The token.
        token: String,
    },
}

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

/// Runs one admin command and prints its result on stdout.
pub async fn run(target: &Target, command: AdminCommand) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let client = client.clone();
        let target = target.clone();
        async move {
            let url = format!("{}{path}", target.url);
            let mut req = client.request(method, &url).bearer_auth(&target.token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let res = req.send().await.map_err(|e| {
                anyhow!("cannot reach the daemon at {}: {e} (is `chatrelay run` running? use --url otherwise)", target.url)
            })?;
            let status = res.status();
            let text = res.text().await.unwrap_or_default();
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            if !status.is_success() {
                let msg = value
                    .get("error")
                    .and_then(Value::as_str)
                    .map_or_else(|| value.to_string(), str::to_owned);
                bail!("{status}: {msg}");
            }
            Ok::<Value, anyhow::Error>(value)
        }
    };
    use reqwest::Method;
    let out = match command {
        AdminCommand::User(UserCommand::Create { name }) => {
            let v = call(
                Method::POST,
                "/admin/users".into(),
                Some(json!({"name": name})),
            )
            .await?;
            v.get("uid")
                .map(Value::to_string)
                .context("the daemon returned no uid")?
        }
        AdminCommand::User(UserCommand::Show { uid }) => {
            pretty(&call(Method::GET, format!("/admin/users/{uid}"), None).await?)
        }
        AdminCommand::User(UserCommand::Ban { uid }) => pretty(
            &call(
                Method::POST,
                format!("/admin/users/{uid}/ban"),
                Some(json!({"banned": true})),
            )
            .await?,
        ),
        AdminCommand::User(UserCommand::Unban { uid }) => pretty(
            &call(
                Method::POST,
                format!("/admin/users/{uid}/ban"),
                Some(json!({"banned": false})),
            )
            .await?,
        ),
        AdminCommand::User(UserCommand::Link { uid, key }) => pretty(
            &call(
                Method::POST,
                format!("/admin/users/{uid}/identities"),
                Some(json!({"key": key})),
            )
            .await?,
        ),
        AdminCommand::Grant {
            uid,
            credits,
            reason,
            reference,
        } => {
            // One reference per invocation, so the HTTP client's own retries cannot grant twice.
            let reference =
                reference.unwrap_or_else(|| format!("cli:{}", crate::http::v1::random_id()));
            pretty(
                &call(
                    Method::POST,
                    format!("/admin/users/{uid}/grant"),
                    Some(json!({"credits": credits, "reason": reason, "reference": reference})),
                )
                .await?,
            )
        }
        AdminCommand::Token(TokenCommand::Create {
            uid,
            label,
            expires_in_days,
        }) => {
            let v = call(
                Method::POST,
                format!("/admin/users/{uid}/tokens"),
                Some(json!({"label": label, "expires_in_days": expires_in_days})),
            )
            .await?;
            v.get("token")
                .and_then(Value::as_str)
                .context("the daemon returned no token")?
                .to_owned()
        }
        AdminCommand::Token(TokenCommand::Revoke { token }) => {
            call(
                Method::POST,
                "/admin/tokens/revoke".into(),
                Some(json!({"token": token})),
            )
            .await?;
            "revoked".to_owned()
        }
        AdminCommand::Audit => pretty(&call(Method::GET, "/admin/audit".into(), None).await?),
        AdminCommand::Backup { file } => backup(&client, target, &file).await?,
        AdminCommand::Zsxq(ZsxqCommand::List) => {
            pretty(&call(Method::GET, "/admin/zsxq".into(), None).await?)
        }
        AdminCommand::Zsxq(ZsxqCommand::Pause { id }) => {
            pretty(&call(Method::POST, format!("/admin/zsxq/{id}/pause"), None).await?)
        }
        AdminCommand::Zsxq(ZsxqCommand::Resume { id }) => {
            pretty(&call(Method::POST, format!("/admin/zsxq/{id}/resume"), None).await?)
        }
        AdminCommand::Zsxq(ZsxqCommand::Token { id, access_token }) => pretty(
            &call(
                Method::POST,
                format!("/admin/zsxq/{id}/token"),
                Some(json!({"access_token": access_token})),
            )
            .await?,
        ),
        AdminCommand::Order(OrderCommand::List { status, limit }) => {
            let mut path = format!("/admin/orders?limit={limit}");
            if let Some(s) = status {
                path.push_str(&format!("&status={s}"));
            }
            pretty(&call(Method::GET, path, None).await?)
        }
        AdminCommand::Order(OrderCommand::Show { id }) => {
            pretty(&call(Method::GET, format!("/admin/orders/{id}"), None).await?)
        }
        AdminCommand::Order(OrderCommand::Refund { id, reason }) => pretty(
            &call(
                Method::POST,
                format!("/admin/orders/{id}/refund"),
                Some(json!({"reason": reason})),
            )
            .await?,
        ),
    };
    // The CLI's output is its interface: written to stdout, not logged.
    let mut stdout = std::io::stdout().lock();
    std::io::Write::write_all(&mut stdout, format!("{out}\n").as_bytes())
        .context("writing to stdout")?;
    Ok(())
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// Downloads a backup into `file` (written to a temporary name, renamed when complete).
async fn backup(
    client: &reqwest::Client,
    target: &Target,
    file: &std::path::Path,
) -> anyhow::Result<String> {
    use futures_util::StreamExt;
    use std::io::Write;
    if file.exists() {
        bail!("{} exists; choose another file", file.display());
    }
    let res = client
        .get(format!("{}/admin/backup", target.url))
        .bearer_auth(&target.token)
        .timeout(Duration::from_secs(3600))
        .send()
        .await
        .map_err(|e| anyhow!("cannot reach the daemon at {}: {e}", target.url))?;
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
    std::fs::rename(&partial, file).with_context(|| format!("renaming to {}", file.display()))?;
    Ok(format!(
        "backup written to {}: {records} records, {bytes} bytes",
        file.display()
    ))
}
