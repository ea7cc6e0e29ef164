//! Pictures to vision models (fetched safely, priced) and the `/image` command.

use super::*;

/// Serves `body` at every path on 127.0.0.1; returns the base URL.
async fn picture_server(body: Vec<u8>) -> String {
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move { body }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n-rest-of-a-picture";

fn eyes(c: &mut Config) {
    c.llm.models[0].vision = true;
    c.llm.models[0].credits_per_image = 1;
    // The picture servers of these tests are on loopback, which only a trusted host reaches.
    c.bot.picture_trusted_hosts = vec!["127.0.0.1".into()];
}

#[tokio::test]
async fn pictures_on_internal_addresses_are_not_fetched() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async move { PNG.to_vec() }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let h = harness_with(FAST, |c| {
        eyes(c);
        c.bot.picture_trusted_hosts.clear();
    });
    for (i, host) in [
        "127.0.0.1",
        "2130706433",
        "0x7f000001",
        "127.1",
        "[::ffff:127.0.0.1]",
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = msg(&i.to_string(), "what is it?");
        m.images = vec![format!("http://{host}:{port}/p.png")];
        let event = h.engine.handle(m).collect().await;
        assert_eq!(
            event.user_text().as_deref(),
            Some("图片没有收到，请重新发送。"),
            "{host}"
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    assert_eq!(h.llm.calls(), 0);
    assert_eq!(h.balance().await.free_left, 5, "nothing charged");
}

#[tokio::test]
async fn pictures_go_to_a_vision_model_as_data_urls_and_cost_extra() {
    let base = picture_server(PNG.to_vec()).await;
    let h = harness_with(FAST, eyes);
    let mut m = msg("1", "");
    m.images = vec![format!("{base}/p.png")];
    let event = h.engine.handle(m).collect().await;
    assert_eq!(final_text(&event), "Hello, world");
    let req = h.llm.last_request.lock().unwrap().clone().unwrap();
    let parts = req
        .messages
        .last()
        .unwrap()
        .content
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(parts[0]["text"], "请描述这张图片。");
    let url = parts[1]["image_url"]["url"].as_str().unwrap();
    assert!(url.starts_with("data:image/png;base64,"), "{url}");
    // 2 for the answer, 1 for the picture.
    assert_eq!(h.balance().await.free_left, 2);
    let history = h.store.conversation(&key().to_string()).await.unwrap();
    assert!(history[0].content.starts_with("[图片]"), "{history:?}");
}

#[tokio::test]
async fn pictures_that_are_too_big_or_not_pictures_are_refused() {
    let big = picture_server(vec![0xFF; 2048]).await;
    let h = harness_with(FAST, |c| {
        eyes(c);
        c.bot.max_image_bytes = 1024;
    });
    let mut m = msg("1", "what is it?");
    m.images = vec![format!("{big}/big.jpg")];
    let event = h.engine.handle(m).collect().await;
    assert_eq!(
        event.user_text().as_deref(),
        Some("图片没有收到，请重新发送。")
    );
    let html = picture_server(b"<html>not a picture</html>".to_vec()).await;
    let mut m = msg("2", "what is it?");
    m.images = vec![format!("{html}/x")];
    let event = h.engine.handle(m).collect().await;
    assert_eq!(
        event.user_text().as_deref(),
        Some("图片没有收到，请重新发送。")
    );
    assert_eq!(h.llm.calls(), 0);
    assert_eq!(h.balance().await.free_left, 5, "nothing charged");
    // A model without vision says so before downloading anything.
    let h = harness(FAST);
    let mut m = msg("3", "");
    m.images = vec!["http://127.0.0.1:9/unreachable.png".into()];
    let event = h.engine.handle(m).collect().await;
    assert!(final_text(&event).contains("看不到图片"), "{event:?}");
}

#[tokio::test]
async fn the_image_command_charges_its_price_and_nothing_on_failure() {
    let with_images = |c: &mut Config| {
        c.images = Some(crate::config::ImagesConfig {
            model: "img".into(),
            upstream: None,
            credits: 3,
            size: None,
        });
    };
    let h = harness_with(FAST, with_images);
    let event = h.engine.handle(msg("1", "/image a cat")).collect().await;
    let ReplyEvent::Final {
        images,
        charged,
        text,
        ..
    } = &event
    else {
        panic!("{event:?}")
    };
    assert_eq!(images, &vec!["https://img.example/5.png".to_owned()]);
    assert_eq!(*charged, 3);
    assert!(text.contains("https://img.example/5.png"), "{text}");
    assert_eq!(h.balance().await.free_left, 2);
    let usage = h.engine.handle(msg("2", "/image")).collect().await;
    assert!(final_text(&usage).contains("用法"));

    let h = harness_with(Script::Fail, with_images);
    let event = h.engine.handle(msg("1", "/image a cat")).collect().await;
    assert!(
        matches!(
            event,
            ReplyEvent::Failed {
                kind: FailureKind::Upstream,
                ..
            }
        ),
        "{event:?}"
    );
    assert_eq!(
        h.balance().await.free_left,
        5,
        "a failed drawing costs nothing"
    );

    let h = harness(FAST);
    let event = h.engine.handle(msg("1", "/image a cat")).collect().await;
    assert_eq!(final_text(&event), "暂未开放画图。");
}
