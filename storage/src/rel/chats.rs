//! The web page's saved conversations on PostgreSQL (`chats.rs` is the spec): table `chats`,
//! one row per conversation with its messages as a JSON array, so a listing reads the other
//! columns only. The same bounds: ids of `[A-Za-z0-9_.:-]` (also a `CHECK`), titles of at
//! most `MAX_CHAT_TITLE` bytes, a conversation's size capped by the caller's limit, and a
//! user's count: saving one more removes the least recently updated others.

use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use super::admin::sql_limit;
use super::{Attempts, RelStore, Retry, col, db_err, one, uid_of, uid_param};
use crate::kv::pg::lock_key;
use crate::{
    Chat, ChatLimits, ChatMessage, ChatPut, ChatSummary, MAX_CHAT_ID, MAX_CHAT_TITLE, StoreError,
    Uid, chat_size, valid_chat_id,
};

/// $1 uid, $2 id, $3 title, $4 messages (JSON), $5 base version (or null), $6 now, $7 message
/// count, $8 bytes, $9 the user's most conversations. Saves unless `$5` names another
/// version than the stored one (then nothing is written and the stored one comes back), and
/// removes the least recently updated others beyond `$9`. Every change is a new version,
/// even two in one millisecond. Run under the user's lock (see [`RelStore::put_chat`]).
const SAVE: &str = "WITH u AS (SELECT uid FROM users WHERE uid = $1),
     cur AS (SELECT title AS cur_title, updated_at_ms AS cur_at, messages::text AS cur_messages
             FROM chats WHERE uid = $1 AND id = $2),
     ok AS (SELECT 1 FROM u
            WHERE NOT EXISTS (SELECT 1 FROM cur WHERE $5::bigint IS NOT NULL AND cur_at <> $5)),
     up AS (
         INSERT INTO chats (uid, id, title, updated_at_ms, message_count, bytes, messages)
         SELECT $1, $2, $3, GREATEST($6, (SELECT cur_at FROM cur) + 1), $7, $8, $4::jsonb
         FROM ok
         ON CONFLICT (uid, id) DO UPDATE SET
             title = excluded.title,
             updated_at_ms = GREATEST(excluded.updated_at_ms, chats.updated_at_ms + 1),
             message_count = excluded.message_count, bytes = excluded.bytes,
             messages = excluded.messages
         RETURNING updated_at_ms),
     victims AS (
         DELETE FROM chats WHERE uid = $1 AND id IN (
             SELECT id FROM chats WHERE uid = $1 AND id <> $2 AND EXISTS (SELECT 1 FROM up)
             ORDER BY updated_at_ms, id COLLATE \"C\"
             LIMIT GREATEST((SELECT count(*) FROM chats WHERE uid = $1 AND id <> $2) + 1 - $9,
                            0))
         RETURNING id, updated_at_ms)
     SELECT EXISTS (SELECT 1 FROM u) AS user_exists, (SELECT updated_at_ms FROM up) AS saved,
            (SELECT array_agg(id ORDER BY updated_at_ms, id COLLATE \"C\") FROM victims)
                AS pruned,
            cur.*
     FROM (SELECT 1) AS one LEFT JOIN cur ON true";

impl RelStore {
    /// The user's saved conversations, newest first (then by id), without their messages.
    pub(crate) async fn chats(&self, uid: Uid) -> Result<Vec<ChatSummary>, StoreError> {
        let Ok(id) = uid_param(uid) else {
            return Ok(Vec::new());
        };
        let rows = self
            .rows(
                "SELECT id, title, updated_at_ms, message_count, bytes FROM chats
                 WHERE uid = $1 ORDER BY updated_at_ms DESC, id COLLATE \"C\"",
                &[(&id, Type::INT8)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let id: String = col(r, "id")?;
                let count: i64 = col(r, "message_count")?;
                let bytes: i64 = col(r, "bytes")?;
                let bad = |what: &str| StoreError::corrupt("chats", format!("{uid}/{id}"), what);
                Ok(ChatSummary {
                    title: col(r, "title")?,
                    updated_at_ms: col(r, "updated_at_ms")?,
                    count: usize::try_from(count).map_err(|_| bad("negative count"))?,
                    bytes: u64::try_from(bytes).map_err(|_| bad("negative size"))?,
                    id,
                })
            })
            .collect()
    }

    /// One of the user's saved conversations; `None` when it does not exist (another user's
    /// is as absent as one never made) or `id` could name none.
    pub(crate) async fn chat(&self, uid: Uid, id: &str) -> Result<Option<Chat>, StoreError> {
        let (true, Ok(owner)) = (valid_chat_id(id), uid_param(uid)) else {
            return Ok(None);
        };
        let rows = self
            .rows(
                "SELECT title, updated_at_ms, messages::text AS messages FROM chats
                 WHERE uid = $1 AND id = $2",
                &[(&owner, Type::INT8), (&id, Type::TEXT)],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        Ok(Some(Chat {
            id: id.to_owned(),
            title: col(row, "title")?,
            updated_at_ms: col(row, "updated_at_ms")?,
            messages: messages(row, "messages", uid, id)?,
        }))
    }

    /// Saves a conversation whole (creating or replacing it) at `now_ms`, as `KvStore::put_chat`:
    /// with `base`, only if the stored one is that version (or there is none: one deleted
    /// elsewhere is saved again rather than lost); over the count limit, the least recently
    /// updated others go. A short transaction: the user's advisory lock, then one statement
    /// whose snapshot (taken after the lock) sees every save before it, so racing saves of a
    /// user keep the count (one statement alone could not see rows inserted meanwhile).
    /// [`StoreError::UnknownUser`] for a uid without a user.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn put_chat(
        &self,
        uid: Uid,
        id: &str,
        title: &str,
        messages: &[ChatMessage],
        base: Option<i64>,
        now_ms: i64,
        limits: ChatLimits,
    ) -> Result<ChatPut, StoreError> {
        if !valid_chat_id(id) {
            return Err(StoreError::InvalidInput(format!(
                "a conversation id is 1 to {MAX_CHAT_ID} characters of A-Z a-z 0-9 _ . : -"
            )));
        }
        if title.len() > MAX_CHAT_TITLE {
            return Err(StoreError::InvalidInput(format!(
                "a conversation title is at most {MAX_CHAT_TITLE} bytes"
            )));
        }
        if let Some(bad) = messages
            .iter()
            .find(|m| m.role != "user" && m.role != "assistant")
        {
            return Err(StoreError::InvalidInput(format!(
                "a message's role is user or assistant, not {:?}",
                bad.role
            )));
        }
        let bytes = chat_size(title, messages);
        if bytes > limits.max_bytes {
            return Ok(ChatPut::TooLarge {
                bytes,
                limit: limits.max_bytes,
            });
        }
        let owner = uid_param(uid)?;
        let json = serde_json::to_string(messages)
            .map_err(|e| StoreError::InvalidInput(format!("messages: {e}")))?;
        let (count, size, max_count) = (
            sql_limit(messages.len()),
            i64::try_from(bytes).unwrap_or(i64::MAX),
            sql_limit(limits.max_count.max(1)),
        );
        let lock = lock_key(&format!("{}/chats/{owner}", self.pool.schema()));
        let mut attempts = Attempts::new();
        loop {
            attempts.next().await?;
            let mut conn = self.pool.get().await?;
            let tx = conn.transaction().await.map_err(fail)?;
            let params: [(&(dyn ToSql + Sync), Type); 9] = [
                (&owner, Type::INT8),
                (&id, Type::TEXT),
                (&title, Type::TEXT),
                (&json, Type::TEXT),
                (&base, Type::INT8),
                (&now_ms, Type::INT8),
                (&count, Type::INT8),
                (&size, Type::INT8),
                (&max_count, Type::INT8),
            ];
            let ran = async {
                tx.query_typed("SELECT pg_advisory_xact_lock($1)", &[(&lock, Type::INT8)])
                    .await?;
                let rows = tx.query_typed(SAVE, &params).await?;
                tx.commit().await?;
                Ok(rows)
            }
            .await;
            let rows = match ran.map_err(db_err) {
                Ok(rows) => rows,
                Err(Retry::Again(_)) => continue,
                Err(Retry::Fail(e)) => return Err(e),
            };
            let row = one(&rows)?;
            if !col::<bool>(row, "user_exists")? {
                return Err(StoreError::UnknownUser(uid));
            }
            if let Some(updated_at_ms) = col::<Option<i64>>(row, "saved")? {
                let pruned: Option<Vec<String>> = col(row, "pruned")?;
                return Ok(ChatPut::Saved {
                    updated_at_ms,
                    pruned: pruned.unwrap_or_default(),
                });
            }
            if let Some(at) = col::<Option<i64>>(row, "cur_at")? {
                return Ok(ChatPut::Conflict(Box::new(Chat {
                    id: id.to_owned(),
                    title: col(row, "cur_title")?,
                    updated_at_ms: at,
                    messages: messages_of(row, uid, id)?,
                })));
            }
            // Neither saved nor stored: a rename or delete changed it under the statement.
        }
    }

    /// Renames one of the user's conversations at `now_ms`; its new version, or `None` when
    /// it does not exist.
    pub(crate) async fn rename_chat(
        &self,
        uid: Uid,
        id: &str,
        title: &str,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let (true, Ok(owner)) = (valid_chat_id(id), uid_param(uid)) else {
            return Ok(None);
        };
        if title.len() > MAX_CHAT_TITLE {
            return Err(StoreError::InvalidInput(format!(
                "a conversation title is at most {MAX_CHAT_TITLE} bytes"
            )));
        }
        let rows = self
            .rows(
                "UPDATE chats SET title = $3,
                     bytes = bytes - octet_length(title) + octet_length($3),
                     updated_at_ms = GREATEST($4, updated_at_ms + 1)
                 WHERE uid = $1 AND id = $2 RETURNING updated_at_ms",
                &[
                    (&owner, Type::INT8),
                    (&id, Type::TEXT),
                    (&title, Type::TEXT),
                    (&now_ms, Type::INT8),
                ],
            )
            .await?;
        rows.first().map(|r| col(r, "updated_at_ms")).transpose()
    }

    /// Deletes one of the user's conversations; whether it existed.
    pub(crate) async fn delete_chat(&self, uid: Uid, id: &str) -> Result<bool, StoreError> {
        let (true, Ok(owner)) = (valid_chat_id(id), uid_param(uid)) else {
            return Ok(false);
        };
        let rows = self
            .rows(
                "DELETE FROM chats WHERE uid = $1 AND id = $2 RETURNING 1",
                &[(&owner, Type::INT8), (&id, Type::TEXT)],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Deletes every saved conversation of `uid` (a guest whose account expired); how many.
    /// One statement (a user holds at most the count limit).
    pub(crate) async fn delete_chats_of(&self, uid: Uid) -> Result<usize, StoreError> {
        let Ok(owner) = uid_param(uid) else {
            return Ok(0);
        };
        let rows = self
            .rows(
                "WITH d AS (DELETE FROM chats WHERE uid = $1 RETURNING 1)
                 SELECT count(*) AS n FROM d",
                &[(&owner, Type::INT8)],
            )
            .await?;
        let n: i64 = col(one(&rows)?, "n")?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Up to `limit` users, from `from` on in uid order, who have saved conversations (for
    /// the cleanup of expired guests'); the uid to go on from, if there may be more (as on
    /// sled: whenever `limit` were found).
    pub(crate) async fn chat_owners(
        &self,
        from: Uid,
        limit: usize,
    ) -> Result<(Vec<Uid>, Option<Uid>), StoreError> {
        let Ok(start) = uid_param(from) else {
            return Ok((Vec::new(), None));
        };
        let rows = self
            .rows(
                "SELECT DISTINCT uid FROM chats WHERE uid >= $1 ORDER BY uid LIMIT $2",
                &[(&start, Type::INT8), (&sql_limit(limit), Type::INT8)],
            )
            .await?;
        let owners = rows
            .iter()
            .map(|r| uid_of(r, "uid"))
            .collect::<Result<Vec<_>, _>>()?;
        if owners.len() < limit {
            return Ok((owners, None));
        }
        let next = match owners.last() {
            Some(last) => last.0.checked_add(1).map(Uid),
            None => Some(from),
        };
        Ok((owners, next))
    }
}

/// Conversations read from sled per batch of [`RelStore::import_chats_from`].
const IMPORT_BATCH: usize = 500;

/// A record of sled's `chats` tree (`chats.rs`' `ChatRecord`, field for field, read with the
/// store's codec).
#[derive(serde::Deserialize)]
struct SledChat {
    title: String,
    updated_at_ms: i64,
    #[serde(default)]
    messages: Vec<ChatMessage>,
}

/// One batch of conversations: $1 uids, $2 ids, $3 titles, $4 versions, $5 message counts,
/// $6 sizes, $7 messages (JSON).
const IMPORT: &str = "WITH c AS (
         INSERT INTO chats (uid, id, title, updated_at_ms, message_count, bytes, messages)
         SELECT uid, id, title, at, n, bytes, messages::jsonb
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                     $6::bigint[], $7::text[]) AS v(uid, id, title, at, n, bytes, messages)
         RETURNING 1)
     SELECT count(*) AS n FROM c";

impl RelStore {
    /// Copies the web conversations of `source` (sled's `chats` tree; its `chat_index` is
    /// derived, so not read) into `chats`, after `import_from` copied the users (a
    /// conversation of no user is refused by the foreign key, and the batch with it). Kept
    /// apart from `import.rs` (the other tables' import); the migration runs both. Reads
    /// [`IMPORT_BATCH`] records at a time off the async workers; one statement per batch.
    /// How many conversations were written.
    pub(crate) async fn import_chats_from(
        &self,
        source: &crate::KvStore,
    ) -> Result<u64, StoreError> {
        let mut after: Option<Vec<u8>> = None;
        let mut written = 0u64;
        loop {
            let src = source.clone();
            let from = after.clone();
            let batch = tokio::task::spawn_blocking(move || read_chats(&src, from))
                .await
                .map_err(|e| StoreError::Backend(format!("the chats reader failed: {e}")))??;
            let Some((last_key, rows)) = batch else {
                return Ok(written);
            };
            after = Some(last_key);
            if rows.is_empty() {
                continue;
            }
            let (mut uids, mut ids, mut titles, mut ats, mut counts, mut sizes, mut texts) =
                (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
            for (uid, id, chat) in rows {
                uids.push(uid_param(uid)?);
                counts.push(sql_limit(chat.messages.len()));
                sizes.push(
                    i64::try_from(chat_size(&chat.title, &chat.messages)).unwrap_or(i64::MAX),
                );
                texts.push(
                    serde_json::to_string(&chat.messages)
                        .map_err(|e| StoreError::corrupt("chats", format!("{uid}/{id}"), e))?,
                );
                ids.push(id);
                titles.push(chat.title);
                ats.push(chat.updated_at_ms);
            }
            let params: [(&(dyn ToSql + Sync), Type); 7] = [
                (&uids, Type::INT8_ARRAY),
                (&ids, Type::TEXT_ARRAY),
                (&titles, Type::TEXT_ARRAY),
                (&ats, Type::INT8_ARRAY),
                (&counts, Type::INT8_ARRAY),
                (&sizes, Type::INT8_ARRAY),
                (&texts, Type::TEXT_ARRAY),
            ];
            let rows = self.rows(IMPORT, &params).await?;
            let n: i64 = col(one(&rows)?, "n")?;
            written += u64::try_from(n).unwrap_or(0);
        }
    }
}

/// The next batch of sled's conversations after key `after` (from the start: `None`): the
/// last key read and the records, or `None` at the end.
#[allow(clippy::type_complexity)]
fn read_chats(
    source: &crate::KvStore,
    after: Option<Vec<u8>>,
) -> Result<Option<(Vec<u8>, Vec<(Uid, String, SledChat)>)>, StoreError> {
    let t = source.trees()?;
    let start = match after {
        // The smallest key after `last`.
        Some(mut last) => {
            last.push(0);
            last
        }
        None => Vec::new(),
    };
    let mut rows = Vec::new();
    let mut last_key = None;
    for item in t.chats.range_from(start) {
        let (key, raw) = item?;
        let (uid, rest) = crate::codec::split_u64_prefix(crate::CHATS, &key)?;
        let id = std::str::from_utf8(rest)
            .map_err(|_| {
                StoreError::corrupt(crate::CHATS, crate::codec::describe_bytes(&key), "id")
            })?
            .to_owned();
        let chat: SledChat = crate::codec::decode(crate::CHATS, &raw, || format!("{uid}/{id}"))?;
        rows.push((Uid(uid), id, chat));
        last_key = Some(key.to_vec());
        if rows.len() == IMPORT_BATCH {
            break;
        }
    }
    Ok(last_key.map(|k| (k, rows)))
}

/// The messages in column `name` (JSON text).
fn messages(row: &Row, name: &str, uid: Uid, id: &str) -> Result<Vec<ChatMessage>, StoreError> {
    let text: String = col(row, name)?;
    serde_json::from_str(&text).map_err(|e| StoreError::corrupt("chats", format!("{uid}/{id}"), e))
}

/// The stored messages of a conflict row.
fn messages_of(row: &Row, uid: Uid, id: &str) -> Result<Vec<ChatMessage>, StoreError> {
    messages(row, "cur_messages", uid, id)
}

/// A failure to begin a transaction (never a conflict).
fn fail(e: tokio_postgres::Error) -> StoreError {
    match db_err(e) {
        Retry::Again(e) | Retry::Fail(e) => e,
    }
}
