//! Tests of the `/v1` API: request checks, languages, delivery and refunds.

use super::*;
use crate::engine::Engine;
use chatrelay_core::Reply;

fn parse(body: &str) -> Result<Parsed, ApiError> {
    parse_request(Lang::En, body.as_bytes())
}

fn param_of(body: &str) -> Option<String> {
    match parse(body) {
        Ok(_) => None,
        Err(e) => {
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(!e.retry);
            e.param
        }
    }
}

#[test]
fn request_validation() {
    assert!(parse("{").is_err());
    assert!(parse("[]").is_err());
    assert_eq!(param_of(r#"{"model":"m"}"#).as_deref(), Some("messages"));
    assert_eq!(
        param_of(r#"{"model":"m","messages":[]}"#).as_deref(),
        Some("messages")
    );
    assert_eq!(
        param_of(r#"{"model":"","messages":[{"role":"user","content":"x"}]}"#).as_deref(),
        Some("model")
    );
    assert_eq!(
        param_of(r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#).as_deref(),
        Some("messages[0].role")
    );
    assert_eq!(
        param_of(r#"{"model":"m","messages":[{"role":"user","content":5}]}"#).as_deref(),
        Some("messages[0].content")
    );
    let ok = parse(
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"top_p":0.5,"n":1,"seed":-3,"logprobs":true,"top_logprobs":2,"temperature":null}"#,
    )
    .unwrap();
    assert_eq!(ok.req.extra.get("top_p"), Some(&json!(0.5)));
}

#[test]
fn numbers_must_have_their_exact_type_and_a_sane_range() {
    let with = |field: &str, v: &str| {
        format!(r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"{field}":{v}}}"#)
    };
    for (field, bad) in [
        (
            "n",
            vec![
                "2", "2.0", "1.0", "\"2\"", "\"1\"", "1e9", "1e0", "0", "-1", "true", "[1]",
            ],
        ),
        ("temperature", vec!["\"1\"", "2.5", "-0.1", "1e9", "true"]),
        ("top_p", vec!["1.5", "-1", "\"0.5\""]),
        ("presence_penalty", vec!["3", "\"0\""]),
        ("frequency_penalty", vec!["-2.5", "{}"]),
        (
            "max_tokens",
            vec!["0", "-5", "10.0", "1e5", "\"100\"", "4294967296"],
        ),
        (
            "max_completion_tokens",
            vec!["0", "2.5", "\"7\"", "99999999999"],
        ),
        ("seed", vec!["1.5", "\"1\"", "18446744073709551615"]),
        ("logprobs", vec!["1", "\"true\""]),
        ("top_logprobs", vec!["21", "-1", "2.0"]),
        ("stream", vec!["1", "\"true\""]),
    ] {
        for v in bad {
            assert_eq!(
                param_of(&with(field, v)).as_deref(),
                Some(field),
                "{field} = {v}"
            );
        }
    }
    assert_eq!(
        param_of(&with("stream_options", r#"{"include_usage":"yes"}"#)).as_deref(),
        Some("stream_options.include_usage")
    );
    assert_eq!(
        param_of(&with("logit_bias", r#"{"50":500}"#)).as_deref(),
        Some("logit_bias")
    );
    assert_eq!(param_of(&with("user", "5")).as_deref(), Some("user"));
    for (field, good) in [
        ("n", "1"),
        ("n", "null"),
        ("max_tokens", "1"),
        ("seed", "0"),
    ] {
        assert!(parse(&with(field, good)).is_ok(), "{field} = {good}");
    }
}

#[test]
fn the_smallest_cap_is_kept_and_none_passes_through() {
    let p = parse(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":100000,"max_completion_tokens":50}"#).unwrap();
    assert_eq!((p.cap, p.legacy_cap), (Some(50), false));
    assert!(p.req.extra.get("max_tokens").is_none());
    assert!(p.req.max_completion_tokens.is_none());
    let p = parse(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":7,"max_completion_tokens":90}"#).unwrap();
    assert_eq!((p.cap, p.legacy_cap), (Some(7), false));
    let p = parse(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":7}"#)
        .unwrap();
    assert_eq!((p.cap, p.legacy_cap), (Some(7), true));
    let p = parse(r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#).unwrap();
    assert_eq!(p.cap, None);
}

#[test]
fn errors_speak_the_requests_language() {
    let texts = crate::config::Texts::default();
    let mut h = HeaderMap::new();
    assert_eq!(
        Lang::of_request(&h, &texts),
        Lang::Zh,
        "the configured texts are Chinese"
    );
    let english = crate::config::Texts {
        unavailable: "Unavailable, try later.".into(),
        ..crate::config::Texts::default()
    };
    assert_eq!(Lang::of_request(&h, &english), Lang::En);
    for (header, lang) in [
        ("en-US,en;q=0.9", Lang::En),
        ("zh-CN,zh;q=0.9,en;q=0.8", Lang::Zh),
        ("fr-FR, en;q=0.5, zh;q=0.7", Lang::Zh),
        ("de, en;q=0", Lang::Zh),
        ("en;q=0.1, zh-TW;q=0.05", Lang::En),
    ] {
        h.insert("accept-language", header.parse().unwrap());
        assert_eq!(Lang::of_request(&h, &texts), lang, "{header}");
    }
    // A configured Chinese text is not mixed into an English error, and the reverse.
    let e = ApiError::from_failure(Lang::En, FailureKind::InsufficientQuota, "额度不足".into());
    assert_eq!(Lang::of_text(&e.message), Lang::En);
    let e = ApiError::from_failure(
        Lang::Zh,
        FailureKind::InsufficientQuota,
        "额度不足：需要 3".into(),
    );
    assert_eq!(e.message, "额度不足：需要 3");
    let e = ApiError::from_failure(Lang::Zh, FailureKind::Upstream, "boom".into());
    assert_eq!(Lang::of_text(&e.message), Lang::Zh);
    let e = parse_request(
        Lang::Zh,
        br#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#,
    )
    .err()
    .unwrap();
    assert_eq!(Lang::of_text(&e.message), Lang::Zh);
    assert_eq!(e.body()["error"]["param"], "n");
}

#[test]
fn quota_error_is_openai_shaped_and_final() {
    let res = ApiError::from_failure(Lang::En, FailureKind::InsufficientQuota, "no".into())
        .into_response();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers().get("x-should-retry").unwrap(), "false");
}

/// An engine on a temporary store, and the store's domain interface the tests read it by.
fn engine() -> (Engine, chatrelay_storage::Store) {
    let config = crate::config::Config::default();
    let engine = Engine::new(
        chatrelay_storage::Store::open_temporary().unwrap(),
        std::sync::Arc::new(crate::engine::llm::DemoBackend::default()),
        crate::engine::Settings::from_config(&config).unwrap(),
        tokio_util::sync::CancellationToken::new(),
        tokio_util::task::TaskTracker::new(),
    );
    let store = engine.store().clone();
    (engine, store)
}

/// The paid credits of `uid` today.
async fn paid_of(engine: &Engine, store: &chatrelay_storage::Store, uid: Uid) -> u64 {
    let s = engine.settings();
    store
        .balance(uid, s.today(), s.free_daily)
        .await
        .unwrap()
        .paid
}

fn meta() -> Meta {
    Meta {
        id: "chatcmpl-x".into(),
        created: 1,
        model: "m".into(),
        lang: Lang::En,
    }
}

fn final_event(text: &str, charged: u64) -> ReplyEvent {
    ReplyEvent::Final {
        text: text.into(),
        usage: None,
        charged,
        images: Vec::new(),
    }
}

async fn body_of(res: Response) -> Value {
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn a_non_streamed_answer_of_any_number_of_pieces_comes_back_whole() {
    let (engine, _store) = engine();
    for pieces in [0usize, 1, 2, 5] {
        let (tx, reply) = Reply::channel();
        let text: String = (0..pieces).map(|i| format!("p{i} ")).collect();
        for i in 0..pieces {
            assert!(tx.send(ReplyEvent::Delta(format!("p{i} "))).await);
        }
        assert!(tx.send(final_event(&text, 1)).await);
        drop(tx);
        let mut reply = Delivery {
            reply,
            engine: engine.clone(),
            uid: Uid(1),
            reference: format!("api:t{pieces}"),
            refund_lost: true,
            finished: false,
        };
        let first = reply.next().await.unwrap();
        let token = tokio_util::sync::CancellationToken::new();
        let res = complete_response(&token, meta(), first, reply)
            .await
            .unwrap_or_else(|e| panic!("{pieces} pieces: {e:?}"));
        assert_eq!(res.status(), StatusCode::OK);
        let body = body_of(res).await;
        assert_eq!(
            body["choices"][0]["message"]["content"], text,
            "{pieces} pieces"
        );
    }
}

#[tokio::test]
async fn a_settled_answer_the_reader_never_read_is_refunded_once() {
    let (engine, store) = engine();
    let uid = store.create_user("r").await.unwrap().uid;
    let before = paid_of(&engine, &store, uid).await;
    for _ in 0..2 {
        let (tx, reply) = Reply::channel();
        assert!(tx.send(ReplyEvent::Delta("a".into())).await);
        assert!(tx.send(final_event("a", 3)).await);
        drop(Delivery {
            reply,
            engine: engine.clone(),
            uid,
            reference: "api:lost".into(),
            refund_lost: true,
            finished: false,
        });
    }
    assert_eq!(
        paid_of(&engine, &store, uid).await,
        before + 3,
        "refunded, and only once"
    );
    // A streamed reader got the pieces: nothing is given back for it.
    let (tx, reply) = Reply::channel();
    assert!(tx.send(final_event("a", 3)).await);
    drop(Delivery {
        reply,
        engine: engine.clone(),
        uid,
        reference: "api:streamed".into(),
        refund_lost: false,
        finished: false,
    });
    assert_eq!(paid_of(&engine, &store, uid).await, before + 3);
}

/// The data lines of the events a streamed answer's body yields, in order.
async fn stream_data(pump: Pump) -> Vec<String> {
    let body = axum::response::sse::Sse::new(sse_events(pump)).into_response();
    let bytes = axum::body::to_bytes(body.into_body(), 1 << 20)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_owned))
        .collect()
}

fn delivery(engine: &Engine, reply: Reply, uid: Uid, reference: &str) -> Delivery {
    Delivery {
        reply,
        engine: engine.clone(),
        uid,
        reference: reference.into(),
        refund_lost: false,
        finished: false,
    }
}

#[tokio::test]
async fn a_streamed_answer_is_role_pieces_stop_usage_and_done() {
    let (engine, _store) = engine();
    let (tx, reply) = Reply::channel();
    assert!(tx.send(ReplyEvent::Delta("Hel".into())).await);
    assert!(tx.send(ReplyEvent::Delta("lo".into())).await);
    assert!(
        tx.send(ReplyEvent::Final {
            text: "Hello".into(),
            usage: Some(chatrelay_core::Usage {
                prompt_tokens: 3,
                completion_tokens: 2
            }),
            charged: 1,
            images: Vec::new(),
        })
        .await
    );
    drop(tx);
    let mut reply = delivery(&engine, reply, Uid(1), "api:s");
    let first = reply.next().await.unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let data = stream_data(Pump::new(meta(), reply, token, true, first)).await;
    let json: Vec<Value> = data
        .iter()
        .take(data.len() - 1)
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(data.len(), 6, "{data:?}");
    assert_eq!(json[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(json[1]["choices"][0]["delta"]["content"], "Hel");
    assert_eq!(json[2]["choices"][0]["delta"]["content"], "lo");
    assert_eq!(json[3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(json[4]["usage"]["total_tokens"], 5);
    assert_eq!(data[5], "[DONE]");
}

#[tokio::test]
async fn a_one_piece_answer_the_client_never_got_is_refunded_and_one_it_got_is_not() {
    use futures_util::StreamExt;
    let (engine, store) = engine();
    let uid = store.create_user("p").await.unwrap().uid;
    let before = paid_of(&engine, &store, uid).await;
    let token = tokio_util::sync::CancellationToken::new();
    // Only the role chunk was taken: the picture's text never left.
    let mut events = Box::pin(sse_events(Pump::new(
        meta(),
        delivery(&engine, Reply::text("a picture"), uid, "api:pic1"),
        token.clone(),
        false,
        final_event("a picture", 4),
    )));
    assert!(events.next().await.is_some());
    drop(events);
    assert_eq!(paid_of(&engine, &store, uid).await, before + 4, "refunded");
    // The text was taken: the client has it, and pays.
    let mut events = Box::pin(sse_events(Pump::new(
        meta(),
        delivery(&engine, Reply::text("a picture"), uid, "api:pic2"),
        token,
        false,
        final_event("a picture", 4),
    )));
    assert!(events.next().await.is_some());
    let Some(Ok(_text)) = events.next().await else {
        panic!("no text event")
    };
    drop(events);
    assert_eq!(
        paid_of(&engine, &store, uid).await,
        before + 4,
        "not refunded"
    );
}

/// Every open `/v1` stream is one of these, held by its connection: it reads the reply
/// itself (there were a task and a 32-slot channel per stream before, ~3.6 KB; issue 21).
#[test]
fn a_streamed_answers_body_stays_small() {
    let (engine, _store) = engine();
    let (_tx, reply) = Reply::channel();
    let pump = Pump::new(
        meta(),
        delivery(&engine, reply, Uid(1), "api:size"),
        tokio_util::sync::CancellationToken::new(),
        false,
        ReplyEvent::Delta(String::new()),
    );
    let body = sse_events(pump);
    let size = std::mem::size_of_val(&body);
    eprintln!("SSE body stream: {size} bytes");
    assert!(size <= 1024, "the SSE body is {size} bytes");
}
