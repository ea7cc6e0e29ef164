//! Hands the result of a flush from the thread that runs it to the future that waits for it
//! (see [`crate::Store::flush`] for why flushes run on their own thread).

use std::sync::Arc;

use crate::StoreError;

/// The result of one flush, handed from its thread to the waiting future.
struct FlushSlot {
    value: Option<Result<(), StoreError>>,
    waker: Option<std::task::Waker>,
}

type Shared = Arc<std::sync::Mutex<FlushSlot>>;

fn lock_slot(shared: &Shared) -> std::sync::MutexGuard<'_, FlushSlot> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn channel() -> (FlushSender, FlushReceiver) {
    let shared = Arc::new(std::sync::Mutex::new(FlushSlot {
        value: None,
        waker: None,
    }));
    (FlushSender(Some(shared.clone())), FlushReceiver(shared))
}

pub(crate) struct FlushSender(Option<Shared>);

impl FlushSender {
    pub(crate) fn send(mut self, value: Result<(), StoreError>) {
        if let Some(shared) = self.0.take() {
            deliver(&shared, value);
        }
    }
}

impl Drop for FlushSender {
    fn drop(&mut self) {
        // The flush thread died without an answer: say so instead of waiting forever.
        if let Some(shared) = self.0.take() {
            deliver(
                &shared,
                Err(StoreError::Sled(sled::Error::ReportableBug(
                    "the flush thread stopped without an answer".into(),
                ))),
            );
        }
    }
}

fn deliver(shared: &Shared, value: Result<(), StoreError>) {
    let waker = {
        let mut slot = lock_slot(shared);
        slot.value = Some(value);
        slot.waker.take()
    };
    if let Some(w) = waker {
        w.wake();
    }
}

pub(crate) struct FlushReceiver(Shared);

impl std::future::Future for FlushReceiver {
    type Output = Result<(), StoreError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let mut slot = lock_slot(&self.0);
        match slot.value.take() {
            Some(v) => std::task::Poll::Ready(v),
            None => {
                slot.waker = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    }
}
