//! Membership plans (会员): what a plan grant gives, a user's plan, and its day arithmetic.
//!
//! A user's plan lives in their `balances` record ([`crate::quota`]), beside the free
//! allowance it enlarges: every reservation and settlement reads that record already, so the
//! plan's daily credits are counted in the same transaction without widening it. A grant
//! (a paid plan order, a plan code) and a refund write the new plan state, and a ledger
//! entry with no credit change (`paid_delta` and `free_delta` 0) whose reference is the
//! order's or the code's: that entry is the grant record, it makes the grant exactly once,
//! and it shows in the user's ledger.
//!
//! Day arithmetic: days are quota day numbers (days since 1970-01-01 in the quota timezone);
//! a plan is active on `start_day <= today < end_day`.
//! - The same plan again extends it by its `days` from its current end, or from today when
//!   it has ended.
//! - A different plan replaces the current one from today (the rest of the old one is
//!   dropped): one plan at a time, and what a user bought last is what they have.
//! - A refund of a plan order takes its `days` back from the end, never before today (the
//!   days used are not clawed back), and only from the same plan.

use serde::{Deserialize, Serialize};

use crate::codec::u64_key;
use crate::{KvStore, StoreError, Uid};

impl KvStore {
    /// The user's plan (active or ended; see [`ActivePlan::active_on`]), if they ever had one.
    pub fn plan(&self, uid: Uid) -> Result<Option<ActivePlan>, StoreError> {
        match self.trees()?.balances.get(u64_key(uid.0))? {
            Some(raw) => Ok(crate::quota::value::read_balance(uid.0, &raw)?.plan),
            None => Ok(None),
        }
    }
}

/// What a plan order or a plan code grants: a snapshot of `[[plans]]` when it was sold, so
/// a later change of the configuration does not change what was bought.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanGrant {
    /// The plan's id (`[[plans]] id`).
    pub id: String,
    /// Its name when sold.
    pub name: String,
    /// How many days it lasts.
    pub days: u32,
    /// Credits it adds to the free allowance each day.
    pub daily_credits: u64,
    /// The quota timezone's offset east of UTC (seconds) its days are counted in.
    #[serde(default)]
    pub utc_offset_secs: i32,
}

impl PlanGrant {
    /// The day number of `now_ms` in the grant's timezone.
    #[must_use]
    pub fn day_of(&self, now_ms: i64) -> i64 {
        (now_ms.div_euclid(1000) + i64::from(self.utc_offset_secs)).div_euclid(86_400)
    }
}

/// A user's plan: active on `start_day <= today < end_day`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivePlan {
    /// The plan's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Credits added to the free allowance on each day it is active.
    pub daily_credits: u64,
    /// The first day (quota day number).
    pub start_day: i64,
    /// The day after the last one (exclusive).
    pub end_day: i64,
}

impl ActivePlan {
    /// Whether the plan counts on `today`.
    #[must_use]
    pub fn active_on(&self, today: i64) -> bool {
        self.start_day <= today && today < self.end_day
    }

    /// The credits it adds to the free allowance of `today` (0 when not active).
    #[must_use]
    pub fn daily_on(&self, today: i64) -> u64 {
        if self.active_on(today) {
            self.daily_credits
        } else {
            0
        }
    }

    /// Days left counting `today` (0 when ended).
    #[must_use]
    pub fn days_left(&self, today: i64) -> i64 {
        (self.end_day - today.max(self.start_day)).max(0)
    }

    /// The last day it is active (`end_day - 1`).
    #[must_use]
    pub fn last_day(&self) -> i64 {
        self.end_day.saturating_sub(1)
    }
}

/// The plan after `grant` on `today`, given the current one.
#[must_use]
pub fn after_grant(current: Option<&ActivePlan>, grant: &PlanGrant, today: i64) -> ActivePlan {
    let days = i64::from(grant.days);
    match current {
        Some(p) if p.id == grant.id && p.end_day > today => ActivePlan {
            id: grant.id.clone(),
            name: grant.name.clone(),
            daily_credits: grant.daily_credits,
            start_day: p.start_day.min(today),
            end_day: p.end_day.saturating_add(days),
        },
        _ => ActivePlan {
            id: grant.id.clone(),
            name: grant.name.clone(),
            daily_credits: grant.daily_credits,
            start_day: today,
            end_day: today.saturating_add(days),
        },
    }
}

/// The plan after refunding a grant of `grant.days` of `grant.id` on `today`: the days come
/// off the end, never before today (a day begun stays as it was: its credits may be spent).
/// Another plan (the refunded one was replaced since) is left alone.
#[must_use]
pub fn after_refund(
    current: Option<&ActivePlan>,
    grant: &PlanGrant,
    today: i64,
) -> Option<ActivePlan> {
    let p = current?;
    if p.id != grant.id {
        return Some(p.clone());
    }
    let end = p
        .end_day
        .saturating_sub(i64::from(grant.days))
        .max(today)
        .min(p.end_day);
    Some(ActivePlan {
        end_day: end,
        ..p.clone()
    })
}

/// Grants `grant` at `now_ms` on the user's balance record (inside the transaction that writes
/// the grant's ledger entry) and appends what the plan is now to that entry's `reason`.
pub(crate) fn apply_grant(
    balance: &mut crate::quota::BalanceRecord,
    grant: &PlanGrant,
    now_ms: i64,
    reason: &mut String,
) {
    let plan = after_grant(balance.plan.as_ref(), grant, grant.day_of(now_ms));
    reason.push_str(&grant_note(&plan));
    balance.plan = Some(plan);
}

/// What a grant's ledger entry says about the plan after it (appended to its reason).
pub(crate) fn grant_note(plan: &ActivePlan) -> String {
    format!(
        " (会员 {} {} 至 {})",
        plan.name,
        date_of_day(plan.start_day),
        date_of_day(plan.last_day())
    )
}

/// What a refund's ledger entry says about the plan after it.
pub(crate) fn refund_note(plan: &ActivePlan, today: i64) -> String {
    if plan.end_day <= today {
        format!(" (会员 {} 已结束)", plan.name)
    } else {
        format!(" (会员 {} 至 {})", plan.name, date_of_day(plan.last_day()))
    }
}

/// `YYYY-MM-DD` of a day number (the proleptic Gregorian calendar), for ledger reasons.
#[must_use]
pub fn date_of_day(day: i64) -> String {
    // Howard Hinnant's days-to-civil.
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(id: &str, days: u32, daily: u64) -> PlanGrant {
        PlanGrant {
            id: id.into(),
            name: format!("{id} plan"),
            days,
            daily_credits: daily,
            utc_offset_secs: 8 * 3600,
        }
    }

    #[test]
    fn days_are_counted_in_the_grants_timezone() {
        let g = grant("month", 30, 10);
        // 2024-05-01 15:59:59 UTC is 23:59:59 in Shanghai; a second later it is May 2nd.
        let before = 1_714_579_199_000;
        assert_eq!(date_of_day(g.day_of(before)), "2024-05-01");
        assert_eq!(date_of_day(g.day_of(before + 1000)), "2024-05-02");
        let utc = PlanGrant {
            utc_offset_secs: 0,
            ..g.clone()
        };
        assert_eq!(date_of_day(utc.day_of(before + 1000)), "2024-05-01");
        assert_eq!(date_of_day(0), "1970-01-01");
        assert_eq!(date_of_day(19_782), "2024-02-29");
        assert_eq!(date_of_day(-1), "1969-12-31");
    }

    #[test]
    fn a_plan_is_active_from_its_start_to_the_day_before_its_end() {
        let p = after_grant(None, &grant("month", 30, 10), 100);
        assert_eq!((p.start_day, p.end_day, p.last_day()), (100, 130, 129));
        assert_eq!(p.daily_on(99), 0, "not before it starts");
        assert_eq!(p.daily_on(100), 10);
        assert_eq!(p.daily_on(129), 10, "its 30th day");
        assert_eq!(p.daily_on(130), 0, "expired");
        assert_eq!(p.days_left(100), 30);
        assert_eq!(p.days_left(129), 1);
        assert_eq!(p.days_left(200), 0);
    }

    #[test]
    fn the_same_plan_again_extends_from_its_end_or_from_today() {
        let g = grant("month", 30, 10);
        let p = after_grant(None, &g, 100);
        let twice = after_grant(Some(&p), &g, 110);
        assert_eq!((twice.start_day, twice.end_day), (100, 160), "stacked");
        let lapsed = after_grant(Some(&twice), &g, 175);
        assert_eq!(
            (lapsed.start_day, lapsed.end_day),
            (175, 205),
            "expired: from today"
        );
        // The last day still counts as active: extending then continues without a gap.
        let last = after_grant(Some(&p), &g, 129);
        assert_eq!((last.start_day, last.end_day), (100, 160));
    }

    #[test]
    fn a_different_plan_replaces_the_current_one_from_today() {
        let p = after_grant(None, &grant("month", 30, 10), 100);
        let q = after_grant(Some(&p), &grant("week", 7, 50), 110);
        assert_eq!((q.id.as_str(), q.start_day, q.end_day), ("week", 110, 117));
        assert_eq!(q.daily_on(112), 50);
    }

    #[test]
    fn a_refund_takes_its_days_off_the_end_never_before_today() {
        let g = grant("month", 30, 10);
        let p = after_grant(None, &g, 100);
        let ended = after_refund(Some(&p), &g, 105).unwrap();
        assert_eq!(ended.end_day, 105, "ends today: today's credits are gone");
        assert_eq!(ended.daily_on(105), 0);
        assert_eq!(ended.daily_on(104), 10, "past days stay as they were");
        // Two stacked months, one refunded: the other stays.
        let two = after_grant(Some(&p), &g, 101);
        let one = after_refund(Some(&two), &g, 105).unwrap();
        assert_eq!(one.end_day, 130);
        // A refund after the plan ended changes nothing.
        let late = after_refund(Some(&p), &g, 140).unwrap();
        assert_eq!(late.end_day, 130);
        // The refunded plan was replaced by another: that one stays.
        let other = after_grant(Some(&p), &grant("week", 7, 50), 110);
        assert_eq!(after_refund(Some(&other), &g, 111), Some(other.clone()));
        assert_eq!(after_refund(None, &g, 111), None);
    }
}
