//! Content rules on questions and streamed answers, and keyword replies.

use super::*;

async fn hits(h: &Harness) -> Vec<serde_json::Value> {
    h.store
        .checkpoints_with_prefix(HIT_PREFIX)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, v)| serde_json::from_str(&v).unwrap())
        .collect()
}

#[tokio::test]
async fn a_question_hitting_a_rule_is_refused_free_and_recorded() {
    let h = harness_with(FAST, |c| {
        c.filters = vec![filter("law", &["敏感词"], chatrelay_rules::ApplyTo::Input)];
    });
    let event = h
        .engine
        .handle(msg("1", "请问 敏 感 词 是什么"))
        .collect()
        .await;
    assert_eq!(
        event,
        ReplyEvent::Failed {
            kind: FailureKind::Refused,
            message: "refused by law".into()
        }
    );
    assert_eq!(h.llm.calls(), 0, "no LLM call");
    assert_eq!(h.balance().await.free_left, 5, "nothing charged");
    let recorded = hits(&h).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["rule"], "law");
    assert_eq!(recorded[0]["direction"], "input");
    assert_eq!(recorded[0]["scope"], "telegram:main");
    assert_eq!(recorded[0]["uid"], h.uid().await.0);
    // An innocent question goes through.
    let ok = h.engine.handle(msg("2", "天气如何")).collect().await;
    assert_eq!(final_text(&ok), "Hello, world");
}

#[tokio::test]
async fn a_streamed_answer_is_cut_when_an_output_rule_hits() {
    // "lo, wo" spans two streamed pieces ("Hello", ", ", "world").
    let h = harness_with(FAST, |c| {
        c.filters = vec![filter("out", &["lo,wo"], chatrelay_rules::ApplyTo::Output)];
        c.bot.texts.answer_cut = "[cut]".into();
    });
    let mut reply = h.engine.handle(msg("1", "say hello"));
    let mut deltas = String::new();
    let end = loop {
        match reply.next().await.expect("an end") {
            ReplyEvent::Delta(d) => deltas.push_str(&d),
            other => break other,
        }
    };
    let text = final_text(&end).to_owned();
    assert!(!text.contains("world"), "{text}");
    assert!(text.ends_with("[cut]"), "{text}");
    assert!(
        !deltas.contains("world") && deltas.ends_with("[cut]"),
        "{deltas}"
    );
    assert_eq!(hits(&h).await[0]["direction"], "output");
    assert_eq!(
        h.llm.dropped_early.load(Ordering::SeqCst),
        1,
        "the upstream call stopped"
    );
    // Input-only rules do not touch answers, and scoped rules stay in their scope.
    let h = harness_with(FAST, |c| {
        c.filters = vec![filter("in", &["world"], chatrelay_rules::ApplyTo::Input), {
            let mut f = filter("elsewhere", &["world"], chatrelay_rules::ApplyTo::Both);
            f.scopes = vec!["wechat_mp".into()];
            f
        }];
    });
    let event = h.engine.handle(msg("1", "say hello")).collect().await;
    assert_eq!(final_text(&event), "Hello, world");
}

#[tokio::test]
async fn keyword_replies_answer_before_the_llm_for_free_by_priority() {
    let h = harness_with(FAST, |c| {
        let rule = |id: &str, kind, pattern: &str, reply: &str, priority| {
            chatrelay_rules::KeywordRuleConfig {
                id: id.into(),
                kind,
                patterns: vec![pattern.into()],
                reply: reply.into(),
                priority,
                scopes: Vec::new(),
                case_sensitive: false,
            }
        };
        c.keywords = vec![
            rule(
                "exact",
                chatrelay_rules::KeywordMatch::Exact,
                "价格",
                "exact answer",
                0,
            ),
            rule(
                "contains",
                chatrelay_rules::KeywordMatch::Contains,
                "价格",
                "contains answer",
                5,
            ),
            rule(
                "re",
                chatrelay_rules::KeywordMatch::Regex,
                r"^联系(\w+)$",
                "call $1",
                0,
            ),
        ];
    });
    let event = h.engine.handle(msg("1", "价格")).collect().await;
    assert_eq!(
        final_text(&event),
        "contains answer",
        "the higher priority wins"
    );
    let event = h.engine.handle(msg("2", "联系客服")).collect().await;
    assert_eq!(final_text(&event), "call 客服");
    assert_eq!(h.llm.calls(), 0, "keyword answers cost no LLM call");
    assert_eq!(h.balance().await.free_left, 5, "nor credits");
    // A banned user gets the ban, not the canned answers.
    h.store
        .set_banned(h.uid().await, true, Some("test"))
        .await
        .unwrap();
    let event = h.engine.handle(msg("3", "价格")).collect().await;
    assert!(
        matches!(
            event,
            ReplyEvent::Failed {
                kind: FailureKind::Banned,
                ..
            }
        ),
        "{event:?}"
    );
}
