//! Answers, redeliveries, commands, quota, bans and limits, the prompt's budget, buying,
//! models and roles.

use super::*;

#[tokio::test]
async fn answers_charges_and_remembers() {
    let h = harness(FAST);
    let event = h.engine.handle(msg("1", "hi")).collect().await;
    assert_eq!(final_text(&event), "Hello, world");
    let ReplyEvent::Final { charged, usage, .. } = &event else {
        unreachable!()
    };
    assert_eq!(*charged, 2);
    assert_eq!(usage.unwrap().completion_tokens, 3);
    let b = h.balance().await;
    assert_eq!(b.free_left, 3);
    assert_eq!(b.held, 0);
    let turns = h.store.conversation(&key().to_string()).await.unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[0].content, "hi");
    assert_eq!(turns[1].content, "Hello, world");
    // The next message carries the history.
    h.engine.handle(msg("2", "again")).collect().await;
    let req = h.llm.last_request.lock().unwrap().clone().unwrap();
    let texts: Vec<String> = req.messages.iter().map(Message::text).collect();
    assert_eq!(texts.len(), 4, "{texts:?}"); // system, hi, Hello world, again
    assert_eq!(texts[1], "hi");
    assert_eq!(texts[3], "again");
}

#[tokio::test]
async fn redeliveries_join_one_answer_and_one_debit() {
    let h = harness(Script::Answer {
        delay_ms: 30,
        usage: None,
    });
    let a = h.engine.handle(msg("7", "question"));
    tokio::time::sleep(Duration::from_millis(40)).await;
    let b = h.engine.handle(msg("7", "question"));
    let (ea, eb) = tokio::join!(a.collect(), b.collect());
    assert_eq!(final_text(&ea), "Hello, world");
    assert_eq!(final_text(&eb), "Hello, world");
    // After it finished, a third delivery gets the same answer again.
    let ec = h.engine.handle(msg("7", "question")).collect().await;
    assert_eq!(final_text(&ec), "Hello, world");
    assert_eq!(h.llm.calls(), 1);
    let uid = h.uid().await;
    let usage_entries = h
        .store
        .ledger(uid, 10)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EntryKind::Usage)
        .count();
    assert_eq!(usage_entries, 1);
}

#[tokio::test]
async fn a_redelivery_after_restart_is_not_answered_twice() {
    let h = harness(FAST);
    h.engine.handle(msg("9", "q")).collect().await;
    // A new engine over the same store has no memory of the answer, only the dedupe mark.
    let engine2 = Engine::new(
        h.engine.store().clone(),
        h.llm.clone(),
        (*h.engine.settings()).clone(),
        CancellationToken::new(),
        TaskTracker::new(),
    );
    let event = engine2.handle(msg("9", "q")).collect().await;
    if h.store.is_shared() {
        // On PostgreSQL (`CHATRELAY_TEST_PG_URL`) the engines are two daemons: the retry
        // gets the answer the first one shared, free.
        assert!(
            matches!(&event, ReplyEvent::Final { text, charged: 0, .. } if text == "Hello, world"),
            "{event:?}"
        );
    } else {
        assert!(
            matches!(
                event,
                ReplyEvent::Failed {
                    kind: FailureKind::Duplicate,
                    ..
                }
            ),
            "{event:?}"
        );
    }
    assert_eq!(h.llm.calls(), 1);
}

#[tokio::test]
async fn commands_are_free_and_work() {
    let h = harness(FAST);
    h.engine.handle(msg("1", "hi")).collect().await;
    let help = h.engine.handle(msg("2", "/help")).collect().await;
    assert!(final_text(&help).contains("/new"), "{help:?}");
    let quota = h.engine.handle(msg("3", "余额")).collect().await;
    assert!(final_text(&quota).contains("3/5"), "{quota:?}");
    let new = h.engine.handle(msg("4", " /NEW ")).collect().await;
    assert_eq!(final_text(&new), "好的，已开始新的对话。");
    assert!(
        h.store
            .conversation(&key().to_string())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(h.llm.calls(), 1);
    assert_eq!(h.balance().await.free_left, 3);
}

#[tokio::test]
async fn the_redeem_command_credits_once_and_costs_nothing() {
    let h = harness(FAST);
    h.engine.handle(msg("1", "hi")).collect().await;
    let (_, codes) = h
        .store
        .create_code_batch(
            chatrelay_storage::CodeGrant::Credits { credits: 40 },
            1,
            None,
            "",
            0,
        )
        .await
        .unwrap();
    let usage = h.engine.handle(msg("2", "/redeem")).collect().await;
    assert!(final_text(&usage).contains("/redeem XXXX"), "{usage:?}");
    let typed = format!("兑换 {}", codes[0].to_lowercase());
    let ok = h.engine.handle(msg("3", &typed)).collect().await;
    assert!(final_text(&ok).contains("增加 40 额度"), "{ok:?}");
    assert_eq!(h.balance().await.paid, 40);
    let again = h
        .engine
        .handle(msg("4", &format!("/redeem {}", codes[0])))
        .collect()
        .await;
    assert_eq!(final_text(&again), "这个兑换码你已经兑换过了");
    let wrong = h
        .engine
        .handle(msg("5", "/REDEEM 2222-3333-4444-5555"))
        .collect()
        .await;
    assert_eq!(final_text(&wrong), "兑换码不存在，请核对后再试");
    assert_eq!(h.balance().await.paid, 40);
    assert_eq!(h.llm.calls(), 1, "commands never reach the model");
}

#[tokio::test]
async fn upstream_failure_costs_nothing() {
    for script in [Script::Fail, Script::FailMidway] {
        let h = harness(script);
        let event = h.engine.handle(msg("1", "hi")).collect().await;
        assert!(
            matches!(&event, ReplyEvent::Failed { kind: FailureKind::Upstream, message } if message.contains("没有扣除")),
            "{event:?}"
        );
        let b = h.balance().await;
        assert_eq!((b.free_left, b.held, b.paid), (5, 0, 0));
        assert!(h.store.ledger(h.uid().await, 10).await.unwrap().is_empty());
        assert!(
            h.store
                .conversation(&key().to_string())
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test]
async fn out_of_quota_says_what_exists_and_calls_nothing() {
    let h = harness_with(FAST, |c| c.quota.free_daily = 1);
    let event = h.engine.handle(msg("1", "hi")).collect().await;
    match &event {
        ReplyEvent::Failed {
            kind: FailureKind::InsufficientQuota,
            message,
        } => {
            assert!(message.contains("需要 2"), "{message}");
            // Daily free credits exist, nothing is on sale: the hint names only the former.
            assert!(message.contains("零点恢复"), "{message}");
            assert!(!message.contains("购买"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.llm.calls(), 0);
    // Paid credits make it work, free ones go first.
    h.store
        .grant(h.uid().await, 10, EntryKind::Grant, "test", "g1", now_ms())
        .await
        .unwrap();
    let event = h.engine.handle(msg("2", "hi")).collect().await;
    assert_eq!(final_text(&event), "Hello, world");
    let b = h.balance().await;
    assert_eq!((b.free_left, b.paid), (0, 9));
}

#[tokio::test]
async fn banned_and_rate_limited_users_are_refused() {
    let h = harness_with(FAST, |c| c.bot.rate_limit_per_minute = 2);
    for i in 0..2 {
        let e = h.engine.handle(msg(&format!("m{i}"), "hi")).collect().await;
        final_text(&e);
    }
    let e = h.engine.handle(msg("m3", "hi")).collect().await;
    assert!(
        matches!(
            e,
            ReplyEvent::Failed {
                kind: FailureKind::RateLimited,
                ..
            }
        ),
        "{e:?}"
    );
    h.store.set_banned(h.uid().await, true, None).await.unwrap();
    let e = h.engine.handle(msg("m4", "hi")).collect().await;
    assert!(
        matches!(
            e,
            ReplyEvent::Failed {
                kind: FailureKind::Banned,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(h.llm.calls(), 2);
}

#[tokio::test]
async fn empty_and_oversized_messages_get_a_hint() {
    let h = harness_with(FAST, |c| c.bot.max_input_chars = 5);
    let e = h.engine.handle(msg("1", "   ")).collect().await;
    assert_eq!(final_text(&e), "请输入文字内容。");
    let e = h.engine.handle(msg("2", "你好你好你好")).collect().await;
    assert!(final_text(&e).contains('5'));
    assert_eq!(h.llm.calls(), 0);
}

#[test]
fn prompt_keeps_recent_whole_turns_within_budget() {
    let turn = |role: &str, content: &str| Turn {
        role: role.into(),
        content: content.into(),
        at_ms: 0,
    };
    let history: Vec<Turn> = (0..10)
        .flat_map(|i| {
            [
                turn("user", &format!("question {i} {}", "x".repeat(40))),
                turn("assistant", &format!("answer {i} {}", "y".repeat(40))),
            ]
        })
        .collect();
    let all = build_prompt("sys", &history, "now", 100_000);
    assert_eq!(all.len(), 22);
    let some = build_prompt("sys", &history, "now", 80);
    assert!(some.len() < 22 && some.len() >= 3, "{}", some.len());
    assert_eq!(some[0].role, "system");
    assert_eq!(some[1].role, "user", "history starts with a user turn");
    assert!(some[some.len() - 2].text().starts_with("answer 9"));
    assert_eq!(some.last().unwrap().text(), "now");
    let none = build_prompt("", &history, "now", 1);
    assert_eq!(none.len(), 1);
}

#[tokio::test]
async fn buy_lists_products_and_the_web_page() {
    let h = harness_with(FAST, |c| {
        c.products = vec![crate::config::ProductConfig {
            id: "p".into(),
            name: "十次".into(),
            price_fen: 450,
            credits: 10,
            plan: None,
        }];
        c.server.public_url = Some("https://chat.example.com/".into());
    });
    let e = h.engine.handle(msg("1", "/buy")).collect().await;
    let text = final_text(&e);
    assert!(text.contains("十次：¥4.50（10 额度）"), "{text}");
    assert!(text.contains("https://chat.example.com/#buy"), "{text}");
    let none = harness(FAST);
    let e = none.engine.handle(msg("1", "充值")).collect().await;
    assert!(final_text(&e).contains("暂未开放"));
    assert_eq!(yuan(5), "0.05");
    assert_eq!(yuan(-1234), "-12.34");
}

#[tokio::test]
async fn another_key_can_pay_and_memory_can_be_off() {
    let h = harness(FAST);
    let group = UserKey::new(Platform::Zsxq, "g1", "_group");
    let payer = h.store.resolve_identity(&group, None).await.unwrap();
    h.store
        .grant(payer, 10, EntryKind::Grant, "t", "g", now_ms())
        .await
        .unwrap();
    let mut inbound = Inbound::text(UserKey::new(Platform::Zsxq, "g1", "42"), "t1", "q");
    inbound.bill_to = Some(group);
    inbound.remember = false;
    let asker_key = inbound.key.clone();
    let e = h.engine.handle(inbound).collect().await;
    assert_eq!(final_text(&e), "Hello, world");
    let s = h.engine.settings();
    let asker = h.store.identity(&asker_key).await.unwrap().unwrap();
    // The asker's free credits are untouched; the payer's free credits went first.
    assert_eq!(
        h.store
            .balance(asker, s.today(), s.free_daily)
            .await
            .unwrap()
            .free_left,
        5
    );
    assert_eq!(
        h.store
            .balance(payer, s.today(), s.free_daily)
            .await
            .unwrap()
            .free_left,
        3
    );
    assert!(
        h.store
            .conversation(&asker_key.to_string())
            .await
            .unwrap()
            .is_empty()
    );
}

#[test]
fn fill_replaces_placeholders() {
    assert_eq!(fill("{a}+{b}={a}", &[("a", "1"), ("b", "2")]), "1+2=1");
}

// === engine depth: content rules, keyword replies, models, roles ===

fn two_models(c: &mut Config) {
    c.llm.models.push(crate::config::ModelConfig {
        name: "big".into(),
        credits: 3,
        paid_only: true,
        ..crate::config::ModelConfig::default()
    });
    c.llm.models.push(crate::config::ModelConfig {
        name: "staff".into(),
        groups: vec!["team".into()],
        ..crate::config::ModelConfig::default()
    });
    c.roles = vec![crate::config::RoleConfig {
        id: "coder".into(),
        name: "程序员".into(),
        prompt: "You are a coder.".into(),
    }];
}

#[tokio::test]
async fn users_choose_models_within_their_permissions() {
    let h = harness_with(FAST, two_models);
    let list = h.engine.handle(msg("1", "/model")).collect().await;
    assert!(
        final_text(&list).contains("big") && final_text(&list).contains("🔒"),
        "{list:?}"
    );
    let refused = h.engine.handle(msg("2", "/model big")).collect().await;
    assert!(
        matches!(
            &refused,
            ReplyEvent::Failed {
                kind: FailureKind::NotAllowed,
                ..
            }
        ),
        "{refused:?}"
    );
    h.store
        .grant(h.uid().await, 10, EntryKind::Grant, "t", "g1", now_ms())
        .await
        .unwrap();
    let chosen = h.engine.handle(msg("3", "/model BIG")).collect().await;
    assert!(final_text(&chosen).contains("big"), "{chosen:?}");
    let answered = h.engine.handle(msg("4", "hi")).collect().await;
    assert_eq!(final_text(&answered), "Hello, world");
    assert_eq!(
        h.llm.last_request.lock().unwrap().as_ref().unwrap().model,
        "big"
    );
    // Group models: refused until an admin adds the user to the group.
    let refused = h.engine.handle(msg("5", "/model staff")).collect().await;
    assert!(matches!(
        refused,
        ReplyEvent::Failed {
            kind: FailureKind::NotAllowed,
            ..
        }
    ));
    h.store
        .change_groups(h.uid().await, &["team".into()], &[])
        .await
        .unwrap();
    let chosen = h.engine.handle(msg("6", "/model staff")).collect().await;
    assert!(final_text(&chosen).contains("staff"));
    let unknown = h.engine.handle(msg("7", "/model nope")).collect().await;
    assert!(final_text(&unknown).contains("nope"));
    // /v1 checks the same permission by name.
    h.store
        .change_groups(h.uid().await, &[], &["team".into()])
        .await
        .unwrap();
    let req = ApiRequest {
        model: "staff".into(),
        messages: vec![Message::new("user", "hi")],
        max_completion_tokens: None,
        legacy_max_tokens: false,
        streamed: true,
        extra: serde_json::Map::new(),
        reference: "api:perm".into(),
        platform: Platform::Api,
    };
    let event = h.engine.complete(h.uid().await, req).collect().await;
    assert!(matches!(
        event,
        ReplyEvent::Failed {
            kind: FailureKind::NotAllowed,
            ..
        }
    ));
}

#[tokio::test]
async fn roles_and_scope_defaults_set_the_prompt_and_show_in_quota() {
    let h = harness_with(FAST, |c| {
        two_models(c);
        c.scopes = vec![crate::config::ScopeConfig {
            scope: "telegram:main".into(),
            model: None,
            role: Some("coder".into()),
            voice_reply: false,
        }];
    });
    h.engine.handle(msg("1", "hi")).collect().await;
    let system = |h: &Harness| {
        h.llm
            .last_request
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .messages[0]
            .text()
    };
    assert_eq!(system(&h), "You are a coder.", "the scope's default role");
    let quota = h.engine.handle(msg("2", "/quota")).collect().await;
    assert!(final_text(&quota).contains("程序员"), "{quota:?}");
    let reset = h.engine.handle(msg("3", "/role 默认")).collect().await;
    assert!(
        final_text(&reset).contains("程序员"),
        "back to the scope's role: {reset:?}"
    );
    let unknown = h.engine.handle(msg("4", "/role pirate")).collect().await;
    assert!(final_text(&unknown).contains("pirate"));
    let list = h.engine.handle(msg("5", "角色")).collect().await;
    assert!(final_text(&list).contains("coder"), "{list:?}");
    // Without a scope default, the chosen role applies, and "default" returns to the plain
    // system prompt.
    let h = harness_with(FAST, two_models);
    h.engine.handle(msg("1", "/role coder")).collect().await;
    h.engine.handle(msg("2", "hi")).collect().await;
    assert_eq!(system(&h), "You are a coder.");
    h.engine.handle(msg("3", "/role default")).collect().await;
    h.engine.handle(msg("4", "hi again")).collect().await;
    assert_eq!(system(&h), h.engine.settings().system_prompt);
    // A command word followed by text is not a command.
    let event = h
        .engine
        .handle(msg("5", "/modelling is fun"))
        .collect()
        .await;
    assert!(
        matches!(
            event,
            ReplyEvent::Failed {
                kind: FailureKind::InsufficientQuota,
                ..
            }
        ),
        "not a command: it reached the quota check ({event:?})"
    );
}
