//! Sending an answer: whole (non-streamed; refunded when it cannot reach its reader) or as
//! server-sent events.

use std::convert::Infallible;

use axum::Json;
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chatrelay_core::{FailureKind, Reply, ReplyEvent, Usage};
use chatrelay_storage::Uid;
use futures_util::FutureExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

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

/// Streams an answer as server-sent events.
pub(super) fn stream_response(
    st: WebState,
    meta: Meta,
    first: ReplyEvent,
    reply: Delivery,
    include_usage: bool,
) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(32);
    let pump = Pump {
        tx,
        meta,
        reply,
        shutdown: st.shutdown.clone(),
        include_usage,
        streamed: false,
        stopping: None,
    };
    // The pump owns the reply: when the client goes away the send fails, the reply is dropped
    // and the engine stops the upstream call (and charges what was sent). On shutdown the
    // engine ends the answer itself (uncharged) and the pump passes that on.
    st.engine.tracker().spawn(pump.run(first));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    let mut res = Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response();
    res.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    res.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    res
}

/// Moves one answer's events to its SSE stream.
struct Pump {
    tx: mpsc::Sender<Event>,
    meta: Meta,
    reply: Delivery,
    shutdown: tokio_util::sync::CancellationToken,
    include_usage: bool,
    /// Pieces were sent. Answers the engine makes itself (keyword replies, pictures) come as
    /// one final event with no deltas before it: their text is streamed as one piece.
    streamed: bool,
    /// Shutdown began: the engine ends the answer; this is when to stop waiting for it.
    stopping: Option<tokio::time::Instant>,
}

/// What the pump does next.
enum Step {
    Event(Option<ReplyEvent>),
    Wait,
    GiveUp,
}

impl Pump {
    async fn run(mut self, first: ReplyEvent) {
        metrics::gauge!("chatrelay_active_streams").increment(1.0);
        let role = json!({"role": "assistant", "content": "", "refusal": null});
        let mut ok = self.send(self.meta.delta(role, None)).await;
        let mut next = Some(first);
        while ok {
            let event = match next.take() {
                Some(e) => Some(e),
                None => match self.next_step().await {
                    Step::Event(e) => e,
                    Step::Wait => continue,
                    Step::GiveUp => {
                        self.send(ApiError::shutting_down(self.meta.lang).body())
                            .await;
                        break;
                    }
                },
            };
            ok = match event {
                Some(ReplyEvent::Delta(d)) => {
                    self.streamed = true;
                    self.send(self.meta.delta(json!({"content": d}), None))
                        .await
                }
                Some(ReplyEvent::Final {
                    usage,
                    text,
                    charged,
                    ..
                }) => {
                    self.finish(text, usage, charged).await;
                    false
                }
                Some(ReplyEvent::Failed { kind, message }) => {
                    let lang = self.meta.lang;
                    let err = if self.stopping.is_some() && kind == FailureKind::Unavailable {
                        ApiError::shutting_down(lang)
                    } else {
                        ApiError::from_failure(lang, kind, message)
                    };
                    self.send(err.body()).await;
                    false
                }
                None => {
                    let err = interrupted(self.stopping.is_some(), self.meta.lang);
                    self.send(err.body()).await;
                    false
                }
            };
        }
        metrics::gauge!("chatrelay_active_streams").decrement(1.0);
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

    /// The last events: a one-piece answer's text, the stop chunk, usage, `[DONE]`.
    async fn finish(&mut self, text: String, usage: Option<Usage>, charged: u64) {
        if !self.streamed
            && !text.is_empty()
            && !self
                .send(self.meta.delta(json!({"content": text}), None))
                .await
        {
            // A one-piece answer (a picture) that never left.
            let r = &self.reply;
            r.engine.refund_undelivered(r.uid, &r.reference, charged);
            return;
        }
        self.send(self.meta.delta(json!({}), Some("stop"))).await;
        if self.include_usage {
            let usage = usage.unwrap_or_default();
            self.send(self.meta.chunk(json!([]), Some(&usage))).await;
        }
        let _ = self.tx.send(Event::default().data("[DONE]")).await;
    }

    /// Sends one JSON event; false when the reader has gone.
    async fn send(&self, v: Value) -> bool {
        self.tx
            .send(Event::default().data(v.to_string()))
            .await
            .is_ok()
    }
}
