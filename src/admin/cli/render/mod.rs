//! The admin CLI's output for people: tables and short summaries of the API's JSON, one
//! renderer per command ([`human`]); `--json` prints the JSON itself ([`pretty`]).
//!
//! - `table.rs`: the toolkit (text of values, times, yuan, padded tables, cells).
//! - `users.rs`, `codes.rs`, `ops.rs`: the renderers, by resource.

mod codes;
mod ops;
mod table;
mod users;

use serde_json::Value;

use codes::*;
use ops::*;
pub use table::{Cell, Table, pretty, text};
use table::{list, rows_of, table_of};
use users::*;

use super::commands::{
    AdminCommand, CodesCommand, OrderCommand, TokenCommand, UserCommand, ZsxqCommand,
};

/// How an API answer is shown to a person.
#[derive(Clone, Copy)]
pub enum Render {
    /// A table with a row per element of the answer (a list).
    Table(Table),
    /// Made from the whole answer.
    With(fn(&Value) -> String),
}

impl Render {
    /// The answer for a person.
    #[must_use]
    pub fn show(self, v: &Value) -> String {
        match self {
            Render::Table(columns) => table_of(rows_of(v), columns),
            Render::With(make) => make(v),
        }
    }
}

/// How to show `command`'s answer to a person.
#[must_use]
pub fn human(command: &AdminCommand) -> Render {
    use Render::{Table as T, With as W};
    match command {
        AdminCommand::User(c) => match c {
            UserCommand::List { .. } => W(render_user_page),
            UserCommand::Find { .. } => W(render_users),
            UserCommand::Create { .. } => W(|v| v["uid"].to_string()),
            UserCommand::Show { .. } => W(render_user),
            UserCommand::Usage { .. } => W(render_usage),
            UserCommand::Ban { .. } => {
                W(|v| format!("user {} banned: {}", v["uid"], text(&v["ban_reason"])))
            }
            UserCommand::Unban { .. } => W(|v| format!("user {} unbanned", v["uid"])),
            UserCommand::Link { .. } => W(render_link),
            UserCommand::Group { .. } => {
                W(|v| format!("user {} groups: {}", v["uid"], list(&v["groups"])))
            }
            UserCommand::Unlink { .. } => {
                W(|v| format!("{} unlinked from user {}", text(&v["key"]), v["uid"]))
            }
        },
        AdminCommand::Grant(_) | AdminCommand::Revoke(_) => W(render_entry),
        AdminCommand::Token(TokenCommand::Create { .. }) => W(|v| text(&v["token"])),
        AdminCommand::Token(TokenCommand::Revoke { .. }) => W(|_| "revoked".to_owned()),
        AdminCommand::Audit => W(render_audit),
        AdminCommand::Changes { .. } => W(render_changes),
        AdminCommand::Order(c) => match c {
            OrderCommand::List { .. } => T(ORDER_COLUMNS),
            OrderCommand::Export { .. } => {
                W(|v| format!("{} orders written to {}", v["orders"], text(&v["file"])))
            }
            OrderCommand::Show { .. } => W(render_order),
            OrderCommand::Refund { .. } => W(render_refund),
        },
        AdminCommand::Stats { .. } => W(render_stats),
        AdminCommand::Zsxq(c) => match c {
            ZsxqCommand::List => T(ZSXQ_COLUMNS),
            ZsxqCommand::Pause { .. } => W(|_| "paused".to_owned()),
            ZsxqCommand::Resume { .. } => W(|_| "resumed".to_owned()),
            ZsxqCommand::Token { .. } => W(|_| "token replaced; polling resumes".to_owned()),
        },
        AdminCommand::Codes(c) => match c {
            CodesCommand::Create { csv: true, .. } => W(render_new_codes_csv),
            CodesCommand::Create { csv: false, .. } => W(render_new_codes),
            CodesCommand::List {
                batch: Some(_),
                csv,
            } => W(if *csv { render_codes_csv } else { render_codes }),
            CodesCommand::List { batch: None, csv } => {
                if *csv {
                    W(render_batches_csv)
                } else {
                    T(BATCH_COLUMNS)
                }
            }
            CodesCommand::Revoke { .. } => W(|v| {
                format!(
                    "batch {}: {} unused codes revoked",
                    v["batch"], v["revoked"]
                )
            }),
        },
        AdminCommand::Hits { .. } => T(HIT_COLUMNS),
        AdminCommand::Upstreams => W(render_upstreams),
        AdminCommand::Config => W(render_config),
        AdminCommand::Reload => W(render_reload),
        AdminCommand::Backup { .. } => W(|v| text(&v["summary"])),
    }
}

#[cfg(test)]
mod tests;
