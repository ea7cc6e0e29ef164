//! Login: one-time codes handed out on a chat platform (the Official Account's keyword),
//! exchanged on the web page for a user token bound to the same user, so credits are shared.
//!
//! Guessing is stopped by the code space (8 characters of base32, 5 minutes; the odds are
//! worked out at [`chatrelay_storage::LOGIN_CODE_ALPHABET`]) and by failure limits per client
//! (an IPv4 address, an IPv6 /64) and per network (IPv4 /24, IPv6 /48). There is no global
//! switch: what other addresses do never stops a right code from an address that has not
//! failed itself. When failures pile up everywhere (an attack from many networks), the
//! limits tighten for addresses that fail, which still leaves a first try to everyone.
//!
//! The admin API's token is resolved here too (`admin_token`).

mod admin_token;
pub mod oauth;

pub use admin_token::{admin_token_path, resolve_admin_token};

use std::net::IpAddr;
use std::time::Duration;

use chatrelay_core::UserKey;
use chatrelay_storage::{Store, StoreError, Uid, display_login_code};
use tracing::warn;

use crate::engine::Engine;
use crate::engine::ratelimit::RateLimiter;
use crate::util::addr::{Cidr, host_prefix, network_prefix};
use crate::util::now_ms;

/// How long a login code works.
pub const CODE_TTL: Duration = Duration::from_secs(300);
/// How long a token from a login works.
pub const LOGIN_TOKEN_TTL: Duration = Duration::from_secs(30 * 86_400);
/// Failed attempts allowed per client (IPv4 address, IPv6 /64) per window.
const FAILURES_PER_HOST: usize = 10;
/// Failed attempts allowed per network (IPv4 /24, IPv6 /48) per window: several users share
/// a /24 behind carrier NAT, so it is higher.
const FAILURES_PER_NETWORK: usize = 60;
/// Failures from everyone together per window above which the limits tighten.
const UNDER_ATTACK: usize = 300;
/// The limits while under attack: a typo is still forgiven once.
const FAILURES_PER_HOST_UNDER_ATTACK: usize = 2;
const FAILURES_PER_NETWORK_UNDER_ATTACK: usize = 12;
const FAILURE_WINDOW: Duration = Duration::from_secs(600);
/// Clients and networks remembered: bounds memory under a flood of addresses.
const MAX_HOSTS: usize = 50_000;
const MAX_NETWORKS: usize = 10_000;

/// A code for the user behind `key` (created on first contact), as the user is shown it
/// (`K7QM-2XRT`), and its lifetime in minutes.
pub async fn issue_code(
    store: &Store,
    key: &UserKey,
    display_name: Option<&str>,
) -> Result<(String, u64), StoreError> {
    let uid = store.resolve_identity(key, display_name).await?;
    let code = store
        .login_code(uid, CODE_TTL.as_millis() as i64, now_ms())
        .await?;
    Ok((display_login_code(&code.code), CODE_TTL.as_secs() / 60))
}

/// [`issue_code`] through the engine: how a channel hands out a code without naming the store.
pub async fn issue_code_via(
    engine: &Engine,
    key: &UserKey,
    display_name: Option<&str>,
) -> Result<(String, u64), StoreError> {
    issue_code(engine.store(), key, display_name).await
}

/// The user a bearer token (from a login, a guest or the admin) belongs to, if it is live.
pub async fn token_user(engine: &Engine, token: &str) -> Result<Option<Uid>, StoreError> {
    engine.store().token_uid(token, now_ms()).await
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Too many failed attempts from this client or its network; try later.
    #[error("too many failed attempts; try again later")]
    Throttled,
    /// The code is unknown, used or expired.
    #[error("the code is wrong or has expired")]
    BadCode,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A token issued by a login.
#[derive(Debug, Clone)]
pub struct LoginToken {
    /// The user.
    pub uid: Uid,
    /// The bearer token.
    pub token: String,
    /// When it expires, ms since the Unix epoch.
    pub expires_at_ms: i64,
}

/// Exchanges codes for tokens, with the attempt limits.
#[derive(Debug)]
pub struct Login {
    hosts: RateLimiter<Cidr>,
    networks: RateLimiter<Cidr>,
    /// Recent failures from everyone, counted up to [`UNDER_ATTACK`] only.
    everyone: RateLimiter<()>,
}

impl Default for Login {
    fn default() -> Self {
        Self {
            hosts: RateLimiter::bounded(FAILURES_PER_HOST as u32, FAILURE_WINDOW, MAX_HOSTS),
            networks: RateLimiter::bounded(
                FAILURES_PER_NETWORK as u32,
                FAILURE_WINDOW,
                MAX_NETWORKS,
            ),
            everyone: RateLimiter::bounded(UNDER_ATTACK as u32, FAILURE_WINDOW, 2),
        }
    }
}

impl Login {
    /// Consumes `code` (as typed: see [`chatrelay_storage::normalize_login_code`]) and
    /// returns a new token for its user. Only failures count against the limits, and a
    /// throttled client's attempt is not even checked.
    pub async fn login(
        &self,
        store: &Store,
        code: &str,
        client: IpAddr,
    ) -> Result<LoginToken, LoginError> {
        let host = host_prefix(client);
        let network = network_prefix(client);
        let (host_limit, network_limit) = if self.under_attack() {
            (
                FAILURES_PER_HOST_UNDER_ATTACK,
                FAILURES_PER_NETWORK_UNDER_ATTACK,
            )
        } else {
            (FAILURES_PER_HOST, FAILURES_PER_NETWORK)
        };
        if self.hosts.count(&host) >= host_limit || self.networks.count(&network) >= network_limit {
            metrics::counter!("chatrelay_login_total", "outcome" => "throttled").increment(1);
            return Err(LoginError::Throttled);
        }
        let now = now_ms();
        match store.consume_login_code(code, now).await? {
            Some(uid) => {
                let expires_at_ms = now.saturating_add(LOGIN_TOKEN_TTL.as_millis() as i64);
                let token = store
                    .create_token(uid, "web login", Some(expires_at_ms), now)
                    .await?;
                metrics::counter!("chatrelay_login_total", "outcome" => "ok").increment(1);
                Ok(LoginToken {
                    uid,
                    token,
                    expires_at_ms,
                })
            }
            None => {
                // Capped at the normal limits, so no window grows past them.
                self.hosts.record_below(host, FAILURES_PER_HOST);
                self.networks.record_below(network, FAILURES_PER_NETWORK);
                self.everyone.record_below((), UNDER_ATTACK);
                metrics::counter!("chatrelay_login_total", "outcome" => "bad_code").increment(1);
                Err(LoginError::BadCode)
            }
        }
    }

    /// Whether failures from everyone together are at the level of an attack.
    fn under_attack(&self) -> bool {
        self.everyone.count(&()) >= UNDER_ATTACK
    }

    /// [`Login::login`] through the engine, and the new token flushed to disk (a failed flush
    /// is logged: the token works until a crash).
    pub async fn sign_in(
        &self,
        engine: &Engine,
        code: &str,
        client: IpAddr,
    ) -> Result<LoginToken, LoginError> {
        let token = self.login(engine.store(), code, client).await?;
        if let Err(e) = engine.store().flush().await {
            warn!(error = %e, "flushing a new login token failed");
        }
        Ok(token)
    }

    /// Forgets old failures.
    pub fn sweep(&self) {
        self.hosts.sweep();
        self.networks.sweep();
        self.everyone.sweep();
    }
}

/// The bearer token of a request, if any.
#[must_use]
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Stores for the tests of the modules that take the store's domain interface (login, web
/// login records, redemption codes): a temporary sled database, and the relational engine on
/// a fresh schema when `CHATRELAY_TEST_PG_URL` is set, so each case runs on both engines.
#[cfg(test)]
pub(crate) async fn test_stores() -> Vec<(&'static str, Store)> {
    let mut all = vec![("sled", Store::open_temporary().unwrap())];
    if let Some(opts) = chatrelay_storage::test_pg_options() {
        all.push(("relational", Store::open_postgres(&opts).await.unwrap()));
    }
    all
}

#[cfg(test)]
mod tests {
    #[test]
    fn bearer_parsing() {
        use super::bearer;
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer sk-1".parse().unwrap());
        assert_eq!(bearer(&h), Some("sk-1"));
        h.insert("authorization", "bearer  sk-2 ".parse().unwrap());
        assert_eq!(bearer(&h), Some("sk-2"));
        h.insert("authorization", "Basic xyz".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    use super::*;
    use chatrelay_core::Platform;

    #[tokio::test]
    async fn code_to_token_binds_the_same_user_and_guessing_is_throttled() {
        for (engine, store) in test_stores().await {
            // Shown with a failure: which engine the case failed on.
            eprintln!("engine: {engine}");
            let key = UserKey::new(Platform::Mp, "main", "openid-1");
            let (code, minutes) = issue_code(&store, &key, None).await.unwrap();
            assert_eq!(minutes, 5);
            let uid = store.identity(&key).await.unwrap().unwrap();
            let login = Login::default();
            let ip: IpAddr = "10.0.0.1".parse().unwrap();
            let t = login.login(&store, &code, ip).await.unwrap();
            assert_eq!(t.uid, uid);
            assert_eq!(
                store.token_uid(&t.token, now_ms()).await.unwrap(),
                Some(uid)
            );
            assert!(
                matches!(
                    login.login(&store, &code, ip).await,
                    Err(LoginError::BadCode)
                ),
                "single use"
            );

            // Ten failures from one address lock it out, even for a right code; others still work.
            for _ in 0..9 {
                assert!(matches!(
                    login.login(&store, "00000000", ip).await,
                    Err(LoginError::BadCode)
                ));
            }
            let (code2, _) = issue_code(&store, &key, None).await.unwrap();
            assert!(matches!(
                login.login(&store, &code2, ip).await,
                Err(LoginError::Throttled)
            ));
            let other: IpAddr = "10.0.1.2".parse().unwrap();
            assert!(login.login(&store, &code2, other).await.is_ok());
        }
    }

    async fn fail(login: &Login, store: &Store, ip: &str, times: usize) {
        let ip: IpAddr = ip.parse().unwrap();
        for _ in 0..times {
            let _ = login.login(store, "ZZZZZZZZ", ip).await;
        }
    }

    #[tokio::test]
    async fn failures_elsewhere_never_lock_out_a_fresh_address() {
        for (engine, store) in test_stores().await {
            // Shown with a failure: which engine the case failed on.
            eprintln!("engine: {engine}");
            let login = Login::default();
            // The lockout attack: many networks, ten wrong codes each (far past the old global 300).
            for n in 0..60 {
                fail(&login, &store, &format!("198.{n}.0.1"), 10).await;
            }
            assert!(login.under_attack());
            let key = UserKey::new(Platform::Mp, "main", "openid-2");
            let (code, _) = issue_code(&store, &key, None).await.unwrap();
            let fresh: IpAddr = "203.0.113.50".parse().unwrap();
            assert!(
                login.login(&store, &code, fresh).await.is_ok(),
                "a right code works"
            );
            // Under attack an address gets fewer tries: two failures and it waits.
            fail(&login, &store, "203.0.113.51", 2).await;
            let (code, _) = issue_code(&store, &UserKey::new(Platform::Mp, "main", "o3"), None)
                .await
                .unwrap();
            let tried: IpAddr = "203.0.113.51".parse().unwrap();
            assert!(matches!(
                login.login(&store, &code, tried).await,
                Err(LoginError::Throttled)
            ));
        }
    }

    #[tokio::test]
    async fn networks_are_limited_as_a_whole() {
        for (engine, store) in test_stores().await {
            // Shown with a failure: which engine the case failed on.
            eprintln!("engine: {engine}");
            let login = Login::default();
            let key = UserKey::new(Platform::Mp, "main", "openid-4");
            // IPv6: every address of a /64 is one client.
            fail(&login, &store, "2001:db8:0:1::1", 5).await;
            fail(&login, &store, "2001:db8:0:1::2", 5).await;
            let (code, _) = issue_code(&store, &key, None).await.unwrap();
            let same64: IpAddr = "2001:db8:0:1:ffff::9".parse().unwrap();
            assert!(matches!(
                login.login(&store, &code, same64).await,
                Err(LoginError::Throttled)
            ));
            // IPv4: addresses of one /24 share the network allowance (60).
            for h in 1..=6 {
                fail(&login, &store, &format!("192.0.2.{h}"), 10).await;
            }
            let neighbour: IpAddr = "192.0.2.200".parse().unwrap();
            assert!(matches!(
                login.login(&store, &code, neighbour).await,
                Err(LoginError::Throttled)
            ));
            // Mapped IPv4 is the same client as IPv4.
            let mapped: IpAddr = "::ffff:192.0.2.200".parse().unwrap();
            assert!(matches!(
                login.login(&store, &code, mapped).await,
                Err(LoginError::Throttled)
            ));
            // Another /64 and another /24 are untouched.
            let other: IpAddr = "2001:db8:0:2::1".parse().unwrap();
            assert!(login.login(&store, &code, other).await.is_ok());
        }
    }
}
