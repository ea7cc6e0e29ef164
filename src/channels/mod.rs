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
//! reload), [`router`] merges their routes over one [`ChannelState`], and [`Poller`] runs the
//! background ones. Channels import the engine, auth, billing, config, util, the core crate
//! and their own connector; never `http` or `reload`, which import them.

pub mod mp;
pub mod telegram;
pub mod web;
pub mod wecom;
pub mod zsxq;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::http::HeaderMap;
use tokio_util::sync::CancellationToken;

use crate::alerts::Alerter;
use crate::billing::Billing;
use crate::bot::Engine;
use crate::config::Config;
use crate::util::{Current, addr};

/// Every channel of one configuration generation.
pub struct Channels {
    /// The configuration they were built from.
    pub config: Arc<Config>,
    /// The shop the web page sells through (the same one the payment notifications credit).
    pub billing: Arc<Billing>,
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
            config,
            billing,
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

/// What the channels' request handlers share (their axum state). Cheap to clone.
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
    pub guests: Arc<web::GuestLimiter>,
}

impl ChannelState {
    /// The channels now (see [`Current::get`]).
    #[must_use]
    pub fn parts(&self) -> Arc<Channels> {
        self.current.get()
    }

    /// The client's address, through the proxies `server.trusted_proxies` names (see
    /// [`addr::client_ip`]). Every per-address limit goes through here.
    #[must_use]
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let trusted = addr::parse_trusted(&self.parts().config.server.trusted_proxies);
        addr::client_ip(peer, headers, &trusted)
    }
}

/// Every channel's routes over one state (`web_page` false leaves the chat page out, its
/// APIs in).
pub fn router(state: ChannelState, web_page: bool) -> Router {
    Router::new()
        .merge(web::routes(web_page))
        .merge(web::v1::routes())
        .merge(web::api::routes())
        .merge(mp::routes())
        .merge(web::shop::routes())
        .merge(wecom::routes())
        .merge(telegram::routes())
        .with_state(state)
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
