//! Typed configuration: `chatrelay.toml`, then `CHATRELAY__SECTION__KEY` environment overrides,
//! then `*_file` secrets, then validation.
//!
//! Loading never stops at the first problem: every unknown key (with "did you mean"), type
//! error, missing key and invalid value is collected as a [`Problem`] naming its key in the
//! operator's words (see `read`), so `check-config` can list them all at once. Secrets are
//! [`Secret`]s, redacted in `Debug` and in the summary.
//!
//! This module is on the ground floor: it imports only `util` and the connector, storage and
//! rules crates. Its files:
//! - `mod.rs`: the [`Config`] struct, loading, environment overrides, `*_file` secrets;
//! - `sections`: the sections of the engine and the process (`[server]`, `[llm]`, `[bot]`...);
//! - `channels`: the sections of the chat platforms (`[[wechat_mp]]`, `[[wecom]]`, `[web]`...);
//! - `pay`: the shop's sections and the key files they name;
//! - `read`: reading one section so that every problem in it is reported;
//! - `validate`: the checks beyond types, one function per section.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

mod channels;
mod check;
mod pay;
mod read;
mod sections;
mod speech;

mod secret;
mod validate;
mod validate_pay;

pub use channels::*;
pub use pay::*;
pub use secret::Secret;
pub use sections::*;
pub use speech::SpeechConfig;
pub use validate::parse_quiet_hours;

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

pub use read::Problem;
use read::problem;

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
        plans: section(&mut root, "plans", &mut problems),
        pay: section(&mut root, "pay", &mut problems),
        web: section(&mut root, "web", &mut problems),
        console: section(&mut root, "console", &mut problems),
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
        speech: section(&mut root, "speech", &mut problems),
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
    validate::validate(&config, &mut problems);
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
            "plans",
            "pay",
            "web",
            "console",
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
            "speech",
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
        "plans" => f::<PlanConfig>(),
        "pay" => f::<PayConfig>(),
        "pay.wechat" => f::<WechatPayConfig>(),
        "pay.alipay" => f::<AlipayConfig>(),
        "web" => f::<WebConfig>(),
        "console" => f::<ConsoleConfig>(),
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
        "speech" => f::<SpeechConfig>(),
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
mod tests;
