//! Checkpoints and counters on PostgreSQL (`checkpoints.rs` is the spec): small durable facts
//! of connectors in `checkpoints` (text), and the daily statistics in `stats` (a bigint).
//!
//! Where a key lives: a key under `stats:` holding a whole number (what `add_counters` writes,
//! and what the import moves, see `import.rs`) is a `stats` row; every other key a
//! `checkpoints` row; never both (each write of a key removes it from the other table in the
//! same statement). Reads look at both, so callers see sled's one tree of texts. Prefix scans
//! are `LIKE 'prefix%'` on `text_pattern_ops` indexes (migration 3), in byte order.

use std::collections::BTreeMap;

use tokio_postgres::types::{ToSql, Type};

use super::{Attempts, RelStore, col, one};
use crate::StoreError;
use crate::codec::check_key;

/// The prefix of the statistics keys kept as numbers.
const STATS_PREFIX: &str = "stats:";

/// Keys written per statement by [`RelStore::add_counters`] (a minute's markers can be tens
/// of thousands).
const KEYS_PER_STATEMENT: usize = 5_000;

/// The biggest count a `stats` row holds; adding saturates there (as sled's `u64` does at its
/// own maximum).
const MAX_COUNT: &str = "9223372036854775807";

/// Which table holds `key` when it holds `value`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Home {
    Checkpoints,
    Stats,
}

impl Home {
    fn of(key: &str, value: &str) -> Home {
        if key.starts_with(STATS_PREFIX) && as_count(value).is_some() {
            Home::Stats
        } else {
            Home::Checkpoints
        }
    }

    /// The table and the value column as text.
    fn table(self) -> (&'static str, &'static str) {
        match self {
            Home::Checkpoints => ("checkpoints", "value"),
            Home::Stats => ("stats", "n::text"),
        }
    }

    /// The column and how a text parameter becomes its type.
    fn column(self, param: &str) -> (&'static str, String) {
        match self {
            Home::Checkpoints => ("value", param.to_owned()),
            Home::Stats => ("n", format!("{param}::bigint")),
        }
    }

    fn other(self) -> Home {
        match self {
            Home::Checkpoints => Home::Stats,
            Home::Stats => Home::Checkpoints,
        }
    }
}

/// A value a `stats` row can hold.
fn as_count(value: &str) -> Option<i64> {
    value
        .parse::<u64>()
        .ok()
        .and_then(|n| i64::try_from(n).ok())
}

/// `prefix` as a `LIKE` pattern matching the keys that start with it.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Both tables as `(key, value)` text rows.
pub(super) const BOTH: &str =
    "(SELECT key, value FROM checkpoints UNION ALL SELECT key, n::text FROM stats)";

impl RelStore {
    /// The value stored under `key`, if any.
    pub(crate) async fn checkpoint(&self, key: &str) -> Result<Option<String>, StoreError> {
        let sql = format!("SELECT value FROM {BOTH} AS c WHERE key = $1");
        let rows = self.rows(&sql, &[(&key, Type::TEXT)]).await?;
        rows.first().map(|r| col(r, "value")).transpose()
    }

    /// Sets `key` to `new` if it currently holds `expected` (`None`: absent). True when set.
    /// Of racing callers, one wins (the row lock of the UPDATE, the key of the INSERT).
    pub(crate) async fn checkpoint_cas(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
    ) -> Result<bool, StoreError> {
        check_key("checkpoint key", key)?;
        let to = Home::of(key, new);
        let (to_table, _) = to.table();
        let (to_col, new_value) = to.column("$2");
        let sql = match expected {
            None => {
                let (other, _) = to.other().table();
                format!(
                    "INSERT INTO {to_table} (key, {to_col}) SELECT $1, {new_value}
                     WHERE NOT EXISTS (SELECT 1 FROM {other} WHERE key = $1)
                     ON CONFLICT (key) DO NOTHING RETURNING 1"
                )
            }
            Some(old) => {
                let from = Home::of(key, old);
                let (from_table, _) = from.table();
                let (from_col, old_value) = from.column("$3");
                if from == to {
                    format!(
                        "UPDATE {to_table} SET {to_col} = {new_value}
                         WHERE key = $1 AND {from_col} = {old_value} RETURNING 1"
                    )
                } else {
                    // The value changes table: taken from one, put in the other, at once.
                    format!(
                        "WITH d AS (DELETE FROM {from_table}
                                    WHERE key = $1 AND {from_col} = {old_value} RETURNING key)
                         INSERT INTO {to_table} (key, {to_col}) SELECT key, {new_value} FROM d
                         ON CONFLICT (key) DO NOTHING RETURNING 1"
                    )
                }
            }
        };
        let old = expected.unwrap_or_default();
        let params: Vec<(&(dyn ToSql + Sync), Type)> = if expected.is_some() {
            vec![(&key, Type::TEXT), (&new, Type::TEXT), (&old, Type::TEXT)]
        } else {
            vec![(&key, Type::TEXT), (&new, Type::TEXT)]
        };
        let mut attempts = Attempts::new();
        loop {
            attempts.next().await?;
            // `None`: a deadlock with another writer; the statement rolled back whole.
            if let Some(rows) = self.run(&sql, &params).await? {
                return Ok(!rows.is_empty());
            }
        }
    }

    /// Sets `key` to `value` (or removes it with `None`), whatever it held.
    pub(crate) async fn set_checkpoint(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), StoreError> {
        check_key("checkpoint key", key)?;
        let Some(value) = value else {
            self.rows(
                "WITH c AS (DELETE FROM checkpoints WHERE key = $1)
                 DELETE FROM stats WHERE key = $1",
                &[(&key, Type::TEXT)],
            )
            .await?;
            return Ok(());
        };
        let home = Home::of(key, value);
        let (table, _) = home.table();
        let (column, param) = home.column("$2");
        let (other, _) = home.other().table();
        let sql = format!(
            "WITH gone AS (DELETE FROM {other} WHERE key = $1)
             INSERT INTO {table} (key, {column}) VALUES ($1, {param})
             ON CONFLICT (key) DO UPDATE SET {column} = excluded.{column}"
        );
        let mut attempts = Attempts::new();
        loop {
            attempts.next().await?;
            // Two first writes of one key race on its primary key: the loser runs again.
            if self
                .run(&sql, &[(&key, Type::TEXT), (&value, Type::TEXT)])
                .await?
                .is_some()
            {
                return Ok(());
            }
        }
    }

    /// Adds one to the counter under `key` and returns the new value; a key holding anything
    /// but a count is [`StoreError::Corrupt`], not reset.
    pub(crate) async fn bump_counter(&self, key: &str) -> Result<u64, StoreError> {
        check_key("counter key", key)?;
        let sql = if key.starts_with(STATS_PREFIX) {
            format!(
                "INSERT INTO stats (key, n) SELECT $1, 1
                 WHERE NOT EXISTS (SELECT 1 FROM checkpoints WHERE key = $1)
                 ON CONFLICT (key) DO UPDATE SET n = LEAST(stats.n::numeric + 1, {MAX_COUNT})
                 RETURNING n::text AS value"
            )
        } else {
            "INSERT INTO checkpoints (key, value) VALUES ($1, '1')
             ON CONFLICT (key) DO UPDATE
             SET value = LEAST(checkpoints.value::numeric + 1, 18446744073709551615)::text
             WHERE checkpoints.value ~ '^\\+?[0-9]{1,20}$'
             RETURNING value"
                .to_owned()
        };
        let mut attempts = Attempts::new();
        loop {
            attempts.next().await?;
            let Some(rows) = self.run(&sql, &[(&key, Type::TEXT)]).await? else {
                continue;
            };
            let Some(row) = rows.first() else {
                return Err(StoreError::corrupt("checkpoints", key, "not a counter"));
            };
            let value: String = col(row, "value")?;
            return value
                .parse()
                .map_err(|_| StoreError::corrupt("checkpoints", key, "not a counter"));
        }
    }

    /// The counter under `key` (0 when absent).
    pub(crate) async fn counter(&self, key: &str) -> Result<u64, StoreError> {
        Ok(match self.checkpoint(key).await? {
            Some(v) => v
                .parse()
                .map_err(|_| StoreError::corrupt("checkpoints", key, "not a counter"))?,
            None => 0,
        })
    }

    /// Adds each delta to its counter and sets each marker key to 1 (as `KvStore::add_counters`:
    /// how statistics gathered in memory are written once a minute), in statements of at most
    /// [`KEYS_PER_STATEMENT`] keys, the deltas in the first. A key both counted and marked ends
    /// as a marker, as on sled. Keys go in byte order, so daemons adding at once lock rows in
    /// one order (a deadlock runs the statement again: it rolled back whole).
    pub(crate) async fn add_counters(
        &self,
        deltas: &[(String, u64)],
        markers: &[String],
    ) -> Result<(), StoreError> {
        for (key, _) in deltas {
            check_key("counter key", key)?;
        }
        for key in markers {
            check_key("marker key", key)?;
        }
        // key -> (n, is a marker)
        let mut ops: BTreeMap<&str, (u64, bool)> = BTreeMap::new();
        for (key, delta) in deltas {
            let op = ops.entry(key.as_str()).or_insert((0, false));
            op.0 = op.0.saturating_add(*delta);
        }
        for key in markers {
            ops.insert(key.as_str(), (1, true));
        }
        let ops: Vec<(&str, (u64, bool))> = ops.into_iter().collect();
        for chunk in ops.chunks(KEYS_PER_STATEMENT) {
            self.add_chunk(chunk).await?;
        }
        Ok(())
    }

    /// One statement of [`RelStore::add_counters`].
    async fn add_chunk(&self, chunk: &[(&str, (u64, bool))]) -> Result<(), StoreError> {
        let (mut keys, mut ns, mut sets) = (Vec::new(), Vec::new(), Vec::new());
        for (key, (n, set)) in chunk {
            keys.push(key.to_string());
            // numeric as text: a u64 may pass bigint; the sum saturates in SQL.
            ns.push(n.to_string());
            sets.push(*set);
        }
        let sql = format!(
            "WITH d AS (
                 SELECT key, n::numeric AS n, set FROM unnest($1::text[], $2::text[], $3::bool[])
                     AS d (key, n, set)),
             gone AS (DELETE FROM checkpoints
                      WHERE key IN (SELECT key FROM d WHERE starts_with(key, '{STATS_PREFIX}'))),
             s AS (INSERT INTO stats (key, n)
                   SELECT key, LEAST(n, {MAX_COUNT})::bigint FROM d
                   WHERE starts_with(key, '{STATS_PREFIX}') ORDER BY key COLLATE \"C\"
                   ON CONFLICT (key) DO UPDATE SET n = CASE
                       WHEN (SELECT set FROM d WHERE d.key = excluded.key) THEN excluded.n
                       ELSE LEAST(stats.n::numeric + excluded.n, {MAX_COUNT})::bigint END),
             c AS (INSERT INTO checkpoints (key, value)
                   SELECT key, n::text FROM d
                   WHERE NOT starts_with(key, '{STATS_PREFIX}') ORDER BY key COLLATE \"C\"
                   ON CONFLICT (key) DO UPDATE SET value = CASE
                       WHEN (SELECT set FROM d WHERE d.key = excluded.key) THEN excluded.value
                       WHEN checkpoints.value ~ '^[0-9]{{1,20}}$'
                       THEN LEAST(checkpoints.value::numeric + excluded.value::numeric,
                                  18446744073709551615)::text
                       ELSE excluded.value END)
             SELECT 1"
        );
        let mut attempts = Attempts::new();
        loop {
            attempts.next().await?;
            let params: [(&(dyn ToSql + Sync), Type); 3] = [
                (&keys, Type::TEXT_ARRAY),
                (&ns, Type::TEXT_ARRAY),
                (&sets, Type::BOOL_ARRAY),
            ];
            if self.run(&sql, &params).await?.is_some() {
                return Ok(());
            }
        }
    }

    /// Every checkpoint whose key starts with `prefix`, in key (byte) order.
    pub(crate) async fn checkpoints_with_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let pattern = like_prefix(prefix);
        let sql = format!(
            "SELECT key, value FROM {BOTH} AS c WHERE key LIKE $1 ORDER BY key COLLATE \"C\""
        );
        let rows = self.rows(&sql, &[(&pattern, Type::TEXT)]).await?;
        rows.iter()
            .map(|r| Ok((col(r, "key")?, col(r, "value")?)))
            .collect()
    }

    /// Removes the checkpoints starting with `prefix` whose key sorts (by bytes) before
    /// `before` (time-ordered records older than a cut-off); how many.
    pub(crate) async fn purge_checkpoints_before(
        &self,
        prefix: &str,
        before: &str,
    ) -> Result<usize, StoreError> {
        let pattern = like_prefix(prefix);
        let rows = self
            .rows(
                "WITH c AS (DELETE FROM checkpoints
                            WHERE key LIKE $1 AND key COLLATE \"C\" < $2 RETURNING 1),
                      s AS (DELETE FROM stats
                            WHERE key LIKE $1 AND key COLLATE \"C\" < $2 RETURNING 1)
                 SELECT (SELECT count(*) FROM c) + (SELECT count(*) FROM s) AS n",
                &[(&pattern, Type::TEXT), (&before, Type::TEXT)],
            )
            .await?;
        let n: i64 = col(one(&rows)?, "n")?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// How many checkpoints start with `prefix`.
    pub(crate) async fn count_prefix(&self, prefix: &str) -> Result<usize, StoreError> {
        let pattern = like_prefix(prefix);
        let rows = self
            .rows(
                "SELECT (SELECT count(*) FROM checkpoints WHERE key LIKE $1)
                      + (SELECT count(*) FROM stats WHERE key LIKE $1) AS n",
                &[(&pattern, Type::TEXT)],
            )
            .await?;
        let n: i64 = col(one(&rows)?, "n")?;
        Ok(usize::try_from(n).unwrap_or(0))
    }
}
