//! How many guests one client may create: the limiter behind `POST /api/guest`.

use std::time::Duration;

use crate::engine::ratelimit::RateLimiter;
use crate::util::addr::{Cidr, host_prefix};
use std::net::IpAddr;

/// Guests one client address may create per hour.
const GUESTS_PER_IP_PER_HOUR: u32 = 3;

/// Limits guest creation per client (an IPv4 address, an IPv6 /64: see
/// [`crate::util::addr::host_prefix`]).
#[derive(Debug)]
pub struct GuestLimiter(RateLimiter<Cidr>);

impl Default for GuestLimiter {
    fn default() -> Self {
        Self(RateLimiter::with_window(
            GUESTS_PER_IP_PER_HOUR,
            Duration::from_secs(3600),
        ))
    }
}

impl GuestLimiter {
    /// Forgets old entries.
    pub fn sweep(&self) {
        self.0.sweep();
    }
}

impl GuestLimiter {
    /// Whether the client at `ip` may create one more guest now (counted if so).
    #[must_use]
    pub fn allow(&self, ip: IpAddr) -> bool {
        self.0.allow(host_prefix(ip))
    }
}
