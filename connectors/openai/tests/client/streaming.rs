//! Chat requests: the recorded event stream in pieces, multibyte splits, stalls, cuts,
//! errors inside a stream, and non-streaming answers and model listings.

use super::*;

#[tokio::test]
async fn streams_the_recorded_body_in_pieces() {
    let (raw, expected) = recorded();
    let pieces = split(raw.as_bytes(), &[7, 300, 1, 64, 1000, 2, 150]);
    assert!(pieces.len() > 20);
    let (url, log) =
        serve(move |_, _| Some(sse(pieces.clone(), Duration::from_millis(1), End::Close))).await;
    let c = client(&url, &["sk-test-A"]);

    let stream = c.chat_stream(&request()).await.unwrap();
    assert_eq!(stream.request_id(), Some("req_stream_1"));
    let chunks: Vec<ChatChunk> = drain(stream)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    assert_eq!(
        chunks.len() as u64,
        expected["data_events"].as_u64().unwrap()
    );
    let content: String = chunks.iter().filter_map(ChatChunk::content).collect();
    assert_eq!(content, expected["content"]);
    let last = chunks.last().unwrap();
    assert!(last.choices.is_empty());
    assert_eq!(
        serde_json::to_value(last.usage.as_ref().unwrap()).unwrap(),
        expected["usage"]
    );
    assert_eq!(chunks[31].choices[0].finish_reason.as_deref(), Some("stop"));

    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(req.auth().as_deref(), Some("Bearer sk-test-A"));
    assert_eq!(req.body["stream"], true);
    assert_eq!(req.body["stream_options"]["include_usage"], true);
    assert_eq!(req.body["model"], "gpt-4o");
    assert_eq!(req.body["messages"][0]["role"], "user");
    assert_eq!(req.headers[header::ACCEPT], "text/event-stream");
    assert_eq!(req.headers[header::CONTENT_TYPE], "application/json");
    assert!(
        req.headers[header::USER_AGENT]
            .to_str()
            .unwrap()
            .starts_with("chatrelay/")
    );
}

#[tokio::test]
async fn multibyte_utf8_split_across_pieces_and_extra_fields() {
    let words = ["你好", "，世界", "🙂", "！"];
    let mut body = String::new();
    body.push_str(": OPENROUTER PROCESSING\n\n");
    body.push_str(
        r#"data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"deepseek-reasoner","choices":[{"index":0,"delta":{"role":"assistant","content":null,"reasoning_content":"思考中"},"finish_reason":null}]}"#,
    );
    body.push_str("\r\n\r\n");
    for w in words {
        body.push_str(&format!(
            "data: {}\n\n",
            json!({"id":"x","object":"chat.completion.chunk","created":1,"model":"deepseek-reasoner",
                   "choices":[{"index":0,"delta":{"content":w},"finish_reason":null}]})
        ));
    }
    body.push_str("data: [DONE]\n\n");
    // Pieces of 1, 2 and 4 bytes put cuts inside every multi-byte character.
    let pieces = split(body.as_bytes(), &[1, 2, 4, 1]);
    let (url, _log) =
        serve(move |_, _| Some(sse(pieces.clone(), Duration::from_micros(200), End::Close))).await;
    let c = client(&url, &[]);
    let chunks: Vec<ChatChunk> = drain(c.chat_stream(&request()).await.unwrap())
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(chunks.len(), 5);
    assert_eq!(
        chunks[0].choices[0].delta.extra["reasoning_content"],
        "思考中"
    );
    let content: String = chunks.iter().filter_map(ChatChunk::content).collect();
    assert_eq!(content, words.concat());
}

#[tokio::test]
async fn stalled_stream_is_idle_timeout() {
    let (raw, _) = recorded();
    let first_two: Vec<u8> = raw
        .split_inclusive("\n\n")
        .take(2)
        .collect::<String>()
        .into_bytes();
    let (url, _log) =
        serve(move |_, _| Some(sse(vec![first_two.clone()], Duration::ZERO, End::Hang))).await;
    let c = Client::new(ClientConfig {
        idle_timeout: Duration::from_millis(300),
        ..config(&url, &[])
    })
    .unwrap();
    let started = Instant::now();
    let items = drain(c.chat_stream(&request()).await.unwrap()).await;
    let elapsed = started.elapsed();
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(items[0].is_ok() && items[1].is_ok());
    assert_eq!(items[2], Err(Error::Timeout { what: "idle" }));
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn stream_closed_without_done_is_incomplete() {
    let (raw, _) = recorded();
    let without_done = raw.replace("data: [DONE]\n\n", "");
    let pieces = split(without_done.as_bytes(), &[500]);
    let (url, _log) =
        serve(move |_, _| Some(sse(pieces.clone(), Duration::ZERO, End::Close))).await;
    let items = drain(client(&url, &[]).chat_stream(&request()).await.unwrap()).await;
    assert_eq!(items.len(), 34);
    assert!(items[..33].iter().all(Result::is_ok));
    assert_eq!(items[33], Err(Error::Incomplete));
}

#[tokio::test]
async fn stream_cut_mid_way_is_incomplete() {
    let (raw, _) = recorded();
    let half = raw.as_bytes()[..raw.len() / 2].to_vec();
    let (url, _log) =
        serve(move |_, _| Some(sse(vec![half.clone()], Duration::ZERO, End::Abort))).await;
    let items = drain(client(&url, &[]).chat_stream(&request()).await.unwrap()).await;
    let (last, ok) = items.split_last().unwrap();
    assert!(ok.len() > 5 && ok.iter().all(Result::is_ok), "{items:?}");
    assert_eq!(last, &Err(Error::Incomplete));
}

#[tokio::test]
async fn error_object_inside_stream() {
    let (raw, _) = recorded();
    let mut body: String = raw.split_inclusive("\n\n").take(3).collect();
    body.push_str(
        "data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n",
    );
    body.push_str("data: [DONE]\n\n");
    let (url, _log) = serve(move |_, _| {
        Some(sse(
            vec![body.clone().into_bytes()],
            Duration::ZERO,
            End::Close,
        ))
    })
    .await;
    let items = drain(client(&url, &[]).chat_stream(&request()).await.unwrap()).await;
    assert_eq!(items.len(), 4);
    match &items[3] {
        Err(
            e @ Error::Api {
                status: 0,
                kind,
                message,
                request_id,
                ..
            },
        ) => {
            assert_eq!(kind.as_deref(), Some("server_error"));
            assert!(message.contains("server had an error"));
            assert_eq!(request_id.as_deref(), Some("req_stream_1"));
            assert!(!e.is_retryable());
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn json_error_with_200_on_stream_request() {
    let (url, _log) = serve(|_, _| Some(api_error(200, "model_not_found", &[]))).await;
    let err = client(&url, &[]).chat_stream(&request()).await.unwrap_err();
    assert!(
        matches!(err, Error::Api { status: 200, ref code, .. } if code.as_deref() == Some("model_not_found")),
        "{err:?}"
    );
}

// === non-streaming ===

#[tokio::test]
async fn non_streaming_chat() {
    let (url, log) = serve(|_, _| Some(ok_completion())).await;
    let mut req = request();
    req.temperature = Some(0.2);
    req.extra.insert("stream".into(), json!(true)); // must not leak through
    req.extra.insert("top_p".into(), json!(0.5));
    let resp = client(&url, &["sk-test-A"]).chat(&req).await.unwrap();
    assert_eq!(resp.text(), "Sunny.");
    assert_eq!(resp.choices[0].finish_reason.as_deref(), Some("stop"));
    assert_eq!(resp.usage.as_ref().unwrap().total_tokens, 16);
    assert_eq!(resp.extra["system_fingerprint"], "fp_x");

    let seen = log.lock().unwrap()[0].clone();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.auth().as_deref(), Some("Bearer sk-test-A"));
    assert_eq!(seen.body["stream"], false);
    assert!(seen.body.get("stream_options").is_none());
    assert_eq!(seen.body["temperature"], 0.2);
    assert_eq!(seen.body["top_p"], 0.5);
}

#[tokio::test]
async fn models_are_listed_without_auth_when_no_keys() {
    let (url, log) = serve(|_, _| {
        Some(json_reply(
            200,
            &[],
            json!({"object": "list", "data": [
                {"id": "gpt-4o", "object": "model", "created": 1, "owned_by": "system"},
                {"id": "qwen2.5:7b", "object": "model", "owned_by": "library"}
            ]}),
        ))
    })
    .await;
    // A trailing slash on the base URL is tolerated.
    let models = client(&format!("{url}/"), &[]).models().await.unwrap();
    let ids: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["gpt-4o", "qwen2.5:7b"]);
    assert_eq!(models[1].owned_by, "library");
    let seen = log.lock().unwrap()[0].clone();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("GET", "/v1/models")
    );
    assert_eq!(seen.auth(), None);
}
