//! Dedupe marks and handoff records on PostgreSQL: each operation one statement, race-free
//! by the row lock `INSERT ... ON CONFLICT DO UPDATE` and `UPDATE`/`DELETE` take (a racing
//! statement waits, then sees the winner's row).

use tokio_postgres::types::Type;

use super::{RelStore, col, one};
use crate::StoreError;
use crate::codec::check_key;

/// $1 key, $2 expiry, $3 now: takes the key if free or expired; a row back means taken.
const INSERT_MARK: &str = "INSERT INTO dedupe (key, expires_at_ms) VALUES ($1, $2)
     ON CONFLICT (key) DO UPDATE SET expires_at_ms = excluded.expires_at_ms, bound = NULL
     WHERE dedupe.expires_at_ms <= $3
     RETURNING true AS won";

/// $1 key, $2 bound value, $3 expiry, $4 now: binds the key if free or expired (a row back),
/// or finds it bound to the same value (a row back, the mark unchanged).
const BIND_MARK: &str = "INSERT INTO dedupe (key, expires_at_ms, bound) VALUES ($1, $3, $2)
     ON CONFLICT (key) DO UPDATE SET
         expires_at_ms = CASE WHEN dedupe.expires_at_ms <= $4 THEN excluded.expires_at_ms
                              ELSE dedupe.expires_at_ms END,
         bound = CASE WHEN dedupe.expires_at_ms <= $4 THEN excluded.bound
                      ELSE dedupe.bound END
     WHERE dedupe.expires_at_ms <= $4 OR dedupe.bound = excluded.bound
     RETURNING true AS won";

impl RelStore {
    /// Marks `key` as seen until `expires_at_ms`: true the first time or when the previous
    /// mark had expired by `now_ms`, false while one is live. Of racing callers, one wins.
    pub(crate) async fn dedupe_insert(
        &self,
        key: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        check_key("dedupe key", key)?;
        let rows = self
            .rows(
                INSERT_MARK,
                &[
                    (&key, Type::TEXT),
                    (&expires_at_ms, Type::INT8),
                    (&now_ms, Type::INT8),
                ],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Binds `key` to `bound` until `expires_at_ms` (as `KvStore::dedupe_bind`): true when it
    /// was free (or expired) and is now bound, or is already bound to the same value.
    pub(crate) async fn dedupe_bind(
        &self,
        key: &str,
        bound: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        check_key("dedupe key", key)?;
        check_key("dedupe value", bound)?;
        let rows = self
            .rows(
                BIND_MARK,
                &[
                    (&key, Type::TEXT),
                    (&bound, Type::TEXT),
                    (&expires_at_ms, Type::INT8),
                    (&now_ms, Type::INT8),
                ],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Removes marks, answers and handoff records that expired by `now_ms`, the longest
    /// expired first, at most `PURGE_BUDGET` of each table per call (as
    /// `KvStore::purge_expired_dedupe`: the daemon calls it every minute, so a backlog goes in
    /// bounded steps, not one long delete); how many.
    pub(crate) async fn purge_expired_marks(&self, now_ms: i64) -> Result<usize, StoreError> {
        let budget = i64::try_from(crate::dedupe::PURGE_BUDGET).unwrap_or(i64::MAX);
        let rows = self
            .rows(
                "WITH d AS (DELETE FROM dedupe WHERE key IN (
                              SELECT key FROM dedupe WHERE expires_at_ms <= $1
                              ORDER BY expires_at_ms LIMIT $2) RETURNING 1),
                      a AS (DELETE FROM answers WHERE key IN (
                              SELECT key FROM answers WHERE expires_at_ms <= $1
                              ORDER BY expires_at_ms LIMIT $2) RETURNING 1),
                      h AS (DELETE FROM handoffs WHERE key IN (
                              SELECT key FROM handoffs WHERE expires_at_ms <= $1
                              ORDER BY expires_at_ms LIMIT $2) RETURNING 1)
                 SELECT (SELECT count(*) FROM d) + (SELECT count(*) FROM a)
                        + (SELECT count(*) FROM h) AS n",
                &[(&now_ms, Type::INT8), (&budget, Type::INT8)],
            )
            .await?;
        Ok(usize::try_from(col::<i64>(one(&rows)?, "n")?).unwrap_or(0))
    }

    /// Keeps `value` under `key` until `expires_at_ms`, replacing what was there.
    pub(crate) async fn put_handoff(
        &self,
        key: &str,
        value: &str,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        check_key("handoff key", key)?;
        self.rows(
            "INSERT INTO handoffs (key, value, expires_at_ms) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE
             SET value = excluded.value, expires_at_ms = excluded.expires_at_ms",
            &[
                (&key, Type::TEXT),
                (&value, Type::TEXT),
                (&expires_at_ms, Type::INT8),
            ],
        )
        .await
        .map(drop)
    }

    /// The value under `key`, if it is live at `now_ms`.
    pub(crate) async fn handoff(
        &self,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        check_key("handoff key", key)?;
        let rows = self
            .rows(
                "SELECT value FROM handoffs WHERE key = $1 AND expires_at_ms > $2",
                &[(&key, Type::TEXT), (&now_ms, Type::INT8)],
            )
            .await?;
        rows.first().map(|r| col(r, "value")).transpose()
    }

    /// Replaces the live value `expected` under `key` with `new`; false when the key holds
    /// anything else, nothing, or an expired record. Of racing callers, at most one wins.
    pub(crate) async fn swap_handoff(
        &self,
        key: &str,
        expected: &str,
        new: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        check_key("handoff key", key)?;
        let rows = self
            .rows(
                "UPDATE handoffs SET value = $3, expires_at_ms = $4
                 WHERE key = $1 AND value = $2 AND expires_at_ms > $5 RETURNING 1",
                &[
                    (&key, Type::TEXT),
                    (&expected, Type::TEXT),
                    (&new, Type::TEXT),
                    (&expires_at_ms, Type::INT8),
                    (&now_ms, Type::INT8),
                ],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Removes the record under `key`, returning its value if it was live at `now_ms`. Of
    /// racing callers, at most one gets it.
    pub(crate) async fn take_handoff(
        &self,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        check_key("handoff key", key)?;
        let rows = self
            .rows(
                "DELETE FROM handoffs WHERE key = $1 RETURNING value, expires_at_ms",
                &[(&key, Type::TEXT)],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let expires: i64 = col(row, "expires_at_ms")?;
        (expires > now_ms).then(|| col(row, "value")).transpose()
    }
}
