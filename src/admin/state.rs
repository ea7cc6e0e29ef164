//! The state of the admin and operations handlers.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::channels::ChannelState;
use crate::engine::Engine;

/// What the admin and operations handlers need (the channels have their own
/// [`ChannelState`]; the payment notifications read the shop through [`Live::billing`]).
///
/// [`Live::billing`]: crate::reload::Live::billing
#[derive(Clone)]
pub struct AppState {
    /// The conversation engine (and through it, the store).
    pub engine: Engine,
    /// The configuration-derived parts (config, admin token, channels, shop...), which a
    /// reload swaps; see [`crate::reload`].
    pub live: crate::reload::Live,
    /// Renders `/metrics`.
    pub metrics: Option<PrometheusHandle>,
    /// Fires when the daemon shuts down; open streams end on it.
    pub shutdown: CancellationToken,
    /// The channels' handlers' state.
    pub channels: ChannelState,
    /// Largest request body accepted (fixed at start).
    pub body_limit: usize,
    /// Whether the chat page is served (fixed at start).
    pub web_page: bool,
    /// The operators' console sessions, which the admin API admits like the token.
    pub console: Arc<crate::console::sessions::Sessions>,
    /// When the daemon started, ms since the Unix epoch (for the uptime the console shows).
    pub started_at_ms: i64,
}

impl AppState {
    /// The live parts now (see [`crate::reload::Live::get`]).
    #[must_use]
    pub fn parts(&self) -> Arc<crate::reload::Parts> {
        self.live.get()
    }
}
