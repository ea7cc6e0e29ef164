//! What one client address may create on the page: guests (`POST /api/guest`) and scan-login
//! tickets (`POST /api/login/ticket`). Both make records in the store, so both are limited.

use std::net::IpAddr;
use std::time::Duration;

use crate::engine::ratelimit::RateLimiter;
use crate::util::addr::{Cidr, host_prefix};

/// Guests one client address may create per hour.
const GUESTS_PER_IP_PER_HOUR: u32 = 3;
/// Scan tickets one client may ask for per 10 minutes: a desktop page makes one every
/// 5 minutes while it is open, and a refresh or two.
const TICKETS_PER_IP: u32 = 30;
/// Clients remembered per limit: bounds memory under a flood of addresses.
const MAX_CLIENTS: usize = 50_000;

/// Limits per client (an IPv4 address, an IPv6 /64: see [`crate::util::addr::host_prefix`]).
#[derive(Debug)]
pub struct PageLimits {
    guests: RateLimiter<Cidr>,
    tickets: RateLimiter<Cidr>,
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
        }
    }
}

impl PageLimits {
    /// Forgets old entries.
    pub fn sweep(&self) {
        self.guests.sweep();
        self.tickets.sweep();
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
}
