//! The sections of the engine and the process: `[server]`, `[storage]`, `[llm]` with its models
//! and upstreams, `[quota]`, `[bot]` with its commands and texts, `[log]`, `[[roles]]`,
//! `[[scopes]]`, `[images]` and `[moderation]` (`[speech]` is in `speech.rs`); and
//! [`Config`], which holds them all with the platforms' and the shop's sections.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::channels::{
    TelegramConfig, WebConfig, WechatMpConfig, WecomAibotConfig, WecomConfig, WecomRobotConfig,
    ZsxqConfig,
};
use super::pay::{PayConfig, PlanConfig, ProductConfig};
use super::secret::{Secret, lenient_opt_string};
use super::speech::SpeechConfig;

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
    /// `[[plans]]`: membership plans products and codes grant.
    pub plans: Vec<PlanConfig>,
    /// `[pay]`: payment channels and order handling.
    pub pay: PayConfig,
    /// `[web]`: the chat page.
    pub web: WebConfig,
    /// `[console]`: the operators' web console at `/console`.
    pub console: ConsoleConfig,
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
    /// `[speech]`: voice messages in (transcription).
    pub speech: Option<SpeechConfig>,
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
    /// Answers are also spoken (`[speech] voice`, `speech_model`) and sent as a voice
    /// message where the platform has one; the text is always sent too. Needs `[speech]`.
    #[serde(default)]
    pub voice_reply: bool,
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

/// `[console]`: the operators' web console (`/console`), logged into with the admin token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// How long a console session lasts after login, in hours (1 to 720).
    pub session_hours: u64,
    /// Days the change log of the admin API (`GET /admin/changes`) keeps each change
    /// (1 to 3650); older ones are purged by the cleanup job.
    pub change_log_days: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            session_hours: 12,
            change_log_days: 180,
        }
    }
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
    /// Page cache size of the embedded database, in MiB. The default (8) keeps a daemon with
    /// 100,000 users near 115 MiB; pages not cached are read again from the file, which the
    /// operating system's own cache usually holds, so a bigger cache buys a little speed on a
    /// big store for memory (BENCHMARKS.md: "Memory after 100,000 new followers").
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
            cache_capacity_mb: 8,
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
    /// Plain-HTTP upstreams that speak HTTP/2 without TLS (h2c): one connection carries every
    /// stream instead of one connection each (HTTPS upstreams negotiate HTTP/2 by themselves).
    pub http2_prior_knowledge: bool,
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
            http2_prior_knowledge: false,
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
    /// Days the usage log (用量明细) keeps each answer's record; older ones are pruned by the
    /// cleanup job. 0 keeps them forever.
    pub usage_days: u64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            free_daily: 10,
            timezone: "Asia/Shanghai".to_owned(),
            reservation_ttl_secs: 900,
            usage_days: 90,
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
    /// Redeem a code (`/redeem XXXX-XXXX-XXXX-XXXX`, `兑换 XXXX-…`).
    pub redeem: Vec<String>,
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
            redeem: v(&["/redeem", "兑换"]),
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
    /// A code was redeemed: `{credits}` added, `{paid}` paid credits now, `{available}`.
    pub redeem_ok: String,
    /// How to use the redeem command: `{command}`.
    pub redeem_usage: String,
    /// A plan code was redeemed: `{plan}` (its name), `{end}` (its last day), `{daily}`.
    pub redeem_plan_ok: String,
    /// Added to the quota command's answer while a plan is active: `{plan}`, `{daily}`,
    /// `{end}` (its last day, `YYYY-MM-DD`), `{days}` (days left, today included).
    pub quota_plan: String,
    /// What a voice message was heard as (`[speech] show_text`): `{text}`.
    pub voice_heard: String,
    /// Voice messages cannot be understood here (no `[speech]`, or no ffmpeg for WeChat's
    /// AMR/Speex audio and no `Recognition`).
    pub voice_off: String,
    /// A voice message larger or longer than `[speech]` allows: `{seconds}` (`max_seconds`).
    pub voice_too_long: String,
    /// A voice message that could not be downloaded, read or transcribed.
    pub voice_failed: String,
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
            redeem_ok: "兑换成功：增加 {credits} 额度，当前余额 {paid}（可用 {available}）。"
                .to_owned(),
            redeem_usage: "用法：{command} 兑换码，例如「{command} XXXX-XXXX-XXXX-XXXX」。"
                .to_owned(),
            redeem_plan_ok: "兑换成功：{plan}已生效，有效期至 {end}，期间每天额外 {daily} 额度。"
                .to_owned(),
            quota_plan: "会员：{plan}，每天额外 {daily} 额度，有效期至 {end}（剩 {days} 天）。"
                .to_owned(),
            voice_heard: "你说的是：{text}".to_owned(),
            voice_off: "语音暂不支持，请发送文字。".to_owned(),
            voice_too_long: "语音太长了，请控制在 {seconds} 秒以内，或者发送文字。".to_owned(),
            voice_failed: "这条语音没有听清，请再说一次或者发送文字。".to_owned(),
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
