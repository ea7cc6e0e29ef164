//! The admin CLI: a client of the running daemon's admin API (the daemon holds the
//! database lock, so the CLI never opens the database itself). Output is a table (or a short
//! summary) for people, and the API's JSON with `--json` for scripts.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::config::Config;

/// `chatrelay admin ...`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Users: find, create, show, ban, unban, link and unlink identities.
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
    /// Take paid credits back (a mistaken grant, abuse); never more than the user has.
    Revoke {
        /// The user's uid.
        uid: u64,
        /// Credits to take back.
        credits: u64,
        /// Why (kept in the ledger).
        #[arg(long)]
        reason: String,
        /// Idempotency key: the same reference takes credits once.
        #[arg(long)]
        reference: Option<String>,
    },
    /// User tokens for the web page and the `/v1` API.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Check that every user's ledger sums to their balance.
    Audit,
    /// Orders: list, export, show, refund.
    #[command(subcommand)]
    Order(OrderCommand),
    /// Per-day figures: active users, messages by platform, tokens, LLM cost, revenue.
    Stats {
        /// First day (YYYY-MM-DD).
        #[arg(long)]
        from: Option<String>,
        /// Last day (YYYY-MM-DD, default today).
        #[arg(long)]
        to: Option<String>,
        /// Days up to --to when --from is not given.
        #[arg(long, default_value_t = 7)]
        days: u32,
    },
    /// zsxq groups: list with their state, pause, resume, replace the token.
    #[command(subcommand)]
    Zsxq(ZsxqCommand),
    /// Content-rule hits, newest first: who, where, which rule, an excerpt.
    Hits {
        /// Only this user's.
        #[arg(long)]
        uid: Option<u64>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Each LLM upstream's health: requests, errors, latency, up/degraded/down.
    Upstreams,
    /// Read the configuration file again and apply it (like SIGHUP); an invalid file is
    /// refused with its problems and the running configuration stays.
    Reload,
    /// Save a consistent snapshot of the running daemon's database to FILE.
    Backup {
        /// Where to write the backup (refuses to overwrite an existing file).
        file: std::path::PathBuf,
    },
}

/// `chatrelay admin zsxq ...`
#[derive(Debug, Subcommand)]
pub enum ZsxqCommand {
    /// Every group: last poll, answers today, token expired?
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

/// Which orders (`order list` and `order export`).
#[derive(Debug, Clone, clap::Args)]
pub struct OrderFilter {
    /// Only orders in this state: created, credited, closed, refunded.
    #[arg(long)]
    status: Option<String>,
    /// Created on or after this day (YYYY-MM-DD).
    #[arg(long)]
    from: Option<String>,
    /// Created on or before this day (YYYY-MM-DD).
    #[arg(long)]
    to: Option<String>,
    /// Only this user's orders.
    #[arg(long)]
    uid: Option<u64>,
}

impl OrderFilter {
    fn query(&self) -> String {
        let mut q = String::new();
        for (k, v) in [
            ("status", self.status.clone()),
            ("from", self.from.clone()),
            ("to", self.to.clone()),
            ("uid", self.uid.map(|u| u.to_string())),
        ] {
            if let Some(v) = v {
                let _ = write!(q, "&{k}={}", encode(&v));
            }
        }
        q
    }
}

/// `chatrelay admin order ...`
#[derive(Debug, Subcommand)]
pub enum OrderCommand {
    /// List orders, newest first.
    List {
        #[command(flatten)]
        filter: OrderFilter,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Write orders as CSV (for a spreadsheet or the accountant) to FILE, `-` for stdout.
    Export {
        /// Where to write (refuses to overwrite an existing file).
        file: String,
        #[command(flatten)]
        filter: OrderFilter,
    },
    /// Show an order with its history.
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
    /// List every user, a page at a time: newest activity first (`--sort active`), most
    /// credits first (`balance`), by uid (`uid`) or newest first (`created`).
    List {
        /// How to sort: active, balance, uid, created.
        #[arg(long, default_value = "active")]
        sort: String,
        /// Users per page.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Users to skip (the next page starts at offset + limit).
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// Find users by uid, platform key (or part of one, e.g. an openid) or name.
    Find {
        /// What to look for.
        query: String,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Create a user; prints the uid.
    Create {
        /// Display name.
        #[arg(long)]
        name: String,
    },
    /// Show a user: balance, identities, tokens, recent ledger and conversations.
    Show {
        /// The user's uid.
        uid: u64,
        /// How many of the newest ledger entries to show.
        #[arg(long, default_value_t = 20)]
        ledger: usize,
    },
    /// Stop a user from using the service.
    Ban {
        /// The user's uid.
        uid: u64,
        /// Why (kept on the user for other admins).
        #[arg(long)]
        reason: String,
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
    /// Put a user in groups or take them out (models can be limited to groups).
    Group {
        /// The user's uid.
        uid: u64,
        /// Groups to join.
        #[arg(long)]
        add: Vec<String>,
        /// Groups to leave.
        #[arg(long)]
        remove: Vec<String>,
    },
    /// Detach a platform identity from a user (its next message makes a new user).
    Unlink {
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

/// Runs one admin command and prints its result on stdout: the API's JSON with `json`, a
/// table or summary otherwise.
pub async fn run(target: &Target, command: AdminCommand, json: bool) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")?;
    let api = Api {
        client: client.clone(),
        target: target.clone(),
    };
    use reqwest::Method;
    // Each arm gives the API's answer and how to show it to a person.
    let (value, human): (Value, fn(&Value) -> String) = match command {
        AdminCommand::User(UserCommand::List {
            sort,
            limit,
            offset,
        }) => (
            api.call(
                Method::GET,
                &format!(
                    "/admin/users?sort={}&limit={limit}&offset={offset}",
                    encode(&sort)
                ),
                None,
            )
            .await?,
            render_user_page,
        ),
        AdminCommand::User(UserCommand::Find { query, limit }) => (
            api.call(
                Method::GET,
                &format!("/admin/users?q={}&limit={limit}", encode(&query)),
                None,
            )
            .await?,
            render_users,
        ),
        AdminCommand::User(UserCommand::Create { name }) => (
            api.call(Method::POST, "/admin/users", Some(json!({"name": name})))
                .await?,
            |v| v["uid"].to_string(),
        ),
        AdminCommand::User(UserCommand::Show { uid, ledger }) => (
            api.call(
                Method::GET,
                &format!("/admin/users/{uid}?ledger={ledger}"),
                None,
            )
            .await?,
            render_user,
        ),
        AdminCommand::User(UserCommand::Ban { uid, reason }) => (
            api.call(
                Method::POST,
                &format!("/admin/users/{uid}/ban"),
                Some(json!({"banned": true, "reason": reason})),
            )
            .await?,
            |v| format!("user {} banned: {}", v["uid"], text(&v["ban_reason"])),
        ),
        AdminCommand::User(UserCommand::Unban { uid }) => (
            api.call(
                Method::POST,
                &format!("/admin/users/{uid}/ban"),
                Some(json!({"banned": false})),
            )
            .await?,
            |v| format!("user {} unbanned", v["uid"]),
        ),
        AdminCommand::User(UserCommand::Link { uid, key }) => (
            api.call(
                Method::POST,
                &format!("/admin/users/{uid}/identities"),
                Some(json!({"key": key})),
            )
            .await?,
            |v| match v["previous_uid"].as_u64() {
                Some(p) => format!(
                    "{} linked to user {} (was user {p})",
                    text(&v["key"]),
                    v["uid"]
                ),
                None => format!("{} linked to user {}", text(&v["key"]), v["uid"]),
            },
        ),
        AdminCommand::User(UserCommand::Group { uid, add, remove }) => (
            api.call(
                Method::POST,
                &format!("/admin/users/{uid}/groups"),
                Some(json!({"add": add, "remove": remove})),
            )
            .await?,
            |v| {
                let groups: Vec<String> = rows_of(&v["groups"]).iter().map(text).collect();
                format!(
                    "user {} groups: {}",
                    v["uid"],
                    if groups.is_empty() {
                        "(none)".into()
                    } else {
                        groups.join(", ")
                    }
                )
            },
        ),
        AdminCommand::Hits { uid, limit } => {
            let mut path = format!("/admin/hits?limit={limit}");
            if let Some(u) = uid {
                let _ = write!(path, "&uid={u}");
            }
            (api.call(Method::GET, &path, None).await?, render_hits)
        }
        AdminCommand::Upstreams => (
            api.call(Method::GET, "/admin/upstreams", None).await?,
            render_upstreams,
        ),
        AdminCommand::User(UserCommand::Unlink { uid, key }) => (
            api.call(
                Method::DELETE,
                &format!("/admin/users/{uid}/identities/{}", encode(&key)),
                None,
            )
            .await?,
            |v| format!("{} unlinked from user {}", text(&v["key"]), v["uid"]),
        ),
        AdminCommand::Grant {
            uid,
            credits,
            reason,
            reference,
        } => {
            // One reference per invocation, so the HTTP client's own retries cannot grant twice.
            let reference =
                reference.unwrap_or_else(|| format!("cli:{}", crate::util::random_id()));
            (
                api.call(
                    Method::POST,
                    &format!("/admin/users/{uid}/grant"),
                    Some(json!({"credits": credits, "reason": reason, "reference": reference})),
                )
                .await?,
                render_entry,
            )
        }
        AdminCommand::Revoke {
            uid,
            credits,
            reason,
            reference,
        } => {
            let reference =
                reference.unwrap_or_else(|| format!("cli-revoke:{}", crate::util::random_id()));
            (
                api.call(
                    Method::POST,
                    &format!("/admin/users/{uid}/revoke"),
                    Some(json!({"credits": credits, "reason": reason, "reference": reference})),
                )
                .await?,
                render_entry,
            )
        }
        AdminCommand::Token(TokenCommand::Create {
            uid,
            label,
            expires_in_days,
        }) => (
            api.call(
                Method::POST,
                &format!("/admin/users/{uid}/tokens"),
                Some(json!({"label": label, "expires_in_days": expires_in_days})),
            )
            .await?,
            |v| text(&v["token"]),
        ),
        AdminCommand::Token(TokenCommand::Revoke { token }) => (
            api.call(
                Method::POST,
                "/admin/tokens/revoke",
                Some(json!({"token": token})),
            )
            .await?,
            |_| "revoked".to_owned(),
        ),
        AdminCommand::Audit => (
            api.call(Method::GET, "/admin/audit", None).await?,
            render_audit,
        ),
        AdminCommand::Stats { from, to, days } => {
            let mut path = format!("/admin/stats?days={days}");
            if let Some(f) = from {
                let _ = write!(path, "&from={}", encode(&f));
            }
            if let Some(t) = to {
                let _ = write!(path, "&to={}", encode(&t));
            }
            (api.call(Method::GET, &path, None).await?, render_stats)
        }
        AdminCommand::Reload => {
            let v = api.call_raw(Method::POST, "/admin/reload", None).await?;
            if let Some(problems) = v.get("problems").and_then(Value::as_array) {
                let list: Vec<String> = problems
                    .iter()
                    .map(|p| format!("  - {}", text(p)))
                    .collect();
                bail!("{}:\n{}", text(&v["error"]), list.join("\n"));
            }
            (v, render_reload)
        }
        AdminCommand::Backup { file } => {
            let summary = backup(&client, target, &file).await?;
            (json!({"file": file, "summary": summary}), |v| {
                text(&v["summary"])
            })
        }
        AdminCommand::Zsxq(ZsxqCommand::List) => (
            api.call(Method::GET, "/admin/zsxq", None).await?,
            render_zsxq,
        ),
        AdminCommand::Zsxq(ZsxqCommand::Pause { id }) => (
            api.call(Method::POST, &format!("/admin/zsxq/{id}/pause"), None)
                .await?,
            |_| "paused".to_owned(),
        ),
        AdminCommand::Zsxq(ZsxqCommand::Resume { id }) => (
            api.call(Method::POST, &format!("/admin/zsxq/{id}/resume"), None)
                .await?,
            |_| "resumed".to_owned(),
        ),
        AdminCommand::Zsxq(ZsxqCommand::Token { id, access_token }) => (
            api.call(
                Method::POST,
                &format!("/admin/zsxq/{id}/token"),
                Some(json!({"access_token": access_token})),
            )
            .await?,
            |_| "token replaced; polling resumes".to_owned(),
        ),
        AdminCommand::Order(OrderCommand::List { filter, limit }) => (
            api.call(
                Method::GET,
                &format!("/admin/orders?limit={limit}{}", filter.query()),
                None,
            )
            .await?,
            render_orders,
        ),
        AdminCommand::Order(OrderCommand::Export { file, filter }) => {
            let csv = api
                .get_text(&format!("/admin/orders.csv?x=1{}", filter.query()))
                .await?;
            let rows = csv.lines().count().saturating_sub(1);
            if file == "-" {
                let mut stdout = std::io::stdout().lock();
                std::io::Write::write_all(&mut stdout, csv.as_bytes())
                    .context("writing to stdout")?;
                return Ok(());
            }
            let path = std::path::Path::new(&file);
            if path.exists() {
                bail!("{file} exists; choose another file");
            }
            std::fs::write(path, csv.as_bytes()).with_context(|| format!("writing {file}"))?;
            (json!({"file": file, "orders": rows}), |v| {
                format!("{} orders written to {}", v["orders"], text(&v["file"]))
            })
        }
        AdminCommand::Order(OrderCommand::Show { id }) => (
            api.call(Method::GET, &format!("/admin/orders/{id}"), None)
                .await?,
            render_order,
        ),
        AdminCommand::Order(OrderCommand::Refund { id, reason }) => (
            api.call(
                Method::POST,
                &format!("/admin/orders/{id}/refund"),
                Some(json!({"reason": reason})),
            )
            .await?,
            |v| {
                format!(
                    "order {} refunded; {} credits taken back",
                    text(&v["order"]["id"]),
                    v["debit"]["paid_delta"]
                        .as_i64()
                        .unwrap_or(0)
                        .unsigned_abs()
                )
            },
        ),
    };
    let out = if json { pretty(&value) } else { human(&value) };
    // The CLI's output is its interface: written to stdout, not logged.
    let mut stdout = std::io::stdout().lock();
    std::io::Write::write_all(&mut stdout, format!("{}\n", out.trim_end()).as_bytes())
        .context("writing to stdout")?;
    Ok(())
}

/// The admin API, as the CLI calls it.
struct Api {
    client: reqwest::Client,
    target: Target,
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(reqwest::StatusCode, String)> {
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

    /// A JSON call; an error status becomes an error with the API's message.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, text) = self.send(method, path, body).await?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let msg = value
                .get("error")
                .and_then(Value::as_str)
                .map_or_else(|| value.to_string(), str::to_owned);
            bail!("{status}: {msg}");
        }
        Ok(value)
    }

    /// A JSON call whose error bodies are returned too (reload's list of problems).
    async fn call_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, text) = self.send(method, path, body).await?;
        match serde_json::from_str::<Value>(&text) {
            Ok(v) if v.is_object() => Ok(v),
            _ if status.is_success() => Ok(Value::String(text)),
            _ => bail!("{status}: {text}"),
        }
    }

    async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let (status, text) = self.send(reqwest::Method::GET, path, None).await?;
        if !status.is_success() {
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(text);
            bail!("{status}: {msg}");
        }
        Ok(text)
    }
}

/// Percent-encodes a query or path value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// A JSON value as plain text (strings without quotes, null as empty).
fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Milliseconds since the epoch as local-free `YYYY-MM-DD HH:MM` (UTC+8, the product's
/// users' time; the JSON keeps the exact value).
fn time(v: &Value) -> String {
    v.as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .zip(chrono::FixedOffset::east_opt(8 * 3600))
        .map(|(t, tz)| t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

/// Fen as yuan.
fn yuan(v: &Value) -> String {
    crate::util::yuan(v.as_i64().unwrap_or(0))
}

/// Columns a terminal gives a character: two for CJK and other wide characters.
fn width(s: &str) -> usize {
    s.chars()
        .map(|c| {
            let u = u32::from(c);
            let wide = matches!(u,
                0x1100..=0x115F | 0x2E80..=0x303E | 0x3041..=0x33FF | 0x3400..=0x4DBF
                | 0x4E00..=0x9FFF | 0xA000..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF
                | 0xFE30..=0xFE4F | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6 | 0x1F300..=0x1F64F
                | 0x1F900..=0x1F9FF | 0x20000..=0x3FFFD);
            if wide { 2 } else { 1 }
        })
        .sum()
}

/// Cuts `s` to at most `max` columns, with an ellipsis when cut.
fn fit(s: &str, max: usize) -> String {
    let one_line = s.replace(['\n', '\r', '\t'], " ");
    if width(&one_line) <= max {
        return one_line;
    }
    let mut out = String::new();
    let mut w = 0;
    for c in one_line.chars() {
        let cw = width(c.encode_utf8(&mut [0; 4]));
        if w + cw + 1 > max {
            break;
        }
        out.push(c);
        w += cw;
    }
    out.push('…');
    out
}

/// A table with a header row, columns padded to their widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return "(none)".to_owned();
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| width(h)).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(width(cell));
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(width(cell));
            out.push_str(cell);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

fn rows_of(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// The first cells of a user's row: uid, name, available and paid credits.
fn user_cells(u: &Value) -> Vec<String> {
    vec![
        text(&u["uid"]),
        fit(&text(&u["name"]), 24),
        text(&u["available"]),
        text(&u["paid"]),
    ]
}

/// A user's identities in one table cell.
fn identities_cell(u: &Value) -> String {
    fit(
        &u["identities"]
            .as_array()
            .map(|a| a.iter().map(text).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        60,
    )
}

fn render_user_page(v: &Value) -> String {
    let rows: Vec<Vec<String>> = rows_of(&v["users"])
        .iter()
        .map(|u| {
            let mut cells = user_cells(u);
            cells.extend([
                if u["last_active_ms"].is_null() {
                    "-".to_owned()
                } else {
                    time(&u["last_active_ms"])
                },
                if u["banned"].as_bool() == Some(true) {
                    "banned".to_owned()
                } else {
                    String::new()
                },
                identities_cell(u),
            ]);
            cells
        })
        .collect();
    let total = v["total"].as_u64().unwrap_or(0);
    let offset = v["offset"].as_u64().unwrap_or(0);
    let shown = rows.len() as u64;
    let mut out = table(
        &[
            "UID",
            "NAME",
            "AVAILABLE",
            "PAID",
            "LAST ACTIVE",
            "",
            "IDENTITIES",
        ],
        &rows,
    );
    let _ = write!(
        out,
        "\nusers {}–{} of {total}, by {}",
        if shown == 0 { offset } else { offset + 1 },
        offset + shown,
        text(&v["sort"])
    );
    if offset + shown < total {
        let _ = write!(out, " (next page: --offset {})", offset + shown);
    }
    out.push('\n');
    out
}

fn render_users(v: &Value) -> String {
    let rows: Vec<Vec<String>> = rows_of(v)
        .iter()
        .map(|u| {
            let mut cells = user_cells(u);
            cells.extend([
                if u["banned"].as_bool() == Some(true) {
                    format!("banned: {}", fit(&text(&u["ban_reason"]), 30))
                } else {
                    String::new()
                },
                identities_cell(u),
                text(&u["matched"]),
            ]);
            cells
        })
        .collect();
    table(
        &[
            "UID",
            "NAME",
            "AVAILABLE",
            "PAID",
            "STATUS",
            "IDENTITIES",
            "MATCHED",
        ],
        &rows,
    )
}

fn render_user(v: &Value) -> String {
    let u = &v["user"];
    let b = &v["balance"];
    let mut out = format!(
        "user {}  {}  (since {})\n",
        text(&u["uid"]),
        text(&u["name"]),
        time(&u["created_at_ms"])
    );
    if u["banned"].as_bool() == Some(true) {
        let _ = writeln!(out, "BANNED: {}", text(&u["ban_reason"]));
    }
    let _ = writeln!(
        out,
        "credits: {} available = {} free today + {} paid ({} held by answers in progress)",
        text(&b["available"]),
        text(&b["free_left"]),
        text(&b["paid"]),
        text(&b["held"])
    );
    let ids: Vec<String> = rows_of(&v["identities"]).iter().map(text).collect();
    let _ = writeln!(
        out,
        "identities: {}",
        if ids.is_empty() {
            "(none)".to_owned()
        } else {
            ids.join(", ")
        }
    );
    let tokens: Vec<Vec<String>> = rows_of(&v["tokens"])
        .iter()
        .map(|t| {
            vec![
                format!("{}…", text(&t["hash_prefix"])),
                fit(&text(&t["label"]), 20),
                time(&t["created_at_ms"]),
                time(&t["expires_at_ms"]),
                if t["revoked"].as_bool() == Some(true) {
                    "revoked".into()
                } else {
                    "live".into()
                },
            ]
        })
        .collect();
    let _ = write!(
        out,
        "\ntokens:\n{}\n",
        table(&["HASH", "LABEL", "CREATED", "EXPIRES", "STATE"], &tokens)
    );
    let _ = write!(out, "\nrecent ledger:\n{}\n", render_ledger(&v["ledger"]));
    let conversations = rows_of(&v["conversations"]);
    if !conversations.is_empty() {
        out.push_str("\nrecent conversations:\n");
        for c in conversations {
            let _ = writeln!(
                out,
                "  {} ({} turns kept)",
                text(&c["key"]),
                text(&c["turns"])
            );
            for t in rows_of(&c["recent"]) {
                let _ = writeln!(
                    out,
                    "    {} {:>9}: {}",
                    time(&t["at_ms"]),
                    text(&t["role"]),
                    fit(&text(&t["content"]), 90)
                );
            }
        }
    }
    out
}

fn render_ledger(v: &Value) -> String {
    let rows: Vec<Vec<String>> = rows_of(v)
        .iter()
        .map(|e| {
            vec![
                text(&e["seq"]),
                time(&e["at_ms"]),
                text(&e["kind"]),
                text(&e["free_delta"]),
                text(&e["paid_delta"]),
                text(&e["paid_after"]),
                fit(&text(&e["reason"]), 30),
                fit(&text(&e["reference"]), 30),
            ]
        })
        .collect();
    table(
        &[
            "SEQ",
            "TIME",
            "KIND",
            "FREE",
            "PAID",
            "PAID AFTER",
            "REASON",
            "REFERENCE",
        ],
        &rows,
    )
}

fn render_entry(v: &Value) -> String {
    format!(
        "user {}: paid credits {:+} → {} (ledger #{}, reference {})",
        text(&v["uid"]),
        v["paid_delta"].as_i64().unwrap_or(0),
        text(&v["paid_after"]),
        text(&v["seq"]),
        text(&v["reference"])
    )
}

fn render_audit(v: &Value) -> String {
    let mismatches = rows_of(&v["mismatches"]);
    let mut out = format!(
        "{} users, {} ledger entries, {} open reservations; {} paid credits in balances ({} held)\n",
        text(&v["users"]),
        text(&v["ledger_entries"]),
        text(&v["open_reservations"]),
        text(&v["total_paid"]),
        text(&v["total_held"])
    );
    if mismatches.is_empty() {
        out.push_str("OK: every ledger sums to its balance");
    } else {
        let _ = writeln!(out, "MISMATCHES ({}):", mismatches.len());
        for m in mismatches {
            let _ = writeln!(out, "  {m}");
        }
    }
    out
}

fn render_orders(v: &Value) -> String {
    let rows: Vec<Vec<String>> = rows_of(v)
        .iter()
        .map(|o| {
            vec![
                text(&o["id"]),
                text(&o["uid"]),
                fit(&text(&o["product_name"]), 20),
                text(&o["channel"]),
                yuan(&o["amount_fen"]),
                text(&o["credits"]),
                text(&o["status"]),
                time(&o["created_at_ms"]),
                time(&o["credited_at_ms"]),
            ]
        })
        .collect();
    table(
        &[
            "ORDER", "UID", "PRODUCT", "CHANNEL", "YUAN", "CREDITS", "STATUS", "CREATED", "PAID",
        ],
        &rows,
    )
}

fn render_order(v: &Value) -> String {
    let o = &v["order"];
    let mut out = format!(
        "order {}  user {}  {} ({} credits)  {} yuan by {}  status {}\ncreated {}  paid {}  provider trade no {}\n\nhistory:\n",
        text(&o["id"]),
        text(&o["uid"]),
        text(&o["product_name"]),
        text(&o["credits"]),
        yuan(&o["amount_fen"]),
        text(&o["channel"]),
        text(&o["status"]),
        time(&o["created_at_ms"]),
        time(&o["credited_at_ms"]),
        text(&o["provider_trade_no"]),
    );
    let rows: Vec<Vec<String>> = rows_of(&v["events"])
        .iter()
        .map(|e| {
            vec![
                time(&e["at_ms"]),
                text(&e["kind"]),
                fit(&text(&e["detail"]), 80),
            ]
        })
        .collect();
    out.push_str(&table(&["TIME", "EVENT", "DETAIL"], &rows));
    out
}

fn render_stats(v: &Value) -> String {
    let mut platforms: Vec<String> = Vec::new();
    for day in rows_of(v) {
        if let Some(m) = day["messages"].as_object() {
            for p in m.keys() {
                if !platforms.contains(p) {
                    platforms.push(p.clone());
                }
            }
        }
    }
    platforms.sort();
    let sum = |m: &Value| -> u64 {
        m.as_object()
            .map_or(0, |o| o.values().filter_map(Value::as_u64).sum())
    };
    let rows: Vec<Vec<String>> = rows_of(v)
        .iter()
        .map(|d| {
            let mut row = vec![
                text(&d["date"]),
                text(&d["active_users"]),
                text(&d["messages_total"]),
            ];
            for p in &platforms {
                row.push(sum(&d["messages"][p]).to_string());
            }
            row.extend([
                sum(&d["prompt_tokens"]).to_string(),
                sum(&d["completion_tokens"]).to_string(),
                text(&d["credits_charged"]),
                yuan(&d["llm_cost_fen"]),
                text(&d["orders_paid"]),
                yuan(&d["revenue_fen"]),
                yuan(&d["refunds_fen"]),
            ]);
            row
        })
        .collect();
    let mut headers: Vec<String> = vec!["DAY".into(), "ACTIVE".into(), "MESSAGES".into()];
    headers.extend(platforms.iter().map(|p| p.to_uppercase()));
    headers.extend(
        [
            "PROMPT TOK",
            "ANSWER TOK",
            "CREDITS",
            "LLM COST ¥",
            "ORDERS",
            "REVENUE ¥",
            "REFUNDS ¥",
        ]
        .map(String::from),
    );
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    table(&headers, &rows)
}

fn render_zsxq(v: &Value) -> String {
    let rows: Vec<Vec<String>> = rows_of(v)
        .iter()
        .map(|g| {
            let state = if g["token_expired"].as_bool() == Some(true) {
                "TOKEN EXPIRED"
            } else if g["paused"].as_bool() == Some(true) {
                "paused"
            } else {
                "polling"
            };
            vec![
                text(&g["id"]),
                text(&g["group_id"]),
                state.to_owned(),
                time(&g["last_poll_ms"]),
                text(&g["answered_today"]),
                text(&g["answered_since_start"]),
                text(&g["payer_uid"]),
                fit(&text(&g["last_error"]), 50),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "GROUP",
            "STATE",
            "LAST POLL",
            "TODAY",
            "SINCE START",
            "PAYER UID",
            "LAST ERROR",
        ],
        &rows,
    )
}

fn render_hits(v: &Value) -> String {
    let rows: Vec<Vec<String>> = rows_of(v)
        .iter()
        .map(|h| {
            vec![
                time(&h["at_ms"]),
                text(&h["uid"]),
                text(&h["scope"]),
                text(&h["direction"]),
                text(&h["rule"]),
                fit(&text(&h["word"]), 16),
                fit(&text(&h["excerpt"]), 60),
            ]
        })
        .collect();
    table(
        &["TIME", "UID", "SCOPE", "DIR", "RULE", "WORD", "EXCERPT"],
        &rows,
    )
}

fn render_upstreams(v: &Value) -> String {
    if rows_of(v).is_empty() {
        return "no upstreams (the offline demo answers)".to_owned();
    }
    let rows: Vec<Vec<String>> = rows_of(v)
        .iter()
        .map(|u| {
            vec![
                text(&u["id"]),
                text(&u["state"]),
                text(&u["requests_total"]),
                text(&u["errors_total"]),
                format!(
                    "{:.0}%",
                    u["recent_error_rate"].as_f64().unwrap_or(0.0) * 100.0
                ),
                u["latency_ms"]
                    .as_u64()
                    .map_or_else(String::new, |ms| format!("{ms} ms")),
                time(&u["last_error_at_ms"]),
                fit(&text(&u["last_error"]), 60),
            ]
        })
        .collect();
    table(
        &[
            "UPSTREAM",
            "STATE",
            "REQUESTS",
            "ERRORS",
            "RECENT ERR",
            "LATENCY",
            "LAST ERROR AT",
            "LAST ERROR",
        ],
        &rows,
    )
}

fn render_reload(v: &Value) -> String {
    let list = |k: &str| -> String {
        let items: Vec<String> = rows_of(&v[k]).iter().map(text).collect();
        if items.is_empty() {
            "(none)".into()
        } else {
            items.join(", ")
        }
    };
    format!(
        "configuration reloaded from {}\napplied: {}\nneeds a restart (old values kept): {}",
        v["file"].as_str().unwrap_or("(built-in defaults)"),
        list("applied"),
        list("restart_needed")
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_wide_characters() {
        let t = table(
            &["A", "NAME"],
            &[
                vec!["1".into(), "小明".into()],
                vec!["22".into(), "bob".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "A   NAME");
        assert_eq!(lines[1], "1   小明");
        assert_eq!(lines[2], "22  bob");
        assert_eq!(table(&["A"], &[]), "(none)");
    }

    #[test]
    fn fit_cuts_by_columns_not_bytes() {
        assert_eq!(fit("你好世界", 8), "你好世界");
        assert_eq!(fit("你好世界", 7), "你好世…");
        assert_eq!(fit("line\nbreak", 20), "line break");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("mp:main:o6 a&b"), "mp:main:o6%20a%26b");
        assert_eq!(encode("小"), "%E5%B0%8F");
    }

    #[test]
    fn stats_table_has_a_column_per_platform() {
        let v = json!([{
            "date": "2026-11-27", "active_users": 3, "messages_total": 5,
            "messages": {"mp": {"answered": 4}, "tg": {"answered": 1}},
            "prompt_tokens": {"m": 10}, "completion_tokens": {"m": 20},
            "credits_charged": 7, "llm_cost_fen": 150, "orders_paid": 1,
            "revenue_fen": 990, "refunds_fen": 0
        }]);
        let t = render_stats(&v);
        assert!(t.lines().next().unwrap().contains("MP  TG"), "{t}");
        assert!(t.contains("2026-11-27"), "{t}");
        assert!(t.contains("9.90"), "{t}");
        assert!(t.contains("1.50"), "{t}");
    }
}
