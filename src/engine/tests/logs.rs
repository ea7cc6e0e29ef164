//! The usage log, the cleanup's purges, plans by command, conversations across platforms,
//! guests' expiry.

use super::*;

#[tokio::test]
async fn the_usage_log_keeps_each_answer_with_its_charge_and_outcome() {
    let h = harness(FAST);
    h.engine.handle(msg("1", "hi")).collect().await;
    let records = usage_log(&h.store, h.uid().await).await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(
        (r.platform.as_str(), r.model.as_str(), r.outcome),
        (
            "tg",
            h.engine.settings().default_model.as_str(),
            chatrelay_storage::UsageOutcome::Answered
        )
    );
    assert_eq!((r.prompt_tokens, r.completion_tokens), (10, 3));
    assert_eq!((r.free, r.paid, r.plan, r.charged()), (2, 0, 0, 2));
    // A redelivery of the same message is not a second record.
    h.engine.handle(msg("1", "hi")).collect().await;
    assert_eq!(usage_log(&h.store, h.uid().await).await.len(), 1);

    // An answer an output rule cuts is logged as cut.
    let h = harness_with(FAST, |c| {
        c.filters = vec![filter("out", &["lo,wo"], chatrelay_rules::ApplyTo::Output)];
    });
    h.engine.handle(msg("1", "say hello")).collect().await;
    let records = usage_log(&h.store, h.uid().await).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, chatrelay_storage::UsageOutcome::Cut);
}

#[tokio::test]
async fn an_api_answer_stopped_by_its_reader_is_logged_as_stopped() {
    let h = harness(Script::Answer {
        delay_ms: 50,
        usage: None,
    });
    let uid = h.store.create_user("api").await.unwrap().uid;
    let req = ApiRequest {
        model: h.engine.settings().default_model.clone(),
        messages: vec![Message::new("user", "hi")],
        max_completion_tokens: None,
        legacy_max_tokens: false,
        streamed: true,
        extra: serde_json::Map::new(),
        reference: "api:stop".to_owned(),
        platform: chatrelay_core::Platform::Api,
    };
    let mut reply = h.engine.complete(uid, req);
    assert!(matches!(reply.next().await, Some(ReplyEvent::Delta(_))));
    drop(reply);
    let mut records = Vec::new();
    for _ in 0..100 {
        records = usage_log(&h.store, uid).await;
        if !records.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].platform.as_str(), records[0].outcome),
        ("api", chatrelay_storage::UsageOutcome::Stopped)
    );
}

#[tokio::test]
async fn the_cleanup_prunes_usage_records_past_usage_days() {
    for (days, kept) in [(1, 1), (0, 2)] {
        let h = harness_with(FAST, |c| c.quota.usage_days = days);
        let uid = h.store.create_user("u").await.unwrap().uid;
        let now = now_ms();
        for (n, at) in [now - 2 * 86_400_000, now - 3_600_000]
            .into_iter()
            .enumerate()
        {
            let id = h
                .store
                .reserve(uid, 1, &format!("r{n}"), 0, 5, i64::MAX)
                .await
                .unwrap();
            let note = chatrelay_storage::UsageNote {
                platform: "web",
                model: "m",
                prompt_tokens: 1,
                completion_tokens: 1,
                outcome: chatrelay_storage::UsageOutcome::Answered,
            };
            h.store
                .settle_metered(id, 1, "a", 0, 5, at, None, Some(note))
                .await
                .unwrap();
        }
        h.engine.purge_old_records().await;
        let left = usage_log(&h.store, uid).await;
        assert_eq!(left.len(), kept, "usage_days = {days}");
        assert!(left[0].at_ms > now - 86_400_000);
        assert_eq!(
            h.store.ledger(uid, 10).await.unwrap().len(),
            2,
            "the ledger stays"
        );
        if days > 0 {
            // A finished pass: the next one starts an hour later, not at the next run.
            let id = h
                .store
                .reserve(uid, 1, "late", 0, 5, i64::MAX)
                .await
                .unwrap();
            let note = chatrelay_storage::UsageNote {
                platform: "web",
                model: "m",
                prompt_tokens: 1,
                completion_tokens: 1,
                outcome: chatrelay_storage::UsageOutcome::Answered,
            };
            let old = now - 3 * 86_400_000;
            h.store
                .settle_metered(id, 1, "a", 0, 5, old, None, Some(note))
                .await
                .unwrap();
            h.engine.purge_old_records().await;
            assert_eq!(usage_log(&h.store, uid).await.len(), 2);
        }
    }
}

#[tokio::test]
async fn a_plan_code_by_command_and_the_plan_in_quota() {
    let h = harness_with(FAST, |c| {
        c.plans = vec![crate::config::PlanConfig {
            id: "month".into(),
            name: "月卡".into(),
            daily_credits: 6,
            days: 30,
            models: Vec::new(),
        }];
    });
    h.engine.handle(msg("1", "hi")).collect().await;
    let s = h.engine.settings();
    let grant = s.plan("month").unwrap().grant(s.tz_offset_secs);
    let (_, codes) = h
        .store
        .create_code_batch(
            chatrelay_storage::CodeGrant::of_plan(&grant),
            1,
            None,
            "",
            now_ms(),
        )
        .await
        .unwrap();
    let end = chatrelay_storage::date_of_day(s.today() + 29);
    let redeemed = h
        .engine
        .handle(msg("2", &format!("/redeem {}", codes[0])))
        .collect()
        .await;
    assert_eq!(
        final_text(&redeemed),
        format!("兑换成功：月卡已生效，有效期至 {end}，期间每天额外 6 额度。")
    );
    let quota = h.engine.handle(msg("3", "/quota")).collect().await;
    let text = final_text(&quota);
    assert!(
        text.contains("9/11"),
        "the plan joins today's allowance: {text}"
    );
    assert!(
        text.contains(&format!(
            "会员：月卡，每天额外 6 额度，有效期至 {end}（剩 30 天）"
        )),
        "{text}"
    );
    assert_eq!(h.balance().await.free_left, 9);
}

#[tokio::test]
async fn a_platform_conversation_continues_on_the_web_with_its_memory_and_is_charged() {
    let h = harness(FAST);
    h.engine.handle(msg("1", "hi")).collect().await;
    let uid = h.uid().await;
    let before = h.balance().await;
    let event = h
        .engine
        .continue_on_web(uid, key(), "  again  ", None, "webconv:t1")
        .collect()
        .await;
    assert_eq!(final_text(&event), "Hello, world");
    let req = h.llm.last_request.lock().unwrap().clone().unwrap();
    let texts: Vec<String> = req.messages.iter().map(Message::text).collect();
    assert_eq!(texts[1..], ["hi", "Hello, world", "again"], "{texts:?}");
    // Charged like a message, remembered in the platform's conversation.
    assert_eq!(h.balance().await.free_left, before.free_left - 2);
    let turns = h.store.conversation(&key().to_string()).await.unwrap();
    let contents: Vec<&str> = turns.iter().map(|t| t.content.as_str()).collect();
    assert_eq!(contents, ["hi", "Hello, world", "again", "Hello, world"]);
    let log = usage_log(&h.store, uid).await;
    assert_eq!(log.len(), 2);
    assert_eq!(log.iter().filter(|r| r.platform == "web").count(), 1);

    // Refused before anything runs: nothing asked, nothing remembered.
    let calls = h.llm.calls();
    let empty = h
        .engine
        .continue_on_web(uid, key(), "  ", None, "webconv:t2")
        .collect()
        .await;
    assert!(matches!(
        empty,
        ReplyEvent::Failed {
            kind: FailureKind::InvalidRequest,
            ..
        }
    ));
    h.store
        .grant(uid, 10, EntryKind::Purchase, "order", "seed-web", 1)
        .await
        .unwrap();
    let unknown = h
        .engine
        .continue_on_web(uid, key(), "x", Some("nope".into()), "webconv:t3")
        .collect()
        .await;
    // An unknown model falls back to the platform's default, like a stale preference.
    assert_eq!(final_text(&unknown), "Hello, world");
    assert_eq!(h.llm.calls(), calls + 1);
}

#[tokio::test]
async fn expired_guests_lose_their_saved_conversations_and_no_one_else_does() {
    let h = harness(FAST);
    let limits = chatrelay_storage::ChatLimits {
        max_count: 10,
        max_bytes: 10_000,
    };
    let expiring = h
        .engine
        .create_guest(5, Duration::from_millis(1))
        .await
        .unwrap();
    let live = h
        .engine
        .create_guest(5, Duration::from_secs(3600))
        .await
        .unwrap();
    let member = h.engine.record_user(&key(), Some("guest")).await.unwrap();
    for uid in [expiring.uid, live.uid, member] {
        h.store
            .put_chat(uid, "w_1", "t", &[], None, 1, limits)
            .await
            .unwrap();
    }
    let now = crate::util::now_ms() + 10;
    h.engine.purge_guest_chats(now).await;
    assert!(h.store.chats(expiring.uid).await.unwrap().is_empty());
    assert_eq!(
        h.store.chats(live.uid).await.unwrap().len(),
        1,
        "token still works"
    );
    assert_eq!(
        h.store.chats(member).await.unwrap().len(),
        1,
        "a platform user named guest is no guest"
    );
    // Later, the other guest's token expires too.
    h.engine.purge_guest_chats(now + 3_600_000).await;
    assert!(h.store.chats(live.uid).await.unwrap().is_empty());
    assert_eq!(h.store.chats(member).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_cleanup_prunes_the_change_log_past_change_log_days() {
    let h = harness_with(FAST, |c| c.console.change_log_days = 2);
    let now = now_ms();
    for (n, at) in [now - 3 * 86_400_000, now - 86_400_000]
        .into_iter()
        .enumerate()
    {
        h.store
            .record_change(chatrelay_storage::ChangeRecord {
                at_ms: at,
                id: 0,
                actor: "token".into(),
                address: "127.0.0.1".into(),
                method: "POST".into(),
                path: format!("/admin/users/{n}/grant"),
                status: 200,
                reason: Some("r".into()),
                summary: serde_json::json!({}),
            })
            .await
            .unwrap();
    }
    h.engine.purge_old_records().await;
    let left = h.store.changes(None, 10).await.unwrap().records;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].path, "/admin/users/1/grant");
}
