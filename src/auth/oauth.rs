//! Web login through an Official Account's web authorization (网页授权), and desktop login
//! by scanning: the records that tie the steps together, kept in the store so that each
//! step may reach another daemon sharing the database.
//!
//! - A **state** (`oauth:<state>`, 10 minutes, single use) is made when a browser is sent to
//!   WeChat; it is bound to that browser by a random cookie value (only its hash is kept), to
//!   the account, and carries the scan ticket and the local page to return to. A forged,
//!   reused or expired state, or one from another browser, changes nothing.
//! - A **ticket** (`ticket:<T>`, 5 minutes) is `pending` until someone logs in for it, then
//!   `done:<uid>`; the browser that asked for it (by its cookie) takes it and gets a new
//!   token, once. The desktop's scan QR carries one, bound only once the phone *confirms*
//!   (`confirm:<C>`): a scan alone never logs a desktop in. A login in the same browser makes
//!   a short one that the page collects from its URL fragment, so a token never appears in a
//!   URL, and a link with someone else's logs nobody in (no login CSRF).
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
    pub async fn user_of(
        &self,
        account: &str,
        openid: &str,
        nickname: Option<&str>,
    ) -> Result<Uid, OAuthError> {
        let key = UserKey::new(Platform::Mp, account, openid);
        Ok(self.store.resolve_identity(&key, nickname).await?)
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
    pub async fn start(
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
        self.store
            .put_handoff(
                &format!("oauth:{state}"),
                &value,
                now_ms().saturating_add(ms(STATE_TTL)),
            )
            .await?;
        Ok(Started { state, browser })
    }

    /// Uses up `state` for `account` if it is live and was made for this browser. Anything
    /// else is [`OAuthError::BadState`] and leaves the state as it was (so a forged request
    /// cannot spoil a real one).
    pub async fn take_state(
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
            .handoff(&key, now)
            .await?
            .and_then(|v| serde_json::from_str(&v).ok())
            .ok_or(OAuthError::BadState)?;
        let same_browser =
            browser.is_some_and(|b| crate::util::secrets_equal(&hash(b), &record.browser));
        if record.account != account || !same_browser {
            return Err(OAuthError::BadState);
        }
        // Single use: of two callbacks with this state, one takes it.
        match self.store.take_handoff(&key, now).await? {
            Some(_) => Ok(record),
            None => Err(OAuthError::BadState),
        }
    }

    /// A new scan ticket for the desktop browser whose cookie value is `browser` (a new
    /// value when it has none: see [`Started::browser`]); only that browser can collect it.
    pub async fn new_ticket(&self, browser: Option<&str>) -> Result<NewTicket, OAuthError> {
        let browser = match browser.filter(|b| is_secret_form(b)) {
            Some(b) => b.to_owned(),
            None => secret()?,
        };
        let ticket = secret()?;
        let expires_at_ms = now_ms().saturating_add(ms(TICKET_TTL));
        self.store
            .put_handoff(
                &format!("ticket:{ticket}"),
                &TicketRecord::Pending {
                    browser: hash(&browser),
                }
                .encode(),
                expires_at_ms,
            )
            .await?;
        Ok(NewTicket {
            ticket,
            browser,
            expires_at_ms,
        })
    }

    async fn ticket(
        &self,
        ticket: &str,
        now: i64,
    ) -> Result<Option<(String, TicketRecord)>, OAuthError> {
        if !is_secret_form(ticket) {
            return Ok(None);
        }
        Ok(self
            .store
            .handoff(&format!("ticket:{ticket}"), now)
            .await?
            .and_then(|raw| TicketRecord::decode(&raw).map(|r| (raw, r))))
    }

    /// Whether `ticket` is live and still waiting for a login.
    pub async fn ticket_pending(&self, ticket: &str) -> Result<bool, OAuthError> {
        Ok(matches!(
            self.ticket(ticket, now_ms()).await?,
            Some((_, TicketRecord::Pending { .. }))
        ))
    }

    /// A phone logged in as `uid` for `ticket`: nothing is bound yet. Returns the one-time
    /// confirmation the phone's page posts back (see [`Logins::confirm`]), or `None` when the
    /// ticket is not pending. Scanning alone never logs a desktop in: a link to someone
    /// else's ticket, opened in WeChat, would otherwise log its sender in as the victim.
    pub async fn offer_confirmation(
        &self,
        ticket: &str,
        uid: Uid,
        phone_browser: &str,
    ) -> Result<Option<String>, OAuthError> {
        if !self.ticket_pending(ticket).await? {
            return Ok(None);
        }
        let confirmation = secret()?;
        self.store
            .put_handoff(
                &format!("confirm:{confirmation}"),
                &format!("{ticket}:{}:{}", uid.0, hash(phone_browser)),
                now_ms().saturating_add(ms(TICKET_TTL)),
            )
            .await?;
        Ok(Some(confirmation))
    }

    /// The phone confirmed: binds the ticket to the user who logged in on it. False when the
    /// confirmation is unknown, used, expired or from another browser, or the ticket is no
    /// longer pending. A confirmation works once.
    pub async fn confirm(
        &self,
        confirmation: &str,
        phone_browser: Option<&str>,
    ) -> Result<bool, OAuthError> {
        if !is_secret_form(confirmation) {
            return Ok(false);
        }
        let key = format!("confirm:{confirmation}");
        let now = now_ms();
        let Some(raw) = self.store.handoff(&key, now).await? else {
            return Ok(false);
        };
        let mut parts = raw.splitn(3, ':');
        let (Some(ticket), Some(uid), Some(bound)) = (parts.next(), parts.next(), parts.next())
        else {
            return Ok(false);
        };
        let same_browser =
            phone_browser.is_some_and(|b| crate::util::secrets_equal(&hash(b), bound));
        let Ok(uid) = uid.parse::<u64>() else {
            return Ok(false);
        };
        if !same_browser || self.store.take_handoff(&key, now).await?.is_none() {
            return Ok(false);
        }
        let Some((current, TicketRecord::Pending { browser })) = self.ticket(ticket, now).await?
        else {
            return Ok(false);
        };
        let done = TicketRecord::Done {
            uid: Uid(uid),
            browser,
        }
        .encode();
        Ok(self
            .store
            .swap_handoff(
                &format!("ticket:{ticket}"),
                &current,
                &done,
                now.saturating_add(ms(HANDOFF_TTL)),
                now,
            )
            .await?)
    }

    /// A ticket already logged in for `uid`, for the page of the same browser (cookie value
    /// `browser`) to collect: a link with someone else's handoff logs nobody in.
    pub async fn handoff_ticket(&self, uid: Uid, browser: &str) -> Result<String, OAuthError> {
        let ticket = secret()?;
        self.store
            .put_handoff(
                &format!("ticket:{ticket}"),
                &TicketRecord::Done {
                    uid,
                    browser: hash(browser),
                }
                .encode(),
                now_ms().saturating_add(ms(HANDOFF_TTL)),
            )
            .await?;
        Ok(ticket)
    }

    /// Polls `ticket` from the browser with cookie value `browser`: a finished login is taken
    /// (once) and turned into a new token. A ticket of another browser is as good as expired.
    pub async fn poll_ticket(
        &self,
        ticket: &str,
        browser: Option<&str>,
    ) -> Result<TicketState, OAuthError> {
        let now = now_ms();
        let Some((raw, record)) = self.ticket(ticket, now).await? else {
            return Ok(TicketState::Expired);
        };
        let bound = match &record {
            TicketRecord::Pending { browser } | TicketRecord::Done { browser, .. } => browser,
        };
        if !browser.is_some_and(|b| crate::util::secrets_equal(&hash(b), bound)) {
            return Ok(TicketState::Expired);
        }
        let TicketRecord::Done { uid, .. } = record else {
            return Ok(TicketState::Pending);
        };
        // Taken only if unchanged: of two polls, one gets the token.
        let key = format!("ticket:{ticket}");
        if self.store.take_handoff(&key, now).await?.as_deref() != Some(raw.as_str()) {
            return Ok(TicketState::Expired);
        }
        let expires_at_ms = now.saturating_add(ms(LOGIN_TOKEN_TTL));
        let token = self
            .store
            .create_token(uid, "web login (WeChat)", Some(expires_at_ms), now)
            .await?;
        metrics::counter!("chatrelay_login_total", "outcome" => "wechat").increment(1);
        Ok(TicketState::Done(LoginToken {
            uid,
            token,
            expires_at_ms,
        }))
    }
}

/// A ticket as stored: waiting, or logged in; both bound to the browser that collects it
/// (the SHA-256 of its cookie value).
#[derive(Debug, Clone, PartialEq, Eq)]
enum TicketRecord {
    Pending { browser: String },
    Done { uid: Uid, browser: String },
}

impl TicketRecord {
    fn encode(&self) -> String {
        match self {
            TicketRecord::Pending { browser } => format!("pending:{browser}"),
            TicketRecord::Done { uid, browser } => format!("done:{}:{browser}", uid.0),
        }
    }

    fn decode(raw: &str) -> Option<TicketRecord> {
        if let Some(browser) = raw.strip_prefix("pending:") {
            return Some(TicketRecord::Pending {
                browser: browser.to_owned(),
            });
        }
        let (uid, browser) = raw.strip_prefix("done:")?.split_once(':')?;
        Some(TicketRecord::Done {
            uid: Uid(uid.parse().ok()?),
            browser: browser.to_owned(),
        })
    }
}

/// A new scan ticket.
#[derive(Debug, Clone)]
pub struct NewTicket {
    /// The ticket (in the QR code's URL).
    pub ticket: String,
    /// The desktop browser's cookie value (set it: polling needs it).
    pub browser: String,
    /// When it expires, ms since the Unix epoch.
    pub expires_at_ms: i64,
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

    #[tokio::test]
    async fn a_state_works_once_for_its_browser_and_account_only() {
        for (engine, store) in crate::auth::test_stores().await {
            // Shown with a failure: which engine the case failed on.
            eprintln!("engine: {engine}");
            let l = Logins { store: &store };
            let s = l.start("main", None, None, "/").await.unwrap();
            let wrong = secret().unwrap();
            for (account, state, browser) in [
                ("main", s.state.as_str(), Some(wrong.as_str())),
                ("main", s.state.as_str(), None),
                ("other", s.state.as_str(), Some(s.browser.as_str())),
                ("main", wrong.as_str(), Some(s.browser.as_str())),
                ("main", "not-a-state", Some(s.browser.as_str())),
            ] {
                assert!(matches!(
                    l.take_state(account, state, browser).await,
                    Err(OAuthError::BadState)
                ));
            }
            // The failures above did not spoil it.
            let rec = l
                .take_state("main", &s.state, Some(&s.browser))
                .await
                .unwrap();
            assert_eq!((rec.account.as_str(), rec.next.as_str()), ("main", "/"));
            assert!(matches!(
                l.take_state("main", &s.state, Some(&s.browser)).await,
                Err(OAuthError::BadState)
            ));
            // A browser keeps its cookie value across logins.
            let again = l.start("main", Some(&s.browser), None, "/").await.unwrap();
            assert_eq!(again.browser, s.browser);
            assert_ne!(again.state, s.state);
        }
    }

    #[tokio::test]
    async fn a_scan_ticket_needs_the_phone_to_confirm_and_only_its_desktop_collects_it() {
        for (engine, store) in crate::auth::test_stores().await {
            // Shown with a failure: which engine the case failed on.
            eprintln!("engine: {engine}");
            let l = Logins { store: &store };
            let uid = store.create_user("u").await.unwrap().uid;
            let desk = l.new_ticket(None).await.unwrap();
            let t = desk.ticket.as_str();
            let me = Some(desk.browser.as_str());
            assert!(l.ticket_pending(t).await.unwrap());
            assert!(matches!(
                l.poll_ticket(t, me).await.unwrap(),
                TicketState::Pending
            ));
            // Another browser (someone who saw the QR) learns nothing.
            let stranger = secret().unwrap();
            assert!(matches!(
                l.poll_ticket(t, Some(&stranger)).await.unwrap(),
                TicketState::Expired
            ));
            assert!(matches!(
                l.poll_ticket(t, None).await.unwrap(),
                TicketState::Expired
            ));
            // The phone logged in: nothing is bound until it confirms, from the same browser.
            let phone = secret().unwrap();
            let c = l.offer_confirmation(t, uid, &phone).await.unwrap().unwrap();
            assert!(matches!(
                l.poll_ticket(t, me).await.unwrap(),
                TicketState::Pending
            ));
            assert!(
                !l.confirm(&c, Some(&stranger)).await.unwrap(),
                "another browser"
            );
            assert!(!l.confirm(&c, None).await.unwrap());
            assert!(
                !l.confirm(&secret().unwrap(), Some(&phone)).await.unwrap(),
                "forged"
            );
            assert!(l.confirm(&c, Some(&phone)).await.unwrap());
            assert!(!l.confirm(&c, Some(&phone)).await.unwrap(), "once");
            // A second phone cannot take the ticket over.
            let other = store.create_user("v").await.unwrap().uid;
            assert_eq!(l.offer_confirmation(t, other, &phone).await.unwrap(), None);
            assert!(matches!(
                l.poll_ticket(t, Some(&stranger)).await.unwrap(),
                TicketState::Expired
            ));
            match l.poll_ticket(t, me).await.unwrap() {
                TicketState::Done(tok) => {
                    assert_eq!(tok.uid, uid);
                    assert_eq!(
                        store.token_uid(&tok.token, now_ms()).await.unwrap(),
                        Some(uid)
                    );
                }
                other => panic!("{other:?}"),
            }
            assert!(
                matches!(l.poll_ticket(t, me).await.unwrap(), TicketState::Expired),
                "collected once"
            );
            assert!(matches!(
                l.poll_ticket(&secret().unwrap(), me).await.unwrap(),
                TicketState::Expired
            ));
        }
    }

    #[tokio::test]
    async fn a_handoff_logs_in_only_the_browser_that_logged_in() {
        for (engine, store) in crate::auth::test_stores().await {
            // Shown with a failure: which engine the case failed on.
            eprintln!("engine: {engine}");
            let l = Logins { store: &store };
            let uid = store.create_user("u").await.unwrap().uid;
            let browser = secret().unwrap();
            let h = l.handoff_ticket(uid, &browser).await.unwrap();
            // A link with this handoff, opened elsewhere (login CSRF), logs nobody in.
            assert!(matches!(
                l.poll_ticket(&h, Some(&secret().unwrap())).await.unwrap(),
                TicketState::Expired
            ));
            assert!(matches!(
                l.poll_ticket(&h, Some(&browser)).await.unwrap(),
                TicketState::Done(_)
            ));
            assert!(matches!(
                l.poll_ticket(&h, Some(&browser)).await.unwrap(),
                TicketState::Expired
            ));
        }
    }

    #[tokio::test]
    async fn an_expired_ticket_cannot_be_confirmed() {
        for (engine, store) in crate::auth::test_stores().await {
            // Shown with a failure: which engine the case failed on.
            eprintln!("engine: {engine}");
            let l = Logins { store: &store };
            let uid = store.create_user("u").await.unwrap().uid;
            let t = "0123456789abcdef0123456789abcdef";
            store
                .put_handoff(
                    &format!("ticket:{t}"),
                    &format!("pending:{}", hash("b")),
                    now_ms() - 1,
                )
                .await
                .unwrap();
            assert!(!l.ticket_pending(t).await.unwrap());
            assert_eq!(l.offer_confirmation(t, uid, "p").await.unwrap(), None);
            assert!(matches!(
                l.poll_ticket(t, Some("b")).await.unwrap(),
                TicketState::Expired
            ));
        }
    }
}
