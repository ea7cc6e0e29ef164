//! Redeeming codes (卡密) for users: the limits on wrong codes, their metrics, and the alert
//! when codes are being guessed. The codes themselves (batches, hashes, the exactly-once
//! redemption through the ledger) live in the store (`chatrelay_storage::codes`).
//!
//! Guessing is hopeless by the code space (16 symbols of 30, 78 bits), and slowed further by
//! failure limits per user and per client address (IPv4 address, IPv6 /64), each held in a
//! bounded map with expiry. There is no global switch: failures of others never stop a user
//! who has not failed. Which batch a wrong code was aimed at cannot be known, so the alert is
//! on failures from everyone together: more than [`ALERT_FAILURES`] within
//! [`FAILURE_WINDOW`] tells operators (at most once per [`ALERT_QUIET`]).

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use chatrelay_storage::{
    Balance, CodeGrant, RedeemOutcome, Store, StoreError, Uid, normalize_redeem_code,
};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::alerts::Alerter;
use crate::engine::ratelimit::RateLimiter;
use crate::util::addr::{Cidr, host_prefix};

/// Wrong codes allowed per user per window.
pub const FAILURES_PER_USER: usize = 10;
/// Wrong codes allowed per client address (IPv4, IPv6 /64) per window: several users may
/// share one behind a NAT, so it is higher.
pub const FAILURES_PER_ADDRESS: usize = 30;
/// The window of the failure limits and of the alert.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(3600);
/// Wrong codes from everyone together per window above which operators are alerted.
pub const ALERT_FAILURES: usize = 100;
/// The least time between two alerts.
pub const ALERT_QUIET: Duration = Duration::from_secs(1800);
/// Users and addresses remembered: bounds memory under a flood.
const MAX_USERS: usize = 50_000;
const MAX_ADDRESSES: usize = 50_000;

/// Why a redemption failed.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// Too many wrong codes from this user or address lately.
    #[error("too many wrong codes; try again later")]
    Throttled,
    /// The text cannot be a code (wrong length or characters).
    #[error("not a redemption code")]
    Malformed,
    /// No such code.
    #[error("unknown code")]
    Unknown,
    /// Redeemed before.
    #[error("the code was already used")]
    AlreadyUsed {
        /// By this user.
        by_you: bool,
    },
    /// Revoked by an operator.
    #[error("the code was revoked")]
    Revoked,
    /// Its batch expired.
    #[error("the code has expired")]
    Expired,
    /// A plan code made before plans existed (it names no days): it grants nothing.
    #[error("the code's plan is not available")]
    PlanUnavailable,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RedeemError {
    /// A short machine-readable code (the web API's `error.code`, the metric's `reason`).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Throttled => "throttled",
            Self::Malformed => "malformed",
            Self::Unknown => "unknown_code",
            Self::AlreadyUsed { .. } => "already_used",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::PlanUnavailable => "plan_unavailable",
            Self::Store(_) => "unavailable",
        }
    }

    /// What the user is told.
    #[must_use]
    pub fn message(&self) -> &'static str {
        match self {
            Self::Throttled => "兑换码错误次数过多，请稍后再试",
            Self::Malformed => "兑换码格式不对：应为 16 位字母数字，如 XXXX-XXXX-XXXX-XXXX",
            Self::Unknown => "兑换码不存在，请核对后再试",
            Self::AlreadyUsed { by_you: true } => "这个兑换码你已经兑换过了",
            Self::AlreadyUsed { by_you: false } => "这个兑换码已被使用",
            Self::Revoked => "这个兑换码已作废",
            Self::Expired => "这个兑换码已过期",
            Self::PlanUnavailable => "这个会员兑换码无效，请联系客服",
            Self::Store(_) => "服务暂时不可用，请稍后再试",
        }
    }
}

/// A successful redemption.
#[derive(Debug, Clone)]
pub struct Redeemed {
    /// The code's id (`<batch>-<n>`).
    pub code: String,
    /// Paid credits added.
    pub credits: u64,
    /// The balance afterwards.
    pub balance: Balance,
    /// The plan afterwards, for a plan code.
    pub plan: Option<chatrelay_storage::ActivePlan>,
}

/// Redeems codes with the failure limits. One per daemon (in the engine).
#[derive(Debug)]
pub struct Redeemer {
    users: RateLimiter<Uid>,
    addresses: RateLimiter<Cidr>,
    /// Failures from everyone, counted up to [`ALERT_FAILURES`].
    everyone: RateLimiter<()>,
    last_alert: Mutex<Option<Instant>>,
}

impl Default for Redeemer {
    fn default() -> Self {
        Self {
            users: RateLimiter::bounded(FAILURES_PER_USER as u32, FAILURE_WINDOW, MAX_USERS),
            addresses: RateLimiter::bounded(
                FAILURES_PER_ADDRESS as u32,
                FAILURE_WINDOW,
                MAX_ADDRESSES,
            ),
            everyone: RateLimiter::bounded(ALERT_FAILURES as u32, FAILURE_WINDOW, 2),
            last_alert: Mutex::new(None),
        }
    }
}

/// Where a redemption comes from and what the balance is read against.
#[derive(Debug, Clone, Copy)]
pub struct RedeemContext {
    /// The client's address (web API); `None` on a chat platform (limited per user only).
    pub client: Option<IpAddr>,
    /// The quota day (for the balance shown).
    pub today: i64,
    /// The daily free allowance (for the balance shown).
    pub free_daily: u64,
    /// Now, ms since the Unix epoch.
    pub now_ms: i64,
}

impl Redeemer {
    /// Redeems `input` (as typed) for `uid`. Only unknown codes count against the limits (a
    /// malformed text guesses nothing; a used, revoked or expired code is a real one), and a
    /// throttled attempt is not even looked up.
    pub async fn redeem(
        &self,
        store: &Store,
        alerts: &Alerter,
        uid: Uid,
        input: &str,
        ctx: RedeemContext,
    ) -> Result<Redeemed, RedeemError> {
        let address = ctx.client.map(host_prefix);
        let throttled = self.users.count(&uid) >= FAILURES_PER_USER
            || address
                .as_ref()
                .is_some_and(|a| self.addresses.count(a) >= FAILURES_PER_ADDRESS);
        let result = if throttled {
            Err(RedeemError::Throttled)
        } else if normalize_redeem_code(input).is_none() {
            Err(RedeemError::Malformed)
        } else {
            self.redeem_known(store, uid, input, ctx).await
        };
        match &result {
            Ok(r) => {
                metrics::counter!("chatrelay_code_redemptions_total").increment(1);
                info!(%uid, code = %r.code, credits = r.credits, "code redeemed");
            }
            Err(e) => {
                metrics::counter!("chatrelay_code_redeem_failures_total", "reason" => e.code())
                    .increment(1);
                if matches!(e, RedeemError::Unknown) {
                    self.users.record_below(uid, FAILURES_PER_USER);
                    if let Some(a) = address {
                        self.addresses.record_below(a, FAILURES_PER_ADDRESS);
                    }
                    self.everyone.record_below((), ALERT_FAILURES);
                    self.maybe_alert(alerts);
                }
                if let RedeemError::Store(err) = e {
                    warn!(%uid, error = %err, "redeeming a code failed in the store");
                }
            }
        }
        result
    }

    async fn redeem_known(
        &self,
        store: &Store,
        uid: Uid,
        input: &str,
        ctx: RedeemContext,
    ) -> Result<Redeemed, RedeemError> {
        let outcome = match store.redeem_code(uid, input, ctx.now_ms).await {
            Ok(o) => o,
            Err(StoreError::Unsupported(_)) => return Err(RedeemError::PlanUnavailable),
            Err(e) => return Err(e.into()),
        };
        match outcome {
            RedeemOutcome::Redeemed { code, grant, entry } => {
                let credits = match grant {
                    CodeGrant::Credits { credits } => credits,
                    CodeGrant::Plan { .. } => 0,
                };
                let balance = store.balance(entry.uid, ctx.today, ctx.free_daily).await?;
                let plan = match grant {
                    CodeGrant::Plan { .. } => store.plan(entry.uid).await?,
                    CodeGrant::Credits { .. } => None,
                };
                Ok(Redeemed {
                    code,
                    credits,
                    balance,
                    plan,
                })
            }
            RedeemOutcome::Unknown => Err(RedeemError::Unknown),
            RedeemOutcome::AlreadyUsed { by_you } => Err(RedeemError::AlreadyUsed { by_you }),
            RedeemOutcome::Revoked => Err(RedeemError::Revoked),
            RedeemOutcome::Expired => Err(RedeemError::Expired),
        }
    }

    /// Tells operators when wrong codes pile up (at most once per [`ALERT_QUIET`]).
    fn maybe_alert(&self, alerts: &Alerter) {
        let failures = self.everyone.count(&());
        if failures < ALERT_FAILURES {
            return;
        }
        let mut last = self.last_alert.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < ALERT_QUIET) {
            return;
        }
        *last = Some(Instant::now());
        drop(last);
        metrics::counter!("chatrelay_code_guessing_alerts_total").increment(1);
        alerts.alert(format!(
            "兑换码疑似被猜测：{} 分钟内 {failures} 次错误兑换码（按用户和地址限流中；查看 /metrics 的 chatrelay_code_redeem_failures_total）",
            FAILURE_WINDOW.as_secs() / 60
        ));
    }

    /// Forgets old failures.
    pub fn sweep(&self) {
        self.users.sweep();
        self.addresses.sweep();
        self.everyone.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(client: Option<&str>) -> RedeemContext {
        RedeemContext {
            client: client.map(|c| c.parse().unwrap()),
            today: 0,
            free_daily: 0,
            now_ms: 1,
        }
    }

    fn wrong() -> String {
        chatrelay_storage::random_redeem_code().unwrap()
    }

    #[tokio::test]
    async fn wrong_codes_are_limited_per_user_and_address_without_locking_out_others() {
        for (engine, store) in crate::auth::test_stores().await {
            // Shown with a failure: which engine the case failed on.
            eprintln!("engine: {engine}");
            let alerts = Alerter::default();
            let r = Redeemer::default();
            let (a, b, c) = (
                store.create_user("a").await.unwrap().uid,
                store.create_user("b").await.unwrap().uid,
                store.create_user("c").await.unwrap().uid,
            );
            let (_, codes) = store
                .create_code_batch(CodeGrant::Credits { credits: 5 }, 3, None, "", 0)
                .await
                .unwrap();
            // A malformed text does not count.
            for _ in 0..20 {
                assert!(matches!(
                    r.redeem(&store, &alerts, a, "nope", ctx(None)).await,
                    Err(RedeemError::Malformed)
                ));
            }
            for _ in 0..FAILURES_PER_USER {
                assert!(matches!(
                    r.redeem(&store, &alerts, a, &wrong(), ctx(None)).await,
                    Err(RedeemError::Unknown)
                ));
            }
            // User a is throttled, even with a right code, which stays unused.
            assert!(matches!(
                r.redeem(&store, &alerts, a, &codes[0], ctx(None)).await,
                Err(RedeemError::Throttled)
            ));
            // Another user is not.
            let ok = r
                .redeem(&store, &alerts, b, &codes[0], ctx(None))
                .await
                .unwrap();
            assert_eq!((ok.credits, ok.balance.paid), (5, 5));
            // Per address: users behind one address share its limit; another address is free.
            let mut failed = 0;
            for user in [b, c] {
                for _ in 0..FAILURES_PER_USER - 1 {
                    if matches!(
                        r.redeem(&store, &alerts, user, &wrong(), ctx(Some("10.0.0.9")))
                            .await,
                        Err(RedeemError::Unknown)
                    ) {
                        failed += 1;
                    }
                }
            }
            assert_eq!(failed, 2 * (FAILURES_PER_USER - 1));
            // More users behind the same address fill its limit (none reaching their own).
            let mut i = 0;
            while failed < FAILURES_PER_ADDRESS {
                i += 1;
                let d = store.create_user(&format!("d{i}")).await.unwrap().uid;
                for _ in 0..(FAILURES_PER_USER - 1).min(FAILURES_PER_ADDRESS - failed) {
                    assert!(matches!(
                        r.redeem(&store, &alerts, d, &wrong(), ctx(Some("10.0.0.9")))
                            .await,
                        Err(RedeemError::Unknown)
                    ));
                    failed += 1;
                }
            }
            let e = store.create_user("e").await.unwrap().uid;
            assert!(matches!(
                r.redeem(&store, &alerts, e, &codes[1], ctx(Some("10.0.0.9")))
                    .await,
                Err(RedeemError::Throttled)
            ));
            assert_eq!(
                r.redeem(&store, &alerts, e, &codes[1], ctx(Some("10.0.1.9")))
                    .await
                    .unwrap()
                    .credits,
                5
            );
            assert_eq!(store.balance(a, 0, 0).await.unwrap().paid, 0);
        }
    }

    #[tokio::test]
    async fn guessing_from_everywhere_alerts_once() {
        for (engine, store) in crate::auth::test_stores().await {
            // Shown with a failure: which engine the case failed on.
            eprintln!("engine: {engine}");
            let alerts = Alerter::default();
            let r = Redeemer::default();
            let mut users = Vec::new();
            for i in 0..(ALERT_FAILURES / FAILURES_PER_USER + 1) {
                users.push(store.create_user(&format!("u{i}")).await.unwrap().uid);
            }
            let mut n = 0;
            'outer: for (i, uid) in users.iter().enumerate() {
                for _ in 0..FAILURES_PER_USER {
                    let ip = format!("10.{i}.0.1");
                    r.redeem(&store, &alerts, *uid, &wrong(), ctx(Some(&ip)))
                        .await
                        .ok();
                    n += 1;
                    if n == ALERT_FAILURES - 1 {
                        assert!(r.last_alert.lock().unwrap().is_none(), "not yet");
                    }
                    if n >= ALERT_FAILURES + 5 {
                        break 'outer;
                    }
                }
            }
            let first = r.last_alert.lock().unwrap().expect("alerted");
            r.redeem(&store, &alerts, users[0], &wrong(), ctx(Some("10.99.0.1")))
                .await
                .ok();
            assert_eq!(
                r.last_alert.lock().unwrap().unwrap(),
                first,
                "quiet after an alert"
            );
        }
    }
}
