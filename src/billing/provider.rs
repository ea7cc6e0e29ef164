//! What each way to pay asks of its provider and gives the page (see [`PayMethod`]).
//!
//! Whatever the method, an order is paid only when a verified notification or query says so
//! (the JSAPI callback and the return pages are hints to poll, never proof).

use chatrelay_alipay as alipay;
use chatrelay_core::Platform;
use chatrelay_storage::{Order, Uid};
use chatrelay_wechat_pay as wxpay;

use super::methods::{PayAction, PayMethod, Payer};
use super::{Billing, BillingError};

impl Billing {
    /// The payer's openid under the merchant's AppID: the identity of an Official Account
    /// bound to the merchant. `Err(OpenidRequired)` when the user has none.
    pub(super) async fn jsapi_openid(&self, uid: Uid) -> Result<String, BillingError> {
        let keys = self.store.identities_of(uid).await?;
        keys.into_iter()
            .find(|k| k.platform == Platform::Mp && self.jsapi_accounts.contains(&k.account))
            .map(|k| k.user)
            .ok_or_else(|| BillingError::OpenidRequired {
                account: self.jsapi_login_account.clone(),
            })
    }

    /// Creates the order at its provider; returns what to keep for paying it (the QR code's
    /// content, JSAPI's `prepay_id`, the H5 page or the signed Alipay URL).
    pub(super) async fn provider_create(
        &self,
        order: &Order,
        method: PayMethod,
        payer: &Payer,
        openid: Option<&str>,
    ) -> Result<String, BillingError> {
        let provider = |e: &dyn std::fmt::Display| BillingError::Provider(e.to_string());
        // Both providers take the expiry in Beijing time.
        let beijing = chrono::FixedOffset::east_opt(8 * 3600).and_then(|tz| {
            chrono::DateTime::from_timestamp_millis(order.expires_at_ms)
                .map(|t| t.with_timezone(&tz))
        });
        match method {
            PayMethod::Native | PayMethod::Jsapi | PayMethod::H5 => {
                let w = self.wechat()?;
                let wx_order = wxpay::NativeOrder {
                    description: order.product_name.clone(),
                    out_trade_no: order.id.clone(),
                    amount_fen: order.amount_fen,
                    notify_url: format!("{}/pay/wechat/notify", self.public_url),
                    time_expire: beijing,
                    attach: None,
                };
                match method {
                    PayMethod::Jsapi => {
                        let openid = openid.ok_or(BillingError::OpenidRequired {
                            account: self.jsapi_login_account.clone(),
                        })?;
                        w.client.create_jsapi(&wx_order, openid).await
                    }
                    PayMethod::H5 => {
                        w.client
                            .create_h5(&wx_order, &payer.client_ip.to_canonical().to_string())
                            .await
                    }
                    _ => w.client.create_native(&wx_order).await,
                }
                .map_err(|e| provider(&e))
            }
            PayMethod::Precreate => {
                let a = self.alipay()?;
                let ttl_minutes = self.order_ttl.as_secs().div_ceil(60).max(1);
                a.client
                    .precreate(
                        &order.id,
                        order.amount_fen,
                        &order.product_name,
                        &format!("{ttl_minutes}m"),
                    )
                    .await
                    .map_err(|e| provider(&e))
            }
            PayMethod::Wap | PayMethod::Page => {
                let a = self.alipay()?;
                // The return page is ours, never the caller's: no open redirect.
                let back = format!("{}/?order={}", self.public_url, order.id);
                let req = alipay::PagePay {
                    out_trade_no: order.id.clone(),
                    amount_fen: order.amount_fen,
                    subject: order.product_name.clone(),
                    time_expire: beijing.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
                    return_url: Some(back.clone()),
                    quit_url: (method == PayMethod::Wap).then_some(back),
                };
                let kind = if method == PayMethod::Wap {
                    alipay::PagePayMethod::Wap
                } else {
                    alipay::PagePayMethod::Page
                };
                a.client.page_pay_url(kind, &req).map_err(|e| provider(&e))
            }
        }
    }

    /// What the page does to pay `order` now; `None` before the provider answered.
    pub fn pay_action(&self, order: &Order) -> Result<Option<PayAction>, BillingError> {
        let Some(kept) = order.code_url.clone() else {
            return Ok(None);
        };
        Ok(Some(match PayMethod::of(order) {
            Some(PayMethod::Jsapi) => {
                // Signed afresh each time: the page may ask again minutes later.
                let params = self
                    .wechat()?
                    .client
                    .jsapi_params(&kept)
                    .map_err(|e| BillingError::Provider(e.to_string()))?;
                PayAction::Jsapi(params)
            }
            Some(PayMethod::H5 | PayMethod::Wap | PayMethod::Page) => PayAction::Redirect(kept),
            Some(PayMethod::Native | PayMethod::Precreate) | None => PayAction::Qr(kept),
        }))
    }
}
