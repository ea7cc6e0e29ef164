//! The listener's limits on each request (the `[server]` keys): the request target's length
//! (`414`), requests in flight (`503` with `Retry-After`; health and metrics are exempt so a
//! saturated daemon can still be watched), and the request timeout (`408`), which covers
//! reading the request body on every route and the whole answer except on routes that
//! stream or are bounded by their own timeouts (`/v1/chat/completions`: the LLM's; and
//! `/admin/backup`). Header size and count are limited by hyper itself, per connection, in
//! [`crate::app`]'s accept loop (`431`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, SizeHint};
use serde_json::json;
use tokio::time::Sleep;

use crate::reload::Live;

/// Seconds a client is asked to wait after a `503` for too many requests.
const RETRY_AFTER_SECS: u64 = 2;

/// What the limits middleware needs: the live configuration and the requests in flight.
#[derive(Clone)]
pub struct Limits {
    live: Live,
    inflight: Arc<AtomicUsize>,
}

impl Limits {
    /// Limits read from `live`'s `[server]` section on every request (so a reload applies).
    #[must_use]
    pub fn new(live: Live) -> Self {
        Self {
            live,
            inflight: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// Routes never refused for load: a saturated daemon must still say how it is.
fn is_health(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Routes whose answer may take longer than the request timeout: streams, and work bounded
/// by its own timeouts. Their request body is still read under the timeout.
fn is_long_running(path: &str) -> bool {
    matches!(path, "/v1/chat/completions" | "/admin/backup")
        || (path.starts_with("/api/conversations/") && path.ends_with("/messages"))
}

/// An error in the shape both the web API (`code`, `message`) and OpenAI clients (`type`,
/// `message`, `code`) read.
fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": kind, "code": code, "param": null}})),
    )
        .into_response()
}

/// A slot among the requests in flight, given back when the answer's body is done.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(counter: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        let previous = counter.fetch_add(1, Ordering::AcqRel);
        if previous >= max {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        metrics::gauge!("chatrelay_http_inflight").set((previous + 1) as f64);
        Some(Self(counter.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let left = self.0.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        metrics::gauge!("chatrelay_http_inflight").set(left as f64);
    }
}

/// The middleware (see the module documentation).
pub async fn limit(State(limits): State<Limits>, req: Request, next: Next) -> Response {
    let (max_uri, max_inflight, timeout) = {
        let parts = limits.live.get();
        let s = &parts.config.server;
        (
            s.max_uri_bytes,
            s.max_concurrent_requests,
            Duration::from_secs(s.request_timeout_secs),
        )
    };
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > max_uri {
        return error(
            StatusCode::URI_TOO_LONG,
            "invalid_request_error",
            "uri_too_long",
            &format!("the request target is {uri_len} bytes; at most {max_uri} are accepted"),
        );
    }
    let path = req.uri().path();
    let slot = if is_health(path) {
        None
    } else {
        match Slot::take(&limits.inflight, max_inflight) {
            Some(slot) => Some(slot),
            None => {
                metrics::counter!("chatrelay_http_overloaded_total").increment(1);
                let mut res = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "overloaded",
                    "the server is busy; try again in a moment",
                );
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
                return res;
            }
        }
    };
    let long = is_long_running(path);
    let body_late = Arc::new(AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let body = Body::new(DeadlineBody {
        inner: body,
        deadline: Box::pin(tokio::time::sleep(timeout)),
        late: body_late.clone(),
    });
    let run = next.run(Request::from_parts(parts, body));
    let res = if long {
        run.await
    } else {
        match tokio::time::timeout(timeout, run).await {
            Ok(res) => res,
            Err(_) => {
                metrics::counter!("chatrelay_http_timeouts_total").increment(1);
                return timed_out(timeout);
            }
        }
    };
    if body_late.load(Ordering::Acquire) {
        // The handler saw a failed body and answered for that; the truth is the timeout.
        metrics::counter!("chatrelay_http_timeouts_total").increment(1);
        return timed_out(timeout);
    }
    match slot {
        Some(slot) => res.map(|b| {
            Body::new(SlotBody {
                inner: b,
                _slot: slot,
            })
        }),
        None => res,
    }
}

fn timed_out(timeout: Duration) -> Response {
    let mut res = error(
        StatusCode::REQUEST_TIMEOUT,
        "invalid_request_error",
        "timeout",
        &format!(
            "the request was not read and answered within {} s",
            timeout.as_secs()
        ),
    );
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// A request body that fails once the request's time is up (a client trickling its body
/// holds a slot no longer than the timeout), and says so through `late`.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    late: Arc<AtomicBool>,
}

/// The error a [`DeadlineBody`] ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received in time")]
struct BodyTimeout;

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.late.store(true, Ordering::Release);
                    Poll::Ready(Some(Err(BodyTimeout.into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body holding its request's slot until it is done (a stream counts as in
/// flight for as long as it runs).
struct SlotBody {
    inner: Body,
    _slot: Slot,
}

impl HttpBody for SlotBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_and_given_back() {
        let counter = Arc::new(AtomicUsize::new(0));
        let a = Slot::take(&counter, 2).unwrap();
        let b = Slot::take(&counter, 2).unwrap();
        assert!(Slot::take(&counter, 2).is_none(), "the third is refused");
        assert_eq!(
            counter.load(Ordering::Acquire),
            2,
            "a refusal takes nothing"
        );
        drop(a);
        let c = Slot::take(&counter, 2).unwrap();
        drop((b, c));
        assert_eq!(counter.load(Ordering::Acquire), 0);
    }

    #[test]
    fn exemptions() {
        assert!(is_health("/healthz") && is_health("/metrics") && is_health("/readyz"));
        assert!(!is_health("/api/login"));
        assert!(is_long_running("/v1/chat/completions"));
        assert!(!is_long_running("/wechat/mp/main"));
        assert!(is_long_running("/api/conversations/p_0a1b/messages"));
        assert!(!is_long_running("/api/conversations/w_1"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_body_runs_out_of_time() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let rx = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let late = Arc::new(AtomicBool::new(false));
        let body = Body::new(DeadlineBody {
            inner: Body::from_stream(rx),
            deadline: Box::pin(tokio::time::sleep(Duration::from_secs(30))),
            late: late.clone(),
        });
        tx.send(Ok(Bytes::from_static(b"{"))).await.unwrap();
        let read = tokio::spawn(axum::body::to_bytes(body, 1024));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(read.await.unwrap().is_err());
        assert!(late.load(Ordering::Acquire));
        drop(tx);
    }
}
