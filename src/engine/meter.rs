//! Credits: reservations, durable settlement, partial charges, refunds of undelivered answers,
//! the answer limit a payer can afford, usage statistics.

use super::*;

/// The ledger reference of the answer to a chat-platform message: `img:` for a picture the
/// image command drew, `msg:` for anything else (an LLM answer).
pub(super) fn platform_reference(inbound: &Inbound, drawn: bool) -> String {
    let kind = if drawn { "img" } else { "msg" };
    format!("{kind}:{}#{}", inbound.key, inbound.message_id)
}

/// A conversation's new turns, written with the settlement of its answer.
pub(super) struct Remembered {
    pub(super) conversation: String,
    pub(super) turns: Vec<Turn>,
    pub(super) max_turns: usize,
}

/// What the answer to a platform message adds to its conversation: the question, and the
/// answer once it is known.
#[derive(Clone, Debug)]
pub(super) struct Memory {
    /// The conversation's key.
    pub(super) conversation: String,
    /// The question as remembered (a picture is noted, not kept).
    pub(super) question: String,
    /// How many turns the conversation keeps.
    pub(super) max_turns: usize,
}

impl Memory {
    /// The turns to append once the answer is `answer`.
    pub(super) fn with_answer(&self, answer: &str) -> Remembered {
        let at_ms = now_ms();
        Remembered {
            conversation: self.conversation.clone(),
            turns: vec![
                Turn {
                    role: "user".to_owned(),
                    content: self.question.clone(),
                    at_ms,
                },
                Turn {
                    role: "assistant".to_owned(),
                    content: answer.to_owned(),
                    at_ms,
                },
            ],
            max_turns: self.max_turns,
        }
    }
}

/// What the usage log keeps of an answer besides its charge (written with the settlement).
pub(super) struct Metered {
    pub(super) platform: chatrelay_core::Platform,
    pub(super) prompt_tokens: u64,
    pub(super) completion_tokens: u64,
    pub(super) outcome: chatrelay_storage::UsageOutcome,
}

impl Engine {
    pub(super) fn record_usage(&self, s: &Settings, model: &str, usage: &Usage, charged: u64) {
        let model_label = model.to_owned();
        metrics::counter!("chatrelay_llm_tokens_total", "kind" => "prompt", "model" => model_label.clone())
            .increment(usage.prompt_tokens);
        metrics::counter!("chatrelay_llm_tokens_total", "kind" => "completion", "model" => model_label)
            .increment(usage.completion_tokens);
        self.inner.stats.usage(
            s.today(),
            model,
            usage.prompt_tokens,
            usage.completion_tokens,
            charged,
        );
    }

    /// Settles an answer that stopped before its end (the reader left, a content rule cut
    /// it): what was generated is charged, estimated from its text. Counted under `outcome`.
    #[allow(clippy::too_many_arguments)] // the call's state, all of it needed
    pub(super) async fn charge_partial(
        &self,
        s: &Settings,
        reservation: ReservationId,
        model: &ModelConfig,
        watch: &Watch,
        prompt_est: u64,
        text: &str,
        outcome: &'static str,
    ) -> (Usage, u64) {
        let usage = Usage {
            prompt_tokens: prompt_est,
            completion_tokens: quota::estimate_tokens(text),
        };
        let cost = quota::actual_cost(model, &usage).saturating_add(watch.surcharge);
        let metered = Metered {
            platform: watch.platform,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            outcome: if outcome == "cut" {
                chatrelay_storage::UsageOutcome::Cut
            } else {
                chatrelay_storage::UsageOutcome::Stopped
            },
        };
        let charged = self
            .settle(reservation, cost, &model.name, None, metered)
            .await
            .unwrap_or(0);
        self.record_usage(s, &model.name, &usage, charged);
        metrics::counter!("chatrelay_llm_requests_total", "outcome" => outcome).increment(1);
        metrics::counter!("chatrelay_credits_charged_total").increment(charged);
        (usage, charged)
    }

    /// Holds `estimate` credits of `uid` for the call `reference`; the refusal to send when
    /// that is not possible (out of credits, already answered, store failure).
    pub(super) async fn reserve(
        &self,
        s: &Settings,
        uid: Uid,
        estimate: u64,
        reference: &str,
    ) -> Result<ReservationId, ReplyEvent> {
        let expires = now_ms().saturating_add(s.reservation_ttl.as_millis() as i64);
        match self
            .inner
            .store
            .reserve(uid, estimate, reference, s.today(), s.free_daily, expires)
            .await
        {
            Ok(id) => Ok(id),
            Err(StoreError::InsufficientCredits { available, needed }) => {
                Err(insufficient_quota(s, needed, available))
            }
            Err(StoreError::AlreadySettled(_)) => Err(failed(FailureKind::Duplicate, "")),
            Err(e) => {
                warn!(error = %e, "reserving credits failed");
                Err(failed(FailureKind::Unavailable, &s.texts.unavailable))
            }
        }
    }

    /// Settles a reservation (with the conversation's new turns, `memory`, in the same step)
    /// and waits until the charge is on disk (its group's flush), so that the answer, which
    /// leaves after this, is never delivered with a charge a crash could lose. The store work
    /// runs off the async workers. The answer's usage record (`metered`) is written in the
    /// same step. Returns the credits charged.
    pub(super) async fn settle(
        &self,
        id: ReservationId,
        cost: u64,
        model: &str,
        memory: Option<Remembered>,
        metered: Metered,
    ) -> Option<u64> {
        let s = self.settings();
        let reason = format!("answer ({model})");
        let model = model.to_owned();
        let (today, free_daily) = (s.today(), s.free_daily);
        // One lane step (on sled), answered after the flush that ends its round.
        let store = self.inner.store.clone();
        let (settled, flushed) = self
            .inner
            .store
            .step_durable(async move {
                let remember = memory.as_ref().map(|m| chatrelay_storage::Remember {
                    conversation: &m.conversation,
                    turns: &m.turns,
                    max_turns: m.max_turns,
                });
                let note = chatrelay_storage::UsageNote {
                    platform: metered.platform.as_str(),
                    model: &model,
                    prompt_tokens: metered.prompt_tokens,
                    completion_tokens: metered.completion_tokens,
                    outcome: metered.outcome,
                };
                store
                    .settle_metered(
                        id,
                        cost,
                        &reason,
                        today,
                        free_daily,
                        now_ms(),
                        remember,
                        Some(note),
                    )
                    .await
            })
            .await
            .unwrap_or((Err(StoreError::Reopening), Ok(())));
        if settled.is_ok()
            && let Err(e) = flushed
        {
            // The charge stands in the open database; the disk is failing, which `/readyz`
            // and the watchdog report. Withholding a paid answer would not help.
            warn!(error = %e, reservation = %id, "making a charge durable failed");
        }
        match settled {
            Ok(Some(entry)) => Some(
                entry
                    .free_delta
                    .saturating_add(entry.paid_delta)
                    .unsigned_abs(),
            ),
            Ok(None) => Some(0),
            Err(e) => {
                // The reservation stays; it is released at the next start-up.
                warn!(error = %e, reservation = %id, "settling failed");
                None
            }
        }
    }

    /// Gives back `credits` charged for the answer `reference` that never reached its reader
    /// (it left after the charge). Idempotent: one refund per answer, however often called.
    /// The credits come back as paid credits (the store cannot restore a past day's free
    /// allowance); the answer's usage record is marked refunded in the same step.
    ///
    /// Callable where nothing can be awaited (a stream's `Drop`): the refund runs here as far
    /// as it can without waiting (on sled, all of it, as before), and what waits (PostgreSQL)
    /// goes on in a task of the daemon's tracker, so that shutdown waits for it.
    pub fn refund_undelivered(&self, uid: Uid, reference: &str, credits: u64) {
        if credits == 0 {
            return;
        }
        let refund = format!("undelivered:{reference}");
        let (store, reference) = (self.inner.store.clone(), reference.to_owned());
        let step = async move {
            match store
                .refund_answer(
                    uid,
                    credits,
                    "answer not delivered",
                    &refund,
                    &reference,
                    now_ms(),
                )
                .await
            {
                Ok(_) => {
                    metrics::counter!("chatrelay_undelivered_refunds_total").increment(1);
                    info!(%uid, %reference, credits, "the answer was not delivered; refunded");
                }
                Err(e) => {
                    warn!(error = %e, %uid, %reference, credits, "refunding an undelivered answer failed");
                }
            }
        };
        self.run_or_spawn(step);
    }

    /// Runs `work` (store work, nothing else awaited) as far as it gets without waiting,
    /// for callers that cannot await (a `Drop`, a synchronous check): on sled that is all of
    /// it, right here, as before the store was async; what must wait (PostgreSQL) goes on
    /// in a task of the daemon's tracker, which shutdown waits for.
    pub(super) fn run_or_spawn(
        &self,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        use futures_util::FutureExt;
        let mut work = Box::pin(work);
        if work.as_mut().now_or_never().is_some() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                self.inner.tracker.spawn_on(work, &handle);
            }
            Err(_) => warn!("no runtime to finish store work on; dropped"),
        }
    }

    /// Gives back what the answer `event` to the chat-platform message `inbound` cost, to whoever
    /// paid for it, when the platform never got it to the user (`why` is logged). The payer and
    /// the ledger reference are found the way the answer found them; idempotent like
    /// [`Engine::refund_undelivered`], and free answers (or failures) need nothing.
    pub async fn refund_platform_undelivered(
        &self,
        inbound: &Inbound,
        event: &ReplyEvent,
        why: &str,
    ) {
        let ReplyEvent::Final { charged, .. } = event else {
            return;
        };
        if *charged == 0 {
            return;
        }
        let payer_key = inbound.bill_to.as_ref().unwrap_or(&inbound.key);
        let payer = match self.inner.store.resolve_identity(payer_key, None).await {
            Ok(uid) => uid,
            Err(e) => {
                warn!(error = %e, charged, why, "finding who paid for an undelivered answer failed; not refunded");
                return;
            }
        };
        let drawn = matches!(self.command(&inbound.text), Some(Command::Image(_)));
        info!(%payer, charged, why, "refunding an answer the platform did not deliver");
        self.refund_undelivered(payer, &platform_reference(inbound, drawn), *charged);
    }

    /// The answer limit to send upstream, and the most answer tokens the payer can afford
    /// (`None` for a flat price). The limit is the one asked for, lowered for a per-token price
    /// to what `uid`'s credits cover; an unlimited request gets the affordable length as its
    /// limit when that is short ([`quota::UNCAPPED_CEILING`]), else no limit (a large one could
    /// be refused by the upstream as more than the model writes) and the engine stops reading
    /// at the affordable length. A payer who cannot afford one token is refused at reserving.
    pub(super) async fn answer_limit(
        &self,
        s: &Settings,
        uid: Uid,
        model: &ModelConfig,
        prompt_est: u64,
        surcharge: u64,
        asked: Option<u64>,
    ) -> Result<(Option<u64>, Option<u64>), ReplyEvent> {
        if model.credits_per_1k_tokens == 0 {
            return Ok((asked, None));
        }
        let available = match self.inner.store.balance(uid, s.today(), s.free_daily).await {
            Ok(b) => b.available,
            Err(e) => {
                warn!(error = %e, "reading the balance failed");
                return Err(failed(FailureKind::Unavailable, &s.texts.unavailable));
            }
        };
        let affordable = quota::affordable_completion(model, prompt_est, surcharge, available)
            .unwrap_or(u64::MAX);
        // At least one token: a payer who cannot cover it gets the reservation's refusal.
        let limit = match asked {
            Some(a) => Some(a.min(affordable).max(1)),
            None if affordable < quota::UNCAPPED_CEILING => Some(affordable.max(1)),
            None => None,
        };
        Ok((limit, Some(affordable)))
    }

    /// Drops a reservation without charging (off the async workers).
    pub(super) async fn release(&self, id: ReservationId) {
        let released = self
            .off_worker(move |e| async move { e.inner.store.release(id).await })
            .await
            .unwrap_or(Err(StoreError::Reopening));
        if let Err(e) = released {
            warn!(error = %e, reservation = %id, "releasing a reservation failed");
        }
    }

    /// Runs store work `f` (an async step over the store, given the engine) off the async
    /// workers, as one step of the store ([`chatrelay_storage::Store::step`]: on sled's write
    /// lane, so that a slow disk delays that work, not every connection; awaited on
    /// PostgreSQL). A message's steps make one such hop each. `None` when the store or the
    /// runtime is shutting down and the work never ran; a panic in `f` is passed on.
    pub(super) async fn off_worker<R, Fut>(&self, f: impl FnOnce(Engine) -> Fut) -> Option<R>
    where
        R: Send + 'static,
        Fut: std::future::Future<Output = R> + Send + 'static,
    {
        self.inner.store.step(f(self.clone())).await
    }
}
