//! What the web channel's handlers share: the page's APIs, the account and shop API and `/v1`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::http::HeaderMap;
use tokio_util::sync::CancellationToken;

use super::guests::PageLimits;
use crate::billing::Billing;
use crate::config::Config;
use crate::engine::Engine;
use crate::util::{Current, addr};

/// The web channel's configuration-derived parts, one generation.
pub struct WebParts {
    /// The configuration in force (the `[web]` section, trusted proxies, the login keyword).
    pub config: Arc<Config>,
    /// The shop the page sells through.
    pub billing: Arc<Billing>,
    /// The Official Accounts with web authorization, by id.
    pub oauth: HashMap<String, OAuthAccount>,
}

impl WebParts {
    /// The parts for `config`.
    #[must_use]
    pub fn new(config: Arc<Config>, billing: Arc<Billing>, http: &reqwest::Client) -> Self {
        let oauth = config
            .wechat_mp
            .iter()
            .filter(|a| a.oauth)
            .filter_map(|a| {
                let secret = a.app_secret.as_ref()?;
                let client = chatrelay_wechat::MpClient::new(
                    &a.api_base,
                    &a.app_id,
                    secret.expose(),
                    http.clone(),
                );
                Some((
                    a.id.clone(),
                    OAuthAccount {
                        id: a.id.clone(),
                        app_id: a.app_id.clone(),
                        scope: a.oauth_scope.clone(),
                        oauth_base: a.oauth_base.trim_end_matches('/').to_owned(),
                        client,
                    },
                ))
            })
            .collect();
        Self {
            config,
            billing,
            oauth,
        }
    }

    /// The site's public URL without a trailing slash (web authorization needs it).
    #[must_use]
    pub fn public_url(&self) -> Option<&str> {
        self.config
            .server
            .public_url
            .as_deref()
            .map(|u| u.trim_end_matches('/'))
            .filter(|u| !u.is_empty())
    }
}

/// An Official Account whose web authorization logs users in on the page.
pub struct OAuthAccount {
    /// The `[[wechat_mp]]` id (in `mp:{id}:{openid}`).
    pub id: String,
    /// Its AppID.
    pub app_id: String,
    /// `snsapi_base` or `snsapi_userinfo`.
    pub scope: String,
    /// Where browsers are sent to authorize.
    pub oauth_base: String,
    /// Exchanges codes (`sns/oauth2/access_token`; not the account's API token).
    pub client: chatrelay_wechat::MpClient,
}

/// What the web channel's handlers need. Cheap to clone.
#[derive(Clone)]
pub struct WebState {
    /// The conversation engine.
    pub engine: Engine,
    /// The parts in force (a reload swaps them).
    pub current: Current<WebParts>,
    /// Fires when the daemon shuts down; open streams end on it.
    pub shutdown: CancellationToken,
    /// Login codes to tokens, with attempt limits.
    pub login: Arc<crate::auth::Login>,
    /// Limits guest sign-ups per address.
    pub guests: Arc<PageLimits>,
}

impl WebState {
    /// The parts now (see [`Current::get`]).
    #[must_use]
    pub fn parts(&self) -> Arc<WebParts> {
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
