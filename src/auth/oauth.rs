//! Web login through an Official Account's web authorization (网页授权), and desktop login
//! by scanning: the records that tie the steps together, kept in the store so that each
//! step may reach another daemon sharing the database.
//!
//! - A **state** (`oauth:<state>`, 10 minutes, single use) is made when a browser is sent to
//!   WeChat; it is bound to that browser by a random cookie value (only its hash is kept), to
//!   the account, and carries the scan ticket and the local page to return to. A forged,
//!   reused or expired state, or one from another browser, changes nothing.
//! - A **ticket** (`ticket:<T>`, 5 minutes) is `pending` until someone logs in for it, then
//!   `done:<uid>`; whoever polls it first then takes it and gets a new token, once. The
//!   desktop's scan QR carries one; a login in the same browser makes a short one that the
//!   page collects from its URL fragment, so a token never appears in a URL.
//!
//! Who the user is comes from WeChat's code exchange only (the channel does it); this module
//! never trusts anything the browser says about identity.

use std::time::Duration;

use chatrelay_core::{Platform, UserKey};
use chatrelay_storage::{Store, StoreError, Uid};
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use super::{LOGIN_TOKEN_TTL, LoginToken};
use crate::engine::Engine;
use crate::util::now_ms;

/// How long a browser has to come back from WeChat.
pub const STATE_TTL: Duration = Duration::from_secs(600);
/// How long a scan ticket waits for the phone.
pub const TICKET_TTL: Duration = Duration::from_secs(300);
/// How long a finished login waits for its page (the page collects it at once).
const HANDOFF_TTL: Duration = Duration::from_secs(120);
/// Hex characters in states, tickets and cookie values (128 bits).
const SECRET_HEX: usize = 32;

/// Why a step of the web login failed.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The state is unknown, used, expired, for another account or from another browser.
    #[error("the login link is no longer valid")]
    BadState,
    /// The system's random source failed: no secret is made without it.
    #[error("no randomness available")]
    Random,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// 128 random bits as hex, or an error: never a guessable fallback.
fn secret() -> Result<String, OAuthError> {
    let mut bytes = [0u8; SECRET_HEX / 2];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| OAuthError::Random)?;
    Ok(hex::encode(bytes))
}

/// Whether `s` looks like one of our secrets (checked before it is used as a key).
#[must_use]
pub fn is_secret_form(s: &str) -> bool {
    s.len() == SECRET_HEX && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn hash(s: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What a state remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRecord {
    /// The `[[wechat_mp]]` id.
    pub account: String,
    /// SHA-256 of the browser's cookie value.
    browser: String,
    /// The scan ticket this login is for, if any.
    pub ticket: Option<String>,
    /// The local page to go back to.
    pub next: String,
}

/// A state to send to WeChat and the cookie value that binds it to the browser.
#[derive(Debug, Clone)]
pub struct Started {
    /// The `state` parameter.
    pub state: String,
    /// The cookie value (kept by the browser; only its hash is stored).
    pub browser: String,
}

/// `next` if it is a path on this site, else `/`: never a redirect elsewhere (`//host`,
/// `/\host`, a scheme, control characters), and without a fragment.
#[must_use]
pub fn local_path(next: Option<&str>) -> String {
    let Some(next) = next else {
        return "/".to_owned();
    };
    let next = next.split('#').next().unwrap_or_default();
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && next.len() <= 512
        && next.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
    if ok { next.to_owned() } else { "/".to_owned() }
}

/// Where a ticket is.
#[derive(Debug)]
pub enum TicketState {
    /// Waiting for the phone.
    Pending,
    /// Logged in: a new token, given to this caller only.
    Done(LoginToken),
    /// Unknown, expired, or collected already.
    Expired,
}

/// The web login's records, in the engine's store.
pub struct Logins<'a> {
    store: &'a Store,
}

impl<'a> Logins<'a> {
    /// The records of `engine`'s store.
    #[must_use]
    pub fn new(engine: &'a Engine) -> Self {
        Self {
            store: engine.store(),
        }
    }

    /// The user of Official Account `account`'s `openid` (`mp:{account}:{openid}`, the same
    /// user who chats with the account), created on first contact.
    pub fn user_of(
        &self,
        account: &str,
        openid: &str,
        nickname: Option<&str>,
    ) -> Result<Uid, OAuthError> {
        let key = UserKey::new(Platform::Mp, account, openid);
        Ok(self.store.resolve_identity(&key, nickname)?)
    }

    /// Writes what the login made to disk before the browser is told (a failed flush is
    /// logged: the records work until a crash).
    pub async fn flush(&self) {
        if let Err(e) = self.store.flush().await {
            tracing::warn!(error = %e, "flushing a web login failed");
        }
    }

    /// Starts a login for `account`: a new state, bound to the browser's cookie value
    /// (`browser`, when it has a well-formed one: several tabs then share it).
    pub fn start(
        &self,
        account: &str,
        browser: Option<&str>,
        ticket: Option<&str>,
        next: &str,
    ) -> Result<Started, OAuthError> {
        let browser = match browser.filter(|b| is_secret_form(b)) {
            Some(b) => b.to_owned(),
            None => secret()?,
        };
        let state = secret()?;
        let record = StateRecord {
            account: account.to_owned(),
            browser: hash(&browser),
            ticket: ticket.map(str::to_owned),
            next: next.to_owned(),
        };
        let value = serde_json::to_string(&record)
            .map_err(|e| StoreError::InvalidInput(format!("state record: {e}")))?;
        self.store.put_handoff(
            &format!("oauth:{state}"),
            &value,
            now_ms().saturating_add(ms(STATE_TTL)),
        )?;
        Ok(Started { state, browser })
    }

    /// Uses up `state` for `account` if it is live and was made for this browser. Anything
    /// else is [`OAuthError::BadState`] and leaves the state as it was (so a forged request
    /// cannot spoil a real one).
    pub fn take_state(
        &self,
        account: &str,
        state: &str,
        browser: Option<&str>,
    ) -> Result<StateRecord, OAuthError> {
        if !is_secret_form(state) {
            return Err(OAuthError::BadState);
        }
        let key = format!("oauth:{state}");
        let now = now_ms();
        let record: StateRecord = self
            .store
            .handoff(&key, now)?
            .and_then(|v| serde_json::from_str(&v).ok())
            .ok_or(OAuthError::BadState)?;
        let same_browser =
            browser.is_some_and(|b| crate::util::secrets_equal(&hash(b), &record.browser));
        if record.account != account || !same_browser {
            return Err(OAuthError::BadState);
        }
        // Single use: of two callbacks with this state, one takes it.
        match self.store.take_handoff(&key, now)? {
            Some(_) => Ok(record),
            None => Err(OAuthError::BadState),
        }
    }

    /// A new scan ticket and when it expires (ms).
    pub fn new_ticket(&self) -> Result<(String, i64), OAuthError> {
        let ticket = secret()?;
        let expires = now_ms().saturating_add(ms(TICKET_TTL));
        self.store
            .put_handoff(&format!("ticket:{ticket}"), "pending", expires)?;
        Ok((ticket, expires))
    }

    /// Whether `ticket` is live and still waiting for a login.
    pub fn ticket_pending(&self, ticket: &str) -> Result<bool, OAuthError> {
        if !is_secret_form(ticket) {
            return Ok(false);
        }
        Ok(self
            .store
            .handoff(&format!("ticket:{ticket}"), now_ms())?
            .as_deref()
            == Some("pending"))
    }

    /// Records that `uid` logged in for the pending `ticket`. False when the ticket is not
    /// pending any more (expired, unknown, or someone logged in for it already).
    pub fn bind_ticket(&self, ticket: &str, uid: Uid) -> Result<bool, OAuthError> {
        if !is_secret_form(ticket) {
            return Ok(false);
        }
        let now = now_ms();
        Ok(self.store.swap_handoff(
            &format!("ticket:{ticket}"),
            "pending",
            &format!("done:{}", uid.0),
            now.saturating_add(ms(HANDOFF_TTL)),
            now,
        )?)
    }

    /// A ticket already logged in for `uid`, for the page of the same browser to collect.
    pub fn handoff_ticket(&self, uid: Uid) -> Result<String, OAuthError> {
        let ticket = secret()?;
        self.store.put_handoff(
            &format!("ticket:{ticket}"),
            &format!("done:{}", uid.0),
            now_ms().saturating_add(ms(HANDOFF_TTL)),
        )?;
        Ok(ticket)
    }

    /// Polls `ticket`: a finished login is taken (once) and turned into a new token.
    pub fn poll_ticket(&self, ticket: &str) -> Result<TicketState, OAuthError> {
        if !is_secret_form(ticket) {
            return Ok(TicketState::Expired);
        }
        let key = format!("ticket:{ticket}");
        let now = now_ms();
        match self.store.handoff(&key, now)?.as_deref() {
            Some("pending") => return Ok(TicketState::Pending),
            Some(v) if v.starts_with("done:") => {}
            _ => return Ok(TicketState::Expired),
        }
        let Some(uid) = self
            .store
            .take_handoff(&key, now)?
            .and_then(|v| v.strip_prefix("done:")?.parse::<u64>().ok())
        else {
            return Ok(TicketState::Expired);
        };
        let uid = Uid(uid);
        let expires_at_ms = now.saturating_add(ms(LOGIN_TOKEN_TTL));
        let token = self
            .store
            .create_token(uid, "web login (WeChat)", Some(expires_at_ms), now)?;
        metrics::counter!("chatrelay_login_total", "outcome" => "wechat").increment(1);
        Ok(TicketState::Done(LoginToken {
            uid,
            token,
            expires_at_ms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(local_path(None), "/");
        assert_eq!(local_path(Some("/")), "/");
        assert_eq!(local_path(Some("/?order=CR1#x")), "/?order=CR1");
        for evil in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "evil",
            "/a b",
            "/\u{7f}",
            "/%0d%0aSet-Cookie:x",
        ] {
            let got = local_path(Some(evil));
            assert!(
                got == "/" || (got.starts_with('/') && !got.starts_with("//")),
                "{evil}: {got}"
            );
        }
        assert_eq!(local_path(Some("//evil.example")), "/");
        assert_eq!(local_path(Some(&format!("/{}", "a".repeat(600)))), "/");
    }

    #[test]
    fn a_state_works_once_for_its_browser_and_account_only() {
        let store = Store::open_temporary().unwrap();
        let l = Logins { store: &store };
        let s = l.start("main", None, None, "/").unwrap();
        let wrong = secret().unwrap();
        for (account, state, browser) in [
            ("main", s.state.as_str(), Some(wrong.as_str())),
            ("main", s.state.as_str(), None),
            ("other", s.state.as_str(), Some(s.browser.as_str())),
            ("main", wrong.as_str(), Some(s.browser.as_str())),
            ("main", "not-a-state", Some(s.browser.as_str())),
        ] {
            assert!(matches!(
                l.take_state(account, state, browser),
                Err(OAuthError::BadState)
            ));
        }
        // The failures above did not spoil it.
        let rec = l.take_state("main", &s.state, Some(&s.browser)).unwrap();
        assert_eq!((rec.account.as_str(), rec.next.as_str()), ("main", "/"));
        assert!(matches!(
            l.take_state("main", &s.state, Some(&s.browser)),
            Err(OAuthError::BadState)
        ));
        // A browser keeps its cookie value across logins.
        let again = l.start("main", Some(&s.browser), None, "/").unwrap();
        assert_eq!(again.browser, s.browser);
        assert_ne!(again.state, s.state);
    }

    #[test]
    fn a_ticket_is_bound_once_and_collected_once() {
        let store = Store::open_temporary().unwrap();
        let l = Logins { store: &store };
        let uid = store.create_user("u").unwrap().uid;
        let (t, _) = l.new_ticket().unwrap();
        assert!(l.ticket_pending(&t).unwrap());
        assert!(matches!(l.poll_ticket(&t).unwrap(), TicketState::Pending));
        assert!(l.bind_ticket(&t, uid).unwrap());
        let other = store.create_user("v").unwrap().uid;
        assert!(!l.bind_ticket(&t, other).unwrap(), "bound once");
        match l.poll_ticket(&t).unwrap() {
            TicketState::Done(tok) => {
                assert_eq!(tok.uid, uid);
                assert_eq!(store.token_uid(&tok.token, now_ms()).unwrap(), Some(uid));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(l.poll_ticket(&t).unwrap(), TicketState::Expired));
        assert!(matches!(
            l.poll_ticket(&secret().unwrap()).unwrap(),
            TicketState::Expired
        ));
        assert!(!l.bind_ticket(&secret().unwrap(), uid).unwrap());
        let h = l.handoff_ticket(uid).unwrap();
        assert!(matches!(l.poll_ticket(&h).unwrap(), TicketState::Done(_)));
    }

    #[test]
    fn an_expired_ticket_cannot_be_bound() {
        let store = Store::open_temporary().unwrap();
        let l = Logins { store: &store };
        let uid = store.create_user("u").unwrap().uid;
        store
            .put_handoff(
                "ticket:0123456789abcdef0123456789abcdef",
                "pending",
                now_ms() - 1,
            )
            .unwrap();
        let t = "0123456789abcdef0123456789abcdef";
        assert!(!l.ticket_pending(t).unwrap());
        assert!(!l.bind_ticket(t, uid).unwrap());
        assert!(matches!(l.poll_ticket(t).unwrap(), TicketState::Expired));
    }
}
