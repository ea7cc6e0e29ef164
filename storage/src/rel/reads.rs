//! The reads an answer needs once its message is admitted (the sender's record, their saved
//! choices, the conversation's turns), in one statement instead of one each: on PostgreSQL
//! every statement is a round trip, and these are on every message's path.

use tokio_postgres::types::Type;

use super::checkpoints::BOTH;
use super::users::{USER_COLS, user_from};
use super::{RelStore, col, uid_param};
use crate::{AdmittedReads, StoreError, Turn, Uid};

impl RelStore {
    /// `uid`'s record, the values of `checkpoints` (in their order; `None` where absent) and,
    /// when `conversation` is given, its turns oldest first, read in one statement (one
    /// snapshot). An unknown user reads as `None` with nothing else.
    pub(crate) async fn admitted_reads(
        &self,
        uid: Uid,
        conversation: Option<&str>,
        checkpoints: &[String],
    ) -> Result<AdmittedReads, StoreError> {
        let Ok(id) = uid_param(uid) else {
            return Ok(AdmittedReads::default());
        };
        let sql = format!(
            "SELECT {USER_COLS},
                ARRAY(SELECT (SELECT value FROM {BOTH} AS c WHERE c.key = k.key)
                      FROM unnest($2::text[]) WITH ORDINALITY AS k(key, n) ORDER BY n) AS prefs,
                ARRAY(SELECT role FROM turns WHERE conversation = $3 ORDER BY seq) AS roles,
                ARRAY(SELECT content FROM turns WHERE conversation = $3 ORDER BY seq) AS contents,
                ARRAY(SELECT at_ms FROM turns WHERE conversation = $3 ORDER BY seq) AS ats
             FROM users WHERE uid = $1"
        );
        // No conversation: a key no conversation has (keys are never empty).
        let conversation = conversation.unwrap_or("");
        let rows = self
            .rows(
                &sql,
                &[
                    (&id, Type::INT8),
                    (&checkpoints, Type::TEXT_ARRAY),
                    (&conversation, Type::TEXT),
                ],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(AdmittedReads::default());
        };
        let roles: Vec<String> = col(row, "roles")?;
        let contents: Vec<String> = col(row, "contents")?;
        let ats: Vec<i64> = col(row, "ats")?;
        if roles.len() != contents.len() || roles.len() != ats.len() {
            return Err(StoreError::Backend(
                "a conversation's turns changed within one statement".into(),
            ));
        }
        let turns = roles
            .into_iter()
            .zip(contents)
            .zip(ats)
            .map(|((role, content), at_ms)| Turn {
                role,
                content,
                at_ms,
            })
            .collect();
        Ok(AdmittedReads {
            user: Some(user_from(row)?),
            checkpoints: col(row, "prefs")?,
            turns,
        })
    }
}
