//! Upkeep: the in-flight map's sweep, expired records, settled reservations.

use super::*;

/// Users whose old usage records one cleanup run looks at (one range scan each).
const USAGE_PURGE_USERS: usize = 2_000;

/// How often a pass of the usage log's pruning over every user starts.
const USAGE_PURGE_EVERY_MS: i64 = 3_600_000;

/// Change log records one cleanup run removes at most (a busy day's changes are far fewer).
const CHANGE_PURGE_MAX: usize = 5_000;

/// Users with saved web conversations one cleanup run checks for an expired guest account.
const GUEST_CHAT_USERS: usize = 500;

impl Engine {
    /// Periodic housekeeping of this daemon's memory: idle rate-limit windows, old in-flight
    /// answers, gauges. (Records in the store: [`Engine::purge_old_records`].)
    pub fn housekeeping(&self) {
        self.inner.limiter.sweep();
        self.inner.codes.sweep();
        self.sweep_inflight(true);
        let answering = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .values()
            .filter(|f| f.rx.borrow().done.is_none())
            .count();
        metrics::gauge!("chatrelay_platform_answers_in_progress").set(answering as f64);
        metrics::gauge!("chatrelay_background_tasks").set(self.inner.tracker.len() as f64);
    }

    /// Removes records past their time: expired dedupe marks, old content-rule hits and
    /// settled-reservation records; on a shared store also holds left open by a daemon that
    /// died (alone, a daemon releases its own at start). One daemon does this at a time.
    pub async fn purge_old_records(&self) {
        let now = now_ms();
        if self.inner.store.is_shared() {
            match self.inner.store.release_stale_reservations(now).await {
                Ok(0) => {}
                Ok(n) => warn!(
                    released = n,
                    "released expired reservations (a daemon died mid-answer?)"
                ),
                Err(e) => warn!(error = %e, "releasing expired reservations failed"),
            }
        }
        if let Err(e) = self.inner.store.purge_expired_dedupe(now).await {
            warn!(error = %e, "purging expired dedupe marks failed");
        }
        // Content-rule hits are kept for admins for 180 days.
        let cutoff = format!("{HIT_PREFIX}{:013}", now - 180 * 86_400_000);
        if let Err(e) = self
            .inner
            .store
            .purge_checkpoints_before(HIT_PREFIX, &cutoff)
            .await
        {
            warn!(error = %e, "purging old content rule hits failed");
        }
        // Settled-reservation records only serve retries of the same reference; a day is far
        // beyond any retry window.
        if let Err(e) = self
            .inner
            .store
            .purge_settled_reservations(now - 86_400_000)
            .await
        {
            warn!(error = %e, "purging settled reservations failed");
        }
        self.purge_usage(now).await;
        self.purge_guest_chats(now).await;
        self.purge_changes(now).await;
    }

    /// Prunes the admin API's change log past `[console] change_log_days`: at most
    /// [`CHANGE_PURGE_MAX`] records per run (this runs every minute), the oldest first.
    async fn purge_changes(&self, now: i64) {
        let keep_ms = i64::try_from(self.settings().change_log_days)
            .unwrap_or(i64::MAX)
            .saturating_mul(86_400_000);
        if let Err(e) = self
            .inner
            .store
            .purge_changes(now.saturating_sub(keep_ms), CHANGE_PURGE_MAX)
            .await
        {
            warn!(error = %e, "purging the old change log failed");
        }
    }

    /// Deletes the saved web conversations of guests whose account expired (a guest keeps
    /// them while its token works): a bounded share of the users with conversations per run,
    /// going on where the last run stopped.
    pub async fn purge_guest_chats(&self, now: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        let store = &self.inner.store;
        let from = Uid(self.inner.guest_chats_from.load(Relaxed));
        let (owners, resume) = match store.chat_owners(from, GUEST_CHAT_USERS).await {
            Ok(found) => found,
            Err(e) => {
                warn!(error = %e, "listing users with saved conversations failed");
                return;
            }
        };
        self.inner
            .guest_chats_from
            .store(resume.map_or(0, |uid| uid.0), Relaxed);
        for uid in owners {
            match self.guest_expired(uid, now).await {
                Ok(true) => match store.delete_chats_of(uid).await {
                    Ok(n) => info!(%uid, deleted = n, "deleted an expired guest's conversations"),
                    Err(e) => warn!(error = %e, %uid, "deleting a guest's conversations failed"),
                },
                Ok(false) => {}
                Err(e) => warn!(error = %e, %uid, "checking a guest failed"),
            }
        }
    }

    /// Whether `uid` is a guest ([`Engine::create_guest`]) whose account has expired: no
    /// platform identity, and every token a guest token that expired or was revoked. A user
    /// that no longer exists counts as expired.
    async fn guest_expired(&self, uid: Uid, now: i64) -> Result<bool, StoreError> {
        let store = &self.inner.store;
        let Some(user) = store.user(uid).await? else {
            return Ok(true);
        };
        if user.name != accounts::GUEST_NAME || !store.identities_of(uid).await?.is_empty() {
            return Ok(false);
        }
        let tokens = store.tokens_of(uid).await?;
        Ok(!tokens.is_empty()
            && tokens.iter().all(|t| {
                t.label == accounts::GUEST_NAME
                    && (t.revoked || t.expires_at_ms.is_some_and(|at| at <= now))
            }))
    }

    /// Prunes the usage log past `[quota] usage_days`: a bounded share of the users per run
    /// (this runs every minute), going on where the last run stopped; a pass over every user
    /// starts at most hourly (an hour's records are a small part of `usage_days`).
    async fn purge_usage(&self, now: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        let days = self.settings().usage_days;
        if days == 0 {
            return;
        }
        let from = self.inner.usage_purge_from.load(Relaxed);
        if from == 0 && now < self.inner.usage_purge_after.load(Relaxed) {
            return;
        }
        let keep_ms = i64::try_from(days)
            .unwrap_or(i64::MAX)
            .saturating_mul(86_400_000);
        let cutoff = now.saturating_sub(keep_ms);
        match self
            .inner
            .store
            .purge_usage(cutoff, Uid(from), USAGE_PURGE_USERS)
            .await
        {
            Ok(done) => {
                let next = done.resume.map_or(0, |uid| uid.0);
                self.inner.usage_purge_from.store(next, Relaxed);
                if next == 0 {
                    let after = now.saturating_add(USAGE_PURGE_EVERY_MS);
                    self.inner.usage_purge_after.store(after, Relaxed);
                }
            }
            Err(e) => warn!(error = %e, "purging old usage records failed"),
        }
    }

    pub(super) fn sweep_inflight(&self, force: bool) {
        let mut guard = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let grown = guard.map.len() >= MAX_FINISHED_KEPT.max(guard.after_sweep * 2);
        if !force
            && !grown
            && guard
                .last_sweep
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(5))
        {
            return;
        }
        guard.last_sweep = Some(now);
        guard.map.retain(|_, f| {
            f.rx.borrow().done.is_none() || now.duration_since(f.started) < JOIN_RETENTION
        });
        // Beyond the cap, the oldest finished answers go (answers still being written stay:
        // they are bounded by the requests in flight).
        let mut finished: Vec<(Instant, String)> = guard
            .map
            .iter()
            .filter(|(_, f)| f.rx.borrow().done.is_some())
            .map(|(k, f)| (f.started, k.clone()))
            .collect();
        if finished.len() > MAX_FINISHED_KEPT {
            let excess = finished.len() - MAX_FINISHED_KEPT;
            finished.select_nth_unstable_by_key(excess - 1, |(started, _)| *started);
            for (_, key) in finished.iter().take(excess) {
                guard.map.remove(key);
            }
        }
        guard.after_sweep = guard.map.len();
    }
}
