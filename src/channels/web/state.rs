//! What the web channel's handlers share: the page's APIs, the account and shop API and `/v1`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::http::HeaderMap;
use tokio_util::sync::CancellationToken;

use super::guests::GuestLimiter;
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
    pub guests: Arc<GuestLimiter>,
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
