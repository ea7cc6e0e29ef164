//! The operators' web console at `/console` (issue 23): its page (embedded, like the chat
//! page), and its sessions. An operator logs in with the admin token and gets a session
//! cookie; the page then calls only the admin API (`/admin/...`), which admits the cookie as
//! it admits the bearer token (see [`Sessions::admit`]), with a CSRF token on every change.
//!
//! Sessions live in memory (a restart logs everyone out), are bounded in number, expire after
//! `console.session_hours`, and remember a hash of the admin token they were made with, so a
//! new token (a reload) ends every older session.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::admin::state::AppState;
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

const PAGE: &str = include_str!("console.html");
const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

/// The page loads only its own files and talks only to this server.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

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
    fn live(&self, id: &str, admin_token: &str) -> Option<(String, Duration)> {
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

/// The console's routes: the page, its files, and login / session / logout.
pub fn routes() -> axum::Router<AppState> {
    let serve = |body: &'static str, ct: &'static str| get(move || async move { asset(body, ct) });
    axum::Router::new()
        .route("/console", serve(PAGE, "text/html; charset=utf-8"))
        .route("/console/", serve(PAGE, "text/html; charset=utf-8"))
        .route(
            "/console/console.css",
            serve(CSS, "text/css; charset=utf-8"),
        )
        .route(
            "/console/console.js",
            serve(JS, "text/javascript; charset=utf-8"),
        )
        .route("/console/api/login", post(login))
        .route("/console/api/session", get(session))
        .route("/console/api/logout", post(logout))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// The `Set-Cookie` value of session `id` (an empty id and no age: the cookie is removed).
fn cookie(id: &str, max_age_secs: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_secs}{secure}")
}

fn is_https(st: &AppState) -> bool {
    secure_for(st.parts().config.server.public_url.as_deref())
}

/// Whether the cookie is `Secure`: when the public URL is https (over plain http a `Secure`
/// cookie would never come back).
fn secure_for(public_url: Option<&str>) -> bool {
    public_url.is_some_and(|u| {
        u.get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
    })
}

fn with_cookie(mut res: Response, value: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(value)
        && !value.is_empty()
    {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[derive(serde::Deserialize)]
struct LoginBody {
    token: String,
}

/// `POST /console/api/login {"token"}`: the admin token for a session cookie and its CSRF
/// token; `401` for a wrong token, `429` after too many wrong ones from one address.
async fn login(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parts = st.parts();
    let trusted = crate::util::addr::parse_trusted(&parts.config.server.trusted_proxies);
    let ip = crate::util::addr::client_ip(peer, &headers, &trusted);
    if !st.console.may_try(ip) {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins from this address; wait 10 minutes",
        );
    }
    let Ok(LoginBody { token }) = serde_json::from_slice::<LoginBody>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "send {\"token\": \"<admin token>\"}",
        );
    };
    let admin = parts.admin_token.expose();
    if !crate::util::secrets_equal(token.trim(), admin) {
        st.console.failed(ip);
        warn!(%ip, "console: wrong admin token");
        return error(StatusCode::UNAUTHORIZED, "wrong admin token");
    }
    let hours = parts.config.console.session_hours;
    let ttl = Duration::from_secs(hours.saturating_mul(3600));
    let (id, csrf) = st.console.create(admin, ttl);
    info!(%ip, "console: logged in");
    let res = Json(json!({"csrf": csrf, "expires_in": ttl.as_secs()})).into_response();
    with_cookie(res, &cookie(&id, ttl.as_secs(), is_https(&st)))
}

/// `GET /console/api/session`: the session's CSRF token and seconds left, or `401`.
async fn session(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let parts = st.parts();
    let live =
        session_cookie(&headers).and_then(|id| st.console.live(id, parts.admin_token.expose()));
    match live {
        Some((csrf, left)) => with_cookie(
            Json(json!({"csrf": csrf, "expires_in": left.as_secs()})).into_response(),
            "",
        ),
        None => error(StatusCode::UNAUTHORIZED, "not logged in"),
    }
}

/// `POST /console/api/logout` (with the CSRF token): ends the session and removes the cookie.
async fn logout(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let parts = st.parts();
    let Some(id) = session_cookie(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "not logged in");
    };
    let csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    match st
        .console
        .admit(id, parts.admin_token.expose(), &Method::POST, csrf)
    {
        Ok(()) => {
            st.console.end(id);
            info!("console: logged out");
            let res = Json(json!({"ok": true})).into_response();
            with_cookie(res, &cookie("", 0, is_https(&st)))
        }
        Err(Refusal::Csrf) => error(StatusCode::FORBIDDEN, "missing or wrong X-CSRF-Token"),
        Err(Refusal::NoSession) => error(StatusCode::UNAUTHORIZED, "not logged in"),
    }
}

#[cfg(test)]
mod tests;
