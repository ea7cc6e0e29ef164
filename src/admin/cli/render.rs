//! The admin CLI's output for people: tables and short summaries of the API's JSON, one
//! renderer per command ([`human`]); `--json` prints the JSON itself ([`pretty`]).

use std::fmt::Write as _;

use serde_json::Value;

use super::commands::{AdminCommand, OrderCommand, TokenCommand, UserCommand, ZsxqCommand};

/// Renders an API answer for a person.
pub type Render = fn(&Value) -> String;

/// How to show `command`'s answer to a person.
#[must_use]
pub fn human(command: &AdminCommand) -> Render {
    match command {
        AdminCommand::User(c) => match c {
            UserCommand::List { .. } => render_user_page,
            UserCommand::Find { .. } => render_users,
            UserCommand::Create { .. } => |v| v["uid"].to_string(),
            UserCommand::Show { .. } => render_user,
            UserCommand::Ban { .. } => {
                |v| format!("user {} banned: {}", v["uid"], text(&v["ban_reason"]))
            }
            UserCommand::Unban { .. } => |v| format!("user {} unbanned", v["uid"]),
            UserCommand::Link { .. } => render_link,
            UserCommand::Group { .. } => render_groups,
            UserCommand::Unlink { .. } => {
                |v| format!("{} unlinked from user {}", text(&v["key"]), v["uid"])
            }
        },
        AdminCommand::Grant { .. } | AdminCommand::Revoke { .. } => render_entry,
        AdminCommand::Token(TokenCommand::Create { .. }) => |v| text(&v["token"]),
        AdminCommand::Token(TokenCommand::Revoke { .. }) => |_| "revoked".to_owned(),
        AdminCommand::Audit => render_audit,
        AdminCommand::Order(c) => match c {
            OrderCommand::List { .. } => render_orders,
            OrderCommand::Export { .. } => {
                |v| format!("{} orders written to {}", v["orders"], text(&v["file"]))
            }
            OrderCommand::Show { .. } => render_order,
            OrderCommand::Refund { .. } => render_refund,
        },
        AdminCommand::Stats { .. } => render_stats,
        AdminCommand::Zsxq(c) => match c {
            ZsxqCommand::List => render_zsxq,
            ZsxqCommand::Pause { .. } => |_| "paused".to_owned(),
            ZsxqCommand::Resume { .. } => |_| "resumed".to_owned(),
            ZsxqCommand::Token { .. } => |_| "token replaced; polling resumes".to_owned(),
        },
        AdminCommand::Hits { .. } => render_hits,
        AdminCommand::Upstreams => render_upstreams,
        AdminCommand::Reload => render_reload,
        AdminCommand::Backup { .. } => |v| text(&v["summary"]),
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

fn render_groups(v: &Value) -> String {
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
