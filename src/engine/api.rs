//! `/v1` completions: the checks a request passes before its answer is metered like any other.

use super::*;

/// A `/v1` completion request, already authenticated and parsed.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    /// The requested model (must be configured).
    pub model: String,
    /// The conversation, as the client sent it.
    pub messages: Vec<Message>,
    /// The smallest answer cap the client sent (`max_tokens`, `max_completion_tokens`). The
    /// engine may lower it to what the payer's credits cover; the upstream gets exactly the
    /// limit that was reserved for.
    pub max_completion_tokens: Option<u32>,
    /// The client sent its cap only as the older `max_tokens`: send it upstream in that field.
    pub legacy_max_tokens: bool,
    /// The reader gets the answer piece by piece (`stream: true`). A streamed reader that
    /// leaves is charged for what it was sent; one waiting for the whole answer got nothing
    /// and pays nothing.
    pub streamed: bool,
    /// Other parameters, passed through.
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Unique reference of this request (the ledger's idempotency key).
    pub reference: String,
    /// Where it came from: [`Platform::Web`](chatrelay_core::Platform::Web) for the chat page,
    /// else [`Platform::Api`](chatrelay_core::Platform::Api). Only for statistics.
    pub platform: chatrelay_core::Platform,
}

/// A `/v1` request past its early checks, on its way to an answer.
struct ApiCall {
    uid: Uid,
    req: ApiRequest,
    model: ModelConfig,
    watch: Watch,
    /// The last thing the user said (what the content rules look at).
    question: String,
    /// The chat page's image command (and its prompt): drawn instead of asking the model.
    drawing: Option<Option<String>>,
}

/// How many pictures a conversation carries (`image_url` parts).
fn count_pictures(messages: &[Message]) -> u64 {
    messages
        .iter()
        .filter_map(|m| m.content.as_array())
        .flatten()
        .filter(|p| p.get("type").and_then(serde_json::Value::as_str) == Some("image_url"))
        .count() as u64
}

impl Engine {
    /// Answers a metered `/v1` request for `uid`. The first event tells the HTTP layer
    /// whether it failed before anything was generated (quota, ban, model, content...).
    pub fn complete(&self, uid: Uid, req: ApiRequest) -> Reply {
        let settings = self.settings();
        let Some(model) = settings.model(&req.model).cloned() else {
            return Reply::failed(
                FailureKind::UnknownModel,
                fill(&settings.texts.unknown_model, &[("model", &req.model)]),
            );
        };
        self.inner.stats.active(settings.today(), uid);
        let pictures = count_pictures(&req.messages);
        if pictures > 0 && !model.vision {
            return Reply::failed(
                FailureKind::InvalidRequest,
                format!("The model {} does not accept images.", model.name),
            );
        }
        let watch = Watch {
            uid,
            platform: req.platform,
            scope: policy::platform_scope(req.platform).to_owned(),
            surcharge: pictures.saturating_mul(model.credits_per_image),
            memory: None,
        };
        // What the rules look at: the last thing the user said.
        let question = Message::last_user_text(&req.messages);
        // The chat page's image command draws (API clients asked a model, and get the model);
        // drawing does its own checks.
        let drawing = match (req.platform, self.command(&question)) {
            (chatrelay_core::Platform::Web, Some(Command::Image(prompt))) => Some(prompt),
            // The chat page's redeem command redeems, free (API clients get the model).
            (chatrelay_core::Platform::Web, Some(Command::Redeem(code))) => {
                let (tx, reply) = Reply::channel();
                let this = self.clone();
                self.inner.tracker.spawn(async move {
                    let text = this.redeem_command(&settings, uid, code.as_deref()).await;
                    tx.send(free_answer(text)).await;
                });
                return reply;
            }
            _ => None,
        };
        let (tx, reply) = Reply::channel();
        let span = info_span!("completion", %uid, model = %model.name, reference = %req.reference);
        let call = ApiCall {
            uid,
            req,
            model,
            watch,
            question,
            drawing,
        };
        let this = self.clone();
        // The early checks read the store, so they run in the request's task; what they
        // refuse is still the reply's first and only event.
        self.inner.tracker.spawn(
            async move {
                let early = match call.drawing {
                    None => {
                        this.api_early_answer(
                            &settings,
                            call.req.platform,
                            &call.model,
                            &call.watch,
                            &call.question,
                        )
                        .await
                    }
                    Some(_) => None,
                };
                let Some(event) = early else {
                    return this.finish_api(&settings, call, tx).await;
                };
                this.record_outcome(call.req.platform, &event);
                let event = match event {
                    failed @ ReplyEvent::Failed { .. } => failed,
                    other => ReplyEvent::Final {
                        text: other.user_text().unwrap_or_default(),
                        usage: None,
                        charged: 0,
                        images: Vec::new(),
                    },
                };
                tx.send(event).await;
            }
            .instrument(span),
        );
        reply
    }

    /// What a `/v1` request gets before the model is asked, if anything: a refusal (ban, rate
    /// limit, permission, content rules) or, on the chat page, a keyword reply.
    async fn api_early_answer(
        &self,
        settings: &Settings,
        platform: chatrelay_core::Platform,
        model: &ModelConfig,
        watch: &Watch,
        question: &str,
    ) -> Option<ReplyEvent> {
        if let Some(refused) = self.guard(watch.uid).await {
            return Some(refused);
        }
        if let Some(refused) = self.permitted(settings, watch.uid, model).await {
            return Some(refused);
        }
        self.input_refusal(settings, watch, question).or_else(|| {
            // The chat page is a chat platform: its users get keyword answers too. API
            // clients asked a model, and get the model.
            (platform == chatrelay_core::Platform::Web)
                .then(|| keyword_reply(settings, &watch.scope, question))
                .flatten()
        })
    }

    /// Runs an accepted `/v1` request to its end (spawned): draws, or passes moderation and
    /// asks the model; an answer its reader never got is refunded.
    async fn finish_api(&self, settings: &Settings, call: ApiCall, tx: ReplySender) {
        let ApiCall {
            uid,
            req,
            model,
            watch,
            question,
            drawing,
        } = call;
        // What a reader that left had received of this answer: nothing, when it waited
        // for the whole answer or the answer is one piece (a picture).
        let got_nothing_if_gone = !req.streamed || drawing.is_some();
        let platform = req.platform;
        let reference = req.reference.clone();
        let event = if let Some(prompt) = drawing {
            let asked = Inbound::text(
                chatrelay_core::UserKey::new(req.platform, "", uid.0.to_string()),
                req.reference.clone(),
                question,
            );
            // Boxed, like moderation below: this task lives as long as the answer streams,
            // and its size is the largest of the states it passes through (issue 21).
            Box::pin(self.draw(settings, &asked, prompt, &watch)).await
        } else if let Some(refused) =
            Box::pin(self.moderation_refusal(settings, &watch, &question)).await
        {
            refused
        } else {
            self.ask_model(uid, &model, req, &tx, &watch).await
        };
        self.record_outcome(platform, &event);
        let charged = match &event {
            ReplyEvent::Final { charged, .. } => *charged,
            _ => 0,
        };
        if !tx.send(event).await && got_nothing_if_gone {
            // Settled, but the reader left before the answer reached it.
            self.refund_undelivered(uid, &reference, charged);
        }
    }

    /// The size of the task that answers an accepted `/v1` request (which lives as long as
    /// the answer streams): for the test that keeps it small.
    #[cfg(test)]
    pub(super) fn answer_task_size(&self, uid: Uid, req: ApiRequest) -> usize {
        let settings = self.settings();
        let model = settings.model(&req.model).cloned().unwrap_or_default();
        let watch = Watch {
            uid,
            platform: req.platform,
            scope: String::new(),
            surcharge: 0,
            memory: None,
        };
        let call = ApiCall {
            uid,
            req,
            model,
            watch,
            question: String::new(),
            drawing: None,
        };
        let (tx, _reply) = Reply::channel();
        let this = self.clone();
        let task = async move { this.finish_api(&settings, call, tx).await };
        std::mem::size_of_val(&task)
    }

    /// Asks the model the client's conversation, streaming the answer to `tx`.
    async fn ask_model(
        &self,
        uid: Uid,
        model: &ModelConfig,
        req: ApiRequest,
        tx: &ReplySender,
        watch: &Watch,
    ) -> ReplyEvent {
        let llm_req = LlmRequest {
            model: model.name.clone(),
            messages: req.messages,
            max_completion_tokens: req.max_completion_tokens,
            legacy_max_tokens: req.legacy_max_tokens,
            extra: req.extra,
        };
        let sink = Sink::Reply {
            tx: tx.clone(),
            streamed: req.streamed,
        };
        self.run_llm(uid, model, llm_req, &req.reference, &sink, watch)
            .await
    }
}
