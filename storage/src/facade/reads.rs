//! Reads composed for the engine's steps, so that an engine answers them in as few round
//! trips as it can (one statement on PostgreSQL).

use super::{Engine, Store};
use crate::{AdmittedReads, StoreError, Uid};

impl Store {
    /// `uid`'s record, the values of `checkpoints` and, when `conversation` is given, its
    /// turns: on sled three kinds of point reads, on PostgreSQL one statement (one snapshot).
    /// An unknown user reads as `None` with nothing else.
    pub async fn admitted_reads(
        &self,
        uid: Uid,
        conversation: Option<&str>,
        checkpoints: &[String],
    ) -> Result<AdmittedReads, StoreError> {
        match &self.engine {
            Engine::Kv(kv) => {
                let Some(user) = kv.user(uid)? else {
                    return Ok(AdmittedReads::default());
                };
                let checkpoints = checkpoints
                    .iter()
                    .map(|key| kv.checkpoint(key))
                    .collect::<Result<_, _>>()?;
                let turns = match conversation {
                    Some(key) => kv.conversation(key)?,
                    None => Vec::new(),
                };
                Ok(AdmittedReads {
                    user: Some(user),
                    checkpoints,
                    turns,
                })
            }
            Engine::Rel(r) => r.admitted_reads(uid, conversation, checkpoints).await,
        }
    }
}
