//! One-time login codes: a user asks for one on a chat platform (the Official Account's
//! keyword) and types it on the web page, which exchanges it for a user token.
//!
//! One live code per user (asking again returns the same code until it expires); a code is
//! consumed exactly once.

use crate::kv::Transactional;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::codec::{OrAbort, decode, encode, finish, u64_key};
use crate::{LOGIN_CODES, LOGIN_CODES_BY_UID, Store, StoreError, Uid};

/// A live login code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginCode {
    /// The digits the user types.
    pub code: String,
    /// Whose code it is.
    pub uid: Uid,
    /// When it stops working, ms since the Unix epoch.
    pub expires_at_ms: i64,
}

/// Digits in a login code.
pub const LOGIN_CODE_DIGITS: usize = 6;

fn random_code() -> Result<String, StoreError> {
    // Rejection sampling keeps every 6-digit code equally likely.
    let rng = SystemRandom::new();
    loop {
        let mut b = [0u8; 4];
        rng.fill(&mut b).map_err(|_| StoreError::Rng)?;
        let n = u32::from_be_bytes(b);
        if n < 4_294_000_000 {
            return Ok(format!("{:06}", n % 1_000_000));
        }
    }
}

impl Store {
    /// The user's live login code, or a new one valid for `ttl_ms`.
    pub fn login_code(&self, uid: Uid, ttl_ms: i64, now_ms: i64) -> Result<LoginCode, StoreError> {
        let _writing = self.writing();
        let t = self.trees()?;
        if t.users.get(u64_key(uid.0))?.is_none() {
            return Err(StoreError::UnknownUser(uid));
        }
        // Drawn outside the transaction, which may run more than once.
        for _ in 0..8 {
            let fresh = LoginCode {
                code: random_code()?,
                uid,
                expires_at_ms: now_ms.saturating_add(ttl_ms),
            };
            let result = finish((&t.login_codes, &t.login_codes_by_uid).transaction(
                |(codes, by_uid)| {
                    if let Some(raw) = by_uid.get(u64_key(uid.0))? {
                        let code: String =
                            decode(LOGIN_CODES_BY_UID, &raw, || uid.to_string()).or_abort()?;
                        if let Some(raw) = codes.get(code.as_bytes())? {
                            let live: LoginCode =
                                decode(LOGIN_CODES, &raw, || code.clone()).or_abort()?;
                            if live.uid == uid && live.expires_at_ms > now_ms {
                                return Ok(Some(live));
                            }
                            if live.uid == uid {
                                codes.remove(code.as_bytes())?;
                            }
                        }
                    }
                    if let Some(raw) = codes.get(fresh.code.as_bytes())? {
                        let other: LoginCode =
                            decode(LOGIN_CODES, &raw, || fresh.code.clone()).or_abort()?;
                        if other.expires_at_ms > now_ms {
                            // Taken by someone else's live code: draw again.
                            return Ok(None);
                        }
                    }
                    codes.insert(fresh.code.as_bytes(), encode(&fresh).or_abort()?)?;
                    by_uid.insert(u64_key(uid.0), encode(&fresh.code).or_abort()?)?;
                    Ok(Some(fresh.clone()))
                },
            ))?;
            if let Some(code) = result {
                return Ok(code);
            }
        }
        Err(StoreError::InvalidInput(
            "no free login code found; try again".into(),
        ))
    }

    /// Consumes a code: its owner if it was live, and it never works again.
    pub fn consume_login_code(&self, code: &str, now_ms: i64) -> Result<Option<Uid>, StoreError> {
        let _writing = self.writing();
        if code.len() != LOGIN_CODE_DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(None);
        }
        let t = self.trees()?;
        finish(
            (&t.login_codes, &t.login_codes_by_uid).transaction(|(codes, by_uid)| {
                let Some(raw) = codes.get(code.as_bytes())? else {
                    return Ok(None);
                };
                let live: LoginCode = decode(LOGIN_CODES, &raw, || code.to_owned()).or_abort()?;
                codes.remove(code.as_bytes())?;
                if let Some(raw) = by_uid.get(u64_key(live.uid.0))? {
                    let current: String =
                        decode(LOGIN_CODES_BY_UID, &raw, || live.uid.to_string()).or_abort()?;
                    if current == code {
                        by_uid.remove(u64_key(live.uid.0))?;
                    }
                }
                if live.expires_at_ms <= now_ms {
                    return Ok(None);
                }
                Ok(Some(live.uid))
            }),
        )
    }

    /// Removes expired codes; returns how many.
    pub fn purge_expired_login_codes(&self, now_ms: i64) -> Result<usize, StoreError> {
        let _writing = self.writing();
        let t = self.trees()?;
        let mut expired = Vec::new();
        for item in t.login_codes.iter() {
            let (key, raw) = item?;
            match decode::<LoginCode>(LOGIN_CODES, &raw, || crate::codec::describe_bytes(&key)) {
                Ok(c) if c.expires_at_ms <= now_ms => expired.push(c.code),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "unreadable login code left in place"),
            }
        }
        let mut purged = 0;
        for code in expired {
            let removed = finish((&t.login_codes, &t.login_codes_by_uid).transaction(
                |(codes, by_uid)| {
                    let Some(raw) = codes.get(code.as_bytes())? else {
                        return Ok(false);
                    };
                    let live: LoginCode = decode(LOGIN_CODES, &raw, || code.clone()).or_abort()?;
                    if live.expires_at_ms > now_ms {
                        return Ok(false);
                    }
                    codes.remove(code.as_bytes())?;
                    if let Some(raw) = by_uid.get(u64_key(live.uid.0))?
                        && decode::<String>(LOGIN_CODES_BY_UID, &raw, || live.uid.to_string())
                            .or_abort()?
                            == code
                    {
                        by_uid.remove(u64_key(live.uid.0))?;
                    }
                    Ok(true)
                },
            ))?;
            if removed {
                purged += 1;
            }
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_live_code_per_user_single_use() {
        let s = Store::open_temporary().unwrap();
        let a = s.create_user("a").unwrap().uid;
        let b = s.create_user("b").unwrap().uid;
        let c1 = s.login_code(a, 300_000, 1_000).unwrap();
        assert_eq!(c1.code.len(), 6);
        assert!(c1.code.bytes().all(|b| b.is_ascii_digit()));
        let again = s.login_code(a, 300_000, 2_000).unwrap();
        assert_eq!(again, c1, "a repeat request returns the same code");
        let cb = s.login_code(b, 300_000, 2_000).unwrap();
        assert_ne!(cb.code, c1.code);
        assert_eq!(s.consume_login_code(&c1.code, 3_000).unwrap(), Some(a));
        assert_eq!(
            s.consume_login_code(&c1.code, 3_000).unwrap(),
            None,
            "single use"
        );
        let c2 = s.login_code(a, 300_000, 4_000).unwrap();
        assert_eq!(c2.uid, a);
        assert_eq!(s.consume_login_code(&cb.code, 5_000).unwrap(), Some(b));
    }

    #[test]
    fn expired_codes_do_not_work_and_are_replaced() {
        let s = Store::open_temporary().unwrap();
        let a = s.create_user("a").unwrap().uid;
        let c = s.login_code(a, 1_000, 0).unwrap();
        let fresh = s.login_code(a, 1_000, 5_000).unwrap();
        assert!(fresh.expires_at_ms > 5_000, "an expired code is replaced");
        let old = s.login_code(a, 1_000, 5_500).unwrap();
        assert_eq!(old, fresh);
        assert_eq!(s.consume_login_code(&fresh.code, 10_000).unwrap(), None);
        let _ = c;
        let d = s.login_code(a, 1_000, 20_000).unwrap();
        assert_eq!(s.purge_expired_login_codes(30_000).unwrap(), 1);
        assert_eq!(s.consume_login_code(&d.code, 20_500).unwrap(), None);
    }

    #[test]
    fn malformed_codes_are_refused_cheaply() {
        let s = Store::open_temporary().unwrap();
        for bad in ["", "12345", "1234567", "12345a", "１２３４５６"] {
            assert_eq!(s.consume_login_code(bad, 0).unwrap(), None);
        }
        assert!(matches!(
            s.login_code(Uid(99), 1000, 0),
            Err(StoreError::UnknownUser(_))
        ));
    }
}
