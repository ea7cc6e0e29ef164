//! The admin CLI's commands (the clap types) and the one place that turns each into its
//! admin API request ([`AdminCommand::call`]), built from the same [`paths`] as the routes.

use std::path::PathBuf;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use crate::admin::paths::{self, fill, query};

/// `chatrelay admin ...`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Users: find, create, show, ban, unban, link and unlink identities.
    #[command(subcommand)]
    User(UserCommand),
    /// Add paid credits to a user (recorded in the ledger with the reason).
    Grant(CreditChange),
    /// Take paid credits back (a mistaken grant, abuse); never more than the user has.
    #[command(
        mut_arg("credits", |a| a.help("Credits to take back")),
        mut_arg("reference", |a| a.help("Idempotency key: the same reference takes credits once"))
    )]
    Revoke(CreditChange),
    /// User tokens for the web page and the `/v1` API.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Check that every user's ledger sums to their balance.
    Audit,
    /// Orders: list, export, show, refund.
    #[command(subcommand)]
    Order(OrderCommand),
    /// Redemption codes (卡密): create a batch, list, revoke.
    #[command(subcommand)]
    Codes(CodesCommand),
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
    /// The running daemon's version, uptime and configuration (every secret as ***).
    Config,
    /// Read the configuration file again and apply it (like SIGHUP); an invalid file is
    /// refused with its problems and the running configuration stays.
    Reload,
    /// The change log: every change made through the admin API (console or CLI), newest
    /// first: when, who (console or token), from which address, what, and the reason.
    Changes {
        /// Only changes older than this (the `next` of the previous page, or a time in ms).
        #[arg(long)]
        before: Option<String>,
        /// At most this many (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Save a consistent snapshot of the running daemon's database to FILE.
    Backup {
        /// Where to write the backup (refuses to overwrite an existing file).
        file: PathBuf,
    },
}

/// A change of a user's paid credits: `grant`, and `revoke` with its own help for `credits`
/// and `reference`.
#[derive(Debug, Clone, clap::Args)]
pub struct CreditChange {
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
}

/// `chatrelay admin codes ...`
#[derive(Debug, Subcommand)]
pub enum CodesCommand {
    /// Make a batch of codes; prints them (they are shown only this once).
    Create {
        /// How many codes (at most 10,000).
        #[arg(long)]
        count: u32,
        /// Paid credits each code grants.
        #[arg(long, required_unless_present = "plan", conflicts_with = "plan")]
        credits: Option<u64>,
        /// Or the membership plan (`[[plans]]` id) each code grants.
        #[arg(long)]
        plan: Option<String>,
        /// When the codes stop working: YYYY-MM-DD (end of that day), RFC 3339 or Unix seconds.
        #[arg(long)]
        expires_at: Option<String>,
        /// What the batch is for (the shop, the campaign).
        #[arg(long, default_value = "")]
        note: String,
        /// Print `code,credits,expires_at,batch` CSV (for a card shop's import) instead
        /// (`credits` is `plan:<id>` for plan codes).
        #[arg(long)]
        csv: bool,
    },
    /// List batches, or one batch's codes (ids and state: codes are never shown again).
    List {
        /// One batch's codes.
        #[arg(long)]
        batch: Option<u64>,
        /// Print CSV instead of a table.
        #[arg(long)]
        csv: bool,
    },
    /// Revoke a batch's unused codes (used ones stay used).
    Revoke {
        /// The batch id.
        batch: u64,
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
    /// Only orders of this channel: wechat, alipay.
    #[arg(long)]
    channel: Option<String>,
    /// Only orders paid this way: native, jsapi, h5 (wechat); precreate, wap, page (alipay).
    #[arg(long)]
    method: Option<String>,
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
    /// Show a user's usage log (用量明细): each metered answer with its model, tokens and
    /// the credits charged, newest first.
    Usage {
        /// The user's uid.
        uid: u64,
        /// Only records older than this (the `next_before` of the previous page, or a time in
        /// ms since the epoch).
        #[arg(long)]
        before: Option<String>,
        /// At most this many (1 to 100).
        #[arg(long, default_value_t = 20)]
        limit: usize,
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
        /// Why (kept in the change log).
        #[arg(long)]
        reason: Option<String>,
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

/// One admin API request: what to send, and what comes back.
#[derive(Debug)]
pub struct Call {
    /// The HTTP method.
    pub method: Method,
    /// The path with its query, e.g. `/admin/users/7?ledger=20`.
    pub path: String,
    /// The JSON body, if any.
    pub body: Option<Value>,
    /// What the answer is and where it goes.
    pub answer: Answer,
}

/// What an admin API answer is and where it goes.
#[derive(Debug)]
pub enum Answer {
    /// JSON; an error status is an error with the API's message.
    Json,
    /// JSON whose error answers carry a list of problems (reload).
    Problems,
    /// CSV, written to a file (`-`: stdout).
    Csv(String),
    /// A backup, streamed into a file.
    Download(PathBuf),
}

impl Call {
    fn new(method: Method, path: String, body: Option<Value>) -> Self {
        Self {
            method,
            path,
            body,
            answer: Answer::Json,
        }
    }

    fn get(path: String) -> Self {
        Self::new(Method::GET, path, None)
    }

    fn post(path: String, body: Value) -> Self {
        Self::new(Method::POST, path, Some(body))
    }

    fn answer(self, answer: Answer) -> Self {
        Self { answer, ..self }
    }
}

/// `Some(value)` as text, for [`query`].
fn some(value: impl ToString) -> Option<String> {
    Some(value.to_string())
}

impl AdminCommand {
    /// The request this command makes.
    #[must_use]
    pub fn call(self) -> Call {
        match self {
            Self::User(c) => c.call(),
            Self::Grant(c) => c.call(paths::GRANT, "cli"),
            Self::Revoke(c) => c.call(paths::REVOKE, "cli-revoke"),
            Self::Token(c) => c.call(),
            Self::Audit => Call::get(paths::AUDIT.into()),
            Self::Order(c) => c.call(),
            Self::Stats { from, to, days } => Call::get(format!(
                "{}{}",
                paths::STATS,
                query(&[("days", some(days)), ("from", from), ("to", to)])
            )),
            Self::Zsxq(c) => c.call(),
            Self::Codes(c) => c.call(),
            Self::Hits { uid, limit } => Call::get(format!(
                "{}{}",
                paths::HITS,
                query(&[("limit", some(limit)), ("uid", uid.map(|u| u.to_string()))])
            )),
            Self::Upstreams => Call::get(paths::UPSTREAMS.into()),
            Self::Config => Call::get(paths::CONFIG.into()),
            Self::Changes { before, limit } => Call::get(format!(
                "{}{}",
                paths::CHANGES,
                query(&[("before", before), ("limit", some(limit))])
            )),
            Self::Reload => {
                Call::new(Method::POST, paths::RELOAD.into(), None).answer(Answer::Problems)
            }
            Self::Backup { file } => Call::get(paths::BACKUP.into()).answer(Answer::Download(file)),
        }
    }
}

impl CreditChange {
    /// A grant or a take-back. Without a reference, one per invocation, so the HTTP
    /// client's own retries cannot change credits twice.
    fn call(self, path: &str, prefix: &str) -> Call {
        let reference = self
            .reference
            .unwrap_or_else(|| format!("{prefix}:{}", crate::util::random_id()));
        Call::post(
            fill(path, &[&self.uid.to_string()]),
            json!({"credits": self.credits, "reason": self.reason, "reference": reference}),
        )
    }
}

impl UserCommand {
    fn call(self) -> Call {
        match self {
            Self::List {
                sort,
                limit,
                offset,
            } => Call::get(format!(
                "{}{}",
                paths::USERS,
                query(&[
                    ("sort", Some(sort)),
                    ("limit", some(limit)),
                    ("offset", some(offset))
                ])
            )),
            Self::Find { query: q, limit } => Call::get(format!(
                "{}{}",
                paths::USERS,
                query(&[("q", Some(q)), ("limit", some(limit))])
            )),
            Self::Create { name } => Call::post(paths::USERS.into(), json!({"name": name})),
            Self::Show { uid, ledger } => Call::get(format!(
                "{}{}",
                fill(paths::USER, &[&uid.to_string()]),
                query(&[("ledger", some(ledger))])
            )),
            Self::Usage { uid, before, limit } => Call::get(format!(
                "{}{}",
                fill(paths::USER_USAGE, &[&uid.to_string()]),
                query(&[("before", before), ("limit", some(limit))])
            )),
            Self::Ban { uid, reason } => Call::post(
                fill(paths::BAN, &[&uid.to_string()]),
                json!({"banned": true, "reason": reason}),
            ),
            Self::Unban { uid, reason } => Call::post(
                fill(paths::BAN, &[&uid.to_string()]),
                match reason {
                    Some(reason) => json!({"banned": false, "reason": reason}),
                    None => json!({"banned": false}),
                },
            ),
            Self::Link { uid, key } => Call::post(
                fill(paths::IDENTITIES, &[&uid.to_string()]),
                json!({"key": key}),
            ),
            Self::Group { uid, add, remove } => Call::post(
                fill(paths::GROUPS, &[&uid.to_string()]),
                json!({"add": add, "remove": remove}),
            ),
            Self::Unlink { uid, key } => Call::new(
                Method::DELETE,
                fill(paths::IDENTITY, &[&uid.to_string(), &key]),
                None,
            ),
        }
    }
}

impl TokenCommand {
    fn call(self) -> Call {
        match self {
            Self::Create {
                uid,
                label,
                expires_in_days,
            } => Call::post(
                fill(paths::USER_TOKENS, &[&uid.to_string()]),
                json!({"label": label, "expires_in_days": expires_in_days}),
            ),
            Self::Revoke { token } => {
                Call::post(paths::TOKEN_REVOKE.into(), json!({"token": token}))
            }
        }
    }
}

impl OrderFilter {
    fn query(&self, limit: Option<usize>) -> String {
        query(&[
            ("limit", limit.map(|l| l.to_string())),
            ("status", self.status.clone()),
            ("from", self.from.clone()),
            ("to", self.to.clone()),
            ("uid", self.uid.map(|u| u.to_string())),
            ("channel", self.channel.clone()),
            ("method", self.method.clone()),
        ])
    }
}

impl OrderCommand {
    fn call(self) -> Call {
        match self {
            Self::List { filter, limit } => {
                Call::get(format!("{}{}", paths::ORDERS, filter.query(Some(limit))))
            }
            Self::Export { file, filter } => {
                Call::get(format!("{}{}", paths::ORDERS_CSV, filter.query(None)))
                    .answer(Answer::Csv(file))
            }
            Self::Show { id } => Call::get(fill(paths::ORDER, &[&id])),
            Self::Refund { id, reason } => {
                Call::post(fill(paths::REFUND, &[&id]), json!({"reason": reason}))
            }
        }
    }
}

impl CodesCommand {
    fn call(self) -> Call {
        match self {
            Self::Create {
                count,
                credits,
                plan,
                expires_at,
                note,
                csv: _,
            } => {
                // Unix seconds as a number, anything else as text for the daemon to read.
                let expires: Value = match expires_at {
                    None => Value::Null,
                    Some(e) => e.trim().parse::<i64>().map_or(json!(e), |n| json!(n)),
                };
                Call::post(
                    paths::CODES.into(),
                    json!({"count": count, "credits": credits, "plan": plan, "expires_at": expires, "note": note}),
                )
            }
            Self::List { batch, csv: _ } => Call::get(format!(
                "{}{}",
                paths::CODES,
                query(&[("batch", batch.map(|b| b.to_string()))])
            )),
            Self::Revoke { batch } => Call::new(
                Method::POST,
                fill(paths::CODES_REVOKE, &[&batch.to_string()]),
                None,
            ),
        }
    }
}

impl ZsxqCommand {
    fn call(self) -> Call {
        match self {
            Self::List => Call::get(paths::ZSXQ.into()),
            Self::Pause { id } => Call::new(Method::POST, fill(paths::ZSXQ_PAUSE, &[&id]), None),
            Self::Resume { id } => Call::new(Method::POST, fill(paths::ZSXQ_RESUME, &[&id]), None),
            Self::Token { id, access_token } => Call::post(
                fill(paths::ZSXQ_TOKEN, &[&id]),
                json!({"access_token": access_token}),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_filters_reach_the_query() {
        let filter = OrderFilter {
            status: Some("credited".into()),
            from: None,
            to: Some("2026-12-07".into()),
            uid: Some(7),
            channel: Some("wechat".into()),
            method: Some("h5".into()),
        };
        let call = AdminCommand::Order(OrderCommand::List { filter, limit: 5 }).call();
        assert_eq!(
            call.path,
            "/admin/orders?limit=5&status=credited&to=2026-12-07&uid=7&channel=wechat&method=h5"
        );
        assert_eq!(AdminCommand::Config.call().path, paths::CONFIG);
    }
}
