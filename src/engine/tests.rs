//! Engine tests with a scripted LLM backend and a temporary store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chatrelay_core::{FailureKind, Handler, Inbound, Platform, ReplyEvent, Usage, UserKey};
use chatrelay_openai::Message;
use chatrelay_storage::{EntryKind, Store, Turn, Uid};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::llm::{LlmBackend, LlmError, LlmEvent, LlmRequest, LlmStream};
use super::*;
use crate::config::Config;

#[derive(Clone, Copy)]
enum Script {
    /// Answers "pieces" one by one with a delay, then reports usage.
    Answer { delay_ms: u64, usage: Option<Usage> },
    /// Fails before streaming.
    Fail,
    /// Streams a piece then fails.
    FailMidway,
}

struct Scripted {
    script: Script,
    calls: AtomicUsize,
    /// Set when the stream was dropped before its end (the engine stopped the call).
    dropped_early: Arc<AtomicUsize>,
    last_request: std::sync::Mutex<Option<LlmRequest>>,
}

impl Scripted {
    fn new(script: Script) -> Arc<Self> {
        Arc::new(Self {
            script,
            calls: AtomicUsize::new(0),
            dropped_early: Arc::new(AtomicUsize::new(0)),
            last_request: std::sync::Mutex::new(None),
        })
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

struct DropFlag(Arc<AtomicUsize>, bool);
impl DropFlag {
    fn finish(&mut self) {
        self.1 = true;
    }
}
impl Drop for DropFlag {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

const PIECES: [&str; 3] = ["Hello", ", ", "world"];

impl LlmBackend for Scripted {
    fn stream(&self, req: LlmRequest) -> BoxFuture<'static, Result<LlmStream, LlmError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.last_request.lock().unwrap() = Some(req);
        let script = self.script;
        let dropped = self.dropped_early.clone();
        Box::pin(async move {
            match script {
                Script::Fail => Err(LlmError::Api {
                    status: 500,
                    kind: Some("server_error".into()),
                    code: None,
                    message: "boom".into(),
                    request_id: None,
                }),
                Script::FailMidway => Ok(futures_util::stream::iter(vec![
                    Ok(LlmEvent::Delta("partial".into())),
                    Err(LlmError::Incomplete),
                ])
                .boxed()),
                Script::Answer { delay_ms, usage } => {
                    // Counts a drop before the end: the engine stopped the call.
                    let flag = DropFlag(dropped, false);
                    let inner = async_stream(delay_ms, usage).boxed();
                    Ok(futures_util::stream::unfold(
                        (inner, flag),
                        |(mut inner, mut flag)| async move {
                            match inner.next().await {
                                Some(item) => Some((item, (inner, flag))),
                                None => {
                                    flag.finish();
                                    None
                                }
                            }
                        },
                    )
                    .boxed())
                }
            }
        })
    }

    fn name(&self) -> &'static str {
        "scripted"
    }

    fn image(&self, prompt: String) -> BoxFuture<'static, Result<Vec<String>, LlmError>> {
        let script = self.script;
        Box::pin(async move {
            match script {
                Script::Fail => Err(LlmError::Network("no route".into())),
                _ => Ok(vec![format!("https://img.example/{}.png", prompt.len())]),
            }
        })
    }
}

fn async_stream(
    delay_ms: u64,
    usage: Option<Usage>,
) -> impl futures_util::Stream<Item = Result<LlmEvent, LlmError>> + Send {
    futures_util::stream::iter(PIECES)
        .then(move |p| async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            Ok(LlmEvent::Delta(p.to_owned()))
        })
        .chain(futures_util::stream::iter(
            usage.map(|u| Ok(LlmEvent::Usage(u))),
        ))
}

struct Harness {
    engine: Engine,
    store: Store,
    llm: Arc<Scripted>,
}

fn harness_with(script: Script, edit: impl FnOnce(&mut Config)) -> Harness {
    let mut config = Config::default();
    config.llm.models = vec![crate::config::ModelConfig {
        name: config.llm.model.clone(),
        credits: 2,
        ..crate::config::ModelConfig::default()
    }];
    config.quota.free_daily = 5;
    edit(&mut config);
    let store = Store::open_temporary().unwrap();
    let llm = Scripted::new(script);
    let engine = Engine::new(
        store.clone(),
        llm.clone(),
        Settings::from_config(&config).unwrap(),
        CancellationToken::new(),
        TaskTracker::new(),
    );
    Harness { engine, store, llm }
}

fn harness(script: Script) -> Harness {
    harness_with(script, |_| {})
}

const FAST: Script = Script::Answer {
    delay_ms: 1,
    usage: Some(Usage {
        prompt_tokens: 10,
        completion_tokens: 3,
    }),
};

fn key() -> UserKey {
    UserKey::new(Platform::Tg, "main", "42")
}

fn msg(id: &str, text: &str) -> Inbound {
    Inbound::text(key(), id, text)
}

impl Harness {
    fn uid(&self) -> Uid {
        self.store.identity(&key()).unwrap().expect("user exists")
    }
    fn balance(&self) -> chatrelay_storage::Balance {
        let s = self.engine.settings();
        self.store
            .balance(self.uid(), s.today(), s.free_daily)
            .unwrap()
    }
}

fn final_text(event: &ReplyEvent) -> &str {
    match event {
        ReplyEvent::Final { text, .. } => text,
        other => panic!("expected a final answer, got {other:?}"),
    }
}

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
    let b = h.balance();
    assert_eq!(b.free_left, 3);
    assert_eq!(b.held, 0);
    let turns = h.store.conversation(&key().to_string()).unwrap();
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
    let uid = h.uid();
    let usage_entries = h
        .store
        .ledger(uid, 10)
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
        h.store.clone(),
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
    assert!(h.store.conversation(&key().to_string()).unwrap().is_empty());
    assert_eq!(h.llm.calls(), 1);
    assert_eq!(h.balance().free_left, 3);
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
        .unwrap();
    let usage = h.engine.handle(msg("2", "/redeem")).collect().await;
    assert!(final_text(&usage).contains("/redeem XXXX"), "{usage:?}");
    let typed = format!("兑换 {}", codes[0].to_lowercase());
    let ok = h.engine.handle(msg("3", &typed)).collect().await;
    assert!(final_text(&ok).contains("增加 40 额度"), "{ok:?}");
    assert_eq!(h.balance().paid, 40);
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
    assert_eq!(h.balance().paid, 40);
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
        let b = h.balance();
        assert_eq!((b.free_left, b.held, b.paid), (5, 0, 0));
        assert!(h.store.ledger(h.uid(), 10).unwrap().is_empty());
        assert!(h.store.conversation(&key().to_string()).unwrap().is_empty());
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
        .grant(h.uid(), 10, EntryKind::Grant, "test", "g1", now_ms())
        .unwrap();
    let event = h.engine.handle(msg("2", "hi")).collect().await;
    assert_eq!(final_text(&event), "Hello, world");
    let b = h.balance();
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
    h.store.set_banned(h.uid(), true, None).unwrap();
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

#[tokio::test]
async fn api_requests_are_metered_and_stop_when_the_reader_leaves() {
    let h = harness(Script::Answer {
        delay_ms: 50,
        usage: None,
    });
    let uid = h.store.create_user("api").unwrap().uid;
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
    let b = h.store.balance(uid, s.today(), s.free_daily).unwrap();
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
    let payer = h.store.resolve_identity(&group, None).unwrap();
    h.store
        .grant(payer, 10, EntryKind::Grant, "t", "g", now_ms())
        .unwrap();
    let mut inbound = Inbound::text(UserKey::new(Platform::Zsxq, "g1", "42"), "t1", "q");
    inbound.bill_to = Some(group);
    inbound.remember = false;
    let asker_key = inbound.key.clone();
    let e = h.engine.handle(inbound).collect().await;
    assert_eq!(final_text(&e), "Hello, world");
    let s = h.engine.settings();
    let asker = h.store.identity(&asker_key).unwrap().unwrap();
    // The asker's free credits are untouched; the payer's free credits went first.
    assert_eq!(
        h.store
            .balance(asker, s.today(), s.free_daily)
            .unwrap()
            .free_left,
        5
    );
    assert_eq!(
        h.store
            .balance(payer, s.today(), s.free_daily)
            .unwrap()
            .free_left,
        3
    );
    assert!(
        h.store
            .conversation(&asker_key.to_string())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn fill_replaces_placeholders() {
    assert_eq!(fill("{a}+{b}={a}", &[("a", "1"), ("b", "2")]), "1+2=1");
}

// === engine depth: content rules, keyword replies, models, roles ===

fn filter(
    id: &str,
    words: &[&str],
    apply_to: chatrelay_rules::ApplyTo,
) -> chatrelay_rules::FilterRuleConfig {
    let mut f = chatrelay_rules::FilterRuleConfig::new(id);
    f.words = words.iter().map(|w| (*w).to_owned()).collect();
    f.refusal = format!("refused by {id}");
    f.apply_to = apply_to;
    f
}

fn hits(h: &Harness) -> Vec<serde_json::Value> {
    h.store
        .checkpoints_with_prefix(HIT_PREFIX)
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
    assert_eq!(h.balance().free_left, 5, "nothing charged");
    let recorded = hits(&h);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["rule"], "law");
    assert_eq!(recorded[0]["direction"], "input");
    assert_eq!(recorded[0]["scope"], "telegram:main");
    assert_eq!(recorded[0]["uid"], h.uid().0);
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
    assert_eq!(hits(&h)[0]["direction"], "output");
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
    assert_eq!(h.balance().free_left, 5, "nor credits");
    // A banned user gets the ban, not the canned answers.
    h.store.set_banned(h.uid(), true, Some("test")).unwrap();
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
        .grant(h.uid(), 10, EntryKind::Grant, "t", "g1", now_ms())
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
        .change_groups(h.uid(), &["team".into()], &[])
        .unwrap();
    let chosen = h.engine.handle(msg("6", "/model staff")).collect().await;
    assert!(final_text(&chosen).contains("staff"));
    let unknown = h.engine.handle(msg("7", "/model nope")).collect().await;
    assert!(final_text(&unknown).contains("nope"));
    // /v1 checks the same permission by name.
    h.store
        .change_groups(h.uid(), &[], &["team".into()])
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
    let event = h.engine.complete(h.uid(), req).collect().await;
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

// === pictures ===

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
    assert_eq!(h.balance().free_left, 5, "nothing charged");
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
    assert_eq!(h.balance().free_left, 2);
    let history = h.store.conversation(&key().to_string()).unwrap();
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
    assert_eq!(h.balance().free_left, 5, "nothing charged");
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
    assert_eq!(h.balance().free_left, 2);
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
    assert_eq!(h.balance().free_left, 5, "a failed drawing costs nothing");

    let h = harness(FAST);
    let event = h.engine.handle(msg("1", "/image a cat")).collect().await;
    assert_eq!(final_text(&event), "暂未开放画图。");
}

/// Two stores on one PostgreSQL schema (two daemons' worth), when `CHATRELAY_TEST_PG_URL`
/// is set (`scripts/test` sets it); `None` otherwise.
pub(crate) fn shared_pair() -> Option<(Store, Store)> {
    let url = std::env::var("CHATRELAY_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let opts = chatrelay_storage::PgOptions {
        schema: Some(format!("t_{}_{nanos}", std::process::id())),
        ..chatrelay_storage::PgOptions::new(url)
    };
    Some((
        Store::open_postgres(&opts).unwrap(),
        Store::open_postgres(&opts).unwrap(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_another_daemon_joins_the_answer_through_the_database() {
    let Some((store_a, store_b)) = shared_pair() else {
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
    let uid = store_a.identity(&key()).unwrap().unwrap();
    let usage = store_a
        .ledger(uid, 10)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EntryKind::Usage)
        .count();
    assert_eq!(usage, 1, "charged once");
    // Whoever asks first delivers; the other daemon does not.
    assert!(b.claim_delivery("mp:x:77"));
    assert!(!a.claim_delivery("mp:x:77"));
    // WeChat's tries counted across the daemons they reached.
    let tries: Vec<u32> = [&a, &b, &a, &b]
        .iter()
        .map(|e| e.count_try("mp:x:78", 3))
        .collect();
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
        let b = h.store.balance(uid, s.today(), s.free_daily).unwrap();
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
    let uid = h.store.create_user("api").unwrap().uid;
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
        let uid = h.store.create_user("api").unwrap().uid;
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
    let uid = h.store.create_user("poor").unwrap().uid;
    h.store
        .grant(uid, 2, EntryKind::Grant, "t", "g:poor", 0)
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
    let platform_payer = h.store.resolve_identity(&key(), None).unwrap();
    h.store
        .grant(platform_payer, 2, EntryKind::Grant, "t", "g:platform", 0)
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
    let uid = h.store.create_user("poor").unwrap().uid;
    h.store
        .grant(uid, 2, EntryKind::Grant, "t", "g:endless", 0)
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
    let (engine, store) = (h.engine.clone(), h.store.clone());
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
        h.balance().free_left,
        0,
        "2 for the answer, 3 for the picture"
    );
    for _ in 0..2 {
        h.engine
            .refund_platform_undelivered(&asked, &answer, "test");
        h.engine
            .refund_platform_undelivered(&drawing, &picture, "test");
    }
    let refund = |reference: &str| {
        h.store
            .ledger_by_reference(&format!("undelivered:{reference}"))
            .unwrap()
            .map(|e| e.paid_delta)
    };
    // Each under the reference its charge has, once however often asked.
    assert!(
        h.store
            .ledger_by_reference("msg:tg:main:42#1")
            .unwrap()
            .is_some()
    );
    assert!(
        h.store
            .ledger_by_reference("img:tg:main:42#2")
            .unwrap()
            .is_some()
    );
    assert_eq!(refund("msg:tg:main:42#1"), Some(2));
    assert_eq!(refund("img:tg:main:42#2"), Some(3));
    assert_eq!(h.balance().paid, 5);
    // Both usage records say so (the picture's too, logged as model `image`).
    let records = usage_log(&h.store, h.uid());
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
        .refund_platform_undelivered(&msg("3", "q"), &failed, "test");
    assert_eq!(refund("msg:tg:main:42#3"), None);
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

/// The whole usage log of `uid`, newest first.
fn usage_log(store: &Store, uid: Uid) -> Vec<chatrelay_storage::UsageRecord> {
    store.usage(uid, None, 100).unwrap().records
}

#[tokio::test]
async fn the_usage_log_keeps_each_answer_with_its_charge_and_outcome() {
    let h = harness(FAST);
    h.engine.handle(msg("1", "hi")).collect().await;
    let records = usage_log(&h.store, h.uid());
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
    assert_eq!(usage_log(&h.store, h.uid()).len(), 1);

    // An answer an output rule cuts is logged as cut.
    let h = harness_with(FAST, |c| {
        c.filters = vec![filter("out", &["lo,wo"], chatrelay_rules::ApplyTo::Output)];
    });
    h.engine.handle(msg("1", "say hello")).collect().await;
    let records = usage_log(&h.store, h.uid());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, chatrelay_storage::UsageOutcome::Cut);
}

#[tokio::test]
async fn an_api_answer_stopped_by_its_reader_is_logged_as_stopped() {
    let h = harness(Script::Answer {
        delay_ms: 50,
        usage: None,
    });
    let uid = h.store.create_user("api").unwrap().uid;
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
        records = usage_log(&h.store, uid);
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
        let uid = h.store.create_user("u").unwrap().uid;
        let now = now_ms();
        for (n, at) in [now - 2 * 86_400_000, now - 3_600_000]
            .into_iter()
            .enumerate()
        {
            let id = h
                .store
                .reserve(uid, 1, &format!("r{n}"), 0, 5, i64::MAX)
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
                .unwrap();
        }
        h.engine.purge_old_records();
        let left = usage_log(&h.store, uid);
        assert_eq!(left.len(), kept, "usage_days = {days}");
        assert!(left[0].at_ms > now - 86_400_000);
        assert_eq!(
            h.store.ledger(uid, 10).unwrap().len(),
            2,
            "the ledger stays"
        );
        if days > 0 {
            // A finished pass: the next one starts an hour later, not at the next run.
            let id = h.store.reserve(uid, 1, "late", 0, 5, i64::MAX).unwrap();
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
                .unwrap();
            h.engine.purge_old_records();
            assert_eq!(usage_log(&h.store, uid).len(), 2);
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
    assert_eq!(h.balance().free_left, 9);
}

#[tokio::test]
async fn a_platform_conversation_continues_on_the_web_with_its_memory_and_is_charged() {
    let h = harness(FAST);
    h.engine.handle(msg("1", "hi")).collect().await;
    let uid = h.uid();
    let before = h.balance();
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
    assert_eq!(h.balance().free_left, before.free_left - 2);
    let turns = h.store.conversation(&key().to_string()).unwrap();
    let contents: Vec<&str> = turns.iter().map(|t| t.content.as_str()).collect();
    assert_eq!(contents, ["hi", "Hello, world", "again", "Hello, world"]);
    let log = usage_log(&h.store, uid);
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
    let member = h.engine.record_user(&key(), Some("guest")).unwrap();
    for uid in [expiring.uid, live.uid, member] {
        h.store
            .put_chat(uid, "w_1", "t", &[], None, 1, limits)
            .unwrap();
    }
    let now = crate::util::now_ms() + 10;
    h.engine.purge_guest_chats(now);
    assert!(h.store.chats(expiring.uid).unwrap().is_empty());
    assert_eq!(
        h.store.chats(live.uid).unwrap().len(),
        1,
        "token still works"
    );
    assert_eq!(
        h.store.chats(member).unwrap().len(),
        1,
        "a platform user named guest is no guest"
    );
    // Later, the other guest's token expires too.
    h.engine.purge_guest_chats(now + 3_600_000);
    assert!(h.store.chats(live.uid).unwrap().is_empty());
    assert_eq!(h.store.chats(member).unwrap().len(), 1);
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
            .unwrap();
    }
    h.engine.purge_old_records();
    let left = h.store.changes(None, 10).unwrap().records;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].path, "/admin/users/1/grant");
}
