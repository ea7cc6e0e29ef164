//! The renderers' tests: what a person sees for each answer.

use super::ops::*;
use super::table::*;
use super::users::*;
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
