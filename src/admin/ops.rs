//! Operations: per-day figures, the ledger audit, backups, configuration reloads, the
//! running configuration (secrets redacted) with the version and uptime, content-rule hits
//! and LLM upstream health.

use axum::Json;
use axum::extract::Query;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chatrelay_storage::{BackupSummary, StoreError};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use super::common::{AdminError, Answer, Result, St, blocking, parse_day};
use crate::util::now_ms;

/// `GET /admin/stats`.
#[derive(Deserialize)]
pub struct StatsQuery {
    /// First day, `YYYY-MM-DD` (default: `days` before `to`).
    from: Option<String>,
    /// Last day, `YYYY-MM-DD` (default: today).
    to: Option<String>,
    /// How many days up to `to` when `from` is not given (default 7).
    days: Option<u32>,
}

/// Per-day figures: active users, messages by platform, tokens, LLM cost, revenue.
pub async fn stats(st: St, Query(q): Query<StatsQuery>) -> Answer {
    let s = st.engine.settings();
    let to = parse_day("to", &q.to)?.unwrap_or_else(|| s.today());
    let from = match parse_day("from", &q.from)? {
        Some(f) => f,
        None => to - i64::from(q.days.unwrap_or(7).clamp(1, 366)) + 1,
    };
    if from > to || to - from > 366 {
        return Err(AdminError::bad_request(
            "give at most 366 days, from before to",
        ));
    }
    let store = st.engine.store();
    // What is still in memory belongs in the figures.
    st.engine.stats().flush(store).await?;
    let days: Vec<i64> = (from..=to).collect();
    let report = crate::stats::report(store, &days, &s.models, s.tz_offset_secs).await?;
    Ok(Json(json!(report)))
}

/// Checks that every user's ledger sums to their balance.
pub async fn audit(st: St) -> Answer {
    let report = st.engine.store().audit().await?;
    Ok(Json(json!(report)))
}

/// `GET /admin/hits`.
#[derive(Deserialize)]
pub struct HitsQuery {
    limit: Option<usize>,
    uid: Option<u64>,
}

/// Content-rule hits, newest first: who, where, which rule, what.
pub async fn content_hits(st: St, Query(q): Query<HitsQuery>) -> Answer {
    let limit = q.limit.unwrap_or(50).clamp(1, 10_000);
    let hits: Vec<Value> = st
        .engine
        .store()
        .checkpoints_with_prefix(crate::engine::HIT_PREFIX)
        .await?
        .into_iter()
        .rev()
        .filter_map(|(_, v)| serde_json::from_str::<Value>(&v).ok())
        .filter(|v| q.uid.is_none_or(|u| v["uid"].as_u64() == Some(u)))
        .take(limit)
        .collect();
    Ok(Json(json!(hits)))
}

/// Each LLM upstream's health: requests, errors, latency, state.
pub async fn upstreams(st: St) -> Answer {
    Ok(Json(json!(st.engine.llm().health())))
}

/// Reads the configuration file again and applies it (like SIGHUP). An invalid file is
/// refused with every problem listed, and the running configuration stays.
pub async fn reload(st: St) -> Response {
    let (error, problems) = match st.live.reload().await {
        Ok(report) => return Json(json!(report)).into_response(),
        Err(crate::reload::ReloadError::Invalid(e)) => (
            "the new configuration is invalid; the running one stays",
            e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ),
        Err(e) => (
            "the new configuration cannot be applied; the running one stays",
            vec![e.to_string()],
        ),
    };
    let body = json!({"error": error, "problems": problems});
    (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
}

/// `GET /admin/config`: the running configuration with every secret as `"***"`, the
/// version, the uptime, the file it was read from, and whether `GET /admin/backup` works
/// with this store (the embedded one only).
pub async fn running_config(st: St) -> Answer {
    let parts = st.parts();
    let now = now_ms();
    Ok(Json(json!({
        "version": crate::LONG_VERSION,
        "started_at_ms": st.started_at_ms,
        "uptime_secs": now.saturating_sub(st.started_at_ms).max(0) / 1000,
        "file": st.live.source(),
        "storage_backend": parts.config.storage.backend,
        "backup_supported":
            parts.config.storage.backend == crate::config::StorageBackend::Sled,
        "config": redacted(&parts.config)?,
    })))
}

/// The configuration as JSON through its own `Serialize`, where every [`Secret`] is written
/// as `"***"` (`""` when unset): no secret is copied out by hand, so none can be forgotten.
///
/// [`Secret`]: crate::config::Secret
fn redacted(config: &crate::config::Config) -> Result<Value> {
    serde_json::to_value(config)
        .map_err(|e| AdminError::internal(format!("cannot show the configuration: {e}")))
}

/// Streams a consistent snapshot of the database: it is written to a temporary file (writers
/// wait only the instant the snapshot starts, see `KvStore::export_backup`), then sent. On
/// PostgreSQL the answer is `501` with the store's words (it is backed up with `pg_dump`).
pub async fn backup(st: St) -> Result<Response> {
    let store = st.engine.store().clone();
    refuse_unless_embedded(&store)?;
    let dir = st.parts().config.storage.path.join("backups");
    let path = dir.join(format!("backup-{}.tmp", crate::util::random_id()));
    let tmp = path.clone();
    let summary = blocking(move || write_backup(&store, &dir, &tmp)).await?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| AdminError::internal(e.to_string()))?;
    // The open file keeps its data; the name can go now.
    let _ = tokio::fs::remove_file(&path).await;
    info!(
        records = summary.records,
        bytes = summary.bytes,
        "admin: backup taken"
    );
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if let Ok(v) = HeaderValue::from_str(&summary.records.to_string()) {
        h.insert("x-backup-records", v);
    }
    Ok(res)
}

/// `501` with the store's words (back it up with `pg_dump`) unless the store is the
/// embedded one: asked before anything is made under `storage.path`.
fn refuse_unless_embedded(store: &chatrelay_storage::Store) -> Result<()> {
    if store.kv().is_none() {
        // The relational store refuses at once (`Unsupported`), writing nothing.
        store.export_backup(&mut std::io::sink(), now_ms())?;
    }
    Ok(())
}

/// Writes the snapshot to `tmp` in `dir`; a failed export leaves nothing behind.
fn write_backup(
    store: &chatrelay_storage::Store,
    dir: &std::path::Path,
    tmp: &std::path::Path,
) -> Result<BackupSummary> {
    let failed = |e: &dyn std::fmt::Display| AdminError::internal(format!("backup failed: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| failed(&e))?;
    let file = std::fs::File::create(tmp).map_err(|e| failed(&e))?;
    let mut out = std::io::BufWriter::new(file);
    let written = match store.export_backup(&mut out, now_ms()) {
        // Not for this store (PostgreSQL): the store's own words, and its status.
        Err(e @ StoreError::Unsupported(_)) => Err(AdminError::from(e)),
        Err(e) => Err(failed(&e)),
        Ok(summary) => std::io::Write::flush(&mut out)
            .map(|()| summary)
            .map_err(|e| failed(&e)),
    };
    if written.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every secret a configuration can hold, each with a value found nowhere else.
    const SECRETS: &[&str] = &[
        "ADMINTOKEN-s3cr3t-0001",
        "UPSTREAMKEY-s3cr3t-0002",
        "UPSTREAMKEY-s3cr3t-0003",
        "HEADER-s3cr3t-0004",
        "MPTOKEN-s3cr3t-0005",
        "MPAPPSECRET-s3cr3t-0006",
        "WEBHOOK-s3cr3t-0007",
        "ZSXQTOKEN-s3cr3t-0008",
        "TGTOKEN-s3cr3t-0009",
        "TGHOOK-s3cr3t-0010",
    ];

    #[tokio::test]
    async fn a_postgresql_store_is_not_backed_up_here() {
        // The embedded store streams its snapshot (what it writes: test_backup.py).
        let sled = chatrelay_storage::Store::open_temporary().unwrap();
        assert!(refuse_unless_embedded(&sled).is_ok());
        let Some(opts) = chatrelay_storage::test_pg_options() else {
            eprintln!("skipped (PostgreSQL part): CHATRELAY_TEST_PG_URL is not set");
            return;
        };
        let pg = chatrelay_storage::Store::open_postgres(&opts)
            .await
            .unwrap();
        let Err(AdminError(status, message)) = refuse_unless_embedded(&pg) else {
            panic!("a PostgreSQL store was offered a backup");
        };
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
        assert!(message.contains("pg_dump"), "{message}");
        // What the client sees: `{"error": ...}` with that status.
        let res = AdminError(status, message).into_response();
        assert_eq!(res.status(), StatusCode::NOT_IMPLEMENTED);
        let body = axum::body::to_bytes(res.into_body(), 4096).await.unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("pg_dump"), "{v}");
    }

    #[test]
    fn the_running_configuration_shows_no_secret() {
        let aes = "A".repeat(43);
        let text = format!(
            r#"
[server]
admin_token = "{}"

[llm]
base_url = "http://127.0.0.1:9/v1"
api_keys = ["{}"]

[[llm.upstreams]]
id = "second"
base_url = "http://127.0.0.1:9/v2"
api_keys = ["{}"]
headers = {{ X-Org = "{}" }}

[[wechat_mp]]
id = "m"
app_id = "wx1234567890abcdef"
token = "{}"
app_secret = "{}"
encoding_aes_key = "{aes}"

[[wecom_robot]]
id = "ops"
webhook = "{}"

[[zsxq]]
id = "z"
group_id = "123"
access_token = "{}"

[[telegram]]
id = "t"
token = "{}"
mode = "webhook"
webhook_secret = "{}"
"#,
            SECRETS[0],
            SECRETS[1],
            SECRETS[2],
            SECRETS[3],
            SECRETS[4],
            SECRETS[5],
            SECRETS[6],
            SECRETS[7],
            SECRETS[8],
            SECRETS[9]
        );
        let (config, _) = crate::config::parse(&text, &[], None).unwrap();
        assert_eq!(
            config.wechat_mp[0].token.expose(),
            SECRETS[4],
            "the test reads its secrets"
        );
        let shown = redacted(&config).unwrap().to_string();
        for secret in SECRETS.iter().copied().chain([aes.as_str()]) {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert!(shown.contains("***"), "{shown}");
        // What is not secret is shown.
        assert!(shown.contains("wx1234567890abcdef"), "{shown}");
        assert!(shown.contains("http://127.0.0.1:9/v1"), "{shown}");
    }
}
