//! One metered LLM answer: reserve → stream (checked by the content rules, cut at what the payer
//! can afford) → settle durably; a failure costs nothing.

use super::*;

/// One metered call between its reservation and its settling.
struct Call<'a> {
    s: &'a Settings,
    model: &'a ModelConfig,
    watch: &'a Watch,
    reservation: ReservationId,
    /// The prompt's estimated tokens (charged when the upstream reports no usage).
    prompt_est: u64,
    started: Instant,
}

/// What the reader has been sent of an answer so far, and the usage the upstream reported.
#[derive(Default)]
struct Received {
    text: String,
    usage: Option<Usage>,
}

impl Engine {
    /// Reserve → call → settle. Returns the terminal event; deltas went to `sink`.
    pub(super) async fn run_llm(
        &self,
        uid: Uid,
        model: &ModelConfig,
        mut req: LlmRequest,
        reference: &str,
        sink: &Sink,
        watch: &Watch,
    ) -> ReplyEvent {
        let s = self.settings();
        // The steps before and after the stream are boxed: the task that runs this lives as
        // long as the answer streams, and its size is the largest state it passes through
        // (issue 21: ~3.9 KB per open `/v1` stream before).
        let (call, budget) =
            match Box::pin(self.reserve_call(&s, uid, model, &mut req, reference, watch)).await {
                Ok(ready) => ready,
                Err(refused) => return refused,
            };
        let mut got = Received::default();
        let outcome = self.stream_answer(&call, req, budget, sink, &mut got).await;
        metrics::histogram!("chatrelay_llm_seconds").record(call.started.elapsed().as_secs_f64());

        match outcome {
            Ok(()) => Box::pin(self.settle_answered(&call, got)).await,
            Err(Ending::Cut(hit)) => Box::pin(self.settle_cut(&call, sink, &hit, got.text)).await,
            Err(Ending::Cancelled) if !got.text.is_empty() && sink.delivers_pieces() => {
                Box::pin(self.settle_stopped(&call, &got.text)).await
            }
            Err(ending) => Box::pin(self.settle_unanswered(&call, &ending, got.text.len())).await,
        }
    }

    /// Caps the answer at what is reserved for and reserves its estimated price (one step off
    /// the async workers: the balance read and the reservation); returns the call and the
    /// token budget its stream is cut at.
    async fn reserve_call<'a>(
        &self,
        s: &'a Arc<Settings>,
        uid: Uid,
        model: &'a ModelConfig,
        req: &mut LlmRequest,
        reference: &str,
        watch: &'a Watch,
    ) -> Result<(Call<'a>, Option<u64>), ReplyEvent> {
        let prompt_est: u64 = req
            .messages
            .iter()
            .map(|m| quota::estimate_tokens(&m.text()))
            .sum();
        // The upstream is asked for exactly the answer length reserved for; for a per-token
        // price that is never more than the payer's credits cover.
        let asked = req.max_completion_tokens.map(u64::from);
        let surcharge = watch.surcharge;
        let (settings, owned_model, owned_reference) =
            (s.clone(), model.clone(), reference.to_owned());
        let reserved = self
            .off_worker(move |e| async move {
                let (limit, budget) = e
                    .answer_limit(&settings, uid, &owned_model, prompt_est, surcharge, asked)
                    .await?;
                let limit = limit.map(|l| u32::try_from(l).unwrap_or(u32::MAX));
                let estimate = quota::estimate_cost(&owned_model, prompt_est, limit.map(u64::from))
                    .saturating_add(surcharge);
                let reservation = e
                    .reserve(&settings, uid, estimate, &owned_reference)
                    .await?;
                Ok::<_, ReplyEvent>((limit, budget, reservation))
            })
            .await
            .unwrap_or_else(|| Err(failed(FailureKind::Unavailable, &s.texts.unavailable)));
        let (limit, budget, reservation) = reserved?;
        req.max_completion_tokens = limit;
        let call = Call {
            s,
            model,
            watch,
            reservation,
            prompt_est,
            started: Instant::now(),
        };
        Ok((call, budget))
    }

    /// How a reader leaving ended the answer: one that leaves while the server shuts down was
    /// sent away by the server.
    fn reader_left(&self) -> Ending {
        if self.inner.shutdown.is_cancelled() {
            Ending::Shutdown
        } else {
            Ending::Cancelled
        }
    }

    /// Streams the upstream's answer into `sink` (and `got`), checked by the output content
    /// rules and cut at `budget` tokens; `Ok` when the answer ended normally.
    async fn stream_answer(
        &self,
        call: &Call<'_>,
        req: LlmRequest,
        budget: Option<u64>,
        sink: &Sink,
        got: &mut Received,
    ) -> Result<(), Ending> {
        let inner = &self.inner;
        let filter = &call.s.filter;
        let mut output_check = (!filter.is_empty()).then(|| filter.stream(&call.watch.scope));
        let mut written = quota::TokenCount::default();
        let llm = self.llm();
        let mut stream = tokio::select! {
            biased;
            () = inner.shutdown.cancelled() => return Err(Ending::Shutdown),
            () = sink.closed() => return Err(self.reader_left()),
            r = llm.stream(req) => r.map_err(Ending::Upstream)?,
        };
        loop {
            let item = tokio::select! {
                biased;
                () = inner.shutdown.cancelled() => return Err(Ending::Shutdown),
                () = sink.closed() => return Err(self.reader_left()),
                item = stream.next() => item,
            };
            match item {
                None => return Ok(()),
                Some(Ok(LlmEvent::Delta(d))) => {
                    // Checked before the piece leaves: a word split across pieces can
                    // show its first half, never the whole.
                    if let Some(hit) = output_check.as_mut().and_then(|c| c.push(&d)) {
                        return Err(Ending::Cut(hit));
                    }
                    // An upstream that writes past the limit (or an unlimited answer past
                    // what the payer can afford) is not read further: the answer ends.
                    written.push(&d);
                    if budget.is_some_and(|b| written.tokens() > b) {
                        info!(budget, "the answer reached what its payer can afford");
                        return Ok(());
                    }
                    got.text.push_str(&d);
                    if !sink.delta(&d).await {
                        return Err(self.reader_left());
                    }
                }
                Some(Ok(LlmEvent::Usage(u))) => got.usage = Some(u),
                Some(Err(e)) => return Err(Ending::Upstream(e)),
            }
        }
    }

    /// Settles a finished answer at its actual cost (the upstream's usage, else an estimate).
    async fn settle_answered(&self, call: &Call<'_>, got: Received) -> ReplyEvent {
        let Received { text, usage } = got;
        let usage = usage.unwrap_or_else(|| Usage {
            prompt_tokens: call.prompt_est,
            completion_tokens: quota::estimate_tokens(&text),
        });
        let cost = quota::actual_cost(call.model, &usage).saturating_add(call.watch.surcharge);
        // Durable before the answer leaves: a crash after delivery cannot lose it.
        // The conversation's new turns go in the same step as the charge.
        let memory = call.watch.memory.as_ref().map(|m| m.with_answer(&text));
        let metered = Metered {
            platform: call.watch.platform,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            outcome: chatrelay_storage::UsageOutcome::Answered,
        };
        let charged = self
            .settle(call.reservation, cost, &call.model.name, memory, metered)
            .await
            .unwrap_or(0);
        self.record_usage(call.s, &call.model.name, &usage, charged);
        metrics::counter!("chatrelay_llm_requests_total", "outcome" => "ok").increment(1);
        self.upstream_outcome(true, None);
        metrics::counter!("chatrelay_credits_charged_total").increment(charged);
        info!(
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            charged,
            ms = call.started.elapsed().as_millis() as u64,
            "answered"
        );
        ReplyEvent::Final {
            text,
            usage: Some(usage),
            charged,
            images: Vec::new(),
        }
    }

    /// Ends an answer an output content rule cut, with a notice.
    async fn settle_cut(
        &self,
        call: &Call<'_>,
        sink: &Sink,
        hit: &chatrelay_rules::Hit,
        mut text: String,
    ) -> ReplyEvent {
        // The model wrote something a rule forbids: the answer stops there, with a
        // notice. What was generated is paid for, like a stopped answer.
        self.record_hit(call.watch, chatrelay_rules::Direction::Output, hit);
        let notice = if text.is_empty() {
            hit.refusal.clone()
        } else {
            format!("\n\n{}", call.s.texts.answer_cut)
        };
        let (usage, charged) = self
            .charge_partial(
                call.s,
                call.reservation,
                call.model,
                call.watch,
                call.prompt_est,
                &text,
                "cut",
            )
            .await;
        let _ = sink.delta(&notice).await;
        text.push_str(&notice);
        // Remembered as the reader got it, notice included (a step of its own: rare).
        if let Some(memory) = &call.watch.memory {
            let m = memory.with_answer(&text);
            let stored = self
                .off_worker(move |e| async move {
                    e.inner
                        .store
                        .append_turns(&m.conversation, &m.turns, m.max_turns)
                        .await
                })
                .await;
            if let Some(Err(e)) = stored {
                warn!(error = %e, "saving the conversation failed");
            }
        }
        ReplyEvent::Final {
            text,
            usage: Some(usage),
            charged,
            images: Vec::new(),
        }
    }

    /// Settles an answer its reader stopped after receiving part of it.
    async fn settle_stopped(&self, call: &Call<'_>, text: &str) -> ReplyEvent {
        // The reader stopped a generation it had partly received: charge what it got.
        let (_, charged) = self
            .charge_partial(
                call.s,
                call.reservation,
                call.model,
                call.watch,
                call.prompt_est,
                text,
                "cancelled",
            )
            .await;
        info!(
            charged,
            "stopped by the reader; charged for what it received"
        );
        failed(FailureKind::Unavailable, "cancelled")
    }

    /// Releases the reservation of an answer that failed or went unreceived: nothing is
    /// charged. `received`: bytes of the answer that had come when it ended.
    async fn settle_unanswered(
        &self,
        call: &Call<'_>,
        ending: &Ending,
        received: usize,
    ) -> ReplyEvent {
        let s = call.s;
        self.release(call.reservation).await;
        let (label, kind, message) = match ending {
            Ending::Upstream(e) => {
                warn!(error = %e, "LLM call failed; nothing charged");
                self.upstream_outcome(false, Some(&e.to_string()));
                (
                    "error",
                    FailureKind::Upstream,
                    s.texts.upstream_error.as_str(),
                )
            }
            Ending::Shutdown => {
                info!(received, "ended by the server's shutdown; nothing charged");
                (
                    "shutdown",
                    FailureKind::Unavailable,
                    s.texts.unavailable.as_str(),
                )
            }
            Ending::Cancelled => {
                info!(
                    "the reader left before it received anything of the answer; \
                     nothing charged"
                );
                ("cancelled", FailureKind::Unavailable, "cancelled")
            }
            // Handled by `settle_cut`.
            Ending::Cut(_) => ("cut", FailureKind::Refused, ""),
        };
        metrics::counter!("chatrelay_llm_requests_total", "outcome" => label).increment(1);
        failed(kind, message)
    }
}
