//! The admin CLI's output for people: tables and short summaries of the API's JSON, one
//! renderer per command ([`human`]); `--json` prints the JSON itself ([`pretty`]).

use std::fmt::Write as _;

use serde_json::Value;

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

fn render_link(v: &Value) -> String {
    match v["previous_uid"].as_u64() {
        Some(p) => format!(
            "{} linked to user {} (was user {p})",
            text(&v["key"]),
            v["uid"]
        ),
        None => format!("{} linked to user {}", text(&v["key"]), v["uid"]),
    }
}

fn render_refund(v: &Value) -> String {
    format!(
        "order {} refunded; {} credits taken back",
        text(&v["order"]["id"]),
        v["debit"]["paid_delta"]
            .as_i64()
            .unwrap_or(0)
            .unsigned_abs()
    )
}

/// The API's JSON, indented.
pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// A JSON value as plain text (strings without quotes, null as empty).
pub fn text(v: &Value) -> String {
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

/// How a table cell is made from a row (a JSON object).
#[derive(Clone, Copy)]
pub enum Cell<'a> {
    /// A field as text.
    Text(&'a str),
    /// A field as text, cut to this many columns.
    Fit(&'a str, usize),
    /// A field in milliseconds as a time.
    Time(&'a str),
    /// A field in fen as yuan.
    Yuan(&'a str),
    /// The sum of the numbers in a field's object, or in a member of it.
    Sum(&'a str, Option<&'a str>),
    /// Made from the whole row.
    With(fn(&Value) -> String),
}

use Cell::{Fit, Sum, Text, Time, With, Yuan};

impl Cell<'_> {
    fn of(self, row: &Value) -> String {
        match self {
            Text(f) => text(&row[f]),
            Fit(f, max) => fit(&text(&row[f]), max),
            Time(f) => time(&row[f]),
            Yuan(f) => yuan(&row[f]),
            Sum(f, member) => {
                let v = member.map_or(&row[f], |m| &row[f][m]);
                let sum: u64 = v
                    .as_object()
                    .map_or(0, |o| o.values().filter_map(Value::as_u64).sum());
                sum.to_string()
            }
            With(make) => make(row),
        }
    }
}

/// A table's columns: a header and a cell each.
pub type Table = &'static [(&'static str, Cell<'static>)];

/// A table with a row per element of `rows` and a column per `(header, cell)`.
fn table_of<H: AsRef<str>>(rows: &[Value], columns: &[(H, Cell)]) -> String {
    let headers: Vec<&str> = columns.iter().map(|(h, _)| h.as_ref()).collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|(_, c)| c.of(row)).collect())
        .collect();
    table(&headers, &cells)
}

/// `yes` when the row's `field` is true, else `no`.
fn flag(row: &Value, field: &str, yes: &str, no: &str) -> String {
    if row[field].as_bool() == Some(true) {
        yes
    } else {
        no
    }
    .to_owned()
}

/// `template` with each `{field}` replaced by the row's field as text, `{field:time}` as a
/// time, `{field:yuan}` as yuan.
fn fields(row: &Value, template: &str) -> String {
    crate::admin::paths::substitute(template, |spec| {
        let (field, how) = spec.split_once(':').unwrap_or((spec, ""));
        match how {
            "time" => time(&row[field]),
            "yuan" => yuan(&row[field]),
            _ => text(&row[field]),
        }
    })
}

/// A list of strings as `a, b`, or `(none)`.
fn list(v: &Value) -> String {
    let items: Vec<String> = rows_of(v).iter().map(text).collect();
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items.join(", ")
    }
}

/// The first columns of a user's row: uid, name, available and paid credits, then `more`.
fn user_columns(more: &[(&'static str, Cell<'static>)]) -> Vec<(&'static str, Cell<'static>)> {
    let mut columns = vec![
        ("UID", Text("uid")),
        ("NAME", Fit("name", 24)),
        ("AVAILABLE", Text("available")),
        ("PAID", Text("paid")),
    ];
    columns.extend_from_slice(more);
    columns
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
    let last_active = |u: &Value| match &u["last_active_ms"] {
        Value::Null => "-".to_owned(),
        t => time(t),
    };
    let columns = user_columns(&[
        ("LAST ACTIVE", With(last_active)),
        ("", With(|u| flag(u, "banned", "banned", ""))),
        ("IDENTITIES", With(identities_cell)),
    ]);
    let rows = rows_of(&v["users"]);
    let total = v["total"].as_u64().unwrap_or(0);
    let offset = v["offset"].as_u64().unwrap_or(0);
    let shown = rows.len() as u64;
    let mut out = table_of(rows, &columns);
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
    let status = |u: &Value| match u["banned"].as_bool() {
        Some(true) => format!("banned: {}", fit(&text(&u["ban_reason"]), 30)),
        _ => String::new(),
    };
    let columns = user_columns(&[
        ("STATUS", With(status)),
        ("IDENTITIES", With(identities_cell)),
        ("MATCHED", Text("matched")),
    ]);
    table_of(rows_of(v), &columns)
}

/// A user's tokens: never the token itself, only the start of its hash.
#[rustfmt::skip]
const TOKEN_COLUMNS: Table = &[
    ("HASH", With(|t| format!("{}…", text(&t["hash_prefix"])))), ("LABEL", Fit("label", 20)),
    ("CREATED", Time("created_at_ms")), ("EXPIRES", Time("expires_at_ms")),
    ("STATE", With(|t| flag(t, "revoked", "revoked", "live"))),
];

fn render_user(v: &Value) -> String {
    let u = &v["user"];
    let b = &v["balance"];
    let mut out = fields(u, "user {uid}  {name}  (since {created_at_ms:time})\n");
    if u["banned"].as_bool() == Some(true) {
        let _ = writeln!(out, "BANNED: {}", text(&u["ban_reason"]));
    }
    out.push_str(&fields(
        b,
        "credits: {available} available = {free_left} free today + {paid} paid \
         ({held} held by answers in progress)\n",
    ));
    let _ = writeln!(out, "identities: {}", list(&v["identities"]));
    let tokens = table_of(rows_of(&v["tokens"]), TOKEN_COLUMNS);
    let _ = write!(out, "\ntokens:\n{tokens}\n");
    let _ = write!(out, "\nrecent ledger:\n{}\n", render_ledger(&v["ledger"]));
    let conversations = rows_of(&v["conversations"]);
    if !conversations.is_empty() {
        out.push_str("\nrecent conversations:\n");
    }
    for c in conversations {
        let _ = writeln!(
            out,
            "  {} ({} turns kept)",
            text(&c["key"]),
            text(&c["turns"])
        );
        for t in rows_of(&c["recent"]) {
            let (at, role) = (time(&t["at_ms"]), text(&t["role"]));
            let _ = writeln!(out, "    {at} {role:>9}: {}", fit(&text(&t["content"]), 90));
        }
    }
    out
}

#[rustfmt::skip]
const LEDGER_COLUMNS: Table = &[
    ("SEQ", Text("seq")), ("TIME", Time("at_ms")), ("KIND", Text("kind")),
    ("FREE", Text("free_delta")), ("PAID", Text("paid_delta")), ("PAID AFTER", Text("paid_after")),
    ("REASON", Fit("reason", 30)), ("REFERENCE", Fit("reference", 30)),
];

#[rustfmt::skip]
const USAGE_COLUMNS: Table = &[
    ("TIME", Time("at_ms")), ("PLATFORM", Text("platform")), ("MODEL", Fit("model", 24)),
    ("PROMPT", Text("prompt_tokens")), ("COMPLETION", Text("completion_tokens")),
    ("FREE", With(|r| text(&r["credits"]["free"]))), ("PAID", With(|r| text(&r["credits"]["paid"]))),
    ("PLAN", With(|r| text(&r["credits"]["plan"]))), ("TOTAL", With(|r| text(&r["credits"]["total"]))),
    ("OUTCOME", Text("outcome")), ("LEDGER", Text("ledger_seq")),
];

/// A page of the usage log, and how to get the next.
fn render_usage(v: &Value) -> String {
    let rows = rows_of(&v["data"]);
    if rows.is_empty() {
        return "no usage records".to_owned();
    }
    let mut out = table_of(rows, USAGE_COLUMNS);
    let total: u64 = rows
        .iter()
        .filter_map(|r| r["credits"]["total"].as_u64())
        .sum();
    let _ = write!(out, "{} answers, {total} credits", rows.len());
    if let Some(next) = v["next_before"].as_str() {
        let _ = write!(out, "; older: --before {next}");
    }
    out
}

fn render_ledger(v: &Value) -> String {
    table_of(rows_of(v), LEDGER_COLUMNS)
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

#[rustfmt::skip]
const CHANGE_COLUMNS: Table = &[
    ("TIME", Time("at_ms")), ("WHO", Text("actor")), ("ADDRESS", Text("address")),
    ("METHOD", Text("method")), ("PATH", Fit("path", 40)), ("STATUS", Text("status")),
    ("REASON", Fit("reason", 30)), ("SUMMARY", With(|r| r["summary"].to_string())),
];

/// A page of the change log, and how to get the next.
fn render_changes(v: &Value) -> String {
    let rows = rows_of(&v["changes"]);
    if rows.is_empty() {
        return "no changes recorded".to_owned();
    }
    let mut out = table_of(rows, CHANGE_COLUMNS);
    let _ = write!(out, "{} changes", rows.len());
    if let Some(next) = v["next"].as_str() {
        let _ = write!(out, "; older: --before {next}");
    }
    out
}

fn render_audit(v: &Value) -> String {
    let mismatches = rows_of(&v["mismatches"]);
    let mut out = fields(
        v,
        "{users} users, {ledger_entries} ledger entries, {open_reservations} open reservations; \
         {total_paid} paid credits in balances ({total_held} held)\n",
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

#[rustfmt::skip]
const ORDER_COLUMNS: Table = &[
    ("ORDER", Text("id")), ("UID", Text("uid")), ("PRODUCT", Fit("product_name", 20)),
    ("CHANNEL", Text("channel")), ("YUAN", Yuan("amount_fen")), ("CREDITS", Text("credits")), ("STATUS", Text("status")),
    ("CREATED", Time("created_at_ms")), ("PAID", Time("credited_at_ms")),
];

// --- redemption codes ---

/// One CSV line (RFC 4180 quoting where needed).
fn csv_line(cells: &[String]) -> String {
    let quoted: Vec<String> = cells
        .iter()
        .map(|c| {
            // A spreadsheet must show operator text, not run it.
            let c = if c.starts_with(['=', '+', '-', '@']) {
                format!("'{c}")
            } else {
                c.clone()
            };
            if c.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c
            }
        })
        .collect();
    quoted.join(",")
}

/// What a batch's codes grant, for CSV's `credits` column: the credits, or `plan:<id>`.
fn grant_text(b: &Value) -> String {
    match b["plan"].as_str() {
        Some(plan) => format!("plan:{plan}"),
        None => text(&b["credits"]),
    }
}

/// What a batch's codes grant, in words: `50 credits`, `plan month (30 days)`.
fn grant_words(b: &Value) -> String {
    match b["plan"].as_str() {
        Some(plan) => format!("plan {plan} ({} days)", text(&b["plan_days"])),
        None => format!("{} credits", text(&b["credits"])),
    }
}

/// A new batch's codes as a card shop imports them: `code,credits,expires_at,batch`.
fn render_new_codes_csv(v: &Value) -> String {
    let b = &v["batch"];
    let mut out = String::from("code,credits,expires_at,batch\n");
    for c in rows_of(&v["codes"]) {
        let row = [
            text(&c["code"]),
            grant_text(b),
            text(&b["expires_at"]),
            text(&b["id"]),
        ];
        out.push_str(&csv_line(&row));
        out.push('\n');
    }
    out
}

/// A new batch: what it is, then its codes (shown only this once).
fn render_new_codes(v: &Value) -> String {
    let b = &v["batch"];
    let expires = match text(&b["expires_at"]) {
        e if e.is_empty() => "never expire".to_owned(),
        e => format!("expire {e}"),
    };
    let mut out = format!(
        "batch {}: {} codes of {}, {expires} (shown only now: keep them safe)\n",
        b["id"],
        b["count"],
        grant_words(b)
    );
    for c in rows_of(&v["codes"]) {
        let _ = writeln!(out, "{}  {}", text(&c["code"]), text(&c["id"]));
    }
    out
}

#[rustfmt::skip]
const BATCH_COLUMNS: Table = &[
    ("BATCH", Text("id")), ("COUNT", Text("count")), ("GRANT", With(grant_text)),
    ("CREATED", Time("created_at_ms")), ("EXPIRES", Time("expires_at_ms")), ("REVOKED", Time("revoked_at_ms")),
    ("NOTE", Fit("note", 30)),
];

#[rustfmt::skip]
const CODE_COLUMNS: Table = &[
    ("CODE", Text("id")), ("STATUS", Text("status")), ("UID", Text("uid")), ("USED", Time("used_at_ms")),
];

/// One batch and its codes.
fn render_codes(v: &Value) -> String {
    let b = &v["batch"];
    let t = &b["codes"];
    format!(
        "batch {} ({} each): {} unused, {} used, {} revoked, {} expired\n{}",
        b["id"],
        grant_words(b),
        t["unused"],
        t["used"],
        t["revoked"],
        t["expired"],
        table_of(rows_of(&v["codes"]), CODE_COLUMNS)
    )
}

/// One batch's codes as CSV.
fn render_codes_csv(v: &Value) -> String {
    let b = &v["batch"];
    let mut out = String::from("id,batch,status,uid,used_at,credits,expires_at\n");
    for c in rows_of(&v["codes"]) {
        let row = [
            text(&c["id"]),
            text(&b["id"]),
            text(&c["status"]),
            text(&c["uid"]),
            text(&c["used_at"]),
            grant_text(b),
            text(&b["expires_at"]),
        ];
        out.push_str(&csv_line(&row));
        out.push('\n');
    }
    out
}

/// The batches as CSV.
fn render_batches_csv(v: &Value) -> String {
    let mut out = String::from(
        "batch,count,credits,created_at,expires_at,unused,used,revoked,expired,note\n",
    );
    for b in rows_of(v) {
        let t = &b["codes"];
        let row = [
            text(&b["id"]),
            text(&b["count"]),
            grant_text(b),
            text(&b["created_at"]),
            text(&b["expires_at"]),
            text(&t["unused"]),
            text(&t["used"]),
            text(&t["revoked"]),
            text(&t["expired"]),
            text(&b["note"]),
        ];
        out.push_str(&csv_line(&row));
        out.push('\n');
    }
    out
}

#[rustfmt::skip]
const EVENT_COLUMNS: Table = &[
    ("TIME", Time("at_ms")), ("EVENT", Text("kind")), ("DETAIL", Fit("detail", 80)),
];

fn render_order(v: &Value) -> String {
    let o = &v["order"];
    let mut out = fields(
        o,
        "order {id}  user {uid}  {product_name} ({credits} credits)  {amount_fen:yuan} yuan by \
         {channel} {method}  status {status}\ncreated {created_at_ms:time}  paid {credited_at_ms:time}  \
         provider trade no {provider_trade_no}\n\nhistory:\n",
    );
    out.push_str(&table_of(rows_of(&v["events"]), EVENT_COLUMNS));
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
    let mut columns: Vec<(String, Cell)> = vec![
        ("DAY".into(), Text("date")),
        ("ACTIVE".into(), Text("active_users")),
        ("NEW USERS".into(), Text("new_users")),
        ("MESSAGES".into(), Text("messages_total")),
    ];
    for p in &platforms {
        columns.push((p.to_uppercase(), Sum("messages", Some(p))));
    }
    columns.extend(
        [
            ("PROMPT TOK", Sum("prompt_tokens", None)),
            ("ANSWER TOK", Sum("completion_tokens", None)),
            ("CREDITS", Text("credits_charged")),
            ("GRANTED", Text("credits_granted")),
            ("LLM COST ¥", Yuan("llm_cost_fen")),
            ("ORDERS", Text("orders_paid")),
            ("REVENUE ¥", Yuan("revenue_fen")),
            ("REFUNDS ¥", Yuan("refunds_fen")),
            ("CODES", Text("codes_redeemed")),
            ("CODE CREDITS", Text("code_credits")),
            ("PLANS SOLD", Text("plans_sold")),
            ("PLANS ¥", Yuan("plan_sales_fen")),
            ("BY METHOD ¥", With(by_method)),
        ]
        .map(|(h, c)| (h.to_owned(), c)),
    );
    table_of(rows_of(v), &columns)
}

/// A day's revenue by payment method: `h5 2.00, native 1.00`.
fn by_method(day: &Value) -> String {
    day["revenue_by_method"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k} {}", yuan(v)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// A zsxq group's state: an expired token first, it stops everything.
fn zsxq_state(g: &Value) -> String {
    if g["token_expired"].as_bool() == Some(true) {
        "TOKEN EXPIRED".to_owned()
    } else {
        flag(g, "paused", "paused", "polling")
    }
}

#[rustfmt::skip]
const ZSXQ_COLUMNS: Table = &[
    ("ID", Text("id")), ("GROUP", Text("group_id")), ("STATE", With(zsxq_state)),
    ("LAST POLL", Time("last_poll_ms")), ("TODAY", Text("answered_today")), ("SINCE START", Text("answered_since_start")),
    ("PAYER UID", Text("payer_uid")), ("LAST ERROR", Fit("last_error", 50)),
];

#[rustfmt::skip]
const HIT_COLUMNS: Table = &[
    ("TIME", Time("at_ms")), ("UID", Text("uid")), ("SCOPE", Text("scope")), ("DIR", Text("direction")),
    ("RULE", Text("rule")), ("WORD", Fit("word", 16)), ("EXCERPT", Fit("excerpt", 60)),
];

/// What the error rate and latency of an upstream look like.
fn error_rate(u: &Value) -> String {
    format!(
        "{:.0}%",
        u["recent_error_rate"].as_f64().unwrap_or(0.0) * 100.0
    )
}

fn latency(u: &Value) -> String {
    u["latency_ms"]
        .as_u64()
        .map_or_else(String::new, |ms| format!("{ms} ms"))
}

#[rustfmt::skip]
const UPSTREAM_COLUMNS: Table = &[
    ("UPSTREAM", Text("id")), ("STATE", Text("state")), ("REQUESTS", Text("requests_total")), ("ERRORS", Text("errors_total")),
    ("RECENT ERR", With(error_rate)), ("LATENCY", With(latency)),
    ("LAST ERROR AT", Time("last_error_at_ms")), ("LAST ERROR", Fit("last_error", 60)),
];

fn render_upstreams(v: &Value) -> String {
    if rows_of(v).is_empty() {
        return "no upstreams (the offline demo answers)".to_owned();
    }
    table_of(rows_of(v), UPSTREAM_COLUMNS)
}

/// The version and uptime, then the configuration (redacted by the daemon) as JSON.
fn render_config(v: &Value) -> String {
    let secs = v["uptime_secs"].as_u64().unwrap_or(0);
    format!(
        "chatrelay {}
up {}d {}h {}m (since {}), configuration from {}, backups: {}
{}",
        text(&v["version"]),
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        time(&v["started_at_ms"]),
        v["file"].as_str().unwrap_or("(built-in defaults)"),
        if v["backup_supported"].as_bool() == Some(true) {
            "admin backup FILE"
        } else {
            "not by the daemon (PostgreSQL: pg_dump)"
        },
        pretty(&v["config"])
    )
}

fn render_reload(v: &Value) -> String {
    format!(
        "configuration reloaded from {}\napplied: {}\nneeds a restart (old values kept): {}",
        v["file"].as_str().unwrap_or("(built-in defaults)"),
        list(&v["applied"]),
        list(&v["restart_needed"])
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn usage_pages_end_with_their_total_and_the_next_cursor() {
        let record = |total: u64| {
            serde_json::json!({"at_ms": 0, "platform": "mp", "model": "deepseek-chat",
                "prompt_tokens": 10, "completion_tokens": 5, "outcome": "answered", "ledger_seq": 3,
                "credits": {"free": total, "paid": 0, "plan": 0, "total": total}})
        };
        let page = serde_json::json!({"data": [record(2), record(3)], "next_before": "17-4"});
        let out = render_usage(&page);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(
            lines[0].starts_with("TIME") && lines[1].contains("deepseek-chat"),
            "{out}"
        );
        assert_eq!(lines[3], "2 answers, 5 credits; older: --before 17-4");
        assert_eq!(
            render_usage(&serde_json::json!({"data": [], "next_before": null})),
            "no usage records"
        );
    }

    #[test]
    fn config_shows_version_uptime_and_the_redacted_config() {
        let v = json!({
            "version": "0.1.0 (commit abc, built 2026-12-07)", "uptime_secs": 90_061,
            "started_at_ms": 0, "file": "/etc/chatrelay.toml", "backup_supported": false,
            "config": {"server": {"admin_token": "***"}}
        });
        let out = render_config(&v);
        assert!(out.starts_with("chatrelay 0.1.0 (commit abc"), "{out}");
        assert!(out.contains("up 1d 1h 1m"), "{out}");
        assert!(
            out.contains("pg_dump") && out.contains("\"admin_token\": \"***\""),
            "{out}"
        );
    }

    #[test]
    fn stats_table_has_a_column_per_platform() {
        let v = json!([{
            "date": "2026-11-27", "active_users": 3, "messages_total": 5,
            "messages": {"mp": {"answered": 4}, "tg": {"answered": 1}},
            "prompt_tokens": {"m": 10}, "completion_tokens": {"m": 20},
            "credits_charged": 7, "llm_cost_fen": 150, "orders_paid": 1,
            "revenue_fen": 990, "refunds_fen": 0, "new_users": 2, "credits_granted": 345,
            "revenue_by_method": {"h5": 900, "native": 90}
        }]);
        let t = render_stats(&v);
        assert!(t.contains("NEW USERS") && t.contains("GRANTED"), "{t}");
        assert!(t.contains("h5 9.00, native 0.90"), "{t}");
        assert!(t.contains("345"), "{t}");
        assert!(t.lines().next().unwrap().contains("MP  TG"), "{t}");
        assert!(t.contains("2026-11-27"), "{t}");
        assert!(t.contains("9.90"), "{t}");
        assert!(t.contains("1.50"), "{t}");
    }

    #[test]
    fn change_log_pages_end_with_their_count_and_the_next_cursor() {
        let page = serde_json::json!({"changes": [{
            "at_ms": 1_764_000_000_000i64, "actor": "console", "address": "203.0.113.7",
            "method": "POST", "path": "/admin/users/7/grant", "status": 200,
            "reason": "ticket 42", "summary": {"credits": 5},
        }], "next": "1764000000000-9"});
        let out = render_changes(&page);
        for part in [
            "console",
            "203.0.113.7",
            "/admin/users/7/grant",
            "ticket 42",
            "\"credits\":5",
        ] {
            assert!(out.contains(part), "{part} in {out}");
        }
        assert!(
            out.ends_with("1 changes; older: --before 1764000000000-9"),
            "{out}"
        );
        assert_eq!(
            render_changes(&serde_json::json!({"changes": [], "next": null})),
            "no changes recorded"
        );
    }
}
