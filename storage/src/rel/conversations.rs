//! Conversation memory on PostgreSQL: a `conversations` row per conversation and its newest
//! `turns`, appended and trimmed in one statement.

use tokio_postgres::types::Type;

use super::{RelStore, col};
use crate::codec::check_key;
use crate::{StoreError, Turn, system_now_ms};

/// $1 key, $2 roles, $3 contents, $4 times, $5 turns kept, $6 now. Appends the newest of the
/// given turns (at most `$5`) and drops older ones beyond `$5`. The conversation's row is
/// locked first, so appends to one conversation take turns.
const APPEND: &str = "WITH c AS (
         INSERT INTO conversations (key, updated_at_ms) VALUES ($1, $6)
         ON CONFLICT (key) DO UPDATE SET updated_at_ms = excluded.updated_at_ms
         RETURNING key),
     given AS (
         SELECT role, content, at_ms, n, count(*) OVER () AS total
         FROM unnest($2::text[], $3::text[], $4::bigint[]) WITH ORDINALITY
              AS t(role, content, at_ms, n)),
     new AS (SELECT role, content, at_ms, n FROM given WHERE n > total - $5),
     ins AS (
         INSERT INTO turns (conversation, role, content, at_ms)
         SELECT c.key, new.role, new.content, new.at_ms FROM c, new ORDER BY new.n
         RETURNING seq),
     old AS (
         DELETE FROM turns WHERE conversation = $1 AND seq NOT IN (
             SELECT seq FROM turns WHERE conversation = $1 ORDER BY seq DESC
             LIMIT GREATEST($5 - (SELECT count(*) FROM new), 0)))
     SELECT count(*) AS n FROM ins";

impl RelStore {
    /// The conversation's stored turns, oldest first (empty if there are none).
    pub(crate) async fn conversation(&self, key: &str) -> Result<Vec<Turn>, StoreError> {
        let rows = self
            .rows(
                "SELECT role, content, at_ms FROM turns WHERE conversation = $1 ORDER BY seq",
                &[(&key, Type::TEXT)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Turn {
                    role: col(r, "role")?,
                    content: col(r, "content")?,
                    at_ms: col(r, "at_ms")?,
                })
            })
            .collect()
    }

    /// Appends `turns` and keeps only the newest `max_turns` (0 clears the conversation).
    /// Concurrent appends to one conversation all land.
    pub(crate) async fn append_turns(
        &self,
        key: &str,
        turns: &[Turn],
        max_turns: usize,
    ) -> Result<(), StoreError> {
        check_key("conversation key", key)?;
        if max_turns == 0 {
            return self.clear_conversation(key).await;
        }
        let roles: Vec<&str> = turns.iter().map(|t| t.role.as_str()).collect();
        let contents: Vec<&str> = turns.iter().map(|t| t.content.as_str()).collect();
        let times: Vec<i64> = turns.iter().map(|t| t.at_ms).collect();
        let keep = i64::try_from(max_turns).unwrap_or(i64::MAX);
        let now = system_now_ms();
        self.rows(
            APPEND,
            &[
                (&key, Type::TEXT),
                (&roles, Type::TEXT_ARRAY),
                (&contents, Type::TEXT_ARRAY),
                (&times, Type::INT8_ARRAY),
                (&keep, Type::INT8),
                (&now, Type::INT8),
            ],
        )
        .await
        .map(drop)
    }

    /// Forgets the conversation.
    pub(crate) async fn clear_conversation(&self, key: &str) -> Result<(), StoreError> {
        self.rows(
            "DELETE FROM conversations WHERE key = $1",
            &[(&key, Type::TEXT)],
        )
        .await
        .map(drop)
    }
}
