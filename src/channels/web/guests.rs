//! What one client address may create on the page: guests (`POST /api/guest`), scan-login
//! tickets (`POST /api/login/ticket`) and web-authorization states (`GET /auth/wechat/…`).
//! Each makes a record in the store, so each is limited.

use std::net::IpAddr;
use std::time::Duration;

use crate::engine::ratelimit::RateLimiter;
use crate::util::addr::{Cidr, host_prefix};

/// Guests one client address may create per hour.
const GUESTS_PER_IP_PER_HOUR: u32 = 3;
/// Scan tickets one client may ask for per 10 minutes: a desktop page makes one every
/// 5 minutes while it is open, and a refresh or two.
const TICKETS_PER_IP: u32 = 30;
/// Web authorizations one client may start per 10 minutes: generous, as many phones share
/// a carrier's address, but a flood cannot fill the store with states.
const AUTHORIZE_PER_IP: u32 = 120;
/// Clients remembered per limit: bounds memory under a flood of addresses.
const MAX_CLIENTS: usize = 50_000;

/// Limits per client (an IPv4 address, an IPv6 /64: see [`crate::util::addr::host_prefix`]).
#[derive(Debug)]
pub struct PageLimits {
    guests: RateLimiter<Cidr>,
    tickets: RateLimiter<Cidr>,
    authorize: RateLimiter<Cidr>,
}

impl Default for PageLimits {
    fn default() -> Self {
        Self {
            guests: RateLimiter::bounded(
                GUESTS_PER_IP_PER_HOUR,
                Duration::from_secs(3600),
                MAX_CLIENTS,
            ),
            tickets: RateLimiter::bounded(TICKETS_PER_IP, Duration::from_secs(600), MAX_CLIENTS),
            authorize: RateLimiter::bounded(
                AUTHORIZE_PER_IP,
                Duration::from_secs(600),
                MAX_CLIENTS,
            ),
        }
    }
}

impl PageLimits {
    /// Forgets old entries.
    pub fn sweep(&self) {
        self.guests.sweep();
        self.tickets.sweep();
        self.authorize.sweep();
    }

    /// Whether the client at `ip` may create one more guest now (counted if so).
    #[must_use]
    pub fn allow(&self, ip: IpAddr) -> bool {
        self.guests.allow(host_prefix(ip))
    }

    /// Whether the client at `ip` may have one more scan ticket now (counted if so).
    #[must_use]
    pub fn allow_ticket(&self, ip: IpAddr) -> bool {
        self.tickets.allow(host_prefix(ip))
    }

    /// Whether the client at `ip` may start one more web authorization now (counted if so).
    #[must_use]
    pub fn allow_authorize(&self, ip: IpAddr) -> bool {
        self.authorize.allow(host_prefix(ip))
    }
}
