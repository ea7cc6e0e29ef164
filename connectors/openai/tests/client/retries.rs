//! Errors and retries: 5xx, `retry-after`, `x-should-retry`, quota, rejected and
//! rate-limited keys set aside, redacted echoes, proxy pages, bodies that do not decode.

use super::*;

#[tokio::test]
async fn retries_500_500_then_succeeds() {
    let (url, log) = serve(|n, _| {
        Some(if n < 2 {
            api_error(500, "server_error", &[])
        } else {
            ok_completion()
        })
    })
    .await;
    let resp = client(&url, &["sk-A"]).chat(&request()).await.unwrap();
    assert_eq!(resp.text(), "Sunny.");
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn streaming_request_is_retried_before_the_stream_starts() {
    let (raw, _) = recorded();
    let (url, log) = serve(move |n, _| {
        Some(if n == 0 {
            api_error(503, "overloaded", &[])
        } else {
            sse(vec![raw.clone().into_bytes()], Duration::ZERO, End::Close)
        })
    })
    .await;
    let items = drain(client(&url, &[]).chat_stream(&request()).await.unwrap()).await;
    assert_eq!(items.len(), 33);
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn gives_up_after_max_retries() {
    let (url, log) = serve(|_, _| {
        Some(api_error(
            500,
            "server_error",
            &[("x-request-id", "req_500")],
        ))
    })
    .await;
    let err = client(&url, &[]).chat(&request()).await.unwrap_err();
    assert_eq!(err.status(), Some(500));
    assert!(
        matches!(err, Error::Api { ref request_id, .. } if request_id.as_deref() == Some("req_500"))
    );
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn retry_after_ms_is_honoured() {
    let (url, log) = serve(|n, _| {
        Some(if n == 0 {
            api_error(
                429,
                "rate_limit_exceeded",
                &[("retry-after-ms", "400"), ("retry-after", "1")],
            )
        } else {
            ok_completion()
        })
    })
    .await;
    client(&url, &[]).chat(&request()).await.unwrap();
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    // retry-after-ms (400 ms) wins over retry-after (1 s) and over the 5 ms backoff.
    assert!(
        gap >= Duration::from_millis(380) && gap < Duration::from_millis(950),
        "{gap:?}"
    );
}

#[tokio::test]
async fn retry_after_longer_than_allowed_gives_up() {
    let (url, log) = serve(|_, _| {
        Some(api_error(
            429,
            "rate_limit_exceeded",
            &[("retry-after", "3600")],
        ))
    })
    .await;
    let started = Instant::now();
    let err = client(&url, &[]).chat(&request()).await.unwrap_err();
    assert_eq!(err.status(), Some(429));
    assert_eq!(log.lock().unwrap().len(), 1);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn insufficient_quota_is_not_retried() {
    let (url, log) = serve(|_, _| Some(api_error(429, "insufficient_quota", &[]))).await;
    let err = client(&url, &["sk-A"]).chat(&request()).await.unwrap_err();
    assert!(err.is_insufficient_quota());
    assert_eq!(err.status(), Some(429));
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn x_should_retry_header_overrides_status() {
    let (url, log) = serve(|_, _| {
        Some(api_error(
            500,
            "server_error",
            &[("x-should-retry", "false")],
        ))
    })
    .await;
    let err = client(&url, &[]).chat(&request()).await.unwrap_err();
    assert_eq!(err.status(), Some(500));
    assert_eq!(log.lock().unwrap().len(), 1);

    let (url, log) = serve(|n, _| {
        Some(if n == 0 {
            api_error(400, "flaky", &[("x-should-retry", "true")])
        } else {
            ok_completion()
        })
    })
    .await;
    client(&url, &[]).chat(&request()).await.unwrap();
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn rejected_key_is_skipped_and_set_aside() {
    let (url, log) = serve(|_, seen| {
        Some(match seen.auth().as_deref() {
            Some("Bearer sk-A") => api_error(401, "invalid_api_key", &[]),
            _ => ok_completion(),
        })
    })
    .await;
    let c = client(&url, &["sk-A", "sk-B"]);
    c.chat(&request()).await.unwrap();
    c.chat(&request()).await.unwrap();
    // A clone shares the key state.
    c.clone().chat(&request()).await.unwrap();
    let auths: Vec<Option<String>> = log.lock().unwrap().iter().map(Seen::auth).collect();
    assert_eq!(
        auths,
        [
            Some("Bearer sk-A"),
            Some("Bearer sk-B"),
            Some("Bearer sk-B"),
            Some("Bearer sk-B")
        ]
        .map(|a| a.map(str::to_owned))
    );
}

#[tokio::test]
async fn echoed_key_is_redacted_from_the_error() {
    let (url, _log) = serve(|_, _| {
        Some(json_reply(
            401,
            &[],
            json!({"error": {"message": "Incorrect API key provided: sk-echoed-secret", "code": "invalid_api_key"}}),
        ))
    })
    .await;
    let err = client(&url, &["sk-echoed-secret"])
        .chat(&request())
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("sk-echoed-secret"), "{text}");
    assert!(text.contains("key#"), "{text}");
}

#[test]
fn client_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let c = client("http://127.0.0.1:9/v1", &[]);
    let req = request();
    assert_send(&c.chat(&req));
    assert_send(&c.chat_stream(&req));
    assert_send(&c.models());
    assert_send(&c.images_generate(&ImageRequest::default()));
    assert_send(&c.moderate(&ModerationRequest::default()));
    fn assert_sync<T: Send + Sync + Clone>() {}
    assert_sync::<Client>();
}

#[tokio::test]
async fn keys_are_used_round_robin_and_401_with_one_key_fails() {
    let (url, log) = serve(|_, _| Some(ok_completion())).await;
    let c = client(&url, &["sk-A", "sk-B"]);
    for _ in 0..4 {
        c.chat(&request()).await.unwrap();
    }
    let auths: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.auth().unwrap())
        .collect();
    assert_eq!(
        auths,
        ["Bearer sk-A", "Bearer sk-B", "Bearer sk-A", "Bearer sk-B"]
    );

    let (url, log) = serve(|_, _| Some(api_error(401, "invalid_api_key", &[]))).await;
    let err = client(&url, &["sk-only"])
        .chat(&request())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn rate_limited_key_is_set_aside_for_the_retry() {
    let (url, log) = serve(|n, _| {
        Some(if n == 0 {
            api_error(429, "rate_limit_exceeded", &[])
        } else {
            ok_completion()
        })
    })
    .await;
    let c = client(&url, &["sk-A", "sk-B", "sk-C"]);
    c.chat(&request()).await.unwrap();
    c.chat(&request()).await.unwrap();
    c.chat(&request()).await.unwrap();
    let auths: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.auth().unwrap())
        .collect();
    // A throttled; retry on B; then C, then B again (A is cooling down).
    assert_eq!(
        auths,
        ["Bearer sk-A", "Bearer sk-B", "Bearer sk-C", "Bearer sk-B"]
    );
}

#[tokio::test]
async fn proxy_html_502_is_an_api_error() {
    let (url, log) = serve(|_, _| {
        Some(
            (
                StatusCode::BAD_GATEWAY,
                [(header::CONTENT_TYPE, "text/html")],
                "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.18.0</center>\r\n</body>\r\n</html>\r\n",
            )
                .into_response(),
        )
    })
    .await;
    let c = Client::new(ClientConfig {
        max_retries: 0,
        ..config(&url, &[])
    })
    .unwrap();
    let err = c.chat_stream(&request()).await.unwrap_err();
    assert_eq!(err.status(), Some(502));
    assert!(err.is_retryable());
    assert!(err.to_string().contains("502 Bad Gateway"), "{err}");
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn non_json_success_body_is_decode_error() {
    let (url, _log) =
        serve(|_, _| Some((StatusCode::OK, "<html>login page</html>").into_response())).await;
    let err = client(&url, &[]).chat(&request()).await.unwrap_err();
    assert!(
        matches!(err, Error::Decode { ref raw, .. } if raw.contains("login page")),
        "{err:?}"
    );
}
