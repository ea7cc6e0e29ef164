//! Sending an answer: whole (non-streamed; refunded when it cannot reach its reader) or as
//! server-sent events.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::Json;
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chatrelay_core::{FailureKind, Reply, ReplyEvent, Usage};
use chatrelay_storage::Uid;
use futures_util::FutureExt;
use serde_json::{Value, json};

use super::error::{ApiError, Lang, failure, interrupted};
use crate::channels::web::state::WebState;
use crate::engine::Engine;

/// How long an open stream waits, once shutdown begins, for the engine to end its answer
/// (the engine ends it at once; this only bounds a stuck one).
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A reply on its way to a `/v1` client. An answer the engine settled and sent, but which
/// was still in the channel when the reader went away (the client left, the handler was
/// dropped), never reached anyone: for a non-streamed request it is refunded here (the
/// engine refunds one it could not even send). Streamed readers got the pieces, and pay
/// for them.
pub(super) struct Delivery {
    pub(super) reply: Reply,
    pub(super) engine: Engine,
    pub(super) uid: Uid,
    pub(super) reference: String,
    /// Refund a settled answer lost in the channel (non-streamed requests).
    pub(super) refund_lost: bool,
    /// The last event was read (and handed on by the reader).
    pub(super) finished: bool,
}

impl Delivery {
    pub(super) async fn next(&mut self) -> Option<ReplyEvent> {
        let event = self.reply.next().await;
        if event.as_ref().is_none_or(ReplyEvent::is_terminal) {
            self.finished = true;
        }
        event
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if self.finished || !self.refund_lost {
            return;
        }
        // What is in the channel now, without waiting: a settled answer nobody will read.
        while let Some(Some(event)) = self.reply.next().now_or_never() {
            if let ReplyEvent::Final { charged, .. } = event {
                self.engine
                    .refund_undelivered(self.uid, &self.reference, charged);
                break;
            }
            if event.is_terminal() {
                break;
            }
        }
    }
}

pub(super) struct Meta {
    pub(super) id: String,
    pub(super) created: i64,
    pub(super) model: String,
    pub(super) lang: Lang,
}

impl Meta {
    pub(super) fn chunk(&self, choices: Value, usage: Option<&Usage>) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = usage_json(u);
        }
        v
    }

    pub(super) fn delta(&self, delta: Value, finish: Option<&str>) -> Value {
        self.chunk(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]),
            None,
        )
    }
}

pub(super) fn usage_json(u: &Usage) -> Value {
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total()})
}

/// Waits for the whole answer: any number of pieces, then the final event (which carries the
/// whole text).
pub(super) async fn complete_response(
    shutdown: &tokio_util::sync::CancellationToken,
    meta: Meta,
    first: ReplyEvent,
    mut reply: Delivery,
) -> Result<Response, ApiError> {
    let mut event = Some(first);
    loop {
        let next = match event.take() {
            Some(e) => Some(e),
            None => reply.next().await,
        };
        match next {
            Some(ReplyEvent::Delta(_)) => {}
            Some(ReplyEvent::Final { text, usage, .. }) => {
                let usage = usage.unwrap_or_default();
                let body = json!({
                    "id": meta.id,
                    "object": "chat.completion",
                    "created": meta.created,
                    "model": meta.model,
                    "system_fingerprint": null,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": null},
                        "logprobs": null,
                        "finish_reason": "stop",
                    }],
                    "usage": usage_json(&usage),
                });
                return Ok(Json(body).into_response());
            }
            Some(ReplyEvent::Failed { kind, message }) => {
                return Err(failure(shutdown.is_cancelled(), meta.lang, kind, message));
            }
            None => return Err(interrupted(shutdown.is_cancelled(), meta.lang)),
        }
    }
}

/// Streams an answer as server-sent events. The response body itself reads the reply (no
/// task or channel of its own per stream: issue 21 measured ~3.6 KB per open stream for
/// them): hyper polls the body when the client can take more, and drops it when the client
/// goes away, which drops the reply; the engine then stops the upstream call and charges
/// what was sent. On shutdown the engine ends the answer itself (uncharged) and the stream
/// passes that on.
pub(super) fn stream_response(
    st: WebState,
    meta: Meta,
    first: ReplyEvent,
    reply: Delivery,
    include_usage: bool,
) -> Response {
    let pump = Pump::new(meta, reply, st.shutdown.clone(), include_usage, first);
    let body = sse_events(pump);
    let mut res = Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response();
    res.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    res.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    res
}

/// The events of a streamed answer, read from its reply as the client takes them.
pub(super) fn sse_events(
    pump: Pump,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + 'static {
    futures_util::stream::unfold(pump, |mut pump| async move {
        let event = pump.next_event().await?;
        Some((Ok::<_, Infallible>(event), pump))
    })
}

/// One answer's events on their way out as server-sent events: the state of a streamed
/// response's body.
pub(super) struct Pump {
    meta: Meta,
    reply: Delivery,
    shutdown: tokio_util::sync::CancellationToken,
    include_usage: bool,
    /// Pieces were sent. Answers the engine makes itself (keyword replies, pictures) come as
    /// one final event with no deltas before it: their text is streamed as one piece.
    streamed: bool,
    /// Shutdown began: the engine ends the answer; this is when to stop waiting for it.
    stopping: Option<tokio::time::Instant>,
    /// Events made from the last reply event and not yet handed out (at most four: the
    /// end of an answer is its text, the stop chunk, usage and `[DONE]`).
    pending: VecDeque<Event>,
    /// The reply event to turn into events next (the first one, read before the response).
    next: Option<ReplyEvent>,
    /// The reply ended: nothing is read from it any more.
    ended: bool,
    /// A one-piece answer's charge while its only piece is still in `pending`, and how many
    /// events are to be handed out until it is: refunded if the stream is dropped (the
    /// client left) before that.
    undelivered: Option<(u64, usize)>,
}

/// What the stream does next.
enum Step {
    Event(Option<ReplyEvent>),
    Wait,
    GiveUp,
}

impl Pump {
    /// The events of `reply`, whose `first` event was read already.
    pub(super) fn new(
        meta: Meta,
        reply: Delivery,
        shutdown: tokio_util::sync::CancellationToken,
        include_usage: bool,
        first: ReplyEvent,
    ) -> Self {
        metrics::gauge!("chatrelay_active_streams").increment(1.0);
        Pump {
            meta,
            reply,
            shutdown,
            include_usage,
            streamed: false,
            stopping: None,
            pending: VecDeque::new(),
            next: Some(first),
            ended: false,
            undelivered: None,
        }
    }

    /// The next event for the client; `None` at the end of the answer.
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                if let Some((_, before)) = &mut self.undelivered {
                    *before = before.saturating_sub(1);
                    if *before == 0 {
                        // The one-piece answer's text was handed out.
                        self.undelivered = None;
                    }
                }
                return Some(event);
            }
            if self.ended {
                return None;
            }
            if !self.streamed && self.next.is_some() {
                // The first event: the role chunk leads.
                let role = json!({"role": "assistant", "content": "", "refusal": null});
                self.push(self.meta.delta(role, None));
            }
            let event = match self.next.take() {
                Some(e) => Some(e),
                None => match self.next_step().await {
                    Step::Event(e) => e,
                    Step::Wait => continue,
                    Step::GiveUp => {
                        self.ended = true;
                        self.push(ApiError::shutting_down(self.meta.lang).body());
                        continue;
                    }
                },
            };
            self.turn(event);
        }
    }

    /// Turns one reply event into the events the client gets.
    fn turn(&mut self, event: Option<ReplyEvent>) {
        match event {
            Some(ReplyEvent::Delta(d)) => {
                self.streamed = true;
                self.push(self.meta.delta(json!({"content": d}), None));
            }
            Some(ReplyEvent::Final {
                usage,
                text,
                charged,
                ..
            }) => {
                self.ended = true;
                if !self.streamed && !text.is_empty() {
                    self.push(self.meta.delta(json!({"content": text}), None));
                    self.undelivered = Some((charged, self.pending.len()));
                }
                self.push(self.meta.delta(json!({}), Some("stop")));
                if self.include_usage {
                    let usage = usage.unwrap_or_default();
                    self.push(self.meta.chunk(json!([]), Some(&usage)));
                }
                self.pending.push_back(Event::default().data("[DONE]"));
            }
            Some(ReplyEvent::Failed { kind, message }) => {
                self.ended = true;
                let lang = self.meta.lang;
                let err = if self.stopping.is_some() && kind == FailureKind::Unavailable {
                    ApiError::shutting_down(lang)
                } else {
                    ApiError::from_failure(lang, kind, message)
                };
                self.push(err.body());
            }
            None => {
                self.ended = true;
                let err = interrupted(self.stopping.is_some(), self.meta.lang);
                self.push(err.body());
            }
        }
    }

    /// The engine's next event, or: shutdown began (wait a little for the engine to end the
    /// answer), or the wait is over.
    async fn next_step(&mut self) -> Step {
        let stopping = self.stopping;
        let give_up = async {
            match stopping {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            e = self.reply.next() => Step::Event(e),
            () = self.shutdown.cancelled(), if stopping.is_none() => {
                self.stopping = Some(tokio::time::Instant::now() + SHUTDOWN_WAIT);
                Step::Wait
            }
            () = give_up => Step::GiveUp,
        }
    }

    /// Queues one JSON event.
    fn push(&mut self, v: Value) {
        self.pending.push_back(Event::default().data(v.to_string()));
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        metrics::gauge!("chatrelay_active_streams").decrement(1.0);
        if let Some((charged, _)) = self.undelivered.take() {
            // A one-piece answer (a picture) that never left.
            let r = &self.reply;
            r.engine.refund_undelivered(r.uid, &r.reference, charged);
        }
    }
}
