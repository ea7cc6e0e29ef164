//! Typed configuration: `chatrelay.toml`, then `CHATRELAY__SECTION__KEY` environment overrides,
//! then `*_file` secrets, then validation.
//!
//! Loading never stops at the first problem: every unknown key (with "did you mean"), type
//! error, missing key and invalid value is collected as a [`Problem`] naming its key in the
//! operator's words (see `read`), so `check-config` can list them all at once. Secrets are [`Secret`]s, redacted in `Debug` and in the summary.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

mod read;

/// Prefix of environment overrides: `CHATRELAY__LLM__BASE_URL` sets `[llm] base_url`.
pub const ENV_PREFIX: &str = "CHATRELAY__";

/// Keys that hold secrets; each may instead be given as `<key>_file` (a path whose contents,
/// trailing newline trimmed, are the value), for systemd credentials.
const SECRET_KEYS: &[&str] = &[
    "admin_token",
    "api_keys",
    "app_secret",
    "token",
    "encoding_aes_key",
    "secret",
    "access_token",
    "api_v3_key",
    "previous_encoding_aes_key",
    "webhook",
    "webhook_secret",
    "url",
];

/// A secret string: never printed by `Debug`, redacted when serialized for the summary.
/// Accepts TOML/env numbers too, so `CHATRELAY__SERVER__ADMIN_TOKEN=123456...` works.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used, never to log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "***" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        lenient_string(d).map(Secret)
    }
}

/// Deserializes a string, accepting numbers and booleans as their text (env values are
/// parsed as TOML, so a numeric token would otherwise be an integer).
fn lenient_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_any(V)
}

fn lenient_opt_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    lenient_string(d).map(Some)
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[storage]`
    pub storage: StorageConfig,
    /// `[llm]` and `[[llm.models]]`
    pub llm: LlmConfig,
    /// `[quota]`
    pub quota: QuotaConfig,
    /// `[bot]`: commands, limits and user-facing texts
    pub bot: BotConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[[wechat_mp]]`: WeChat Official Accounts.
    pub wechat_mp: Vec<WechatMpConfig>,
    /// `[[products]]`: the credit packs on sale.
    pub products: Vec<ProductConfig>,
    /// `[pay]`: payment channels and order handling.
    pub pay: PayConfig,
    /// `[web]`: the chat page.
    pub web: WebConfig,
    /// `[[wecom]]`: WeCom self-built apps.
    pub wecom: Vec<WecomConfig>,
    /// `[[wecom_aibot]]`: WeCom AI bots (智能机器人).
    pub wecom_aibot: Vec<WecomAibotConfig>,
    /// `[[wecom_robot]]`: WeCom group robots that receive operators' alerts.
    pub wecom_robot: Vec<WecomRobotConfig>,
    /// `[[zsxq]]`: zsxq (知识星球) groups whose questions are answered.
    pub zsxq: Vec<ZsxqConfig>,
    /// `[[telegram]]`: Telegram bots.
    pub telegram: Vec<TelegramConfig>,
    /// `[[filters]]`: sensitive-word rules on questions and answers.
    pub filters: Vec<chatrelay_rules::FilterRuleConfig>,
    /// `[[keywords]]`: answers given before (and instead of) the LLM, at no cost.
    pub keywords: Vec<chatrelay_rules::KeywordRuleConfig>,
    /// `[[roles]]`: named system prompts users can switch to.
    pub roles: Vec<RoleConfig>,
    /// `[[scopes]]`: the default model and role of a platform or account.
    pub scopes: Vec<ScopeConfig>,
    /// `[moderation]`: an OpenAI-compatible moderation endpoint checking questions after the
    /// word filter.
    pub moderation: Option<ModerationConfig>,
    /// `[images]`: picture generation (`/image a cat in the snow`).
    pub images: Option<ImagesConfig>,
    /// The directory relative paths (word lists) are read from: the config file's.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[[roles]]`: a named system prompt (translator, coder...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// What users type to choose it (`/role coder`); `[A-Za-z0-9_-]+`.
    pub id: String,
    /// A display name (`程序员`).
    #[serde(default)]
    pub name: String,
    /// The system prompt.
    pub prompt: String,
}

/// `[[scopes]]`: defaults for one platform (`telegram`) or account (`wechat_mp:main`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeConfig {
    /// `web`, `v1`, `telegram`, `telegram:<id>`, `wechat_mp:<id>`, `wecom:<id>`,
    /// `zsxq:<id>`. An account entry wins over its platform's.
    pub scope: String,
    /// The model its users get until they choose one.
    #[serde(default)]
    pub model: Option<String>,
    /// The role its users get until they choose one.
    #[serde(default)]
    pub role: Option<String>,
}

/// `[images]`: the image-generation command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// The image model at its upstream (`dall-e-3`, `cogview-4`, `wanx-v1`...).
    pub model: String,
    /// Which upstream draws (`[[llm.upstreams]] id`, default `default`).
    #[serde(default)]
    pub upstream: Option<String>,
    /// Credits per picture.
    #[serde(default = "ten")]
    pub credits: u64,
    /// Picture size, as the provider names it (`1024x1024`); unset leaves its default.
    #[serde(default)]
    pub size: Option<String>,
}

fn ten() -> u64 {
    10
}

/// `[moderation]`: the second stage of content checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModerationConfig {
    /// API root (`https://api.openai.com/v1`); `{base_url}/moderations` is called.
    pub base_url: String,
    /// Its API key (none for a local service).
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// The moderation model (`omni-moderation-latest`); empty leaves the provider's default.
    #[serde(default)]
    pub model: String,
    /// Shown when a question is flagged.
    #[serde(default = "default_moderation_refusal")]
    pub refusal: String,
    /// What to do when the endpoint fails: `false` (default) lets the question through,
    /// `true` refuses it.
    #[serde(default)]
    pub fail_closed: bool,
}

fn default_moderation_refusal() -> String {
    chatrelay_rules::DEFAULT_REFUSAL.to_owned()
}

/// `[[llm.upstreams]]`: one more OpenAI-compatible provider (DeepSeek, Qwen, GLM, a local
/// model...). `[llm] base_url` and `api_keys` are the upstream `default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Named by `[[llm.models]] upstream`; `[A-Za-z0-9_-]+`, not `default`.
    pub id: String,
    /// Its API root, ending in `/v1` for most providers.
    pub base_url: String,
    /// Its keys, used in turn (none for a local server).
    #[serde(default)]
    pub api_keys: Vec<Secret>,
    /// Extra headers sent with every request (values are secrets: never printed).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Retries before giving up (or falling back); default `[llm] max_retries`.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Wait for the first byte; default `[llm] timeout_secs`.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// `[server]`: the HTTP listener and the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// The public base URL users reach (used in links); optional.
    #[serde(
        deserialize_with = "lenient_opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub public_url: Option<String>,
    /// Bearer token of the admin API. When unset, one is generated at first start and kept
    /// in `<storage.path>/admin.token` (mode 0600), where the admin CLI finds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<Secret>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long shutdown waits for open requests and streams before it cuts them.
    pub shutdown_grace_secs: u64,
    /// Proxies whose `X-Forwarded-For` is believed (address blocks, `10.0.0.0/8`); the client
    /// is the first address from the right that is not one of them. Default: this machine.
    pub trusted_proxies: Vec<String>,
    /// Longest a request may take to be read and answered, in seconds; `408` after it.
    /// Streamed answers (`/v1/chat/completions`) and `/admin/backup` are bounded only while
    /// their request is read. Above the Official Account's ~5 s wait and webhook retries.
    pub request_timeout_secs: u64,
    /// Requests handled at once (streams included); beyond it, `503` with `Retry-After`.
    /// `/healthz`, `/readyz` and `/metrics` are always answered.
    pub max_concurrent_requests: usize,
    /// Largest request head (request line and headers), in bytes; `431` beyond it.
    pub max_header_bytes: usize,
    /// Most header lines in a request; `431` beyond it.
    pub max_headers: usize,
    /// Longest request target (path and query), in bytes; `414` beyond it.
    pub max_uri_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            public_url: None,
            admin_token: None,
            max_body_bytes: 1024 * 1024,
            shutdown_grace_secs: 10,
            trusted_proxies: crate::util::addr::DEFAULT_TRUSTED_PROXIES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            request_timeout_secs: 30,
            max_concurrent_requests: 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
        }
    }
}

/// `[storage]`: where the data lives: the embedded database (one daemon), or a PostgreSQL
/// database shared by several daemons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    /// `sled` (embedded, the default) or `postgres`.
    pub backend: StorageBackend,
    /// Data directory: the embedded database, and the generated admin token with either
    /// backend.
    pub path: PathBuf,
    /// Page cache size of the embedded database, in MiB.
    pub cache_capacity_mb: u64,
    /// PostgreSQL: the connection URL (`postgres://user:password@host:5432/db`); or
    /// `url_file`, a file holding it (systemd credentials).
    pub url: Option<Secret>,
    /// PostgreSQL: the schema holding chatrelay's tables (created if missing).
    pub schema: String,
    /// PostgreSQL: connections per daemon for requests (each leader-only job holds one more).
    pub pool_size: usize,
    /// PostgreSQL over TLS: a PEM file of the CA that signed the server's certificate, when
    /// it is not a public one.
    pub ca_file: Option<PathBuf>,
}

/// The storage engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Embedded (sled): one daemon, nothing to run beside it.
    #[default]
    Sled,
    /// A PostgreSQL database shared by several daemons.
    Postgres,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Sled,
            path: PathBuf::from("./data"),
            cache_capacity_mb: 64,
            url: None,
            schema: "public".to_owned(),
            pool_size: 16,
            ca_file: None,
        }
    }
}

impl StorageConfig {
    /// The PostgreSQL connection settings (`None` with the embedded backend).
    #[must_use]
    pub fn postgres(&self) -> Option<chatrelay_storage::PgOptions> {
        if self.backend != StorageBackend::Postgres {
            return None;
        }
        let url = self.url.as_ref()?;
        Some(chatrelay_storage::PgOptions {
            url: url.expose().to_owned(),
            schema: Some(self.schema.clone()),
            pool_size: self.pool_size,
            ca_file: self.ca_file.clone(),
        })
    }
}

/// Which LLM backend answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Any OpenAI-compatible chat completions API.
    Openai,
    /// An offline stand-in that says it is one; the default when no API key is configured.
    Demo,
}

/// `[llm]`: the upstream model API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LlmConfig {
    /// `openai` or `demo`; unset means `openai` when an API key is configured, else `demo`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    /// Base URL of the OpenAI-compatible API (ending in `/v1` for most providers).
    pub base_url: String,
    /// API keys, used in turn. `OPENAI_API_KEY` is used when this is empty.
    pub api_keys: Vec<Secret>,
    /// The default model.
    pub model: String,
    /// System prompt put before every chat-platform conversation.
    pub system_prompt: String,
    /// Longest time to wait for the upstream's first byte (and for a whole non-streamed answer).
    pub timeout_secs: u64,
    /// Connect timeout.
    pub connect_timeout_secs: u64,
    /// Longest silence inside a streamed answer.
    pub idle_timeout_secs: u64,
    /// Retries of a failed upstream call (408/409/429/5xx, timeouts) before giving up.
    pub max_retries: u32,
    /// Cap on answer length sent upstream as `max_completion_tokens`; unset sends none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Token budget of the conversation history sent with each chat-platform message.
    pub context_tokens: u64,
    /// Most turns kept per conversation.
    pub max_turns: usize,
    /// The models users may use and what each answer costs.
    pub models: Vec<ModelConfig>,
    /// The demo provider's pause between streamed pieces (0 answers at once, for benchmarks).
    pub demo_piece_delay_ms: u64,
    /// More providers besides the `default` one above.
    pub upstreams: Vec<UpstreamConfig>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            provider: None,
            base_url: "https://api.openai.com/v1".to_owned(),
            api_keys: Vec::new(),
            model: "gpt-4o-mini".to_owned(),
            system_prompt: "你是一个乐于助人的 AI 助手。请用用户使用的语言简洁、准确地回答。"
                .to_owned(),
            timeout_secs: 120,
            connect_timeout_secs: 5,
            idle_timeout_secs: 60,
            max_retries: 2,
            max_completion_tokens: None,
            context_tokens: 3000,
            max_turns: 40,
            models: Vec::new(),
            demo_piece_delay_ms: 20,
            upstreams: Vec::new(),
        }
    }
}

/// `[[llm.models]]`: one model users may choose, and its price in credits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The model name, as users and the upstream know it.
    pub name: String,
    /// Credits per answer.
    #[serde(default = "one")]
    pub credits: u64,
    /// Extra credits per 1,000 tokens (prompt + answer); 0 for a flat price.
    #[serde(default)]
    pub credits_per_1k_tokens: u64,
    /// What the provider charges per million prompt tokens, in fen (for the daily cost in
    /// `admin stats`; 0 = unknown).
    #[serde(default)]
    pub input_fen_per_million: u64,
    /// What the provider charges per million answer tokens, in fen.
    #[serde(default)]
    pub output_fen_per_million: u64,
    /// Which upstream answers (`[[llm.upstreams]] id`); default `default` (`[llm]`).
    #[serde(default)]
    pub upstream: Option<String>,
    /// The model's name at that upstream, when it differs from `name`.
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// Other `[[llm.models]]` names tried in order when this one's upstream is down or rate
    /// limited (the answer is charged at this model's price).
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Only users with paid credits may use it.
    #[serde(default)]
    pub paid_only: bool,
    /// Only users in one of these groups may use it (empty: everyone).
    #[serde(default)]
    pub groups: Vec<String>,
    /// It understands pictures: images users send are passed to it.
    #[serde(default)]
    pub vision: bool,
    /// Credits per picture sent to it (added to the answer's price).
    #[serde(default = "one")]
    pub credits_per_image: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            credits: 1,
            credits_per_1k_tokens: 0,
            input_fen_per_million: 0,
            output_fen_per_million: 0,
            upstream: None,
            upstream_model: None,
            fallbacks: Vec::new(),
            paid_only: false,
            groups: Vec::new(),
            vision: false,
            credits_per_image: 1,
        }
    }
}

fn one() -> u64 {
    1
}

/// `[quota]`: the free allowance and the day boundary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QuotaConfig {
    /// Free credits every user gets each day.
    pub free_daily: u64,
    /// Timezone of the day boundary: `Asia/Shanghai`, `UTC`, or an offset like `+08:00`.
    pub timezone: String,
    /// How long a reservation may stay open before it is considered stale.
    pub reservation_ttl_secs: u64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            free_daily: 10,
            timezone: "Asia/Shanghai".to_owned(),
            reservation_ttl_secs: 900,
        }
    }
}

/// `[bot]`: behaviour of the conversation engine on every platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BotConfig {
    /// Messages (LLM calls) per user per minute; 0 turns the limit off.
    pub rate_limit_per_minute: u32,
    /// Longest user message accepted, in characters.
    pub max_input_chars: usize,
    /// How long a message id is remembered to drop redeliveries.
    pub dedupe_ttl_secs: u64,
    /// Largest picture downloaded from a platform, in bytes.
    pub max_image_bytes: usize,
    /// Hosts (names or addresses, matched exactly) that pictures users send may be fetched
    /// from even though they are internal, e.g. a private object store. Every other host must
    /// be a public address: picture URLs come from outside.
    pub picture_trusted_hosts: Vec<String>,
    /// Command words (each command accepts several spellings).
    pub commands: Commands,
    /// User-facing texts.
    pub texts: Texts,
}

impl Default for BotConfig {
    fn default() -> Self {
        Self {
            rate_limit_per_minute: 20,
            max_input_chars: 8000,
            dedupe_ttl_secs: 24 * 3600,
            max_image_bytes: 5 * 1024 * 1024,
            picture_trusted_hosts: Vec::new(),
            commands: Commands::default(),
            texts: Texts::default(),
        }
    }
}

/// `[bot.commands]`: the words that trigger each command (matched on the whole trimmed message).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Commands {
    /// Show the help text.
    pub help: Vec<String>,
    /// Start a new conversation (forget the history).
    pub new: Vec<String>,
    /// Show the credits left.
    pub quota: Vec<String>,
    /// List the credit packs and where to buy them.
    pub buy: Vec<String>,
    /// List the models (`/model`), or choose one (`/model NAME`).
    pub model: Vec<String>,
    /// List the roles (`/role`), or choose one (`/role ID`).
    pub role: Vec<String>,
    /// Draw a picture (`/image a cat`), when `[images]` is configured.
    pub image: Vec<String>,
}

impl Default for Commands {
    fn default() -> Self {
        let v = |words: &[&str]| words.iter().map(|w| (*w).to_owned()).collect();
        Self {
            help: v(&["/help", "帮助", "菜单"]),
            new: v(&["/new", "新对话", "清空"]),
            quota: v(&["/quota", "余额", "额度"]),
            buy: v(&["/buy", "购买", "充值"]),
            model: v(&["/model", "模型"]),
            role: v(&["/role", "角色"]),
            image: v(&["/image", "画图"]),
        }
    }
}

/// `[bot.texts]`: every text users can see. `{placeholders}` are filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Texts {
    /// Answer to the help command. `{new}`, `{quota}`: the first word of those commands.
    pub help: String,
    /// Answer to the new-conversation command.
    pub new_conversation: String,
    /// Answer to the quota command: `{free_left}`, `{free_daily}`, `{paid}`, `{available}`.
    pub quota: String,
    /// Out of credits: `{needed}`, `{available}`, `{buy_hint}`.
    pub insufficient_quota: String,
    /// How to get more credits, put into `{buy_hint}`. Empty (the default): said for you,
    /// naming only what this configuration offers (daily free credits, packs on the web
    /// page); see [`Texts::buy_hint_for`].
    pub buy_hint: String,
    /// Too many messages.
    pub rate_limited: String,
    /// The user is banned.
    pub banned: String,
    /// The LLM failed.
    pub upstream_error: String,
    /// The message is empty.
    pub empty: String,
    /// The message is too long: `{max}`.
    pub too_long: String,
    /// The model is not configured: `{model}`.
    pub unknown_model: String,
    /// The service is shutting down or its store failed.
    pub unavailable: String,
    /// Answer to the buy command: `{products}` (one line each), `{url}` (the web page).
    pub buy: String,
    /// Answer to the buy command when nothing is on sale.
    pub buy_none: String,
    /// Answer to the model command: `{current}`, `{models}` (one line each), `{command}`.
    pub model_list: String,
    /// A model was chosen: `{model}`.
    pub model_set: String,
    /// The user may not use that model: `{model}`.
    pub model_not_allowed: String,
    /// Answer to the role command: `{current}`, `{roles}` (one line each), `{command}`.
    pub role_list: String,
    /// A role was chosen: `{role}`.
    pub role_set: String,
    /// No such role: `{role}`.
    pub unknown_role: String,
    /// Put after an answer a content rule stopped.
    pub answer_cut: String,
    /// The question asked about a picture sent without text.
    pub image_question: String,
    /// The model cannot see pictures: `{command}` (the model command).
    pub image_unsupported: String,
    /// A picture could not be downloaded.
    pub image_failed: String,
    /// Image generation is not configured (or the upstream cannot draw).
    pub image_off: String,
    /// How to use the image command: `{command}`.
    pub image_usage: String,
    /// A generated picture, for platforms that show no pictures: `{url}`.
    pub image_done: String,
}

impl Texts {
    /// `buy_hint` as configured, or when empty, one that names only what exists: daily free
    /// credits when `quota.free_daily` is set, credit packs on the web page when products,
    /// a payment channel and the web page are all configured (nothing when neither).
    #[must_use]
    pub fn buy_hint_for(&self, c: &Config) -> String {
        if !self.buy_hint.is_empty() {
            return self.buy_hint.clone();
        }
        let daily = c.quota.free_daily > 0;
        let buy = c.web.enabled
            && !c.products.is_empty()
            && (c.pay.wechat.is_some() || c.pay.alipay.is_some());
        match (daily, buy) {
            (true, true) => "免费额度每天零点恢复；也可以在网页端购买额度包。",
            (true, false) => "免费额度每天零点恢复。",
            (false, true) => "可以在网页端购买额度包。",
            (false, false) => "",
        }
        .to_owned()
    }
}

impl Default for Texts {
    fn default() -> Self {
        Self {
            help:
                "我是 AI 助手，直接发消息即可对话。\n命令：\n{new} 开始新对话\n{quota} 查看剩余额度"
                    .to_owned(),
            new_conversation: "好的，已开始新的对话。".to_owned(),
            quota:
                "今日免费额度剩余 {free_left}/{free_daily}，付费额度 {paid}，共可用 {available}。\n当前模型：{model}，角色：{role}"
                    .to_owned(),
            insufficient_quota: "额度不足：本次需要 {needed}，当前可用 {available}。{buy_hint}"
                .to_owned(),
            buy_hint: String::new(),
            rate_limited: "消息太频繁了，请稍后再试。".to_owned(),
            banned: "你的账号已被停用，如有疑问请联系管理员。".to_owned(),
            upstream_error: "抱歉，AI 服务暂时不可用，本次没有扣除额度，请稍后再试。".to_owned(),
            empty: "请输入文字内容。".to_owned(),
            too_long: "消息太长了（最多 {max} 字），请精简后再发。".to_owned(),
            unknown_model: "没有名为 {model} 的模型。".to_owned(),
            unavailable: "服务暂时不可用，请稍后再试。".to_owned(),
            buy: "可购买的额度包：\n{products}\n请在网页上购买：{url}".to_owned(),
            buy_none: "暂未开放购买。免费额度每天零点恢复。".to_owned(),
            model_list: "当前模型：{current}\n可用模型：\n{models}\n发送「{command} 模型名」切换。".to_owned(),
            model_set: "已切换到模型 {model}。".to_owned(),
            model_not_allowed: "模型 {model} 仅对付费或指定用户开放。".to_owned(),
            role_list: "当前角色：{current}\n可用角色：\n{roles}\n发送「{command} 角色名」切换。".to_owned(),
            role_set: "已切换到角色：{role}。".to_owned(),
            unknown_role: "没有名为 {role} 的角色。".to_owned(),
            answer_cut: "（回答包含不允许的内容，已中止。）".to_owned(),
            image_question: "请描述这张图片。".to_owned(),
            image_unsupported: "当前模型看不到图片。请发文字，或发送「{command}」换一个支持图片的模型。"
                .to_owned(),
            image_failed: "图片没有收到，请重新发送。".to_owned(),
            image_off: "暂未开放画图。".to_owned(),
            image_usage: "用法：{command} 画面描述，例如「{command} 雪地里的小猫」。".to_owned(),
            image_done: "图片已生成：{url}".to_owned(),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// A tracing filter (`info`, `chatrelay=debug,info`); `RUST_LOG` wins when set.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: "text".to_owned(),
        }
    }
}

/// Whether an Official Account may push answers with the customer-service API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushMode {
    /// Try it; stop after WeChat answers 48001 (no permission: unverified or personal accounts).
    Auto,
    /// Always try it.
    On,
    /// Never: slow answers wait for the user's next message.
    Off,
}

/// `[[wechat_mp]]`: one WeChat Official Account (公众号), served at `/wechat/mp/<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WechatMpConfig {
    /// The account's id in URLs and user keys (`mp:<id>:<openid>`).
    pub id: String,
    /// AppID (开发者ID).
    pub app_id: String,
    /// AppSecret; needed for the customer-service API (pushing slow answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_secret: Option<Secret>,
    /// The Token set in the console (服务器配置).
    pub token: Secret,
    /// EncodingAESKey (43 characters), for safe and compatible mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding_aes_key: Option<Secret>,
    /// The previous EncodingAESKey, accepted while a rotation settles.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_encoding_aes_key: Option<Secret>,
    /// Base URL of the WeChat API.
    pub api_base: String,
    /// The keyword that returns a web login code.
    pub login_keyword: String,
    /// Reply to a new follower.
    pub welcome: String,
    /// Pushing slow answers with the customer-service API.
    pub push: PushMode,
    /// How long one WeChat try waits for the answer before giving up on a passive reply
    /// (WeChat waits 5 s).
    pub passive_wait_ms: u64,
    /// After the first try, how long WeChat may still retry; an answer not delivered by a
    /// passive reply by then is pushed or kept for the user's next message.
    pub retry_window_ms: u64,
    /// Menu CLICK keys and the message each stands for (e.g. `HELP = "/help"`).
    pub menu: BTreeMap<String, String>,
    /// Texts of this account.
    pub texts: MpTexts,
}

impl Default for WechatMpConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            app_id: String::new(),
            app_secret: None,
            token: Secret::default(),
            encoding_aes_key: None,
            previous_encoding_aes_key: None,
            api_base: "https://api.weixin.qq.com".to_owned(),
            login_keyword: "验证码".to_owned(),
            welcome: "感谢关注！直接发消息就可以和 AI 助手对话；发送「验证码」获取网页登录验证码。"
                .to_owned(),
            push: PushMode::Auto,
            passive_wait_ms: 4500,
            retry_window_ms: 15_500,
            menu: BTreeMap::new(),
            texts: MpTexts::default(),
        }
    }
}

/// `[wechat_mp.texts]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MpTexts {
    /// The login code: `{code}`, `{minutes}`.
    pub login_code: String,
    /// A voice message WeChat could not transcribe.
    pub voice_unrecognized: String,
    /// Images and other messages.
    pub unsupported: String,
    /// The answer is slow and will be pushed.
    pub thinking_push: String,
    /// The answer is slow and waits for the user's next message.
    pub thinking_pending: String,
    /// Appended when the rest of a long answer follows later.
    pub more: String,
}

impl Default for MpTexts {
    fn default() -> Self {
        Self {
            login_code:
                "你的网页登录验证码：{code}\n{minutes} 分钟内有效，不区分大小写，请勿告诉他人。"
                    .to_owned(),
            voice_unrecognized: "没有听清这条语音，请再说一次或者发文字。".to_owned(),
            unsupported: "目前只支持文字消息，请发文字给我。".to_owned(),
            thinking_push: "正在思考，答案稍后发给你。".to_owned(),
            thinking_pending: "这个问题需要多想一会儿，请稍后发送任意消息查看回答。".to_owned(),
            more: "\n\n（内容较长，回复任意消息查看后续）".to_owned(),
        }
    }
}

/// `[[wecom]]`: a WeCom (企业微信) self-built app, served at `/wecom/<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WecomConfig {
    /// The app's id in URLs and user keys (`wecom:<id>:<userid>`).
    pub id: String,
    /// 企业ID.
    pub corp_id: String,
    /// The app's AgentId.
    pub agent_id: i64,
    /// The app's Secret.
    pub secret: Secret,
    /// 接收消息 → Token.
    pub token: Secret,
    /// 接收消息 → EncodingAESKey.
    pub encoding_aes_key: Secret,
    /// Base URL of the WeCom API.
    pub api_base: String,
    /// Sent when a user opens the app (`enter_agent`); empty sends nothing.
    pub welcome: String,
    /// Menu CLICK keys and the message each stands for.
    pub menu: BTreeMap<String, String>,
    /// Send answers as markdown (WeCom renders it in the app).
    pub markdown: bool,
}

impl Default for WecomConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            corp_id: String::new(),
            agent_id: 0,
            secret: Secret::default(),
            token: Secret::default(),
            encoding_aes_key: Secret::default(),
            api_base: "https://qyapi.weixin.qq.com".to_owned(),
            welcome: String::new(),
            menu: BTreeMap::new(),
            markdown: true,
        }
    }
}

/// `[[wecom_aibot]]`: a WeCom AI bot (智能机器人, API mode), served at `/wecom/aibot/<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WecomAibotConfig {
    /// The bot's id in URLs and user keys (`wecom:<id>:<userid>`).
    pub id: String,
    /// The bot's Token.
    pub token: Secret,
    /// The bot's EncodingAESKey.
    pub encoding_aes_key: Secret,
    /// Answer to `enter_chat`; empty sends nothing.
    pub welcome: String,
    /// How long WeCom keeps asking for the stream (6 minutes); an answer finished later is
    /// posted to the message's `response_url`.
    pub stream_window_secs: u64,
}

impl Default for WecomAibotConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            token: Secret::default(),
            encoding_aes_key: Secret::default(),
            welcome: String::new(),
            stream_window_secs: 360,
        }
    }
}

/// `[[wecom_robot]]`: a group robot webhook that receives operators' alerts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WecomRobotConfig {
    /// A name for logs.
    pub id: String,
    /// The webhook key, or the whole webhook URL.
    pub webhook: Secret,
    /// Base URL of the WeCom API (for a bare key).
    pub api_base: String,
}

impl Default for WecomRobotConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            webhook: Secret::default(),
            api_base: "https://qyapi.weixin.qq.com".to_owned(),
        }
    }
}

/// `[[zsxq]]`: a zsxq (知识星球) group whose unanswered questions the bot answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ZsxqConfig {
    /// The group's id in logs, the admin API and user keys (`zsxq:<id>:<user_id>`).
    pub id: String,
    /// The group's number (from its URL).
    pub group_id: String,
    /// The `zsxq_access_token` cookie of the account that answers.
    pub access_token: Secret,
    /// When to look for questions: cron with seconds first (`0 */2 * * * *` = every 2 minutes).
    pub schedule: String,
    /// Answers visible only to the asker.
    pub silenced: bool,
    /// Base URL of the zsxq API.
    pub api_base: String,
    /// Pause between two requests to zsxq, in ms (gentle: at least 1500).
    pub min_interval_ms: u64,
    /// No polling in this local time range, e.g. `22:00-07:00` (the quota timezone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<String>,
    /// Most answers per run.
    pub max_answers_per_run: usize,
    /// Most answers per day (0: no cap).
    pub daily_cap: u64,
}

impl Default for ZsxqConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            group_id: String::new(),
            access_token: Secret::default(),
            schedule: "0 */2 * * * *".to_owned(),
            silenced: false,
            api_base: "https://api.zsxq.com".to_owned(),
            min_interval_ms: 1500,
            quiet_hours: None,
            max_answers_per_run: 10,
            daily_cap: 0,
        }
    }
}

/// `[[telegram]]`: a Telegram bot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TelegramConfig {
    /// The bot's id in logs, routes (`/telegram/<id>`) and user keys (`tg:<id>:<user_id>`).
    pub id: String,
    /// The token BotFather gave.
    pub token: Secret,
    /// Base URL of the Bot API.
    pub api_url: String,
    /// `polling` (getUpdates) or `webhook` (Telegram posts to `/telegram/<id>`).
    pub mode: String,
    /// The webhook's secret token (the `X-Telegram-Bot-Api-Secret-Token` header); required
    /// in webhook mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<Secret>,
    /// Least time between two edits of a streaming answer, in ms.
    pub edit_interval_ms: u64,
}

impl Default for TelegramConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            token: Secret::default(),
            api_url: "https://api.telegram.org".to_owned(),
            mode: "polling".to_owned(),
            webhook_secret: None,
            edit_interval_ms: 1000,
        }
    }
}

/// `[web]`: the chat page served at `/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebConfig {
    /// Serve the page (the APIs stay on either way).
    pub enabled: bool,
    /// The page's title.
    pub title: String,
    /// Credits a visitor gets with "try it now" (guest mode); 0 turns guest mode off.
    pub guest_credits: u64,
    /// The Official Account's name, shown in the login hint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mp_name: Option<String>,
    /// An image URL of the Official Account's QR code, shown in the login hint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mp_qr_url: Option<String>,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            title: "AI 助手".to_owned(),
            guest_credits: 0,
            mp_name: None,
            mp_qr_url: None,
        }
    }
}

/// `[[products]]`: one credit pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductConfig {
    /// Stable id (used in orders and the API).
    pub id: String,
    /// Name shown to users.
    pub name: String,
    /// Price in fen (分): 100 = ¥1.00.
    pub price_fen: i64,
    /// Credits it gives.
    pub credits: u64,
}

/// `[pay]`: how orders are paid and kept in step with the providers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PayConfig {
    /// An order's QR code works this long; then the order is closed (at the provider first).
    pub order_ttl_secs: u64,
    /// How often open orders are checked with the provider (missed notifications).
    pub reconcile_interval_secs: u64,
    /// Open orders younger than this are left to the notification.
    pub reconcile_min_age_secs: u64,
    /// `[pay.wechat]`: WeChat Pay v3 Native.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wechat: Option<WechatPayConfig>,
    /// `[pay.alipay]`: Alipay face-to-face (QR).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alipay: Option<AlipayConfig>,
}

impl Default for PayConfig {
    fn default() -> Self {
        Self {
            order_ttl_secs: 900,
            reconcile_interval_secs: 60,
            reconcile_min_age_secs: 60,
            wechat: None,
            alipay: None,
        }
    }
}

/// `[pay.wechat]`: a WeChat Pay merchant (直连商户), API v3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WechatPayConfig {
    /// 商户号.
    pub mch_id: String,
    /// The AppID bound to the merchant (the Official Account's).
    pub app_id: String,
    /// Serial number of the merchant API certificate (商户API证书序列号).
    pub serial_no: String,
    /// The merchant API private key, `apiclient_key.pem`.
    pub private_key_file: PathBuf,
    /// The APIv3 key (32 characters).
    pub api_v3_key: Secret,
    /// Public-key mode: the WeChat Pay public key (`pub_key.pem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_public_key_file: Option<PathBuf>,
    /// Public-key mode: its id (`PUB_KEY_ID_…`), as sent in `Wechatpay-Serial`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_id: Option<String>,
    /// Certificate mode: platform certificates (PEM); their serials are read from them.
    #[serde(default)]
    pub platform_cert_files: Vec<PathBuf>,
    /// Base URL of the API.
    #[serde(default = "wechat_pay_api_base")]
    pub api_base: String,
}

fn wechat_pay_api_base() -> String {
    "https://api.mch.weixin.qq.com".to_owned()
}

/// `[pay.alipay]`: an Alipay app with face-to-face payment (当面付).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlipayConfig {
    /// The app's APPID.
    pub app_id: String,
    /// The app private key (PEM or bare base64, PKCS#8 or PKCS#1).
    pub private_key_file: PathBuf,
    /// The Alipay public key (支付宝公钥, PEM or bare base64).
    pub alipay_public_key_file: PathBuf,
    /// The gateway.
    #[serde(default = "alipay_gateway")]
    pub gateway: String,
    /// When set, notifications must name this seller (the merchant's 2088… id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seller_id: Option<String>,
}

fn alipay_gateway() -> String {
    "https://openapi.alipay.com/gateway.do".to_owned()
}

pub use read::Problem;

fn problem(key: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        key: key.into(),
        message: message.into(),
    }
}

/// The configuration could not be used; every problem found is listed.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration ({} problem(s)):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError(pub Vec<Problem>);

/// Where the configuration came from, for logs and `check-config`.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// The file read, if any.
    pub file: Option<PathBuf>,
    /// Keys set from the environment.
    pub env_keys: Vec<String>,
}

/// Loads the configuration: `path` if given (it must exist), else `./chatrelay.toml` if it
/// exists, else the embedded defaults; then the environment.
pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    load_with(path, &env)
}

/// [`load`] with an explicit environment (tests never mutate the process environment).
pub fn load_with(path: Option<&Path>, env: &[(String, String)]) -> Result<Loaded, ConfigError> {
    let (file, text) = match path {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => (Some(p.to_path_buf()), t),
            Err(e) => {
                return Err(ConfigError(vec![problem(
                    "(file)",
                    format!("cannot read {}: {e}", p.display()),
                )]));
            }
        },
        None => {
            let default = PathBuf::from("chatrelay.toml");
            match std::fs::read_to_string(&default) {
                Ok(t) => (Some(default), t),
                Err(_) => (None, String::new()),
            }
        }
    };
    let (config, env_keys) = parse(&text, env, file.as_deref())?;
    Ok(Loaded {
        config,
        file,
        env_keys,
    })
}

/// Parses TOML text, applies env overrides and `*_file` secrets, validates.
pub fn parse(
    text: &str,
    env: &[(String, String)],
    base_dir_of: Option<&Path>,
) -> Result<(Config, Vec<String>), ConfigError> {
    let mut problems = Vec::new();
    let mut root: toml::Table = match text.parse::<toml::Table>() {
        Ok(t) => t,
        Err(e) => return Err(ConfigError(vec![problem("(file)", e.to_string())])),
    };
    let env_keys = apply_env(&mut root, env, &mut problems);
    let base = base_dir_of.and_then(Path::parent).unwrap_or(Path::new("."));
    resolve_secret_files(&mut root, "", base, &mut problems);

    let mut config = Config {
        server: section(&mut root, "server", &mut problems),
        storage: section(&mut root, "storage", &mut problems),
        llm: section(&mut root, "llm", &mut problems),
        quota: section(&mut root, "quota", &mut problems),
        bot: section(&mut root, "bot", &mut problems),
        log: section(&mut root, "log", &mut problems),
        wechat_mp: section(&mut root, "wechat_mp", &mut problems),
        products: section(&mut root, "products", &mut problems),
        pay: section(&mut root, "pay", &mut problems),
        web: section(&mut root, "web", &mut problems),
        wecom: section(&mut root, "wecom", &mut problems),
        wecom_aibot: section(&mut root, "wecom_aibot", &mut problems),
        wecom_robot: section(&mut root, "wecom_robot", &mut problems),
        zsxq: section(&mut root, "zsxq", &mut problems),
        telegram: section(&mut root, "telegram", &mut problems),
        filters: section(&mut root, "filters", &mut problems),
        keywords: section(&mut root, "keywords", &mut problems),
        roles: section(&mut root, "roles", &mut problems),
        scopes: section(&mut root, "scopes", &mut problems),
        moderation: section(&mut root, "moderation", &mut problems),
        images: section(&mut root, "images", &mut problems),
        base_dir: base.to_path_buf(),
    };
    for key in root.keys() {
        let message = match read::closest_known(key, &known_keys("")) {
            Some(k) => format!("unknown section or key; did you mean `{k}`?"),
            None => "unknown section or key".to_owned(),
        };
        problems.push(problem(key.clone(), message));
    }
    if config.llm.api_keys.is_empty()
        && let Some((_, key)) = env.iter().find(|(k, _)| k == "OPENAI_API_KEY")
        && !key.trim().is_empty()
    {
        config.llm.api_keys.push(Secret::new(key.trim()));
    }
    if config.llm.models.is_empty() {
        config.llm.models.push(ModelConfig {
            name: config.llm.model.clone(),
            ..ModelConfig::default()
        });
    }
    let read_problems = problems.len();
    validate(&config, &mut problems);
    read::drop_echoes(read_problems, &mut problems);
    if problems.is_empty() {
        Ok((config, env_keys))
    } else {
        Err(ConfigError(problems))
    }
}

/// Deserializes one section, reporting every problem in it (see [`read`]).
fn section<T: DeserializeOwned + Default>(
    root: &mut toml::Table,
    name: &str,
    problems: &mut Vec<Problem>,
) -> T {
    read::read(root, name, problems, known_keys)
}

/// The keys the table at `shape` (a dotted path without indices) accepts, for "did you mean".
fn known_keys(shape: &str) -> Vec<String> {
    use read::field_names as f;
    match shape {
        "" => [
            "server",
            "storage",
            "llm",
            "quota",
            "bot",
            "log",
            "wechat_mp",
            "products",
            "pay",
            "web",
            "wecom",
            "wecom_aibot",
            "wecom_robot",
            "zsxq",
            "telegram",
            "filters",
            "keywords",
            "roles",
            "scopes",
            "moderation",
            "images",
        ]
        .map(str::to_owned)
        .to_vec(),
        "server" => f::<ServerConfig>(),
        "storage" => f::<StorageConfig>(),
        "llm" => f::<LlmConfig>(),
        "llm.models" => f::<ModelConfig>(),
        "llm.upstreams" => f::<UpstreamConfig>(),
        "quota" => f::<QuotaConfig>(),
        "bot" => f::<BotConfig>(),
        "bot.commands" => f::<Commands>(),
        "bot.texts" => f::<Texts>(),
        "log" => f::<LogConfig>(),
        "wechat_mp" => f::<WechatMpConfig>(),
        "wechat_mp.texts" => f::<MpTexts>(),
        "products" => f::<ProductConfig>(),
        "pay" => f::<PayConfig>(),
        "pay.wechat" => f::<WechatPayConfig>(),
        "pay.alipay" => f::<AlipayConfig>(),
        "web" => f::<WebConfig>(),
        "wecom" => f::<WecomConfig>(),
        "wecom_aibot" => f::<WecomAibotConfig>(),
        "wecom_robot" => f::<WecomRobotConfig>(),
        "zsxq" => f::<ZsxqConfig>(),
        "telegram" => f::<TelegramConfig>(),
        "filters" => f::<chatrelay_rules::FilterRuleConfig>(),
        "keywords" => f::<chatrelay_rules::KeywordRuleConfig>(),
        "roles" => f::<RoleConfig>(),
        "scopes" => f::<ScopeConfig>(),
        "moderation" => f::<ModerationConfig>(),
        "images" => f::<ImagesConfig>(),
        _ => Vec::new(),
    }
}

/// Applies `CHATRELAY__A__B=value` as `a.b = value`. The value is read as a TOML value when
/// it parses as one (numbers, booleans, arrays, inline tables), else as a plain string; a key
/// the defaults hold as a string always takes the raw text.
fn apply_env(
    root: &mut toml::Table,
    env: &[(String, String)],
    problems: &mut Vec<Problem>,
) -> Vec<String> {
    let shape = toml::Table::try_from(Config::default()).unwrap_or_default();
    let mut keys = Vec::new();
    let mut sorted: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    sorted.sort();
    for (name, raw) in sorted {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_lowercase)
            .collect();
        let dotted = path.join(".");
        if path.iter().any(String::is_empty) {
            problems.push(problem(name.clone(), "malformed environment override name"));
            continue;
        }
        let shape_is_string = lookup(&shape, &path).is_some_and(toml::Value::is_str);
        let value = if shape_is_string {
            toml::Value::String(raw.clone())
        } else {
            parse_toml_value(raw).unwrap_or_else(|| toml::Value::String(raw.clone()))
        };
        if let Err(msg) = insert(root, &path, value) {
            problems.push(problem(dotted.clone(), format!("from {name}: {msg}")));
            continue;
        }
        keys.push(dotted);
    }
    keys
}

fn parse_toml_value(raw: &str) -> Option<toml::Value> {
    let table: toml::Table = format!("v = {raw}").parse().ok()?;
    table.get("v").cloned()
}

fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let v = table.get(first)?;
    if rest.is_empty() {
        Some(v)
    } else {
        lookup(v.as_table()?, rest)
    }
}

fn insert(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else {
        return Err("empty key".to_owned());
    };
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return Ok(());
    }
    let entry = table
        .entry(first.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match entry {
        toml::Value::Table(t) => insert(t, rest, value),
        _ => Err(format!("`{first}` is not a table")),
    }
}

/// Replaces every `<secret>_file = "path"` by `<secret> = <file contents>`, in tables and in
/// arrays of tables.
fn resolve_secret_files(
    table: &mut toml::Table,
    prefix: &str,
    base: &Path,
    problems: &mut Vec<Problem>,
) {
    let file_keys: Vec<String> = table
        .keys()
        .filter(|k| {
            k.strip_suffix("_file")
                .is_some_and(|stem| SECRET_KEYS.contains(&stem))
        })
        .cloned()
        .collect();
    for fk in file_keys {
        let stem = fk.trim_end_matches("_file").to_owned();
        let key = format!("{prefix}{fk}");
        let Some(path_value) = table.remove(&fk) else {
            continue;
        };
        let Some(p) = path_value.as_str() else {
            problems.push(problem(key, "must be a file path (a string)"));
            continue;
        };
        if table.contains_key(&stem) {
            problems.push(problem(
                key,
                format!("give either {stem} or {fk}, not both"),
            ));
            continue;
        }
        let path = if Path::new(p).is_absolute() {
            PathBuf::from(p)
        } else {
            base.join(p)
        };
        match std::fs::read_to_string(&path) {
            Ok(content) => {
                let value = if stem == "api_keys" {
                    toml::Value::Array(
                        content
                            .split(['\n', ','])
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(|s| toml::Value::String(s.to_owned()))
                            .collect(),
                    )
                } else {
                    toml::Value::String(content.trim_end_matches(['\r', '\n']).to_owned())
                };
                table.insert(stem, value);
            }
            Err(e) => problems.push(problem(key, format!("cannot read {}: {e}", path.display()))),
        }
    }
    for (k, v) in table.iter_mut() {
        match v {
            toml::Value::Table(t) => {
                resolve_secret_files(t, &format!("{prefix}{k}."), base, problems)
            }
            toml::Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    if let toml::Value::Table(t) = item {
                        resolve_secret_files(t, &format!("{prefix}{k}[{i}]."), base, problems);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The listener's limits: the request timeout must leave room for the Official Account's
/// passive wait (~5 s) and webhooks; header limits must fit an ordinary browser request.
fn validate_server_limits(s: &ServerConfig, problems: &mut Vec<Problem>) {
    for (i, block) in s.trusted_proxies.iter().enumerate() {
        if let Err(e) = block.parse::<crate::util::addr::Cidr>() {
            problems.push(problem(
                format!("server.trusted_proxies[{i}]"),
                e.to_string(),
            ));
        }
    }
    if s.request_timeout_secs < 10 {
        problems.push(problem(
            "server.request_timeout_secs",
            "must be at least 10 (WeChat waits 5 s for an answer; webhooks take a while)",
        ));
    }
    if s.max_concurrent_requests == 0 {
        problems.push(problem(
            "server.max_concurrent_requests",
            "must be at least 1",
        ));
    }
    if s.max_header_bytes < 4096 {
        problems.push(problem("server.max_header_bytes", "must be at least 4096"));
    }
    if s.max_headers < 32 {
        problems.push(problem("server.max_headers", "must be at least 32"));
    }
    if s.max_uri_bytes < 1024 {
        problems.push(problem("server.max_uri_bytes", "must be at least 1024"));
    }
}

fn validate(c: &Config, problems: &mut Vec<Problem>) {
    if c.server.listen.parse::<SocketAddr>().is_err() {
        problems.push(problem(
            "server.listen",
            format!(
                "{:?} is not an address like 127.0.0.1:8080",
                c.server.listen
            ),
        ));
    }
    if let Some(url) = &c.server.public_url
        && !is_http_url(url)
    {
        problems.push(problem(
            "server.public_url",
            "must start with http:// or https://",
        ));
    }
    if let Some(token) = &c.server.admin_token
        && token.expose().len() < 16
    {
        problems.push(problem(
            "server.admin_token",
            "must be at least 16 characters (or leave it unset to have one generated)",
        ));
    }
    if c.server.max_body_bytes < 1024 {
        problems.push(problem("server.max_body_bytes", "must be at least 1024"));
    }
    validate_server_limits(&c.server, problems);
    if c.storage.cache_capacity_mb == 0 {
        problems.push(problem("storage.cache_capacity_mb", "must be at least 1"));
    }
    if c.storage.path.as_os_str().is_empty() {
        problems.push(problem("storage.path", "must not be empty"));
    }
    if c.storage.backend == StorageBackend::Postgres {
        match &c.storage.url {
            None => problems.push(problem(
                "storage.url",
                "backend = \"postgres\" needs url (or url_file): postgres://user:password@host:5432/db",
            )),
            Some(url) => {
                if let Err(e) = chatrelay_storage::PgOptions::check_url(url.expose()) {
                    problems.push(problem("storage.url", format!("not a PostgreSQL URL: {e}")));
                }
            }
        }
        let schema = &c.storage.schema;
        if schema.is_empty()
            || schema.len() > 63
            || !schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            || schema.starts_with(|ch: char| ch.is_ascii_digit())
        {
            problems.push(problem(
                "storage.schema",
                "lowercase letters, digits and _, not starting with a digit, at most 63",
            ));
        }
        if c.storage.pool_size == 0 {
            problems.push(problem("storage.pool_size", "must be at least 1"));
        }
    }
    if !is_http_url(&c.llm.base_url) {
        problems.push(problem(
            "llm.base_url",
            "must start with http:// or https://",
        ));
    }
    if c.llm.provider == Some(Provider::Openai)
        && c.llm.api_keys.is_empty()
        && c.llm.base_url.contains("api.openai.com")
    {
        problems.push(problem(
            "llm.api_keys",
            "provider is openai at api.openai.com but no API key is set (api_keys, api_keys_file or OPENAI_API_KEY)",
        ));
    }
    if c.llm.api_keys.iter().any(|k| k.expose().trim().is_empty()) {
        problems.push(problem("llm.api_keys", "contains an empty key"));
    }
    for (name, v) in [
        ("llm.timeout_secs", c.llm.timeout_secs),
        ("llm.connect_timeout_secs", c.llm.connect_timeout_secs),
        ("llm.idle_timeout_secs", c.llm.idle_timeout_secs),
        ("quota.reservation_ttl_secs", c.quota.reservation_ttl_secs),
        ("bot.dedupe_ttl_secs", c.bot.dedupe_ttl_secs),
    ] {
        if v == 0 {
            problems.push(problem(name, "must be greater than 0"));
        }
    }
    if c.llm.max_turns == 0 {
        problems.push(problem("llm.max_turns", "must be at least 1"));
    }
    let mut seen = BTreeMap::new();
    for (i, m) in c.llm.models.iter().enumerate() {
        if m.name.trim().is_empty() {
            problems.push(problem(
                format!("llm.models[{i}].name"),
                "must not be empty",
            ));
        }
        if let Some(first) = seen.insert(m.name.clone(), i) {
            problems.push(problem(
                format!("llm.models[{i}].name"),
                format!("{:?} is already llm.models[{first}]", m.name),
            ));
        }
    }
    if !c.llm.models.iter().any(|m| m.name == c.llm.model) {
        problems.push(problem(
            "llm.model",
            format!("{:?} is not one of [[llm.models]]", c.llm.model),
        ));
    }
    if let Err(e) = crate::util::parse_timezone(&c.quota.timezone) {
        problems.push(problem("quota.timezone", e));
    }
    if c.bot.max_input_chars == 0 {
        problems.push(problem("bot.max_input_chars", "must be at least 1"));
    }
    for (name, words) in [
        ("bot.commands.help", &c.bot.commands.help),
        ("bot.commands.new", &c.bot.commands.new),
        ("bot.commands.quota", &c.bot.commands.quota),
        ("bot.commands.buy", &c.bot.commands.buy),
        ("bot.commands.model", &c.bot.commands.model),
        ("bot.commands.role", &c.bot.commands.role),
        ("bot.commands.image", &c.bot.commands.image),
    ] {
        if words.iter().any(|w| w.trim().is_empty()) {
            problems.push(problem(name, "contains an empty command word"));
        }
    }
    let mut ids = BTreeMap::new();
    for (i, mp) in c.wechat_mp.iter().enumerate() {
        let key = |k: &str| format!("wechat_mp[{i}].{k}");
        if !is_id(&mp.id) {
            problems.push(problem(
                key("id"),
                "must be non-empty letters, digits, _ or -",
            ));
        } else if let Some(first) = ids.insert(mp.id.clone(), i) {
            problems.push(problem(
                key("id"),
                format!("{:?} is already wechat_mp[{first}]", mp.id),
            ));
        }
        if mp.app_id.trim().is_empty() {
            problems.push(problem(key("app_id"), "is required"));
        }
        if mp.token.expose().trim().is_empty() {
            problems.push(problem(
                key("token"),
                "is required (the Token of 服务器配置)",
            ));
        }
        for (name, k) in [
            ("encoding_aes_key", &mp.encoding_aes_key),
            ("previous_encoding_aes_key", &mp.previous_encoding_aes_key),
        ] {
            if let Some(k) = k
                && chatrelay_wechat::AesKey::from_encoding_aes_key(k.expose()).is_err()
            {
                problems.push(problem(
                    key(name),
                    "must be the 43-character EncodingAESKey",
                ));
            }
        }
        if !is_http_url(&mp.api_base) {
            problems.push(problem(
                key("api_base"),
                "must start with http:// or https://",
            ));
        }
        if mp.login_keyword.trim().is_empty() {
            problems.push(problem(key("login_keyword"), "must not be empty"));
        }
        if !(100..=4800).contains(&mp.passive_wait_ms) {
            problems.push(problem(
                key("passive_wait_ms"),
                "must be between 100 and 4800 (WeChat waits 5 s)",
            ));
        }
        if mp.retry_window_ms < mp.passive_wait_ms {
            problems.push(problem(
                key("retry_window_ms"),
                "must be at least passive_wait_ms",
            ));
        }
        if mp.push == PushMode::On && mp.app_secret.is_none() {
            problems.push(problem(key("app_secret"), "is required when push = \"on\""));
        }
    }
    validate_engine_depth(c, problems);
    validate_pay(c, problems);
    validate_wecom(c, problems);
    validate_zsxq(c, problems);
    validate_telegram(c, problems);
    if c.web.title.trim().is_empty() || c.web.title.chars().count() > 60 {
        problems.push(problem("web.title", "must be 1 to 60 characters"));
    }
    if let Some(url) = &c.web.mp_qr_url
        && !is_http_url(url)
    {
        problems.push(problem(
            "web.mp_qr_url",
            "must be an http(s) URL of an image",
        ));
    }
    if !matches!(c.log.format.as_str(), "text" | "json") {
        problems.push(problem("log.format", "must be \"text\" or \"json\""));
    }
    if tracing_subscriber::EnvFilter::try_new(&c.log.level).is_err() {
        problems.push(problem(
            "log.level",
            "is not a valid filter (e.g. info, chatrelay=debug)",
        ));
    }
}

/// Upstreams, model routes and permissions, roles, scope defaults, content rules and
/// keyword replies.
fn validate_engine_depth(c: &Config, problems: &mut Vec<Problem>) {
    let mut upstreams = BTreeMap::new();
    for (i, u) in c.llm.upstreams.iter().enumerate() {
        let key = |k: &str| format!("llm.upstreams[{i}].{k}");
        if !is_id(&u.id) || u.id == "default" {
            problems.push(problem(
                key("id"),
                format!("{:?} must be [A-Za-z0-9_-]+ and not \"default\"", u.id),
            ));
        }
        if let Some(first) = upstreams.insert(u.id.clone(), i) {
            problems.push(problem(
                key("id"),
                format!("{:?} is already llm.upstreams[{first}]", u.id),
            ));
        }
        if !is_http_url(&u.base_url) {
            problems.push(problem(
                key("base_url"),
                format!("{:?} is not an http(s) URL", u.base_url),
            ));
        }
        if u.api_keys.iter().any(|k| k.expose().trim().is_empty()) {
            problems.push(problem(key("api_keys"), "contains an empty key"));
        }
        if u.timeout_secs == Some(0) {
            problems.push(problem(key("timeout_secs"), "must be at least 1"));
        }
    }
    let names: std::collections::BTreeSet<&str> =
        c.llm.models.iter().map(|m| m.name.as_str()).collect();
    for (i, m) in c.llm.models.iter().enumerate() {
        if let Some(u) = &m.upstream
            && u != "default"
            && !upstreams.contains_key(u)
        {
            problems.push(problem(
                format!("llm.models[{i}].upstream"),
                format!("{u:?} is not one of [[llm.upstreams]] (or \"default\")"),
            ));
        }
        for (j, f) in m.fallbacks.iter().enumerate() {
            if !names.contains(f.as_str()) || *f == m.name {
                problems.push(problem(
                    format!("llm.models[{i}].fallbacks[{j}]"),
                    format!("{f:?} is not another of [[llm.models]]"),
                ));
            }
        }
        if m.groups.iter().any(|g| g.trim().is_empty()) {
            problems.push(problem(
                format!("llm.models[{i}].groups"),
                "contains an empty group name",
            ));
        }
    }
    let mut roles = BTreeMap::new();
    for (i, r) in c.roles.iter().enumerate() {
        if !is_id(&r.id) {
            problems.push(problem(
                format!("roles[{i}].id"),
                format!("{:?} must be [A-Za-z0-9_-]+", r.id),
            ));
        }
        if let Some(first) = roles.insert(r.id.clone(), i) {
            problems.push(problem(
                format!("roles[{i}].id"),
                format!("{:?} is already roles[{first}]", r.id),
            ));
        }
        if r.prompt.trim().is_empty() {
            problems.push(problem(format!("roles[{i}].prompt"), "must not be empty"));
        }
    }
    let mut scopes = BTreeMap::new();
    for (i, sc) in c.scopes.iter().enumerate() {
        let platform = sc.scope.split(':').next().unwrap_or_default();
        if !["web", "v1", "telegram", "wechat_mp", "wecom", "zsxq"].contains(&platform) {
            problems.push(problem(
                format!("scopes[{i}].scope"),
                format!(
                    "{:?} must start with web, v1, telegram, wechat_mp, wecom or zsxq",
                    sc.scope
                ),
            ));
        }
        if let Some(first) = scopes.insert(sc.scope.clone(), i) {
            problems.push(problem(
                format!("scopes[{i}].scope"),
                format!("{:?} is already scopes[{first}]", sc.scope),
            ));
        }
        if let Some(m) = &sc.model
            && !names.contains(m.as_str())
        {
            problems.push(problem(
                format!("scopes[{i}].model"),
                format!("{m:?} is not one of [[llm.models]]"),
            ));
        }
        if let Some(r) = &sc.role
            && !roles.contains_key(r)
        {
            problems.push(problem(
                format!("scopes[{i}].role"),
                format!("{r:?} is not one of [[roles]]"),
            ));
        }
    }
    if let Some(img) = &c.images {
        if img.model.trim().is_empty() {
            problems.push(problem("images.model", "must not be empty"));
        }
        if let Some(u) = &img.upstream
            && u != "default"
            && !upstreams.contains_key(u)
        {
            problems.push(problem(
                "images.upstream",
                format!("{u:?} is not one of [[llm.upstreams]] (or \"default\")"),
            ));
        }
    }
    for (i, host) in c.bot.picture_trusted_hosts.iter().enumerate() {
        if host.trim().is_empty() || host.contains(['/', ':', ' ']) && !host.starts_with('[') {
            problems.push(problem(
                format!("bot.picture_trusted_hosts[{i}]"),
                "must be a host name or address only (no scheme, port or path), e.g. \"minio.internal\"",
            ));
        }
    }
    if c.bot.max_image_bytes == 0 {
        problems.push(problem("bot.max_image_bytes", "must be at least 1"));
    }
    if let Some(m) = &c.moderation
        && !is_http_url(&m.base_url)
    {
        problems.push(problem(
            "moderation.base_url",
            format!("{:?} is not an http(s) URL", m.base_url),
        ));
    }
    let rule_problem = |e: chatrelay_rules::RuleError| {
        let key = match e.line {
            Some(line) => format!("{} (line {line})", e.key),
            None => e.key,
        };
        problem(key, e.message)
    };
    if let Err(errors) = chatrelay_rules::ContentFilter::build(&c.filters, &c.base_dir) {
        problems.extend(errors.into_iter().map(rule_problem));
    }
    if let Err(errors) = chatrelay_rules::KeywordReplies::build(&c.keywords) {
        problems.extend(errors.into_iter().map(rule_problem));
    }
}

fn validate_wecom(c: &Config, problems: &mut Vec<Problem>) {
    let mut ids = BTreeMap::new();
    for (i, w) in c.wecom.iter().enumerate() {
        let key = |k: &str| format!("wecom[{i}].{k}");
        if !is_id(&w.id) {
            problems.push(problem(
                key("id"),
                "must be non-empty letters, digits, _ or -",
            ));
        } else if ids.insert(w.id.clone(), ()).is_some() {
            problems.push(problem(
                key("id"),
                format!(
                    "{:?} is used twice among [[wecom]] and [[wecom_aibot]]",
                    w.id
                ),
            ));
        }
        if w.corp_id.trim().is_empty() {
            problems.push(problem(key("corp_id"), "is required (企业ID)"));
        }
        if w.agent_id <= 0 {
            problems.push(problem(key("agent_id"), "is required (the app's AgentId)"));
        }
        if w.secret.expose().is_empty() {
            problems.push(problem(key("secret"), "is required (the app's Secret)"));
        }
        if w.token.expose().is_empty() {
            problems.push(problem(key("token"), "is required"));
        }
        if chatrelay_wechat::AesKey::from_encoding_aes_key(w.encoding_aes_key.expose()).is_err() {
            problems.push(problem(
                key("encoding_aes_key"),
                "must be the 43-character EncodingAESKey",
            ));
        }
        if !is_http_url(&w.api_base) {
            problems.push(problem(
                key("api_base"),
                "must start with http:// or https://",
            ));
        }
    }
    for (i, b) in c.wecom_aibot.iter().enumerate() {
        let key = |k: &str| format!("wecom_aibot[{i}].{k}");
        if !is_id(&b.id) {
            problems.push(problem(
                key("id"),
                "must be non-empty letters, digits, _ or -",
            ));
        } else if ids.insert(b.id.clone(), ()).is_some() {
            problems.push(problem(
                key("id"),
                format!(
                    "{:?} is used twice among [[wecom]] and [[wecom_aibot]]",
                    b.id
                ),
            ));
        }
        if b.token.expose().is_empty() {
            problems.push(problem(key("token"), "is required"));
        }
        if chatrelay_wechat::AesKey::from_encoding_aes_key(b.encoding_aes_key.expose()).is_err() {
            problems.push(problem(
                key("encoding_aes_key"),
                "must be the 43-character EncodingAESKey",
            ));
        }
        if !(10..=3600).contains(&b.stream_window_secs) {
            problems.push(problem(
                key("stream_window_secs"),
                "must be between 10 and 3600",
            ));
        }
    }
    for (i, r) in c.wecom_robot.iter().enumerate() {
        if r.webhook.expose().trim().is_empty() {
            problems.push(problem(
                format!("wecom_robot[{i}].webhook"),
                "is required (the webhook key or URL)",
            ));
        }
    }
}

fn validate_zsxq(c: &Config, problems: &mut Vec<Problem>) {
    let mut ids = BTreeMap::new();
    for (i, z) in c.zsxq.iter().enumerate() {
        let key = |k: &str| format!("zsxq[{i}].{k}");
        if !is_id(&z.id) {
            problems.push(problem(
                key("id"),
                "must be non-empty letters, digits, _ or -",
            ));
        } else if ids.insert(z.id.clone(), ()).is_some() {
            problems.push(problem(key("id"), format!("{:?} is used twice", z.id)));
        }
        if z.group_id.is_empty() || !z.group_id.bytes().all(|b| b.is_ascii_digit()) {
            problems.push(problem(key("group_id"), "must be the group's number"));
        }
        if z.access_token.expose().trim().is_empty() {
            problems.push(problem(
                key("access_token"),
                "is required (the zsxq_access_token cookie)",
            ));
        }
        if let Err(e) = z.schedule.parse::<cron::Schedule>() {
            problems.push(problem(
                key("schedule"),
                format!("{e} (cron with seconds first, e.g. \"0 */2 * * * *\")"),
            ));
        }
        if z.min_interval_ms < 500 {
            problems.push(problem(
                key("min_interval_ms"),
                "must be at least 500 (be gentle with zsxq)",
            ));
        }
        if let Some(q) = &z.quiet_hours
            && crate::zsxq::parse_quiet_hours(q).is_none()
        {
            problems.push(problem(key("quiet_hours"), "must look like 22:00-07:00"));
        }
        if z.max_answers_per_run == 0 {
            problems.push(problem(key("max_answers_per_run"), "must be at least 1"));
        }
        if !is_http_url(&z.api_base) {
            problems.push(problem(
                key("api_base"),
                "must start with http:// or https://",
            ));
        }
    }
}

fn validate_telegram(c: &Config, problems: &mut Vec<Problem>) {
    let mut ids = BTreeMap::new();
    for (i, t) in c.telegram.iter().enumerate() {
        let key = |k: &str| format!("telegram[{i}].{k}");
        if !is_id(&t.id) {
            problems.push(problem(
                key("id"),
                "must be non-empty letters, digits, _ or -",
            ));
        } else if ids.insert(t.id.clone(), ()).is_some() {
            problems.push(problem(key("id"), format!("{:?} is used twice", t.id)));
        }
        if t.token.expose().trim().is_empty() {
            problems.push(problem(key("token"), "is required (from BotFather)"));
        }
        if !is_http_url(&t.api_url) {
            problems.push(problem(
                key("api_url"),
                "must start with http:// or https://",
            ));
        }
        match t.mode.as_str() {
            "polling" => {}
            "webhook" => {
                if t.webhook_secret.as_ref().is_none_or(|s| {
                    s.expose().len() < 8 || s.expose().len() > 256 || !id_chars(s.expose())
                }) {
                    problems.push(problem(
                        key("webhook_secret"),
                        "is required in webhook mode (8 to 256 of A-Z a-z 0-9 _ -)",
                    ));
                }
            }
            _ => problems.push(problem(key("mode"), "must be \"polling\" or \"webhook\"")),
        }
    }
}

fn validate_pay(c: &Config, problems: &mut Vec<Problem>) {
    let mut ids = BTreeMap::new();
    for (i, p) in c.products.iter().enumerate() {
        let key = |k: &str| format!("products[{i}].{k}");
        if !is_id(&p.id) {
            problems.push(problem(
                key("id"),
                "must be non-empty letters, digits, _ or -",
            ));
        } else if let Some(first) = ids.insert(p.id.clone(), i) {
            problems.push(problem(
                key("id"),
                format!("{:?} is already products[{first}]", p.id),
            ));
        }
        if p.name.trim().is_empty() || p.name.chars().count() > 100 {
            problems.push(problem(key("name"), "must be 1 to 100 characters"));
        }
        if !(1..=100_000_000).contains(&p.price_fen) {
            problems.push(problem(
                key("price_fen"),
                "must be between 1 and 100000000 fen",
            ));
        }
        if p.credits == 0 {
            problems.push(problem(key("credits"), "must be at least 1"));
        }
    }
    let pay = &c.pay;
    if pay.order_ttl_secs == 0 {
        problems.push(problem("pay.order_ttl_secs", "must be greater than 0"));
    }
    if pay.reconcile_interval_secs == 0 {
        problems.push(problem(
            "pay.reconcile_interval_secs",
            "must be greater than 0",
        ));
    }
    if (pay.wechat.is_some() || pay.alipay.is_some())
        && !c
            .server
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    {
        problems.push(problem(
            "server.public_url",
            "payments need the public https URL the providers send notifications to",
        ));
    }
    if let Some(w) = &pay.wechat {
        if let Err(e) = crate::billing::load_wechat_keys(w) {
            problems.push(problem(format!("pay.wechat.{}", e.0), e.1));
        }
        if !is_http_url(&w.api_base) {
            problems.push(problem(
                "pay.wechat.api_base",
                "must start with http:// or https://",
            ));
        }
    }
    if let Some(a) = &pay.alipay {
        if let Err(e) = crate::billing::load_alipay_keys(a) {
            problems.push(problem(format!("pay.alipay.{}", e.0), e.1));
        }
        if a.app_id.trim().is_empty() {
            problems.push(problem("pay.alipay.app_id", "is required"));
        }
        if !is_http_url(&a.gateway) {
            problems.push(problem(
                "pay.alipay.gateway",
                "must start with http:// or https://",
            ));
        }
    }
}

/// Letters, digits, `_` and `-` only (ids used in URLs, keys and secrets Telegram accepts).
fn id_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A non-empty [`id_chars`] string.
fn is_id(s: &str) -> bool {
    !s.is_empty() && id_chars(s)
}

fn is_http_url(s: &str) -> bool {
    (s.starts_with("http://") && s.len() > 7) || (s.starts_with("https://") && s.len() > 8)
}

impl Config {
    /// The provider actually used.
    #[must_use]
    pub fn provider(&self) -> Provider {
        self.llm.provider.unwrap_or(
            if self.llm.api_keys.is_empty() && self.llm.upstreams.is_empty() {
                Provider::Demo
            } else {
                Provider::Openai
            },
        )
    }

    /// The configuration as TOML with secrets redacted, for `check-config`.
    #[must_use]
    pub fn redacted_summary(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("(cannot render: {e})"))
    }

    /// What works but is unsafe or surprising, for `check-config` to print (the daemon still
    /// starts).
    #[must_use]
    pub fn warnings(&self) -> Vec<Problem> {
        let mut warnings = Vec::new();
        for (i, mp) in self.wechat_mp.iter().enumerate() {
            if mp.encoding_aes_key.is_none() && !mp.login_keyword.trim().is_empty() {
                warnings.push(problem(
                    format!("wechat_mp[{i}].encoding_aes_key"),
                    format!(
                        "account `{}` hands out login codes (login_keyword) in plaintext mode: \
                         anyone who can read the callbacks sees them; set encoding_aes_key (safe \
                         mode), or serve the callback URL only over TLS",
                        mp.id
                    ),
                ));
            }
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn plaintext_accounts_with_login_codes_are_warned_about() {
        let account = |key: &str| {
            format!(
                "[[wechat_mp]]\nid = \"m\"\napp_id = \"wx1234567890abcdef\"\ntoken = \"t\"\n{key}"
            )
        };
        let (plain, _) = parse(&account(""), &[], None).unwrap();
        let warnings = plain.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].key, "wechat_mp[0].encoding_aes_key");
        let key = format!("encoding_aes_key = \"{}\"\n", "a".repeat(43));
        let (safe, _) = parse(&account(&key), &[], None).unwrap();
        assert!(safe.warnings().is_empty());
        assert!(parse("", &[], None).unwrap().0.warnings().is_empty());
    }

    #[test]
    fn empty_config_is_valid_and_uses_demo() {
        let (c, _) = parse("", &[], None).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.storage.path, PathBuf::from("./data"));
        assert_eq!(c.provider(), Provider::Demo);
        assert_eq!(c.llm.models.len(), 1);
        assert_eq!(c.llm.models[0].name, c.llm.model);
    }

    #[test]
    fn postgres_storage_needs_a_url_and_a_plain_schema() {
        let err = parse(
            "[storage]\nbackend = \"postgres\"\nschema = \"Bad-Name\"\npool_size = 0\n",
            &[],
            None,
        )
        .unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["storage.url", "storage.schema", "storage.pool_size"]);
        let err = parse(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://a@b/c?sslmode=nonsense\"\n",
            &[],
            None,
        )
        .unwrap_err();
        assert_eq!(err.0[0].key, "storage.url");
        let url = "postgres://u:secret@db:5432/cr?sslmode=require";
        let (c, _) = parse(
            "",
            &env(&[
                ("CHATRELAY__STORAGE__BACKEND", "postgres"),
                ("CHATRELAY__STORAGE__URL", url),
            ]),
            None,
        )
        .unwrap();
        let opts = c.storage.postgres().unwrap();
        assert_eq!(
            (opts.url.as_str(), opts.schema.as_deref(), opts.pool_size),
            (url, Some("public"), 16)
        );
        assert!(!c.redacted_summary().contains("secret"));
        let (sled, _) = parse("", &[], None).unwrap();
        assert!(sled.storage.postgres().is_none());
    }

    #[test]
    fn openai_api_key_env_switches_to_openai() {
        let (c, _) = parse("", &env(&[("OPENAI_API_KEY", "sk-test")]), None).unwrap();
        assert_eq!(c.provider(), Provider::Openai);
        assert_eq!(c.llm.api_keys[0].expose(), "sk-test");
    }

    #[test]
    fn env_overrides_file() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\n[quota]\nfree_daily = 3\n";
        let (c, keys) = parse(
            text,
            &env(&[
                ("CHATRELAY__SERVER__LISTEN", "0.0.0.0:9000"),
                ("CHATRELAY__QUOTA__FREE_DAILY", "7"),
                ("CHATRELAY__SERVER__ADMIN_TOKEN", "1234567890123456"),
                ("CHATRELAY__LLM__API_KEYS", "[\"a\", \"b\"]"),
                ("CHATRELAY__LLM__MODEL", "42"),
                ("CHATRELAY__LLM__MODELS", "[{name = \"42\", credits = 2}]"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:9000");
        assert_eq!(c.quota.free_daily, 7);
        assert_eq!(c.server.admin_token.unwrap().expose(), "1234567890123456");
        assert_eq!(c.llm.api_keys.len(), 2);
        assert_eq!(c.llm.model, "42");
        assert_eq!(c.llm.models[0].credits, 2);
        assert!(keys.contains(&"server.listen".to_owned()));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
[server]
listen = "nope"
lisen = "typo"
admin_token = "short"
[quota]
free_daily = "ten"
[llm]
model = "missing"
[[llm.models]]
name = "a"
[[llm.models]]
name = "a"
[bogus]
x = 1
"#;
        let err = parse(text, &[], None).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "server.listen",
            "server.lisen",
            "server.admin_token",
            "quota.free_daily",
            "llm.model",
            "llm.models[1].name",
            "bogus",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
    }

    #[test]
    fn problems_beside_a_type_error_are_all_reported() {
        // Once, a type error hid the rest of its section: the unknown key and the negative
        // number here went unreported.
        let text = r#"
[llm]
timeout_secs = -5
modle = "x"
max_retries = "three"
[[products]]
id = "p1"
name = "P"
price_fen = "ten"
credits = 10
[[products]]
id = "p2"
name = "Q"
price_fen = 0
credit = 5
"#;
        let err = parse(text, &[], None).unwrap_err();
        let got: Vec<String> = err.0.iter().map(ToString::to_string).collect();
        for expected in [
            "llm.timeout_secs: must be a whole number, 0 or more (found -5)",
            "llm.modle: unknown key; did you mean `model`?",
            "llm.max_retries: must be a whole number, 0 or more (found the text \"three\")",
            "products[0].price_fen: must be a whole number (found the text \"ten\")",
            "products[1].credit: unknown key; did you mean `credits`?",
            "products[1].credits: is required",
        ] {
            assert!(
                got.iter().any(|g| g == expected),
                "{expected} missing from {got:#?}"
            );
        }
        assert!(
            got.iter()
                .any(|g| g.starts_with("products[1].price_fen: must be between")),
            "validation still runs beside type errors: {got:#?}"
        );
        // Nothing in serde's words, nothing reported twice.
        for g in &got {
            for word in ["usize", "u64", "i64", "u32", ".[", "\nin `"] {
                assert!(!g.contains(word), "{g}");
            }
        }
        let keys: std::collections::BTreeSet<_> = err.0.iter().map(|p| &p.key).collect();
        assert_eq!(keys.len(), err.0.len(), "{got:#?}");
    }

    #[test]
    fn secret_files_are_read_and_redacted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "abcdefghijklmnopqrst\n").unwrap();
        std::fs::write(dir.path().join("keys"), "sk-1\nsk-2\n").unwrap();
        let cfg_path = dir.path().join("chatrelay.toml");
        let text = "[server]\nadmin_token_file = \"token\"\n[llm]\napi_keys_file = \"keys\"\n";
        let (c, _) = parse(text, &[], Some(&cfg_path)).unwrap();
        assert_eq!(
            c.server.admin_token.as_ref().unwrap().expose(),
            "abcdefghijklmnopqrst"
        );
        assert_eq!(c.llm.api_keys.len(), 2);
        let summary = c.redacted_summary();
        assert!(!summary.contains("abcdefghijklmnopqrst"), "{summary}");
        assert!(!summary.contains("sk-1"), "{summary}");
        assert!(format!("{c:?}").find("sk-2").is_none());
    }

    #[test]
    fn missing_secret_file_and_both_forms_are_problems() {
        let text = "[server]\nadmin_token = \"abcdefghijklmnopq\"\nadmin_token_file = \"x\"\n[llm]\napi_keys_file = \"/nonexistent/keys\"\n";
        let err = parse(text, &[], None).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"server.admin_token_file"), "{keys:?}");
        assert!(keys.contains(&"llm.api_keys_file"), "{keys:?}");
    }

    #[test]
    fn syntax_error_names_the_file() {
        let err = parse("[server\n", &[], None).unwrap_err();
        assert_eq!(err.0[0].key, "(file)");
    }

    #[test]
    fn the_buy_hint_names_only_what_exists() {
        let mut c = Config::default();
        c.quota.free_daily = 0;
        assert_eq!(c.bot.texts.buy_hint_for(&c), "", "nothing to point to");
        c.quota.free_daily = 10;
        assert_eq!(c.bot.texts.buy_hint_for(&c), "免费额度每天零点恢复。");
        // Products without a payment channel cannot be bought.
        c.products.push(
            serde_json::from_value(
                serde_json::json!({"id": "p10", "name": "10", "price_fen": 100, "credits": 10}),
            )
            .unwrap(),
        );
        assert!(!c.bot.texts.buy_hint_for(&c).contains("购买"));
        c.bot.texts.buy_hint = "找管理员充值。".into();
        assert_eq!(
            c.bot.texts.buy_hint_for(&c),
            "找管理员充值。",
            "a configured hint is kept"
        );
    }
}
