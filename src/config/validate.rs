//! The checks beyond types: ranges, formats, references between sections (a model's
//! upstream, a scope's role), key files and rule files. Every problem is collected, in the
//! order of the sections, each under its key.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use super::channels::PushMode;
use super::check::{id_chars, is_http_url, is_id};
use super::read::{Problem, problem};
use super::sections::{Config, Provider, ServerConfig, StorageBackend};
use super::validate_pay;

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

/// Every check, section by section (problems are listed in this order).
pub(super) fn validate(c: &Config, problems: &mut Vec<Problem>) {
    validate_server(c, problems);
    validate_storage(c, problems);
    validate_llm(c, problems);
    validate_quota_and_bot(c, problems);
    validate_wechat_mp(c, problems);
    validate_pay::validate_web_login(c, problems);
    validate_engine_depth(c, problems);
    validate_pay::validate_pay(c, problems);
    validate_wecom(c, problems);
    validate_zsxq(c, problems);
    validate_telegram(c, problems);
    validate_web_and_log(c, problems);
}

/// `[server]`: the address, the public URL, the admin token and the listener's limits.
fn validate_server(c: &Config, problems: &mut Vec<Problem>) {
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
    if !(1..=720).contains(&c.console.session_hours) {
        problems.push(problem("console.session_hours", "must be 1 to 720"));
    }
    if !(1..=3650).contains(&c.console.change_log_days) {
        problems.push(problem("console.change_log_days", "must be 1 to 3650"));
    }
    if c.server.max_body_bytes < 1024 {
        problems.push(problem("server.max_body_bytes", "must be at least 1024"));
    }
    validate_server_limits(&c.server, problems);
}

/// `[storage]`: the cache, the data directory, and PostgreSQL's URL, schema and pool.
fn validate_storage(c: &Config, problems: &mut Vec<Problem>) {
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
}

/// `[llm]` and `[[llm.models]]`: the API, its keys, the timeouts (with the quota's and the
/// engine's), and model names that are unique and include the default.
fn validate_llm(c: &Config, problems: &mut Vec<Problem>) {
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
}

/// `[quota]` and `[bot]`: the time zone, the input limit, the command words.
fn validate_quota_and_bot(c: &Config, problems: &mut Vec<Problem>) {
    if c.quota.usage_days > 36_500 {
        problems.push(problem(
            "quota.usage_days",
            "at most 36500 (100 years); 0 keeps the usage log forever",
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
        ("bot.commands.redeem", &c.bot.commands.redeem),
    ] {
        if words.iter().any(|w| w.trim().is_empty()) {
            problems.push(problem(name, "contains an empty command word"));
        }
    }
}

/// `[[wechat_mp]]`: ids, credentials, AES keys and the passive-reply timing.
fn validate_wechat_mp(c: &Config, problems: &mut Vec<Problem>) {
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
}

/// `[web]` and `[log]`.
fn validate_web_and_log(c: &Config, problems: &mut Vec<Problem>) {
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
    if !(1..=10_000).contains(&c.web.conversations_max) {
        problems.push(problem("web.conversations_max", "must be 1 to 10000"));
    }
    if !(1..=16_384).contains(&c.web.conversation_max_kb) {
        problems.push(problem(
            "web.conversation_max_kb",
            "must be 1 to 16384 (16 MiB)",
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
    let upstreams = validate_upstreams(c, problems);
    let names: BTreeSet<&str> = c.llm.models.iter().map(|m| m.name.as_str()).collect();
    validate_model_routes(c, &upstreams, &names, problems);
    let roles = validate_roles(c, problems);
    validate_scopes(c, &names, &roles, problems);
    validate_pictures(c, &upstreams, problems);
    validate_speech(c, &upstreams, problems);
    validate_content_checks(c, problems);
}

/// `[[llm.upstreams]]`; returns their ids (with their index).
fn validate_upstreams(c: &Config, problems: &mut Vec<Problem>) -> BTreeMap<String, usize> {
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
    upstreams
}

/// `[[llm.models]]`' upstreams, fallbacks and groups.
fn validate_model_routes(
    c: &Config,
    upstreams: &BTreeMap<String, usize>,
    names: &BTreeSet<&str>,
    problems: &mut Vec<Problem>,
) {
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
}

/// `[[roles]]`; returns their ids (with their index).
fn validate_roles(c: &Config, problems: &mut Vec<Problem>) -> BTreeMap<String, usize> {
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
    roles
}

/// `[[scopes]]`: known platforms, each once, naming existing models and roles.
fn validate_scopes(
    c: &Config,
    names: &BTreeSet<&str>,
    roles: &BTreeMap<String, usize>,
    problems: &mut Vec<Problem>,
) {
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
        if sc.voice_reply && c.speech.is_none() {
            problems.push(problem(
                format!("scopes[{i}].voice_reply"),
                "needs a [speech] section (its voice and speech_model speak the answers)",
            ));
        }
    }
}

/// `[images]` and the engine's picture limits.
fn validate_pictures(c: &Config, upstreams: &BTreeMap<String, usize>, problems: &mut Vec<Problem>) {
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
}

/// `[speech]`: the transcription model, its upstreams and limits.
fn validate_speech(c: &Config, upstreams: &BTreeMap<String, usize>, problems: &mut Vec<Problem>) {
    let Some(sp) = &c.speech else {
        return;
    };
    if sp.model.trim().is_empty() {
        problems.push(problem("speech.model", "must not be empty"));
    }
    let known = |u: &str| u == "default" || upstreams.contains_key(u);
    if let Some(u) = &sp.upstream
        && !known(u)
    {
        problems.push(problem(
            "speech.upstream",
            format!("{u:?} is not one of [[llm.upstreams]] (or \"default\")"),
        ));
    }
    for (i, u) in sp.fallbacks.iter().enumerate() {
        if !known(u) {
            problems.push(problem(
                format!("speech.fallbacks[{i}]"),
                format!("{u:?} is not one of [[llm.upstreams]] (or \"default\")"),
            ));
        }
    }
    // 25 MB is OpenAI's own limit on one upload: more could never be transcribed.
    if sp.max_bytes == 0 || sp.max_bytes > 25 * 1024 * 1024 {
        problems.push(problem(
            "speech.max_bytes",
            "must be between 1 and 26214400 (25 MiB, the transcription API's limit)",
        ));
    }
    if sp.max_seconds == 0 || sp.max_seconds > 3600 {
        problems.push(problem("speech.max_seconds", "must be between 1 and 3600"));
    }
    if sp.ffmpeg.trim().is_empty() {
        problems.push(problem(
            "speech.ffmpeg",
            "must name the ffmpeg program (\"ffmpeg\" looks it up on PATH)",
        ));
    }
    if sp.ffmpeg_timeout_secs == 0 || sp.ffmpeg_timeout_secs > 600 {
        problems.push(problem(
            "speech.ffmpeg_timeout_secs",
            "must be between 1 and 600",
        ));
    }
    let unusable = |s: &str| s.trim().is_empty() || s.chars().any(char::is_control);
    if unusable(&sp.voice) {
        problems.push(problem("speech.voice", "must name a voice (\"alloy\")"));
    }
    if unusable(&sp.speech_model) {
        problems.push(problem(
            "speech.speech_model",
            "must name a text-to-speech model (\"tts-1\")",
        ));
    }
    // 4096 characters is OpenAI's own limit on one `/audio/speech` input.
    if sp.reply_max_chars == 0 || sp.reply_max_chars > 4096 {
        problems.push(problem(
            "speech.reply_max_chars",
            "must be between 1 and 4096 (the speech API's limit on one input)",
        ));
    }
}

/// `[moderation]`, `[[filters]]` and `[[keywords]]`.
fn validate_content_checks(c: &Config, problems: &mut Vec<Problem>) {
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
    validate_wecom_aibots(c, &mut ids, problems);
}

/// `[[wecom_aibot]]` (their ids shared with `[[wecom]]`'s) and `[[wecom_robot]]`.
fn validate_wecom_aibots(c: &Config, ids: &mut BTreeMap<String, ()>, problems: &mut Vec<Problem>) {
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
            && parse_quiet_hours(q).is_none()
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

/// Parses `HH:MM-HH:MM` into minutes of the day (start, end); the range may wrap midnight.
#[must_use]
pub fn parse_quiet_hours(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once('-')?;
    let minutes = |t: &str| -> Option<u32> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    Some((minutes(a)?, minutes(b)?))
}
