//! Timeouts, refused connections, and extra headers on every request.

use super::*;

#[tokio::test]
async fn server_that_never_answers_times_out_and_is_retried() {
    let (url, log) = serve(|_, _| None).await;
    let c = Client::new(ClientConfig {
        timeout: Duration::from_millis(300),
        max_retries: 1,
        ..config(&url, &[])
    })
    .unwrap();
    let started = Instant::now();
    let err = c.chat(&request()).await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err, Error::Timeout { what: "response" });
    assert!(
        elapsed >= Duration::from_millis(550) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    assert_eq!(log.lock().unwrap().len(), 2);

    // Streaming: the timeout applies until the headers arrive.
    let c = Client::new(ClientConfig {
        timeout: Duration::from_millis(300),
        max_retries: 0,
        ..config(&url, &[])
    })
    .unwrap();
    let err = c.chat_stream(&request()).await.unwrap_err();
    assert_eq!(err, Error::Timeout { what: "response" });
}

#[tokio::test]
async fn slow_stream_within_idle_timeout_is_not_cut_by_the_request_timeout() {
    let (raw, _) = recorded();
    let pieces = split(raw.as_bytes(), &[2000]);
    assert!(pieces.len() >= 5);
    // Total time (>= 5 x 100 ms) exceeds `timeout` (250 ms); gaps stay under idle.
    let (url, _log) =
        serve(move |_, _| Some(sse(pieces.clone(), Duration::from_millis(100), End::Close))).await;
    let c = Client::new(ClientConfig {
        timeout: Duration::from_millis(250),
        idle_timeout: Duration::from_secs(2),
        ..config(&url, &[])
    })
    .unwrap();
    let items = drain(c.chat_stream(&request()).await.unwrap()).await;
    assert_eq!(items.len(), 33);
    assert!(items.iter().all(Result::is_ok));
}

#[tokio::test]
async fn connection_refused_is_network_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let c = Client::new(ClientConfig {
        max_retries: 0,
        ..config(&format!("http://{addr}/v1"), &[])
    })
    .unwrap();
    let err = c.chat(&request()).await.unwrap_err();
    assert!(matches!(err, Error::Network(_)), "{err:?}");
    assert!(err.is_retryable());
}

// === extra headers ===

#[tokio::test]
async fn extra_headers_are_sent_on_every_request() {
    let (url, log) = serve(|n, _| {
        Some(if n == 0 {
            ok_completion()
        } else {
            json_reply(200, &[], json!({"data": []}))
        })
    })
    .await;
    let c = Client::new(ClientConfig {
        headers: vec![
            ("X-DashScope-SSE".into(), "enable".into()),
            ("OpenAI-Organization".into(), " org-42 ".into()),
        ],
        ..config(&url, &["sk-A"])
    })
    .unwrap();
    c.chat(&request()).await.unwrap();
    c.models().await.unwrap();
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for req in &seen {
        assert_eq!(req.headers["x-dashscope-sse"], "enable");
        assert_eq!(req.headers["openai-organization"], "org-42");
        assert_eq!(req.auth().as_deref(), Some("Bearer sk-A"));
        assert_eq!(req.headers.get_all(header::ACCEPT).iter().count(), 1);
    }
}
