//! One metered LLM answer: reserve → stream (checked by the content rules, cut at what the payer
//! can afford) → settle durably; a failure costs nothing.

use super::*;

impl Engine {
    /// Reserve → call → settle. Returns the terminal event; deltas went to `sink`.
    pub(super) async fn run_llm(
        &self,
        uid: Uid,
        model: &ModelConfig,
        req: LlmRequest,
        reference: &str,
        sink: &Sink,
        watch: &Watch,
    ) -> ReplyEvent {
        let inner = &self.inner;
        let s = self.settings();
        let mut output_check = (!s.filter.is_empty()).then(|| s.filter.stream(&watch.scope));
        let prompt_est: u64 = req
            .messages
            .iter()
            .map(|m| quota::estimate_tokens(&m.text()))
            .sum();
        let mut req = req;
        // The upstream is asked for exactly the answer length reserved for; for a per-token
        // price that is never more than the payer's credits cover.
        let (limit, budget) = match self.answer_limit(&s, uid, model, prompt_est, watch, &req) {
            Ok(limits) => limits,
            Err(refused) => return refused,
        };
        let mut written = quota::TokenCount::default();
        req.max_completion_tokens = limit.map(|l| u32::try_from(l).unwrap_or(u32::MAX));
        let max_completion = req.max_completion_tokens.map(u64::from);
        let estimate =
            quota::estimate_cost(model, prompt_est, max_completion).saturating_add(watch.surcharge);
        let reservation = match self.reserve(&s, uid, estimate, reference) {
            Ok(id) => id,
            Err(refused) => return refused,
        };
        // A reader that leaves while the server shuts down was sent away by the server.
        let left = || {
            if inner.shutdown.is_cancelled() {
                Ending::Shutdown
            } else {
                Ending::Cancelled
            }
        };

        let started = Instant::now();
        let llm = self.llm();
        let mut text = String::new();
        let mut usage: Option<Usage> = None;
        let outcome: Result<(), Ending> = async {
            let mut stream = tokio::select! {
                biased;
                () = inner.shutdown.cancelled() => return Err(Ending::Shutdown),
                () = sink.closed() => return Err(left()),
                r = llm.stream(req) => r.map_err(Ending::Upstream)?,
            };
            loop {
                let item = tokio::select! {
                    biased;
                    () = inner.shutdown.cancelled() => return Err(Ending::Shutdown),
                    () = sink.closed() => return Err(left()),
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
                        text.push_str(&d);
                        if !sink.delta(&d).await {
                            return Err(left());
                        }
                    }
                    Some(Ok(LlmEvent::Usage(u))) => usage = Some(u),
                    Some(Err(e)) => return Err(Ending::Upstream(e)),
                }
            }
        }
        .await;
        metrics::histogram!("chatrelay_llm_seconds").record(started.elapsed().as_secs_f64());

        match outcome {
            Ok(()) => {
                let usage = usage.unwrap_or_else(|| Usage {
                    prompt_tokens: prompt_est,
                    completion_tokens: quota::estimate_tokens(&text),
                });
                let cost = quota::actual_cost(model, &usage).saturating_add(watch.surcharge);
                // Durable before the answer leaves: a crash after delivery cannot lose it.
                let charged = self
                    .settle(reservation, cost, &model.name)
                    .await
                    .unwrap_or(0);
                self.record_usage(&s, &model.name, &usage, charged);
                metrics::counter!("chatrelay_llm_requests_total", "outcome" => "ok").increment(1);
                self.upstream_outcome(true, None);
                metrics::counter!("chatrelay_credits_charged_total").increment(charged);
                info!(
                    prompt_tokens = usage.prompt_tokens,
                    completion_tokens = usage.completion_tokens,
                    charged,
                    ms = started.elapsed().as_millis() as u64,
                    "answered"
                );
                ReplyEvent::Final {
                    text,
                    usage: Some(usage),
                    charged,
                    images: Vec::new(),
                }
            }
            Err(Ending::Cut(hit)) => {
                // The model wrote something a rule forbids: the answer stops there, with a
                // notice. What was generated is paid for, like a stopped answer.
                self.record_hit(watch, chatrelay_rules::Direction::Output, &hit);
                let (usage, charged) = self
                    .charge_partial(&s, reservation, model, watch, prompt_est, &text, "cut")
                    .await;
                let notice = if text.is_empty() {
                    hit.refusal.clone()
                } else {
                    format!("\n\n{}", s.texts.answer_cut)
                };
                let _ = sink.delta(&notice).await;
                text.push_str(&notice);
                ReplyEvent::Final {
                    text,
                    usage: Some(usage),
                    charged,
                    images: Vec::new(),
                }
            }
            Err(Ending::Cancelled) if !text.is_empty() && sink.delivers_pieces() => {
                // The reader stopped a generation it had partly received: charge what it got.
                let (_, charged) = self
                    .charge_partial(
                        &s,
                        reservation,
                        model,
                        watch,
                        prompt_est,
                        &text,
                        "cancelled",
                    )
                    .await;
                info!(
                    charged,
                    "stopped by the reader; charged for what it received"
                );
                failed(FailureKind::Unavailable, "cancelled")
            }
            Err(ending) => {
                self.release(reservation);
                let (label, kind, message) = match &ending {
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
                        info!(
                            received = text.len(),
                            "ended by the server's shutdown; nothing charged"
                        );
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
                    // Handled above.
                    Ending::Cut(_) => ("cut", FailureKind::Refused, ""),
                };
                metrics::counter!("chatrelay_llm_requests_total", "outcome" => label).increment(1);
                failed(kind, message)
            }
        }
    }
}
