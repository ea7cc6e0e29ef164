//! The engine's settings, taken from the configuration once (and again on reload).

use super::*;

/// The engine's settings, taken from [`Config`] once.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Models users may use, with prices.
    pub models: Vec<ModelConfig>,
    /// The default model.
    pub default_model: String,
    /// System prompt for chat platforms.
    pub system_prompt: String,
    /// History budget in estimated tokens.
    pub context_tokens: u64,
    /// Turns kept per conversation.
    pub max_turns: usize,
    /// Answer cap sent upstream.
    pub max_completion_tokens: Option<u32>,
    /// Free credits per day.
    pub free_daily: u64,
    /// Offset of the quota day, in seconds east of UTC.
    pub tz_offset_secs: i32,
    /// Reservation lifetime.
    pub reservation_ttl: Duration,
    /// Days usage records are kept (0: forever).
    pub usage_days: u64,
    /// Days the admin API's change log keeps each change.
    pub change_log_days: u64,
    /// Dedupe memory.
    pub dedupe_ttl: Duration,
    /// Longest accepted message.
    pub max_input_chars: usize,
    /// Messages per user per minute (0 = off).
    pub rate_limit_per_minute: u32,
    /// Command words.
    pub commands: crate::config::Commands,
    /// User-facing texts.
    pub texts: Texts,
    /// Credit packs on sale (for the buy command).
    pub products: Vec<crate::config::ProductConfig>,
    /// Membership plans (`[[plans]]`).
    pub plans: Vec<crate::config::PlanConfig>,
    /// The web page users buy on, if the daemon has a public URL.
    pub public_url: Option<String>,
    /// Named system prompts.
    pub roles: Vec<crate::config::RoleConfig>,
    /// Defaults per platform or account.
    pub scopes: Vec<crate::config::ScopeConfig>,
    /// Sensitive-word rules (shared with answers streaming when a reload swaps them).
    pub filter: Arc<chatrelay_rules::ContentFilter>,
    /// Free answers to common questions.
    pub keywords: Arc<chatrelay_rules::KeywordReplies>,
    /// The second stage of question checks, if configured.
    pub moderation: Option<Arc<Moderation>>,
    /// Credits per generated picture, when `[images]` is configured.
    pub image_credits: Option<u64>,
    /// Voice messages in, when `[speech]` is configured.
    pub speech: Option<crate::config::SpeechConfig>,
    /// Largest picture downloaded from a platform.
    pub max_image_bytes: usize,
    /// Hosts pictures may be fetched from whatever their address (`[bot] picture_trusted_hosts`).
    pub picture_trusted_hosts: Vec<String>,
    /// Days added to the quota day (tests only: [`test_day_offset`]); 0 in production.
    pub test_day_offset: i64,
}

/// The environment variable that moves the quota day forward, for end-to-end tests of daily
/// allowances and plans (`CHATRELAY_TEST_DAY_OFFSET=30`: the engine counts free credits and
/// plans as if it were 30 days later; times, payments and tokens keep the real clock).
pub const TEST_DAY_OFFSET_ENV: &str = "CHATRELAY_TEST_DAY_OFFSET";
/// The second variable [`TEST_DAY_OFFSET_ENV`] needs, with exactly this value, so that it is
/// never honoured by accident.
pub const TEST_CLOCK_ENV: &str = "CHATRELAY_TEST_CLOCK";
/// The value [`TEST_CLOCK_ENV`] must have.
pub const TEST_CLOCK_CONSENT: &str = "i-am-a-test-not-production";

/// The test day offset from the environment: 0 when unset; an error (the daemon refuses to
/// start) when it is set without [`TEST_CLOCK_ENV`]'s consent, or not a number of days.
pub fn test_day_offset(env: impl Fn(&str) -> Option<String>) -> anyhow::Result<i64> {
    let Some(raw) = env(TEST_DAY_OFFSET_ENV) else {
        return Ok(0);
    };
    if env(TEST_CLOCK_ENV).as_deref() != Some(TEST_CLOCK_CONSENT) {
        anyhow::bail!(
            "{TEST_DAY_OFFSET_ENV} is set: it shifts every user's quota day and is for tests only; \
             unset it (or set {TEST_CLOCK_ENV}={TEST_CLOCK_CONSENT} in a test)"
        );
    }
    match raw.trim().parse::<i64>() {
        Ok(days) if (-36_600..=36_600).contains(&days) => Ok(days),
        _ => anyhow::bail!("{TEST_DAY_OFFSET_ENV}={raw:?}: give a whole number of days"),
    }
}

/// An OpenAI-compatible moderation endpoint.
#[derive(Debug)]
pub struct Moderation {
    pub(super) client: chatrelay_openai::Client,
    pub(super) model: String,
    pub(super) refusal: String,
    pub(super) fail_closed: bool,
}

impl Settings {
    /// Reads the engine's part of a validated configuration (word lists are read again from
    /// disk, so a file changed since validation is reported here).
    pub fn from_config(c: &Config) -> anyhow::Result<Self> {
        let rule_errors = |errors: Vec<chatrelay_rules::RuleError>| {
            anyhow::anyhow!(
                "{}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        };
        let filter =
            chatrelay_rules::ContentFilter::build(&c.filters, &c.base_dir).map_err(rule_errors)?;
        let keywords = chatrelay_rules::KeywordReplies::build(&c.keywords).map_err(rule_errors)?;
        let test_day_offset = test_day_offset(|k| std::env::var(k).ok())?;
        if test_day_offset != 0 {
            warn!(
                days = test_day_offset,
                "TEST CLOCK: quota days are shifted ({TEST_DAY_OFFSET_ENV}); never in production"
            );
        }
        let moderation = match &c.moderation {
            None => None,
            Some(m) => Some(Arc::new(Moderation {
                client: chatrelay_openai::Client::new(chatrelay_openai::ClientConfig {
                    base_url: m.base_url.clone(),
                    api_keys: m.api_key.iter().map(|k| k.expose().to_owned()).collect(),
                    timeout: Duration::from_secs(10),
                    max_retries: 1,
                    ..chatrelay_openai::ClientConfig::default()
                })
                .map_err(|e| anyhow::anyhow!("moderation: {e}"))?,
                model: m.model.clone(),
                refusal: m.refusal.clone(),
                fail_closed: m.fail_closed,
            })),
        };
        Ok(Self {
            models: c.llm.models.clone(),
            default_model: c.llm.model.clone(),
            system_prompt: c.llm.system_prompt.clone(),
            context_tokens: c.llm.context_tokens,
            max_turns: c.llm.max_turns,
            max_completion_tokens: c.llm.max_completion_tokens,
            free_daily: c.quota.free_daily,
            // Validated by config; UTC+8 is the safe fallback for this product's users.
            tz_offset_secs: crate::util::parse_timezone(&c.quota.timezone).unwrap_or(8 * 3600),
            reservation_ttl: Duration::from_secs(c.quota.reservation_ttl_secs),
            usage_days: c.quota.usage_days,
            change_log_days: c.console.change_log_days,
            dedupe_ttl: Duration::from_secs(c.bot.dedupe_ttl_secs),
            max_input_chars: c.bot.max_input_chars,
            rate_limit_per_minute: c.bot.rate_limit_per_minute,
            commands: c.bot.commands.clone(),
            texts: Texts {
                buy_hint: c.bot.texts.buy_hint_for(c),
                ..c.bot.texts.clone()
            },
            products: c.products.clone(),
            plans: c.plans.clone(),
            public_url: c.server.public_url.clone(),
            roles: c.roles.clone(),
            scopes: c.scopes.clone(),
            filter: Arc::new(filter),
            keywords: Arc::new(keywords),
            moderation,
            image_credits: c.images.as_ref().map(|i| i.credits),
            speech: c.speech.clone(),
            max_image_bytes: c.bot.max_image_bytes,
            picture_trusted_hosts: c.bot.picture_trusted_hosts.clone(),
            test_day_offset,
        })
    }

    /// The configured plan of that id.
    #[must_use]
    pub fn plan(&self, id: &str) -> Option<&crate::config::PlanConfig> {
        self.plans.iter().find(|p| p.id == id)
    }

    /// The configured model of that name.
    #[must_use]
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }

    /// Today's quota day number (moved by the test clock, [`test_day_offset`], only in tests).
    #[must_use]
    pub fn today(&self) -> i64 {
        crate::util::day_number(now_ms(), self.tz_offset_secs).saturating_add(self.test_day_offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_clock_needs_its_consent_variable() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(test_day_offset(env(&[])).unwrap(), 0);
        let refused = test_day_offset(env(&[(TEST_DAY_OFFSET_ENV, "30")])).unwrap_err();
        assert!(refused.to_string().contains("for tests only"), "{refused}");
        assert!(
            test_day_offset(env(&[(TEST_DAY_OFFSET_ENV, "30"), (TEST_CLOCK_ENV, "yes")])).is_err()
        );
        assert_eq!(
            test_day_offset(env(&[
                (TEST_DAY_OFFSET_ENV, "30"),
                (TEST_CLOCK_ENV, TEST_CLOCK_CONSENT)
            ]))
            .unwrap(),
            30
        );
        assert!(
            test_day_offset(env(&[
                (TEST_DAY_OFFSET_ENV, "soon"),
                (TEST_CLOCK_ENV, TEST_CLOCK_CONSENT)
            ]))
            .is_err()
        );
    }
}
