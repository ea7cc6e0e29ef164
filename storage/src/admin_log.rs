//! The change log of the admin API: one record per change made through `/admin` (console or
//! CLI): when, by which kind of caller, from which address, what (method, path, status, a
//! short redacted summary of the request) and why (the request's reason).
//!
//! Tree `admin_log`: key time (ms) ‖ id (be u64 each), so a page newest first is one reverse
//! range scan and the purge of old records one forward range scan. Each record is cut to at
//! most [`MAX_CHANGE_BYTES`] encoded, so the tree's size is bounded by its age limit (the
//! daemon purges records older than `[console] change_log_days`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::codec::{decode, encode, finish};
use crate::kv::Transactional;
use crate::{ADMIN_LOG, KvStore, StoreError};

/// The largest encoded record, in bytes: longer fields are cut to fit.
pub const MAX_CHANGE_BYTES: usize = 2048;

/// The most records one [`KvStore::changes`] page holds.
pub const MAX_CHANGE_PAGE: usize = 500;

/// Longest kept path, in characters.
const MAX_PATH: usize = 200;
/// Longest kept reason, in characters.
const MAX_REASON: usize = 500;
/// Longest kept address, in characters.
const MAX_ADDRESS: usize = 64;
/// Longest kept summary, in encoded bytes.
const MAX_SUMMARY: usize = 1000;

/// One change made through the admin API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// When it was answered, ms since the Unix epoch (part of the key).
    #[serde(skip)]
    pub at_ms: i64,
    /// Its id (part of the key; set by [`KvStore::record_change`]).
    #[serde(skip)]
    pub id: u64,
    /// Who: `console` (an operator's console session) or `token` (the admin token: the CLI
    /// or a script).
    pub actor: String,
    /// The client's address (the first untrusted one behind trusted proxies).
    pub address: String,
    /// The HTTP method.
    pub method: String,
    /// The path (without the query).
    pub path: String,
    /// The answer's status.
    pub status: u16,
    /// The request's `reason`, if it gave one.
    #[serde(default)]
    pub reason: Option<String>,
    /// The request's fields an operator may see (allow-listed by the caller: never a secret).
    #[serde(default)]
    pub summary: Value,
}

impl ChangeRecord {
    /// Where a page that ends with this record continues.
    #[must_use]
    pub fn cursor(&self) -> ChangeCursor {
        ChangeCursor {
            at_ms: self.at_ms,
            id: self.id,
        }
    }

    /// Cuts the free-form fields so the record encodes to at most [`MAX_CHANGE_BYTES`].
    pub(crate) fn bounded(mut self) -> Self {
        // The log is keyed by time from 0 (`change_key`): a record says the time it is filed at.
        self.at_ms = self.at_ms.max(0);
        self.actor = cut(&self.actor, 16);
        self.address = cut(&self.address, MAX_ADDRESS);
        self.method = cut(&self.method, 16);
        self.path = cut(&self.path, MAX_PATH);
        self.reason = self.reason.map(|r| cut(&r, MAX_REASON));
        let summary_len = serde_json::to_vec(&self.summary).map_or(usize::MAX, |v| v.len());
        if summary_len > MAX_SUMMARY {
            self.summary = serde_json::json!({"truncated": true});
        }
        // JSON escapes can at most sextuple a character (\u00XX); the cuts above keep the
        // worst case under the limit, and this last guard keeps it so whatever they miss.
        if encode(&self).map_or(usize::MAX, |v| v.len()) > MAX_CHANGE_BYTES {
            self.reason = self.reason.map(|r| cut(&r, 100));
            self.path = cut(&self.path, 100);
            self.summary = serde_json::json!({"truncated": true});
        }
        self
    }
}

/// The first `max` characters of `s`, with an ellipsis when cut.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A position in the change log (`AT_MS-ID`): records strictly before it (older) come next.
pub type ChangeCursor = crate::TimeCursor;

/// One page of the change log, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangePage {
    /// The records.
    pub records: Vec<ChangeRecord>,
    /// Where the next (older) page starts; `None` when there is none.
    pub next: Option<ChangeCursor>,
}

/// The key of a record: time ‖ id.
fn change_key(at_ms: i64, id: u64) -> [u8; 16] {
    crate::codec::pair_key(u64::try_from(at_ms).unwrap_or(0), id)
}

/// Records removed per transaction by [`KvStore::purge_changes`].
const PURGE_BATCH: usize = 500;

impl KvStore {
    /// Records a change (its `at_ms` is kept, its `id` assigned) and returns it as stored
    /// (cut to [`MAX_CHANGE_BYTES`]).
    pub fn record_change(&self, change: ChangeRecord) -> Result<ChangeRecord, StoreError> {
        let _writing = self.writing();
        let t = self.trees()?;
        let mut change = change.bounded();
        change.id = t.db.generate_id()?.saturating_add(1);
        t.admin_log
            .insert(change_key(change.at_ms, change.id), encode(&change)?)?;
        Ok(change)
    }

    /// A page of the change log, newest first: at most `limit` records (capped at
    /// [`MAX_CHANGE_PAGE`]) older than `before` (all, when `None`). One range scan.
    pub fn changes(
        &self,
        before: Option<ChangeCursor>,
        limit: usize,
    ) -> Result<ChangePage, StoreError> {
        let limit = limit.clamp(1, MAX_CHANGE_PAGE);
        let end = match before {
            Some(c) => change_key(c.at_ms, c.id),
            None => change_key(i64::MAX, u64::MAX),
        };
        let t = self.trees()?;
        let mut pairs = t.admin_log.range_rev(change_key(0, 0), end, limit + 1)?;
        let more = pairs.len() > limit;
        pairs.truncate(limit);
        let records = pairs
            .iter()
            .map(|(k, v)| read_change(k, v))
            .collect::<Result<Vec<_>, _>>()?;
        let next = if more {
            records.last().map(ChangeRecord::cursor)
        } else {
            None
        };
        Ok(ChangePage { records, next })
    }

    /// Removes at most `max` of the oldest records made before `before_ms` (the daemon's
    /// upkeep calls it with a small `max` until it removes fewer than that); returns how
    /// many it removed.
    pub fn purge_changes(&self, before_ms: i64, max: usize) -> Result<usize, StoreError> {
        let t = self.trees()?;
        let old: Vec<Vec<u8>> = t
            .admin_log
            .range(change_key(0, 0), change_key(before_ms.max(0), 0))
            .take(max)
            .map(|item| item.map(|(k, _)| k))
            .collect::<Result<_, _>>()?;
        for batch in old.chunks(PURGE_BATCH) {
            let _writing = self.writing();
            finish(t.admin_log.transaction(|log| {
                for key in batch {
                    log.remove(key)?;
                }
                Ok(())
            }))?;
        }
        if !old.is_empty() {
            tracing::info!(removed = old.len(), "purged old change log records");
        }
        Ok(old.len())
    }
}

/// A record from its key and value.
pub(crate) fn read_change(key: &[u8], raw: &[u8]) -> Result<ChangeRecord, StoreError> {
    let (at, id) = crate::codec::read_pair_key(ADMIN_LOG, key)?;
    let mut record: ChangeRecord = decode(ADMIN_LOG, raw, || format!("{at}/{id}"))?;
    record.at_ms = i64::try_from(at).unwrap_or(i64::MAX);
    record.id = id;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(at_ms: i64, path: &str) -> ChangeRecord {
        ChangeRecord {
            at_ms,
            id: 0,
            actor: "console".into(),
            address: "127.0.0.1".into(),
            method: "POST".into(),
            path: path.into(),
            status: 200,
            reason: Some("support ticket 7".into()),
            summary: json!({"credits": 5}),
        }
    }

    #[test]
    fn cursors_parse_strictly() {
        assert_eq!(
            "12".parse::<ChangeCursor>().unwrap(),
            ChangeCursor { at_ms: 12, id: 0 }
        );
        assert_eq!(
            "12-3".parse::<ChangeCursor>().unwrap(),
            ChangeCursor { at_ms: 12, id: 3 }
        );
        assert!("x".parse::<ChangeCursor>().is_err());
        assert!("-5".parse::<ChangeCursor>().is_err());
        assert!("5-x".parse::<ChangeCursor>().is_err());
    }

    #[test]
    fn records_are_bounded() {
        let store = KvStore::open_temporary().unwrap();
        let mut big = change(5, &"/p".repeat(1_000));
        big.reason = Some("\u{1}".repeat(5_000));
        big.address = "a".repeat(1_000);
        big.summary = json!({"name": "x".repeat(5_000)});
        let stored = store.record_change(big).unwrap();
        assert!(encode(&stored).unwrap().len() <= MAX_CHANGE_BYTES);
        assert_eq!(stored.summary, json!({"truncated": true}));
        let read = store.changes(None, 10).unwrap().records;
        assert_eq!(read.len(), 1);
        assert!(read[0].path.chars().count() <= MAX_PATH);
        assert!(read[0].path.ends_with('…'));
        assert!(read[0].address.chars().count() <= MAX_ADDRESS);
        // A short record is kept whole.
        let small = store.record_change(change(6, "/admin/reload")).unwrap();
        assert_eq!(small.path, "/admin/reload");
        assert_eq!(small.summary, json!({"credits": 5}));
    }
}
