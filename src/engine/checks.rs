//! What a question must pass before the model: ban, rate limit, model permission, word rules,
//! the moderation endpoint; hits are recorded for admins.

use super::*;

impl Engine {
    /// `Some(refusal)` when `uid` may not use `model` (paid users or named groups only, or
    /// members of a plan that unlocks it).
    pub(super) async fn permitted(
        &self,
        s: &Settings,
        uid: Uid,
        model: &ModelConfig,
    ) -> Option<ReplyEvent> {
        if !model.paid_only && model.groups.is_empty() {
            return None;
        }
        let store = &self.inner.store;
        let user = match store.user(uid).await {
            Ok(Some(u)) => u,
            Ok(None) => return Some(failed(FailureKind::Banned, &s.texts.banned)),
            Err(e) => {
                warn!(error = %e, "reading the user failed");
                return Some(failed(FailureKind::Unavailable, &s.texts.unavailable));
            }
        };
        let paid = match store.balance(uid, s.today(), s.free_daily).await {
            Ok(b) => b.paid,
            Err(e) => {
                warn!(error = %e, "reading the balance failed");
                return Some(failed(FailureKind::Unavailable, &s.texts.unavailable));
            }
        };
        if policy::allowed(model, &user, paid) || self.plan_unlocks(s, uid, model).await {
            None
        } else {
            metrics::counter!("chatrelay_model_denied_total", "model" => model.name.clone())
                .increment(1);
            Some(failed(
                FailureKind::NotAllowed,
                fill(&s.texts.model_not_allowed, &[("model", &model.name)]),
            ))
        }
    }

    /// Whether the user's active membership plan lists `model` (`[[plans]] models`).
    async fn plan_unlocks(&self, s: &Settings, uid: Uid, model: &ModelConfig) -> bool {
        if !s.plans.iter().any(|p| p.models.contains(&model.name)) {
            return false;
        }
        match self.inner.store.plan(uid).await {
            Ok(Some(p)) if p.active_on(s.today()) => s
                .plan(&p.id)
                .is_some_and(|cfg| cfg.models.contains(&model.name)),
            Ok(_) => false,
            Err(e) => {
                warn!(error = %e, "reading the plan failed");
                false
            }
        }
    }

    /// `Some(refusal)` when a word rule forbids the question.
    pub(super) fn input_refusal(
        &self,
        s: &Settings,
        watch: &Watch,
        text: &str,
    ) -> Option<ReplyEvent> {
        let hit = s
            .filter
            .check(text, chatrelay_rules::Direction::Input, &watch.scope)?;
        self.record_hit(watch, chatrelay_rules::Direction::Input, &hit);
        Some(failed(FailureKind::Refused, hit.refusal))
    }

    /// `Some(refusal)` when the moderation endpoint flags the question (or fails, with
    /// `fail_closed`).
    pub(super) async fn moderation_refusal(
        &self,
        s: &Settings,
        watch: &Watch,
        text: &str,
    ) -> Option<ReplyEvent> {
        let m = s.moderation.as_ref()?;
        let req = chatrelay_openai::ModerationRequest {
            model: (!m.model.is_empty()).then(|| m.model.clone()),
            input: text.to_owned(),
            ..chatrelay_openai::ModerationRequest::default()
        };
        match m.client.moderate(&req).await {
            Ok(res) if res.is_flagged() => {
                let hit = chatrelay_rules::Hit {
                    rule: "moderation".to_owned(),
                    word: res.flagged_categories().join(","),
                    refusal: m.refusal.clone(),
                    excerpt: text.chars().take(80).collect(),
                };
                self.record_hit(watch, chatrelay_rules::Direction::Input, &hit);
                Some(failed(FailureKind::Refused, &m.refusal))
            }
            Ok(_) => None,
            Err(e) => {
                metrics::counter!("chatrelay_moderation_errors_total").increment(1);
                warn!(error = %e, fail_closed = m.fail_closed, "the moderation endpoint failed");
                m.fail_closed
                    .then(|| failed(FailureKind::Refused, &m.refusal))
            }
        }
    }

    /// Records a content-rule hit for admins (`admin hits`), in the metrics and the log.
    pub(super) fn record_hit(
        &self,
        watch: &Watch,
        dir: chatrelay_rules::Direction,
        hit: &chatrelay_rules::Hit,
    ) {
        let direction = match dir {
            chatrelay_rules::Direction::Input => "input",
            chatrelay_rules::Direction::Output => "output",
        };
        metrics::counter!("chatrelay_content_hits_total", "rule" => hit.rule.clone(), "direction" => direction)
            .increment(1);
        warn!(uid = %watch.uid, scope = %watch.scope, rule = %hit.rule, direction, "content rule hit");
        let at = now_ms();
        let record = serde_json::json!({
            "at_ms": at,
            "uid": watch.uid.0,
            "platform": watch.platform.as_str(),
            "scope": watch.scope,
            "direction": direction,
            "rule": hit.rule,
            "word": hit.word,
            "excerpt": hit.excerpt,
        });
        let key = format!(
            "{HIT_PREFIX}{at:013}:{}:{}",
            watch.uid.0,
            crate::util::random_id()
        );
        let store = self.inner.store.clone();
        // Called where nothing is awaited (a word rule checked on the stream): done here on
        // sled, in a task where the store must wait.
        self.run_or_spawn(async move {
            if let Err(e) = store.set_checkpoint(&key, Some(&record.to_string())).await {
                warn!(error = %e, "recording a content rule hit failed");
            }
        });
    }

    /// Ban and rate limit; `Some(failure)` when the user may not ask now.
    pub(super) async fn guard(&self, uid: Uid) -> Option<ReplyEvent> {
        let user = self.inner.store.user(uid).await;
        self.guard_user(uid, user.as_ref().map(Option::as_ref))
    }

    /// [`Engine::guard`] with the user record already read (`user`).
    pub(super) fn guard_user(
        &self,
        uid: Uid,
        user: Result<Option<&chatrelay_storage::User>, &StoreError>,
    ) -> Option<ReplyEvent> {
        let inner = &self.inner;
        let settings = self.settings();
        let texts = &settings.texts;
        match user {
            Ok(Some(user)) if user.banned => {
                return Some(failed(FailureKind::Banned, &texts.banned));
            }
            Ok(Some(_)) => {}
            Ok(None) => return Some(failed(FailureKind::Banned, &texts.banned)),
            Err(e) => {
                warn!(error = %e, "store failed reading user");
                return Some(failed(FailureKind::Unavailable, &texts.unavailable));
            }
        }
        if !inner.limiter.allow(uid) {
            metrics::counter!("chatrelay_rate_limited_total").increment(1);
            return Some(failed(FailureKind::RateLimited, &texts.rate_limited));
        }
        None
    }
}
