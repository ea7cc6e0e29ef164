//! Engine tests with a scripted LLM backend and a temporary store: this file is the harness;
//! the tests are in the files beside it, by subject.

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
    /// The engine's own store (its domain interface), for checking what it wrote.
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
    let llm = Scripted::new(script);
    let engine = Engine::new(
        Store::open_temporary().unwrap(),
        llm.clone(),
        Settings::from_config(&config).unwrap(),
        CancellationToken::new(),
        TaskTracker::new(),
    );
    let store = engine.store().clone();
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
    async fn uid(&self) -> Uid {
        self.store
            .identity(&key())
            .await
            .unwrap()
            .expect("user exists")
    }
    async fn balance(&self) -> chatrelay_storage::Balance {
        let s = self.engine.settings();
        self.store
            .balance(self.uid().await, s.today(), s.free_daily)
            .await
            .unwrap()
    }
}

fn final_text(event: &ReplyEvent) -> &str {
    match event {
        ReplyEvent::Final { text, .. } => text,
        other => panic!("expected a final answer, got {other:?}"),
    }
}

/// A content rule `id` refusing `words` where `apply_to` says.
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

/// Two stores on one PostgreSQL schema (two daemons' worth), when `CHATRELAY_TEST_PG_URL`
/// is set (`scripts/test` sets it); `None` otherwise.
pub(crate) async fn shared_pair() -> Option<(Store, Store)> {
    let opts = chatrelay_storage::test_pg_options()?;
    Some((
        Store::open_postgres(&opts).await.unwrap(),
        Store::open_postgres(&opts).await.unwrap(),
    ))
}

/// The whole usage log of `uid`, newest first.
async fn usage_log(store: &Store, uid: Uid) -> Vec<chatrelay_storage::UsageRecord> {
    store.usage(uid, None, 100).await.unwrap().records
}

mod api;
mod chat;
mod logs;
mod pictures;
mod rules;
