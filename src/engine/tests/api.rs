//! `/v1` requests and the money around answers: metering, readers that leave, shutdown,
//! affordability, store calls without engine locks, refunds, answers shared between daemons.

use super::*;

#[tokio::test]
async fn api_requests_are_metered_and_stop_when_the_reader_leaves() {
    let h = harness(Script::Answer {
        delay_ms: 50,
        usage: None,
    });
    let uid = h.store.create_user("api").await.unwrap().uid;
    let req = |r: &str| ApiRequest {
        model: h.engine.settings().default_model.clone(),
        messages: vec![Message::new("user", "hi")],
        max_completion_tokens: None,
        legacy_max_tokens: false,
        streamed: true,
        extra: serde_json::Map::new(),
        reference: r.to_owned(),
        platform: chatrelay_core::Platform::Api,
    };
    let event = h.engine.complete(uid, req("api:1")).collect().await;
    assert_eq!(final_text(&event), "Hello, world");
    let s = h.engine.settings();
    assert_eq!(
        h.store
            .balance(uid, s.today(), s.free_daily)
            .await
            .unwrap()
            .free_left,
        3
    );

    // The reader takes one piece and leaves: the upstream stream is dropped early.
    let mut reply = h.engine.complete(uid, req("api:2"));
    assert!(matches!(reply.next().await, Some(ReplyEvent::Delta(_))));
    drop(reply);
    for _ in 0..50 {
        if h.llm.dropped_early.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.llm.dropped_early.load(Ordering::SeqCst), 1);
    // The settlement follows the upstream's drop in the answer's task: wait for it.
    let mut b = h.store.balance(uid, s.today(), s.free_daily).await.unwrap();
    for _ in 0..200 {
        if b.held == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        b = h.store.balance(uid, s.today(), s.free_daily).await.unwrap();
    }
    assert_eq!(b.held, 0, "the reservation was settled, not left open");

    let unknown = ApiRequest {
        model: "nope".into(),
        ..req("api:3")
    };
    let e = h.engine.complete(uid, unknown).collect().await;
    assert!(matches!(
        e,
        ReplyEvent::Failed {
            kind: FailureKind::UnknownModel,
            ..
        }
    ));
}

/// The task answering a `/v1` request lives as long as its answer streams: one per open
/// stream. Its size is the largest state it passes through, so the steps before and after
/// the stream (reserve, moderation, drawing, settling) are boxed (issue 21: it was ~3.9 KB
/// in a release build, the largest per-stream allocation after hyper's buffers).
#[test]
fn the_task_answering_a_v1_request_stays_small() {
    let h = harness(FAST);
    let req = ApiRequest {
        model: h.engine.settings().default_model.clone(),
        messages: vec![Message::new("user", "hi")],
        max_completion_tokens: None,
        legacy_max_tokens: false,
        streamed: true,
        extra: serde_json::Map::new(),
        reference: "api:size".to_owned(),
        platform: chatrelay_core::Platform::Api,
    };
    let size = h.engine.answer_task_size(Uid(1), req);
    eprintln!("answer task: {size} bytes");
    // 3,200 bytes in a test (debug) build with the boxes.
    assert!(size <= 3584, "the /v1 answer task is {size} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_another_daemon_joins_the_answer_through_the_database() {
    let Some((store_a, store_b)) = shared_pair().await else {
        eprintln!("skipped: CHATRELAY_TEST_PG_URL is not set");
        return;
    };
    let h = harness(Script::Answer {
        delay_ms: 100,
        usage: None,
    });
    let settings = (*h.engine.settings()).clone();
    let daemon = |store: Store| {
        Engine::new(
            store,
            h.llm.clone(),
            settings.clone(),
            CancellationToken::new(),
            TaskTracker::new(),
        )
    };
    let (a, b) = (daemon(store_a.clone()), daemon(store_b));
    let first = a.handle(msg("77", "question"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // WeChat's retry reaches the other daemon while the first is still answering.
    let retry = b.handle(msg("77", "question"));
    let (ea, eb) = tokio::join!(first.collect(), retry.collect());
    assert_eq!(final_text(&ea), "Hello, world");
    assert_eq!(final_text(&eb), "Hello, world", "the retry got the answer");
    assert_eq!(h.llm.calls(), 1, "one LLM call for both");
    let uid = store_a.identity(&key()).await.unwrap().unwrap();
    let usage = store_a
        .ledger(uid, 10)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EntryKind::Usage)
        .count();
    assert_eq!(usage, 1, "charged once");
    // Whoever asks first delivers; the other daemon does not.
    assert!(b.claim_delivery("mp:x:77").await);
    assert!(!a.claim_delivery("mp:x:77").await);
    // WeChat's tries counted across the daemons they reached.
    let mut tries = Vec::new();
    for e in [&a, &b, &a, &b] {
        tries.push(e.count_try("mp:x:78", 3).await);
    }
    assert_eq!(tries, [1, 2, 3, 3]);
}

fn api_request(model: &str, reference: &str, streamed: bool) -> ApiRequest {
    ApiRequest {
        model: model.to_owned(),
        messages: vec![Message::new("user", "hi")],
        max_completion_tokens: None,
        legacy_max_tokens: false,
        streamed,
        extra: serde_json::Map::new(),
        reference: reference.to_owned(),
        platform: Platform::Api,
    }
}

async fn settled(h: &Harness, uid: Uid) -> chatrelay_storage::Balance {
    let s = h.engine.settings();
    for _ in 0..200 {
        let b = h.store.balance(uid, s.today(), s.free_daily).await.unwrap();
        if b.held == 0 {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the reservation stayed open");
}

#[tokio::test]
async fn a_reader_waiting_for_the_whole_answer_that_leaves_pays_nothing() {
    let h = harness(Script::Answer {
        delay_ms: 30,
        usage: None,
    });
    let uid = h.store.create_user("api").await.unwrap().uid;
    let model = h.engine.settings().default_model.clone();
    let mut reply = h
        .engine
        .complete(uid, api_request(&model, "api:whole", false));
    assert!(matches!(reply.next().await, Some(ReplyEvent::Delta(_))));
    drop(reply);
    let b = settled(&h, uid).await;
    assert_eq!(
        b.free_left, 5,
        "a non-streamed reader that left received nothing"
    );
    // A streamed reader is charged for what it was sent, as documented.
    let mut reply = h
        .engine
        .complete(uid, api_request(&model, "api:piecewise", true));
    assert!(matches!(reply.next().await, Some(ReplyEvent::Delta(_))));
    drop(reply);
    let b = settled(&h, uid).await;
    assert!(b.free_left < 5);
}

#[tokio::test]
async fn an_answer_ended_by_the_servers_shutdown_costs_nothing() {
    // The reader (a /v1 stream) stops on shutdown and drops its reply, just as the engine
    // sees the shutdown: whichever it notices first, the server ended the answer.
    for round in 0..20 {
        let h = harness(Script::Answer {
            delay_ms: 40,
            usage: None,
        });
        let uid = h.store.create_user("api").await.unwrap().uid;
        let model = h.engine.settings().default_model.clone();
        let mut reply = h
            .engine
            .complete(uid, api_request(&model, "api:stop", true));
        assert!(matches!(reply.next().await, Some(ReplyEvent::Delta(_))));
        h.engine.shutdown_token().cancel();
        drop(reply);
        let b = settled(&h, uid).await;
        assert_eq!(
            b.free_left, 5,
            "round {round}: charged for an answer the server ended"
        );
    }
}

fn per_token(c: &mut Config) {
    c.llm.models = vec![crate::config::ModelConfig {
        name: c.llm.model.clone(),
        credits: 1,
        credits_per_1k_tokens: 10,
        ..crate::config::ModelConfig::default()
    }];
    c.quota.free_daily = 0;
}

#[tokio::test]
async fn the_upstream_is_asked_for_no_more_than_the_payer_can_afford() {
    let h = harness_with(FAST, per_token);
    let uid = h.store.create_user("poor").await.unwrap().uid;
    h.store
        .grant(uid, 2, EntryKind::Grant, "t", "g:poor", 0)
        .await
        .unwrap();
    let model = h.engine.settings().default_model.clone();
    let sent = |h: &Harness| {
        let r = h.llm.last_request.lock().unwrap().clone().unwrap();
        (r.max_completion_tokens, r.legacy_max_tokens)
    };
    // 2 credits: 1 flat, 1 for a started 1,000 tokens at 10 per 1k = 100 tokens in all.
    let prompt = quota::estimate_tokens("hi");
    let affordable = u32::try_from(100 - prompt).unwrap();
    for (asked, legacy) in [(Some(100_000), true), (Some(100_000), false), (None, false)] {
        let req = ApiRequest {
            max_completion_tokens: asked,
            legacy_max_tokens: legacy,
            ..api_request(&model, &format!("api:cap{asked:?}{legacy}"), false)
        };
        let event = h.engine.complete(uid, req).collect().await;
        assert!(matches!(event, ReplyEvent::Final { .. }), "{event:?}");
        assert_eq!(sent(&h), (Some(affordable), legacy), "asked {asked:?}");
        // Refill what the answer cost.
        let b = settled(&h, uid).await;
        h.store
            .grant(
                uid,
                2 - b.paid,
                EntryKind::Grant,
                "t",
                &format!("refill{asked:?}{legacy}"),
                0,
            )
            .await
            .ok();
    }
    // A smaller cap than affordable goes upstream as sent.
    let req = ApiRequest {
        max_completion_tokens: Some(7),
        ..api_request(&model, "api:small", false)
    };
    h.engine.complete(uid, req).collect().await;
    assert_eq!(sent(&h), (Some(7), false));
    // Chat platforms go through the same limit.
    let platform_payer = h.store.resolve_identity(&key(), None).await.unwrap();
    h.store
        .grant(platform_payer, 2, EntryKind::Grant, "t", "g:platform", 0)
        .await
        .unwrap();
    let event = h.engine.handle(msg("cap-1", "hi")).collect().await;
    assert!(matches!(event, ReplyEvent::Final { .. }), "{event:?}");
    let (cap, _) = sent(&h);
    assert!(cap.is_some_and(|c| c < 100), "{cap:?}");
}

#[tokio::test]
async fn an_upstream_that_ignores_the_limit_is_not_read_past_what_the_payer_affords() {
    // Pieces of 5 ASCII characters (2 estimated tokens each) until stopped.
    struct Endless;
    impl LlmBackend for Endless {
        fn stream(&self, _: LlmRequest) -> BoxFuture<'static, Result<LlmStream, LlmError>> {
            Box::pin(async {
                Ok(
                    futures_util::stream::repeat_with(|| Ok(LlmEvent::Delta("abcde".into())))
                        .take(1_000_000)
                        .boxed(),
                )
            })
        }
        fn name(&self) -> &'static str {
            "endless"
        }
    }
    let h = harness_with(FAST, per_token);
    let uid = h.store.create_user("poor").await.unwrap().uid;
    h.store
        .grant(uid, 2, EntryKind::Grant, "t", "g:endless", 0)
        .await
        .unwrap();
    let settings = h.engine.settings().as_ref().clone();
    h.engine.reload(settings, Arc::new(Endless));
    let model = h.engine.settings().default_model.clone();
    let event = h
        .engine
        .complete(uid, api_request(&model, "api:endless", false))
        .collect()
        .await;
    let ReplyEvent::Final { text, charged, .. } = event else {
        panic!("{event:?}");
    };
    assert!(text.len() < 1000, "read {} bytes", text.len());
    assert!(charged <= 2);
}

/// A message whose store call waits (writers held, as at the start of a backup) must not
/// hold up the engine's other work: housekeeping and a redelivery of the same message go on
/// (they waited on the in-flight map's lock, held across the store call, before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_store_call_holds_no_engine_lock() {
    let h = harness(FAST);
    // Holding the writers is the key-value engine's test hook (the harness's store is sled).
    let Some(store) = h.engine.store().kv().cloned() else {
        return;
    };
    let engine = h.engine.clone();
    let rt = tokio::runtime::Handle::current();
    let (first, again) = tokio::task::spawn_blocking(move || {
        store.with_writers_held(|| {
            let (e, r) = (engine.clone(), rt.clone());
            let first = std::thread::spawn(move || {
                let _rt = r.enter();
                e.handle(msg("5", "q"))
            });
            // Until the first delivery has its slot (and waits in the store).
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(g) = engine.inner.inflight.try_lock()
                    && g.map.contains_key("tg:main:42#5")
                {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the in-flight map stayed locked while the store call waited"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            let (tx, rx) = std::sync::mpsc::channel();
            let r = rt.clone();
            std::thread::spawn(move || {
                let _rt = r.enter();
                engine.housekeeping();
                let _ = tx.send(engine.handle(msg("5", "q")));
            });
            let again = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("housekeeping and a redelivery waited for another message's store call");
            (first, again)
        })
    })
    .await
    .unwrap();
    let first = first.join().unwrap();
    let (a, b) = tokio::join!(first.collect(), again.collect());
    assert_eq!(final_text(&a), "Hello, world");
    assert_eq!(final_text(&b), "Hello, world");
    assert_eq!(h.llm.calls(), 1);
}

#[tokio::test]
async fn an_undelivered_platform_answer_is_refunded_once_under_its_own_reference() {
    let h = harness_with(FAST, |c| {
        c.images = Some(crate::config::ImagesConfig {
            model: "img".into(),
            upstream: None,
            credits: 3,
            size: None,
        });
    });
    let asked = msg("1", "hello");
    let answer = h.engine.handle(asked.clone()).collect().await;
    let drawing = msg("2", "/image a cat");
    let picture = h.engine.handle(drawing.clone()).collect().await;
    assert_eq!(
        h.balance().await.free_left,
        0,
        "2 for the answer, 3 for the picture"
    );
    for _ in 0..2 {
        h.engine
            .refund_platform_undelivered(&asked, &answer, "test")
            .await;
        h.engine
            .refund_platform_undelivered(&drawing, &picture, "test")
            .await;
    }
    let refund = async |reference: &str| {
        h.store
            .ledger_by_reference(&format!("undelivered:{reference}"))
            .await
            .unwrap()
            .map(|e| e.paid_delta)
    };
    // Each under the reference its charge has, once however often asked.
    assert!(
        h.store
            .ledger_by_reference("msg:tg:main:42#1")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        h.store
            .ledger_by_reference("img:tg:main:42#2")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(refund("msg:tg:main:42#1").await, Some(2));
    assert_eq!(refund("img:tg:main:42#2").await, Some(3));
    assert_eq!(h.balance().await.paid, 5);
    // Both usage records say so (the picture's too, logged as model `image`).
    let records = usage_log(&h.store, h.uid().await).await;
    let marks: Vec<(&str, u64, u64, chatrelay_storage::UsageOutcome)> = records
        .iter()
        .map(|r| (r.model.as_str(), r.charged(), r.refunded, r.outcome))
        .collect();
    let refunded = chatrelay_storage::UsageOutcome::Refunded;
    let model = h.engine.settings().default_model.clone();
    assert_eq!(
        marks,
        vec![("image", 3, 3, refunded), (model.as_str(), 2, 2, refunded)]
    );
    // A free answer or a failure is owed nothing.
    let failed = failed(FailureKind::Upstream, "x");
    h.engine
        .refund_platform_undelivered(&msg("3", "q"), &failed, "test")
        .await;
    assert_eq!(refund("msg:tg:main:42#3").await, None);
}

#[tokio::test]
async fn finished_answers_kept_for_redeliveries_are_capped_newest_first() {
    let h = harness(FAST);
    let done = || {
        let (tx, rx) = watch::channel(Progress::default());
        tx.send_modify(|p| p.done = Some(free_answer("ok".to_owned())));
        rx
    };
    let t0 = Instant::now();
    {
        let mut guard = h.engine.inner.inflight.lock().unwrap();
        for i in 0..MAX_FINISHED_KEPT + 100 {
            guard.map.insert(
                format!("done-{i}"),
                Inflight {
                    rx: done(),
                    started: t0 + Duration::from_millis(i as u64),
                },
            );
        }
        // Answers still being written are never dropped, however old.
        let (tx, rx) = watch::channel(Progress::default());
        std::mem::forget(tx);
        guard.map.insert(
            "writing".to_owned(),
            Inflight {
                rx,
                started: t0 - Duration::from_secs(1),
            },
        );
    }
    h.engine.sweep_inflight(false);
    let guard = h.engine.inner.inflight.lock().unwrap();
    assert_eq!(guard.map.len(), MAX_FINISHED_KEPT + 1);
    assert!(guard.map.contains_key("writing"));
    assert!(!guard.map.contains_key("done-99"), "the oldest went first");
    assert!(guard.map.contains_key("done-100"));
    assert!(
        guard
            .map
            .contains_key(&format!("done-{}", MAX_FINISHED_KEPT + 99))
    );
}

/// Store work started where nothing can be awaited (an undelivered answer's refund from a
/// stream's `Drop`, a content-rule hit): done on the spot when it need not wait (sled), else
/// finished in a task of the daemon's tracker (PostgreSQL), which shutdown waits for.
#[tokio::test]
async fn store_work_that_cannot_be_awaited_runs_inline_or_in_a_tracked_task() {
    let h = harness(FAST);
    let tasks = h.engine.tracker().len();
    let inline = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let i = inline.clone();
    h.engine
        .run_or_spawn(async move { i.store(true, Ordering::SeqCst) });
    assert!(
        inline.load(Ordering::SeqCst),
        "work that need not wait is done at once"
    );
    assert_eq!(h.engine.tracker().len(), tasks);

    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let waited = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = waited.clone();
    h.engine.run_or_spawn(async move {
        let _ = rx.await;
        w.store(true, Ordering::SeqCst);
    });
    assert!(!waited.load(Ordering::SeqCst));
    assert_eq!(
        h.engine.tracker().len(),
        tasks + 1,
        "the rest goes on in a tracked task"
    );
    tx.send(()).unwrap();
    for _ in 0..200 {
        if waited.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        waited.load(Ordering::SeqCst),
        "the tracked task finished the work"
    );
}
