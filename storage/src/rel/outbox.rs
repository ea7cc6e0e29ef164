//! The outbox (answers owed to a user, sent with their next message) and the finished answers
//! kept for retries that reach another daemon, on PostgreSQL. As on sled (`outbox.rs`,
//! `dedupe.rs`): at most [`MAX_ITEMS`] texts per user, the oldest merged (never dropped) when
//! a push would pass it; a kept answer is read only while live.

use tokio_postgres::types::Type;

use super::{Attempts, RelStore, Retry, col, db_err, one};
use crate::codec::check_key;
use crate::kv::pg::lock_key;
use crate::{SharedAnswer, StoreError};

/// Most texts kept per user (as `outbox.rs`); older ones are merged so the newest stay whole.
pub(crate) const MAX_ITEMS: i64 = 20;

/// $1 key, $2 text, $3 most items. When the key holds `$3` texts or more, the oldest
/// `n - $3 + 2` become one (the oldest row takes their text, joined by blank lines; the
/// others go), so that with the new text there are `$3`. Run under the key's advisory lock
/// (see [`RelStore::outbox_push`]), so its snapshot holds every earlier push.
const PUSH: &str = "WITH cur AS (
         SELECT seq, text FROM outbox WHERE key = $1 ORDER BY seq),
     old AS (
         SELECT seq, text FROM cur ORDER BY seq
         LIMIT GREATEST((SELECT count(*) FROM cur) - $3 + 2, 0)),
     merge AS (
         SELECT min(seq) AS first, string_agg(text, E'\\n\\n' ORDER BY seq) AS text,
                count(*) AS n
         FROM old),
     upd AS (
         UPDATE outbox SET text = merge.text FROM merge
         WHERE outbox.key = $1 AND outbox.seq = merge.first AND merge.n >= 2
         RETURNING 1),
     del AS (
         DELETE FROM outbox USING merge
         WHERE outbox.key = $1 AND outbox.seq IN (SELECT seq FROM old)
           AND outbox.seq > merge.first AND merge.n >= 2
         RETURNING 1)
     INSERT INTO outbox (key, text) VALUES ($1, $2)";

impl RelStore {
    /// Queues `text` for the user behind `key`, merging the oldest texts when the bound is
    /// reached. A short transaction: the key's advisory lock, then the push, whose snapshot
    /// (taken after the lock) sees every push before it, so racing pushes of one key keep the
    /// bound (one statement alone could not: rows inserted meanwhile are invisible to it).
    /// Pushes are rare (platforms without push), so the extra round trips cost little.
    pub(crate) async fn outbox_push(&self, key: &str, text: &str) -> Result<(), StoreError> {
        check_key("outbox key", key)?;
        let lock = lock_key(&format!("{}/outbox/{key}", self.pool.schema()));
        let mut attempts = Attempts::new();
        loop {
            attempts.next().await?;
            let mut conn = self.pool.get().await?;
            let tx = conn.transaction().await.map_err(fail)?;
            let ran = async {
                tx.query_typed("SELECT pg_advisory_xact_lock($1)", &[(&lock, Type::INT8)])
                    .await?;
                tx.query_typed(
                    PUSH,
                    &[
                        (&key, Type::TEXT),
                        (&text, Type::TEXT),
                        (&MAX_ITEMS, Type::INT8),
                    ],
                )
                .await?;
                tx.commit().await
            }
            .await;
            match ran.map_err(db_err) {
                Ok(()) => return Ok(()),
                Err(Retry::Again(_)) => continue,
                Err(Retry::Fail(e)) => return Err(e),
            }
        }
    }

    /// Takes everything queued for `key` (oldest first), leaving nothing. Of racing takers,
    /// each text goes to one.
    pub(crate) async fn outbox_take(&self, key: &str) -> Result<Vec<String>, StoreError> {
        let rows = self
            .rows(
                "DELETE FROM outbox WHERE key = $1 RETURNING seq, text",
                &[(&key, Type::TEXT)],
            )
            .await?;
        let mut items = rows
            .iter()
            .map(|r| Ok((col::<i64>(r, "seq")?, col::<String>(r, "text")?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        items.sort_by_key(|(seq, _)| *seq);
        Ok(items.into_iter().map(|(_, text)| text).collect())
    }

    /// How many users have answers waiting (a gauge for operators).
    pub(crate) async fn outbox_users(&self) -> Result<usize, StoreError> {
        let rows = self
            .rows("SELECT count(DISTINCT key) AS n FROM outbox", &[])
            .await?;
        count(&rows)
    }

    /// How many texts are queued for `key`.
    pub(crate) async fn outbox_len(&self, key: &str) -> Result<usize, StoreError> {
        let rows = self
            .rows(
                "SELECT count(*) AS n FROM outbox WHERE key = $1",
                &[(&key, Type::TEXT)],
            )
            .await?;
        count(&rows)
    }

    /// Keeps the finished answer to message `key` until its expiry, replacing any.
    pub(crate) async fn put_answer(
        &self,
        key: &str,
        answer: &SharedAnswer,
    ) -> Result<(), StoreError> {
        check_key("answer key", key)?;
        self.rows(
            "INSERT INTO answers (key, text, expires_at_ms) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE
             SET text = excluded.text, expires_at_ms = excluded.expires_at_ms",
            &[
                (&key, Type::TEXT),
                (&answer.text, Type::TEXT),
                (&answer.expires_at_ms, Type::INT8),
            ],
        )
        .await
        .map(drop)
    }

    /// The finished answer to message `key`, if one was kept and is live at `now_ms`.
    pub(crate) async fn shared_answer(
        &self,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<SharedAnswer>, StoreError> {
        check_key("answer key", key)?;
        let rows = self
            .rows(
                "SELECT text, expires_at_ms FROM answers WHERE key = $1 AND expires_at_ms > $2",
                &[(&key, Type::TEXT), (&now_ms, Type::INT8)],
            )
            .await?;
        rows.first()
            .map(|r| {
                Ok(SharedAnswer {
                    text: col(r, "text")?,
                    expires_at_ms: col(r, "expires_at_ms")?,
                })
            })
            .transpose()
    }
}

/// A failure to begin a transaction (never a conflict).
fn fail(e: tokio_postgres::Error) -> StoreError {
    match db_err(e) {
        Retry::Again(e) | Retry::Fail(e) => e,
    }
}

/// The count of a `SELECT count(*) AS n`.
fn count(rows: &[tokio_postgres::Row]) -> Result<usize, StoreError> {
    let n: i64 = col(one(rows)?, "n")?;
    usize::try_from(n).map_err(|_| StoreError::Backend(format!("a negative count: {n}")))
}
