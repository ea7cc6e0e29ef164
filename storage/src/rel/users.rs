//! Users and identities on PostgreSQL. A user is made with its balance row; a first contact
//! makes user, balance and identity in one statement.

use chatrelay_core::UserKey;
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use super::{Attempts, RelStore, col, one, uid_of, uid_param};
use crate::codec::{MAX_KEY_LEN, check_key};
use crate::{Admission, StoreError, Uid, User, system_now_ms};

pub(super) const USER_COLS: &str = "uid, name, created_at_ms, banned, ban_reason, groups";

/// $1 name, $2 now.
const CREATE_USER: &str = "WITH u AS (
         INSERT INTO users (name, created_at_ms) VALUES ($1, $2)
         RETURNING uid, name, created_at_ms, banned, ban_reason, groups),
     b AS (INSERT INTO balances (uid) SELECT uid FROM u)
     SELECT * FROM u";

/// $1 platform, $2 account, $3 user id, $4 name for a new user, $5 now. The uid, found or
/// made; a racing first contact makes the identity insert fail (the whole statement with it).
const RESOLVE: &str = "WITH found AS (
         SELECT uid FROM identities WHERE platform = $1 AND account = $2 AND user_id = $3),
     u AS (
         INSERT INTO users (name, created_at_ms)
         SELECT $4, $5 WHERE NOT EXISTS (SELECT 1 FROM found)
         RETURNING uid),
     i AS (
         INSERT INTO identities (platform, account, user_id, uid)
         SELECT $1, $2, $3, uid FROM u RETURNING uid),
     b AS (INSERT INTO balances (uid) SELECT uid FROM u)
     SELECT uid FROM found UNION ALL SELECT uid FROM i";

/// $1 platform, $2 account, $3 user id, $4 name for a new user, $5 now, $6 mark, $7 its
/// expiry, $8 now (for the mark). Admits a message: takes its dedupe mark if free or expired
/// and then resolves its sender (as [`RESOLVE`]); `won` false (and no uid, nothing written):
/// seen. A racing first contact of the same sender fails the identity insert and with it the
/// whole statement, mark included; its second run finds the other's user.
const ADMIT: &str = "WITH mark AS (
         INSERT INTO dedupe (key, expires_at_ms) VALUES ($6, $7)
         ON CONFLICT (key) DO UPDATE SET expires_at_ms = excluded.expires_at_ms, bound = NULL
         WHERE dedupe.expires_at_ms <= $8
         RETURNING true AS won),
     found AS (
         SELECT uid FROM identities
         WHERE platform = $1 AND account = $2 AND user_id = $3 AND EXISTS (SELECT 1 FROM mark)),
     u AS (
         INSERT INTO users (name, created_at_ms)
         SELECT $4, $5 WHERE EXISTS (SELECT 1 FROM mark) AND NOT EXISTS (SELECT 1 FROM found)
         RETURNING uid),
     i AS (
         INSERT INTO identities (platform, account, user_id, uid)
         SELECT $1, $2, $3, uid FROM u RETURNING uid),
     b AS (INSERT INTO balances (uid) SELECT uid FROM u)
     SELECT uid FROM found UNION ALL SELECT uid FROM i";

/// $1 platform, $2 account, $3 user id.
const FIND: &str =
    "SELECT uid FROM identities WHERE platform = $1 AND account = $2 AND user_id = $3";

impl RelStore {
    /// Creates a user (and its balance) with the next uid.
    pub(crate) async fn create_user(&self, name: &str) -> Result<User, StoreError> {
        check_name(name)?;
        let now = system_now_ms();
        let rows = self
            .rows(CREATE_USER, &[(&name, Type::TEXT), (&now, Type::INT8)])
            .await?;
        user_from(one(&rows)?)
    }

    /// The user with this uid, if any.
    pub(crate) async fn user(&self, uid: Uid) -> Result<Option<User>, StoreError> {
        let Ok(id) = uid_param(uid) else {
            return Ok(None);
        };
        let sql = format!("SELECT {USER_COLS} FROM users WHERE uid = $1");
        let rows = self.rows(&sql, &[(&id, Type::INT8)]).await?;
        rows.first().map(user_from).transpose()
    }

    /// The uid owning `key`, creating user, balance and identity if it has none (one round
    /// trip either way). `display_name` names a new user; without it the key's text does.
    pub(crate) async fn resolve_identity(
        &self,
        key: &UserKey,
        display_name: Option<&str>,
    ) -> Result<Uid, StoreError> {
        let key_text = key.to_string();
        check_key("user key", &key_text)?;
        let name = self.new_user_name(key, &key_text, display_name).await?;
        let platform = key.platform.as_str();
        let now = system_now_ms();
        let mut attempts = Attempts::new();
        loop {
            attempts.next().await?;
            let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 5] = [
                (&platform, Type::TEXT),
                (&key.account, Type::TEXT),
                (&key.user, Type::TEXT),
                (&name, Type::TEXT),
                (&now, Type::INT8),
            ];
            let Some(rows) = self.run(RESOLVE, &params).await? else {
                continue;
            };
            return uid_of(one(&rows)?, "uid");
        }
    }

    /// Admits a chat-platform message in one round trip (as `KvStore::admit`): sets its dedupe
    /// mark `mark` until `expires_at_ms` (refused while a live mark, by `now_ms`, exists) and
    /// resolves its sender `key`, creating user, balance and identity on first contact. A
    /// message is either seen and its sender known, or neither: a seen message from a new
    /// sender makes no user.
    pub(crate) async fn admit(
        &self,
        key: &UserKey,
        display_name: Option<&str>,
        mark: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<Admission, StoreError> {
        check_key("dedupe key", mark)?;
        let key_text = key.to_string();
        check_key("user key", &key_text)?;
        let name = self.new_user_name(key, &key_text, display_name).await?;
        let platform = key.platform.as_str();
        let now = system_now_ms();
        let mut attempts = Attempts::new();
        loop {
            attempts.next().await?;
            let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 8] = [
                (&platform, Type::TEXT),
                (&key.account, Type::TEXT),
                (&key.user, Type::TEXT),
                (&name, Type::TEXT),
                (&now, Type::INT8),
                (&mark, Type::TEXT),
                (&expires_at_ms, Type::INT8),
                (&now_ms, Type::INT8),
            ];
            let Some(rows) = self.run(ADMIT, &params).await? else {
                continue;
            };
            return match rows.first() {
                None => Ok(Admission::Seen),
                Some(row) => uid_of(row, "uid").map(Admission::New),
            };
        }
    }

    /// The name a first contact of `key` makes its user with: `display_name`, else the key's
    /// text. As on sled, a name too long matters only when a user is made: it is refused
    /// only when `key` has no user yet.
    async fn new_user_name<'a>(
        &self,
        key: &UserKey,
        key_text: &'a str,
        display_name: Option<&'a str>,
    ) -> Result<&'a str, StoreError> {
        let name = match display_name {
            Some(name) if !name.is_empty() => name,
            _ => key_text,
        };
        if check_name(name).is_err() && self.identity(key).await?.is_none() {
            check_name(name)?;
        }
        Ok(name)
    }

    /// The uid owning `key`, if any.
    pub(crate) async fn identity(&self, key: &UserKey) -> Result<Option<Uid>, StoreError> {
        let platform = key.platform.as_str();
        let rows = self
            .rows(
                FIND,
                &[
                    (&platform, Type::TEXT),
                    (&key.account, Type::TEXT),
                    (&key.user, Type::TEXT),
                ],
            )
            .await?;
        rows.first().map(|r| uid_of(r, "uid")).transpose()
    }

    /// Every key that belongs to `uid`, in the order of their text (as on sled).
    pub(crate) async fn identities_of(&self, uid: Uid) -> Result<Vec<UserKey>, StoreError> {
        let Ok(id) = uid_param(uid) else {
            return Ok(Vec::new());
        };
        let rows = self
            .rows(
                "SELECT platform, account, user_id FROM identities WHERE uid = $1",
                &[(&id, Type::INT8)],
            )
            .await?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            let (platform, account, user): (String, String, String) = (
                col(row, "platform")?,
                col(row, "account")?,
                col(row, "user_id")?,
            );
            let text = if account.is_empty() {
                format!("{platform}:{user}")
            } else {
                format!("{platform}:{account}:{user}")
            };
            let key = text
                .parse::<UserKey>()
                .map_err(|e| StoreError::corrupt("identities", text.clone(), e))?;
            keys.push((text, key));
        }
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(keys.into_iter().map(|(_, k)| k).collect())
    }
}

pub(super) fn user_from(row: &Row) -> Result<User, StoreError> {
    Ok(User {
        uid: uid_of(row, "uid")?,
        name: col(row, "name")?,
        created_at_ms: col(row, "created_at_ms")?,
        banned: col(row, "banned")?,
        ban_reason: col(row, "ban_reason")?,
        groups: col(row, "groups")?,
    })
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
