//! User API tokens: opaque random strings, stored only as their SHA-256 hashes.
//!
//! The plaintext is returned once by [`KvStore::create_token`] and never written anywhere;
//! `tokens` is keyed by the hash, `tokens_by_uid` (uid ‖ hash → empty) lists a user's tokens.

use crate::kv::Transactional;
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::codec::{
    OrAbort, abort, decode, encode, finish, prefixed_key, split_u64_prefix, u64_key,
};
use crate::{KvStore, StoreError, TOKENS, TOKENS_BY_UID, Uid};

/// What every token starts with, so it can be recognised (and scanned for in leaks).
pub const TOKEN_PREFIX: &str = "sk-cr-";

/// Random bytes in a token (48 hex characters).
const TOKEN_BYTES: usize = 24;

/// The stored record of a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TokenRecord {
    pub(crate) uid: Uid,
    #[serde(default)]
    pub(crate) label: String,
    pub(crate) created_at_ms: i64,
    #[serde(default)]
    pub(crate) expires_at_ms: Option<i64>,
    #[serde(default)]
    pub(crate) revoked_at_ms: Option<i64>,
}

/// What may be shown about a token: never the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The first 12 hex characters of the token's SHA-256, to tell tokens apart.
    pub hash_prefix: String,
    /// The owner's label ("NextChat on laptop").
    pub label: String,
    /// When it was made, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// When it stops working, if ever.
    pub expires_at_ms: Option<i64>,
    /// Whether it was revoked.
    pub revoked: bool,
    /// When it was revoked.
    pub revoked_at_ms: Option<i64>,
}

impl KvStore {
    /// Makes a token for `uid` and returns its plaintext (`sk-cr-` + 48 hex characters), which
    /// is shown once: only its hash is stored.
    pub fn create_token(
        &self,
        uid: Uid,
        label: &str,
        expires_at_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<String, StoreError> {
        let _writing = self.writing();
        if expires_at_ms.is_some_and(|at| at <= now_ms) {
            return Err(StoreError::InvalidInput(
                "token expiry is not in the future".to_owned(),
            ));
        }
        crate::codec::check_key("token label", if label.is_empty() { "-" } else { label })?;
        let mut secret = [0u8; TOKEN_BYTES];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| StoreError::Rng)?;
        let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
        let hash = token_hash(&token);
        let record = TokenRecord {
            uid,
            label: label.to_owned(),
            created_at_ms: now_ms,
            expires_at_ms,
            revoked_at_ms: None,
        };
        let value = encode(&record)?;
        let t = self.trees()?;
        finish(
            (&t.users, &t.tokens, &t.tokens_by_uid).transaction(|(users, tokens, by_uid)| {
                if users.get(u64_key(uid.0))?.is_none() {
                    return abort(StoreError::UnknownUser(uid));
                }
                tokens.insert(hash.as_slice(), value.as_slice())?;
                by_uid.insert(prefixed_key(uid.0, &hash), &[][..])?;
                Ok(())
            }),
        )?;
        Ok(token)
    }

    /// The user a token stands for; `None` if it is unknown, revoked, expired by `now_ms`, or
    /// its user is gone.
    pub fn token_uid(&self, token: &str, now_ms: i64) -> Result<Option<Uid>, StoreError> {
        let t = self.trees()?;
        let hash = token_hash(token);
        let Some(raw) = t.tokens.get(hash)? else {
            return Ok(None);
        };
        let record: TokenRecord = decode(TOKENS, &raw, || hash_prefix(&hash))?;
        if record.revoked_at_ms.is_some() || record.expires_at_ms.is_some_and(|at| at <= now_ms) {
            return Ok(None);
        }
        if t.users.get(u64_key(record.uid.0))?.is_none() {
            return Ok(None);
        }
        Ok(Some(record.uid))
    }

    /// Revokes a token; true if it was live (false if unknown or already revoked).
    pub fn revoke_token(&self, token: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.revoke_hash(&token_hash(token), now_ms)
    }

    /// Revokes the token of SHA-256 `hash`; true if it was live.
    fn revoke_hash(&self, hash: &[u8], now_ms: i64) -> Result<bool, StoreError> {
        let _writing = self.writing();
        finish(self.trees()?.tokens.transaction(|tokens| {
            let Some(raw) = tokens.get(hash)? else {
                return Ok(false);
            };
            let mut record: TokenRecord = decode(TOKENS, &raw, || hash_prefix(hash)).or_abort()?;
            if record.revoked_at_ms.is_some() {
                return Ok(false);
            }
            record.revoked_at_ms = Some(now_ms);
            tokens.insert(hash, encode(&record).or_abort()?)?;
            Ok(true)
        }))
    }

    /// The owners of the tokens `q` names: a whole token (`sk-cr-…`, looked up by its hash),
    /// or the start of a token's hash as [`TokenInfo::hash_prefix`] shows it (at least 6 hex
    /// characters, so a search never lists every token); at most `limit`, each with its
    /// hash prefix.
    pub fn find_tokens(&self, q: &str, limit: usize) -> Result<Vec<(Uid, String)>, StoreError> {
        let t = self.trees()?;
        let q = q.trim();
        let mut found = Vec::new();
        if q.starts_with(TOKEN_PREFIX) {
            let hash = token_hash(q);
            if let Some(raw) = t.tokens.get(hash)? {
                let record: TokenRecord = decode(TOKENS, &raw, || hash_prefix(&hash))?;
                found.push((record.uid, hash_prefix(&hash)));
            }
            return Ok(found);
        }
        let hex_prefix = q.to_ascii_lowercase();
        if hex_prefix.len() < 6 || !hex_prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(found);
        }
        // Whole bytes narrow the scan; an odd last digit is checked on each key.
        let even = hex_prefix.get(..hex_prefix.len() & !1).unwrap_or_default();
        let bytes = hex::decode(even).unwrap_or_default();
        for item in t.tokens.scan_prefix(&bytes) {
            let (hash, raw) = item?;
            if !hex::encode(&hash).starts_with(&hex_prefix) {
                continue;
            }
            let record: TokenRecord = decode(TOKENS, &raw, || hash_prefix(&hash))?;
            found.push((record.uid, hash_prefix(&hash)));
            if found.len() >= limit {
                break;
            }
        }
        Ok(found)
    }

    /// Revokes `uid`'s token whose hash starts with `prefix` (as [`TokenInfo::hash_prefix`]
    /// shows it): true if it was live, false if already revoked;
    /// [`StoreError::InvalidInput`] unless exactly one of the user's tokens matches.
    pub fn revoke_token_by_hash(
        &self,
        uid: Uid,
        prefix: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let prefix = prefix.trim().to_ascii_lowercase();
        if prefix.len() < 6 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::InvalidInput(format!(
                "{prefix:?} is not a token's hash prefix (6 to 64 hex characters)"
            )));
        }
        let t = self.trees()?;
        let mut matching = Vec::new();
        for item in t.tokens_by_uid.scan_prefix(u64_key(uid.0)) {
            let (key, _) = item?;
            let (_, hash) = split_u64_prefix(TOKENS_BY_UID, &key)?;
            if hex::encode(hash).starts_with(&prefix) {
                matching.push(hash.to_vec());
            }
        }
        let hash = match matching.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(StoreError::InvalidInput(format!(
                    "user {uid} has no token {prefix}"
                )));
            }
            _ => {
                return Err(StoreError::InvalidInput(format!(
                    "{prefix} names more than one of user {uid}'s tokens; give more of it"
                )));
            }
        };
        drop(t);
        self.revoke_hash(&hash, now_ms)
    }

    /// The user's tokens (revoked and expired ones included), described without the token.
    pub fn tokens_of(&self, uid: Uid) -> Result<Vec<TokenInfo>, StoreError> {
        let t = self.trees()?;
        let mut infos = Vec::new();
        for item in t.tokens_by_uid.scan_prefix(u64_key(uid.0)) {
            let (key, _) = item?;
            let (_, hash) = split_u64_prefix(TOKENS_BY_UID, &key)?;
            let Some(raw) = t.tokens.get(hash)? else {
                continue;
            };
            let record: TokenRecord = decode(TOKENS, &raw, || hash_prefix(hash))?;
            infos.push(TokenInfo {
                hash_prefix: hash_prefix(hash),
                label: record.label,
                created_at_ms: record.created_at_ms,
                expires_at_ms: record.expires_at_ms,
                revoked: record.revoked_at_ms.is_some(),
                revoked_at_ms: record.revoked_at_ms,
            });
        }
        infos.sort_by_key(|info| info.created_at_ms);
        Ok(infos)
    }
}

/// The SHA-256 of a token: its key at rest.
pub(crate) fn token_hash(token: &str) -> [u8; 32] {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    hash
}

/// The first 12 hex characters of a hash.
pub(crate) fn hash_prefix(hash: &[u8]) -> String {
    hex::encode(hash.get(..6).unwrap_or(hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_user() -> (KvStore, Uid) {
        let store = KvStore::open_temporary().unwrap();
        let uid = store.create_user("u").unwrap().uid;
        (store, uid)
    }

    #[test]
    fn token_shape_and_lookup() {
        let (store, uid) = store_with_user();
        let token = store.create_token(uid, "laptop", None, 1).unwrap();
        assert!(token.starts_with(TOKEN_PREFIX));
        let secret = token.strip_prefix(TOKEN_PREFIX).unwrap();
        assert_eq!(secret.len(), 48);
        assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(store.token_uid(&token, 2).unwrap(), Some(uid));
        assert_eq!(store.token_uid("sk-cr-nope", 2).unwrap(), None);
        assert_ne!(store.create_token(uid, "b", None, 1).unwrap(), token);
        assert!(matches!(
            store.create_token(Uid(99), "x", None, 1),
            Err(StoreError::UnknownUser(_))
        ));
    }

    #[test]
    fn revoked_and_expired_tokens_are_rejected() {
        let (store, uid) = store_with_user();
        let token = store.create_token(uid, "a", None, 1).unwrap();
        assert!(store.revoke_token(&token, 5).unwrap());
        assert!(!store.revoke_token(&token, 6).unwrap());
        assert!(!store.revoke_token("sk-cr-unknown", 6).unwrap());
        assert_eq!(store.token_uid(&token, 7).unwrap(), None);

        let short = store.create_token(uid, "b", Some(100), 1).unwrap();
        assert_eq!(store.token_uid(&short, 99).unwrap(), Some(uid));
        assert_eq!(store.token_uid(&short, 100).unwrap(), None);
        assert!(store.create_token(uid, "c", Some(1), 1).is_err());
    }

    #[test]
    fn token_of_a_gone_user_is_rejected() {
        let (store, uid) = store_with_user();
        let token = store.create_token(uid, "a", None, 1).unwrap();
        store.trees().unwrap().users.remove(u64_key(uid.0)).unwrap();
        assert_eq!(store.token_uid(&token, 2).unwrap(), None);
    }

    #[test]
    fn listing_shows_hash_prefixes_not_tokens() {
        let (store, uid) = store_with_user();
        let t1 = store.create_token(uid, "one", None, 1).unwrap();
        store.create_token(uid, "two", Some(50), 2).unwrap();
        store.revoke_token(&t1, 3).unwrap();
        let infos = store.tokens_of(uid).unwrap();
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[0].label, "one");
        assert!(infos[0].revoked);
        assert_eq!(infos[0].revoked_at_ms, Some(3));
        assert_eq!(infos[1].expires_at_ms, Some(50));
        assert!(!infos[1].revoked);
        assert_eq!(infos[0].hash_prefix, hex::encode(&token_hash(&t1)[..6]));
        assert_eq!(infos[0].hash_prefix.len(), 12);
        assert!(!format!("{infos:?}").contains(&t1[TOKEN_PREFIX.len()..]));
        assert!(store.tokens_of(Uid(77)).unwrap().is_empty());
    }

    #[test]
    fn tokens_are_hashed_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = KvStore::open(dir.path(), 1 << 20).unwrap();
        let uid = store.create_user("u").unwrap().uid;
        let token = store.create_token(uid, "label", None, 1).unwrap();
        let secret = &token[TOKEN_PREFIX.len()..];
        let secret_bytes = hex::decode(secret).unwrap();
        let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);

        // Through sled: every key and value of every tree.
        let open = store.trees().unwrap();
        let crate::kv::Db::Sled(db) = &open.db else {
            panic!("a sled store")
        };
        for name in db.tree_names() {
            let tree = db.open_tree(&name).unwrap();
            for item in tree.iter() {
                let (k, v) = item.unwrap();
                for bytes in [&k[..], &v[..]] {
                    assert!(
                        !contains(bytes, secret.as_bytes()),
                        "token text in tree {name:?}"
                    );
                    assert!(
                        !contains(bytes, &secret_bytes),
                        "token bytes in tree {name:?}"
                    );
                }
            }
        }
        // And the files themselves, once flushed.
        db.flush().unwrap();
        let mut files = vec![dir.path().to_path_buf()];
        let mut seen_record = false;
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else {
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !contains(&bytes, secret.as_bytes()),
                    "token text in {}",
                    path.display()
                );
                assert!(
                    !contains(&bytes, &secret_bytes),
                    "token bytes in {}",
                    path.display()
                );
                seen_record |= contains(&bytes, br#""label":"label""#);
            }
        }
        // The token's record is in the files, so the scan would have found the token there.
        assert!(seen_record);
    }

    #[test]
    fn corrupt_token_record_is_an_error() {
        let (store, uid) = store_with_user();
        let token = store.create_token(uid, "a", None, 1).unwrap();
        store
            .trees()
            .unwrap()
            .tokens
            .insert(&token_hash(&token)[..], b"zz")
            .unwrap();
        assert!(matches!(
            store.token_uid(&token, 2),
            Err(StoreError::Corrupt { tree: "tokens", .. })
        ));
        assert!(matches!(
            store.tokens_of(uid),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
