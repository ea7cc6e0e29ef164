//! [`Router`]: several upstreams (one [`Client`] each: DeepSeek, Qwen, GLM,
//! OpenAI, a local model, ...), fallback from one to the next, and the health
//! of each upstream with a circuit breaker.
//!
//! This module owns the fallback policy ([`should_fall_back`]), the health
//! bookkeeping ([`UpstreamHealth`]) and the ordering of routes by health. It
//! does no HTTP itself: each attempt is one call of the upstream's
//! [`Client`], which has already made its own retries (`max_retries`) when
//! it returns an error, so fallback happens after those. Operators should
//! set `max_retries` low on upstreams that have a fallback, or a dead
//! upstream costs the full retry budget before the next one is tried.
//!
//! # Health and circuit breaker
//!
//! Every request that reaches an upstream ends in one of three outcomes:
//! - success: the answer arrived (for streams: the stream reached
//!   `[DONE]`);
//! - failure: the upstream is at fault (see [`is_upstream_failure`]);
//! - neither: the request itself was refused (400, context too long, ...),
//!   which proves the upstream alive but says nothing about its quality, or
//!   the caller gave up first (a dropped stream: a user pressing stop is not
//!   the upstream's fault).
//!
//! After [`FAILURES_TO_OPEN`] consecutive failures an upstream is `down`
//! for a cooldown. Its routes are then tried only after every route on an
//! upstream that is not down: demoted, not skipped, so that when everything
//! is down the request is still attempted. Once the cooldown has passed, one
//! request is let through in the normal order (half-open); its success makes
//! the upstream `up` again, its failure starts another cooldown.
//!
//! The state sits behind a `std::sync::Mutex` per upstream, held only for a
//! few field updates and never across an `.await`.

mod health;

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::time::Instant;

pub use self::health::{
    DEFAULT_COOLDOWN, FAILURES_TO_OPEN, UpstreamHealth, UpstreamState, is_upstream_failure,
    should_fall_back,
};
use self::health::{Health, Rank};

use crate::client::Client;
use crate::error::Error;
use crate::stream::ChatStream;
use crate::types::{
    ChatChunk, ChatRequest, ChatResponse, ImageRequest, ImagesResponse, ModerationRequest,
    ModerationResponse,
};

/// One way to answer a request: which upstream, and the model name to ask
/// for there (the same model is often named differently by each provider).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// Id of the upstream, as given to [`Router::new`].
    pub upstream: String,
    /// Model name on that upstream; replaces the request's `model`.
    pub model: String,
}

impl Route {
    /// A route to `model` on `upstream`.
    pub fn new(upstream: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            upstream: upstream.into(),
            model: model.into(),
        }
    }
}

/// Several upstreams, tried in the order of the routes of each request, with
/// fallback and health tracking. Cheap to clone: clones share the clients and
/// the health state.
#[derive(Clone)]
pub struct Router {
    inner: Arc<[Arc<Upstream>]>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field(
                "upstreams",
                &self.inner.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

struct Upstream {
    id: String,
    client: Client,
    health: Mutex<Health>,
}

impl Upstream {
    fn health(&self) -> MutexGuard<'_, Health> {
        // The state is a handful of counters, consistent after every single
        // update, so a panic elsewhere while holding the lock leaves nothing
        // half-done worth refusing to read.
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One request in flight on one upstream. Releases the half-open probe slot
/// if dropped before an outcome was recorded (a cancelled request), so the
/// next request can probe instead of waiting for the claim to expire.
struct Attempt {
    upstream: Arc<Upstream>,
    probe: bool,
    started: Instant,
    finished: bool,
}

impl Attempt {
    fn begin(upstream: Arc<Upstream>) -> Self {
        let now = Instant::now();
        let probe = upstream.health().begin(now);
        Self {
            upstream,
            probe,
            started: now,
            finished: false,
        }
    }

    fn succeed(&mut self, latency: Duration) {
        self.finished = true;
        self.upstream.health().success(latency);
    }

    fn fail(&mut self, error: &Error) {
        self.finished = true;
        self.upstream.health().error(Instant::now(), error);
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.finished && self.probe {
            self.upstream.health().probe_since = None;
        }
    }
}

/// A started attempt's value, with what is needed to record its outcome.
struct Started<T> {
    value: T,
    index: usize,
    attempt: Attempt,
    latency: Duration,
}

impl Router {
    /// A router over `(id, client)` pairs. Ids should be unique; with
    /// duplicates, routes use the first upstream of that id.
    #[must_use]
    pub fn new(upstreams: Vec<(String, Client)>) -> Self {
        let inner: Vec<Arc<Upstream>> = upstreams
            .into_iter()
            .map(|(id, client)| {
                Arc::new(Upstream {
                    id,
                    client,
                    health: Mutex::new(Health::new(DEFAULT_COOLDOWN)),
                })
            })
            .collect();
        Self {
            inner: inner.into(),
        }
    }

    /// Sets how long an upstream stays `down` after [`FAILURES_TO_OPEN`]
    /// consecutive failures before a probe request is let through (default
    /// 30 s). Applies to every clone of this router.
    #[must_use]
    pub fn with_cooldown(self, cooldown: Duration) -> Self {
        for upstream in self.inner.iter() {
            upstream.health().cooldown = cooldown;
        }
        self
    }

    /// Whether an upstream with this id exists.
    #[must_use]
    pub fn has_upstream(&self, id: &str) -> bool {
        self.upstream(id).is_some()
    }

    /// The client of an upstream, for requests the router does not route
    /// (e.g. listing models).
    #[must_use]
    pub fn client(&self, id: &str) -> Option<&Client> {
        self.upstream(id).map(|u| &u.client)
    }

    fn upstream(&self, id: &str) -> Option<&Arc<Upstream>> {
        self.inner.iter().find(|u| u.id == id)
    }

    /// Tries `routes` in order (the first is the preferred one, the rest
    /// are fallbacks; routes on a `down` upstream go last) and returns the
    /// first stream that starts, with the index in `routes` of the route
    /// used. The request's `model` is replaced by each route's model.
    ///
    /// A route is abandoned for the next only when its upstream is down or
    /// rate limited ([`should_fall_back`]): network errors, connect/response
    /// timeouts, HTTP 5xx, 408, 429 (including `insufficient_quota`),
    /// 401/403. Other errors (400, context length, ...) are returned at once.
    /// When every route fails, the last error is returned. Each upstream's
    /// [`Client`] makes its own retries before the router moves on.
    ///
    /// Errors inside the stream are not retried elsewhere (text may already
    /// have reached the user); the [`RoutedStream`] records them in the
    /// upstream's health.
    pub async fn chat_stream(
        &self,
        routes: &[Route],
        req: &ChatRequest,
    ) -> Result<(RoutedStream, usize), Error> {
        let started = self
            .run(routes, |client, model| {
                let mut req = req.clone();
                req.model = model;
                async move { client.chat_stream(&req).await }
            })
            .await?;
        let index = started.index;
        Ok((
            RoutedStream {
                inner: started.value,
                attempt: started.attempt,
                latency: started.latency,
            },
            index,
        ))
    }

    /// Like [`Router::chat_stream`], for a non-streaming [`Client::chat`].
    pub async fn chat(
        &self,
        routes: &[Route],
        req: &ChatRequest,
    ) -> Result<(ChatResponse, usize), Error> {
        self.run_to_end(routes, |client, model| {
            let mut req = req.clone();
            req.model = model;
            async move { client.chat(&req).await }
        })
        .await
    }

    /// Like [`Router::chat`], for [`Client::images_generate`].
    pub async fn images_generate(
        &self,
        routes: &[Route],
        req: &ImageRequest,
    ) -> Result<(ImagesResponse, usize), Error> {
        self.run_to_end(routes, |client, model| {
            let mut req = req.clone();
            req.model = model;
            async move { client.images_generate(&req).await }
        })
        .await
    }

    /// Like [`Router::chat`], for [`Client::transcribe`]: the file is checked once, before
    /// any upstream is asked; each route's model replaces the request's.
    pub async fn transcribe(
        &self,
        routes: &[Route],
        req: &crate::audio::TranscriptionRequest,
    ) -> Result<(crate::audio::Transcription, usize), crate::audio::AudioError> {
        req.check()?;
        Ok(self
            .run_to_end(routes, |client, model| {
                let mut req = req.clone();
                req.model = model;
                async move { client.post_transcription(&req).await }
            })
            .await?)
    }

    /// Like [`Router::chat`], for [`Client::speak`]: the text is checked once, before any
    /// upstream is asked; each route's model replaces the request's. Audio over the
    /// request's `max_bytes` is an answer, not an upstream failure: it does not fall back.
    pub async fn speak(
        &self,
        routes: &[Route],
        req: &crate::speech::SpeechRequest,
    ) -> Result<(crate::speech::Speech, usize), crate::speech::SpeechError> {
        req.check()?;
        let (read, index) = self
            .run_to_end(routes, |client, model| {
                let mut req = req.clone();
                req.model = model;
                async move { client.post_speech(&req).await }
            })
            .await?;
        Ok((read.into_speech(req.max_bytes)?, index))
    }

    /// Like [`Router::chat`], for [`Client::moderate`]. A route with an
    /// empty model leaves the model out, so the provider uses its default.
    pub async fn moderate(
        &self,
        routes: &[Route],
        req: &ModerationRequest,
    ) -> Result<(ModerationResponse, usize), Error> {
        self.run_to_end(routes, |client, model| {
            let mut req = req.clone();
            req.model = (!model.is_empty()).then_some(model);
            async move { client.moderate(&req).await }
        })
        .await
    }

    /// A snapshot of every upstream's health, in the order given to
    /// [`Router::new`].
    #[must_use]
    pub fn health(&self) -> Vec<UpstreamHealth> {
        self.inner
            .iter()
            .map(|u| u.health().snapshot(&u.id))
            .collect()
    }

    /// [`Router::run`] for requests whose answer is complete when the call
    /// returns: the success is recorded at once.
    async fn run_to_end<T, F, Fut>(&self, routes: &[Route], call: F) -> Result<(T, usize), Error>
    where
        F: Fn(Client, String) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut started = self.run(routes, call).await?;
        started.attempt.succeed(started.latency);
        Ok((started.value, started.index))
    }

    /// The fallback loop: `call(client, model)` on each route in health
    /// order until one succeeds or fails with an error that must not fall
    /// back. Failures are recorded here; the success is left to the caller.
    async fn run<T, F, Fut>(&self, routes: &[Route], call: F) -> Result<Started<T>, Error>
    where
        F: Fn(Client, String) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let order = self.order(routes)?;
        let mut last_error = None;
        for (index, upstream) in order {
            let Some(route) = routes.get(index) else {
                continue;
            };
            let mut attempt = Attempt::begin(Arc::clone(&upstream));
            match call(upstream.client.clone(), route.model.clone()).await {
                Ok(value) => {
                    let latency = attempt.started.elapsed();
                    return Ok(Started {
                        value,
                        index,
                        attempt,
                        latency,
                    });
                }
                Err(error) => {
                    attempt.fail(&error);
                    if !should_fall_back(&error) {
                        return Err(error);
                    }
                    tracing::warn!(
                        upstream = %upstream.id,
                        model = %route.model,
                        route = index,
                        error = %error,
                        "upstream failed; trying the next route"
                    );
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::InvalidConfig("no route to try".to_owned())))
    }

    /// The routes' indexes with their upstreams, in trying order: routes on
    /// healthy (or probe-ready) upstreams in the given order, then routes on
    /// down upstreams in the given order. Fails on an unknown upstream
    /// before anything is sent.
    fn order(&self, routes: &[Route]) -> Result<Vec<(usize, Arc<Upstream>)>, Error> {
        let now = Instant::now();
        let mut first = Vec::with_capacity(routes.len());
        let mut last = Vec::new();
        for (index, route) in routes.iter().enumerate() {
            let upstream = self.upstream(&route.upstream).ok_or_else(|| {
                Error::InvalidConfig(format!("unknown upstream {:?}", route.upstream))
            })?;
            let rank = upstream.health().rank(now);
            let entry = (index, Arc::clone(upstream));
            if rank == Rank::Down {
                last.push(entry);
            } else {
                first.push(entry);
            }
        }
        first.extend(last);
        Ok(first)
    }
}

/// The stream of a routed chat completion: the chunks of the upstream's
/// [`ChatStream`], unchanged, plus health bookkeeping. Reaching the end
/// after `[DONE]` records a success (so poll it to the end), an error item a
/// failure; dropping it early records nothing.
pub struct RoutedStream {
    inner: ChatStream,
    attempt: Attempt,
    /// Time to the response headers, recorded with the success.
    latency: Duration,
}

impl fmt::Debug for RoutedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutedStream")
            .field("upstream", &self.attempt.upstream.id)
            .field("request_id", &self.inner.request_id())
            .finish_non_exhaustive()
    }
}

impl RoutedStream {
    /// Id of the upstream that answers.
    #[must_use]
    pub fn upstream(&self) -> &str {
        &self.attempt.upstream.id
    }

    /// The `x-request-id` header of the response, to quote in bug reports.
    #[must_use]
    pub fn request_id(&self) -> Option<&str> {
        self.inner.request_id()
    }
}

impl Stream for RoutedStream {
    type Item = Result<ChatChunk, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Every field is Unpin, so the pin can be dropped.
        let this = self.get_mut();
        let item = Pin::new(&mut this.inner).poll_next(cx);
        if !this.attempt.finished {
            match &item {
                Poll::Ready(Some(Err(error))) => this.attempt.fail(error),
                // ChatStream ends without an error only after `[DONE]`.
                Poll::Ready(None) => this.attempt.succeed(this.latency),
                Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
            }
        }
        item
    }
}
