//! Desktop login by scanning (扫码登录): the desktop asks for a ticket (`POST
//! /api/login/ticket`) and shows its QR (`…/{t}/qr.svg`); a phone opens it in WeChat, logs in
//! through web authorization ([`super::login`]) and confirms (`POST
//! /auth/wechat/{account}/confirm`); the desktop, polling `GET /api/login/ticket/{t}`, gets
//! its token once. The same poll collects a same-browser login's handoff (`/#login=…`).
//!
//! A ticket answers only the browser that asked for it (its login cookie), so a QR or a link
//! that leaks logs nobody in; and a scan alone binds nothing: the phone must confirm.

use std::net::SocketAddr;

use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use super::error;
use super::login::{COOKIE, browser_cookie, cookie, page, ticket_expired, unavailable};
use crate::auth::oauth::{Logins, TicketState};
use crate::channels::web::state::WebState;

/// The scan-login routes.
pub fn routes() -> axum::Router<WebState> {
    axum::Router::new()
        .route("/api/login/ticket", post(create_ticket))
        .route("/api/login/ticket/{ticket}", get(poll_ticket))
        .route("/api/login/ticket/{ticket}/qr.svg", get(ticket_qr))
        .route("/auth/wechat/{account}/confirm", post(confirm))
}

/// The account the page scans with: the login account, when it has web authorization.
fn scan_account(st: &WebState) -> Option<(String, String)> {
    let parts = st.parts();
    let account = parts
        .config
        .web
        .login_mp(&parts.config.wechat_mp)
        .filter(|a| parts.oauth.contains_key(&a.id))?;
    Some((account.id.clone(), parts.public_url()?.to_owned()))
}

async fn create_ticket(
    State(st): State<WebState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let Some((account, public_url)) = scan_account(&st) else {
        return error(
            StatusCode::NOT_FOUND,
            "scan_login_off",
            "没有开通微信扫码登录",
        );
    };
    if !st.guests.allow_ticket(st.client_ip(peer, &headers)) {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            "请求过于频繁，请稍后再试",
        );
    }
    let new = match Logins::new(&st.engine)
        .new_ticket(cookie(&headers, COOKIE))
        .await
    {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "creating a scan ticket failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "服务暂时不可用",
            );
        }
    };
    let ticket = &new.ticket;
    let mut res = Json(json!({
        "ticket": ticket,
        "account": account,
        "url": format!("{public_url}/auth/wechat/{account}?ticket={ticket}"),
        "qr_svg": format!("/api/login/ticket/{ticket}/qr.svg"),
        "expires_at": new.expires_at_ms / 1000,
    }))
    .into_response();
    if let Some(c) = browser_cookie(&new.browser, &public_url) {
        res.headers_mut().insert(header::SET_COOKIE, c);
    }
    res
}

async fn poll_ticket(
    State(st): State<WebState>,
    Path(ticket): Path<String>,
    headers: HeaderMap,
) -> Response {
    let logins = Logins::new(&st.engine);
    match logins.poll_ticket(&ticket, cookie(&headers, COOKIE)).await {
        Ok(TicketState::Pending) => Json(json!({"status": "pending"})).into_response(),
        Ok(TicketState::Expired) => Json(json!({"status": "expired"})).into_response(),
        Ok(TicketState::Done(t)) => {
            logins.flush().await;
            info!(uid = %t.uid, "web login collected");
            Json(json!({
                "status": "done",
                "token": t.token,
                "uid": t.uid,
                "expires_at": t.expires_at_ms / 1000,
            }))
            .into_response()
        }
        Err(e) => {
            warn!(error = %e, "polling a scan ticket failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "服务暂时不可用",
            )
        }
    }
}

async fn ticket_qr(State(st): State<WebState>, Path(ticket): Path<String>) -> Response {
    let pending = Logins::new(&st.engine).ticket_pending(&ticket).await;
    match (scan_account(&st), pending) {
        (Some((account, public_url)), Ok(true)) => super::shop::qr_svg(&format!(
            "{public_url}/auth/wechat/{account}?ticket={ticket}"
        )),
        _ => error(StatusCode::NOT_FOUND, "expired", "二维码已过期，请刷新"),
    }
}

#[derive(Deserialize)]
struct ConfirmForm {
    c: String,
}

/// The phone confirmed the desktop's login (a form post from [`super::login`]'s page, with
/// the phone's login cookie: another site's form does not carry it).
async fn confirm(
    State(st): State<WebState>,
    Path(account): Path<String>,
    headers: HeaderMap,
    form: Result<Form<ConfirmForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return ticket_expired();
    };
    let logins = Logins::new(&st.engine);
    match logins.confirm(&form.c, cookie(&headers, COOKIE)).await {
        Ok(true) => {
            logins.flush().await;
            info!(account, "scan login confirmed on the phone");
            page(
                StatusCode::OK,
                "已在电脑上登录",
                "电脑上的页面已登录，可以关闭这个页面了。",
                None,
            )
        }
        Ok(false) => ticket_expired(),
        Err(e) => {
            warn!(error = %e, "confirming a scan login failed");
            unavailable()
        }
    }
}
