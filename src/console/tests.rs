use std::net::IpAddr;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, header};

use super::sessions::{COOKIE, Refusal, Sessions, session_cookie};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn a_session_works_until_it_expires() {
    let s = Sessions::default();
    let (id, _) = s.create("admin-1", 12 * HOUR);
    assert_eq!(s.admit(&id, "admin-1", &Method::GET, None), Ok(()));
    tokio::time::advance(12 * HOUR - Duration::from_secs(1)).await;
    assert_eq!(s.admit(&id, "admin-1", &Method::GET, None), Ok(()));
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(
        s.admit(&id, "admin-1", &Method::GET, None),
        Err(Refusal::NoSession)
    );
}

#[tokio::test]
async fn a_new_admin_token_ends_older_sessions() {
    let s = Sessions::default();
    let (old, _) = s.create("admin-1", HOUR);
    assert_eq!(
        s.admit(&old, "admin-2", &Method::GET, None),
        Err(Refusal::NoSession)
    );
    let (new, _) = s.create("admin-2", HOUR);
    assert_eq!(s.admit(&new, "admin-2", &Method::GET, None), Ok(()));
    assert_eq!(
        s.admit(&new, "admin-1", &Method::GET, None),
        Err(Refusal::NoSession)
    );
}

#[tokio::test]
async fn unknown_and_logged_out_sessions_are_refused() {
    let s = Sessions::default();
    assert_eq!(
        s.admit("nope", "admin", &Method::GET, None),
        Err(Refusal::NoSession)
    );
    let (id, csrf) = s.create("admin", HOUR);
    s.end(&id);
    assert_eq!(
        s.admit(&id, "admin", &Method::POST, Some(&csrf)),
        Err(Refusal::NoSession)
    );
}

#[tokio::test]
async fn changes_need_the_csrf_token() {
    let s = Sessions::default();
    let (id, csrf) = s.create("admin", HOUR);
    let (_, other) = s.create("admin", HOUR);
    assert_ne!(csrf, other);
    for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        assert_eq!(s.admit(&id, "admin", &m, None), Err(Refusal::Csrf));
        assert_eq!(s.admit(&id, "admin", &m, Some("")), Err(Refusal::Csrf));
        assert_eq!(s.admit(&id, "admin", &m, Some(&other)), Err(Refusal::Csrf));
        assert_eq!(s.admit(&id, "admin", &m, Some(&csrf)), Ok(()));
    }
    assert_eq!(s.admit(&id, "admin", &Method::HEAD, None), Ok(()));
}

#[tokio::test]
async fn sessions_are_bounded_oldest_first() {
    let s = Sessions::new(3);
    let ids: Vec<String> = (0..5).map(|_| s.create("admin", HOUR).0).collect();
    assert!(s.len() <= 3);
    assert_eq!(
        s.admit(&ids[0], "admin", &Method::GET, None),
        Err(Refusal::NoSession)
    );
    assert_eq!(s.admit(&ids[4], "admin", &Method::GET, None), Ok(()));
}

#[tokio::test]
async fn failed_logins_are_limited_per_address() {
    let s = Sessions::default();
    let a: IpAddr = "192.0.2.1".parse().unwrap();
    let b: IpAddr = "192.0.2.2".parse().unwrap();
    for _ in 0..10 {
        assert!(s.may_try(a));
        s.failed(a);
    }
    assert!(!s.may_try(a));
    assert!(s.may_try(b));
}

#[test]
fn the_cookie_is_found_among_others() {
    let mut h = HeaderMap::new();
    assert_eq!(session_cookie(&h), None);
    h.insert(
        header::COOKIE,
        HeaderValue::from_str(&format!("a=1; {COOKIE}=abc; b=2")).unwrap(),
    );
    assert_eq!(session_cookie(&h), Some("abc"));
    h.insert(
        header::COOKIE,
        HeaderValue::from_str(&format!("x{COOKIE}=abc; {COOKIE}=")).unwrap(),
    );
    assert_eq!(session_cookie(&h), None);
}

#[test]
fn the_cookie_is_http_only_strict_and_secure_on_https() {
    let c = super::cookie("abc", 3600, true);
    assert!(c.starts_with(&format!("{COOKIE}=abc;")));
    for part in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=3600",
        "Secure",
    ] {
        assert!(c.contains(part), "{c}");
    }
    assert!(!super::cookie("abc", 3600, false).contains("Secure"));
}

#[test]
fn secure_only_behind_an_https_public_url() {
    assert!(super::secure_for(Some("https://chat.example.com")));
    assert!(super::secure_for(Some("HTTPS://chat.example.com/")));
    assert!(!super::secure_for(Some("http://chat.example.com")));
    assert!(!super::secure_for(Some("https")));
    assert!(!super::secure_for(None));
}
