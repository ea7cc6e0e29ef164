//! API tokens (stored only as their SHA-256) and one-time login codes on PostgreSQL.

use ring::rand::{SecureRandom, SystemRandom};
use tokio_postgres::types::{ToSql, Type};

use super::{Attempts, RelStore, col, uid_of, uid_param};
use crate::tokens::{hash_prefix, token_hash};
use crate::{
    LOGIN_CODE_ALPHABET, LOGIN_CODE_CHARS, LoginCode, StoreError, TOKEN_PREFIX, TokenInfo, Uid,
    normalize_login_code,
};

/// Random bytes in a token (48 hex characters), as on sled.
const TOKEN_BYTES: usize = 24;

/// $1 code, $2 uid, $3 expiry, $4 now: the user's live code, else a new one in its place
/// (a code of someone else's that expired gives way too). No row back: `$1` is someone
/// else's live code, or a racing request of the same user made one; draw again.
const LOGIN_CODE: &str = "WITH u AS (SELECT uid FROM users WHERE uid = $2),
     cur AS (SELECT code, uid, expires_at_ms FROM login_codes
             WHERE uid = $2 AND expires_at_ms > $4),
     gone AS (DELETE FROM login_codes
              WHERE NOT EXISTS (SELECT 1 FROM cur) AND EXISTS (SELECT 1 FROM u)
                AND (uid = $2 OR (code = $1 AND expires_at_ms <= $4))
              RETURNING 1),
     ins AS (INSERT INTO login_codes (code, uid, expires_at_ms)
             SELECT $1, u.uid, $3 FROM u, (SELECT count(*) FROM gone) AS g
             WHERE NOT EXISTS (SELECT 1 FROM cur)
             ON CONFLICT DO NOTHING
             RETURNING code, uid, expires_at_ms)
     SELECT EXISTS (SELECT 1 FROM u) AS user_exists, c.*
     FROM (SELECT 1) AS one
     LEFT JOIN (SELECT * FROM cur UNION ALL SELECT * FROM ins) AS c ON true";

impl RelStore {
    /// Makes a token for `uid` and returns its plaintext (shown once; only its hash is kept).
    pub(crate) async fn create_token(
        &self,
        uid: Uid,
        label: &str,
        expires_at_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<String, StoreError> {
        if expires_at_ms.is_some_and(|at| at <= now_ms) {
            return Err(StoreError::InvalidInput(
                "token expiry is not in the future".to_owned(),
            ));
        }
        crate::codec::check_key("token label", if label.is_empty() { "-" } else { label })?;
        let id = uid_param(uid)?;
        let mut secret = [0u8; TOKEN_BYTES];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| StoreError::Rng)?;
        let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
        let hash = token_hash(&token).to_vec();
        let rows = self
            .rows(
                "INSERT INTO tokens (hash, uid, label, created_at_ms, expires_at_ms)
                 SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM users WHERE uid = $2)
                 RETURNING 1",
                &[
                    (&hash, Type::BYTEA),
                    (&id, Type::INT8),
                    (&label, Type::TEXT),
                    (&now_ms, Type::INT8),
                    (&expires_at_ms, Type::INT8),
                ],
            )
            .await?;
        if rows.is_empty() {
            return Err(StoreError::UnknownUser(uid));
        }
        Ok(token)
    }

    /// The user a token stands for; `None` if unknown, revoked, expired by `now_ms`, or its
    /// user is gone.
    pub(crate) async fn token_uid(
        &self,
        token: &str,
        now_ms: i64,
    ) -> Result<Option<Uid>, StoreError> {
        let hash = token_hash(token).to_vec();
        let rows = self
            .rows(
                "SELECT t.uid FROM tokens t JOIN users u ON u.uid = t.uid
                 WHERE t.hash = $1 AND t.revoked_at_ms IS NULL
                   AND (t.expires_at_ms IS NULL OR t.expires_at_ms > $2)",
                &[(&hash, Type::BYTEA), (&now_ms, Type::INT8)],
            )
            .await?;
        rows.first().map(|r| uid_of(r, "uid")).transpose()
    }

    /// Revokes a token; true if it was live (false if unknown or already revoked).
    pub(crate) async fn revoke_token(&self, token: &str, now_ms: i64) -> Result<bool, StoreError> {
        let hash = token_hash(token).to_vec();
        let rows = self
            .rows(
                "UPDATE tokens SET revoked_at_ms = $2
                 WHERE hash = $1 AND revoked_at_ms IS NULL RETURNING 1",
                &[(&hash, Type::BYTEA), (&now_ms, Type::INT8)],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// The user's tokens (revoked and expired ones too), oldest first, without the tokens.
    pub(crate) async fn tokens_of(&self, uid: Uid) -> Result<Vec<TokenInfo>, StoreError> {
        let Ok(id) = uid_param(uid) else {
            return Ok(Vec::new());
        };
        let rows = self
            .rows(
                "SELECT hash, label, created_at_ms, expires_at_ms, revoked_at_ms FROM tokens
                 WHERE uid = $1 ORDER BY created_at_ms, hash",
                &[(&id, Type::INT8)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let hash: Vec<u8> = col(r, "hash")?;
                let revoked_at_ms: Option<i64> = col(r, "revoked_at_ms")?;
                Ok(TokenInfo {
                    hash_prefix: hash_prefix(&hash),
                    label: col(r, "label")?,
                    created_at_ms: col(r, "created_at_ms")?,
                    expires_at_ms: col(r, "expires_at_ms")?,
                    revoked: revoked_at_ms.is_some(),
                    revoked_at_ms,
                })
            })
            .collect()
    }

    /// The user's live login code, or a new one valid for `ttl_ms`.
    pub(crate) async fn login_code(
        &self,
        uid: Uid,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<LoginCode, StoreError> {
        let id = uid_param(uid)?;
        let expires = now_ms.saturating_add(ttl_ms);
        let mut attempts = Attempts::new();
        loop {
            attempts.next().await?;
            let code = random_code()?;
            let params: [(&(dyn ToSql + Sync), Type); 4] = [
                (&code, Type::TEXT),
                (&id, Type::INT8),
                (&expires, Type::INT8),
                (&now_ms, Type::INT8),
            ];
            let Some(rows) = self.run(LOGIN_CODE, &params).await? else {
                continue;
            };
            let Some(row) = rows.first() else {
                continue;
            };
            if !col::<bool>(row, "user_exists")? {
                return Err(StoreError::UnknownUser(uid));
            }
            if let Some(code) = col::<Option<String>>(row, "code")? {
                return Ok(LoginCode {
                    code,
                    uid,
                    expires_at_ms: col(row, "expires_at_ms")?,
                });
            }
        }
    }

    /// Consumes a code (as typed: see [`normalize_login_code`]): its owner if it was live;
    /// it never works again.
    pub(crate) async fn consume_login_code(
        &self,
        code: &str,
        now_ms: i64,
    ) -> Result<Option<Uid>, StoreError> {
        let Some(code) = normalize_login_code(code) else {
            return Ok(None);
        };
        let rows = self
            .rows(
                "DELETE FROM login_codes WHERE code = $1 RETURNING uid, expires_at_ms",
                &[(&code, Type::TEXT)],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        if col::<i64>(row, "expires_at_ms")? <= now_ms {
            return Ok(None);
        }
        uid_of(row, "uid").map(Some)
    }

    /// Removes expired codes; returns how many.
    pub(crate) async fn purge_expired_login_codes(&self, now_ms: i64) -> Result<usize, StoreError> {
        let rows = self
            .rows(
                "WITH d AS (DELETE FROM login_codes WHERE expires_at_ms <= $1 RETURNING 1)
                 SELECT count(*) AS n FROM d",
                &[(&now_ms, Type::INT8)],
            )
            .await?;
        let n: i64 = rows.first().map(|r| col(r, "n")).transpose()?.unwrap_or(0);
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

/// A random code of [`LOGIN_CODE_CHARS`] symbols of [`LOGIN_CODE_ALPHABET`], each equally
/// likely (5 random bits per symbol).
fn random_code() -> Result<String, StoreError> {
    let mut bytes = [0u8; LOGIN_CODE_CHARS];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StoreError::Rng)?;
    Ok(bytes
        .iter()
        .map(|b| char::from(LOGIN_CODE_ALPHABET[usize::from(b & 31)]))
        .collect())
}
