//! One-time login codes: a user asks for one on a chat platform (the Official Account's
//! keyword) and types it on the web page, which exchanges it for a user token.
//!
//! One live code per user (asking again returns the same code until it expires); a code is
//! consumed exactly once.

use crate::kv::Transactional;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::codec::{OrAbort, decode, encode, finish, u64_key};
use crate::{KvStore, LOGIN_CODES, LOGIN_CODES_BY_UID, StoreError, Uid};

/// A live login code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginCode {
    /// The code in its canonical form (upper case, no separator); see [`display_login_code`]
    /// for the form users are shown.
    pub code: String,
    /// Whose code it is.
    pub uid: Uid,
    /// When it stops working, ms since the Unix epoch.
    pub expires_at_ms: i64,
}

/// Characters in a login code.
pub const LOGIN_CODE_CHARS: usize = 8;

/// The alphabet of login codes: Crockford's base32 (digits and upper-case letters without
/// I, L, O and U), so what a user reads off a WeChat message cannot be mistyped as another
/// valid character: input is case-insensitive and O, I and L are read as 0, 1 and 1.
///
/// Why 8 characters: 32^8 = 2^40 ≈ 1.1e12 codes. A guess succeeds with probability
/// N / 2^40 for N codes live at once (one per user who asked in the last 5 minutes). The
/// login limiter allows 10 failures per address (IPv6: per /64) and 60 per network (IPv4
/// /24, IPv6 /48) per 10 minutes, and fewer when failures pile up everywhere. An attacker
/// holding a /48 gets 8,640 guesses a day: with 1,000 live codes, 8e-6 accounts a day. A
/// botnet of 100,000 IPv4 addresses in distinct /24s, sending 1,700 failing logins a second
/// all day, gets 1.4e8 guesses: with 100 live codes about 1% a day, which the tightened
/// limits under attack cut tenfold (and which shows plainly in
/// `chatrelay_login_total{outcome="bad_code"}`). Six digits (10^6) fell to 10 addresses in
/// minutes. Eight characters still fit the phone keyboard: copy-paste from WeChat, or type
/// two groups of four.
pub const LOGIN_CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

fn random_code() -> Result<String, StoreError> {
    // 32 symbols from 5 random bits each: every code equally likely, no rejection needed.
    let rng = SystemRandom::new();
    let mut b = [0u8; LOGIN_CODE_CHARS];
    rng.fill(&mut b).map_err(|_| StoreError::Rng)?;
    Ok(b.iter()
        .map(|x| char::from(LOGIN_CODE_ALPHABET[usize::from(x & 31)]))
        .collect())
}

/// The canonical form of what a user typed, or `None` when it cannot be a code: spaces and
/// dashes are dropped, case is ignored, and O, I, L count as 0, 1, 1 (Crockford's base32).
#[must_use]
pub fn normalize_login_code(input: &str) -> Option<String> {
    let mut out = String::with_capacity(LOGIN_CODE_CHARS);
    for c in input.chars() {
        if c == '-' || c == ' ' {
            continue;
        }
        let c = match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        };
        if !c.is_ascii() || !LOGIN_CODE_ALPHABET.contains(&(c as u8)) {
            return None;
        }
        if out.len() == LOGIN_CODE_CHARS {
            return None;
        }
        out.push(c);
    }
    (out.len() == LOGIN_CODE_CHARS).then_some(out)
}

/// How a code is shown to its user: two groups of four (`K7QM-2XRT`), easy to read back.
#[must_use]
pub fn display_login_code(code: &str) -> String {
    match (code.get(..4), code.get(4..)) {
        (Some(a), Some(b)) if !b.is_empty() => format!("{a}-{b}"),
        _ => code.to_owned(),
    }
}

impl KvStore {
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
    /// `code` is what the user typed: see [`normalize_login_code`].
    pub fn consume_login_code(&self, code: &str, now_ms: i64) -> Result<Option<Uid>, StoreError> {
        let Some(code) = normalize_login_code(code) else {
            return Ok(None);
        };
        let code = code.as_str();
        let _writing = self.writing();
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
        let s = KvStore::open_temporary().unwrap();
        let a = s.create_user("a").unwrap().uid;
        let b = s.create_user("b").unwrap().uid;
        let c1 = s.login_code(a, 300_000, 1_000).unwrap();
        assert_eq!(c1.code.len(), LOGIN_CODE_CHARS);
        assert!(c1.code.bytes().all(|b| LOGIN_CODE_ALPHABET.contains(&b)));
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
        let s = KvStore::open_temporary().unwrap();
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
    fn typed_codes_are_read_forgivingly() {
        let s = KvStore::open_temporary().unwrap();
        let a = s.create_user("a").unwrap().uid;
        // A code with every look-alike: typed in lower case, with O/I/L, a dash and spaces.
        let code = "K0M1-1ZQ9";
        assert_eq!(normalize_login_code(code).as_deref(), Some("K0M11ZQ9"));
        assert_eq!(
            normalize_login_code(" kom1 LzQ9 ").as_deref(),
            Some("K0M11ZQ9")
        );
        assert_eq!(
            normalize_login_code("kOmi-lzq9").as_deref(),
            Some("K0M11ZQ9")
        );
        assert_eq!(display_login_code("K0M11ZQ9"), "K0M1-1ZQ9");
        let c = s.login_code(a, 300_000, 0).unwrap();
        let shown = display_login_code(&c.code).to_lowercase();
        assert_eq!(s.consume_login_code(&shown, 1).unwrap(), Some(a));
    }

    #[test]
    fn codes_use_the_whole_alphabet() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let c = random_code().unwrap();
            assert_eq!(c.len(), LOGIN_CODE_CHARS);
            seen.extend(c.bytes());
        }
        assert_eq!(seen.len(), 32, "1,600 draws cover all 32 symbols");
    }

    #[test]
    fn malformed_codes_are_refused_cheaply() {
        let s = KvStore::open_temporary().unwrap();
        for bad in [
            "",
            "123456",
            "1234567",
            "123456789",
            "1234567U",
            "1234567!",
            "１２３４５６７８",
            "1234 5678 9",
        ] {
            assert_eq!(s.consume_login_code(bad, 0).unwrap(), None);
        }
        assert!(matches!(
            s.login_code(Uid(99), 1000, 0),
            Err(StoreError::UnknownUser(_))
        ));
    }
}
