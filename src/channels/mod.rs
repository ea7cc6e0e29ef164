//! One room per channel, and the registry of them all.
//!
//! - [`mp`]: WeChat Official Accounts (`/wechat/mp/{id}`).
//! - [`wecom`]: WeCom apps and AI bots (`/wecom/{id}`, `/wecom/aibot/{id}`).
//! - [`telegram`]: Telegram bots (long polling or webhook), answers streamed by edits.
//! - [`zsxq`]: polls zsxq groups and answers their questions once (no routes).
//! - [`web`]: the embedded chat page, guests, the page's account and shop API, and the
//!   OpenAI-compatible `/v1`.
//!
//! This module is the registry: [`Channels`] is one configuration's generation of every
//! channel (built from the config, taking over runtime state from the previous generation on a
//! reload), [`router`] gives each channel its own state (the engine and its part of the
//! generation in force) and merges their routes, and [`Poller`] runs the background ones.
//! A channel imports the engine, auth, billing, config, util, the core crate and its own
//! connector; never this registry, `http` or `reload`, which import it.

pub mod mp;
pub mod telegram;
pub mod web;
pub mod wecom;
pub mod zsxq;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::alerts::Alerter;
use crate::billing::Billing;
use crate::config::Config;
use crate::engine::Engine;
use crate::util::Current;

/// Every channel of one configuration generation.
pub struct Channels {
    /// The web page's parts: the configuration these were built from and the shop it sells
    /// through (the same one the payment notifications credit).
    pub web: Arc<web::state::WebParts>,
    /// The configured Official Accounts.
    pub mp: mp::Accounts,
    /// The configured WeCom apps and AI bots.
    pub wecom: Arc<wecom::Wecom>,
    /// The configured zsxq groups.
    pub zsxq: Arc<zsxq::Zsxq>,
    /// The configured Telegram bots.
    pub telegram: Arc<telegram::Telegram>,
}

impl Channels {
    /// Builds every channel from a validated configuration; `previous` (on a reload) hands
    /// over runtime state and unchanged components.
    pub fn build(
        config: Arc<Config>,
        billing: Arc<Billing>,
        http: &reqwest::Client,
        previous: Option<&Channels>,
    ) -> anyhow::Result<Channels> {
        let wecom = Arc::new(
            wecom::Wecom::from_config(&config, http, previous.map(|p| &*p.wecom))
                .context("setting up WeCom")?,
        );
        let zsxq = Arc::new(
            zsxq::Zsxq::from_config(&config, http, previous.map(|p| &*p.zsxq))
                .context("setting up zsxq")?,
        );
        let telegram = Arc::new(
            telegram::Telegram::from_config(&config, http, previous.map(|p| &*p.telegram))
                .context("setting up Telegram")?,
        );
        let mut accounts = HashMap::new();
        for cfg in &config.wechat_mp {
            let old = previous.and_then(|p| p.mp.get(&cfg.id));
            let account = match old {
                Some(old) if old.config() == cfg => old.clone(),
                Some(old) => {
                    Arc::new(mp::MpAccount::new(cfg.clone(), http.clone())?.taking_over(old))
                }
                None => Arc::new(mp::MpAccount::new(cfg.clone(), http.clone())?),
            };
            accounts.insert(cfg.id.clone(), account);
        }
        Ok(Channels {
            web: Arc::new(web::state::WebParts::new(config, billing, http)),
            mp: Arc::new(accounts),
            wecom,
            zsxq,
            telegram,
        })
    }

    /// The background pollers this generation wants, by job name: one per zsxq group and one
    /// per Telegram bot.
    #[must_use]
    pub fn pollers(&self) -> HashMap<String, Poller> {
        let mut wanted = HashMap::new();
        for group in self.zsxq.groups() {
            wanted.insert(format!("zsxq:{}", group.id()), Poller::Zsxq(group.clone()));
        }
        for bot in self.telegram.bots() {
            wanted.insert(
                format!("telegram:{}", bot.id()),
                Poller::Telegram(bot.clone()),
            );
        }
        wanted
    }
}

/// What every channel's handlers are built over. Cheap to clone.
#[derive(Clone)]
pub struct ChannelState {
    /// The conversation engine.
    pub engine: Engine,
    /// The channels in force (a reload swaps them).
    pub current: Current<Channels>,
    /// Fires when the daemon shuts down; open streams end on it.
    pub shutdown: CancellationToken,
    /// Login codes to tokens, with attempt limits.
    pub login: Arc<crate::auth::Login>,
    /// Limits guest sign-ups per address.
    pub guests: Arc<web::guests::PageLimits>,
}

/// Every channel's routes, each over its own state (`web_page` false leaves the chat page
/// out, its APIs in).
pub fn router(state: ChannelState, web_page: bool) -> Router {
    let ChannelState {
        engine,
        current,
        shutdown,
        login,
        guests,
    } = state;
    let web = web::state::WebState {
        engine: engine.clone(),
        current: current.map(|c| c.web.clone()),
        shutdown,
        login,
        guests,
    };
    let mp = mp::MpState {
        engine: engine.clone(),
        accounts: current.map(|c| c.mp.clone()),
    };
    let wecom = wecom::WecomState {
        engine: engine.clone(),
        wecom: current.map(|c| c.wecom.clone()),
    };
    let telegram = telegram::TelegramState {
        engine,
        telegram: current.map(|c| c.telegram.clone()),
    };
    Router::new()
        .merge(web::routes(web_page).with_state(web.clone()))
        .merge(web::v1::routes().with_state(web.clone()))
        .merge(web::api::routes().with_state(web.clone()))
        .merge(web::redeem::routes().with_state(web.clone()))
        .merge(web::usage::routes().with_state(web.clone()))
        .merge(web::chats::routes().with_state(web.clone()))
        .merge(web::login::routes().with_state(web.clone()))
        .merge(web::scan::routes().with_state(web.clone()))
        .merge(mp::routes().with_state(mp))
        .merge(web::shop::routes().with_state(web))
        .merge(wecom::routes().with_state(wecom))
        .merge(telegram::routes().with_state(telegram))
}

/// A channel's background poller.
#[derive(Clone)]
pub enum Poller {
    /// One zsxq group.
    Zsxq(Arc<zsxq::ZsxqGroup>),
    /// One Telegram bot (long polling).
    Telegram(Arc<telegram::TelegramBot>),
}

impl Poller {
    /// The same component (not merely an equal configuration).
    #[must_use]
    pub fn same(&self, other: &Poller) -> bool {
        match (self, other) {
            (Poller::Zsxq(a), Poller::Zsxq(b)) => Arc::ptr_eq(a, b),
            (Poller::Telegram(a), Poller::Telegram(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Polls until `stop` fires (`shutdown`: the daemon's, which ends answers in flight).
    pub async fn run(
        self,
        engine: Engine,
        alerts: Alerter,
        stop: CancellationToken,
        shutdown: CancellationToken,
    ) {
        match self {
            Poller::Zsxq(group) => zsxq::run_group(engine, alerts, group, stop, shutdown).await,
            Poller::Telegram(bot) => telegram::run_bot(engine, bot, stop).await,
        }
    }
}
