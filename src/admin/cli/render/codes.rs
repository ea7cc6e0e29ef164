//! How the admin CLI shows redemption codes: new batches (as text or the CSV card shops
//! import), batches and their codes.

use std::fmt::Write as _;

use serde_json::Value;

use super::table::*;

// --- redemption codes ---

/// One CSV line (RFC 4180 quoting where needed).
pub(super) fn csv_line(cells: &[String]) -> String {
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
pub(super) fn grant_text(b: &Value) -> String {
    match b["plan"].as_str() {
        Some(plan) => format!("plan:{plan}"),
        None => text(&b["credits"]),
    }
}

/// What a batch's codes grant, in words: `50 credits`, `plan month (30 days)`.
pub(super) fn grant_words(b: &Value) -> String {
    match b["plan"].as_str() {
        Some(plan) => format!("plan {plan} ({} days)", text(&b["plan_days"])),
        None => format!("{} credits", text(&b["credits"])),
    }
}

/// A new batch's codes as a card shop imports them: `code,credits,expires_at,batch`.
pub(super) fn render_new_codes_csv(v: &Value) -> String {
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
pub(super) fn render_new_codes(v: &Value) -> String {
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
pub(super) const BATCH_COLUMNS: Table = &[
    ("BATCH", Text("id")), ("COUNT", Text("count")), ("GRANT", With(grant_text)),
    ("CREATED", Time("created_at_ms")), ("EXPIRES", Time("expires_at_ms")), ("REVOKED", Time("revoked_at_ms")),
    ("NOTE", Fit("note", 30)),
];

#[rustfmt::skip]
pub(super) const CODE_COLUMNS: Table = &[
    ("CODE", Text("id")), ("STATUS", Text("status")), ("UID", Text("uid")), ("USED", Time("used_at_ms")),
];

/// One batch and its codes.
pub(super) fn render_codes(v: &Value) -> String {
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
pub(super) fn render_codes_csv(v: &Value) -> String {
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
pub(super) fn render_batches_csv(v: &Value) -> String {
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
