//! Login: one-time codes handed out on a chat platform (the Official Account's keyword),
//! exchanged on the web page for a user token bound to the same user, so credits are shared.
//! Failed attempts are limited per client address and globally, so a code cannot be guessed.

use std::net::IpAddr;
use std::time::Duration;

use chatrelay_core::UserKey;
use chatrelay_storage::{Store, StoreError, Uid};

use crate::bot::now_ms;
use crate::bot::ratelimit::RateLimiter;

/// How long a login code works.
pub const CODE_TTL: Duration = Duration::from_secs(300);
/// How long a token from a login works.
pub const LOGIN_TOKEN_TTL: Duration = Duration::from_secs(30 * 86_400);
/// Failed attempts allowed per client address per window.
const FAILURES_PER_IP: u32 = 10;
/// Failed attempts allowed from everyone together per window: with 10^6 codes and a few live
/// at a time, this keeps a distributed guesser's odds negligible.
const FAILURES_GLOBAL: u32 = 300;
const FAILURE_WINDOW: Duration = Duration::from_secs(600);

/// A code for the user behind `key` (created on first contact), and its lifetime in minutes.
pub fn issue_code(
    store: &Store,
    key: &UserKey,
    display_name: Option<&str>,
) -> Result<(String, u64), StoreError> {
    let uid = store.resolve_identity(key, display_name)?;
    let code = store.login_code(uid, CODE_TTL.as_millis() as i64, now_ms())?;
    Ok((code.code, CODE_TTL.as_secs() / 60))
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Too many failed attempts from this address or overall; try later.
    #[error("too many failed attempts; try again later")]
    Throttled,
    /// The code is unknown, used or expired.
    #[error("the code is wrong or has expired")]
    BadCode,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A token issued by a login.
#[derive(Debug, Clone)]
pub struct LoginToken {
    /// The user.
    pub uid: Uid,
    /// The bearer token.
    pub token: String,
    /// When it expires, ms since the Unix epoch.
    pub expires_at_ms: i64,
}

/// Exchanges codes for tokens, with the attempt limits.
#[derive(Debug)]
pub struct Login {
    per_ip: RateLimiter<IpAddr>,
    global: RateLimiter<()>,
}

impl Default for Login {
    fn default() -> Self {
        Self {
            per_ip: RateLimiter::with_window(FAILURES_PER_IP, FAILURE_WINDOW),
            global: RateLimiter::with_window(FAILURES_GLOBAL, FAILURE_WINDOW),
        }
    }
}

impl Login {
    /// Consumes `code` and returns a new token for its user. Only failures count against
    /// the limits, and a throttled client's attempt is not even checked.
    pub fn login(
        &self,
        store: &Store,
        code: &str,
        client: IpAddr,
    ) -> Result<LoginToken, LoginError> {
        if self.per_ip.is_limited(&client) || self.global.is_limited(&()) {
            metrics::counter!("chatrelay_login_total", "outcome" => "throttled").increment(1);
            return Err(LoginError::Throttled);
        }
        let now = now_ms();
        match store.consume_login_code(code.trim(), now)? {
            Some(uid) => {
                let expires_at_ms = now.saturating_add(LOGIN_TOKEN_TTL.as_millis() as i64);
                let token = store.create_token(uid, "web login", Some(expires_at_ms), now)?;
                metrics::counter!("chatrelay_login_total", "outcome" => "ok").increment(1);
                Ok(LoginToken {
                    uid,
                    token,
                    expires_at_ms,
                })
            }
            None => {
                self.per_ip.allow(client);
                self.global.allow(());
                metrics::counter!("chatrelay_login_total", "outcome" => "bad_code").increment(1);
                Err(LoginError::BadCode)
            }
        }
    }

    /// Forgets old failures.
    pub fn sweep(&self) {
        self.per_ip.sweep();
        self.global.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatrelay_core::Platform;

    #[test]
    fn code_to_token_binds_the_same_user_and_guessing_is_throttled() {
        let store = Store::open_temporary().unwrap();
        let key = UserKey::new(Platform::Mp, "main", "openid-1");
        let (code, minutes) = issue_code(&store, &key, None).unwrap();
        assert_eq!(minutes, 5);
        let uid = store.identity(&key).unwrap().unwrap();
        let login = Login::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t = login.login(&store, &code, ip).unwrap();
        assert_eq!(t.uid, uid);
        assert_eq!(store.token_uid(&t.token, now_ms()).unwrap(), Some(uid));
        assert!(
            matches!(login.login(&store, &code, ip), Err(LoginError::BadCode)),
            "single use"
        );

        // Ten failures from one address lock it out, even for a right code; others still work.
        for _ in 0..9 {
            assert!(matches!(
                login.login(&store, "000000", ip),
                Err(LoginError::BadCode)
            ));
        }
        let (code2, _) = issue_code(&store, &key, None).unwrap();
        assert!(matches!(
            login.login(&store, &code2, ip),
            Err(LoginError::Throttled)
        ));
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(login.login(&store, &code2, other).is_ok());
    }
}
