//! A chat-platform message: commands, checks, keyword replies, the model and role, memory,
//! the answer, and the turn appended to the conversation.

use super::*;

impl Engine {
    /// Answers a chat-platform message (the body of [`Handler::handle`]).
    pub(super) async fn answer_platform(&self, inbound: Inbound, sink: &Sink) -> ReplyEvent {
        let inner = &self.inner;
        let s = self.settings();
        let uid = match self.user_of(&s, &inbound) {
            Ok(uid) => uid,
            Err(refused) => return refused,
        };
        let conversation = inbound.key.to_string();
        let mut watch = Watch {
            uid,
            platform: inbound.key.platform,
            scope: policy::scope_of(&inbound.key),
            surcharge: 0,
        };
        match self.command(&inbound.text) {
            Some(Command::Image(prompt)) => {
                return self.draw(&s, &inbound, prompt, &watch).await;
            }
            Some(command) => return self.run_command(command, uid, &conversation, &watch.scope),
            None => {}
        }
        inner.stats.active(s.today(), uid);
        if let Some(early) = self.answer_before_model(&s, &watch, &inbound.text).await {
            return early;
        }
        let (payer, model) = match self.payer_and_model(&s, &inbound, uid, &watch.scope) {
            Ok(chosen) => chosen,
            Err(refused) => return refused,
        };
        let (question, picture_parts) = match self.question_and_pictures(&s, &inbound, &model).await
        {
            Ok(asked) => asked,
            Err(refused) => return refused,
        };
        watch.surcharge = (picture_parts.len() as u64).saturating_mul(model.credits_per_image);
        let messages =
            self.platform_prompt(&s, &inbound, uid, &watch.scope, &question, picture_parts);
        let req = LlmRequest {
            model: model.name.clone(),
            messages,
            max_completion_tokens: s.max_completion_tokens,
            legacy_max_tokens: false,
            extra: serde_json::Map::new(),
        };
        let reference = platform_reference(&inbound, false);
        let event = self
            .run_llm(payer, &model, req, &reference, sink, &watch)
            .await;
        if let ReplyEvent::Final { text, .. } = &event
            && inbound.remember
        {
            self.remember_turn(&s, &inbound, &question, text);
        }
        event
    }

    /// The user who sent a message (created on first contact).
    fn user_of(&self, s: &Settings, inbound: &Inbound) -> Result<Uid, ReplyEvent> {
        self.inner
            .store
            .resolve_identity(&inbound.key, inbound.display_name.as_deref())
            .map_err(|e| {
                warn!(error = %e, "resolving the user failed");
                failed(FailureKind::Unavailable, &s.texts.unavailable)
            })
    }

    /// The question (a picture alone asks the configured picture question) and the pictures
    /// the message carries, as the model's parts.
    async fn question_and_pictures(
        &self,
        s: &Settings,
        inbound: &Inbound,
        model: &ModelConfig,
    ) -> Result<(String, Vec<serde_json::Value>), ReplyEvent> {
        let question = inbound.text.trim().to_owned();
        if inbound.images.is_empty() {
            return Ok((question, Vec::new()));
        }
        let parts = self.picture_parts(s, inbound, model).await?;
        if question.is_empty() {
            return Ok((s.texts.image_question.clone(), parts));
        }
        Ok((question, parts))
    }

    /// What a message gets instead of the model's answer, if anything: a refusal (ban, rate
    /// limit, content rules, moderation) or a keyword reply.
    async fn answer_before_model(
        &self,
        s: &Settings,
        watch: &Watch,
        text: &str,
    ) -> Option<ReplyEvent> {
        // A banned (or too hasty) user gets nothing else, keyword answers included.
        if let Some(refused) = self.guard(watch.uid) {
            return Some(refused);
        }
        if let Some(refused) = self.input_refusal(s, watch, text) {
            return Some(refused);
        }
        if let Some(answer) = keyword_reply(s, &watch.scope, text) {
            return Some(answer);
        }
        self.moderation_refusal(s, watch, text).await
    }

    /// Who pays for a message: the asker, or the account it is billed to (a zsxq group's
    /// payer).
    pub(super) fn payer_of(
        &self,
        s: &Settings,
        inbound: &Inbound,
        uid: Uid,
    ) -> Result<Uid, ReplyEvent> {
        match &inbound.bill_to {
            None => Ok(uid),
            Some(key) => self.inner.store.resolve_identity(key, None).map_err(|e| {
                warn!(error = %e, "resolving who pays failed");
                failed(FailureKind::Unavailable, &s.texts.unavailable)
            }),
        }
    }

    /// Who pays, and the model the message gets (the user's choice, the scope's default),
    /// which the payer must be allowed.
    fn payer_and_model(
        &self,
        s: &Settings,
        inbound: &Inbound,
        uid: Uid,
        scope: &str,
    ) -> Result<(Uid, ModelConfig), ReplyEvent> {
        let payer = self.payer_of(s, inbound, uid)?;
        let chosen_model = policy::pref(&self.inner.store, uid, "model").ok().flatten();
        let Some(model) = policy::choose_model(
            &s.models,
            chosen_model.as_deref(),
            policy::scope_defaults(&s.scopes, scope),
            &s.default_model,
        )
        .cloned() else {
            return Err(failed(FailureKind::UnknownModel, &s.texts.unavailable));
        };
        // Who pays is who must be allowed (a zsxq group's payer, usually the asker).
        if let Some(refused) = self.permitted(s, payer, &model) {
            return Err(refused);
        }
        Ok((payer, model))
    }

    /// The pictures a message carries, downloaded as the model's `image_url` parts (a model
    /// without vision gets a hint instead).
    async fn picture_parts(
        &self,
        s: &Settings,
        inbound: &Inbound,
        model: &ModelConfig,
    ) -> Result<Vec<serde_json::Value>, ReplyEvent> {
        if !model.vision {
            let command = s.commands.model.first().cloned().unwrap_or_default();
            return Err(free_answer(fill(
                &s.texts.image_unsupported,
                &[("command", &command)],
            )));
        }
        let mut parts = Vec::new();
        for url in inbound.images.iter().take(MAX_PICTURES) {
            match self.fetch_picture(s, url, s.max_image_bytes).await {
                Ok(data_url) => parts.push(serde_json::json!({
                    "type": "image_url",
                    "image_url": {"url": data_url},
                })),
                Err(e) => {
                    // The URL may carry a platform token: only the reason is logged.
                    warn!(error = %e, "downloading a picture failed");
                    return Err(failed(FailureKind::InvalidRequest, &s.texts.image_failed));
                }
            }
        }
        Ok(parts)
    }

    /// The prompt: the role's system prompt, the remembered conversation, then the question
    /// (with its pictures).
    fn platform_prompt(
        &self,
        s: &Settings,
        inbound: &Inbound,
        uid: Uid,
        scope: &str,
        question: &str,
        mut picture_parts: Vec<serde_json::Value>,
    ) -> Vec<Message> {
        let chosen_role = policy::pref(&self.inner.store, uid, "role").ok().flatten();
        let scope_defaults = policy::scope_defaults(&s.scopes, scope);
        let system_prompt = policy::choose_role(&s.roles, chosen_role.as_deref(), scope_defaults)
            .map_or(s.system_prompt.as_str(), |r| r.prompt.as_str());
        let history = if !inbound.remember {
            Vec::new()
        } else {
            match self.inner.store.conversation(&inbound.key.to_string()) {
                Ok(h) => h,
                Err(e) => {
                    // Answering without memory beats not answering.
                    warn!(error = %e, "reading the conversation failed");
                    Vec::new()
                }
            }
        };
        let mut messages = build_prompt(system_prompt, &history, question, s.context_tokens);
        if !picture_parts.is_empty()
            && let Some(last) = messages.last_mut()
        {
            let mut parts = vec![serde_json::json!({"type": "text", "text": question})];
            parts.append(&mut picture_parts);
            last.content = serde_json::Value::Array(parts);
        }
        messages
    }

    /// Appends the question and its answer to the conversation's memory.
    fn remember_turn(&self, s: &Settings, inbound: &Inbound, question: &str, answer: &str) {
        let at_ms = now_ms();
        let turns = [
            Turn {
                role: "user".to_owned(),
                // Pictures are not kept: the memory says one was there.
                content: if inbound.images.is_empty() {
                    question.to_owned()
                } else {
                    format!("[图片] {question}")
                },
                at_ms,
            },
            Turn {
                role: "assistant".to_owned(),
                content: answer.to_owned(),
                at_ms,
            },
        ];
        let conversation = inbound.key.to_string();
        if let Err(e) = self
            .inner
            .store
            .append_turns(&conversation, &turns, s.max_turns)
        {
            warn!(error = %e, "saving the conversation failed");
        }
    }
}
