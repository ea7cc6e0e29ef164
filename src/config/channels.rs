//! The sections of the chat platforms: `[[wechat_mp]]`, `[[wecom]]`, `[[wecom_aibot]]`,
//! `[[wecom_robot]]`, `[[zsxq]]`, `[[telegram]]` and `[web]`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::secret::Secret;

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
    /// Web authorization (网页授权) is available: a verified service account whose console
    /// lists `server.public_url`'s domain as 网页授权域名. Logs users in on the web page
    /// without a code, and gives the openid WeChat Pay's JSAPI needs.
    pub oauth: bool,
    /// `snsapi_base` (silent, the openid only) or `snsapi_userinfo` (also the nickname).
    pub oauth_scope: String,
    /// Where browsers are sent to authorize (tests point it at a fake).
    pub oauth_base: String,
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
            oauth: false,
            oauth_scope: "snsapi_base".to_owned(),
            oauth_base: "https://open.weixin.qq.com".to_owned(),
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
    /// Inside WeChat's browser, a visitor who is not logged in goes through the account's
    /// web authorization by itself (when the login account has `oauth = true`).
    pub wechat_auto_login: bool,
    /// The `[[wechat_mp]]` id the page logs in with (codes, web authorization, scanning);
    /// default: the first account with `oauth = true`, else the first account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_account: Option<String>,
    /// Saved web conversations a user keeps at most; saving one more removes the least
    /// recently updated (`/api/conversations`).
    pub conversations_max: usize,
    /// The largest saved web conversation, in KiB of its title and messages' text; a bigger
    /// save is refused with `413`.
    pub conversation_max_kb: u64,
}

impl WebConfig {
    /// The account the page logs in with (see [`WebConfig::login_account`]).
    #[must_use]
    pub fn login_mp<'a>(&self, accounts: &'a [WechatMpConfig]) -> Option<&'a WechatMpConfig> {
        match &self.login_account {
            Some(id) => accounts.iter().find(|a| &a.id == id),
            None => accounts
                .iter()
                .find(|a| a.oauth)
                .or_else(|| accounts.first()),
        }
    }
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            title: "AI 助手".to_owned(),
            guest_credits: 0,
            mp_name: None,
            mp_qr_url: None,
            wechat_auto_login: true,
            login_account: None,
            conversations_max: 200,
            conversation_max_kb: 512,
        }
    }
}
