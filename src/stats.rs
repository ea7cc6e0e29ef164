//! Per-day statistics for operators: active users, messages by platform and outcome, LLM
//! tokens and their cost, credits charged, (from the orders) revenue by channel and method and
//! membership plans sold, (from the ledger) redemption codes redeemed, the paid credits
//! granted by admins and guest trials (counted as they are written), and (from the newest
//! users) new users.
//!
//! Counting happens in memory on the hot path (a mutex and a map, no disk write); the
//! housekeeping task writes the counts into the store once a minute in one batch, and the
//! shutdown writes the rest. A crash can lose the last minute of statistics; it never loses a
//! credit, because credits live in the ledger, not here.
//!
//! Keys (in the store's checkpoints): `stats:<day>:<what>[:<detail>]` where `<day>` is the
//! quota day number (days since the epoch in the quota timezone), zero-padded so that keys sort
//! by day.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use chatrelay_storage::{OrderStatus, Store, StoreError, Uid};
use serde::Serialize;

use crate::config::ModelConfig;

/// Counts gathered since the last flush.
#[derive(Default)]
pub struct Stats {
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    counters: HashMap<String, u64>,
    markers: HashSet<String>,
}

fn prefix(day: i64) -> String {
    format!("stats:{day:06}:")
}

impl Stats {
    fn add(&self, key: String, n: u64) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        *p.counters.entry(key).or_default() += n;
    }

    /// A user wrote (or called the API) on `day`.
    pub fn active(&self, day: i64, uid: Uid) {
        let key = format!("{}active:{}", prefix(day), uid.0);
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.markers.insert(key);
    }

    /// A message (or API call) ended with `outcome` (`answered`, `insufficient_quota`...).
    pub fn message(&self, day: i64, platform: &str, outcome: &str) {
        self.add(format!("{}messages:{platform}:{outcome}", prefix(day)), 1);
    }

    /// An answer's tokens and the credits it cost.
    pub fn usage(&self, day: i64, model: &str, prompt: u64, completion: u64, credits: u64) {
        let p = prefix(day);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (key, n) in [
            (format!("{p}prompt_tokens:{model}"), prompt),
            (format!("{p}completion_tokens:{model}"), completion),
            (format!("{p}credits"), credits),
        ] {
            *pending.counters.entry(key).or_default() += n;
        }
    }

    /// Paid credits granted on `day` by an admin or as a guest's trial (counted when the
    /// grant is written, not replayed: the ledger has no index by time to count them from).
    pub fn granted(&self, day: i64, credits: u64) {
        self.add(format!("{}grant_credits", prefix(day)), credits);
    }

    /// Writes the pending counts in one batch. On failure they are kept for the next try.
    pub async fn flush(&self, store: &Store) -> Result<(), StoreError> {
        let taken = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *p)
        };
        if taken.counters.is_empty() && taken.markers.is_empty() {
            return Ok(());
        }
        let deltas: Vec<(String, u64)> = taken
            .counters
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let markers: Vec<String> = taken.markers.iter().cloned().collect();
        if let Err(e) = store.add_counters(&deltas, &markers).await {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for (k, v) in taken.counters {
                *p.counters.entry(k).or_default() += v;
            }
            p.markers.extend(taken.markers);
            return Err(e);
        }
        Ok(())
    }
}

/// One day's figures.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DayStats {
    /// The quota day number.
    pub day: i64,
    /// The day as `YYYY-MM-DD` in the quota timezone.
    pub date: String,
    /// Distinct users who wrote or called the API.
    pub active_users: u64,
    /// Users created that day (by a first message, a login, the admin API, a guest trial).
    pub new_users: u64,
    /// Messages by platform, then by outcome.
    pub messages: BTreeMap<String, BTreeMap<String, u64>>,
    /// All messages.
    pub messages_total: u64,
    /// Prompt tokens by model.
    pub prompt_tokens: BTreeMap<String, u64>,
    /// Completion tokens by model.
    pub completion_tokens: BTreeMap<String, u64>,
    /// Credits charged for answers.
    pub credits_charged: u64,
    /// What the LLM calls cost at the models' configured prices, in fen (0 when no price
    /// is configured).
    pub llm_cost_fen: u64,
    /// Orders paid that day.
    pub orders_paid: u64,
    /// Their amount, in fen.
    pub revenue_fen: i64,
    /// Revenue by channel, in fen.
    pub revenue_by_channel: BTreeMap<String, i64>,
    /// Revenue by payment method (`native`, `jsapi`, `h5`, `precreate`, `wap`, `page`), in fen.
    pub revenue_by_method: BTreeMap<String, i64>,
    /// Refunded that day, in fen.
    pub refunds_fen: i64,
    /// Redemption codes redeemed that day.
    pub codes_redeemed: u64,
    /// The paid credits they granted.
    pub code_credits: i64,
    /// Membership plan orders paid that day (also in `orders_paid`).
    pub plans_sold: u64,
    /// Their amount, in fen (also in `revenue_fen`).
    pub plan_sales_fen: i64,
    /// Plan orders paid that day by plan id.
    pub plans_by_id: BTreeMap<String, u64>,
    /// Paid credits added by the orders paid that day.
    pub order_credits: i64,
    /// Paid credits granted that day by admins (and guest trials).
    pub grant_credits: i64,
    /// Every paid credit added that day: `order_credits + code_credits + grant_credits`
    /// (to set against `credits_charged`, the credits spent).
    pub credits_granted: i64,
}

/// The figures of `days` (quota day numbers), in the order given. Counts not yet flushed
/// are not included.
pub async fn report(
    store: &Store,
    days: &[i64],
    models: &[ModelConfig],
    tz_offset_secs: i32,
) -> Result<Vec<DayStats>, StoreError> {
    let orders = store.orders(None, usize::MAX).await?;
    let redemptions = store.code_redemptions().await?;
    // Users created since the first day asked for (day d starts at d * 86,400 s minus the
    // timezone's offset).
    let first_start_ms = days.iter().min().map_or(i64::MAX, |d| {
        (d * 86_400 - i64::from(tz_offset_secs)) * 1000
    });
    let created = store.users_created_since(first_start_ms).await?;
    let mut out = Vec::with_capacity(days.len());
    for &day in days {
        let p = prefix(day);
        let mut s = DayStats {
            day,
            date: date_of(day),
            ..DayStats::default()
        };
        s.active_users = store.count_prefix(&format!("{p}active:")).await? as u64;
        for (key, value) in store.checkpoints_with_prefix(&p).await? {
            let Some(rest) = key.strip_prefix(&p) else {
                continue;
            };
            let n: u64 = value.parse().unwrap_or(0);
            let mut parts = rest.splitn(2, ':');
            let what = parts.next().unwrap_or_default();
            let detail = parts.next().unwrap_or_default();
            match what {
                "messages" => {
                    let (platform, outcome) = detail.split_once(':').unwrap_or((detail, ""));
                    *s.messages
                        .entry(platform.to_owned())
                        .or_default()
                        .entry(outcome.to_owned())
                        .or_default() += n;
                    s.messages_total += n;
                }
                "prompt_tokens" => *s.prompt_tokens.entry(detail.to_owned()).or_default() += n,
                "completion_tokens" => {
                    *s.completion_tokens.entry(detail.to_owned()).or_default() += n;
                }
                "credits" => s.credits_charged += n,
                "grant_credits" => {
                    s.grant_credits = s
                        .grant_credits
                        .saturating_add(i64::try_from(n).unwrap_or(i64::MAX));
                }
                _ => {}
            }
        }
        s.llm_cost_fen = llm_cost_fen(&s, models);
        let in_day = |ms: Option<i64>| {
            ms.is_some_and(|ms| crate::util::day_number(ms, tz_offset_secs) == day)
        };
        for o in &orders {
            let paid = matches!(o.status, OrderStatus::Credited | OrderStatus::Refunded);
            if paid && in_day(o.credited_at_ms) {
                s.orders_paid += 1;
                s.revenue_fen += o.amount_fen;
                *s.revenue_by_channel.entry(o.channel.clone()).or_default() += o.amount_fen;
                let method = crate::billing::PayMethod::of(o).map_or("unknown", |m| m.as_str());
                *s.revenue_by_method.entry(method.to_owned()).or_default() += o.amount_fen;
                s.order_credits += i64::try_from(o.credits).unwrap_or(i64::MAX);
                if let Some(plan) = &o.plan {
                    s.plans_sold += 1;
                    s.plan_sales_fen += o.amount_fen;
                    *s.plans_by_id.entry(plan.id.clone()).or_default() += 1;
                }
            }
            if o.status == OrderStatus::Refunded && in_day(o.refunded_at_ms) {
                s.refunds_fen += o.amount_fen;
            }
        }
        for &(at_ms, credits) in &redemptions {
            if in_day(Some(at_ms)) {
                s.codes_redeemed += 1;
                s.code_credits += credits;
            }
        }
        s.credits_granted = s.order_credits + s.code_credits + s.grant_credits;
        s.new_users = created.iter().filter(|&&ms| in_day(Some(ms))).count() as u64;
        out.push(s);
    }
    Ok(out)
}

/// Tokens times the models' prices (fen per million tokens), rounded to the nearest fen.
fn llm_cost_fen(s: &DayStats, models: &[ModelConfig]) -> u64 {
    let mut micro: u128 = 0;
    for m in models {
        let prompt = u128::from(s.prompt_tokens.get(&m.name).copied().unwrap_or(0));
        let completion = u128::from(s.completion_tokens.get(&m.name).copied().unwrap_or(0));
        micro += prompt * u128::from(m.input_fen_per_million)
            + completion * u128::from(m.output_fen_per_million);
    }
    u64::try_from((micro + 500_000) / 1_000_000).unwrap_or(u64::MAX)
}

/// `YYYY-MM-DD` of a day number.
#[must_use]
pub fn date_of(day: i64) -> String {
    chrono::DateTime::from_timestamp(day.saturating_mul(86_400), 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// The day number of `YYYY-MM-DD`.
#[must_use]
pub fn day_of(date: &str) -> Option<i64> {
    let d = chrono::NaiveDate::parse_from_str(date.trim(), "%Y-%m-%d").ok()?;
    Some(
        d.signed_duration_since(chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?)
            .num_days(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str, input: u64, output: u64) -> ModelConfig {
        ModelConfig {
            name: name.into(),
            input_fen_per_million: input,
            output_fen_per_million: output,
            ..ModelConfig::default()
        }
    }

    #[tokio::test]
    async fn counts_reach_the_report_after_a_flush() {
        let store = Store::open_temporary().unwrap();
        let stats = Stats::default();
        let day = 20_000;
        stats.active(day, Uid(1));
        stats.active(day, Uid(1));
        stats.active(day, Uid(2));
        stats.active(day + 1, Uid(3));
        stats.message(day, "mp", "answered");
        stats.message(day, "mp", "answered");
        stats.message(day, "api", "insufficient_quota");
        stats.usage(day, "m", 1_000_000, 500_000, 7);
        let before = report(&store, &[day], &[], 0).await.unwrap();
        assert_eq!(before[0].messages_total, 0, "nothing before the flush");
        stats.flush(&store).await.unwrap();
        stats.message(day, "mp", "answered");
        stats.flush(&store).await.unwrap();
        let r = report(&store, &[day, day + 1], &[model("m", 100, 200)], 0)
            .await
            .unwrap();
        assert_eq!(r[0].active_users, 2);
        assert_eq!(r[0].messages["mp"]["answered"], 3);
        assert_eq!(r[0].messages["api"]["insufficient_quota"], 1);
        assert_eq!(r[0].messages_total, 4);
        assert_eq!(r[0].prompt_tokens["m"], 1_000_000);
        assert_eq!(r[0].credits_charged, 7);
        // 1M prompt tokens at 100 fen/M + 0.5M completion at 200 fen/M.
        assert_eq!(r[0].llm_cost_fen, 200);
        assert_eq!(r[1].active_users, 1);
        assert_eq!(r[1].messages_total, 0);
        assert_eq!(r[0].date, "2024-10-04");
        assert_eq!((r[0].codes_redeemed, r[0].code_credits), (0, 0));
    }

    #[tokio::test]
    async fn code_redemptions_are_counted_on_their_day() {
        let store = Store::open_temporary().unwrap();
        let uid = store.create_user("a").await.unwrap().uid;
        let (_, codes) = store
            .create_code_batch(
                chatrelay_storage::CodeGrant::Credits { credits: 25 },
                3,
                None,
                "",
                0,
            )
            .await
            .unwrap();
        let day = 20_000;
        let ms = |d: i64| d * 86_400_000 + 3_600_000;
        store.redeem_code(uid, &codes[0], ms(day)).await.unwrap();
        store.redeem_code(uid, &codes[1], ms(day)).await.unwrap();
        store
            .redeem_code(uid, &codes[2], ms(day + 1))
            .await
            .unwrap();
        store
            .redeem_code(uid, &codes[2], ms(day + 1))
            .await
            .unwrap();
        let r = report(&store, &[day, day + 1, day + 2], &[], 0)
            .await
            .unwrap();
        assert_eq!((r[0].codes_redeemed, r[0].code_credits), (2, 50));
        assert_eq!((r[1].codes_redeemed, r[1].code_credits), (1, 25));
        assert_eq!(r[2].codes_redeemed, 0);
    }

    #[tokio::test]
    async fn plan_sales_are_counted_on_their_day() {
        let store = Store::open_temporary().unwrap();
        let uid = store.create_user("a").await.unwrap().uid;
        let day = 20_000;
        let ms = |d: i64| d * 86_400_000 + 3_600_000;
        let plan = chatrelay_storage::PlanGrant {
            id: "month".into(),
            name: "月卡".into(),
            days: 30,
            daily_credits: 20,
            utc_offset_secs: 0,
        };
        for (id, with_plan, fen, at) in [
            ("a", true, 3000, ms(day)),
            ("b", true, 3000, ms(day)),
            ("c", false, 100, ms(day)),
            ("d", true, 3000, ms(day + 1)),
            ("e", true, 3000, ms(day + 1)),
        ] {
            let o = chatrelay_storage::Order {
                id: id.into(),
                uid,
                product_id: "p".into(),
                product_name: "p".into(),
                channel: "wechat".into(),
                method: None,
                amount_fen: fen,
                credits: if with_plan { 0 } else { 10 },
                status: OrderStatus::Created,
                created_at_ms: at,
                expires_at_ms: at + 1_000_000,
                code_url: None,
                provider_trade_no: None,
                credited_at_ms: None,
                closed_at_ms: None,
                refunded_at_ms: None,
                plan: with_plan.then(|| plan.clone()),
            };
            store.create_order(&o, at).await.unwrap();
            if id != "e" {
                store.credit_order(id, fen, None, at).await.unwrap();
            }
        }
        let r = report(&store, &[day, day + 1], &[], 0).await.unwrap();
        assert_eq!((r[0].plans_sold, r[0].plan_sales_fen), (2, 6000));
        assert_eq!((r[0].orders_paid, r[0].revenue_fen), (3, 6100));
        assert_eq!(r[0].plans_by_id["month"], 2);
        assert_eq!(
            (r[1].plans_sold, r[1].plan_sales_fen),
            (1, 3000),
            "e is unpaid"
        );
    }

    #[tokio::test]
    async fn new_users_grants_and_methods_are_counted_on_their_day() {
        use chatrelay_storage::EntryKind;
        let store = Store::open_temporary().unwrap();
        let a = store.create_user("a").await.unwrap().uid;
        let b = store.create_user("b").await.unwrap().uid;
        let today = crate::util::day_number(crate::util::now_ms(), 0);
        let day = 20_000;
        let ms = |d: i64| d * 86_400_000 + 3_600_000;
        // Grants count (as the admin API and guest trials count them, when written); a
        // revocation, an answer and a code do not count as grants.
        let stats = Stats::default();
        stats.granted(day, 40);
        stats.granted(day, 2);
        stats.granted(day + 1, 5);
        stats.flush(&store).await.unwrap();
        store
            .grant(a, 40, EntryKind::Grant, "gift", "g1", ms(day))
            .await
            .unwrap();
        store
            .grant(b, 2, EntryKind::Grant, "gift", "g2", ms(day))
            .await
            .unwrap();
        store
            .grant(b, 5, EntryKind::Grant, "gift", "g3", ms(day + 1))
            .await
            .unwrap();
        store
            .debit(a, 10, EntryKind::Adjust, "oops", "r1", ms(day))
            .await
            .unwrap();
        let (_, codes) = store
            .create_code_batch(
                chatrelay_storage::CodeGrant::Credits { credits: 7 },
                1,
                None,
                "",
                0,
            )
            .await
            .unwrap();
        store.redeem_code(a, &codes[0], ms(day)).await.unwrap();
        for (id, channel, method, fen, credits) in [
            ("w1", "wechat", None, 100, 10),
            ("w2", "wechat", Some("h5"), 200, 20),
            ("a1", "alipay", Some("wap"), 300, 30),
        ] {
            let o = chatrelay_storage::Order {
                id: id.into(),
                uid: a,
                product_id: "p".into(),
                product_name: "p".into(),
                channel: channel.into(),
                method: method.map(Into::into),
                amount_fen: fen,
                credits,
                status: OrderStatus::Created,
                created_at_ms: ms(day),
                expires_at_ms: ms(day) + 1_000_000,
                code_url: None,
                provider_trade_no: None,
                credited_at_ms: None,
                closed_at_ms: None,
                refunded_at_ms: None,
                plan: None,
            };
            store.create_order(&o, ms(day)).await.unwrap();
            store.credit_order(id, fen, None, ms(day)).await.unwrap();
        }
        let r = report(&store, &[day, day + 1, today], &[], 0)
            .await
            .unwrap();
        assert_eq!(r[0].grant_credits, 42);
        assert_eq!(r[0].code_credits, 7);
        assert_eq!(r[0].order_credits, 60);
        assert_eq!(r[0].credits_granted, 42 + 7 + 60);
        assert_eq!(r[1].grant_credits, 5);
        assert_eq!(r[1].credits_granted, 5);
        let methods: Vec<(&str, i64)> = r[0]
            .revenue_by_method
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(methods, [("h5", 200), ("native", 100), ("wap", 300)]);
        assert_eq!(r[0].revenue_fen, 600);
        assert_eq!((r[0].new_users, r[2].new_users), (0, 2));
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(day_of("1970-01-02"), Some(1));
        assert_eq!(date_of(day_of("2026-11-27").unwrap()), "2026-11-27");
        assert_eq!(day_of("not a date"), None);
    }
}
