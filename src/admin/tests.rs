//! The auth layer: every admin resource answers `401` without the admin token or with a
//! wrong one, before its handler runs, and serves with the right one (or a console session).

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
        // The configuration (redacted, yet no one's business but the admins').
        (
            Method::GET,
            paths::CONFIG.into(),
            Value::Null,
            StatusCode::OK,
        ),
        (
            Method::GET,
            paths::AUDIT.into(),
            Value::Null,
            StatusCode::OK,
        ),
    ]
}

/// A daemon with the admin token [`ADMIN`] on a fresh data directory, serving on a free port.
struct Daemon {
    url: String,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    async fn start() -> Self {
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
        Self {
            url,
            shutdown,
            task,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
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
    let daemon = Daemon::start().await;
    let url = daemon.url.clone();
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
        assert!(!body.to_string().contains(ADMIN), "{path} shows the token");
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
    daemon.stop().await;
}

/// The console's session cookie opens the admin API too: reads with the cookie alone,
/// changes only with its CSRF token; a wrong bearer token is not rescued by a cookie.
#[tokio::test]
async fn the_console_session_opens_the_admin_api_with_csrf_on_changes() {
    let daemon = Daemon::start().await;
    let url = daemon.url.clone();
    let client = Client::new();

    let login = client
        .post(format!("{url}/console/api/login"))
        .json(&json!({"token": ADMIN}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    let set = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    assert!(cookie.starts_with("chatrelay_console="), "{set}");
    assert!(set.contains("Max-Age=43200"), "12 h by default: {set}");
    let csrf = login.json::<Value>().await.unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_owned();

    let users = format!("{url}{}", paths::USERS);
    let with = |m: Method, u: &str| client.request(m, u).header("cookie", &cookie);
    let status = |r: reqwest::Response| r.status();
    assert_eq!(
        status(with(Method::GET, &users).send().await.unwrap()),
        StatusCode::OK
    );
    let create = json!({"name": "x"});
    let no_csrf = with(Method::POST, &users)
        .json(&create)
        .send()
        .await
        .unwrap();
    assert_eq!(no_csrf.status(), StatusCode::FORBIDDEN);
    let wrong_csrf = with(Method::POST, &users)
        .header("x-csrf-token", "nope")
        .json(&create)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_csrf.status(), StatusCode::FORBIDDEN);
    // Refused changes never reached the handler.
    let page: Value = with(Method::GET, &users)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 0, "{page}");
    let ok = with(Method::POST, &users)
        .header("x-csrf-token", &csrf)
        .json(&create)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);

    // A wrong bearer token with a good cookie: the bearer decides.
    let both = with(Method::GET, &users)
        .header("authorization", format!("Bearer {ADMIN}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), StatusCode::UNAUTHORIZED);
    // A made-up session.
    let fake = client
        .get(&users)
        .header(
            "cookie",
            "chatrelay_console=0123456789abcdef0123456789abcdef",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(fake.status(), StatusCode::UNAUTHORIZED);

    // Logout ends it.
    let out = with(Method::POST, &format!("{url}/console/api/logout"))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::OK);
    assert_eq!(
        status(with(Method::GET, &users).send().await.unwrap()),
        StatusCode::UNAUTHORIZED
    );
    daemon.stop().await;
}

/// Every change through the admin API is in the change log (token and console, with the
/// address, status and reason); reads and refused requests are not; secrets never are.
#[tokio::test]
async fn changes_are_recorded_with_who_where_and_why_and_no_secret() {
    let daemon = Daemon::start().await;
    let url = daemon.url.clone();
    let right = format!("Bearer {ADMIN}");
    let post = |path: String, body: Value| (Method::POST, path, body, StatusCode::OK);

    let (status, user) = send(
        &url,
        &post(paths::USERS.into(), json!({"name": "alice"})),
        Some(&right),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let uid = user["uid"].to_string();
    let grant = post(
        paths::fill(paths::GRANT, &[&uid]),
        json!({"credits": 7, "reason": "ticket 42"}),
    );
    assert_eq!(send(&url, &grant, Some(&right)).await.0, StatusCode::OK);
    // Without a reason: refused by the handler, and recorded as refused.
    let no_reason = post(
        paths::fill(paths::GRANT, &[&uid]),
        json!({"credits": 7, "reason": ""}),
    );
    assert_eq!(
        send(&url, &no_reason, Some(&right)).await.0,
        StatusCode::BAD_REQUEST
    );
    // A wrong token: not recorded.
    assert_eq!(
        send(&url, &grant, Some("Bearer nope")).await.0,
        StatusCode::UNAUTHORIZED
    );
    // A user token sent to be revoked: its value is never kept.
    let (_, made) = send(
        &url,
        &post(paths::fill(paths::USER_TOKENS, &[&uid]), Value::Null),
        Some(&right),
    )
    .await;
    let token = made["token"].as_str().unwrap().to_owned();
    let revoke = post(paths::TOKEN_REVOKE.into(), json!({"token": token}));
    assert_eq!(send(&url, &revoke, Some(&right)).await.0, StatusCode::OK);

    // Through the console: actor "console".
    let client = Client::new();
    let login = client
        .post(format!("{url}/console/api/login"))
        .json(&json!({"token": ADMIN}))
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let csrf = login.json::<Value>().await.unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    let ban = client
        .post(format!("{url}{}", paths::fill(paths::BAN, &[&uid])))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .json(&json!({"banned": true, "reason": "spam"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ban.status(), StatusCode::OK);

    let list = (
        Method::GET,
        format!("{}?limit=50", paths::CHANGES),
        Value::Null,
        StatusCode::OK,
    );
    let (status, page) = send(&url, &list, Some(&right)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let changes = page["changes"].as_array().unwrap();
    let seen: Vec<(String, String, u64, String)> = changes
        .iter()
        .map(|c| {
            (
                c["actor"].as_str().unwrap().to_owned(),
                c["path"].as_str().unwrap().to_owned(),
                c["status"].as_u64().unwrap(),
                c["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let grant_path = paths::fill(paths::GRANT, &[&uid]);
    let expected = vec![
        (
            "console".into(),
            paths::fill(paths::BAN, &[&uid]),
            200,
            "spam".into(),
        ),
        (
            "token".into(),
            paths::TOKEN_REVOKE.to_owned(),
            200,
            String::new(),
        ),
        (
            "token".into(),
            paths::fill(paths::USER_TOKENS, &[&uid]),
            200,
            String::new(),
        ),
        ("token".into(), grant_path.clone(), 400, String::new()),
        ("token".into(), grant_path, 200, "ticket 42".into()),
        ("token".into(), paths::USERS.to_owned(), 201, String::new()),
    ];
    assert_eq!(seen, expected, "{page}");
    assert!(
        changes.iter().all(|c| c["address"] == "127.0.0.1"),
        "{page}"
    );
    assert_eq!(changes[4]["summary"]["credits"], 7);
    assert_eq!(changes[1]["summary"], json!({"redacted": ["token"]}));
    // A refusal keeps its error, and the client still got it.
    assert_eq!(changes[3]["summary"]["error"], "a reason is required");
    assert!(!page.to_string().contains(&token), "a token leaked: {page}");
    assert_eq!(page["next"], Value::Null);
    // Paging: two at a time, then the rest from the cursor.
    let first = (
        Method::GET,
        format!("{}?limit=2", paths::CHANGES),
        Value::Null,
        StatusCode::OK,
    );
    let (_, p1) = send(&url, &first, Some(&right)).await;
    let next = p1["next"].as_str().unwrap().to_owned();
    let rest = (
        Method::GET,
        format!("{}?before={next}&limit=10", paths::CHANGES),
        Value::Null,
        StatusCode::OK,
    );
    let (_, p2) = send(&url, &rest, Some(&right)).await;
    assert_eq!(p2["changes"].as_array().unwrap().len(), 4);
    assert_eq!(p2["changes"][0]["path"], changes[2]["path"]);
    let bad = (
        Method::GET,
        format!("{}?before=x", paths::CHANGES),
        Value::Null,
        StatusCode::OK,
    );
    assert_eq!(
        send(&url, &bad, Some(&right)).await.0,
        StatusCode::BAD_REQUEST
    );

    // Behind a trusted proxy (this machine, by default): the forwarded client's address.
    let proxied = client
        .post(format!("{url}{}", paths::fill(paths::GROUPS, &[&uid])))
        .header("authorization", &right)
        .header("x-forwarded-for", "203.0.113.7")
        .json(&json!({"add": ["vip"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), StatusCode::OK);
    // A body over the limit: refused, and recorded as refused.
    let big = client
        .post(format!("{url}{}", paths::fill(paths::GRANT, &[&uid])))
        .header("authorization", &right)
        .header("content-type", "application/json")
        .body(vec![b' '; 3 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (_, page) = send(&url, &first, Some(&right)).await;
    assert_eq!(page["changes"][0]["status"], 413, "{page}");
    assert_eq!(page["changes"][1]["address"], "203.0.113.7", "{page}");
    assert_eq!(
        page["changes"][1]["summary"],
        json!({"add": ["vip"]}),
        "{page}"
    );
    daemon.stop().await;
}

/// The day's figures count an admin grant once however often its reference is replayed, and
/// the users made that day.
#[tokio::test]
async fn stats_count_grants_once_and_new_users() {
    let daemon = Daemon::start().await;
    let url = daemon.url.clone();
    let right = format!("Bearer {ADMIN}");
    let call = |method: Method, path: String, body: Value| (method, path, body, StatusCode::OK);
    let mut uids = Vec::new();
    for name in ["a", "b"] {
        let create = call(Method::POST, paths::USERS.into(), json!({"name": name}));
        let (status, user) = send(&url, &create, Some(&right)).await;
        assert_eq!(status, StatusCode::CREATED, "{user}");
        uids.push(user["uid"].to_string());
    }
    let grant = |credits: u64, reference: Option<&str>| {
        let mut body = json!({"credits": credits, "reason": "unit"});
        if let Some(r) = reference {
            body["reference"] = json!(r);
        }
        call(Method::POST, paths::fill(paths::GRANT, &[&uids[0]]), body)
    };
    for route in [grant(5, Some("r1")), grant(5, Some("r1")), grant(3, None)] {
        let (status, body) = send(&url, &route, Some(&right)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let stats = call(Method::GET, format!("{}?days=1", paths::STATS), Value::Null);
    let (status, days) = send(&url, &stats, Some(&right)).await;
    assert_eq!(status, StatusCode::OK, "{days}");
    assert_eq!(days[0]["grant_credits"], 8, "{days}");
    assert_eq!(days[0]["credits_granted"], 8, "{days}");
    assert_eq!(days[0]["new_users"], 2, "{days}");
    daemon.stop().await;
}
