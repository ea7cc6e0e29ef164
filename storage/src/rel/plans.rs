//! Membership plans on PostgreSQL, as `plans.rs` on sled: a user's plan is five columns of
//! their `balances` row (`plan_id`, `plan_name`, `plan_daily_credits`, `plan_start_day`,
//! `plan_end_day`: all or none, checked), beside the free allowance it enlarges, so the
//! statements that reserve and settle read it with the row they lock anyway. A grant (a plan
//! code: `codes.rs`) writes the new plan in the statement that writes its ledger entry. The
//! day arithmetic is sled's ([`crate::after_grant`], [`crate::after_refund`]).

use tokio_postgres::Row;
use tokio_postgres::types::Type;

use super::{RelStore, col, credits, uid_param};
use crate::{ActivePlan, StoreError, Uid};

/// The plan columns of `balances`, in [`plan_from`]'s names.
pub(crate) const PLAN_COLS: &str =
    "b.plan_id, b.plan_name, b.plan_daily_credits, b.plan_start_day, b.plan_end_day";

impl RelStore {
    /// The user's plan (active or ended; see [`ActivePlan::active_on`]), if they ever had
    /// one; `None` also for an unknown user (as sled).
    pub(crate) async fn plan(&self, uid: Uid) -> Result<Option<ActivePlan>, StoreError> {
        let id = uid_param(uid)?;
        let sql = format!("SELECT {PLAN_COLS} FROM balances b WHERE b.uid = $1");
        let rows = self.rows(&sql, &[(&id, Type::INT8)]).await?;
        match rows.first() {
            Some(row) => plan_from(row),
            None => Ok(None),
        }
    }
}

/// The plan in `row` ([`PLAN_COLS`]); `None` when it has none (or the row is an outer
/// join's empty side).
pub(crate) fn plan_from(row: &Row) -> Result<Option<ActivePlan>, StoreError> {
    let Some(id) = col::<Option<String>>(row, "plan_id")? else {
        return Ok(None);
    };
    let missing = || StoreError::corrupt("balances", id.clone(), "a plan column is null");
    let daily = col::<Option<i64>>(row, "plan_daily_credits")?.ok_or_else(missing)?;
    Ok(Some(ActivePlan {
        name: col::<Option<String>>(row, "plan_name")?.ok_or_else(missing)?,
        daily_credits: credits(daily, "balances", || id.clone())?,
        start_day: col::<Option<i64>>(row, "plan_start_day")?.ok_or_else(missing)?,
        end_day: col::<Option<i64>>(row, "plan_end_day")?.ok_or_else(missing)?,
        id,
    }))
}
