//! How the admin CLI shows orders and refunds, the per-day figures, zsxq groups, content-rule
//! hits, upstream health, the running configuration and a reload's result.

use serde_json::Value;

use super::table::*;

#[rustfmt::skip]
pub(super) const ORDER_COLUMNS: Table = &[
    ("ORDER", Text("id")), ("UID", Text("uid")), ("PRODUCT", Fit("product_name", 20)),
    ("CHANNEL", Text("channel")), ("YUAN", Yuan("amount_fen")), ("CREDITS", Text("credits")), ("STATUS", Text("status")),
    ("CREATED", Time("created_at_ms")), ("PAID", Time("credited_at_ms")),
];

pub(super) fn render_refund(v: &Value) -> String {
    format!(
        "order {} refunded; {} credits taken back",
        text(&v["order"]["id"]),
        v["debit"]["paid_delta"]
            .as_i64()
            .unwrap_or(0)
            .unsigned_abs()
    )
}

#[rustfmt::skip]
pub(super) const EVENT_COLUMNS: Table = &[
    ("TIME", Time("at_ms")), ("EVENT", Text("kind")), ("DETAIL", Fit("detail", 80)),
];

pub(super) fn render_order(v: &Value) -> String {
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

pub(super) fn render_stats(v: &Value) -> String {
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
pub(super) fn by_method(day: &Value) -> String {
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
pub(super) fn zsxq_state(g: &Value) -> String {
    if g["token_expired"].as_bool() == Some(true) {
        "TOKEN EXPIRED".to_owned()
    } else {
        flag(g, "paused", "paused", "polling")
    }
}

#[rustfmt::skip]
pub(super) const ZSXQ_COLUMNS: Table = &[
    ("ID", Text("id")), ("GROUP", Text("group_id")), ("STATE", With(zsxq_state)),
    ("LAST POLL", Time("last_poll_ms")), ("TODAY", Text("answered_today")), ("SINCE START", Text("answered_since_start")),
    ("PAYER UID", Text("payer_uid")), ("LAST ERROR", Fit("last_error", 50)),
];

#[rustfmt::skip]
pub(super) const HIT_COLUMNS: Table = &[
    ("TIME", Time("at_ms")), ("UID", Text("uid")), ("SCOPE", Text("scope")), ("DIR", Text("direction")),
    ("RULE", Text("rule")), ("WORD", Fit("word", 16)), ("EXCERPT", Fit("excerpt", 60)),
];

/// What the error rate and latency of an upstream look like.
pub(super) fn error_rate(u: &Value) -> String {
    format!(
        "{:.0}%",
        u["recent_error_rate"].as_f64().unwrap_or(0.0) * 100.0
    )
}

pub(super) fn latency(u: &Value) -> String {
    u["latency_ms"]
        .as_u64()
        .map_or_else(String::new, |ms| format!("{ms} ms"))
}

#[rustfmt::skip]
pub(super) const UPSTREAM_COLUMNS: Table = &[
    ("UPSTREAM", Text("id")), ("STATE", Text("state")), ("REQUESTS", Text("requests_total")), ("ERRORS", Text("errors_total")),
    ("RECENT ERR", With(error_rate)), ("LATENCY", With(latency)),
    ("LAST ERROR AT", Time("last_error_at_ms")), ("LAST ERROR", Fit("last_error", 60)),
];

pub(super) fn render_upstreams(v: &Value) -> String {
    if rows_of(v).is_empty() {
        return "no upstreams (the offline demo answers)".to_owned();
    }
    table_of(rows_of(v), UPSTREAM_COLUMNS)
}

/// The version and uptime, then the configuration (redacted by the daemon) as JSON.
pub(super) fn render_config(v: &Value) -> String {
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

pub(super) fn render_reload(v: &Value) -> String {
    format!(
        "configuration reloaded from {}\napplied: {}\nneeds a restart (old values kept): {}",
        v["file"].as_str().unwrap_or("(built-in defaults)"),
        list(&v["applied"]),
        list(&v["restart_needed"])
    )
}
