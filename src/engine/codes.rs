//! Redemption codes through the engine: the redeem command (every chat platform, and the
//! web chat) and [`Engine::redeem_code`], which the web API calls with the client's address.

use std::net::IpAddr;

use super::*;
use crate::codes::{RedeemContext, RedeemError, Redeemed};

impl Engine {
    /// Redeems `code` (as typed) for `uid`, with the limits on wrong codes (per user, and per
    /// `client` address when there is one). Answers once the credit is durable (the store's
    /// flush): the user is told of credits a crash cannot take back.
    pub async fn redeem_code(
        &self,
        uid: Uid,
        code: &str,
        client: Option<IpAddr>,
    ) -> Result<Redeemed, RedeemError> {
        let s = self.settings();
        let ctx = RedeemContext {
            client,
            today: s.today(),
            free_daily: s.free_daily,
            now_ms: now_ms(),
        };
        let redeemed = self
            .inner
            .codes
            .redeem(&self.inner.store, &self.inner.alerts, uid, code, ctx)
            .await;
        if redeemed.is_ok()
            && let Err(e) = self.inner.store.flush().await
        {
            // The credit stands in the open database; the disk is failing, which `/readyz`
            // and the watchdog report.
            warn!(error = %e, user = %uid, "making a redemption durable failed");
        }
        redeemed
    }

    /// `/redeem CODE`: what to answer (how to use it, without a code).
    pub(super) async fn redeem_command(
        &self,
        s: &Settings,
        uid: Uid,
        code: Option<&str>,
    ) -> String {
        let Some(code) = code else {
            return fill(
                &s.texts.redeem_usage,
                &[("command", &super::commands::first_word(&s.commands.redeem))],
            );
        };
        match self.redeem_code(uid, code, None).await {
            Ok(Redeemed { plan: Some(p), .. }) => {
                super::commands::plan_text(&s.texts.redeem_plan_ok, &p, s.today())
            }
            Ok(r) => fill(
                &s.texts.redeem_ok,
                &[
                    ("credits", &r.credits.to_string()),
                    ("paid", &r.balance.paid.to_string()),
                    ("available", &r.balance.available.to_string()),
                ],
            ),
            Err(e) => e.message().to_owned(),
        }
    }
}
