//! The other endpoints: image generation, moderation and text to speech.

use super::*;

fn image_request() -> ImageRequest {
    let mut req = ImageRequest {
        model: "dall-e-3".into(),
        prompt: "a red panda reading a newspaper".into(),
        n: Some(1),
        size: Some("1024x1024".into()),
        response_format: Some("b64_json".into()),
        ..ImageRequest::default()
    };
    req.extra.insert("quality".into(), json!("hd"));
    req
}

fn images_ok() -> Response {
    json_reply(
        200,
        &[],
        json!({"created": 1_713_833_628, "data": [
            {"b64_json": "iVBORw0KGgo=", "revised_prompt": "A red panda ..."},
            {"url": "https://files.example/img.png"}
        ]}),
    )
}

#[tokio::test]
async fn images_generate_posts_and_decodes() {
    let (url, log) = serve(|_, _| Some(images_ok())).await;
    let resp = client(&url, &["sk-A"])
        .images_generate(&image_request())
        .await
        .unwrap();
    assert_eq!(resp.created, 1_713_833_628);
    assert_eq!(resp.data.len(), 2);
    assert_eq!(resp.data[0].b64_json.as_deref(), Some("iVBORw0KGgo="));
    assert_eq!(
        resp.data[0].revised_prompt.as_deref(),
        Some("A red panda ...")
    );
    assert_eq!(
        resp.data[1].url.as_deref(),
        Some("https://files.example/img.png")
    );
    assert_eq!(resp.data[1].b64_json, None);

    let seen = log.lock().unwrap()[0].clone();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/v1/images/generations")
    );
    assert_eq!(seen.auth().as_deref(), Some("Bearer sk-A"));
    assert_eq!(seen.headers[header::ACCEPT], "application/json");
    assert_eq!(
        seen.body,
        json!({"model": "dall-e-3", "prompt": "a red panda reading a newspaper", "n": 1,
               "size": "1024x1024", "response_format": "b64_json", "quality": "hd"})
    );
}

#[tokio::test]
async fn images_generate_api_error_and_retry() {
    let (url, log) = serve(|_, _| {
        Some(json_reply(
            400,
            &[("x-request-id", "req_img")],
            json!({"error": {"message": "Your request was rejected by the safety system.",
                             "type": "invalid_request_error", "code": "content_policy_violation"}}),
        ))
    })
    .await;
    let err = client(&url, &[])
        .images_generate(&image_request())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Api { status: 400, ref code, ref request_id, .. }
            if code.as_deref() == Some("content_policy_violation") && request_id.as_deref() == Some("req_img")),
        "{err:?}"
    );
    assert_eq!(log.lock().unwrap().len(), 1);

    let (url, log) = serve(|n, _| {
        Some(if n == 0 {
            api_error(500, "server_error", &[])
        } else {
            images_ok()
        })
    })
    .await;
    let resp = client(&url, &[])
        .images_generate(&image_request())
        .await
        .unwrap();
    assert_eq!(resp.data.len(), 2);
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn large_b64_image_within_the_limit() {
    let b64 = "A".repeat(6 * 1024 * 1024);
    let body = json!({"created": 1, "data": [{"b64_json": b64}]});
    let (url, _log) = serve(move |_, _| Some(json_reply(200, &[], body.clone()))).await;
    let resp = client(&url, &[])
        .images_generate(&image_request())
        .await
        .unwrap();
    assert_eq!(
        resp.data[0].b64_json.as_ref().unwrap().len(),
        6 * 1024 * 1024
    );
}

// === moderation ===

fn moderation_ok() -> Response {
    json_reply(
        200,
        &[],
        json!({"id": "modr-970d409ef3bef3b70c73d8232df86e7d", "model": "omni-moderation-latest",
               "results": [{"flagged": true,
                            "categories": {"sexual": false, "harassment": true, "violence": true,
                                           "violence/graphic": false},
                            "category_scores": {"sexual": 0.0001, "harassment": 0.81, "violence": 0.97,
                                                "violence/graphic": 0.02},
                            "category_applied_input_types": {"violence": ["text"]}}]}),
    )
}

#[tokio::test]
async fn moderate_posts_and_decodes() {
    let (url, log) = serve(|_, _| Some(moderation_ok())).await;
    let req = ModerationRequest {
        model: Some("omni-moderation-latest".into()),
        input: "I will hurt you".into(),
        ..ModerationRequest::default()
    };
    let resp = client(&url, &["sk-A"]).moderate(&req).await.unwrap();
    assert_eq!(resp.model, "omni-moderation-latest");
    assert!(resp.is_flagged());
    assert_eq!(resp.flagged_categories(), ["harassment", "violence"]);
    assert_eq!(resp.results[0].category_scores["violence"], 0.97);

    let seen = log.lock().unwrap()[0].clone();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/v1/moderations")
    );
    assert_eq!(
        seen.body,
        json!({"model": "omni-moderation-latest", "input": "I will hurt you"})
    );
}

#[tokio::test]
async fn moderate_api_error_and_retry() {
    let req = ModerationRequest {
        input: "hello".into(),
        ..ModerationRequest::default()
    };
    let (url, log) = serve(|_, _| Some(api_error(404, "model_not_found", &[]))).await;
    let err = client(&url, &[]).moderate(&req).await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(log.lock().unwrap().len(), 1);
    assert_eq!(log.lock().unwrap()[0].body, json!({"input": "hello"}));

    let (url, log) = serve(|n, _| {
        Some(if n == 0 {
            api_error(500, "server_error", &[])
        } else {
            json_reply(
                200,
                &[],
                json!({"id": "modr-2", "results": [{"flagged": false}]}),
            )
        })
    })
    .await;
    let resp = client(&url, &[]).moderate(&req).await.unwrap();
    assert!(!resp.is_flagged());
    assert!(resp.results[0].categories.is_empty());
    assert_eq!(log.lock().unwrap().len(), 2);
}

// === text to speech ===

/// An audio answer: `bytes` as `audio/ogg`.
fn audio_reply(bytes: &'static [u8]) -> Response {
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "audio/ogg")
        .body(Body::from(bytes))
        .unwrap()
}

#[tokio::test]
async fn speak_posts_the_text_and_returns_the_audio_bytes() {
    let (url, log) = serve(|_, _| Some(audio_reply(b"OggS\x00\x02opus-audio"))).await;
    let req = SpeechRequest::new("tts-1", "你好，世界", "alloy", "opus");
    let speech = client(&url, &["sk-A"]).speak(&req).await.unwrap();
    assert_eq!(&speech.audio[..], b"OggS\x00\x02opus-audio");
    assert_eq!(speech.content_type.as_deref(), Some("audio/ogg"));
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/v1/audio/speech");
    assert_eq!(seen[0].auth().as_deref(), Some("Bearer sk-A"));
    assert_eq!(
        seen[0].body,
        json!({"model": "tts-1", "input": "你好，世界", "voice": "alloy", "response_format": "opus"})
    );
}

#[tokio::test]
async fn speak_refuses_bad_requests_before_any_call() {
    let (url, log) = serve(|_, _| Some(audio_reply(b"never"))).await;
    let c = client(&url, &["sk-A"]);
    let empty = SpeechRequest::new("tts-1", "  ", "alloy", "mp3");
    assert_eq!(c.speak(&empty).await, Err(SpeechError::EmptyInput));
    let long = SpeechRequest::new("tts-1", "a".repeat(5000), "alloy", "mp3");
    assert!(matches!(
        c.speak(&long).await,
        Err(SpeechError::InputTooLong { chars: 5000, .. })
    ));
    let amr = SpeechRequest::new("tts-1", "hi", "alloy", "amr");
    assert!(matches!(c.speak(&amr).await, Err(SpeechError::Invalid(_))));
    assert!(log.lock().unwrap().is_empty(), "nothing may be sent");
}

#[tokio::test]
async fn speak_bounds_the_audio_it_reads() {
    // Announced length over the limit.
    let (url, _) = serve(|_, _| Some(audio_reply(&[7u8; 64]))).await;
    let mut req = SpeechRequest::new("tts-1", "hi", "alloy", "mp3");
    req.max_bytes = 63;
    let c = client(&url, &["sk-A"]);
    assert_eq!(c.speak(&req).await, Err(SpeechError::TooLarge { max: 63 }));
    req.max_bytes = 64;
    assert_eq!(c.speak(&req).await.unwrap().audio.len(), 64);
    // No announced length (chunked): cut while reading.
    let (url, _) = serve(|_, _| {
        let chunks =
            stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(&[1u8; 1000]))));
        Some(
            Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, "audio/mpeg")
                .body(Body::from_stream(chunks))
                .unwrap(),
        )
    })
    .await;
    req.max_bytes = 2500;
    assert_eq!(
        client(&url, &["sk-A"]).speak(&req).await,
        Err(SpeechError::TooLarge { max: 2500 })
    );
}

#[tokio::test]
async fn speak_errors_are_typed_not_audio() {
    let req = SpeechRequest::new("tts-1", "hi", "alloy", "mp3");
    // An error sent with 200 (some gateways do).
    let (url, _) = serve(|_, _| Some(api_error(200, "model_not_found", &[]))).await;
    let Err(SpeechError::Api(Error::Api { code, .. })) = client(&url, &["sk-A"]).speak(&req).await
    else {
        panic!("a JSON error must be an API error");
    };
    assert_eq!(code.as_deref(), Some("model_not_found"));
    // A plain 400.
    let (url, log) = serve(|_, _| Some(api_error(400, "invalid_value", &[]))).await;
    let err = client(&url, &["sk-A"]).speak(&req).await.unwrap_err();
    let SpeechError::Api(e) = err else {
        panic!("{err:?}")
    };
    assert_eq!(e.status(), Some(400));
    assert_eq!(log.lock().unwrap().len(), 1, "400 is not retried");
    // An empty body is not a voice message.
    let (url, _) = serve(|_, _| Some(audio_reply(b""))).await;
    assert!(matches!(
        client(&url, &["sk-A"]).speak(&req).await,
        Err(SpeechError::Api(Error::Decode { .. }))
    ));
}
