//! Logging in with WeChat: the Official Account's web authorization (`GET /auth/wechat/{id}`
//! and its callback), and the pages a phone sees (desktop login by scanning is
//! [`super::scan`]). The records behind them are [`crate::auth::oauth`]'s; this module
//! speaks HTTP.
//!
//! Every failure is a page that says what happened and offers to try again, never a 500,
//! and changes nothing: the user is only ever the one WeChat's code exchange names.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tracing::{info, warn};

use crate::auth::oauth::{Logins, OAuthError, STATE_TTL, StateRecord, local_path};
use crate::channels::web::state::{OAuthAccount, WebState};

/// The cookie that binds a login's state to the browser that started it.
pub(super) const COOKIE: &str = "chatrelay_oauth";

/// `Set-Cookie` for the browser's login cookie: sent with every request to this site (the
/// callback, and the page's ticket polls), never readable by scripts, not sent by other
/// sites' forms or fetches (`SameSite=Lax` still lets WeChat's redirect bring it back).
pub(super) fn browser_cookie(value: &str, public_url: &str) -> Option<HeaderValue> {
    let secure = if public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        STATE_TTL.as_secs()
    ))
    .ok()
}

/// The login routes.
pub fn routes() -> axum::Router<WebState> {
    axum::Router::new()
        .route("/auth/wechat/{account}", get(authorize))
        .route("/auth/wechat/{account}/callback", get(callback))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A small page for the phone: a title, a sentence, and a link to try again.
pub(super) fn page(
    status: StatusCode,
    title: &str,
    message: &str,
    retry: Option<&str>,
) -> Response {
    let link = retry.map_or_else(String::new, |href| {
        format!(
            r#"<p><a class="btn" href="{}">重新登录</a></p>"#,
            escape(href)
        )
    });
    page_with(status, title, message, &link)
}

/// [`page`] with our own markup (`extra`, never anything from the request) below the text.
fn page_with(status: StatusCode, title: &str, message: &str, extra: &str) -> Response {
    let link = extra;
    let html = format!(
        r#"<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>{t}</title><style>body{{font-family:-apple-system,"PingFang SC","Noto Sans CJK SC",sans-serif;margin:0;padding:15vh 24px;text-align:center;color:#1f2328;background:#f6f7f9}}h1{{font-size:20px;margin:0 0 12px}}p{{color:#57606a;line-height:1.6}}.btn{{display:inline-block;margin-top:16px;padding:10px 28px;border:0;border-radius:8px;background:#07c160;color:#fff;font-size:16px;text-decoration:none}}.home{{color:#57606a}}</style></head><body><h1>{t}</h1><p>{m}</p>{link}<p><a class="home" href="/">返回首页</a></p></body></html>"#,
        t = escape(title),
        m = escape(message),
    );
    let mut res = (status, html).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

pub(super) fn unavailable() -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "暂时无法登录",
        "服务暂时不可用，请稍后再试。",
        None,
    )
}

/// The value of cookie `name` in the request, if any.
pub(super) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The account's authorization page again, for the retry link.
fn retry_link(account: &str, ticket: Option<&str>, next: &str) -> String {
    let mut url = format!("/auth/wechat/{account}?next={}", urlencode(next));
    if let Some(t) = ticket {
        url.push_str("&ticket=");
        url.push_str(t);
    }
    url
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    ticket: Option<String>,
    next: Option<String>,
}

/// The account if it has web authorization, else the page that says so.
fn oauth_account(
    st: &WebState,
    id: &str,
) -> Result<(String, String, String, String), Box<Response>> {
    let parts = st.parts();
    let Some(public_url) = parts.public_url().map(str::to_owned) else {
        return Err(Box::new(unavailable()));
    };
    match parts.oauth.get(id) {
        Some(OAuthAccount {
            app_id,
            scope,
            oauth_base,
            ..
        }) => Ok((
            public_url,
            app_id.clone(),
            scope.clone(),
            oauth_base.clone(),
        )),
        None => Err(Box::new(page(
            StatusCode::NOT_FOUND,
            "无法使用微信登录",
            "这个公众号没有开通网页授权登录。",
            None,
        ))),
    }
}

async fn authorize(
    State(st): State<WebState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(account): Path<String>,
    Query(q): Query<AuthorizeQuery>,
    headers: HeaderMap,
) -> Response {
    let (public_url, app_id, scope, oauth_base) = match oauth_account(&st, &account) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    if !st.guests.allow_authorize(st.client_ip(peer, &headers)) {
        return page(
            StatusCode::TOO_MANY_REQUESTS,
            "请稍后再试",
            "这个网络发起的登录太多了，请过几分钟再试。",
            None,
        );
    }
    let logins = Logins::new(&st.engine);
    let next = local_path(q.next.as_deref());
    let ticket = q.ticket.as_deref().filter(|t| !t.is_empty());
    if let Some(t) = ticket {
        match logins.ticket_pending(t).await {
            Ok(true) => {}
            Ok(false) => return ticket_expired(),
            Err(e) => {
                warn!(error = %e, "reading a scan ticket failed");
                return unavailable();
            }
        }
    }
    let started = match logins
        .start(&account, cookie(&headers, COOKIE), ticket, &next)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "starting a web login failed");
            return unavailable();
        }
    };
    let redirect_uri = format!("{public_url}/auth/wechat/{account}/callback");
    let url = chatrelay_wechat::oauth_authorize_url(
        &oauth_base,
        &app_id,
        &redirect_uri,
        &scope,
        &started.state,
    );
    let mut res = StatusCode::FOUND.into_response();
    let h = res.headers_mut();
    match (
        HeaderValue::from_str(&url),
        browser_cookie(&started.browser, &public_url),
    ) {
        (Ok(location), Some(cookie)) => {
            h.insert(header::LOCATION, location);
            h.insert(header::SET_COOKIE, cookie);
        }
        _ => return unavailable(),
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

pub(super) fn ticket_expired() -> Response {
    page(
        StatusCode::GONE,
        "二维码已失效",
        "这个登录二维码已过期或已被使用，请在电脑上刷新二维码后重新扫码。",
        None,
    )
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
}

async fn callback(
    State(st): State<WebState>,
    Path(account): Path<String>,
    Query(q): Query<CallbackQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = oauth_account(&st, &account) {
        return *r;
    }
    let logins = Logins::new(&st.engine);
    let state = q.state.unwrap_or_default();
    let record = match logins
        .take_state(&account, &state, cookie(&headers, COOKIE))
        .await
    {
        Ok(r) => r,
        Err(OAuthError::BadState) => {
            metrics::counter!("chatrelay_wechat_login_total", "outcome" => "bad_state")
                .increment(1);
            return page(
                StatusCode::BAD_REQUEST,
                "登录链接已失效",
                "这个登录链接已使用、已过期，或不是在这个浏览器里打开的。请重新登录。",
                Some(&retry_link(&account, None, "/")),
            );
        }
        Err(e) => {
            warn!(error = %e, "reading a web login state failed");
            return unavailable();
        }
    };
    let retry = retry_link(&account, record.ticket.as_deref(), &record.next);
    let Some(code) = q.code.filter(|c| !c.is_empty()) else {
        // No code: the user declined the consent page.
        return page(
            StatusCode::OK,
            "未完成授权",
            "你没有同意授权，所以没有登录。",
            Some(&retry),
        );
    };
    let browser = cookie(&headers, COOKIE).unwrap_or_default();
    finish(&st, &logins, (&account, browser), &code, record, &retry).await
}

/// Exchanges the code and logs the user in: back to the page, or the desktop's ticket.
async fn finish(
    st: &WebState,
    logins: &Logins<'_>,
    (account, browser): (&str, &str),
    code: &str,
    record: StateRecord,
    retry: &str,
) -> Response {
    let parts = st.parts();
    let Some(acc) = parts.oauth.get(account) else {
        return unavailable();
    };
    let token = match acc.client.oauth_exchange(code).await {
        Ok(t) => t,
        Err(e) => {
            warn!(account, error = %e, "WeChat refused the web authorization code");
            metrics::counter!("chatrelay_wechat_login_total", "outcome" => "wechat_error")
                .increment(1);
            return page(
                StatusCode::BAD_GATEWAY,
                "微信登录失败",
                &format!("微信没有确认这次登录（{e}）。请重新登录。"),
                Some(retry),
            );
        }
    };
    if token.is_snapshot_user {
        return page(
            StatusCode::OK,
            "请在微信中打开",
            "这是朋友圈里的快照页，无法登录。请点击底部「使用完整服务」或在微信中打开本页。",
            None,
        );
    }
    let nickname = if acc.scope == "snsapi_userinfo" {
        match acc
            .client
            .oauth_user_info(&token.access_token, &token.openid)
            .await
        {
            Ok(info) => info.nickname,
            Err(e) => {
                warn!(account, error = %e, "reading the WeChat nickname failed");
                None
            }
        }
    } else {
        None
    };
    let uid = match logins
        .user_of(account, &token.openid, nickname.as_deref())
        .await
    {
        Ok(uid) => uid,
        Err(e) => {
            warn!(error = %e, "resolving a web login's user failed");
            return unavailable();
        }
    };
    metrics::counter!("chatrelay_wechat_login_total", "outcome" => "ok").increment(1);
    info!(%uid, account, scan = record.ticket.is_some(), "web authorization login");
    complete(logins, account, uid, &record, browser).await
}

/// After the login: the phone is asked to confirm the desktop's login, or the browser goes
/// back to its page with a one-time handoff for the token.
async fn complete(
    logins: &Logins<'_>,
    account: &str,
    uid: chatrelay_storage::Uid,
    record: &StateRecord,
    browser: &str,
) -> Response {
    let result = match &record.ticket {
        Some(ticket) => logins
            .offer_confirmation(ticket, uid, browser)
            .await
            .map(|c| c.map_or_else(ticket_expired, |c| confirm_page(account, &c))),
        None => logins.handoff_ticket(uid, browser).await.map(|handoff| {
            let mut res = StatusCode::FOUND.into_response();
            match HeaderValue::from_str(&format!("{}#login={handoff}", record.next)) {
                Ok(location) => {
                    res.headers_mut().insert(header::LOCATION, location);
                    res.headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    res
                }
                Err(_) => unavailable(),
            }
        }),
    };
    match result {
        Ok(res) => {
            logins.flush().await;
            res
        }
        Err(e) => {
            warn!(error = %e, "finishing a web login failed");
            unavailable()
        }
    }
}

/// The phone's question before a desktop is logged in: scanning alone must not do it.
fn confirm_page(account: &str, confirmation: &str) -> Response {
    let form = format!(
        r#"<form method="post" action="/auth/wechat/{}/confirm"><input type="hidden" name="c" value="{}"><button class="btn" type="submit">确认登录</button></form>"#,
        escape(account),
        escape(confirmation)
    );
    page_with(
        StatusCode::OK,
        "在电脑上登录？",
        "电脑上的页面将登录你的账号，使用你的额度。只有你本人正在电脑前扫码时才确认；别人发给你的链接或二维码，请不要确认。",
        &form,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; chatrelay_oauth_x=2".parse().unwrap());
        h.append(header::COOKIE, "chatrelay_oauth=abc; b=3".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("3"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn pages_escape_what_they_show() {
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(
            retry_link("main", Some("ab12"), "/?order=CR1&x=y z"),
            "/auth/wechat/main?next=/%3Forder%3DCR1%26x%3Dy%20z&ticket=ab12"
        );
    }
}
