//! How the web API shows a user's membership plan (`GET /api/me`'s and `POST /api/redeem`'s
//! `plan`): the page's account sheet reads it.

use chatrelay_storage::{ActivePlan, date_of_day};
use serde_json::{Value, json};

/// A plan as the API shows it: `active` on `today`, its first and last day (`YYYY-MM-DD`, the
/// quota timezone), the days left counting today, the credits it adds each day.
#[must_use]
pub fn plan_json(p: &ActivePlan, today: i64) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "daily_credits": p.daily_credits,
        "active": p.active_on(today),
        "start": date_of_day(p.start_day),
        "end": date_of_day(p.last_day()),
        "days_left": p.days_left(today),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_shows_its_last_day_and_the_days_left() {
        let p = ActivePlan {
            id: "month".into(),
            name: "月卡".into(),
            daily_credits: 20,
            start_day: 20_000,
            end_day: 20_030,
        };
        let v = plan_json(&p, 20_029);
        assert_eq!(v["end"], "2024-11-02");
        assert_eq!(v["start"], "2024-10-04");
        assert_eq!(
            (v["active"].as_bool(), v["days_left"].as_i64()),
            (Some(true), Some(1))
        );
        let v = plan_json(&p, 20_030);
        assert_eq!(
            (v["active"].as_bool(), v["days_left"].as_i64()),
            (Some(false), Some(0))
        );
    }
}
