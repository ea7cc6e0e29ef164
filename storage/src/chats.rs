//! The web page's saved conversations ("chats"): per user, listed, opened, saved whole,
//! renamed and deleted, so that the same conversations appear on every device a user logs
//! in on. Not the engine's memory of a chat platform (`conversations.rs`): the page keeps
//! the whole history of a web conversation and sends it with each question.
//!
//! Trees: `chats` (uid ‖ id → [`Chat`]'s title, time and messages) and `chat_index`
//! (uid ‖ id → its summary: title, time, message count, size), so that a listing never reads
//! the messages. Both change in one transaction.
//!
//! Bounds: an id is 1 to [`MAX_CHAT_ID`] bytes of `[A-Za-z0-9_.:-]`, a title at most
//! [`MAX_CHAT_TITLE`] bytes; a conversation's size (its title and messages) is capped by the
//! caller's [`ChatLimits::max_bytes`], and a user's count by [`ChatLimits::max_count`]: saving
//! one more removes the least recently updated ones.

use serde::{Deserialize, Serialize};

use crate::codec::{OrAbort, decode, encode, finish, prefixed_key, split_u64_prefix, u64_key};
use crate::kv::Transactional;
use crate::{CHAT_INDEX, CHATS, KvStore, StoreError, Uid};

/// The longest conversation id, in bytes.
pub const MAX_CHAT_ID: usize = 80;

/// The longest title, in bytes.
pub const MAX_CHAT_TITLE: usize = 1_024;

/// Index entries removed per step of [`KvStore::delete_chats_of`].
const DELETE_BATCH: usize = 200;

/// One message of a saved conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
    /// When it was said (ms since the Unix epoch), as the page recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<i64>,
    /// The model that answered (assistant messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// A saved conversation, whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chat {
    /// Its id (the page makes it).
    pub id: String,
    /// Its title.
    pub title: String,
    /// When it was last saved or renamed (ms since the Unix epoch; increases with every
    /// change, so it serves as the version a save may be based on).
    pub updated_at_ms: i64,
    /// Its messages, oldest first.
    pub messages: Vec<ChatMessage>,
}

/// A saved conversation without its messages, as listings show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatSummary {
    /// Its id.
    #[serde(skip)]
    pub id: String,
    /// Its title.
    pub title: String,
    /// When it was last saved or renamed.
    pub updated_at_ms: i64,
    /// How many messages it holds.
    pub count: usize,
    /// Its size as [`chat_size`] counts it.
    pub bytes: u64,
}

/// The limits a save is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChatLimits {
    /// Conversations a user keeps at most (at least 1).
    pub max_count: usize,
    /// The largest conversation, in bytes of [`chat_size`].
    pub max_bytes: u64,
}

/// What [`KvStore::put_chat`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatPut {
    /// Saved; `pruned` older conversations were removed to stay within the count limit.
    Saved {
        /// The conversation's new version.
        updated_at_ms: i64,
        /// The ids of the conversations removed to make room, oldest first.
        pruned: Vec<String>,
    },
    /// The stored conversation is not the version the save was based on: nothing was written.
    Conflict(Box<Chat>),
    /// Over [`ChatLimits::max_bytes`]: nothing was written.
    TooLarge {
        /// The conversation's size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
}

/// The stored value in `chats`.
#[derive(Serialize, Deserialize)]
struct ChatRecord {
    title: String,
    updated_at_ms: i64,
    #[serde(default)]
    messages: Vec<ChatMessage>,
}

/// Whether `id` may name a conversation: 1 to [`MAX_CHAT_ID`] bytes of `[A-Za-z0-9_.:-]`.
#[must_use]
pub fn valid_chat_id(id: &str) -> bool {
    (1..=MAX_CHAT_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// The size a conversation counts against [`ChatLimits::max_bytes`]: the bytes of its title
/// and of every message's role, content and model (what the user wrote and read, not its
/// encoding).
#[must_use]
pub fn chat_size(title: &str, messages: &[ChatMessage]) -> u64 {
    let body: usize = messages
        .iter()
        .map(|m| m.role.len() + m.content.len() + m.model.as_ref().map_or(0, String::len))
        .sum();
    (title.len() + body) as u64
}

fn check_id(id: &str) -> Result<(), StoreError> {
    if valid_chat_id(id) {
        Ok(())
    } else {
        Err(StoreError::InvalidInput(format!(
            "a conversation id is 1 to {MAX_CHAT_ID} characters of A-Z a-z 0-9 _ . : -"
        )))
    }
}

fn check_title(title: &str) -> Result<(), StoreError> {
    if title.len() > MAX_CHAT_TITLE {
        return Err(StoreError::InvalidInput(format!(
            "a conversation title is at most {MAX_CHAT_TITLE} bytes"
        )));
    }
    Ok(())
}

fn chat_key(uid: Uid, id: &str) -> Vec<u8> {
    prefixed_key(uid.0, id.as_bytes())
}

fn describe(uid: Uid, id: &str) -> String {
    format!("{uid}/{id}")
}

impl KvStore {
    /// The user's saved conversations, newest first, without their messages.
    pub fn chats(&self, uid: Uid) -> Result<Vec<ChatSummary>, StoreError> {
        let mut out = self.chat_index(uid)?;
        out.sort_by(|a, b| {
            b.updated_at_ms
                .cmp(&a.updated_at_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    /// The index entries of `uid`, in id order.
    fn chat_index(&self, uid: Uid) -> Result<Vec<ChatSummary>, StoreError> {
        let t = self.trees()?;
        let mut out = Vec::new();
        for item in t.chat_index.scan_prefix(u64_key(uid.0)) {
            let (key, raw) = item?;
            let (_, rest) = split_u64_prefix(CHAT_INDEX, &key)?;
            let id = String::from_utf8_lossy(rest).into_owned();
            let mut summary: ChatSummary = decode(CHAT_INDEX, &raw, || describe(uid, &id))?;
            summary.id = id;
            out.push(summary);
        }
        Ok(out)
    }

    /// One of the user's saved conversations; `None` when it does not exist (another user's
    /// is as absent as one never made).
    pub fn chat(&self, uid: Uid, id: &str) -> Result<Option<Chat>, StoreError> {
        if !valid_chat_id(id) {
            return Ok(None);
        }
        let Some(raw) = self.trees()?.chats.get(chat_key(uid, id))? else {
            return Ok(None);
        };
        let record: ChatRecord = decode(CHATS, &raw, || describe(uid, id))?;
        Ok(Some(Chat {
            id: id.to_owned(),
            title: record.title,
            updated_at_ms: record.updated_at_ms,
            messages: record.messages,
        }))
    }

    /// Saves a conversation whole (creating or replacing it) at `now_ms`. With `base`, only if
    /// the stored one is that version (or there is none: a conversation deleted elsewhere is
    /// saved again rather than lost). Over the count limit, the least recently updated other
    /// conversations are removed.
    #[allow(clippy::too_many_arguments)]
    pub fn put_chat(
        &self,
        uid: Uid,
        id: &str,
        title: &str,
        messages: &[ChatMessage],
        base: Option<i64>,
        now_ms: i64,
        limits: ChatLimits,
    ) -> Result<ChatPut, StoreError> {
        let _writing = self.writing();
        check_id(id)?;
        check_title(title)?;
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
        // A conversation belongs to a user (as tokens and login codes do); users are never
        // removed, so the check needs no transaction.
        if self.trees()?.users.get(u64_key(uid.0))?.is_none() {
            return Err(StoreError::UnknownUser(uid));
        }
        let max_count = limits.max_count.max(1);
        // The oldest others beyond the limit go (read outside the transaction, which sees
        // only the keys it asks for; a race with another save is mended just below).
        let mut others: Vec<ChatSummary> = self
            .chat_index(uid)?
            .into_iter()
            .filter(|s| s.id != id)
            .collect();
        others.sort_by_key(|s| s.updated_at_ms);
        let excess = (others.len() + 1).saturating_sub(max_count);
        let victims: Vec<String> = others.iter().take(excess).map(|s| s.id.clone()).collect();
        let key = chat_key(uid, id);
        let t = self.trees()?;
        let outcome = finish((&t.chats, &t.chat_index).transaction(|(chats, index)| {
            let stored = match index.get(&key)? {
                Some(raw) => {
                    Some(decode::<ChatSummary>(CHAT_INDEX, &raw, || describe(uid, id)).or_abort()?)
                }
                None => None,
            };
            if let (Some(base), Some(stored)) = (base, &stored)
                && stored.updated_at_ms != base
            {
                let current = match chats.get(&key)? {
                    Some(raw) => {
                        decode::<ChatRecord>(CHATS, &raw, || describe(uid, id)).or_abort()?
                    }
                    None => ChatRecord {
                        title: stored.title.clone(),
                        updated_at_ms: stored.updated_at_ms,
                        messages: Vec::new(),
                    },
                };
                return Ok(ChatPut::Conflict(Box::new(Chat {
                    id: id.to_owned(),
                    title: current.title,
                    updated_at_ms: current.updated_at_ms,
                    messages: current.messages,
                })));
            }
            // Every change is a new version, even two within one millisecond.
            let updated_at_ms = stored
                .as_ref()
                .map_or(now_ms, |s| now_ms.max(s.updated_at_ms.saturating_add(1)));
            let record = ChatRecord {
                title: title.to_owned(),
                updated_at_ms,
                messages: messages.to_vec(),
            };
            let summary = ChatSummary {
                id: String::new(),
                title: title.to_owned(),
                updated_at_ms,
                count: messages.len(),
                bytes,
            };
            chats.insert(key.as_slice(), encode(&record).or_abort()?)?;
            index.insert(key.as_slice(), encode(&summary).or_abort()?)?;
            for victim in &victims {
                let victim_key = chat_key(uid, victim);
                chats.remove(victim_key.as_slice())?;
                index.remove(victim_key.as_slice())?;
            }
            Ok(ChatPut::Saved {
                updated_at_ms,
                pruned: victims.clone(),
            })
        }))?;
        if let ChatPut::Saved { pruned, .. } = &outcome {
            // Two saves at once may each have made room for one: remove what is still over.
            let more = self.prune_chats(uid, max_count, id)?;
            if !more.is_empty() {
                let mut all = pruned.clone();
                all.extend(more);
                if let ChatPut::Saved { updated_at_ms, .. } = outcome {
                    return Ok(ChatPut::Saved {
                        updated_at_ms,
                        pruned: all,
                    });
                }
            }
        }
        Ok(outcome)
    }

    /// Removes the least recently updated of `uid`'s conversations beyond `max_count`, never
    /// `keep`; returns their ids.
    fn prune_chats(
        &self,
        uid: Uid,
        max_count: usize,
        keep: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut all = self.chat_index(uid)?;
        if all.len() <= max_count {
            return Ok(Vec::new());
        }
        all.sort_by_key(|s| s.updated_at_ms);
        let excess = all.len() - max_count;
        let victims: Vec<String> = all
            .into_iter()
            .filter(|s| s.id != keep)
            .take(excess)
            .map(|s| s.id)
            .collect();
        let t = self.trees()?;
        finish((&t.chats, &t.chat_index).transaction(|(chats, index)| {
            for victim in &victims {
                let victim_key = chat_key(uid, victim);
                chats.remove(victim_key.as_slice())?;
                index.remove(victim_key.as_slice())?;
            }
            Ok(())
        }))?;
        Ok(victims)
    }

    /// Renames one of the user's conversations at `now_ms`; its new version, or `None` when
    /// it does not exist.
    pub fn rename_chat(
        &self,
        uid: Uid,
        id: &str,
        title: &str,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let _writing = self.writing();
        if !valid_chat_id(id) {
            return Ok(None);
        }
        check_title(title)?;
        let key = chat_key(uid, id);
        let t = self.trees()?;
        finish((&t.chats, &t.chat_index).transaction(|(chats, index)| {
            let (Some(raw_summary), Some(raw_record)) = (index.get(&key)?, chats.get(&key)?) else {
                return Ok(None);
            };
            let mut summary: ChatSummary =
                decode(CHAT_INDEX, &raw_summary, || describe(uid, id)).or_abort()?;
            let mut record: ChatRecord =
                decode(CHATS, &raw_record, || describe(uid, id)).or_abort()?;
            let updated_at_ms = now_ms.max(summary.updated_at_ms.saturating_add(1));
            summary.bytes = chat_size(title, &record.messages);
            summary.title = title.to_owned();
            summary.updated_at_ms = updated_at_ms;
            record.title = title.to_owned();
            record.updated_at_ms = updated_at_ms;
            chats.insert(key.as_slice(), encode(&record).or_abort()?)?;
            index.insert(key.as_slice(), encode(&summary).or_abort()?)?;
            Ok(Some(updated_at_ms))
        }))
    }

    /// Deletes one of the user's conversations; whether it existed.
    pub fn delete_chat(&self, uid: Uid, id: &str) -> Result<bool, StoreError> {
        let _writing = self.writing();
        if !valid_chat_id(id) {
            return Ok(false);
        }
        let key = chat_key(uid, id);
        let t = self.trees()?;
        finish((&t.chats, &t.chat_index).transaction(|(chats, index)| {
            let had = index.remove(key.as_slice())?.is_some();
            let had_record = chats.remove(key.as_slice())?.is_some();
            Ok(had || had_record)
        }))
    }

    /// Deletes every saved conversation of `uid` (a guest whose account expired); how many.
    pub fn delete_chats_of(&self, uid: Uid) -> Result<usize, StoreError> {
        let _writing = self.writing();
        let t = self.trees()?;
        let mut removed = 0;
        loop {
            let mut keys = Vec::with_capacity(DELETE_BATCH);
            for item in t.chat_index.scan_prefix(u64_key(uid.0)) {
                keys.push(item?.0);
                if keys.len() == DELETE_BATCH {
                    break;
                }
            }
            if keys.is_empty() {
                return Ok(removed);
            }
            let batch = keys.len();
            finish((&t.chats, &t.chat_index).transaction(|(chats, index)| {
                for key in &keys {
                    chats.remove(key.as_slice())?;
                    index.remove(key.as_slice())?;
                }
                Ok(())
            }))?;
            removed += batch;
            if batch < DELETE_BATCH {
                return Ok(removed);
            }
        }
    }

    /// Up to `limit` users, from `from` on in uid order, who have saved conversations (for
    /// the cleanup of expired guests'); the uid to go on from, if there may be more.
    pub fn chat_owners(
        &self,
        from: Uid,
        limit: usize,
    ) -> Result<(Vec<Uid>, Option<Uid>), StoreError> {
        let t = self.trees()?;
        let mut owners = Vec::new();
        let mut next = from.0;
        while owners.len() < limit {
            let found = t.chat_index.range(u64_key(next), [0xff; 9]).next();
            let Some(item) = found else {
                return Ok((owners, None));
            };
            let (key, _) = item?;
            let (uid, _) = split_u64_prefix(CHAT_INDEX, &key)?;
            owners.push(Uid(uid));
            match uid.checked_add(1) {
                Some(n) => next = n,
                None => return Ok((owners, None)),
            }
        }
        Ok((owners, Some(Uid(next))))
    }
}

#[cfg(test)]
mod tests;
