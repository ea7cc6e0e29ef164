//! The admin API's change log on PostgreSQL, as `admin_log.rs` on sled: table
//! `admin_changes`, keyed `(at_ms, id)` (the id from the table's identity), each record cut
//! to at most 2 KB by [`ChangeRecord`]'s own bounds before it is written, its summary a
//! `jsonb` an operator can query. A page newest first is one keyset query on the primary key;
//! a purge one bounded DELETE of the oldest rows.

use tokio_postgres::Row;
use tokio_postgres::types::Type;

use super::{RelStore, col, credits, one};
use crate::{ChangeCursor, ChangePage, ChangeRecord, MAX_CHANGE_PAGE, StoreError};

const CHANGE_COLS: &str =
    "at_ms, id, actor, address, method, path, status, reason, summary::text AS summary";

impl RelStore {
    /// Records a change (its `at_ms` kept, at least 0; its `id` assigned) and returns it as
    /// stored (cut to `MAX_CHANGE_BYTES`). One statement.
    pub(crate) async fn record_change(
        &self,
        change: ChangeRecord,
    ) -> Result<ChangeRecord, StoreError> {
        let mut change = storable(change.bounded());
        let summary = serde_json::to_string(&change.summary)
            .map_err(|e| StoreError::InvalidInput(format!("summary: {e}")))?;
        let status = i32::from(change.status);
        let rows = self
            .rows(
                "INSERT INTO admin_changes (at_ms, actor, address, method, path, status, reason,
                                            summary)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb) RETURNING id",
                &[
                    (&change.at_ms, Type::INT8),
                    (&change.actor, Type::TEXT),
                    (&change.address, Type::TEXT),
                    (&change.method, Type::TEXT),
                    (&change.path, Type::TEXT),
                    (&status, Type::INT4),
                    (&change.reason, Type::TEXT),
                    (&summary, Type::TEXT),
                ],
            )
            .await?;
        let id: i64 = col(one(&rows)?, "id")?;
        change.id = credits(id, "admin_changes", || id.to_string())?;
        Ok(change)
    }

    /// A page of the change log, newest first: at most `limit` records (clamped to 1 ..=
    /// [`MAX_CHANGE_PAGE`]) strictly before `before` (all, when `None`).
    pub(crate) async fn changes(
        &self,
        before: Option<ChangeCursor>,
        limit: usize,
    ) -> Result<ChangePage, StoreError> {
        let limit = limit.clamp(1, MAX_CHANGE_PAGE);
        let (at, id) = match before {
            Some(c) => (c.at_ms, i64::try_from(c.id).unwrap_or(i64::MAX)),
            None => (i64::MAX, i64::MAX),
        };
        let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {CHANGE_COLS} FROM admin_changes WHERE (at_ms, id) < ($1, $2)
             ORDER BY at_ms DESC, id DESC LIMIT $3"
        );
        let rows = self
            .rows(
                &sql,
                &[(&at, Type::INT8), (&id, Type::INT8), (&fetch, Type::INT8)],
            )
            .await?;
        let more = rows.len() > limit;
        let records = rows
            .iter()
            .take(limit)
            .map(change_from)
            .collect::<Result<Vec<_>, _>>()?;
        let next = if more {
            records.last().map(ChangeRecord::cursor)
        } else {
            None
        };
        Ok(ChangePage { records, next })
    }

    /// Removes at most `max` of the oldest records made before `before_ms`; how many it
    /// removed. One statement.
    pub(crate) async fn purge_changes(
        &self,
        before_ms: i64,
        max: usize,
    ) -> Result<usize, StoreError> {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = self
            .rows(
                "WITH old AS (SELECT at_ms, id FROM admin_changes WHERE at_ms < $1
                              ORDER BY at_ms, id LIMIT $2),
                      d AS (DELETE FROM admin_changes c USING old
                            WHERE c.at_ms = old.at_ms AND c.id = old.id RETURNING 1)
                 SELECT count(*) AS n FROM d",
                &[(&before_ms, Type::INT8), (&max, Type::INT8)],
            )
            .await?;
        let n = usize::try_from(col::<i64>(one(&rows)?, "n")?).unwrap_or(0);
        if n > 0 {
            tracing::info!(removed = n, "purged old change log records");
        }
        Ok(n)
    }
}

/// `change` as the table holds it: its time at least 0, and each NUL as U+FFFD
/// (PostgreSQL's text and jsonb hold no NUL; sled's JSON does).
pub(crate) fn storable(mut change: ChangeRecord) -> ChangeRecord {
    change.at_ms = change.at_ms.max(0);
    for field in [
        &mut change.actor,
        &mut change.address,
        &mut change.method,
        &mut change.path,
    ] {
        no_nul(field);
    }
    if let Some(reason) = &mut change.reason {
        no_nul(reason);
    }
    no_nul_json(&mut change.summary);
    change
}

/// `s` with each NUL as U+FFFD.
fn no_nul(s: &mut String) {
    if s.contains('\0') {
        *s = s.replace('\0', "\u{fffd}");
    }
}

/// Every string (and key) of `v` with each NUL as U+FFFD.
fn no_nul_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => no_nul(s),
        serde_json::Value::Array(items) => items.iter_mut().for_each(no_nul_json),
        serde_json::Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(mut k, v)| {
                        no_nul(&mut k);
                        (k, v)
                    })
                    .collect();
            }
            map.values_mut().for_each(no_nul_json);
        }
        _ => {}
    }
}

/// A record from its columns ([`CHANGE_COLS`]).
fn change_from(row: &Row) -> Result<ChangeRecord, StoreError> {
    let at_ms: i64 = col(row, "at_ms")?;
    let id: i64 = col(row, "id")?;
    let key = || format!("{at_ms}/{id}");
    let summary: String = col(row, "summary")?;
    let status: i32 = col(row, "status")?;
    Ok(ChangeRecord {
        at_ms,
        id: credits(id, "admin_changes", key)?,
        actor: col(row, "actor")?,
        address: col(row, "address")?,
        method: col(row, "method")?,
        path: col(row, "path")?,
        status: u16::try_from(status)
            .map_err(|e| StoreError::corrupt("admin_changes", key(), e))?,
        reason: col(row, "reason")?,
        summary: serde_json::from_str(&summary)
            .map_err(|e| StoreError::corrupt("admin_changes", key(), e))?,
    })
}
