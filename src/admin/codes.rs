//! Redemption codes: make a batch (its codes are shown in this answer only), list batches and
//! their codes, revoke a batch's unused codes.

use axum::Json;
use axum::extract::{Path, Query};
use chatrelay_storage::{CodeBatch, CodeGrant, CodeRecord, CodeState, MAX_CODES_PER_BATCH};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use super::common::{AdminError, Answer, Body, Result, St};
use crate::util::now_ms;

/// `POST /admin/codes`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBatch {
    count: u32,
    /// Paid credits each code grants.
    credits: Option<u64>,
    /// A membership plan (`[[plans]]` id) each code grants, as configured now.
    plan: Option<String>,
    /// When the codes stop working: Unix seconds, RFC 3339, or `YYYY-MM-DD` (the end of that
    /// day in the quota timezone).
    expires_at: Option<Value>,
    /// What the batch is for (the shop, the campaign).
    note: Option<String>,
}

/// `GET /admin/codes`.
#[derive(Deserialize)]
pub struct CodesQuery {
    /// One batch with its codes (without: the newest batches).
    batch: Option<u64>,
    /// Batches listed at most (default 100).
    limit: Option<usize>,
}

/// Makes a batch and answers with its codes, which are not stored and never shown again.
pub async fn create_batch(st: St, Body(req): Body<NewBatch>) -> Answer {
    let tz = st.engine.settings().tz_offset_secs;
    let grant = match (req.credits, req.plan.as_deref().map(str::trim)) {
        (Some(_), Some(_)) => {
            return Err(AdminError::bad_request(
                "give credits or a plan per code, not both",
            ));
        }
        (None, Some(id)) => match st.engine.settings().plan(id) {
            Some(plan) => CodeGrant::of_plan(&plan.grant(tz)),
            None => {
                let known: Vec<String> = st
                    .engine
                    .settings()
                    .plans
                    .iter()
                    .map(|p| p.id.clone())
                    .collect();
                return Err(AdminError::bad_request(format!(
                    "plan {id:?} is not one of [[plans]] ({})",
                    if known.is_empty() {
                        "none configured".to_owned()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        },
        (Some(0), None) => return Err(AdminError::bad_request("credits must be at least 1")),
        (Some(credits), None) => CodeGrant::Credits { credits },
        (None, None) => return Err(AdminError::bad_request("give credits or a plan (per code)")),
    };
    if req.count == 0 || req.count > MAX_CODES_PER_BATCH {
        return Err(AdminError::bad_request(format!(
            "count must be 1 to {MAX_CODES_PER_BATCH}"
        )));
    }
    let now = now_ms();
    let expires_at_ms = match &req.expires_at {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_expiry(v, tz)?),
    };
    if expires_at_ms.is_some_and(|e| e <= now) {
        return Err(AdminError::bad_request("expires_at is in the past"));
    }
    let note = req.note.unwrap_or_default().trim().to_owned();
    if note.chars().count() > 200 {
        return Err(AdminError::bad_request("note: at most 200 characters"));
    }
    let store = st.engine.store();
    let (batch, codes) = store
        .create_code_batch(grant, req.count, expires_at_ms, &note, now)
        .await?;
    store.flush().await?;
    info!(
        batch = batch.id,
        count = batch.count,
        "admin: code batch created"
    );
    let codes: Vec<Value> = codes
        .iter()
        .enumerate()
        .map(|(i, code)| {
            let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
            json!({"id": chatrelay_storage::code_id(batch.id, n), "code": code})
        })
        .collect();
    Ok(Json(
        json!({"batch": batch_json(&batch, tz, None), "codes": codes}),
    ))
}

/// One batch with its codes, or the newest batches with their tallies.
pub async fn list_codes(st: St, Query(q): Query<CodesQuery>) -> Answer {
    let tz = st.engine.settings().tz_offset_secs;
    let store = st.engine.store();
    let now = now_ms();
    if let Some(id) = q.batch {
        let Some(batch) = store.code_batch(id).await? else {
            return Err(AdminError::not_found(format!("no code batch {id}")));
        };
        let codes = store.batch_codes(id).await?;
        let list: Vec<Value> = codes
            .iter()
            .map(|c| code_json(c, &batch, tz, now))
            .collect();
        return Ok(Json(json!({
            "batch": batch_json(&batch, tz, Some(tally(&codes, &batch, now))),
            "codes": list,
        })));
    }
    let limit = q.limit.unwrap_or(100).min(10_000);
    let mut batches = Vec::new();
    for batch in store.code_batches(limit).await? {
        let codes = store.batch_codes(batch.id).await?;
        batches.push((batch, codes));
    }
    let list: Vec<Value> = batches
        .iter()
        .map(|(b, codes)| batch_json(b, tz, Some(tally(codes, b, now))))
        .collect();
    Ok(Json(json!(list)))
}

/// Revokes a batch's unused codes (used ones stay used).
pub async fn revoke_batch(st: St, Path(id): Path<String>) -> Answer {
    let id: u64 = id
        .parse()
        .map_err(|_| AdminError::bad_request(format!("{id:?} is not a batch id")))?;
    let store = st.engine.store();
    let revoked = store
        .revoke_code_batch(id, now_ms())
        .await?
        .ok_or_else(|| AdminError::not_found(format!("no code batch {id}")))?;
    store.flush().await?;
    info!(batch = id, revoked, "admin: code batch revoked");
    Ok(Json(json!({"batch": id, "revoked": revoked})))
}

/// Unix seconds, RFC 3339, or `YYYY-MM-DD` (the end of that day: the next day's start, in the
/// quota timezone) as ms since the epoch.
fn parse_expiry(v: &Value, tz: i32) -> Result<i64> {
    let bad = || {
        AdminError::bad_request(
            "expires_at: give Unix seconds, an RFC 3339 time or a date like 2026-12-31",
        )
    };
    if let Some(secs) = v.as_i64() {
        return secs.checked_mul(1000).ok_or_else(bad);
    }
    let s = v.as_str().ok_or_else(bad)?.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    let day = crate::stats::day_of(s).ok_or_else(bad)?;
    Ok((day + 1) * 86_400_000 - i64::from(tz) * 1000)
}

/// A time in the quota timezone, RFC 3339.
fn rfc3339(ms: Option<i64>, tz: i32) -> Value {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .zip(chrono::FixedOffset::east_opt(tz))
        .map_or(Value::Null, |(t, z)| {
            json!(
                t.with_timezone(&z)
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        })
}

/// How many codes of a batch stand where.
fn tally(codes: &[CodeRecord], batch: &CodeBatch, now: i64) -> Value {
    let mut t = std::collections::BTreeMap::from([
        ("unused", 0u64),
        ("used", 0),
        ("revoked", 0),
        ("expired", 0),
    ]);
    for c in codes {
        *t.entry(status(c, batch, now)).or_default() += 1;
    }
    json!(t)
}

/// `unused`, `used`, `revoked`, or `expired` (unused in an expired batch).
fn status(c: &CodeRecord, batch: &CodeBatch, now: i64) -> &'static str {
    match c.state {
        CodeState::Used { .. } => "used",
        CodeState::Revoked { .. } => "revoked",
        CodeState::Unused if batch.expires_at_ms.is_some_and(|e| e <= now) => "expired",
        CodeState::Unused => "unused",
    }
}

fn batch_json(b: &CodeBatch, tz: i32, tally: Option<Value>) -> Value {
    let (credits, plan) = match &b.grant {
        CodeGrant::Credits { credits } => (Some(*credits), None),
        CodeGrant::Plan { plan, .. } => (None, Some(plan.clone())),
    };
    let plan_days = b.grant.plan_grant().map(|g| g.days);
    let mut v = json!({
        "id": b.id,
        "count": b.count,
        "credits": credits,
        "plan": plan,
        "plan_days": plan_days,
        "note": b.note,
        "created_at_ms": b.created_at_ms,
        "created_at": rfc3339(Some(b.created_at_ms), tz),
        "expires_at_ms": b.expires_at_ms,
        "expires_at": rfc3339(b.expires_at_ms, tz),
        "revoked_at_ms": b.revoked_at_ms,
    });
    if let (Some(t), Some(obj)) = (tally, v.as_object_mut()) {
        obj.insert("codes".into(), t);
    }
    v
}

fn code_json(c: &CodeRecord, batch: &CodeBatch, tz: i32, now: i64) -> Value {
    let (uid, used_at, revoked_at) = match &c.state {
        CodeState::Used { uid, at_ms } => (Some(uid.0), Some(*at_ms), None),
        CodeState::Revoked { at_ms } => (None, None, Some(*at_ms)),
        CodeState::Unused => (None, None, None),
    };
    json!({
        "id": c.id(),
        "status": status(c, batch, now),
        "uid": uid,
        "used_at_ms": used_at,
        "used_at": rfc3339(used_at, tz),
        "revoked_at_ms": revoked_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_read_in_three_forms() {
        let tz = 8 * 3600;
        assert_eq!(
            parse_expiry(&json!(1_800_000_000), tz).unwrap(),
            1_800_000_000_000
        );
        assert_eq!(
            parse_expiry(&json!("2026-01-01T00:00:00+08:00"), tz).unwrap(),
            parse_expiry(&json!("2025-12-31"), tz).unwrap(),
            "a date ends at midnight in the quota timezone"
        );
        assert!(parse_expiry(&json!("soon"), tz).is_err());
        assert!(parse_expiry(&json!(true), tz).is_err());
    }
}
