//! A chat-platform message: commands, checks, keyword replies, the model and role, memory,
//! the answer, and the turn appended to the conversation. Also the same conversation
//! continued from the web page ([`Engine::continue_on_web`]).

use chatrelay_storage::{Admission, User};

use super::*;

/// What the admit step of a platform message read, so that what runs before the model
/// needs no store call of its own.
pub(super) struct Admitted {
    /// The sender.
    uid: Uid,
    /// The sender's record (ban, groups).
    user: Result<Option<User>, StoreError>,
    /// The sender's saved model and role.
    model_pref: Option<String>,
    role_pref: Option<String>,
    /// The conversation so far (empty when not remembered, or unreadable).
    history: Vec<Turn>,
    /// Who pays, when billed to another account (a zsxq group's payer).
    payer: Option<Result<Uid, StoreError>>,
}

/// A platform conversation continued from the web page: who, which, what.
struct WebAsk<'a> {
    uid: Uid,
    key: &'a chatrelay_core::UserKey,
    text: String,
    model: Option<String>,
    reference: &'a str,
}

impl Engine {
    /// The admit step of a platform message, one hop off the async workers: its dedupe mark
    /// `id` and its sender in one store transaction, then the reads the answer needs.
    pub(super) async fn admit(
        &self,
        s: &Settings,
        inbound: &Inbound,
        id: &str,
        expires: i64,
        now: i64,
    ) -> Dedupe {
        let (key, name, bill_to, remember, mark) = (
            inbound.key.clone(),
            inbound.display_name.clone(),
            inbound.bill_to.clone(),
            inbound.remember,
            id.to_owned(),
        );
        let got = self
            .off_worker(move |e| async move {
                let store = &e.inner.store;
                let uid = match store
                    .admit(&key, name.as_deref(), &mark, expires, now)
                    .await?
                {
                    Admission::New(uid) => uid,
                    Admission::Seen => return Ok::<_, StoreError>(None),
                };
                let payer = match bill_to {
                    Some(k) => Some(store.resolve_identity(&k, None).await),
                    None => None,
                };
                // The sender, their saved choices and the conversation: one read (one
                // statement on PostgreSQL).
                let conversation = remember.then(|| key.to_string());
                let prefs = [
                    policy::pref_key(uid, "model"),
                    policy::pref_key(uid, "role"),
                ];
                let (user, model_pref, role_pref, history) = match store
                    .admitted_reads(uid, conversation.as_deref(), &prefs)
                    .await
                {
                    Ok(read) => {
                        let mut saved = read.checkpoints.into_iter();
                        let (model, role) = (saved.next().flatten(), saved.next().flatten());
                        (Ok(read.user), model, role, read.turns)
                    }
                    Err(e) => {
                        // Answering without memory beats not answering; the user check
                        // decides on the error.
                        warn!(error = %e, "reading the sender and the conversation failed");
                        (Err(e), None, None, Vec::new())
                    }
                };
                Ok(Some(Admitted {
                    uid,
                    user,
                    model_pref,
                    role_pref,
                    history,
                    payer,
                }))
            })
            .await
            .unwrap_or(Err(StoreError::Reopening));
        match got {
            Ok(Some(admitted)) => Dedupe::New(Box::new(admitted)),
            Ok(None) if self.inner.store.is_shared() => {
                // Another daemon on the database took this message (a platform retry landed
                // here).
                metrics::counter!("chatrelay_redeliveries_joined_total").increment(1);
                Dedupe::Elsewhere
            }
            Ok(None) => {
                // Seen before, answered in an earlier run: not answered twice.
                metrics::counter!("chatrelay_duplicates_dropped_total").increment(1);
                Dedupe::Refused(failed(FailureKind::Duplicate, ""))
            }
            Err(e) => {
                warn!(error = %e, "admitting the message failed");
                Dedupe::Refused(failed(FailureKind::Unavailable, &s.texts.unavailable))
            }
        }
    }

    /// Answers a platform message (the body of [`Handler::handle`]) admitted as `admitted`.
    pub(super) async fn answer_platform(
        &self,
        mut inbound: Inbound,
        sink: &Sink,
        admitted: Admitted,
    ) -> ReplyEvent {
        let Some(voice) = inbound.voice.take() else {
            return self
                .answer_platform_text(inbound, sink, admitted, None)
                .await;
        };
        let s = self.settings();
        // A banned or too hasty user's voice is not downloaded nor transcribed.
        let user = admitted.user.as_ref().map(Option::as_ref);
        if let Some(refused) = self.guard_user(admitted.uid, user) {
            return refused;
        }
        if let Some(refused) = self
            .voice_unaffordable(&s, &inbound, &admitted, &voice)
            .await
        {
            return refused;
        }
        let heard = match self.hear(&s, &voice).await {
            Ok(heard) => heard,
            Err(refused) => return refused,
        };
        inbound.text = heard.text;
        let event = self
            .answer_platform_text(inbound, sink, admitted, Some(heard.credits))
            .await;
        voice::with_heard(heard.prefix, event)
    }

    /// The refusal of a voice message whose payer could not pay for the answer (the model's
    /// flat price and the voice price, as far as known before): checked before anything is
    /// downloaded or transcribed, which the operator pays for. Nothing is held: the answer's
    /// own reservation decides in the end.
    async fn voice_unaffordable(
        &self,
        s: &Settings,
        inbound: &Inbound,
        admitted: &Admitted,
        voice: &chatrelay_core::voice::Voice,
    ) -> Option<ReplyEvent> {
        let sp = s.speech.as_ref()?;
        if voice
            .recognition
            .as_deref()
            .is_some_and(|t| !t.trim().is_empty())
        {
            return None;
        }
        let (payer, model) = match self
            .payer_and_model(s, admitted, &policy::scope_of(&inbound.key))
            .await
        {
            Ok(chosen) => chosen,
            Err(refused) => return Some(refused),
        };
        let needed = model.credits.saturating_add(voice::voice_price(
            sp.credits,
            sp.credits_per_minute,
            voice.declared_seconds.map(|s| s.saturating_mul(1000)),
        ));
        let (today, free_daily) = (s.today(), s.free_daily);
        let balance = self
            .off_worker(
                move |e| async move { e.inner.store.balance(payer, today, free_daily).await },
            )
            .await?;
        let available = match balance {
            Ok(b) => b.available,
            // The answer's reservation reads it again and says what is wrong.
            Err(_) => return None,
        };
        if available >= needed {
            return None;
        }
        Some(insufficient_quota(s, needed, available))
    }

    /// Answers a platform message's text. `voice_credits`: set for a voice message's
    /// transcript, its voice price: plain chat, never a command, the sender already checked
    /// (ban, rate limit), and the price added to the answer's.
    async fn answer_platform_text(
        &self,
        inbound: Inbound,
        sink: &Sink,
        admitted: Admitted,
        voice_credits: Option<u64>,
    ) -> ReplyEvent {
        let inner = &self.inner;
        let s = self.settings();
        let uid = admitted.uid;
        let conversation = inbound.key.to_string();
        let mut watch = Watch {
            uid,
            platform: inbound.key.platform,
            scope: policy::scope_of(&inbound.key),
            surcharge: 0,
            memory: None,
        };
        // A spoken "/quota" is chat, not a command.
        let command = match voice_credits {
            None => self.command(&inbound.text),
            Some(_) => None,
        };
        match command {
            Some(Command::Image(prompt)) => {
                return self.draw(&s, &inbound, prompt, &watch).await;
            }
            Some(command) => {
                return self
                    .run_command(command, uid, &conversation, &watch.scope)
                    .await;
            }
            None => {}
        }
        inner.stats.active(s.today(), uid);
        if let Some(early) = self
            .answer_before_model(
                &s,
                &watch,
                &admitted,
                &inbound.text,
                voice_credits.is_some(),
            )
            .await
        {
            return early;
        }
        let (payer, model) = match self.payer_and_model(&s, &admitted, &watch.scope).await {
            Ok(chosen) => chosen,
            Err(refused) => return refused,
        };
        let (question, picture_parts) = match self.question_and_pictures(&s, &inbound, &model).await
        {
            Ok(asked) => asked,
            Err(refused) => return refused,
        };
        watch.surcharge = (picture_parts.len() as u64)
            .saturating_mul(model.credits_per_image)
            .saturating_add(voice_credits.unwrap_or(0));
        if inbound.remember {
            watch.memory = Some(Memory {
                conversation: conversation.clone(),
                // Pictures are not kept: the memory says one was there.
                question: if inbound.images.is_empty() {
                    question.clone()
                } else {
                    format!("[图片] {question}")
                },
                max_turns: s.max_turns,
            });
        }
        let messages = self.platform_prompt(&s, &admitted, &watch.scope, &question, picture_parts);
        let req = LlmRequest {
            model: model.name.clone(),
            messages,
            max_completion_tokens: s.max_completion_tokens,
            legacy_max_tokens: false,
            extra: serde_json::Map::new(),
        };
        let reference = platform_reference(&inbound, false);
        // The turn is remembered with the answer's settlement (`watch.memory`).
        self.run_llm(payer, &model, req, &reference, sink, &watch)
            .await
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
        admitted: &Admitted,
        text: &str,
        guarded: bool,
    ) -> Option<ReplyEvent> {
        // A banned (or too hasty) user gets nothing else, keyword answers included (`guarded`:
        // checked already, before a voice message was transcribed).
        let user = admitted.user.as_ref().map(Option::as_ref);
        if !guarded && let Some(refused) = self.guard_user(watch.uid, user) {
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
    pub(super) async fn payer_of(
        &self,
        s: &Settings,
        inbound: &Inbound,
        uid: Uid,
    ) -> Result<Uid, ReplyEvent> {
        match &inbound.bill_to {
            None => Ok(uid),
            Some(key) => self
                .inner
                .store
                .resolve_identity(key, None)
                .await
                .map_err(|e| {
                    warn!(error = %e, "resolving who pays failed");
                    failed(FailureKind::Unavailable, &s.texts.unavailable)
                }),
        }
    }

    /// Who pays, and the model the message gets (the user's choice, the scope's default),
    /// which the payer must be allowed.
    async fn payer_and_model(
        &self,
        s: &Settings,
        admitted: &Admitted,
        scope: &str,
    ) -> Result<(Uid, ModelConfig), ReplyEvent> {
        let payer = match &admitted.payer {
            None => admitted.uid,
            Some(Ok(payer)) => *payer,
            Some(Err(e)) => {
                warn!(error = %e, "resolving who pays failed");
                return Err(failed(FailureKind::Unavailable, &s.texts.unavailable));
            }
        };
        let Some(model) = policy::choose_model(
            &s.models,
            admitted.model_pref.as_deref(),
            policy::scope_defaults(&s.scopes, scope),
            &s.default_model,
        )
        .cloned() else {
            return Err(failed(FailureKind::UnknownModel, &s.texts.unavailable));
        };
        // Who pays is who must be allowed (a zsxq group's payer, usually the asker).
        if let Some(refused) = self.permitted(s, payer, &model).await {
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
        admitted: &Admitted,
        scope: &str,
        question: &str,
        mut picture_parts: Vec<serde_json::Value>,
    ) -> Vec<Message> {
        let scope_defaults = policy::scope_defaults(&s.scopes, scope);
        let system_prompt =
            policy::choose_role(&s.roles, admitted.role_pref.as_deref(), scope_defaults)
                .map_or(s.system_prompt.as_str(), |r| r.prompt.as_str());
        let mut messages =
            build_prompt(system_prompt, &admitted.history, question, s.context_tokens);
        if !picture_parts.is_empty()
            && let Some(last) = messages.last_mut()
        {
            let mut parts = vec![serde_json::json!({"type": "text", "text": question})];
            parts.append(&mut picture_parts);
            last.content = serde_json::Value::Array(parts);
        }
        messages
    }

    /// Continues the platform conversation `key` (an identity of `uid`'s, which the caller
    /// checked) with `text` from the web page: answered like a message sent there (the
    /// conversation's memory, the platform's model and role defaults unless `model` is
    /// given, its content rules and keyword replies), charged to `uid`, and the turn is
    /// appended to that memory with the settlement, under the ledger reference `reference`
    /// (unique per request). The answer streams to the returned reply.
    pub fn continue_on_web(
        &self,
        uid: Uid,
        key: chatrelay_core::UserKey,
        text: &str,
        model: Option<String>,
        reference: &str,
    ) -> Reply {
        let s = self.settings();
        let text = text.trim().to_owned();
        if text.is_empty() {
            return Reply::failed(FailureKind::InvalidRequest, s.texts.empty.clone());
        }
        if text.chars().count() > s.max_input_chars {
            return Reply::failed(
                FailureKind::InvalidRequest,
                fill(
                    &s.texts.too_long,
                    &[("max", &s.max_input_chars.to_string())],
                ),
            );
        }
        if self.inner.shutdown.is_cancelled() {
            return Reply::failed(FailureKind::Unavailable, s.texts.unavailable.clone());
        }
        let (tx, reply) = Reply::channel();
        let this = self.clone();
        let reference = reference.to_owned();
        let span = info_span!("web_continue", %uid, key = %key, %reference);
        self.inner.tracker.spawn(
            async move {
                let sink = Sink::Reply {
                    tx: tx.clone(),
                    streamed: true,
                };
                let asked = WebAsk {
                    uid,
                    key: &key,
                    text,
                    model,
                    reference: &reference,
                };
                let event = this.answer_on_web(&s, asked, &sink).await;
                this.record_outcome(chatrelay_core::Platform::Web, &event);
                // A streamed reader that left paid for the pieces it was sent.
                tx.send(event).await;
            }
            .instrument(span),
        );
        reply
    }

    /// The body of [`Engine::continue_on_web`].
    async fn answer_on_web(&self, s: &Arc<Settings>, asked: WebAsk<'_>, sink: &Sink) -> ReplyEvent {
        let WebAsk {
            uid,
            key,
            text,
            model,
            reference,
        } = asked;
        let conversation = key.to_string();
        let memory_key = conversation.clone();
        let admitted = self
            .off_worker(move |e| async move {
                let store = &e.inner.store;
                let model_pref = match model {
                    Some(m) => Some(m),
                    None => policy::pref(store, uid, "model").await.ok().flatten(),
                };
                Admitted {
                    uid,
                    user: store.user(uid).await,
                    model_pref,
                    role_pref: policy::pref(store, uid, "role").await.ok().flatten(),
                    history: store.conversation(&memory_key).await.unwrap_or_else(|e| {
                        warn!(error = %e, "reading the conversation failed");
                        Vec::new()
                    }),
                    payer: None,
                }
            })
            .await;
        let Some(admitted) = admitted else {
            return failed(FailureKind::Unavailable, &s.texts.unavailable);
        };
        let mut watch = Watch {
            uid,
            platform: chatrelay_core::Platform::Web,
            // The conversation's own scope: its platform's model, role and rules.
            scope: policy::scope_of(key),
            surcharge: 0,
            memory: None,
        };
        self.inner.stats.active(s.today(), uid);
        if let Some(early) = self
            .answer_before_model(s, &watch, &admitted, &text, false)
            .await
        {
            return early;
        }
        let (payer, model) = match self.payer_and_model(s, &admitted, &watch.scope).await {
            Ok(chosen) => chosen,
            Err(refused) => return refused,
        };
        watch.memory = Some(Memory {
            conversation,
            question: text.clone(),
            max_turns: s.max_turns,
        });
        let messages = self.platform_prompt(s, &admitted, &watch.scope, &text, Vec::new());
        let req = LlmRequest {
            model: model.name.clone(),
            messages,
            max_completion_tokens: s.max_completion_tokens,
            legacy_max_tokens: false,
            extra: serde_json::Map::new(),
        };
        self.run_llm(payer, &model, req, reference, sink, &watch)
            .await
    }
}
