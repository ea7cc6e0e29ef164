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

/// How many flushes ran and how many requests they answered, since start (all databases
/// of the process): their ratio is how well flushes are grouped.
static FLUSHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `(flushes run, requests answered)` since the process started.
#[must_use]
pub fn flush_counts() -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (FLUSHES.load(Relaxed), REQUESTS.load(Relaxed))
}

/// Group commit: one thread per open database runs the flushes for every caller. Requests
/// that arrive while a flush runs wait for the next one, which covers all of them (each
/// request's writes were made before it was sent), so N concurrent callers cost one flush
/// each round instead of N.
pub(crate) struct GroupFlusher {
    /// `None` only while dropping.
    queue: std::sync::Mutex<Option<std::sync::mpsc::Sender<FlushSender>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for GroupFlusher {
    /// Ends the thread and waits for it: it holds the database open, and whoever closes the
    /// store may open it again at once (the file lock would refuse).
    fn drop(&mut self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl GroupFlusher {
    /// Starts the flush thread for `db`; `None` if no thread can be had (callers then flush
    /// on a thread of their own, as before). The thread ends when this is dropped.
    pub(crate) fn start(db: sled::Db) -> Option<GroupFlusher> {
        let (tx, rx) = std::sync::mpsc::channel::<FlushSender>();
        let thread = std::thread::Builder::new()
            .name("chatrelay-flush".into())
            .spawn(move || run(&db, &rx))
            .ok()?;
        Some(GroupFlusher {
            queue: std::sync::Mutex::new(Some(tx)),
            thread: Some(thread),
        })
    }

    /// Asks for a flush of everything written so far; the receiver resolves when it is done.
    /// `None` when the thread is gone.
    pub(crate) fn request(&self) -> Option<FlushReceiver> {
        let (tx, rx) = channel();
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        // A dead thread: the caller flushes by itself.
        queue.as_ref()?.send(tx).ok().map(|()| rx)
    }
}

fn run(db: &sled::Db, rx: &std::sync::mpsc::Receiver<FlushSender>) {
    use std::sync::atomic::Ordering::Relaxed;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let result = db.flush().map(|_| ()).map_err(StoreError::from);
        FLUSHES.fetch_add(1, Relaxed);
        REQUESTS.fetch_add(batch.len() as u64, Relaxed);
        for waiter in batch {
            waiter.send(match &result {
                Ok(()) => Ok(()),
                Err(StoreError::Sled(e)) => Err(StoreError::Sled(e.clone())),
                Err(e) => Err(StoreError::Backend(e.to_string())),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::Store;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_flushes_all_complete_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        let (flushes_before, requests_before) = super::flush_counts();
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store.create_user(&format!("u{i}")).unwrap();
                    store.flush().await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let (flushes, requests) = super::flush_counts();
        // Other tests flush too: only the lower bounds are ours.
        assert!(requests - requests_before >= 40);
        assert!(flushes - flushes_before >= 1);
        assert!(flushes <= requests, "a flush answers at least one request");
        drop(store);
        // Every user written before its flush answered is on disk.
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        assert_eq!(store.user_count(), 40);
    }
}
