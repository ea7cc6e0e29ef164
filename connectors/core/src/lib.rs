//! Shared vocabulary of chatrelay: what every connector hands to the engine and gets back.
//!
//! # Layout
//! - [`UserKey`] and [`Platform`]: who sent a message, on which platform and account.
//! - [`Capabilities`]: what a platform can show (reply deadline, push, streaming mode,
//!   length limit, markup), so the engine writes one answer and connectors render it.
//! - [`Inbound`]: one user message, already verified, decrypted and parsed by a connector.
//! - [`Reply`] / [`ReplyEvent`]: the engine's answer, a stream of text deltas closed by a
//!   [`ReplyEvent::Final`] (with token usage) or a [`ReplyEvent::Failed`] (a user-facing text).
//! - [`Handler`]: the one entry point connectors call.
//! - [`split`]: splitting long answers into messages a platform accepts.
//! - [`voice`]: voice messages (the platform's transcript, or a source to download the audio).
//!
//! Nothing here does I/O or knows any wire format.

pub mod split;
pub mod voice;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The platforms chatrelay talks to. The short name is the prefix of a [`UserKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// WeChat Official Account (公众号).
    Mp,
    /// WeCom (企业微信) app, AI bot or group robot.
    Wecom,
    /// zsxq (知识星球) Q&A.
    Zsxq,
    /// Telegram bot.
    Tg,
    /// chatrelay's own web chat.
    Web,
    /// The OpenAI-compatible `/v1` API.
    Api,
}

impl Platform {
    /// Every platform, in a stable order.
    pub const ALL: [Platform; 6] = [
        Platform::Mp,
        Platform::Wecom,
        Platform::Zsxq,
        Platform::Tg,
        Platform::Web,
        Platform::Api,
    ];

    /// The short name used in keys, logs and metrics labels.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Mp => "mp",
            Platform::Wecom => "wecom",
            Platform::Zsxq => "zsxq",
            Platform::Tg => "tg",
            Platform::Web => "web",
            Platform::Api => "api",
        }
    }

    /// What this platform can show, as the engine should assume by default.
    #[must_use]
    pub fn capabilities(self) -> Capabilities {
        match self {
            // WeChat waits 5 s per try; answers beyond it go by push or with the next message.
            Platform::Mp => Capabilities {
                sync_deadline: Some(Duration::from_millis(4500)),
                can_push: true,
                streaming: StreamMode::None,
                max_len: Some(LengthLimit::Bytes(2048)),
                markup: Markup::Plain,
            },
            Platform::Wecom => Capabilities {
                sync_deadline: None,
                can_push: true,
                streaming: StreamMode::Snapshot,
                max_len: Some(LengthLimit::Bytes(2048)),
                markup: Markup::Markdown,
            },
            Platform::Zsxq => Capabilities {
                sync_deadline: None,
                can_push: true,
                streaming: StreamMode::None,
                max_len: Some(LengthLimit::Chars(10_000)),
                markup: Markup::Plain,
            },
            Platform::Tg => Capabilities {
                sync_deadline: None,
                can_push: true,
                streaming: StreamMode::Edit,
                max_len: Some(LengthLimit::Utf16(4096)),
                markup: Markup::Html,
            },
            Platform::Web | Platform::Api => Capabilities {
                sync_deadline: None,
                can_push: false,
                streaming: StreamMode::Sse,
                max_len: None,
                markup: Markup::Markdown,
            },
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Platform {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| KeyError::UnknownPlatform(s.to_owned()))
    }
}

/// Why a string is not a valid [`UserKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The prefix names no platform.
    #[error("unknown platform {0:?}")]
    UnknownPlatform(String),
    /// The key lacks a part, or a part is empty.
    #[error("malformed user key {0:?}: expected platform:account:user (web:user for the web)")]
    Malformed(String),
}

/// Who sent a message: platform, the account on it (an app id, a corp id, a bot id) and the
/// platform's own user id. Written `mp:main:o6_bm...`; web keys have no account: `web:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserKey {
    /// The platform.
    pub platform: Platform,
    /// The configured account id on that platform (`[[wechat_mp]] id`...). Empty for the web.
    pub account: String,
    /// The platform's user id (openid, WeCom userid, Telegram user id...).
    pub user: String,
}

impl UserKey {
    /// Builds a key. Colons are not allowed in `account`; they are in `user`.
    #[must_use]
    pub fn new(platform: Platform, account: impl Into<String>, user: impl Into<String>) -> Self {
        Self {
            platform,
            account: account.into(),
            user: user.into(),
        }
    }
}

impl fmt::Display for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.account.is_empty() {
            write!(f, "{}:{}", self.platform, self.user)
        } else {
            write!(f, "{}:{}:{}", self.platform, self.account, self.user)
        }
    }
}

impl FromStr for UserKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || KeyError::Malformed(s.to_owned());
        let (platform, rest) = s.split_once(':').ok_or_else(malformed)?;
        let platform: Platform = platform.parse()?;
        let (account, user) = match platform {
            Platform::Web | Platform::Api => ("", rest),
            _ => rest.split_once(':').ok_or_else(malformed)?,
        };
        if user.is_empty()
            || (account.is_empty() && !matches!(platform, Platform::Web | Platform::Api))
        {
            return Err(malformed());
        }
        Ok(UserKey::new(platform, account, user))
    }
}

impl Serialize for UserKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UserKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How a platform shows an answer that is still being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamMode {
    /// Only the whole answer can be sent.
    None,
    /// One message is edited as the answer grows (Telegram).
    Edit,
    /// The platform polls and receives the whole text so far (WeCom AI bot).
    Snapshot,
    /// Server-sent events with deltas (web, `/v1`).
    Sse,
}

/// The unit in which a platform limits one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LengthLimit {
    /// UTF-8 bytes (WeChat, WeCom).
    Bytes(usize),
    /// UTF-16 code units (Telegram).
    Utf16(usize),
    /// Unicode scalar values.
    Chars(usize),
}

/// What markup a platform renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Markup {
    /// Plain text; markdown is shown as typed.
    Plain,
    /// Markdown.
    Markdown,
    /// A subset of HTML (Telegram).
    Html,
}

/// What a platform can do with an answer; connectors render the engine's markdown with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// How long the platform waits for a synchronous reply, if it waits at all.
    pub sync_deadline: Option<Duration>,
    /// Whether a reply can be sent later, outside the request that asked.
    pub can_push: bool,
    /// How an answer in progress can be shown.
    pub streaming: StreamMode,
    /// The longest single message, if limited.
    pub max_len: Option<LengthLimit>,
    /// The markup the platform renders.
    pub markup: Markup,
}

/// One user message, verified and parsed by a connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The sender.
    pub key: UserKey,
    /// The platform's id for this message (MsgId...), or one the connector derives
    /// deterministically, so that a redelivered message has the same id. Used for dedupe
    /// and as the quota reference.
    pub message_id: String,
    /// The text the user typed (or a voice message's recognition).
    pub text: String,
    /// The sender's display name, when the platform gives one.
    pub display_name: Option<String>,
    /// What the platform can show.
    pub capabilities: Capabilities,
    /// Who pays for the answer, when not the sender (a zsxq group pays for its members).
    pub bill_to: Option<UserKey>,
    /// Whether the conversation is remembered (off for one-shot questions, e.g. zsxq).
    pub remember: bool,
    /// Pictures the user sent, as URLs the engine may download (they can carry a platform
    /// token, e.g. Telegram's file URLs: never log them).
    pub images: Vec<String>,
    /// A voice message: the engine takes its text from the platform's transcript or by
    /// transcribing the audio, and treats it as plain chat (never a command).
    pub voice: Option<voice::Voice>,
}

impl Inbound {
    /// A text message with the platform's default capabilities.
    #[must_use]
    pub fn text(key: UserKey, message_id: impl Into<String>, text: impl Into<String>) -> Self {
        let capabilities = key.platform.capabilities();
        Self {
            key,
            message_id: message_id.into(),
            text: text.into(),
            display_name: None,
            capabilities,
            bill_to: None,
            remember: true,
            images: Vec::new(),
            voice: None,
        }
    }
}

/// Token counts reported by the LLM (or estimated when it reports none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens in the answer.
    pub completion_tokens: u64,
}

impl Usage {
    /// Prompt plus completion tokens.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// Why an answer failed, in terms a connector can map to its platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The user has no credits left for this.
    InsufficientQuota,
    /// The user sent too many messages too quickly.
    RateLimited,
    /// The user is banned.
    Banned,
    /// The request names a model that is not configured.
    UnknownModel,
    /// The request itself is invalid (empty, too long...).
    InvalidRequest,
    /// The LLM failed or timed out.
    Upstream,
    /// The daemon is shutting down or its store failed.
    Unavailable,
    /// The message was already answered (a redelivery after the answer left memory, e.g.
    /// after a restart); connectors acknowledge it without answering again.
    Duplicate,
    /// A content rule refused the question (the message is the rule's refusal text).
    Refused,
    /// The user may not use the requested model (paid users or named groups only).
    NotAllowed,
}

/// One event of a [`Reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyEvent {
    /// More answer text (markdown).
    Delta(String),
    /// The answer is complete. `text` is the whole answer; `usage` is `None` for answers the
    /// engine made itself (commands, canned texts).
    Final {
        /// The whole answer.
        text: String,
        /// The LLM's token usage, when an LLM answered.
        usage: Option<Usage>,
        /// Credits charged for this answer.
        charged: u64,
        /// Pictures that belong to the answer (generated images), for platforms that can show
        /// them; `text` links them too, for those that cannot.
        images: Vec<String>,
    },
    /// The answer failed; `message` is safe to show to the user as is.
    Failed {
        /// What kind of failure.
        kind: FailureKind,
        /// A short user-facing text (configurable, Chinese by default).
        message: String,
    },
}

impl ReplyEvent {
    /// Whether this event ends the reply.
    #[must_use]
    pub fn is_terminal(&self) -> bool {
        !matches!(self, ReplyEvent::Delta(_))
    }

    /// What to show the user for this event: the answer, or the failure's message; `None`
    /// for a duplicate, which needs no answer.
    #[must_use]
    pub fn user_text(&self) -> Option<String> {
        match self {
            ReplyEvent::Final { text, .. } => Some(text.clone()),
            ReplyEvent::Failed {
                kind: FailureKind::Duplicate,
                ..
            } => None,
            ReplyEvent::Failed { message, .. } => Some(message.clone()),
            ReplyEvent::Delta(d) => Some(d.clone()),
        }
    }
}

/// The engine's answer to one [`Inbound`]: zero or more [`ReplyEvent::Delta`]s, then exactly
/// one terminal event. Dropping a `Reply` tells the engine nobody listens any more; it then
/// stops the LLM call.
#[derive(Debug)]
pub struct Reply {
    rx: mpsc::Receiver<Slot>,
}

/// What the reply channel carries: a pointer. tokio's channel allocates its slots 32 at a
/// time, each as large as the item, and a `/v1` stream holds its channel open as long as
/// it streams: 32 boxes are 256 bytes where 32 events were ~2.5 KB (issue 21).
type Slot = Box<ReplyEvent>;

/// The sending half of a [`Reply`], held by whoever produces the answer.
#[derive(Debug, Clone)]
pub struct ReplySender {
    tx: mpsc::Sender<Slot>,
}

impl Reply {
    /// A connected sender and reply. The channel is bounded so a slow reader slows the
    /// producer instead of buffering a whole answer twice.
    #[must_use]
    pub fn channel() -> (ReplySender, Reply) {
        let (tx, rx) = mpsc::channel(64);
        (ReplySender { tx }, Reply { rx })
    }

    /// A reply that is a single finished text (command answers, canned messages).
    #[must_use]
    pub fn text(text: impl Into<String>) -> Reply {
        Self::ready(ReplyEvent::Final {
            text: text.into(),
            usage: None,
            charged: 0,
            images: Vec::new(),
        })
    }

    /// A reply that is a single failure.
    #[must_use]
    pub fn failed(kind: FailureKind, message: impl Into<String>) -> Reply {
        Self::ready(ReplyEvent::Failed {
            kind,
            message: message.into(),
        })
    }

    fn ready(event: ReplyEvent) -> Reply {
        let (tx, rx) = mpsc::channel(1);
        // A fresh channel of capacity 1 always has room.
        let _ = tx.try_send(Box::new(event));
        Reply { rx }
    }

    /// The next event; `None` once the terminal event was read (or the producer vanished).
    pub async fn next(&mut self) -> Option<ReplyEvent> {
        self.rx.recv().await.map(|event| *event)
    }

    /// Waits for the whole answer. A producer that vanishes without a terminal event is
    /// reported as [`FailureKind::Unavailable`].
    pub async fn collect(mut self) -> ReplyEvent {
        let mut text = String::new();
        while let Some(event) = self.next().await {
            match event {
                ReplyEvent::Delta(d) => text.push_str(&d),
                terminal => return terminal,
            }
        }
        ReplyEvent::Failed {
            kind: FailureKind::Unavailable,
            message: if text.is_empty() {
                "answer interrupted".to_owned()
            } else {
                text
            },
        }
    }

    /// Turns the reply into a stream of events.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = ReplyEvent> + Send + 'static {
        futures_util::stream::unfold(self, |mut reply| async move {
            let event = reply.next().await?;
            Some((event, reply))
        })
    }
}

impl ReplySender {
    /// Sends an event; `false` when the reader is gone (the answer should stop).
    pub async fn send(&self, event: ReplyEvent) -> bool {
        self.tx.send(Box::new(event)).await.is_ok()
    }

    /// Resolves once the reader has dropped the [`Reply`].
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Whether the reader has dropped the [`Reply`].
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The engine, as connectors see it. Implemented by `chatrelay`'s bot; connectors hold an
/// `Arc<dyn Handler>` and call it for every verified message.
pub trait Handler: Send + Sync + 'static {
    /// Starts answering `inbound` and returns at once; the answer arrives on the [`Reply`].
    /// Redelivered messages (same key and message id) join the answer already in progress
    /// or get the finished one again, so one question costs one LLM call.
    fn handle(&self, inbound: Inbound) -> Reply;
}

#[cfg(test)]
mod tests {

    /// The reply channel's slots are pointers (see [`Slot`]): its first block of 32 stays
    /// small while a stream is open.
    #[test]
    fn the_reply_channel_carries_pointers() {
        assert_eq!(std::mem::size_of::<Slot>(), std::mem::size_of::<usize>());
        assert!(std::mem::size_of::<ReplyEvent>() > 4 * std::mem::size_of::<usize>());
    }

    use super::*;

    #[test]
    fn user_key_round_trips() {
        for s in [
            "mp:main:o6_bmabc",
            "wecom:corp:zhangsan",
            "tg:main:12345",
            "web:42",
        ] {
            let key: UserKey = s.parse().unwrap();
            assert_eq!(key.to_string(), s);
        }
        let key: UserKey = "zsxq:group123:8888".parse().unwrap();
        assert_eq!(key.platform, Platform::Zsxq);
        assert_eq!(key.account, "group123");
        assert_eq!(key.user, "8888");
        // The user part may itself contain colons.
        let key: UserKey = "tg:main:a:b".parse().unwrap();
        assert_eq!(key.user, "a:b");
    }

    #[test]
    fn user_key_rejects_malformed() {
        for s in ["", "mp", "mp:main", "mp::x", "mp:main:", "xx:a:b", "web:"] {
            assert!(s.parse::<UserKey>().is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn user_key_serde_is_its_string_form() {
        let key = UserKey::new(Platform::Tg, "main", "7");
        assert_eq!(serde_json::to_string(&key).unwrap(), "\"tg:main:7\"");
        let back: UserKey = serde_json::from_str("\"tg:main:7\"").unwrap();
        assert_eq!(back, key);
        assert!(serde_json::from_str::<UserKey>("\"nope\"").is_err());
    }

    #[tokio::test]
    async fn reply_collects_deltas_and_final() {
        let (tx, reply) = Reply::channel();
        tokio::spawn(async move {
            tx.send(ReplyEvent::Delta("a".into())).await;
            tx.send(ReplyEvent::Final {
                text: "ab".into(),
                usage: None,
                charged: 1,
                images: Vec::new(),
            })
            .await;
        });
        match reply.collect().await {
            ReplyEvent::Final { text, charged, .. } => {
                assert_eq!(text, "ab");
                assert_eq!(charged, 1);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn user_text_of_events() {
        let dup = ReplyEvent::Failed {
            kind: FailureKind::Duplicate,
            message: String::new(),
        };
        assert_eq!(dup.user_text(), None);
        let failed = ReplyEvent::Failed {
            kind: FailureKind::Upstream,
            message: "sorry".into(),
        };
        assert_eq!(failed.user_text().as_deref(), Some("sorry"));
        let done = ReplyEvent::Final {
            text: "hi".into(),
            usage: None,
            charged: 0,
            images: Vec::new(),
        };
        assert_eq!(done.user_text().as_deref(), Some("hi"));
    }

    #[tokio::test]
    async fn vanished_producer_is_a_failure() {
        let (tx, reply) = Reply::channel();
        tx.send(ReplyEvent::Delta("partial".into())).await;
        drop(tx);
        assert!(matches!(
            reply.collect().await,
            ReplyEvent::Failed {
                kind: FailureKind::Unavailable,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn dropping_the_reply_closes_the_sender() {
        let (tx, reply) = Reply::channel();
        assert!(!tx.is_closed());
        drop(reply);
        tx.closed().await;
        assert!(!tx.send(ReplyEvent::Delta("x".into())).await);
    }
}
