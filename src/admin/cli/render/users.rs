//! How the admin CLI shows users, their tokens, ledger and usage, the change log and the
//! ledger audit.

use std::fmt::Write as _;

use serde_json::Value;

use super::table::*;

pub(super) fn render_link(v: &Value) -> String {
    match v["previous_uid"].as_u64() {
        Some(p) => format!(
            "{} linked to user {} (was user {p})",
            text(&v["key"]),
            v["uid"]
        ),
        None => format!("{} linked to user {}", text(&v["key"]), v["uid"]),
    }
}

/// The first columns of a user's row: uid, name, available and paid credits, then `more`.
pub(super) fn user_columns(
    more: &[(&'static str, Cell<'static>)],
) -> Vec<(&'static str, Cell<'static>)> {
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
pub(super) fn identities_cell(u: &Value) -> String {
    fit(
        &u["identities"]
            .as_array()
            .map(|a| a.iter().map(text).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        60,
    )
}

pub(super) fn render_user_page(v: &Value) -> String {
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

pub(super) fn render_users(v: &Value) -> String {
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
pub(super) const TOKEN_COLUMNS: Table = &[
    ("HASH", With(|t| format!("{}…", text(&t["hash_prefix"])))), ("LABEL", Fit("label", 20)),
    ("CREATED", Time("created_at_ms")), ("EXPIRES", Time("expires_at_ms")),
    ("STATE", With(|t| flag(t, "revoked", "revoked", "live"))),
];

pub(super) fn render_user(v: &Value) -> String {
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
pub(super) const LEDGER_COLUMNS: Table = &[
    ("SEQ", Text("seq")), ("TIME", Time("at_ms")), ("KIND", Text("kind")),
    ("FREE", Text("free_delta")), ("PAID", Text("paid_delta")), ("PAID AFTER", Text("paid_after")),
    ("REASON", Fit("reason", 30)), ("REFERENCE", Fit("reference", 30)),
];

#[rustfmt::skip]
pub(super) const USAGE_COLUMNS: Table = &[
    ("TIME", Time("at_ms")), ("PLATFORM", Text("platform")), ("MODEL", Fit("model", 24)),
    ("PROMPT", Text("prompt_tokens")), ("COMPLETION", Text("completion_tokens")),
    ("FREE", With(|r| text(&r["credits"]["free"]))), ("PAID", With(|r| text(&r["credits"]["paid"]))),
    ("PLAN", With(|r| text(&r["credits"]["plan"]))), ("TOTAL", With(|r| text(&r["credits"]["total"]))),
    ("OUTCOME", Text("outcome")), ("LEDGER", Text("ledger_seq")),
];

/// A page of the usage log, and how to get the next.
pub(super) fn render_usage(v: &Value) -> String {
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

pub(super) fn render_ledger(v: &Value) -> String {
    table_of(rows_of(v), LEDGER_COLUMNS)
}

pub(super) fn render_entry(v: &Value) -> String {
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
pub(super) const CHANGE_COLUMNS: Table = &[
    ("TIME", Time("at_ms")), ("WHO", Text("actor")), ("ADDRESS", Text("address")),
    ("METHOD", Text("method")), ("PATH", Fit("path", 40)), ("STATUS", Text("status")),
    ("REASON", Fit("reason", 30)), ("SUMMARY", With(|r| r["summary"].to_string())),
];

/// A page of the change log, and how to get the next.
pub(super) fn render_changes(v: &Value) -> String {
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

pub(super) fn render_audit(v: &Value) -> String {
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
