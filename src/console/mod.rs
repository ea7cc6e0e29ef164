//! The operators' web console at `/console` (issue 23): its page (embedded, like the chat
//! page), and its sessions. An operator logs in with the admin token and gets a session
//! cookie; the page then calls only the admin API (`/admin/...`), which admits the cookie as
//! it admits the bearer token (see [`Sessions::admit`]), with a CSRF token on every change.
//!
//! Sessions live in memory (a restart logs everyone out), are bounded in number, expire after
//! `console.session_hours`, and remember a hash of the admin token they were made with, so a
//! new token (a reload) ends every older session.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tracing::{info, warn};

use crate::admin::state::AppState;
use crate::http::assets::Asset;

pub mod sessions;

use sessions::{COOKIE, CSRF_HEADER, Refusal, session_cookie};

/// The console's files, served at `/console/<name>` (the page itself at `/console`). A page of
/// the console is a script that registers itself (see `console.js`); a new one is added here
/// and loaded by `console.html`.
const FILES: &[(&str, &str, &str)] = &[
    (
        "console.css",
        include_str!("console.css"),
        "text/css; charset=utf-8",
    ),
    ("console.js", include_str!("console.js"), JS),
    ("dashboard.js", include_str!("dashboard.js"), JS),
    ("users.js", include_str!("users.js"), JS),
    ("audit.js", include_str!("audit.js"), JS),
    ("orders.js", include_str!("orders.js"), JS),
    ("codes.js", include_str!("codes.js"), JS),
    ("ops.js", include_str!("ops.js"), JS),
];
const PAGE: &str = include_str!("console.html");
const JS: &str = "text/javascript; charset=utf-8";

/// The page loads only its own files and talks only to this server.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The console's routes: the page, its files, and login / session / logout.
pub fn routes() -> axum::Router<AppState> {
    let serve = |a: Asset| get(move |headers: HeaderMap| async move { a.respond(&headers) });
    let page = Asset::new(PAGE, "text/html; charset=utf-8", CSP, "no-referrer");
    let mut router = axum::Router::new()
        .route("/console", serve(page.clone()))
        .route("/console/", serve(page));
    for &(name, body, content_type) in FILES {
        let asset = Asset::new(body, content_type, CSP, "no-referrer");
        router = router.route(&format!("/console/{name}"), serve(asset));
    }
    router
        .route("/console/api/login", post(login))
        .route("/console/api/session", get(session))
        .route("/console/api/logout", post(logout))
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
