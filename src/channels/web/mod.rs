//! The web chat page, embedded in the binary (`GET /` and its files under `/assets/`, see
//! [`FILES`]), and the APIs only the page needs: `GET /api/config` (what to show, with the models and
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
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tracing::{info, warn};

use crate::channels::web::state::WebState;
use crate::engine::Guest;
use crate::http::assets::Asset;

const INDEX: &str = include_str!("index.html");
const JS: &str = "text/javascript; charset=utf-8";

/// The page's files, served at `/assets/<name>`, in the order index.html loads the scripts:
/// wechat.js (browser detection, WeChat Pay and login helpers), then the page's own scripts,
/// each of which uses only what the ones before it declared (boot.js, last, starts the page).
const FILES: &[(&str, &str, &str)] = &[
    (
        "app.css",
        include_str!("app.css"),
        "text/css; charset=utf-8",
    ),
    ("wechat.js", include_str!("wechat.js"), JS),
    ("text.js", include_str!("text.js"), JS),
    ("math.js", include_str!("math.js"), JS),
    ("render.js", include_str!("render.js"), JS),
    ("app.js", include_str!("app.js"), JS),
    ("login.js", include_str!("login.js"), JS),
    ("chat.js", include_str!("chat.js"), JS),
    ("thread.js", include_str!("thread.js"), JS),
    ("record.js", include_str!("record.js"), JS),
    ("account.js", include_str!("account.js"), JS),
    ("buy.js", include_str!("buy.js"), JS),
    ("boot.js", include_str!("boot.js"), JS),
];

/// Everything the page loads comes from here; nothing inline, nothing from elsewhere
/// (except the configured Official Account QR image); spoken answers play from `blob:` URLs.
const CSP: &str = "default-src 'self'; img-src 'self' data: blob: https:; media-src 'self' blob:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// How long a guest token works.
const GUEST_TOKEN_TTL: Duration = Duration::from_secs(7 * 86_400);

/// The page's routes (`page` false leaves only the APIs).
pub fn routes(page: bool) -> axum::Router<WebState> {
    let api = axum::Router::new()
        .route("/api/config", get(config))
        .route("/api/guest", post(guest));
    if !page {
        return api;
    }
    let serve = |a: Asset| get(move |headers: HeaderMap| async move { a.respond(&headers) });
    let mut router = api.route("/", serve(page_asset(INDEX, "text/html; charset=utf-8")));
    for &(name, body, content_type) in FILES {
        router = router.route(
            &format!("/assets/{name}"),
            serve(page_asset(body, content_type)),
        );
    }
    router
}

fn page_asset(body: &'static str, content_type: &'static str) -> Asset {
    Asset::new(body, content_type, CSP, "same-origin")
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
        // `[[scopes]] scope = "web"` with `voice_reply`: answers get a play button (spoken
        // through `/v1/audio/speech`, charged `speech_credits`) up to `reply_max_chars`.
        "voice_reply": voice_reply(&settings),
        // `[speech]` on: a record button beside the composer (record.js) uploads to
        // `/v1/audio/transcriptions` within these limits.
        "speech": speech_in(&settings, parts.config.server.max_body_bytes),
    }))
    .into_response()
}

/// The page's voice replies: `{credits, max_chars}` when the web scope speaks, else null.
fn voice_reply(settings: &crate::engine::Settings) -> serde_json::Value {
    let speaks = crate::engine::policy::scope_defaults(&settings.scopes, "web")
        .is_some_and(|sc| sc.voice_reply);
    match &settings.speech {
        Some(sp) if speaks => json!({
            "credits": sp.speech_credits,
            "max_chars": sp.reply_max_chars,
        }),
        _ => serde_json::Value::Null,
    }
}

/// Room left in a request body for the multipart framing around the recording.
const MULTIPART_ROOM: usize = 4096;

/// The page's voice input: `{model, max_seconds, max_bytes, credits, credits_per_minute}`
/// when `[speech]` is on, else null (no record button). `max_bytes` is the smaller of
/// `[speech] max_bytes` and what `[server] max_body_bytes` lets through with the framing, so
/// that the page refuses a recording the daemon would refuse before uploading it.
fn speech_in(settings: &crate::engine::Settings, body_limit: usize) -> serde_json::Value {
    settings
        .speech
        .as_ref()
        .map_or(serde_json::Value::Null, |sp| {
            let room = u64::try_from(body_limit.saturating_sub(MULTIPART_ROOM)).unwrap_or(u64::MAX);
            json!({
                "model": sp.model,
                "max_seconds": sp.max_seconds,
                "max_bytes": sp.max_bytes.min(room),
                "credits": sp.credits,
                "credits_per_minute": sp.credits_per_minute,
            })
        })
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
pub(super) async fn authed_json<T: serde::de::DeserializeOwned>(
    st: &WebState,
    headers: &HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    hint: &str,
) -> Result<(chatrelay_storage::Uid, T), Box<Response>> {
    let uid = v1::authenticate(st, headers)
        .await
        .map_err(|e| Box::new(e.into_response()))?;
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

    #[test]
    fn index_html_loads_every_script_in_the_served_order() {
        let loaded: Vec<&str> = INDEX
            .split("<script src=\"/assets/")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .collect();
        let served: Vec<&str> = FILES
            .iter()
            .map(|f| f.0)
            .filter(|n| n.ends_with(".js"))
            .collect();
        assert_eq!(loaded, served);
    }

    #[test]
    fn the_page_learns_speech_limits_within_the_body_limit() {
        let mut config = crate::config::Config::default();
        let off = crate::engine::Settings::from_config(&config).unwrap();
        assert!(
            speech_in(&off, 1 << 20).is_null(),
            "no [speech], no record button"
        );
        config.speech = Some(crate::config::SpeechConfig {
            model: "gpt-4o-mini-transcribe".into(),
            max_seconds: 45,
            max_bytes: 2 << 20,
            credits: 3,
            ..crate::config::SpeechConfig::default()
        });
        let on = crate::engine::Settings::from_config(&config).unwrap();
        let sp = speech_in(&on, 1 << 20);
        assert_eq!(sp["model"], "gpt-4o-mini-transcribe");
        assert_eq!(sp["max_seconds"], 45);
        assert_eq!(sp["credits"], 3);
        // A 1 MiB body limit lets less through than [speech] max_bytes: the page keeps to it.
        assert_eq!(sp["max_bytes"], (1 << 20) - MULTIPART_ROOM);
        assert_eq!(speech_in(&on, 8 << 20)["max_bytes"], 2 << 20);
    }

    #[test]
    fn the_gzipped_assets_are_small() {
        let mut total = 0;
        let bodies = FILES.iter().map(|f| f.1);
        for body in std::iter::once(INDEX).chain(bodies) {
            let gz = page_asset(body, "text/plain").gzipped_len();
            assert!(gz < body.len() / 2, "{gz} of {}", body.len());
            total += gz;
        }
        // The first load (issue 26) stays under 150 KB compressed.
        assert!(total < 150 * 1024, "{total} bytes");
    }
}
