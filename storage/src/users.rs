//! Users and identities: which [`UserKey`]s (platform accounts) belong to which [`Uid`].
//!
//! `identities` maps the key's text to a uid; `identities_by_uid` (uid ‖ key text → empty) is
//! the reverse index for [`KvStore::identities_of`]. Both change in one transaction.

use crate::kv::Transactional;
use crate::kv::TxTree;
use chatrelay_core::UserKey;
use serde::{Deserialize, Serialize};

use crate::codec::{
    MAX_KEY_LEN, OrAbort, TxResult, abort, decode, encode, finish, prefixed_key, split_u64_prefix,
    u64_key,
};
use crate::dedupe::Mark;
use crate::{
    DEDUPE, IDENTITIES, IDENTITIES_BY_UID, KvStore, META, StoreError, USERS, Uid, system_now_ms,
};

/// The `meta` key holding the next uid to hand out.
const NEXT_UID_KEY: &[u8] = b"next_uid";

/// A user: one person, whichever platforms they write from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user's id.
    pub uid: Uid,
    /// A display name (the platform nickname, or the first identity's key).
    pub name: String,
    /// When the user was created, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// A banned user is refused service by the engine.
    #[serde(default)]
    pub banned: bool,
    /// Why the user was banned (shown to admins), while banned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ban_reason: Option<String>,
    /// Groups the user is in (models can be limited to groups), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// What [`KvStore::admit`] decided about a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// First seen (its mark is set now): answer it, for this user (created on first contact).
    New(Uid),
    /// A live mark says the message was seen before: nothing was written.
    Seen,
}

/// Users in a row from before the period that end [`KvStore::users_created_since`]'s walk.
pub const OLDER_IN_A_ROW: usize = 64;

/// A user as `admin user list` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserActivity {
    /// The user.
    pub user: User,
    /// When their credits last changed, ms since the Unix epoch; `None` if never.
    pub last_active_ms: Option<i64>,
}

impl KvStore {
    /// Creates a user with the next free uid.
    pub fn create_user(&self, name: &str) -> Result<User, StoreError> {
        let _writing = self.writing();
        check_name(name)?;
        let now = system_now_ms();
        let t = self.trees()?;
        let drawn = t.db.new_uid()?;
        finish(
            (&t.meta, &t.users)
                .transaction(|(meta, users)| insert_new_user(meta, users, name, now, drawn)),
        )
    }

    /// The user with this uid, if any.
    pub fn user(&self, uid: Uid) -> Result<Option<User>, StoreError> {
        match self.trees()?.users.get(u64_key(uid.0))? {
            Some(raw) => decode(USERS, &raw, || uid.to_string()).map(Some),
            None => Ok(None),
        }
    }

    /// Bans (with a reason for admins) or unbans a user; returns the updated user.
    pub fn set_banned(
        &self,
        uid: Uid,
        banned: bool,
        reason: Option<&str>,
    ) -> Result<User, StoreError> {
        let _writing = self.writing();
        finish(self.trees()?.users.transaction(|users| {
            let key = u64_key(uid.0);
            let Some(raw) = users.get(key)? else {
                return abort(StoreError::UnknownUser(uid));
            };
            let mut user: User = decode(USERS, &raw, || uid.to_string()).or_abort()?;
            user.banned = banned;
            user.ban_reason = if banned {
                reason.map(str::to_owned)
            } else {
                None
            };
            users.insert(key, encode(&user).or_abort()?)?;
            Ok(user)
        }))
    }

    /// Adds the user to the groups in `add` and removes them from those in `remove`;
    /// returns the updated user.
    pub fn change_groups(
        &self,
        uid: Uid,
        add: &[String],
        remove: &[String],
    ) -> Result<User, StoreError> {
        let _writing = self.writing();
        if add
            .iter()
            .chain(remove)
            .any(|g| g.trim().is_empty() || g.len() > 64)
        {
            return Err(StoreError::InvalidInput(
                "group names must be 1 to 64 bytes".into(),
            ));
        }
        finish(self.trees()?.users.transaction(|users| {
            let key = u64_key(uid.0);
            let Some(raw) = users.get(key)? else {
                return abort(StoreError::UnknownUser(uid));
            };
            let mut user: User = decode(USERS, &raw, || uid.to_string()).or_abort()?;
            user.groups.retain(|g| !remove.contains(g));
            for g in add {
                if !user.groups.contains(g) {
                    user.groups.push(g.trim().to_owned());
                }
            }
            user.groups.sort();
            users.insert(key, encode(&user).or_abort()?)?;
            Ok(user)
        }))
    }

    /// Users whose name contains `query` (case-insensitive), lowest uid first, at most
    /// `limit`. Scans every user: an admin tool, not for hot paths.
    pub fn find_users_by_name(&self, query: &str, limit: usize) -> Result<Vec<User>, StoreError> {
        let needle = query.to_lowercase();
        let mut found = Vec::new();
        for item in self.trees()?.users.iter() {
            if found.len() >= limit {
                break;
            }
            let (key, raw) = item?;
            let user: User = decode(USERS, &raw, || crate::codec::describe_bytes(&key))?;
            if user.name.to_lowercase().contains(&needle) {
                found.push(user);
            }
        }
        Ok(found)
    }

    /// Identities whose key text contains `query` (so a bare openid or Telegram id finds its
    /// key), with their users, at most `limit`. Scans every identity: an admin tool.
    pub fn find_identities(
        &self,
        query: &str,
        limit: usize,
    ) -> Result<Vec<(UserKey, Uid)>, StoreError> {
        let mut found = Vec::new();
        for item in self.trees()?.identities.iter() {
            if found.len() >= limit {
                break;
            }
            let (key, raw) = item?;
            let Ok(text) = std::str::from_utf8(&key) else {
                continue;
            };
            if !text.contains(query) {
                continue;
            }
            let uid: Uid = decode(IDENTITIES, &raw, || text.to_owned())?;
            if let Ok(k) = text.parse::<UserKey>() {
                found.push((k, uid));
            }
        }
        Ok(found)
    }

    /// Every user with when their credits last changed (their newest
    /// ledger entry: an answer, a payment, a grant), lowest uid first. Scans every user: an
    /// admin tool, not for hot paths.
    pub fn user_activity(&self) -> Result<Vec<UserActivity>, StoreError> {
        let t = self.trees()?;
        let mut out = Vec::new();
        for item in t.users.iter() {
            let (key, raw) = item?;
            let user: User = decode(USERS, &raw, || crate::codec::describe_bytes(&key))?;
            let last = self.ledger(user.uid, 1)?;
            out.push(UserActivity {
                last_active_ms: last.first().map(|e| e.at_ms),
                user,
            });
        }
        Ok(out)
    }

    /// When the users created since `since_ms` were created (ms since the Unix epoch),
    /// newest first, for the per-day figures. Uids grow with time, so this reads the users
    /// tree backwards from the newest and stops after [`OLDER_IN_A_ROW`] users in a row from
    /// before `since_ms` (creations racing each other can finish out of order by a moment):
    /// it reads the users of the period asked for, not every user.
    pub fn users_created_since(&self, since_ms: i64) -> Result<Vec<i64>, StoreError> {
        let t = self.trees()?;
        let mut out = Vec::new();
        let mut end = u64::MAX.to_be_bytes().to_vec();
        let mut older = 0;
        loop {
            let page = t.users.range_rev([0u8; 8], &end, 256)?;
            let Some((last_key, _)) = page.last() else {
                return Ok(out);
            };
            let next_end = last_key.clone();
            for (key, raw) in &page {
                let user: User = decode(USERS, raw, || crate::codec::describe_bytes(key))?;
                if user.created_at_ms >= since_ms {
                    out.push(user.created_at_ms);
                    older = 0;
                } else {
                    older += 1;
                    if older >= OLDER_IN_A_ROW {
                        return Ok(out);
                    }
                }
            }
            end = next_end;
        }
    }

    /// How many users exist (counts them: not for hot paths).
    pub fn user_count(&self) -> usize {
        self.trees().and_then(|t| t.users.len()).unwrap_or(0)
    }

    /// The uid owning `key`, creating user and identity if it has none.
    ///
    /// Creation is one transaction (user, identity and index), so two racing callers get the
    /// same uid. `display_name` names a new user; without it the key's text does.
    pub fn resolve_identity(
        &self,
        key: &UserKey,
        display_name: Option<&str>,
    ) -> Result<Uid, StoreError> {
        let _writing = self.writing();
        if let Some(uid) = self.identity(key)? {
            return Ok(uid);
        }
        let key_text = key.to_string();
        check_key_text(&key_text)?;
        let name = match display_name {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => key_text.clone(),
        };
        check_name(&name)?;
        let now = system_now_ms();
        let t = self.trees()?;
        // Drawn outside the transaction, which may run more than once.
        let drawn = t.db.new_uid()?;
        finish(
            (&t.identities, &t.identities_by_uid, &t.meta, &t.users).transaction(
                |(ids, by_uid, meta, users)| {
                    if let Some(raw) = ids.get(key_text.as_bytes())? {
                        return decode(IDENTITIES, &raw, || key_text.clone()).or_abort();
                    }
                    let user = insert_new_user(meta, users, &name, now, drawn)?;
                    ids.insert(key_text.as_bytes(), encode(&user.uid).or_abort()?)?;
                    by_uid.insert(prefixed_key(user.uid.0, key_text.as_bytes()), &[][..])?;
                    Ok(user.uid)
                },
            ),
        )
    }

    /// Admits a chat-platform message in one step: sets its dedupe mark `mark` until
    /// `expires_at_ms` (as [`KvStore::dedupe_insert`]: refused while a live mark, by `now_ms`,
    /// exists) and resolves its sender `key` (as [`KvStore::resolve_identity`], creating user and
    /// identity on first contact), in one transaction: a message is either seen and its sender
    /// known, or neither. A returning sender's step touches the marks and identities only.
    pub fn admit(
        &self,
        key: &UserKey,
        display_name: Option<&str>,
        mark: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<Admission, StoreError> {
        let _writing = self.writing();
        crate::codec::check_key("dedupe key", mark)?;
        let key_text = key.to_string();
        check_key_text(&key_text)?;
        let new_mark = encode(&expires_at_ms)?;
        let t = self.trees()?;
        if t.identities.get(key_text.as_bytes())?.is_some() {
            let known = finish((&t.dedupe, &t.identities).transaction(|(dedupe, ids)| {
                if mark_is_live(dedupe, mark, now_ms)? {
                    return Ok(Some(Admission::Seen));
                }
                let Some(raw) = ids.get(key_text.as_bytes())? else {
                    // Unlinked meanwhile: the full step below creates the user.
                    return Ok(None);
                };
                let uid: Uid = decode(IDENTITIES, &raw, || key_text.clone()).or_abort()?;
                dedupe.insert(mark.as_bytes(), &new_mark)?;
                Ok(Some(Admission::New(uid)))
            }))?;
            if let Some(admission) = known {
                return Ok(admission);
            }
        }
        let name = match display_name {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => key_text.clone(),
        };
        check_name(&name)?;
        let created_at = system_now_ms();
        // Drawn outside the transaction, which may run more than once.
        let drawn = t.db.new_uid()?;
        finish(
            (
                &t.dedupe,
                &t.identities,
                &t.identities_by_uid,
                &t.meta,
                &t.users,
            )
                .transaction(|(dedupe, ids, by_uid, meta, users)| {
                    if mark_is_live(dedupe, mark, now_ms)? {
                        return Ok(Admission::Seen);
                    }
                    dedupe.insert(mark.as_bytes(), &new_mark)?;
                    if let Some(raw) = ids.get(key_text.as_bytes())? {
                        let uid = decode(IDENTITIES, &raw, || key_text.clone()).or_abort()?;
                        return Ok(Admission::New(uid));
                    }
                    let user = insert_new_user(meta, users, &name, created_at, drawn)?;
                    ids.insert(key_text.as_bytes(), encode(&user.uid).or_abort()?)?;
                    by_uid.insert(prefixed_key(user.uid.0, key_text.as_bytes()), &[][..])?;
                    Ok(Admission::New(user.uid))
                }),
        )
    }

    /// The uid owning `key`, if any.
    pub fn identity(&self, key: &UserKey) -> Result<Option<Uid>, StoreError> {
        let key_text = key.to_string();
        match self.trees()?.identities.get(key_text.as_bytes())? {
            Some(raw) => decode(IDENTITIES, &raw, || key_text).map(Some),
            None => Ok(None),
        }
    }

    /// Makes `key` belong to `uid`; returns its previous owner, if any.
    pub fn link_identity(&self, key: &UserKey, uid: Uid) -> Result<Option<Uid>, StoreError> {
        let _writing = self.writing();
        let key_text = key.to_string();
        check_key_text(&key_text)?;
        let t = self.trees()?;
        finish((&t.identities, &t.identities_by_uid, &t.users).transaction(
            |(ids, by_uid, users)| {
                if users.get(u64_key(uid.0))?.is_none() {
                    return abort(StoreError::UnknownUser(uid));
                }
                let previous: Option<Uid> = match ids.get(key_text.as_bytes())? {
                    Some(raw) => Some(decode(IDENTITIES, &raw, || key_text.clone()).or_abort()?),
                    None => None,
                };
                if previous == Some(uid) {
                    return Ok(previous);
                }
                if let Some(old) = previous {
                    by_uid.remove(prefixed_key(old.0, key_text.as_bytes()))?;
                }
                ids.insert(key_text.as_bytes(), encode(&uid).or_abort()?)?;
                by_uid.insert(prefixed_key(uid.0, key_text.as_bytes()), &[][..])?;
                Ok(previous)
            },
        ))
    }

    /// Detaches `key` from its user; false if it belonged to no one.
    pub fn unlink_identity(&self, key: &UserKey) -> Result<bool, StoreError> {
        let _writing = self.writing();
        let key_text = key.to_string();
        let t = self.trees()?;
        finish(
            (&t.identities, &t.identities_by_uid).transaction(|(ids, by_uid)| {
                let Some(raw) = ids.remove(key_text.as_bytes())? else {
                    return Ok(false);
                };
                let uid: Uid = decode(IDENTITIES, &raw, || key_text.clone()).or_abort()?;
                by_uid.remove(prefixed_key(uid.0, key_text.as_bytes()))?;
                Ok(true)
            }),
        )
    }

    /// Every key that belongs to `uid`, in key order.
    pub fn identities_of(&self, uid: Uid) -> Result<Vec<UserKey>, StoreError> {
        let mut keys = Vec::new();
        for item in self.trees()?.identities_by_uid.scan_prefix(u64_key(uid.0)) {
            let (raw_key, _) = item?;
            let (_, rest) = split_u64_prefix(IDENTITIES_BY_UID, &raw_key)?;
            let describe = || format!("{uid}/{}", String::from_utf8_lossy(rest));
            let text = std::str::from_utf8(rest)
                .map_err(|e| StoreError::corrupt(IDENTITIES_BY_UID, describe(), e))?;
            let key = text
                .parse::<UserKey>()
                .map_err(|e| StoreError::corrupt(IDENTITIES_BY_UID, describe(), e))?;
            keys.push(key);
        }
        Ok(keys)
    }
}

/// Allocates the next uid (skipping any already taken) and writes the new user. `drawn`: a
/// uid the engine handed out (PostgreSQL's sequence, so that daemons creating users at once
/// do not all update one counter); `None`: the `next_uid` counter in `meta`.
fn insert_new_user(
    meta: &TxTree<'_>,
    users: &TxTree<'_>,
    name: &str,
    now_ms: i64,
    drawn: Option<u64>,
) -> TxResult<User> {
    let mut next: u64 = match drawn {
        Some(uid) => uid,
        // The counter is read only when used: on PostgreSQL it would be one hot row.
        None => match meta.get(NEXT_UID_KEY)? {
            Some(raw) => decode(META, &raw, || "next_uid".to_owned()).or_abort()?,
            None => 1,
        },
    };
    next = next.max(1);
    // A counter behind the users tree (restored from an old backup, say) must not reuse uids.
    while users.get(u64_key(next))?.is_some() {
        next = match next.checked_add(1) {
            Some(n) => n,
            None => return abort(StoreError::corrupt(META, "next_uid", "uid space exhausted")),
        };
    }
    let user = User {
        uid: Uid(next),
        name: name.to_owned(),
        created_at_ms: now_ms,
        banned: false,
        ban_reason: None,
        groups: Vec::new(),
    };
    if drawn.is_none() {
        meta.insert(NEXT_UID_KEY, encode(&next.saturating_add(1)).or_abort()?)?;
    }
    users.insert(u64_key(next), encode(&user).or_abort()?)?;
    Ok(user)
}

/// Whether the dedupe mark `key` is live at `now_ms`, as the transaction sees it.
fn mark_is_live(dedupe: &TxTree<'_>, key: &str, now_ms: i64) -> TxResult<bool> {
    match dedupe.get(key.as_bytes())? {
        Some(raw) => {
            let mark: Mark = decode(DEDUPE, &raw, || format!("{key:?}")).or_abort()?;
            Ok(mark.expires_at_ms() > now_ms)
        }
        None => Ok(false),
    }
}

fn check_name(name: &str) -> Result<(), StoreError> {
    if name.len() > MAX_KEY_LEN {
        return Err(StoreError::InvalidInput(format!(
            "user name is {} bytes long, the limit is {MAX_KEY_LEN}",
            name.len()
        )));
    }
    Ok(())
}

fn check_key_text(key: &str) -> Result<(), StoreError> {
    crate::codec::check_key("user key", key)
}

/// What an answer reads once its message is admitted ([`crate::Store::admitted_reads`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdmittedReads {
    /// The sender's record (`None`: no such user).
    pub user: Option<User>,
    /// The values of the checkpoints asked for, in their order (`None` where absent).
    pub checkpoints: Vec<Option<String>>,
    /// The conversation's turns, oldest first (empty when none was asked for).
    pub turns: Vec<crate::Turn>,
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use chatrelay_core::Platform;

    use super::*;

    fn key(user: &str) -> UserKey {
        UserKey::new(Platform::Mp, "main", user)
    }

    #[test]
    fn admit_marks_the_message_and_resolves_its_sender_once() {
        let store = KvStore::open_temporary().unwrap();
        let first = store.admit(&key("o1"), Some("Ann"), "m1", 100, 0).unwrap();
        let Admission::New(uid) = first else {
            panic!("a new message is admitted: {first:?}")
        };
        assert_eq!(store.identity(&key("o1")).unwrap(), Some(uid));
        assert_eq!(store.user(uid).unwrap().unwrap().name, "Ann");
        // The same message again, while its mark lives: seen, nothing written.
        assert_eq!(
            store.admit(&key("o1"), None, "m1", 200, 50).unwrap(),
            Admission::Seen
        );
        assert!(
            !store.dedupe_insert("m1", 200, 50).unwrap(),
            "one mark tree"
        );
        // A seen message from a new sender creates no user.
        assert_eq!(
            store.admit(&key("o2"), None, "m1", 200, 50).unwrap(),
            Admission::Seen
        );
        assert_eq!(store.identity(&key("o2")).unwrap(), None);
        assert_eq!(store.user_count(), 1);
        // The next message of the same sender: the same user; an expired mark admits again.
        assert_eq!(
            store.admit(&key("o1"), None, "m2", 100, 0).unwrap(),
            Admission::New(uid)
        );
        assert_eq!(
            store.admit(&key("o1"), None, "m1", 300, 100).unwrap(),
            Admission::New(uid)
        );
        assert_eq!(store.user_count(), 1);
        assert!(store.admit(&key("o1"), None, "", 1, 0).is_err());
    }

    #[test]
    fn racing_admits_admit_a_message_once_and_make_one_user() {
        let store = Arc::new(KvStore::open_temporary().unwrap());
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (store, barrier) = (store.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    store.admit(&key("racer"), None, "same", 100, 0).unwrap()
                })
            })
            .collect();
        let results: Vec<Admission> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let new: Vec<_> = results
            .iter()
            .filter(|a| matches!(a, Admission::New(_)))
            .collect();
        assert_eq!(new.len(), 1, "{results:?}");
        assert_eq!(store.user_count(), 1);
    }

    #[test]
    fn uids_start_at_one_and_are_dense() {
        let store = KvStore::open_temporary().unwrap();
        let a = store.create_user("a").unwrap();
        let b = store.create_user("b").unwrap();
        assert_eq!((a.uid, b.uid), (Uid(1), Uid(2)));
        assert!(!a.banned);
        assert_eq!(store.user(Uid(2)).unwrap().unwrap(), b);
        assert_eq!(store.user(Uid(3)).unwrap(), None);
        assert_eq!(store.user_count(), 2);
    }

    #[test]
    fn activity_is_the_newest_ledger_entry() {
        let store = KvStore::open_temporary().unwrap();
        let a = store.create_user("a").unwrap();
        let b = store.create_user("b").unwrap();
        store
            .grant(a.uid, 5, crate::EntryKind::Grant, "t", "r1", 1_000)
            .unwrap();
        store
            .grant(a.uid, 5, crate::EntryKind::Grant, "t", "r2", 2_000)
            .unwrap();
        let all = store.user_activity().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0].user.uid, all[0].last_active_ms),
            (a.uid, Some(2_000))
        );
        assert_eq!((all[1].user.uid, all[1].last_active_ms), (b.uid, None));
    }

    #[test]
    fn find_by_name_and_by_part_of_a_key() {
        let store = KvStore::open_temporary().unwrap();
        let alice = store.create_user("Alice Wang").unwrap();
        store.create_user("bob").unwrap();
        let key: UserKey = "mp:main:o6_abcdef".parse().unwrap();
        store.link_identity(&key, alice.uid).unwrap();
        let by_name = store.find_users_by_name("alice", 10).unwrap();
        assert_eq!(by_name.len(), 1);
        assert_eq!(by_name[0].uid, alice.uid);
        assert_eq!(
            store.find_users_by_name("", 1).unwrap().len(),
            1,
            "limit holds"
        );
        let by_key = store.find_identities("o6_abc", 10).unwrap();
        assert_eq!(by_key, vec![(key, alice.uid)]);
        assert!(store.find_identities("nobody", 10).unwrap().is_empty());
    }

    #[test]
    fn groups_are_added_and_removed() {
        let store = KvStore::open_temporary().unwrap();
        let a = store.create_user("a").unwrap();
        let u = store
            .change_groups(a.uid, &["vip".into(), "team".into()], &[])
            .unwrap();
        assert_eq!(u.groups, vec!["team", "vip"]);
        let u = store
            .change_groups(a.uid, &["vip".into()], &["team".into()])
            .unwrap();
        assert_eq!(u.groups, vec!["vip"]);
        assert_eq!(store.user(a.uid).unwrap().unwrap().groups, vec!["vip"]);
        assert!(store.change_groups(a.uid, &[" ".into()], &[]).is_err());
    }

    #[test]
    fn ban_and_unban() {
        let store = KvStore::open_temporary().unwrap();
        let a = store.create_user("a").unwrap();
        let banned = store.set_banned(a.uid, true, Some("spam")).unwrap();
        assert!(banned.banned);
        assert_eq!(banned.ban_reason.as_deref(), Some("spam"));
        assert!(store.user(a.uid).unwrap().unwrap().banned);
        let unbanned = store.set_banned(a.uid, false, None).unwrap();
        assert!(!unbanned.banned);
        assert_eq!(unbanned.ban_reason, None, "the reason goes with the ban");
        assert!(matches!(
            store.set_banned(Uid(99), true, None),
            Err(StoreError::UnknownUser(Uid(99)))
        ));
    }

    #[test]
    fn user_without_banned_field_reads_as_not_banned() {
        let store = KvStore::open_temporary().unwrap();
        store
            .trees()
            .unwrap()
            .users
            .insert(u64_key(5), br#"{"uid":5,"name":"old","created_at_ms":1}"#)
            .unwrap();
        let user = store.user(Uid(5)).unwrap().unwrap();
        assert!(!user.banned);
        // The counter skips a uid that is already taken.
        for _ in 0..4 {
            store.create_user("x").unwrap();
        }
        assert_eq!(store.create_user("y").unwrap().uid, Uid(6));
    }

    #[test]
    fn corrupt_user_is_an_error_naming_the_key() {
        let store = KvStore::open_temporary().unwrap();
        store
            .trees()
            .unwrap()
            .users
            .insert(u64_key(7), b"\xff garbage")
            .unwrap();
        match store.user(Uid(7)) {
            Err(StoreError::Corrupt { tree, key, .. }) => {
                assert_eq!((tree, key.as_str()), ("users", "7"))
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(matches!(
            store.set_banned(Uid(7), true, None),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn resolve_creates_once_and_reuses() {
        let store = KvStore::open_temporary().unwrap();
        let uid = store.resolve_identity(&key("o1"), Some("Alice")).unwrap();
        assert_eq!(
            store.resolve_identity(&key("o1"), Some("Other")).unwrap(),
            uid
        );
        assert_eq!(store.user(uid).unwrap().unwrap().name, "Alice");
        let other = store.resolve_identity(&key("o2"), None).unwrap();
        assert_ne!(other, uid);
        assert_eq!(store.user(other).unwrap().unwrap().name, "mp:main:o2");
        assert_eq!(store.identity(&key("o1")).unwrap(), Some(uid));
        assert_eq!(store.identity(&key("nobody")).unwrap(), None);
        assert_eq!(store.identities_of(uid).unwrap(), vec![key("o1")]);
    }

    #[test]
    fn racing_resolvers_get_the_same_uid() {
        let store = KvStore::open_temporary().unwrap();
        let barrier = Arc::new(Barrier::new(16));
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let store = store.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    store.resolve_identity(&key("racer"), None).unwrap()
                })
            })
            .collect();
        let uids: Vec<Uid> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(uids.iter().all(|u| *u == uids[0]));
        assert_eq!(store.user_count(), 1);
        assert_eq!(store.identities_of(uids[0]).unwrap().len(), 1);
    }

    #[test]
    fn corrupt_identity_index_is_an_error() {
        let store = KvStore::open_temporary().unwrap();
        store
            .trees()
            .unwrap()
            .identities_by_uid
            .insert(prefixed_key(1, b"bogus"), &[][..])
            .unwrap();
        assert!(matches!(
            store.identities_of(Uid(1)),
            Err(StoreError::Corrupt {
                tree: "identities_by_uid",
                ..
            })
        ));
        store
            .trees()
            .unwrap()
            .identities
            .insert("mp:main:z", b"nope")
            .unwrap();
        assert!(matches!(
            store.identity(&key("z")),
            Err(StoreError::Corrupt {
                tree: "identities",
                ..
            })
        ));
    }
}
