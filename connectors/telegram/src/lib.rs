//! Telegram Bot API adapter for chatrelay.
//!
//! # Layout
//! - Pure helpers (no I/O): [`to_html`] (markdown to Telegram's HTML subset),
//!   [`split_for_telegram`] (4096 UTF-16 units per message), [`addressed_to_bot`] (is a
//!   message for the bot, and its text without the mention), [`addressed_voice`] (a voice
//!   note or audio file for the bot), [`parse_command`].
//! - [`TgBot`]: a thin adapter over teloxide-core's [`Bot`] with the few calls chatrelay
//!   makes (getMe, setMyCommands, getUpdates, sendChatAction, sendMessage, editMessageText),
//!   errors classified as [`TgError`].

use std::time::Duration;

use chatrelay_core::split::{Unit, split_message};
use teloxide_core::errors::{ApiError, RequestError};
use teloxide_core::payloads::{
    EditMessageTextSetters, GetUpdatesSetters, SendMessageSetters, SendPhotoSetters,
    SendVoiceSetters,
};
use teloxide_core::requests::Requester;
use teloxide_core::types::{
    BotCommand, ChatAction, ChatId, FileId, InputFile, LinkPreviewOptions, MessageId, ParseMode,
    ReplyParameters,
};

pub use teloxide_core::Bot;
pub use teloxide_core::types::{Me, Message, Update, UpdateKind};

/// Telegram's limit for one message, in UTF-16 code units.
pub const MAX_MESSAGE_UTF16: usize = 4096;

// === formatting ===

/// Escapes text for Telegram HTML (`&`, `<`, `>`; `"` too, so it is safe in attributes).
#[must_use]
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Renders the engine's markdown as Telegram HTML: fenced code blocks become
/// `<pre><code class="language-x">`, `` `code` `` `<code>`, `**bold**`/`__bold__` and headings
/// `<b>`, `*italic*` `<i>`, `~~strike~~` `<s>`, `[text](http…)` `<a href>`; everything else is
/// escaped. Markers that are not closed are shown as typed; an unclosed fence runs to the end.
#[must_use]
pub fn to_html(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len() + 16);
    let mut lines = markdown.split_inclusive('\n').peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            let lang = info.trim();
            let lang: String = lang
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '_' | '#'))
                .collect();
            let mut code = String::new();
            for l in lines.by_ref() {
                if l.trim_start().starts_with("```") && l.trim().trim_matches('`').is_empty() {
                    break;
                }
                code.push_str(l);
            }
            let code = code.strip_suffix('\n').unwrap_or(&code);
            if lang.is_empty() {
                out.push_str("<pre><code>");
            } else {
                out.push_str(&format!("<pre><code class=\"language-{lang}\">"));
            }
            out.push_str(&escape_html(code));
            out.push_str("</code></pre>");
            if lines.peek().is_some() {
                out.push('\n');
            }
            continue;
        }
        let (body, newline) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let hashes = trimmed.bytes().take_while(|&b| b == b'#').count();
        if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
            let title = trimmed[hashes..].trim();
            out.push_str("<b>");
            out.push_str(&inline_html(title));
            out.push_str("</b>");
        } else {
            out.push_str(&inline_html(body));
        }
        out.push_str(newline);
    }
    out
}

/// Inline markdown of one line to HTML.
fn inline_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if c == '`'
            && let Some(end) = rest[1..].find('`')
            && end > 0
        {
            out.push_str("<code>");
            out.push_str(&escape_html(&rest[1..=end]));
            out.push_str("</code>");
            rest = &rest[end + 2..];
            continue;
        }
        if let Some((tag, marker)) = [("b", "**"), ("b", "__"), ("s", "~~")]
            .into_iter()
            .find(|(_, m)| rest.starts_with(m))
            && let Some(end) = rest[2..].find(marker)
            && end > 0
            && !rest[2..].starts_with(' ')
        {
            out.push_str(&format!("<{tag}>"));
            out.push_str(&inline_html(&rest[2..2 + end]));
            out.push_str(&format!("</{tag}>"));
            rest = &rest[2 + end + 2..];
            continue;
        }
        if c == '*'
            && !rest[1..].starts_with([' ', '*'])
            && let Some(end) = rest[1..].find('*')
            && end > 0
            && !rest[..=end].ends_with(' ')
        {
            out.push_str("<i>");
            out.push_str(&inline_html(&rest[1..=end]));
            out.push_str("</i>");
            rest = &rest[end + 2..];
            continue;
        }
        if c == '['
            && let Some(close) = rest.find("](")
            && let Some(paren) = rest[close + 2..].find(')')
        {
            let label = &rest[1..close];
            let url = &rest[close + 2..close + 2 + paren];
            if !label.is_empty()
                && !label.contains('[')
                && (url.starts_with("http://") || url.starts_with("https://"))
                && !url.contains(char::is_whitespace)
            {
                out.push_str(&format!("<a href=\"{}\">", escape_html(url)));
                out.push_str(&inline_html(label));
                out.push_str("</a>");
                rest = &rest[close + 2 + paren + 1..];
                continue;
            }
        }
        out.push_str(&escape_html(&rest[..c.len_utf8()]));
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Splits an answer into messages of at most 4096 UTF-16 units, preferably at blank lines
/// and newlines. Concatenated, the parts are the text.
#[must_use]
pub fn split_for_telegram(text: &str) -> Vec<String> {
    split_message(text, MAX_MESSAGE_UTF16, Unit::Utf16)
}

// === addressing and commands ===

/// Whether `text` mentions `@username` as a whole word; returns the byte range.
fn find_mention(text: &str, username: &str) -> Option<(usize, usize)> {
    if username.is_empty() {
        return None;
    }
    let needle = format!("@{}", username.to_ascii_lowercase());
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(pos) = lower[from..].find(&needle) {
        let start = from + pos;
        let end = start + needle.len();
        let next_ok = lower[end..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        if next_ok {
            return Some((start, end));
        }
        from = end;
    }
    None
}

/// The text of `message` for the bot `bot_username`, if it is addressed to the bot: always in
/// private chats; in groups when it mentions `@bot_username` (removed from the text, also in
/// `/command@bot_username`) or replies to one of the bot's messages. `None` for messages
/// without text and for messages to others.
#[must_use]
pub fn addressed_to_bot(message: &Message, bot_username: &str) -> Option<String> {
    let text = message.text()?;
    let stripped = strip_mentions(text, bot_username);
    if message.chat.is_private() {
        return Some(stripped);
    }
    let mentioned = find_mention(text, bot_username).is_some();
    let replies_to_bot = message
        .reply_to_message()
        .and_then(|m| m.from.as_ref())
        .is_some_and(|u| {
            u.is_bot
                && u.username
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(bot_username))
        });
    (mentioned || replies_to_bot).then_some(stripped)
}

/// The largest size of a photo message for the bot, with its caption (mentions removed):
/// photos in private chats, and in groups photos whose caption mentions the bot or that reply
/// to it. `None` for anything else.
#[must_use]
pub fn addressed_photo(message: &Message, bot_username: &str) -> Option<(String, String)> {
    let sizes = message.photo()?;
    let largest = sizes
        .iter()
        .max_by_key(|p| u64::from(p.width) * u64::from(p.height))?;
    let caption = message.caption().unwrap_or_default();
    let addressed = caption_addresses_bot(message, caption, bot_username);
    addressed.then(|| {
        (
            largest.file.id.0.clone(),
            strip_mentions(caption, bot_username),
        )
    })
}

/// Whether a message with a caption (a photo, a voice note) is for the bot: in a private chat,
/// or its caption mentions the bot, or it replies to the bot.
fn caption_addresses_bot(message: &Message, caption: &str, bot_username: &str) -> bool {
    message.chat.is_private()
        || find_mention(caption, bot_username).is_some()
        || message
            .reply_to_message()
            .and_then(|m| m.from.as_ref())
            .is_some_and(|u| {
                u.is_bot
                    && u.username
                        .as_deref()
                        .is_some_and(|n| n.eq_ignore_ascii_case(bot_username))
            })
}

/// A voice note or audio file sent to the bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoiceNote {
    /// Its `file_id` (for getFile).
    pub file_id: String,
    /// Its format as a file extension: `ogg` for voice notes (OGG/Opus), else from the audio
    /// file's name or MIME type (`mp3`, `m4a`, `wav`...).
    pub format: String,
    /// The size Telegram announces, in bytes.
    pub size: u64,
    /// The length Telegram announces, in seconds.
    pub seconds: u64,
}

/// A voice note (`voice`) or audio file (`audio`) for the bot: in private chats, and in
/// groups when its caption mentions the bot or it replies to the bot. `None` otherwise.
#[must_use]
pub fn addressed_voice(message: &Message, bot_username: &str) -> Option<VoiceNote> {
    let note = if let Some(v) = message.voice() {
        VoiceNote {
            file_id: v.file.id.0.clone(),
            format: "ogg".to_owned(),
            size: u64::from(v.file.size),
            seconds: u64::from(v.duration.seconds()),
        }
    } else {
        let a = message.audio()?;
        let from_name = a
            .file_name
            .as_deref()
            .and_then(|n| n.rsplit_once('.'))
            .map(|(_, ext)| ext.to_ascii_lowercase());
        let from_mime = a.mime_type.as_ref().map(|m| match m.subtype().as_str() {
            "mpeg" => "mp3".to_owned(),
            "x-wav" | "wave" => "wav".to_owned(),
            "mp4" | "x-m4a" => "m4a".to_owned(),
            other => other.to_owned(),
        });
        VoiceNote {
            file_id: a.file.id.0.clone(),
            format: from_name.or(from_mime).unwrap_or_else(|| "mp3".to_owned()),
            size: u64::from(a.file.size),
            seconds: u64::from(a.duration.seconds()),
        }
    };
    let caption = message.caption().unwrap_or_default();
    let addressed = caption_addresses_bot(message, caption, bot_username);
    addressed.then_some(note)
}

/// `text` without every `@bot_username` mention, trimmed.
fn strip_mentions(text: &str, bot_username: &str) -> String {
    let mut out = text.to_owned();
    while let Some((start, end)) = find_mention(&out, bot_username) {
        out.replace_range(start..end, "");
    }
    out.trim().to_owned()
}

/// The commands chatrelay's Telegram bots understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `/start`: the welcome.
    Start,
    /// `/new`: a new conversation.
    New,
    /// `/quota`: credits left.
    Quota,
    /// `/buy`: credit packs.
    Buy,
    /// `/code`: a web login code.
    Code,
    /// `/help`.
    Help,
}

impl Command {
    /// Every command with its description, for setMyCommands.
    pub const ALL: [(Command, &'static str, &'static str); 6] = [
        (Command::Start, "start", "开始使用"),
        (Command::New, "new", "开始新的对话"),
        (Command::Quota, "quota", "查看剩余额度"),
        (Command::Buy, "buy", "购买额度"),
        (Command::Code, "code", "获取网页登录验证码"),
        (Command::Help, "help", "帮助"),
    ];
}

/// Parses `/start`, `/new`, `/quota`, `/buy`, `/code`, `/help`, optionally suffixed with
/// `@bot_username` (any case) and followed by arguments. `None` for other text, other
/// commands, and commands addressed to another bot.
#[must_use]
pub fn parse_command(text: &str, bot_username: &str) -> Option<Command> {
    let first = text.split_whitespace().next()?;
    let word = first.strip_prefix('/')?;
    let (name, target) = match word.split_once('@') {
        Some((n, t)) => (n, Some(t)),
        None => (word, None),
    };
    if target.is_some_and(|t| !t.eq_ignore_ascii_case(bot_username)) {
        return None;
    }
    let name = name.to_ascii_lowercase();
    Command::ALL
        .into_iter()
        .find(|(_, n, _)| *n == name)
        .map(|(c, _, _)| c)
}

// === the adapter ===

/// Why a Bot API call failed, as chatrelay acts on it.
#[derive(Debug, thiserror::Error)]
pub enum TgError {
    /// Flood control: wait this long before the next call.
    #[error("rate limited; retry after {0:?}")]
    RetryAfter(Duration),
    /// Telegram could not parse the HTML entities; resend as plain text.
    #[error("Telegram rejected the formatting: {0}")]
    BadEntities(String),
    /// An edit that changes nothing.
    #[error("message is not modified")]
    NotModified,
    /// Anything else.
    #[error(transparent)]
    Other(RequestError),
    /// Something chatrelay was asked to send cannot be sent (a malformed URL).
    #[error("{0}")]
    Invalid(String),
}

impl From<RequestError> for TgError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::RetryAfter(s) => TgError::RetryAfter(s.duration()),
            RequestError::Api(ApiError::CantParseEntities(m)) => TgError::BadEntities(m),
            RequestError::Api(ApiError::MessageNotModified) => TgError::NotModified,
            RequestError::Api(ApiError::Unknown(m))
                if m.contains("can't parse entities") || m.contains("can't find end") =>
            {
                TgError::BadEntities(m)
            }
            RequestError::Api(ApiError::Unknown(m)) if m.contains("message is not modified") => {
                TgError::NotModified
            }
            other => TgError::Other(other),
        }
    }
}

/// Why a file download failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadError {
    /// Larger than allowed (getFile's size, or found while reading).
    #[error("the file is larger than {max} bytes")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// getFile or the download failed.
    #[error("downloading the file failed: {0}")]
    Failed(String),
}

/// One bot: teloxide-core's [`Bot`] with the calls chatrelay makes.
#[derive(Clone, Debug)]
pub struct TgBot {
    bot: Bot,
}

impl TgBot {
    /// A bot on `api_url` (normally `https://api.telegram.org`). `client` should time out
    /// later than the long-polling timeout (teloxide's default settings use 17 s).
    pub fn new(token: &str, api_url: &str, client: reqwest::Client) -> Result<Self, String> {
        let url = reqwest::Url::parse(api_url).map_err(|e| format!("api_url: {e}"))?;
        Ok(Self {
            bot: Bot::with_client(token, client).set_api_url(url),
        })
    }

    /// A client with teloxide's recommended settings (5 s connect, 17 s total).
    pub fn default_client() -> Result<reqwest::Client, reqwest::Error> {
        teloxide_core::net::default_reqwest_settings().build()
    }

    /// The underlying teloxide bot.
    pub fn inner(&self) -> &Bot {
        &self.bot
    }

    /// getMe.
    pub async fn get_me(&self) -> Result<Me, TgError> {
        Ok(self.bot.get_me().await?)
    }

    /// setMyCommands with [`Command::ALL`].
    pub async fn set_commands(&self) -> Result<(), TgError> {
        let commands = Command::ALL
            .iter()
            .map(|(_, name, desc)| BotCommand::new(*name, *desc));
        self.bot.set_my_commands(commands).await?;
        Ok(())
    }

    /// getUpdates from `offset`, waiting up to `timeout_secs`.
    pub async fn get_updates(
        &self,
        offset: i32,
        timeout_secs: u32,
    ) -> Result<Vec<Update>, TgError> {
        Ok(self
            .bot
            .get_updates()
            .offset(offset)
            .timeout(timeout_secs)
            .await?)
    }

    /// The download URL of a file (getFile). It contains the bot token: use it, never log it.
    pub async fn file_url(&self, file_id: &str) -> Result<String, TgError> {
        let file = self.bot.get_file(FileId(file_id.to_owned())).await?;
        let base = self.bot.api_url();
        Ok(format!(
            "{}/file/bot{}/{}",
            base.as_str().trim_end_matches('/'),
            self.bot.token(),
            file.path
        ))
    }

    /// Downloads a file the user sent (getFile, then the file URL through the configured API
    /// root), refusing one larger than `max_bytes` before reading (getFile's `file_size`) and
    /// while reading. Errors never carry the URL (it holds the bot token).
    pub async fn download(&self, file_id: &str, max_bytes: u64) -> Result<Vec<u8>, DownloadError> {
        let file = self
            .bot
            .get_file(FileId(file_id.to_owned()))
            .await
            .map_err(|e| DownloadError::Failed(TgError::from(e).to_string()))?;
        if u64::from(file.meta.size) > max_bytes {
            return Err(DownloadError::TooLarge { max: max_bytes });
        }
        let url = format!(
            "{}/file/bot{}/{}",
            self.bot.api_url().as_str().trim_end_matches('/'),
            self.bot.token(),
            file.path
        );
        let mut resp = self
            .bot
            .client()
            .get(&url)
            .send()
            .await
            .map_err(|e| DownloadError::Failed(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(DownloadError::Failed(format!("status {}", resp.status())));
        }
        if resp.content_length().is_some_and(|n| n > max_bytes) {
            return Err(DownloadError::TooLarge { max: max_bytes });
        }
        let limit = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| DownloadError::Failed(e.without_url().to_string()))?
        {
            if bytes.len().saturating_add(chunk.len()) > limit {
                return Err(DownloadError::TooLarge { max: max_bytes });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    /// sendPhoto by URL (Telegram fetches it), replying to `reply_to` when given.
    pub async fn send_photo(
        &self,
        chat: i64,
        url: &str,
        reply_to: Option<i32>,
    ) -> Result<(), TgError> {
        let url =
            reqwest::Url::parse(url).map_err(|e| TgError::Invalid(format!("picture URL: {e}")))?;
        let mut req = self.bot.send_photo(ChatId(chat), InputFile::url(url));
        if let Some(id) = reply_to {
            req = req.reply_parameters(ReplyParameters {
                allow_sending_without_reply: Some(true),
                ..ReplyParameters::new(MessageId(id))
            });
        }
        req.await?;
        Ok(())
    }

    /// sendVoice: `ogg` (OGG/Opus, what Telegram plays as a voice note) uploaded from
    /// memory, replying to `reply_to` when given.
    pub async fn send_voice(
        &self,
        chat: i64,
        ogg: bytes::Bytes,
        reply_to: Option<i32>,
    ) -> Result<(), TgError> {
        let file = InputFile::memory(ogg).file_name("voice.ogg");
        let mut req = self.bot.send_voice(ChatId(chat), file);
        if let Some(id) = reply_to {
            req = req.reply_parameters(ReplyParameters {
                allow_sending_without_reply: Some(true),
                ..ReplyParameters::new(MessageId(id))
            });
        }
        req.await?;
        Ok(())
    }

    /// sendChatAction typing.
    pub async fn typing(&self, chat: i64) -> Result<(), TgError> {
        self.bot
            .send_chat_action(ChatId(chat), ChatAction::Typing)
            .await?;
        Ok(())
    }

    /// sendMessage, as HTML when `html`, replying to `reply_to` when given (and still there).
    /// Returns the new message's id.
    pub async fn send(
        &self,
        chat: i64,
        text: &str,
        html: bool,
        reply_to: Option<i32>,
    ) -> Result<i32, TgError> {
        let mut req = self
            .bot
            .send_message(ChatId(chat), text)
            .link_preview_options(no_preview());
        if html {
            req = req.parse_mode(ParseMode::Html);
        }
        if let Some(id) = reply_to {
            req = req.reply_parameters(ReplyParameters {
                allow_sending_without_reply: Some(true),
                ..ReplyParameters::new(MessageId(id))
            });
        }
        Ok(req.await?.id.0)
    }

    /// editMessageText, as HTML when `html`.
    pub async fn edit(
        &self,
        chat: i64,
        message: i32,
        text: &str,
        html: bool,
    ) -> Result<(), TgError> {
        let mut req = self
            .bot
            .edit_message_text(ChatId(chat), MessageId(message), text)
            .link_preview_options(no_preview());
        if html {
            req = req.parse_mode(ParseMode::Html);
        }
        req.await?;
        Ok(())
    }
}

fn no_preview() -> LinkPreviewOptions {
    LinkPreviewOptions {
        is_disabled: true,
        url: None,
        prefer_small_media: false,
        prefer_large_media: false,
        show_above_text: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(json: serde_json::Value) -> Message {
        serde_json::from_value(json).unwrap()
    }

    fn private(text: &str) -> Message {
        msg(serde_json::json!({
            "message_id": 5, "date": 1_700_000_000,
            "chat": {"id": 42, "type": "private", "first_name": "Ann"},
            "from": {"id": 42, "is_bot": false, "first_name": "Ann"},
            "text": text
        }))
    }

    fn group(text: &str, reply_from_bot: Option<&str>) -> Message {
        let mut m = serde_json::json!({
            "message_id": 6, "date": 1_700_000_000,
            "chat": {"id": -100, "type": "supergroup", "title": "G"},
            "from": {"id": 42, "is_bot": false, "first_name": "Ann"},
            "text": text
        });
        if let Some(bot) = reply_from_bot {
            m["reply_to_message"] = serde_json::json!({
                "message_id": 3, "date": 1_700_000_000,
                "chat": {"id": -100, "type": "supergroup", "title": "G"},
                "from": {"id": 7, "is_bot": true, "first_name": "B", "username": bot},
                "text": "earlier"
            });
        }
        msg(m)
    }

    #[test]
    fn html_formats_and_escapes() {
        assert_eq!(to_html("a < b && c > d"), "a &lt; b &amp;&amp; c &gt; d");
        assert_eq!(to_html("**bold** and *it*"), "<b>bold</b> and <i>it</i>");
        assert_eq!(to_html("use `x<y`"), "use <code>x&lt;y</code>");
        assert_eq!(
            to_html("see [docs](https://e.com/?a=1&b=2)"),
            "see <a href=\"https://e.com/?a=1&amp;b=2\">docs</a>"
        );
        assert_eq!(to_html("# Title\ntext"), "<b>Title</b>\ntext");
        assert_eq!(
            to_html("```rust\nfn a() -> i32 { 1 < 2 }\n```\nafter"),
            "<pre><code class=\"language-rust\">fn a() -> i32 { 1 &lt; 2 }</code></pre>\nafter"
                .replace("->", "-&gt;")
        );
        assert_eq!(to_html("```\nopen"), "<pre><code>open</code></pre>");
        assert_eq!(to_html("2 * 3 * 4"), "2 * 3 * 4");
        assert_eq!(to_html("snake_case_name"), "snake_case_name");
        assert_eq!(to_html("[x](javascript:alert)"), "[x](javascript:alert)");
        assert_eq!(to_html("中文 **粗体** 😀"), "中文 <b>粗体</b> 😀");
    }

    #[test]
    fn splits_at_4096_utf16_units() {
        let text = "😀中a\n".repeat(3000);
        let parts = split_for_telegram(&text);
        assert!(parts.len() > 1);
        assert!(
            parts
                .iter()
                .all(|p| p.encode_utf16().count() <= MAX_MESSAGE_UTF16)
        );
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn private_messages_are_always_addressed() {
        assert_eq!(
            addressed_to_bot(&private("hello"), "relay_bot").as_deref(),
            Some("hello")
        );
    }

    #[test]
    fn groups_need_a_mention_or_a_reply() {
        assert_eq!(
            addressed_to_bot(&group("hello all", None), "relay_bot"),
            None
        );
        assert_eq!(
            addressed_to_bot(&group("@Relay_Bot what is rust?", None), "relay_bot").as_deref(),
            Some("what is rust?")
        );
        assert_eq!(
            addressed_to_bot(&group("hi @relay_bot2", None), "relay_bot"),
            None
        );
        assert_eq!(
            addressed_to_bot(&group("/new@relay_bot", None), "relay_bot").as_deref(),
            Some("/new")
        );
        assert_eq!(
            addressed_to_bot(&group("and then?", Some("relay_bot")), "relay_bot").as_deref(),
            Some("and then?")
        );
        assert_eq!(
            addressed_to_bot(&group("and then?", Some("other_bot")), "relay_bot"),
            None
        );
    }

    #[test]
    fn commands_parse_with_optional_bot_name() {
        assert_eq!(parse_command("/start", "b"), Some(Command::Start));
        assert_eq!(parse_command("/new@B", "b"), Some(Command::New));
        assert_eq!(parse_command("/quota now", "b"), Some(Command::Quota));
        assert_eq!(parse_command("/buy", "b"), Some(Command::Buy));
        assert_eq!(parse_command("/code", "b"), Some(Command::Code));
        assert_eq!(parse_command("/help@b", "b"), Some(Command::Help));
        assert_eq!(parse_command("/help@other", "b"), None);
        assert_eq!(parse_command("/unknown", "b"), None);
        assert_eq!(parse_command("hello /new", "b"), None);
    }

    #[test]
    fn errors_are_classified() {
        let e: TgError = RequestError::Api(ApiError::CantParseEntities(
            "Bad Request: can't parse entities: x".into(),
        ))
        .into();
        assert!(matches!(e, TgError::BadEntities(_)));
        let e: TgError =
            RequestError::RetryAfter(teloxide_core::types::Seconds::from_seconds(3)).into();
        assert!(matches!(e, TgError::RetryAfter(d) if d == Duration::from_secs(3)));
    }
}
