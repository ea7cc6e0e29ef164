//! [`ChatStream`]: turns the body of a streaming chat completion into typed
//! [`ChatChunk`]s.
//!
//! The per-event interpretation ([`interpret`]) is pure; the stream around it
//! only pulls bytes, enforces the idle timeout and stops after the first
//! terminal item. No retries happen here: once chunks may have reached the
//! user, repeating the request would duplicate text (and cost), so a broken
//! stream is reported and the caller decides.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use crate::error::{Error, api_error_from_json, truncate_lossy};
use crate::sse::{SseEvent, SseParser};
use crate::types::ChatChunk;

/// The chunks of one streaming chat completion.
///
/// Yields `Ok(chunk)` for each `data:` event and ends (`None`) after
/// `data: [DONE]`. On failure it yields exactly one `Err` and then ends:
/// [`Error::Api`] (status 0) for an error object inside the stream,
/// [`Error::Incomplete`] when the connection ends or breaks before `[DONE]`,
/// [`Error::Timeout`] `{ what: "idle" }` when no bytes arrive for the idle
/// timeout, and [`Error::Decode`] for a chunk that is not valid JSON.
/// Comments and events with other names than `message` are skipped unless
/// they carry an error.
pub struct ChatStream {
    request_id: Option<String>,
    inner: Pin<Box<dyn Stream<Item = Result<ChatChunk, Error>> + Send>>,
}

impl fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatStream")
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

impl ChatStream {
    /// Wraps any byte stream (the HTTP body in production, a list of chunks
    /// in tests).
    pub(crate) fn from_bytes<S, E>(
        body: S,
        idle_timeout: Duration,
        request_id: Option<String>,
    ) -> Self
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
        E: fmt::Display + Send + 'static,
    {
        let state = State {
            body,
            parser: SseParser::new(),
            queue: VecDeque::new(),
            idle_timeout,
            request_id: request_id.clone(),
            finished: false,
        };
        let inner = futures_util::stream::unfold(state, |mut state| async move {
            let item = state.next_item().await?;
            Some((item, state))
        });
        Self {
            request_id,
            inner: Box::pin(inner),
        }
    }

    /// The `x-request-id` header of the response, to quote in bug reports.
    #[must_use]
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }
}

impl Stream for ChatStream {
    type Item = Result<ChatChunk, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

struct State<S> {
    body: S,
    parser: SseParser,
    /// Events parsed from the last chunk but not yet handed out.
    queue: VecDeque<SseEvent>,
    idle_timeout: Duration,
    request_id: Option<String>,
    /// A terminal item was produced; the next poll ends the stream (which
    /// drops the body and so frees the connection).
    finished: bool,
}

impl<S, E> State<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: fmt::Display,
{
    async fn next_item(&mut self) -> Option<Result<ChatChunk, Error>> {
        loop {
            if self.finished {
                return None;
            }
            if let Some(event) = self.queue.pop_front() {
                match interpret(&event, self.request_id.as_deref()) {
                    Step::Skip => continue,
                    Step::Chunk(chunk) => return Some(Ok(*chunk)),
                    Step::Done => {
                        tracing::debug!(request_id = ?self.request_id, "chat stream finished");
                        self.finished = true;
                        return None;
                    }
                    Step::Fail(err) => return self.fail(err),
                }
            }
            match tokio::time::timeout(self.idle_timeout, self.body.next()).await {
                Err(_) => return self.fail(Error::Timeout { what: "idle" }),
                Ok(None) => {
                    // Whatever is still buffered is an unterminated event.
                    self.parser.finish();
                    return self.fail(Error::Incomplete);
                }
                Ok(Some(Err(e))) => {
                    // A reset mid-body: from the reader's point of view the
                    // answer is cut short, whatever the transport reason.
                    tracing::warn!(request_id = ?self.request_id, error = %e, "chat stream broke");
                    return self.fail(Error::Incomplete);
                }
                Ok(Some(Ok(bytes))) => {
                    self.queue.extend(self.parser.push(&bytes));
                    if self.parser.take_dropped() > 0 {
                        let limit = self.parser.max_event_bytes();
                        return self.fail(Error::decode(
                            format!("an event of the stream is larger than {limit} bytes"),
                            &bytes,
                        ));
                    }
                }
            }
        }
    }

    fn fail(&mut self, err: Error) -> Option<Result<ChatChunk, Error>> {
        tracing::debug!(request_id = ?self.request_id, error = %err, "chat stream failed");
        self.finished = true;
        Some(Err(err))
    }
}

/// What one SSE event means for the chat stream.
#[derive(Debug)]
pub(crate) enum Step {
    /// Nothing to yield (comment-only event, keep-alive, unknown event).
    Skip,
    /// A chunk to hand to the caller (boxed: it is much larger than the
    /// other variants).
    Chunk(Box<ChatChunk>),
    /// `data: [DONE]`: the stream is complete.
    Done,
    /// A terminal error.
    Fail(Error),
}

/// Interprets one event as openai-python's `Stream.__stream__` does.
pub(crate) fn interpret(event: &SseEvent, request_id: Option<&str>) -> Step {
    let data = event.data.as_str();
    match event.event.as_deref() {
        None | Some("message") => {
            if data.starts_with("[DONE]") {
                return Step::Done;
            }
            if data.trim().is_empty() {
                return Step::Skip;
            }
            let value: Value = match serde_json::from_str(data) {
                Ok(v) => v,
                Err(e) => {
                    return Step::Fail(Error::decode(
                        format!("stream chunk is not JSON: {e}"),
                        data.as_bytes(),
                    ));
                }
            };
            if let Some(err) = api_error_from_json(0, &value, request_id.map(str::to_owned)) {
                return Step::Fail(err);
            }
            match serde_json::from_value::<ChatChunk>(value) {
                Ok(chunk) => Step::Chunk(Box::new(chunk)),
                Err(e) => Step::Fail(Error::decode(
                    format!("stream chunk is not a chat.completion.chunk: {e}"),
                    data.as_bytes(),
                )),
            }
        }
        Some(name) => {
            if let Ok(value) = serde_json::from_str::<Value>(data)
                && let Some(err) = api_error_from_json(0, &value, request_id.map(str::to_owned))
            {
                return Step::Fail(err);
            }
            if name == "error" && !data.trim().is_empty() {
                // A plain-text error event: still an error, with its text.
                return Step::Fail(Error::Api {
                    status: 0,
                    kind: None,
                    code: None,
                    message: truncate_lossy(data.as_bytes(), 300),
                    request_id: request_id.map(str::to_owned),
                });
            }
            Step::Skip
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
            id: None,
        }
    }

    const CHUNK: &str = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#;

    #[test]
    fn interpret_chunks_done_and_errors() {
        assert!(
            matches!(interpret(&ev(None, CHUNK), None), Step::Chunk(c) if c.content() == Some("hi"))
        );
        assert!(matches!(
            interpret(&ev(Some("message"), CHUNK), None),
            Step::Chunk(_)
        ));
        assert!(matches!(interpret(&ev(None, "[DONE]"), None), Step::Done));
        assert!(matches!(interpret(&ev(None, ""), None), Step::Skip));
        assert!(matches!(interpret(&ev(Some("ping"), ""), None), Step::Skip));
        assert!(matches!(
            interpret(&ev(Some("ping"), CHUNK), None),
            Step::Skip
        ));
        assert!(matches!(
            interpret(&ev(None, "{not json"), None),
            Step::Fail(Error::Decode { raw, .. }) if raw == "{not json"
        ));
        assert!(matches!(
            interpret(&ev(None, r#"{"choices":"nope"}"#), None),
            Step::Fail(Error::Decode { .. })
        ));
        let err = r#"{"error":{"message":"boom","type":"server_error","code":"x"}}"#;
        assert!(matches!(
            interpret(&ev(None, err), Some("req")),
            Step::Fail(Error::Api { status: 0, ref message, ref request_id, .. })
                if message == "boom" && request_id.as_deref() == Some("req")
        ));
        assert!(matches!(
            interpret(&ev(Some("error"), err), None),
            Step::Fail(Error::Api { .. })
        ));
        assert!(matches!(
            interpret(&ev(Some("error"), "overloaded"), None),
            Step::Fail(Error::Api { ref message, .. }) if message == "overloaded"
        ));
    }

    fn from_chunks(chunks: Vec<&'static str>) -> ChatStream {
        let body = stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::convert::Infallible>(Bytes::from_static(c.as_bytes()))),
        );
        ChatStream::from_bytes(body, Duration::from_secs(5), Some("rid".into()))
    }

    async fn collect(s: ChatStream) -> Vec<Result<ChatChunk, Error>> {
        s.collect().await
    }

    #[tokio::test]
    async fn stream_ends_after_done_and_ignores_the_rest() {
        let s = from_chunks(vec![
            ": keep-alive\n\n",
            "data: ",
            &CHUNK_LINE[6..],
            "data: [DONE]\n\n",
            "data: {garbage after done}\n\n",
        ]);
        assert_eq!(s.request_id(), Some("rid"));
        let items = collect(s).await;
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].as_ref().unwrap().content(), Some("hi"));
    }

    const CHUNK_LINE: &str = concat!(
        "data: ",
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#,
        "\n\n"
    );

    #[tokio::test]
    async fn missing_done_is_incomplete() {
        let items = collect(from_chunks(vec![CHUNK_LINE, "data: [DONE]"])).await;
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert_eq!(items[1], Err(Error::Incomplete));
    }

    #[tokio::test]
    async fn body_error_is_incomplete_and_ends() {
        let body = stream::iter(vec![
            Ok(Bytes::from_static(CHUNK_LINE.as_bytes())),
            Err("connection reset"),
            Ok(Bytes::from_static(b"data: [DONE]\n\n")),
        ]);
        let items = collect(ChatStream::from_bytes(body, Duration::from_secs(5), None)).await;
        assert_eq!(items.len(), 2);
        assert_eq!(items[1], Err(Error::Incomplete));
    }

    #[tokio::test]
    async fn error_event_ends_the_stream() {
        let items = collect(from_chunks(vec![
            CHUNK_LINE,
            "data: {\"error\":{\"message\":\"overloaded\"}}\n\n",
            CHUNK_LINE,
            "data: [DONE]\n\n",
        ]))
        .await;
        assert_eq!(items.len(), 2);
        assert!(matches!(&items[1], Err(Error::Api { status: 0, .. })));
    }

    #[tokio::test]
    async fn bad_json_is_decode_error() {
        let items = collect(from_chunks(vec!["data: {oops\n\n", "data: [DONE]\n\n"])).await;
        assert_eq!(items.len(), 1);
        assert!(matches!(&items[0], Err(Error::Decode { .. })));
    }

    #[tokio::test]
    async fn idle_timeout() {
        let body = stream::iter(vec![Ok::<_, std::convert::Infallible>(Bytes::from_static(
            CHUNK_LINE.as_bytes(),
        ))])
        .chain(stream::pending());
        let s = ChatStream::from_bytes(body, Duration::from_millis(100), None);
        let started = std::time::Instant::now();
        let items = collect(s).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(items.len(), 2);
        assert_eq!(items[1], Err(Error::Timeout { what: "idle" }));
    }

    #[test]
    fn chat_stream_is_send_unpin_static() {
        fn check<T: Stream + Send + Unpin + 'static>() {}
        check::<ChatStream>();
    }
}
