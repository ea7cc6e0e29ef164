//! Selling credit packs: products, orders at WeChat Pay and Alipay, payment notifications,
//! reconciliation and refunds.
//!
//! Rules kept here:
//! - only a verified notification or a verified query moves an order to paid, and only when
//!   the merchant, the app and the amount are the order's;
//! - crediting is one store transaction (order state + ledger + balance), so whatever arrives
//!   twice credits once, and it is flushed to disk before the provider is told "received";
//! - an expired order is closed at the provider first, and locally only once the provider
//!   says it is unpaid; a payment that arrives after a local close is still credited.

pub mod methods;
pub mod notify;
mod provider;

pub use methods::{PayAction, PayMethod, Payer};

use std::time::Duration;

use chatrelay_alipay as alipay;
use chatrelay_storage::{CreditOutcome, LedgerEntry, Order, OrderStatus, Store, StoreError};
use chatrelay_wechat_pay as wxpay;
use tracing::{info, warn};

use crate::alerts::{AlertKind, Alerter};
use crate::config::{Config, ProductConfig, load_alipay_keys, load_wechat_keys};
use crate::util::{now_ms, yuan};

/// Why a billing operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// No product has this id.
    #[error("unknown product {0:?}")]
    UnknownProduct(String),
    /// The channel is not configured.
    #[error("payment channel {0:?} is not available")]
    ChannelUnavailable(String),
    /// The channel does not offer this method here.
    #[error("payment method {0:?} is not available")]
    MethodUnavailable(String),
    /// JSAPI needs the payer's openid under the merchant's AppID and the user has none: log
    /// in through this account's web authorization first (`None`: no account offers it).
    #[error("the user has no openid under the merchant's AppID")]
    OpenidRequired {
        /// The `[[wechat_mp]]` whose web authorization gives the openid.
        account: Option<String>,
    },
    /// No order has this id.
    #[error("unknown order {0}")]
    UnknownOrder(String),
    /// The notification's signature, timestamp or format is not acceptable.
    #[error("verification failed: {0}")]
    Verification(String),
    /// The notification is authentic but does not match the order (merchant, app, amount).
    #[error("mismatch: {0}")]
    Mismatch(String),
    /// The provider refused or failed.
    #[error("payment provider error: {0}")]
    Provider(String),
    /// The order is not in a state for this.
    #[error("{0}")]
    State(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct WechatPay {
    client: wxpay::Client,
    keys: wxpay::PlatformKeys,
    v3: wxpay::ApiV3Key,
    mch_id: String,
    app_id: String,
}

struct Alipay {
    client: alipay::Client,
    key: alipay::AlipayPublicKey,
    app_id: String,
    seller_id: Option<String>,
}

/// What the reconciliation did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Orders checked with the provider.
    pub checked: usize,
    /// Found paid and credited.
    pub credited: usize,
    /// Closed after the provider confirmed them unpaid.
    pub closed: usize,
    /// Provider calls that failed (tried again next time).
    pub failed: usize,
}

/// The shop.
pub struct Billing {
    store: Store,
    alerts: Alerter,
    products: Vec<ProductConfig>,
    /// What a plan product's order grants, by product id (`[[plans]]` in the quota
    /// timezone, fixed when the order is made).
    plan_grants: Vec<(String, chatrelay_storage::PlanGrant)>,
    wechat: Option<WechatPay>,
    alipay: Option<Alipay>,
    public_url: String,
    order_ttl: Duration,
    min_age: Duration,
    /// The ways to pay offered, in the configured order.
    methods: Vec<PayMethod>,
    /// The Official Accounts bound to the WeChat Pay merchant (their openids pay by JSAPI).
    jsapi_accounts: Vec<String>,
    /// Of those, the one with web authorization (where a user without an openid gets one).
    jsapi_login_account: Option<String>,
}

/// The plan grant of each plan product (validation made sure each names a plan).
fn plan_grants(config: &Config) -> Vec<(String, chatrelay_storage::PlanGrant)> {
    let tz = crate::util::parse_timezone(&config.quota.timezone).unwrap_or(8 * 3600);
    config
        .products
        .iter()
        .filter_map(|p| {
            let id = p.plan.as_deref()?;
            let plan = config.plans.iter().find(|x| x.id == id)?;
            Some((p.id.clone(), plan.grant(tz)))
        })
        .collect()
}

/// What the provider said about an open order.
enum ProviderState {
    Paid { fen: i64, trade_no: Option<String> },
    Unpaid,
    Unknown,
}

impl Billing {
    /// Builds the shop from a validated configuration.
    pub fn from_config(
        config: &Config,
        store: Store,
        http: reqwest::Client,
        alerts: Alerter,
    ) -> anyhow::Result<Billing> {
        let pay = &config.pay;
        let public_url = config.server.public_url.clone().unwrap_or_default();
        let public_url = public_url.trim_end_matches('/').to_owned();
        let timeout = Duration::from_secs(15);
        let wechat = match &pay.wechat {
            None => None,
            Some(cfg) => {
                let (merchant, keys, v3) = load_wechat_keys(cfg)
                    .map_err(|p| anyhow::anyhow!("pay.wechat.{}: {}", p.0, p.1))?;
                let client = wxpay::Client::new(
                    wxpay::ClientConfig {
                        api_base: cfg.api_base.trim_end_matches('/').to_owned(),
                        mch_id: cfg.mch_id.clone(),
                        app_id: cfg.app_id.clone(),
                        serial_no: cfg.serial_no.clone(),
                        timeout,
                    },
                    merchant,
                    keys.clone(),
                    http.clone(),
                );
                Some(WechatPay {
                    client,
                    keys,
                    v3,
                    mch_id: cfg.mch_id.clone(),
                    app_id: cfg.app_id.clone(),
                })
            }
        };
        let alipay = match &pay.alipay {
            None => None,
            Some(cfg) => {
                let (app, key) = load_alipay_keys(cfg)
                    .map_err(|p| anyhow::anyhow!("pay.alipay.{}: {}", p.0, p.1))?;
                let client = alipay::Client::new(
                    alipay::ClientConfig {
                        gateway: cfg.gateway.clone(),
                        app_id: cfg.app_id.clone(),
                        notify_url: Some(format!("{public_url}/pay/alipay/notify")),
                        timeout,
                    },
                    app,
                    key.clone(),
                    http,
                );
                Some(Alipay {
                    client,
                    key,
                    app_id: cfg.app_id.clone(),
                    seller_id: cfg.seller_id.clone(),
                })
            }
        };
        let (methods, jsapi_accounts, jsapi_login_account) = methods::offered(config);
        Ok(Billing {
            store,
            alerts,
            products: config.products.clone(),
            plan_grants: plan_grants(config),
            wechat,
            alipay,
            public_url,
            order_ttl: Duration::from_secs(pay.order_ttl_secs),
            min_age: Duration::from_secs(pay.reconcile_min_age_secs),
            methods,
            jsapi_accounts,
            jsapi_login_account,
        })
    }

    /// The order `id`, if it exists (whoever it belongs to: the caller checks).
    pub async fn order(&self, id: &str) -> Result<Option<Order>, StoreError> {
        self.store.order(id).await
    }

    /// What a plan product's orders grant (`None`: a credit pack).
    #[must_use]
    pub fn plan_of(&self, product_id: &str) -> Option<&chatrelay_storage::PlanGrant> {
        self.plan_grants
            .iter()
            .find(|(id, _)| id == product_id)
            .map(|(_, g)| g)
    }

    /// The products on sale.
    #[must_use]
    pub fn products(&self) -> &[ProductConfig] {
        &self.products
    }

    /// The configured channels (`wechat`, `alipay`).
    #[must_use]
    pub fn channels(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.wechat.is_some() {
            v.push("wechat");
        }
        if self.alipay.is_some() {
            v.push("alipay");
        }
        v
    }

    /// The methods offered for `channel`, in the configured order.
    #[must_use]
    pub fn methods(&self, channel: &str) -> Vec<&'static str> {
        self.methods
            .iter()
            .filter(|m| m.channel() == channel)
            .map(|m| m.as_str())
            .collect()
    }

    /// Whether any channel is configured.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.wechat.is_some() || self.alipay.is_some()
    }

    fn wechat(&self) -> Result<&WechatPay, BillingError> {
        self.wechat
            .as_ref()
            .ok_or_else(|| BillingError::ChannelUnavailable("wechat".into()))
    }

    fn alipay(&self) -> Result<&Alipay, BillingError> {
        self.alipay
            .as_ref()
            .ok_or_else(|| BillingError::ChannelUnavailable("alipay".into()))
    }

    async fn event(&self, id: &str, kind: &str, detail: &str) {
        if let Err(e) = self.store.add_order_event(id, kind, detail, now_ms()).await {
            warn!(order = id, error = %e, "recording an order event failed");
        }
    }

    /// Creates an order for `product_id` paid through `channel` by `method` (absent: the
    /// channel's QR method), or returns the user's open order for the same product and
    /// method (never for H5, whose page expires in minutes).
    pub async fn create_order(
        &self,
        payer: Payer,
        product_id: &str,
        channel: &str,
        method: Option<&str>,
    ) -> Result<Order, BillingError> {
        let product = self
            .products
            .iter()
            .find(|p| p.id == product_id)
            .ok_or_else(|| BillingError::UnknownProduct(product_id.to_owned()))?;
        let available = match channel {
            "wechat" => self.wechat.is_some(),
            "alipay" => self.alipay.is_some(),
            _ => false,
        };
        if !available {
            return Err(BillingError::ChannelUnavailable(channel.to_owned()));
        }
        let method = PayMethod::parse(channel, method)
            .filter(|m| self.methods.contains(m))
            .ok_or_else(|| BillingError::MethodUnavailable(method.unwrap_or("").to_owned()))?;
        // Before anything is written: a user without an openid is told to get one.
        let openid = match method {
            PayMethod::Jsapi => Some(self.jsapi_openid(payer.uid).await?),
            _ => None,
        };
        let now = now_ms();
        let candidate = Order {
            id: new_order_id(now),
            uid: payer.uid,
            product_id: product.id.clone(),
            product_name: product.name.clone(),
            channel: channel.to_owned(),
            method: Some(method.as_str().to_owned()),
            amount_fen: product.price_fen,
            credits: product.credits,
            status: OrderStatus::Created,
            created_at_ms: now,
            expires_at_ms: now.saturating_add(self.order_ttl.as_millis() as i64),
            code_url: None,
            provider_trade_no: None,
            credited_at_ms: None,
            closed_at_ms: None,
            refunded_at_ms: None,
            plan: self.plan_of(&product.id).cloned(),
        };
        let order = self.store.create_order(&candidate, now).await?;
        if order.code_url.is_some() {
            return Ok(order);
        }
        if order.id == candidate.id {
            self.event(
                &order.id,
                "created",
                &format!("{} for {} fen", product.id, order.amount_fen),
            )
            .await;
        }
        match self
            .provider_create(&order, method, &payer, openid.as_deref())
            .await
        {
            Ok(kept) => {
                self.event(
                    &order.id,
                    "provider_order",
                    &format!("{channel} {}", method.as_str()),
                )
                .await;
                Ok(self.store.set_order_code_url(&order.id, &kept).await?)
            }
            Err(e) => {
                // The provider has no usable order: close ours so it is not reused; a payment
                // that somehow arrives is still credited (closed → credited).
                warn!(order = %order.id, error = %e, "creating the order at the provider failed");
                self.event(&order.id, "provider_error", &e.to_string())
                    .await;
                self.store.close_order(&order.id, now_ms()).await?;
                Err(e)
            }
        }
    }

    /// Credits a verified payment, records it, flushes, alerts.
    async fn credit(
        &self,
        order: &Order,
        paid_fen: i64,
        trade_no: Option<&str>,
        source: &str,
    ) -> Result<bool, BillingError> {
        let outcome = match self
            .store
            .credit_order(&order.id, paid_fen, trade_no, now_ms())
            .await
        {
            Ok(o) => o,
            Err(StoreError::AmountMismatch { expected, got }) => {
                self.alerts.alert(format!(
                    "订单 {} 的付款金额不符（订单 {expected} 分，付款 {got} 分，{source}），未入账",
                    order.id
                ));
                metrics::counter!("chatrelay_payment_rejected_total", "reason" => "amount")
                    .increment(1);
                self.event(
                    &order.id,
                    "mismatch",
                    &format!("{source}: paid {got} fen, order is {expected} fen"),
                )
                .await;
                return Err(BillingError::Mismatch(format!(
                    "amount {got} fen, order is {expected} fen"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        self.store.flush().await?;
        match outcome {
            CreditOutcome::Credited(entry) => {
                let method = PayMethod::of(order).map_or("", PayMethod::as_str);
                let late = if order.status == OrderStatus::Closed {
                    "（订单已在本地关闭后才付款，仍已入账）"
                } else {
                    ""
                };
                self.alerts.alert_as(
                    AlertKind::Money,
                    format!(
                        "订单 {} 已支付并到账：用户 {}，¥{}，{} 额度（{} {}，{source}）{late}",
                        order.id,
                        order.uid,
                        yuan(paid_fen),
                        order.credits,
                        order.channel,
                        method
                    ),
                );
                metrics::counter!("chatrelay_orders_credited_total", "channel" => order.channel.clone(), "method" => method).increment(1);
                metrics::counter!("chatrelay_revenue_fen_total", "channel" => order.channel.clone())
                    .increment(u64::try_from(paid_fen).unwrap_or(0));
                self.event(
                    &order.id,
                    "credited",
                    &format!(
                        "{source}: {} credits (ledger {}/{})",
                        order.credits, entry.uid, entry.seq
                    ),
                )
                .await;
                Ok(true)
            }
            CreditOutcome::AlreadyCredited => Ok(false),
        }
    }

    fn verification_failed(&self, channel: &str, why: String) -> BillingError {
        // Anyone can post a forged notification: counted into one summary per interval, so
        // that a flood cannot push paid-order alerts out of the robots' budget.
        self.alerts.alert_as(
            AlertKind::VerificationFailure,
            format!("{channel} 支付通知验证失败：{why}"),
        );
        metrics::counter!("chatrelay_payment_rejected_total", "reason" => "verification")
            .increment(1);
        BillingError::Verification(why)
    }

    fn mismatch(&self, order: &str, why: String) -> BillingError {
        self.alerts
            .alert(format!("订单 {order} 的支付通知与订单不符，未入账：{why}"));
        metrics::counter!("chatrelay_payment_rejected_total", "reason" => "mismatch").increment(1);
        BillingError::Mismatch(why)
    }

    /// Handles a WeChat Pay notification: `Ok` means answer 204.
    pub async fn wechat_notify(
        &self,
        h: &wxpay::NotifyHeaders<'_>,
        body: &[u8],
    ) -> Result<(), BillingError> {
        let w = self.wechat()?;
        let n = wxpay::open_notification(&w.keys, &w.v3, h, body, now_ms() / 1000).map_err(
            |e| match e {
                wxpay::PayError::UnknownSerial(_)
                | wxpay::PayError::BadSignature
                | wxpay::PayError::StaleTimestamp => {
                    self.verification_failed("wechat", e.to_string())
                }
                other => {
                    self.verification_failed("wechat", format!("unreadable notification: {other}"))
                }
            },
        )?;
        let tx = &n.transaction;
        if tx.mchid != w.mch_id || tx.appid != w.app_id {
            return Err(self.mismatch(
                &tx.out_trade_no,
                format!("mchid {} / appid {} are not ours", tx.mchid, tx.appid),
            ));
        }
        let order = self
            .store
            .order(&tx.out_trade_no)
            .await?
            .ok_or_else(|| BillingError::UnknownOrder(tx.out_trade_no.clone()))?;
        if order.channel != "wechat" {
            return Err(self.mismatch(&order.id, "the order is not a WeChat Pay order".into()));
        }
        self.event(
            &order.id,
            "notify",
            &format!("{} {}", n.event_type, tx.trade_state.as_str()),
        )
        .await;
        if !tx.trade_state.is_paid() {
            return Ok(());
        }
        let fen =
            tx.amount.as_ref().map(|a| a.total).ok_or_else(|| {
                self.mismatch(&order.id, "no amount in a paid transaction".into())
            })?;
        self.credit(&order, fen, tx.transaction_id.as_deref(), "notify")
            .await?;
        Ok(())
    }

    /// Handles an Alipay notification: `Ok` means answer `success`.
    pub async fn alipay_notify(&self, body: &[u8]) -> Result<(), BillingError> {
        let a = self.alipay()?;
        let n = alipay::verify_notification(&a.key, body)
            .map_err(|e| self.verification_failed("alipay", e.to_string()))?;
        if n.app_id != a.app_id {
            return Err(self.mismatch(&n.out_trade_no, format!("app_id {} is not ours", n.app_id)));
        }
        if let Some(seller) = &a.seller_id
            && n.seller_id.as_deref() != Some(seller.as_str())
        {
            return Err(self.mismatch(&n.out_trade_no, "seller_id is not ours".into()));
        }
        let order = self
            .store
            .order(&n.out_trade_no)
            .await?
            .ok_or_else(|| BillingError::UnknownOrder(n.out_trade_no.clone()))?;
        if order.channel != "alipay" {
            return Err(self.mismatch(&order.id, "the order is not an Alipay order".into()));
        }
        self.event(&order.id, "notify", n.trade_status.as_str())
            .await;
        if !n.trade_status.is_paid() {
            return Ok(());
        }
        self.credit(&order, n.total_amount_fen, n.trade_no.as_deref(), "notify")
            .await?;
        Ok(())
    }

    async fn provider_state(&self, order: &Order) -> Result<ProviderState, BillingError> {
        match order.channel.as_str() {
            "wechat" => {
                let w = self.wechat()?;
                match w.client.query(&order.id).await {
                    Ok(tx) => {
                        if tx.mchid != w.mch_id || tx.appid != w.app_id {
                            return Err(self.mismatch(
                                &order.id,
                                "query answered for another merchant".into(),
                            ));
                        }
                        if tx.trade_state.is_paid() {
                            let fen = tx.amount.as_ref().map(|a| a.total).unwrap_or(-1);
                            Ok(ProviderState::Paid {
                                fen,
                                trade_no: tx.transaction_id,
                            })
                        } else if matches!(tx.trade_state, wxpay::TradeState::NotPay)
                            || tx.trade_state.is_final_unpaid()
                        {
                            Ok(ProviderState::Unpaid)
                        } else {
                            Ok(ProviderState::Unknown)
                        }
                    }
                    Err(wxpay::PayError::Api { code, .. }) if code == "ORDER_NOT_EXIST" => {
                        Ok(ProviderState::Unpaid)
                    }
                    Err(e) => Err(BillingError::Provider(e.to_string())),
                }
            }
            "alipay" => {
                let a = self.alipay()?;
                match a.client.query(&order.id).await {
                    Ok(r) if r.trade_status.is_paid() => Ok(ProviderState::Paid {
                        fen: r.total_amount_fen,
                        trade_no: r.trade_no,
                    }),
                    Ok(_) => Ok(ProviderState::Unpaid),
                    Err(alipay::AlipayError::Api {
                        sub_code: Some(s), ..
                    }) if s == "ACQ.TRADE_NOT_EXIST" => Ok(ProviderState::Unpaid),
                    Err(e) => Err(BillingError::Provider(e.to_string())),
                }
            }
            other => Err(BillingError::ChannelUnavailable(other.to_owned())),
        }
    }

    async fn provider_close(&self, order: &Order) -> Result<(), BillingError> {
        match order.channel.as_str() {
            "wechat" => {
                let w = self.wechat()?;
                match w.client.close(&order.id).await {
                    Ok(()) => Ok(()),
                    Err(wxpay::PayError::Api { code, .. }) if code == "ORDER_NOT_EXIST" => Ok(()),
                    Err(e) => Err(BillingError::Provider(e.to_string())),
                }
            }
            "alipay" => {
                let a = self.alipay()?;
                match a.client.close(&order.id).await {
                    Ok(()) => Ok(()),
                    // Never scanned: Alipay has no trade to close; its QR code expires by itself.
                    Err(alipay::AlipayError::Api {
                        sub_code: Some(s), ..
                    }) if s == "ACQ.TRADE_NOT_EXIST" => Ok(()),
                    Err(e) => Err(BillingError::Provider(e.to_string())),
                }
            }
            other => Err(BillingError::ChannelUnavailable(other.to_owned())),
        }
    }

    /// Checks every open order older than the minimum age with its provider: credits the paid
    /// ones, closes the expired unpaid ones (at the provider first).
    pub async fn reconcile(&self) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let orders = match self.store.open_orders().await {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %e, "reconciliation could not list open orders");
                return report;
            }
        };
        let now = now_ms();
        for order in orders {
            if now.saturating_sub(order.created_at_ms) < self.min_age.as_millis() as i64 {
                continue;
            }
            report.checked += 1;
            match self.reconcile_one(&order, now).await {
                Ok(Some(true)) => report.credited += 1,
                Ok(Some(false)) => report.closed += 1,
                Ok(None) => {}
                Err(e) => {
                    report.failed += 1;
                    warn!(order = %order.id, error = %e, "reconciling an order failed; will retry");
                }
            }
        }
        if report.checked > 0 {
            info!(?report, "reconciliation done");
        }
        report
    }

    /// `Some(true)` credited, `Some(false)` closed, `None` left open.
    async fn reconcile_one(&self, order: &Order, now: i64) -> Result<Option<bool>, BillingError> {
        match self.provider_state(order).await? {
            ProviderState::Paid { fen, trade_no } => {
                self.event(&order.id, "query", "paid").await;
                self.credit(order, fen, trade_no.as_deref(), "reconciliation")
                    .await?;
                Ok(Some(true))
            }
            ProviderState::Unknown => Ok(None),
            ProviderState::Unpaid if now < order.expires_at_ms => Ok(None),
            ProviderState::Unpaid => {
                self.provider_close(order).await?;
                self.event(&order.id, "provider_close", "closed at the provider")
                    .await;
                // Paid in the moment before the close? The provider is the truth.
                match self.provider_state(order).await? {
                    ProviderState::Paid { fen, trade_no } => {
                        self.credit(order, fen, trade_no.as_deref(), "reconciliation")
                            .await?;
                        Ok(Some(true))
                    }
                    ProviderState::Unpaid => {
                        self.store.close_order(&order.id, now_ms()).await?;
                        self.event(&order.id, "closed", "expired unpaid").await;
                        info!(order = %order.id, "expired order closed");
                        Ok(Some(false))
                    }
                    ProviderState::Unknown => Ok(None),
                }
            }
        }
    }

    /// Refunds a credited order in full at its provider, then takes back its credits (as many
    /// as the user still has, never below zero).
    pub async fn refund(
        &self,
        id: &str,
        reason: &str,
    ) -> Result<(Order, Option<LedgerEntry>), BillingError> {
        let order = self
            .store
            .order(id)
            .await?
            .ok_or_else(|| BillingError::UnknownOrder(id.to_owned()))?;
        match order.status {
            OrderStatus::Credited => {}
            OrderStatus::Refunded => {
                return Ok(self.store.refund_order(id, reason, now_ms()).await?);
            }
            other => {
                return Err(BillingError::State(format!(
                    "order {id} is {}",
                    other.as_str()
                )));
            }
        }
        let refund_no = format!("RF{}", order.id);
        let result = match order.channel.as_str() {
            "wechat" => {
                let w = self.wechat()?;
                w.client
                    .refund(
                        &order.id,
                        &refund_no,
                        order.amount_fen,
                        order.amount_fen,
                        reason,
                    )
                    .await
                    .map(|v| v.to_string())
                    .map_err(|e| BillingError::Provider(e.to_string()))
            }
            "alipay" => {
                let a = self.alipay()?;
                a.client
                    .refund(&order.id, order.amount_fen, &refund_no, reason)
                    .await
                    .map(|v| v.to_string())
                    .map_err(|e| BillingError::Provider(e.to_string()))
            }
            other => Err(BillingError::ChannelUnavailable(other.to_owned())),
        };
        let detail = match result {
            Ok(d) => d,
            Err(e) => {
                self.event(&order.id, "refund_failed", &e.to_string()).await;
                return Err(e);
            }
        };
        self.event(&order.id, "provider_refund", &detail).await;
        let (order, entry) = self.store.refund_order(id, reason, now_ms()).await?;
        self.store.flush().await?;
        self.alerts.alert_as(
            AlertKind::Money,
            format!(
                "订单 {} 已退款：用户 {}，收回 {} 额度",
                order.id,
                order.uid,
                entry.as_ref().map_or(0, |e| -e.paid_delta)
            ),
        );
        Ok((order, entry))
    }
}

/// A new order id: `CR` + the UTC time to the second + 12 random hex digits (28 characters,
/// letters and digits only, as both providers accept).
#[must_use]
pub fn new_order_id(now_ms: i64) -> String {
    let stamp = chrono::DateTime::from_timestamp_millis(now_ms)
        .map(|t| t.format("%Y%m%d%H%M%S").to_string())
        .unwrap_or_else(|| "00000000000000".to_owned());
    let mut bytes = [0u8; 6];
    let random = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    if random.is_err() {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes.copy_from_slice(&n.to_be_bytes()[2..]);
    }
    format!("CR{stamp}{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_fit_both_providers() {
        let id = new_order_id(1_795_795_199_000);
        assert_eq!(id.len(), 28);
        assert!(id.starts_with("CR20261127155959"));
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(wxpay::validate_out_trade_no(&id).is_ok());
        assert_ne!(new_order_id(0), new_order_id(0));
    }
}
