//! Who delivers a platform answer: claims and try counts shared by daemons, answers shared
//! through the database for retries that reach another daemon, followers of an answer in progress.

use super::*;

/// How often a retry that reached another daemon looks for the answer in the database.
pub(super) const SHARED_POLL: Duration = Duration::from_millis(100);

/// A [`Reply`] that waits (up to `wait`) for the answer another daemon on the database is
/// making to message `id`, and gives it as one final event; a duplicate if none comes.
pub(super) fn follow_shared(
    store: chatrelay_storage::Store,
    id: String,
    wait: Duration,
    tracker: &TaskTracker,
) -> Reply {
    let (tx, reply) = Reply::channel();
    tracker.spawn(async move {
        let deadline = Instant::now() + wait;
        loop {
            let found = store.shared_answer(&id, now_ms()).await;
            match found {
                Ok(Some(answer)) => {
                    let event = match answer.text {
                        Some(text) => ReplyEvent::Final {
                            text,
                            usage: None,
                            charged: 0,
                            images: Vec::new(),
                        },
                        None => failed(FailureKind::Duplicate, ""),
                    };
                    tx.send(event).await;
                    return;
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, "reading a shared answer failed"),
            }
            if Instant::now() >= deadline || tx.is_closed() {
                tx.send(failed(FailureKind::Duplicate, "")).await;
                return;
            }
            tokio::time::sleep(SHARED_POLL).await;
        }
    });
    reply
}

/// A [`Reply`] that follows a shared answer from the start: the text so far as one delta,
/// then each new piece, then the terminal event.
pub(super) fn follow(mut rx: watch::Receiver<Progress>, tracker: &TaskTracker) -> Reply {
    let (tx, reply) = Reply::channel();
    tracker.spawn(async move {
        let mut sent = 0usize;
        loop {
            let (piece, done) = {
                let p = rx.borrow_and_update();
                let piece = p.text.get(sent..).unwrap_or_default().to_owned();
                sent = p.text.len();
                (piece, p.done.clone())
            };
            if !piece.is_empty() && !tx.send(ReplyEvent::Delta(piece)).await {
                return;
            }
            if let Some(done) = done {
                tx.send(done).await;
                return;
            }
            if rx.changed().await.is_err() {
                // The producer vanished without finishing (a panic): say so.
                tx.send(failed(FailureKind::Unavailable, "answer interrupted"))
                    .await;
                return;
            }
        }
    });
    reply
}

impl Engine {
    /// Whether this daemon delivers `what` (an answer pushed or sent after the platform's
    /// callback): always alone; on a shared database, only the first daemon to ask, so a
    /// message whose retries reached several daemons is delivered once.
    #[must_use]
    pub async fn claim_delivery(&self, what: &str) -> bool {
        if !self.inner.store.is_shared() {
            return true;
        }
        match self.mark_first(&format!("delivered:{what}")).await {
            Ok(first) => first,
            Err(e) => {
                // Better twice than never: the user asked and may have paid.
                warn!(error = %e, "claiming a delivery failed; delivering anyway");
                true
            }
        }
    }

    /// Which try of `what` this is (1, 2, ... up to `max`), counted across the daemons sharing
    /// the database: each try takes the first free mark `try:<what>:<n>` (the marks expire with
    /// the dedupe marks). A store failure counts as the last try.
    #[must_use]
    pub async fn count_try(&self, what: &str, max: u32) -> u32 {
        for n in 1..max {
            match self.mark_first(&format!("try:{what}:{n}")).await {
                Ok(true) => return n,
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, "counting a retry failed");
                    return max;
                }
            }
        }
        max
    }

    /// Sets the dedupe mark `key` for the dedupe TTL; true for the first to set it.
    pub(super) async fn mark_first(&self, key: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let expires = now.saturating_add(self.settings().dedupe_ttl.as_millis() as i64);
        self.inner.store.dedupe_insert(key, expires, now).await
    }

    /// On a shared database, keeps the finished answer to a platform message for retries
    /// that reach other daemons (until the dedupe mark expires).
    pub(super) async fn share_answer(&self, id: &str, event: &ReplyEvent, expires_at_ms: i64) {
        if !self.inner.store.is_shared() {
            return;
        }
        let answer = chatrelay_storage::SharedAnswer {
            text: event.user_text(),
            expires_at_ms,
        };
        if let Err(e) = self.inner.store.put_answer(id, &answer).await {
            warn!(error = %e, "keeping the answer for retries on other daemons failed");
        }
    }
}
