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

impl Engine {
    /// Answers a metered `/v1` request for `uid`. The first event tells the HTTP layer
    /// whether it failed before anything was generated (quota, ban, model, content...).
    pub fn complete(&self, uid: Uid, req: ApiRequest) -> Reply {
        let inner = &self.inner;
        let settings = self.settings();
        let Some(model) = settings.model(&req.model).cloned() else {
            return Reply::failed(
                FailureKind::UnknownModel,
                fill(&settings.texts.unknown_model, &[("model", &req.model)]),
            );
        };
        self.inner.stats.active(settings.today(), uid);
        let pictures = req
            .messages
            .iter()
            .filter_map(|m| m.content.as_array())
            .flatten()
            .filter(|p| p.get("type").and_then(serde_json::Value::as_str) == Some("image_url"))
            .count() as u64;
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
        };
        // What the rules look at: the last thing the user said.
        let question = req
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(Message::text)
            .unwrap_or_default();
        // The chat page's image command draws (API clients asked a model, and get the model);
        // drawing does its own checks.
        let drawing = match (req.platform, self.command(&question)) {
            (chatrelay_core::Platform::Web, Some(Command::Image(prompt))) => Some(prompt),
            _ => None,
        };
        let early = drawing
            .is_none()
            .then(|| {
                self.guard(uid)
                    .or_else(|| self.permitted(&settings, uid, &model))
                    .or_else(|| self.input_refusal(&settings, &watch, &question))
                    .or_else(|| {
                        // The chat page is a chat platform: its users get keyword answers too. API
                        // clients asked a model, and get the model.
                        (req.platform == chatrelay_core::Platform::Web)
                            .then(|| keyword_reply(&settings, &watch.scope, &question))
                            .flatten()
                    })
            })
            .flatten();
        if let Some(event) = early {
            self.record_outcome(req.platform, &event);
            return match event {
                ReplyEvent::Failed { kind, message } => Reply::failed(kind, message),
                other => Reply::text(other.user_text().unwrap_or_default()),
            };
        }
        let (tx, reply) = Reply::channel();
        let this = self.clone();
        let span = info_span!("completion", %uid, model = %model.name, reference = %req.reference);
        inner.tracker.spawn(
            async move {
                // What a reader that left had received of this answer: nothing, when it waited
                // for the whole answer or the answer is one piece (a picture).
                let got_nothing_if_gone = !req.streamed || drawing.is_some();
                let event = if let Some(prompt) = drawing {
                    let asked = Inbound::text(
                        chatrelay_core::UserKey::new(req.platform, "", uid.0.to_string()),
                        req.reference.clone(),
                        question,
                    );
                    this.draw(&settings, &asked, prompt, &watch).await
                } else if let Some(refused) =
                    this.moderation_refusal(&settings, &watch, &question).await
                {
                    refused
                } else {
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
                    this.run_llm(uid, &model, llm_req, &req.reference, &sink, &watch)
                        .await
                };
                this.record_outcome(req.platform, &event);
                let charged = match &event {
                    ReplyEvent::Final { charged, .. } => *charged,
                    _ => 0,
                };
                if !tx.send(event).await && got_nothing_if_gone {
                    // Settled, but the reader left before the answer reached it.
                    this.refund_undelivered(uid, &req.reference, charged);
                }
            }
            .instrument(span),
        );
        reply
    }
}
