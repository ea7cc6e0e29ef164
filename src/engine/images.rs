//! Pictures: downloading what users send (through [`super::fetch`]) and drawing with `/image`.

use super::*;

impl Engine {
    /// Downloads a picture a user sent (at most `max_bytes`) as a `data:` URL for the model,
    /// refusing internal addresses ([`fetch`]).
    pub(super) async fn fetch_picture(
        &self,
        s: &Settings,
        url: &str,
        max_bytes: usize,
    ) -> Result<String, fetch::FetchError> {
        let fetcher = {
            let mut cached = self
                .inner
                .pictures
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match cached.as_ref() {
                Some(f) if f.trusts(&s.picture_trusted_hosts) => f.clone(),
                _ => {
                    let f = Arc::new(fetch::PictureFetcher::new(&s.picture_trusted_hosts)?);
                    *cached = Some(f.clone());
                    f
                }
            }
        };
        fetcher.fetch(url, max_bytes).await
    }

    /// The image command: checks, reserves `[images] credits`, asks the image upstream.
    pub(super) async fn draw(
        &self,
        s: &Settings,
        inbound: &Inbound,
        prompt: Option<String>,
        watch: &Watch,
    ) -> ReplyEvent {
        let Some(cost) = s.image_credits else {
            return free_answer(s.texts.image_off.clone());
        };
        let Some(prompt) = prompt.filter(|p| !p.trim().is_empty()) else {
            let command = s.commands.image.first().cloned().unwrap_or_default();
            return free_answer(fill(&s.texts.image_usage, &[("command", &command)]));
        };
        self.inner.stats.active(s.today(), watch.uid);
        if let Some(refused) = self.input_refusal(s, watch, &prompt) {
            return refused;
        }
        if let Some(refused) = self.guard(watch.uid).await {
            return refused;
        }
        if let Some(refused) = self.moderation_refusal(s, watch, &prompt).await {
            return refused;
        }
        let payer = match self.payer_of(s, inbound, watch.uid).await {
            Ok(payer) => payer,
            Err(refused) => return refused,
        };
        let reference = platform_reference(inbound, true);
        let reservation = match self.reserve(s, payer, cost, &reference).await {
            Ok(id) => id,
            Err(refused) => return refused,
        };
        let started = Instant::now();
        let drawn = tokio::select! {
            r = self.llm().image(prompt) => r,
            () = self.inner.shutdown.cancelled() => {
                self.release(reservation).await;
                return failed(FailureKind::Unavailable, &s.texts.unavailable);
            }
        };
        metrics::histogram!("chatrelay_image_seconds").record(started.elapsed().as_secs_f64());
        self.settle_drawing(s, inbound, reservation, cost, drawn)
            .await
    }

    /// Charges a drawn picture and links it for the user's platform; a failed drawing is
    /// released, nothing charged.
    async fn settle_drawing(
        &self,
        s: &Settings,
        inbound: &Inbound,
        reservation: ReservationId,
        cost: u64,
        drawn: Result<Vec<String>, llm::LlmError>,
    ) -> ReplyEvent {
        match drawn {
            Ok(urls) => {
                let metered = Metered {
                    platform: inbound.key.platform,
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    outcome: chatrelay_storage::UsageOutcome::Answered,
                };
                let charged = self
                    .settle(reservation, cost, "image", None, metered)
                    .await
                    .unwrap_or(0);
                metrics::counter!("chatrelay_images_total", "outcome" => "ok").increment(1);
                metrics::counter!("chatrelay_credits_charged_total").increment(charged);
                let links: Vec<String> = urls
                    .iter()
                    .map(|url| match inbound.capabilities.markup {
                        chatrelay_core::Markup::Markdown => format!("![image]({url})"),
                        _ => fill(&s.texts.image_done, &[("url", url)]),
                    })
                    .collect();
                ReplyEvent::Final {
                    text: links.join("\n"),
                    usage: None,
                    charged,
                    images: urls,
                }
            }
            Err(e) => {
                self.release(reservation).await;
                metrics::counter!("chatrelay_images_total", "outcome" => "error").increment(1);
                warn!(error = %e, "drawing failed; nothing charged");
                if matches!(e, chatrelay_openai::Error::InvalidConfig(_)) {
                    free_answer(s.texts.image_off.clone())
                } else {
                    failed(FailureKind::Upstream, &s.texts.upstream_error)
                }
            }
        }
    }
}
