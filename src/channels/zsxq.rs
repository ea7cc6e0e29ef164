//! zsxq (知识星球): answers each group's unanswered questions on its schedule, exactly once.
//!
//! zsxq has no webhook, so each `[[zsxq]]` group is polled on its cron schedule, gently: the
//! client spaces requests, code 1059 backs off, quiet hours and a per-run and per-day cap are
//! respected, and a 401 (the token expired) stops the group and alerts the operators until the
//! token is replaced. A topic's progress is kept in the store (`posting` with the answer text,
//! then `answered`), so a topic is answered once across restarts and crashes: an ambiguous post
//! is checked with zsxq before anything is sent again, and the answer is never asked of the LLM
//! twice. Answers are paid by the group (`zsxq:<id>:_group`), and questions are one-shot (no
//! memory).

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatrelay_core::{FailureKind, Handler, Inbound, Platform, ReplyEvent, UserKey};
use chatrelay_zsxq::{Client, ClientConfig, Question, ZsxqError};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::alerts::Alerter;
use crate::config::{ZsxqConfig, parse_quiet_hours};
use crate::engine::Engine;
use crate::util::{day_number, now_ms};

/// The checkpoint value of an answered topic.
const ANSWERED: &str = "answered";
/// The prefix of a topic's checkpoint while its answer is being posted (the answer follows).
const POSTING: &str = "posting:";
/// Tries of a list request on code 1059 before the run gives up.
const TOO_FREQUENT_TRIES: u32 = 3;

fn in_quiet_hours(range: (u32, u32), now_ms: i64, offset_secs: i32) -> bool {
    let local = (now_ms.div_euclid(1000) + i64::from(offset_secs)).rem_euclid(86_400);
    let minute = u32::try_from(local / 60).unwrap_or(0);
    let (start, end) = range;
    if start <= end {
        (start..end).contains(&minute)
    } else {
        minute >= start || minute < end
    }
}

/// What the admin API shows of a group.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GroupStatus {
    /// The configured id.
    pub id: String,
    /// The zsxq group number.
    pub group_id: String,
    /// Paused by an admin.
    pub paused: bool,
    /// zsxq said 401: the token must be replaced.
    pub token_expired: bool,
    /// Last poll, ms since the Unix epoch.
    pub last_poll_ms: Option<i64>,
    /// What the last poll found wrong.
    pub last_error: Option<String>,
    /// Answers posted since start.
    pub answered_since_start: u64,
    /// Answers posted today (from the store).
    pub answered_today: u64,
    /// The uid that pays for the group's answers.
    pub payer_uid: Option<u64>,
}

/// One configured group and its state.
pub struct ZsxqGroup {
    cfg: ZsxqConfig,
    client: Client,
    status: Mutex<GroupStatus>,
    quiet: Option<(u32, u32)>,
}

impl ZsxqGroup {
    /// The configured id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.cfg.id
    }

    fn key_prefix(&self) -> String {
        format!("zsxq:{}", self.cfg.id)
    }

    fn payer(&self) -> UserKey {
        UserKey::new(Platform::Zsxq, self.cfg.id.clone(), "_group")
    }

    fn set<F: FnOnce(&mut GroupStatus)>(&self, f: F) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The group's status.
    #[must_use]
    pub async fn status(&self, engine: &Engine, today: i64) -> GroupStatus {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        s.answered_today = engine
            .counter(&format!("{}:day:{today}", self.key_prefix()))
            .await
            .unwrap_or(0);
        s.payer_uid = engine
            .known_user(&self.payer())
            .await
            .ok()
            .flatten()
            .map(|u| u.0);
        s
    }

    /// Pauses or resumes polling.
    pub fn set_paused(&self, paused: bool) {
        self.set(|s| s.paused = paused);
    }

    /// Replaces the access token (after a 401) and resumes polling.
    pub fn set_token(&self, token: &str) {
        self.client.set_access_token(token);
        self.set(|s| {
            s.token_expired = false;
            s.last_error = None;
        });
    }
}

/// The configured groups, by id.
#[derive(Default)]
pub struct Zsxq {
    groups: Vec<Arc<ZsxqGroup>>,
}

impl Zsxq {
    /// Builds the groups from a validated configuration. On a reload, a group whose
    /// configuration did not change is kept as it is (its task keeps running); a changed one
    /// keeps its pause and its counters.
    pub fn from_config(
        config: &crate::config::Config,
        http: &reqwest::Client,
        previous: Option<&Zsxq>,
    ) -> anyhow::Result<Self> {
        let mut groups = Vec::new();
        for cfg in &config.zsxq {
            let old = previous.and_then(|p| p.group(&cfg.id));
            if let Some(old) = old.filter(|o| o.cfg == *cfg) {
                groups.push(old.clone());
                continue;
            }
            let (paused, answered_since_start) = old.map_or((false, 0), |o| {
                let s = o.status.lock().unwrap_or_else(|p| p.into_inner());
                (s.paused, s.answered_since_start)
            });
            let client = Client::new(
                ClientConfig {
                    api_base: cfg.api_base.trim_end_matches('/').to_owned(),
                    access_token: cfg.access_token.expose().to_owned(),
                    min_interval: Duration::from_millis(cfg.min_interval_ms),
                    ..ClientConfig::default()
                },
                http.clone(),
            );
            let quiet = cfg.quiet_hours.as_deref().and_then(parse_quiet_hours);
            groups.push(Arc::new(ZsxqGroup {
                status: Mutex::new(GroupStatus {
                    id: cfg.id.clone(),
                    group_id: cfg.group_id.clone(),
                    paused,
                    answered_since_start,
                    ..GroupStatus::default()
                }),
                cfg: cfg.clone(),
                client,
                quiet,
            }));
        }
        Ok(Self { groups })
    }

    /// The group with this id.
    #[must_use]
    pub fn group(&self, id: &str) -> Option<&Arc<ZsxqGroup>> {
        self.groups.iter().find(|g| g.cfg.id == id)
    }

    /// Every group.
    #[must_use]
    pub fn groups(&self) -> &[Arc<ZsxqGroup>] {
        &self.groups
    }
}

/// Polls one group on its schedule until `stop` (a reload replaced or removed the group) or
/// shutdown. `stop` is only looked at between runs: a run in progress finishes its answers.
pub async fn run_group(
    engine: Engine,
    alerts: Alerter,
    group: Arc<ZsxqGroup>,
    stop: CancellationToken,
    shutdown: CancellationToken,
) {
    let Ok(schedule) = cron::Schedule::from_str(&group.cfg.schedule) else {
        warn!(group = %group.cfg.id, "invalid schedule; not polling");
        return;
    };
    let offset = engine.settings().tz_offset_secs;
    let Some(tz) = chrono::FixedOffset::east_opt(offset) else {
        return;
    };
    let span = info_span!("zsxq", group = %group.cfg.id);
    async move {
        info!(schedule = %group.cfg.schedule, "polling");
        loop {
            let Some(next) = schedule.upcoming(tz).next() else {
                warn!("the schedule has no next time; not polling");
                return;
            };
            let wait = (next.timestamp_millis() - now_ms()).max(0);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))) => {}
                () = stop.cancelled() => return,
                () = shutdown.cancelled() => return,
            }
            let (paused, expired) = {
                let s = group.status.lock().unwrap_or_else(|p| p.into_inner());
                (s.paused, s.token_expired)
            };
            if paused || expired {
                continue;
            }
            if group.quiet.is_some_and(|q| in_quiet_hours(q, now_ms(), offset)) {
                continue;
            }
            tokio::select! {
                () = poll_once(&engine, &alerts, &group) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
    .instrument(span)
    .await;
}

/// Lists the unanswered questions and answers up to the run's cap.
pub async fn poll_once(engine: &Engine, alerts: &Alerter, group: &ZsxqGroup) {
    group.set(|s| s.last_poll_ms = Some(now_ms()));
    let questions = match list_with_backoff(group).await {
        Ok(q) => q,
        Err(e) => {
            note_error(alerts, group, &e);
            return;
        }
    };
    let today = engine.settings().today();
    let mut answered_this_run = 0usize;
    // Oldest first: the ones waiting longest are answered first.
    let mut questions = questions;
    questions.sort_by_key(|q| q.create_time);
    for q in questions {
        if answered_this_run >= group.cfg.max_answers_per_run {
            break;
        }
        let day_key = format!("{}:day:{today}", group.key_prefix());
        if group.cfg.daily_cap > 0
            && engine.counter(&day_key).await.unwrap_or(0) >= group.cfg.daily_cap
        {
            info!(cap = group.cfg.daily_cap, "daily cap reached");
            break;
        }
        match answer_one(engine, group, &q).await {
            Ok(true) => {
                answered_this_run += 1;
                group.set(|s| s.answered_since_start += 1);
                if let Err(e) = engine.bump_counter(&day_key).await {
                    warn!(error = %e, "counting an answer failed");
                }
                metrics::counter!("chatrelay_zsxq_answered_total").increment(1);
            }
            Ok(false) => {}
            Err(Stop::Quota) => {
                alerts.alert(format!(
                    "知识星球 {} 的额度不足，暂停回答（给 zsxq:{}:_group 充值）",
                    group.cfg.id, group.cfg.id
                ));
                break;
            }
            Err(Stop::Zsxq(e)) => {
                note_error(alerts, group, &e);
                break;
            }
            Err(Stop::Skip(why)) => {
                warn!(topic = %q.topic_id, reason = %why, "question skipped this run");
            }
        }
    }
}

fn note_error(alerts: &Alerter, group: &ZsxqGroup, e: &ZsxqError) {
    let text = e.to_string();
    group.set(|s| s.last_error = Some(text.clone()));
    if matches!(e, ZsxqError::Unauthorized) {
        group.set(|s| s.token_expired = true);
        alerts.alert(format!(
            "知识星球 {} 的 access_token 已失效（401），已停止轮询；请更新 token：chatrelay admin zsxq token {} <TOKEN>",
            group.cfg.id, group.cfg.id
        ));
    } else {
        warn!(error = %text, "zsxq poll stopped");
    }
}

/// Questions per page, and the most pages read per run (older questions page in later runs).
const PAGE: u32 = 20;
const MAX_PAGES: usize = 5;

/// Unanswered questions, newest page first, paging back while pages are full and the run's
/// cap is not covered yet.
async fn list_with_backoff(group: &ZsxqGroup) -> Result<Vec<Question>, ZsxqError> {
    let mut all: Vec<Question> = Vec::new();
    let mut end_time: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let page = list_page(group, end_time.as_deref()).await?;
        let full = page.len() >= PAGE as usize;
        end_time = page
            .iter()
            .min_by_key(|q| q.create_time)
            .map(|q| q.create_time_raw.clone());
        all.extend(page.into_iter().filter(|q| !q.answered));
        if !full || all.len() >= group.cfg.max_answers_per_run * 3 {
            break;
        }
    }
    all.sort_by_key(|q| q.topic_id);
    all.dedup_by_key(|q| q.topic_id);
    Ok(all)
}

async fn list_page(group: &ZsxqGroup, end_time: Option<&str>) -> Result<Vec<Question>, ZsxqError> {
    let mut delay = Duration::from_secs(2);
    let mut tries = 0;
    loop {
        match group
            .client
            .unanswered_questions(&group.cfg.group_id, PAGE, end_time)
            .await
        {
            Err(ZsxqError::TooFrequent) if tries + 1 < TOO_FREQUENT_TRIES => {
                tries += 1;
                warn!(
                    delay_s = delay.as_secs(),
                    "zsxq says too frequent (1059); backing off"
                );
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
}

enum Stop {
    /// The group has no credits: stop the run.
    Quota,
    /// zsxq refused (401, 1059, ...): stop the run.
    Zsxq(ZsxqError),
    /// This question could not be answered now; try the next.
    Skip(String),
}

/// Answers one question unless it was answered before; `Ok(true)` when an answer was posted.
async fn answer_one(engine: &Engine, group: &ZsxqGroup, q: &Question) -> Result<bool, Stop> {
    let key = format!("{}:topic:{}", group.key_prefix(), q.topic_id);
    let state = engine
        .checkpoint(&key)
        .await
        .map_err(|e| Stop::Skip(e.to_string()))?;
    let text = match state.as_deref() {
        Some(ANSWERED) => return Ok(false),
        Some(s) if s.starts_with(POSTING) => {
            // An earlier post may have landed: ask zsxq before sending anything again.
            match group.client.is_answered(q.topic_id).await {
                Ok(true) => {
                    engine
                        .checkpoint_cas(&key, Some(s), ANSWERED)
                        .await
                        .map_err(|e| Stop::Skip(e.to_string()))?;
                    return Ok(false);
                }
                Ok(false) => s.trim_start_matches(POSTING).to_owned(),
                Err(e) => return Err(stop_for(e)),
            }
        }
        Some(other) => return Err(Stop::Skip(format!("unknown checkpoint {other:?}"))),
        None => {
            let asker = q
                .owner
                .as_ref()
                .map_or_else(|| "anonymous".to_owned(), |o| o.user_id.to_string());
            let mut inbound = Inbound::text(
                UserKey::new(Platform::Zsxq, group.cfg.id.clone(), asker),
                // A fresh id per attempt: a failed attempt must not block a later one.
                format!("{}@{}", q.topic_id, now_ms()),
                q.text.clone(),
            );
            inbound.bill_to = Some(group.payer());
            inbound.remember = false;
            let answer = match engine.handle(inbound).collect().await {
                ReplyEvent::Final { text, .. } => chatrelay_zsxq::render_answer(&text),
                ReplyEvent::Failed {
                    kind: FailureKind::InsufficientQuota,
                    ..
                } => return Err(Stop::Quota),
                ReplyEvent::Failed { message, .. } => return Err(Stop::Skip(message)),
                ReplyEvent::Delta(_) => return Err(Stop::Skip("incomplete answer".into())),
            };
            let posting = format!("{POSTING}{answer}");
            if !engine
                .checkpoint_cas(&key, None, &posting)
                .await
                .map_err(|e| Stop::Skip(e.to_string()))?
            {
                return Ok(false); // another run got there first
            }
            // The checkpoint must be on disk before the post: a crash after posting then
            // finds "posting" and checks with zsxq instead of answering again.
            engine
                .flush()
                .await
                .map_err(|e| Stop::Skip(e.to_string()))?;
            answer
        }
    };
    let posting = format!("{POSTING}{text}");
    match group
        .client
        .answer(q.topic_id, &text, group.cfg.silenced)
        .await
    {
        Ok(()) => {
            engine
                .checkpoint_cas(&key, Some(&posting), ANSWERED)
                .await
                .map_err(|e| Stop::Skip(e.to_string()))?;
            let _ = engine.flush().await;
            info!(topic = %q.topic_id, "answered");
            Ok(true)
        }
        Err(e) => Err(stop_for(e)),
    }
}

fn stop_for(e: ZsxqError) -> Stop {
    match e {
        ZsxqError::Unauthorized | ZsxqError::TooFrequent => Stop::Zsxq(e),
        // Ambiguous or not: the checkpoint says "posting", so the next run checks first.
        other => Stop::Skip(other.to_string()),
    }
}

/// Today's day number in the quota timezone (for the admin view).
#[must_use]
pub fn today(engine: &Engine) -> i64 {
    day_number(now_ms(), engine.settings().tz_offset_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_hours() {
        assert_eq!(parse_quiet_hours("22:00-07:00"), Some((1320, 420)));
        assert_eq!(parse_quiet_hours(" 09:30 - 18:00 "), Some((570, 1080)));
        for bad in ["", "22-07", "25:00-01:00", "10:60-11:00", "x"] {
            assert_eq!(parse_quiet_hours(bad), None, "{bad}");
        }
        let at = |h: i64, m: i64| ((h * 60 + m) * 60 - 8 * 3600) * 1000; // local UTC+8 time on day 0
        let night = (1320, 420);
        assert!(in_quiet_hours(night, at(23, 0), 8 * 3600));
        assert!(in_quiet_hours(night, at(6, 59), 8 * 3600));
        assert!(!in_quiet_hours(night, at(7, 0), 8 * 3600));
        assert!(!in_quiet_hours(night, at(12, 0), 8 * 3600));
        let day = (570, 1080);
        assert!(in_quiet_hours(day, at(12, 0), 8 * 3600));
        assert!(!in_quiet_hours(day, at(20, 0), 8 * 3600));
    }
}
