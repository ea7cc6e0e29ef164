//! The web chat page, embedded in the binary (`GET /`, `/assets/app.css`, `/assets/app.js`,
//! `/assets/wechat.js`),
//! and the APIs only the page needs: `GET /api/config` (what to show, with the models and
//! their prices) and `POST /api/guest`
//! (try it without logging in, when `web.guest_credits` is set).
//!
//! The page talks to the same `/v1` API as any OpenAI client, with the user's token, and keeps
//! its conversations on the server (`chats`: `/api/conversations`).

pub mod api;
pub mod chats;
pub mod guests;
pub mod login;
pub mod plans;
pub mod redeem;
pub mod scan;
pub mod shop;
pub mod state;
pub mod usage;
pub mod v1;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tracing::{info, warn};

use crate::channels::web::state::WebState;
use crate::engine::Guest;

const INDEX: &str = include_str!("index.html");
const CSS: &str = include_str!("app.css");
const JS: &str = include_str!("app.js");
/// Browser detection and WeChat Pay / WeChat login helpers the page uses (loaded before app.js).
const WECHAT_JS: &str = include_str!("wechat.js");

/// Everything the page loads comes from here; nothing inline, nothing from elsewhere
/// (except the configured Official Account QR image).
const CSP: &str = "default-src 'self'; img-src 'self' data: blob: https:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// How long a guest token works.
const GUEST_TOKEN_TTL: Duration = Duration::from_secs(7 * 86_400);

/// One of the page's files: its text, and the same gzipped (made once, when the routes are
/// built: the first load of the page is about a quarter of the size compressed).
#[derive(Clone)]
struct Asset {
    body: &'static str,
    gzip: Option<Bytes>,
    content_type: &'static str,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Self {
        Self {
            body,
            gzip: gzip(body.as_bytes()),
            content_type,
        }
    }
}

/// `data` gzipped at the best level (`None` if that fails, and the plain file is sent).
fn gzip(data: &[u8]) -> Option<Bytes> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).ok()?;
    enc.finish().ok().map(Bytes::from)
}

/// Whether the client takes gzip (`Accept-Encoding`, with a `q` above zero).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q_zero = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !q_zero
        })
}

/// The page's routes (`page` false leaves only the APIs).
pub fn routes(page: bool) -> axum::Router<WebState> {
    let api = axum::Router::new()
        .route("/api/config", get(config))
        .route("/api/guest", post(guest));
    if !page {
        return api;
    }
    let serve = |a: Asset| get(move |headers: HeaderMap| async move { asset(&a, &headers) });
    api.route("/", serve(Asset::new(INDEX, "text/html; charset=utf-8")))
        .route(
            "/assets/app.css",
            serve(Asset::new(CSS, "text/css; charset=utf-8")),
        )
        .route(
            "/assets/app.js",
            serve(Asset::new(JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/assets/wechat.js",
            serve(Asset::new(WECHAT_JS, "text/javascript; charset=utf-8")),
        )
}

fn asset(a: &Asset, headers: &HeaderMap) -> Response {
    let mut res = match &a.gzip {
        Some(gz) if accepts_gzip(headers) => {
            let mut res = gz.clone().into_response();
            res.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            res
        }
        _ => a.body.into_response(),
    };
    let h = res.headers_mut();
    // Caches keep the plain and the gzipped file apart.
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
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
        HeaderValue::from_static("same-origin"),
    );
    // The binary is the version: a restart with a new build serves new files.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

async fn config(State(st): State<WebState>) -> Response {
    let parts = st.parts();
    let web = &parts.config.web;
    let login_mp = web.login_mp(&parts.config.wechat_mp);
    let login = login_mp.map(|mp| {
        json!({
            "keyword": mp.login_keyword,
            "mp_name": web.mp_name,
            "mp_qr_url": web.mp_qr_url,
        })
    });
    // Web authorization needs the public URL its redirect comes back to.
    let wechat_login = login_mp.map(|mp| {
        let oauth = parts.oauth.contains_key(&mp.id) && parts.public_url().is_some();
        json!({"account": mp.id, "oauth": oauth, "auto": oauth && web.wechat_auto_login})
    });
    // The model picker shows each model's price (what a message costs in credits).
    let settings = st.engine.settings();
    let models: Vec<serde_json::Value> = settings
        .models
        .iter()
        .map(|m| {
            json!({
                "id": m.name,
                "credits": m.credits,
                "credits_per_1k_tokens": m.credits_per_1k_tokens,
                "paid_only": m.paid_only,
                "vision": m.vision,
            })
        })
        .collect();
    Json(json!({
        "title": web.title,
        "models": models,
        "default_model": settings.default_model,
        "login": login,
        "wechat_login": wechat_login,
        "guest": web.guest_credits > 0,
        "channels": parts.billing.channels(),
        "buy": parts.billing.enabled() && !parts.billing.products().is_empty(),
    }))
    .into_response()
}

/// A JSON error as the page's APIs give it: `{"error": {"code", "message"}}`.
pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// The user behind one of the page's JSON calls, and its body: the token's error (401)
/// without a valid one, 413 for a body over the limit, 400 with `hint` (what to send) for one
/// that does not parse.
pub(super) fn authed_json<T: serde::de::DeserializeOwned>(
    st: &WebState,
    headers: &HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    hint: &str,
) -> Result<(chatrelay_storage::Uid, T), Box<Response>> {
    let uid = v1::authenticate(st, headers).map_err(|e| Box::new(e.into_response()))?;
    let Ok(body) = body else {
        return Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_request",
            "the request body is too large",
        )));
    };
    serde_json::from_slice::<T>(&body)
        .map(|req| (uid, req))
        .map_err(|_| Box::new(error(StatusCode::BAD_REQUEST, "bad_request", hint)))
}

async fn guest(
    State(st): State<WebState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let credits = st.parts().config.web.guest_credits;
    if credits == 0 {
        return error(StatusCode::NOT_FOUND, "guest_off", "未开放试用");
    }
    let ip = st.client_ip(peer, &headers);
    if !st.guests.allow(ip) {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            "试用次数过多，请稍后再试",
        );
    }
    match st.engine.create_guest(credits, GUEST_TOKEN_TTL).await {
        Ok(Guest {
            uid,
            token,
            expires_at_ms: expires,
        }) => {
            metrics::counter!("chatrelay_guests_total").increment(1);
            info!(%uid, "guest created");
            Json(json!({"token": token, "uid": uid, "expires_at": expires / 1000})).into_response()
        }
        Err(e) => {
            warn!(error = %e, "creating a guest failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "服务暂时不可用",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    #[test]
    fn gzip_only_for_clients_that_take_it() {
        assert!(accepts_gzip(&with("gzip, deflate, br")));
        assert!(accepts_gzip(&with("br;q=1.0, GZIP;q=0.5")));
        assert!(accepts_gzip(&with("*")));
        assert!(!accepts_gzip(&with("gzip;q=0")));
        assert!(!accepts_gzip(&with("br, deflate")));
        assert!(!accepts_gzip(&with("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn the_gzipped_assets_unpack_to_the_files_and_are_small() {
        use std::io::Read;
        let mut total = 0;
        for body in [INDEX, CSS, JS, WECHAT_JS] {
            let gz = gzip(body.as_bytes()).unwrap();
            let mut back = String::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_string(&mut back)
                .unwrap();
            assert_eq!(back, body);
            assert!(gz.len() < body.len() / 2, "{} of {}", gz.len(), body.len());
            total += gz.len();
        }
        // The first load (issue 26) stays under 150 KB compressed.
        assert!(total < 150 * 1024, "{total} bytes");
    }
}
