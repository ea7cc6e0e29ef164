//! A chat-platform message: commands, checks, keyword replies, the model and role, memory,
//! the answer, and the turn appended to the conversation.

use super::*;

impl Engine {
    /// Answers a chat-platform message (the body of [`Handler::handle`]).
    pub(super) async fn answer_platform(&self, inbound: Inbound, sink: &Sink) -> ReplyEvent {
        let inner = &self.inner;
        let s = self.settings();
        let uid = match inner
            .store
            .resolve_identity(&inbound.key, inbound.display_name.as_deref())
        {
            Ok(uid) => uid,
            Err(e) => {
                warn!(error = %e, "resolving the user failed");
                return failed(FailureKind::Unavailable, &s.texts.unavailable);
            }
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
        // A banned (or too hasty) user gets nothing else, keyword answers included.
        if let Some(refused) = self.guard(uid) {
            return refused;
        }
        if let Some(refused) = self.input_refusal(&s, &watch, &inbound.text) {
            return refused;
        }
        if let Some(answer) = keyword_reply(&s, &watch.scope, &inbound.text) {
            return answer;
        }
        if let Some(refused) = self.moderation_refusal(&s, &watch, &inbound.text).await {
            return refused;
        }
        let payer = match &inbound.bill_to {
            None => uid,
            Some(key) => match inner.store.resolve_identity(key, None) {
                Ok(payer) => payer,
                Err(e) => {
                    warn!(error = %e, "resolving who pays failed");
                    return failed(FailureKind::Unavailable, &s.texts.unavailable);
                }
            },
        };
        let scope_defaults = policy::scope_defaults(&s.scopes, &watch.scope);
        let chosen = |what| policy::pref(&inner.store, uid, what).ok().flatten();
        let chosen_model = chosen("model");
        let Some(model) = policy::choose_model(
            &s.models,
            chosen_model.as_deref(),
            scope_defaults,
            &s.default_model,
        )
        .cloned() else {
            return failed(FailureKind::UnknownModel, &s.texts.unavailable);
        };
        // Who pays is who must be allowed (a zsxq group's payer, usually the asker).
        if let Some(refused) = self.permitted(&s, payer, &model) {
            return refused;
        }
        let mut question = inbound.text.trim().to_owned();
        let mut picture_parts = Vec::new();
        if !inbound.images.is_empty() {
            if !model.vision {
                return ReplyEvent::Final {
                    text: fill(
                        &s.texts.image_unsupported,
                        &[(
                            "command",
                            &s.commands.model.first().cloned().unwrap_or_default(),
                        )],
                    ),
                    usage: None,
                    charged: 0,
                    images: Vec::new(),
                };
            }
            for url in inbound.images.iter().take(MAX_PICTURES) {
                match self.fetch_picture(&s, url, s.max_image_bytes).await {
                    Ok(data_url) => picture_parts.push(serde_json::json!({
                        "type": "image_url",
                        "image_url": {"url": data_url},
                    })),
                    Err(e) => {
                        // The URL may carry a platform token: only the reason is logged.
                        warn!(error = %e, "downloading a picture failed");
                        return failed(FailureKind::InvalidRequest, &s.texts.image_failed);
                    }
                }
            }
            if question.is_empty() {
                question = s.texts.image_question.clone();
            }
            watch.surcharge = (picture_parts.len() as u64).saturating_mul(model.credits_per_image);
        }
        let chosen_role = chosen("role");
        let system_prompt = policy::choose_role(&s.roles, chosen_role.as_deref(), scope_defaults)
            .map_or(s.system_prompt.as_str(), |r| r.prompt.as_str());
        let history = if !inbound.remember {
            Vec::new()
        } else {
            match inner.store.conversation(&conversation) {
                Ok(h) => h,
                Err(e) => {
                    // Answering without memory beats not answering.
                    warn!(error = %e, "reading the conversation failed");
                    Vec::new()
                }
            }
        };
        let mut messages = build_prompt(system_prompt, &history, &question, s.context_tokens);
        if !picture_parts.is_empty()
            && let Some(last) = messages.last_mut()
        {
            let mut parts = vec![serde_json::json!({"type": "text", "text": question})];
            parts.append(&mut picture_parts);
            last.content = serde_json::Value::Array(parts);
        }
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
            let at_ms = now_ms();
            let turns = [
                Turn {
                    role: "user".to_owned(),
                    // Pictures are not kept: the memory says one was there.
                    content: if inbound.images.is_empty() {
                        question.clone()
                    } else {
                        format!("[图片] {question}")
                    },
                    at_ms,
                },
                Turn {
                    role: "assistant".to_owned(),
                    content: text.clone(),
                    at_ms,
                },
            ];
            if let Err(e) = inner.store.append_turns(&conversation, &turns, s.max_turns) {
                warn!(error = %e, "saving the conversation failed");
            }
        }
        event
    }
}
