//! The auth layer: every admin resource answers `401` without the admin token or with a
//! wrong one, before its handler runs, and serves with the right one.

use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

use super::paths;
use crate::app::App;

const ADMIN: &str = "unit-admin-token-0123456789";
const MISSING: &str = "missing admin token (Authorization: Bearer <server.admin_token>)";

/// A route of each resource, a body, and what the right token gets.
fn routes() -> Vec<(Method, String, Value, StatusCode)> {
    let grant = json!({"credits": 1, "reason": "unit"});
    vec![
        (
            Method::GET,
            paths::USERS.into(),
            Value::Null,
            StatusCode::OK,
        ),
        (
            Method::POST,
            paths::fill(paths::GRANT, &["1"]),
            grant,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            paths::TOKEN_REVOKE.into(),
            json!({"token": "x"}),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            paths::ORDERS.into(),
            Value::Null,
            StatusCode::OK,
        ),
        (Method::GET, paths::ZSXQ.into(), Value::Null, StatusCode::OK),
        (
            Method::GET,
            paths::AUDIT.into(),
            Value::Null,
            StatusCode::OK,
        ),
    ]
}

/// Sends one request with `auth` as the whole Authorization header (or none).
async fn send(
    url: &str,
    route: &(Method, String, Value, StatusCode),
    auth: Option<&str>,
) -> (StatusCode, Value) {
    let (method, path, body, _) = route;
    let mut req = Client::new().request(method.clone(), format!("{url}{path}"));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if !body.is_null() {
        req = req.json(body);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_resource_is_behind_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN}\"\n[storage]\npath = \"{}\"\n",
        dir.path().display()
    );
    let (config, _) = crate::config::parse(&text, &[], None).unwrap();
    let app = App::build(config, None).await.unwrap();
    let url = format!("http://{}", app.local_addr().unwrap());
    let shutdown = app.shutdown_token();
    let task = tokio::spawn(app.serve());
    let wrong = format!("Bearer {ADMIN}x");
    let right = format!("Bearer {ADMIN}");
    for route in &routes() {
        let path = &route.1;
        for (auth, message) in [
            (None, MISSING),
            (Some("Basic dXNlcjpwdw=="), MISSING),
            (Some(wrong.as_str()), "wrong admin token"),
            (Some("Bearer unit-admin-token"), "wrong admin token"),
        ] {
            let (status, body) = send(&url, route, auth).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} with {auth:?}");
            assert_eq!(body, json!({"error": message}), "{path} with {auth:?}");
        }
        let (status, body) = send(&url, route, Some(&right)).await;
        assert_eq!(status, route.3, "{path} with the right token: {body}");
    }
    // Refused requests never reached a handler: no user was made.
    let create = (
        Method::POST,
        paths::USERS.into(),
        json!({"name": "x"}),
        StatusCode::CREATED,
    );
    assert_eq!(
        send(&url, &create, Some(&wrong)).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (_, page) = send(&url, &routes()[0], Some(&right)).await;
    assert_eq!(page["total"], 0, "{page}");
    assert_eq!(
        send(&url, &create, Some(&right)).await.0,
        StatusCode::CREATED
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
