//! The console's sessions: made by a login with the admin token, kept in memory (a restart
//! logs everyone out), bounded in number, expiring after `console.session_hours`, and tied to
//! a hash of the admin token they were made with, so that a new token (a reload) ends every
//! older one. The admin API's auth layer admits them ([`Sessions::admit`]), with a CSRF token
//! on every change. Imports nothing of the admin API (which imports this).

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::{HeaderMap, Method, header};
use tokio::time::Instant;

use crate::bounded::BoundedMap;
use crate::engine::ratelimit::RateLimiter;
use crate::util::addr::{Cidr, host_prefix};

/// The session cookie's name.
pub const COOKIE: &str = "chatrelay_console";
/// The header every change made with a session carries.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Sessions held at once; the oldest goes first beyond it.
const MAX_SESSIONS: usize = 1000;
/// The longest a session can be configured to last (`console.session_hours` ≤ 720).
const MAX_SESSION_TTL: Duration = Duration::from_secs(720 * 3600);
/// Failed logins one client address may make per [`FAILED_LOGIN_WINDOW`].
const FAILED_LOGINS: u32 = 10;
/// The window of [`FAILED_LOGINS`].
const FAILED_LOGIN_WINDOW: Duration = Duration::from_secs(600);
/// Client addresses remembered by the failed-login limit.
const MAX_CLIENTS: usize = 50_000;

/// One logged-in console.
#[derive(Debug, Clone)]
struct Session {
    /// SHA-256 of the admin token the login gave: another token now means the session ended.
    token_hash: [u8; 32],
    /// What changes must carry in `X-CSRF-Token`.
    csrf: String,
    /// When it ends.
    expires: Instant,
    /// Logged out.
    ended: bool,
}

/// Why a request with a console cookie was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such session, or it expired, was logged out, or the admin token changed: `401`.
    NoSession,
    /// A change without the session's CSRF token: `403`.
    Csrf,
}

/// The console's sessions and its failed-login limit.
#[derive(Debug)]
pub struct Sessions {
    map: Mutex<BoundedMap<String, Session>>,
    failures: RateLimiter<Cidr>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new(MAX_SESSIONS)
    }
}

fn sha256(s: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equal in time independent of where they differ.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    /// At most `capacity` sessions at once.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            map: Mutex::new(BoundedMap::new(capacity, MAX_SESSION_TTL)),
            failures: RateLimiter::bounded(FAILED_LOGINS, FAILED_LOGIN_WINDOW, MAX_CLIENTS),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BoundedMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session for `admin_token`, lasting `ttl`: its id (the cookie) and CSRF token.
    pub fn create(&self, admin_token: &str, ttl: Duration) -> (String, String) {
        let id = crate::util::random_id();
        let csrf = crate::util::random_id();
        let session = Session {
            token_hash: sha256(admin_token),
            csrf: csrf.clone(),
            expires: Instant::now() + ttl.min(MAX_SESSION_TTL),
            ended: false,
        };
        self.lock().insert(id.clone(), session);
        (id, csrf)
    }

    /// The live session `id` made with `admin_token`: its CSRF token and time left.
    pub fn live(&self, id: &str, admin_token: &str) -> Option<(String, Duration)> {
        let now = Instant::now();
        let hash = sha256(admin_token);
        let map = self.lock();
        let s = map.get(&id.to_owned())?;
        (!s.ended && now < s.expires && digests_equal(&s.token_hash, &hash))
            .then(|| (s.csrf.clone(), s.expires.saturating_duration_since(now)))
    }

    /// Ends session `id`.
    pub fn end(&self, id: &str) {
        if let Some(s) = self.lock().get_mut(&id.to_owned()) {
            s.ended = true;
        }
    }

    /// Whether a request with session cookie `id` may reach the admin API now: the session
    /// is live for the current `admin_token`, and a change (not GET/HEAD) carries its CSRF
    /// token in `csrf`.
    pub fn admit(
        &self,
        id: &str,
        admin_token: &str,
        method: &Method,
        csrf: Option<&str>,
    ) -> Result<(), Refusal> {
        let (expected, _) = self.live(id, admin_token).ok_or(Refusal::NoSession)?;
        if method == Method::GET || method == Method::HEAD {
            return Ok(());
        }
        match csrf {
            Some(c) if crate::util::secrets_equal(c, &expected) => Ok(()),
            _ => Err(Refusal::Csrf),
        }
    }

    /// Whether `ip` may try a login now (it has not failed too often).
    #[must_use]
    pub fn may_try(&self, ip: IpAddr) -> bool {
        !self.failures.is_limited(&host_prefix(ip))
    }

    /// Counts a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let _ = self.failures.allow(host_prefix(ip));
    }

    /// Sessions held (live or not yet dropped).
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The console session id in the request's cookies.
#[must_use]
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (name, value) = c.trim().split_once('=')?;
            (name == COOKIE && !value.is_empty()).then_some(value)
        })
}
