//! The write lane of a sled database: one thread that runs the daemon's store steps one after
//! another and, between rounds of them, the flushes they wait for (group commit), and the
//! hand-over of each result to the future that waits for it; [`crate::KvStore::on_lane`] and
//! [`crate::KvStore::on_lane_durable`] are the way in.
//!
//! Why one thread: sled 0.34 runs every transaction under a process-wide lock (the write side
//! of its concurrency control) and holds the read side of that lock for the whole of a flush,
//! fsync included. Steps run from many threads therefore queue behind each flush, spinning on
//! the lock (`sched_yield`), and the flush itself waits behind them: at 64 concurrent messages
//! the store managed ~2.7 messages per fsync and the daemon spent its time switching threads
//! (profile in BENCHMARKS.md, issue 21). On one lane, a round runs every step that arrived
//! while the previous flush ran, back to back and without contention, then one flush covers
//! them all.

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

/// Steps run on lanes, and the time spent running them and flushing (ns), since start.
static JOBS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static JOB_NANOS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static FLUSH_NANOS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How busy the write lanes were since the process started: steps run, seconds spent running
/// them, seconds spent in flushes. Busy time over wall time near 1 means the lane is the
/// bottleneck; a small share means steps wait elsewhere.
#[must_use]
pub fn lane_counts() -> (u64, f64, f64) {
    use std::sync::atomic::Ordering::Relaxed;
    (
        JOBS.load(Relaxed),
        JOB_NANOS.load(Relaxed) as f64 / 1e9,
        FLUSH_NANOS.load(Relaxed) as f64 / 1e9,
    )
}

/// `(flushes run, requests answered)` since the process started.
#[must_use]
pub fn flush_counts() -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (FLUSHES.load(Relaxed), REQUESTS.load(Relaxed))
}

impl crate::KvStore {
    /// Runs `f`, work on the store, off the async workers, so that a slow disk delays that
    /// work and not every connection: on the database's write lane with sled (one thread
    /// that runs steps back to back between group flushes; see `lane.rs` for why), on
    /// tokio's blocking pool with PostgreSQL (whose steps wait on the network, not on one
    /// lock). `f` must not wait for other lane work. `None` when it never ran (the store or
    /// the runtime is shutting down); a panic in `f` is passed on.
    pub async fn on_lane<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        self.on_lane_inner(f, false).await.map(|(r, _)| r)
    }

    /// [`crate::KvStore::on_lane`], then waits until what `f` wrote is on disk (the flush that ends
    /// its round, shared with every step of that round). The second value is that flush's
    /// outcome.
    pub async fn on_lane_durable<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Option<(R, Result<(), StoreError>)> {
        self.on_lane_inner(f, true).await
    }

    async fn on_lane_inner<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
        durable: bool,
    ) -> Option<(R, Result<(), StoreError>)> {
        let open = self.trees().ok().filter(|open| open.lane.is_some());
        let lane_and_db = open.as_ref().and_then(|open| match (&open.lane, &open.db) {
            (Some(lane), crate::Db::Sled(db)) => Some((lane, db)),
            _ => None,
        });
        let Some((lane, db)) = lane_and_db else {
            drop(open);
            // PostgreSQL (or a lane that could not start): the blocking pool.
            let r = match tokio::task::spawn_blocking(f).await {
                Ok(r) => r,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => return None,
            };
            let flushed = if durable { self.flush().await } else { Ok(()) };
            return Some((r, flushed));
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        });
        // The flush request follows the job in the lane's queue, so it is answered by a
        // flush that began after the job ran.
        let ran = lane.run(job);
        let flushed = if durable && ran {
            lane.request_flush(db)
        } else {
            None
        };
        // Not held across the wait: a reopen after a storage failure waits for it.
        drop(open);
        let r = match rx.await {
            Ok(Ok(r)) => r,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // Dropped unrun: the store is closing.
            Err(_) => return None,
        };
        let flushed = match flushed {
            Some(rx) => rx.await,
            None if durable => self.flush().await,
            None => Ok(()),
        };
        Some((r, flushed))
    }
}

/// A step for the lane: any work on the store, run on the lane's thread.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// What the lane is asked to do.
enum Work {
    /// Run a step.
    Job(Job),
    /// Answer once everything run so far is on disk. The request brings the database: the
    /// lane holds it only while it flushes, so closing the store closes the file.
    Flush(sled::Db, FlushSender),
}

/// At most this many requests form one round: under a steady stream of steps, a flush still
/// comes after every round.
const MAX_ROUND: usize = 512;

/// Group commit on one thread per open database: steps run in the order they arrive; a flush
/// request is answered by the flush that ends the round it arrived in, which covers every
/// step run before it. N concurrent messages cost one flush per round instead of N, and the
/// steps never contend for sled's lock.
pub(crate) struct Lane {
    /// `None` only while dropping.
    queue: std::sync::Mutex<Option<std::sync::mpsc::Sender<Work>>>,
}

impl Drop for Lane {
    /// Ends the thread once the steps already queued have run, without waiting for it: a
    /// queued step may itself wait for whoever drops the lane (a reopen holds the store's
    /// locks while it closes the old database), and the thread holds no database between
    /// flushes, so nothing keeps the file open.
    fn drop(&mut self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

impl Lane {
    /// Starts a lane's thread; `None` if no thread can be had (callers then run their steps
    /// on tokio's blocking pool and flush on a thread of their own, as before). The thread
    /// ends when this is dropped and its queue is empty.
    pub(crate) fn start() -> Option<Lane> {
        let (tx, rx) = std::sync::mpsc::channel::<Work>();
        std::thread::Builder::new()
            .name("chatrelay-lane".into())
            .spawn(move || run(&rx))
            .ok()?;
        Some(Lane {
            queue: std::sync::Mutex::new(Some(tx)),
        })
    }

    /// Asks for a flush of everything written to `db` so far; the receiver resolves when it
    /// is done. `None` when the thread is gone.
    pub(crate) fn request_flush(&self, db: &sled::Db) -> Option<FlushReceiver> {
        let (tx, rx) = channel();
        self.send(Work::Flush(db.clone(), tx)).map(|()| rx)
    }

    /// Queues `job`; false when the thread is gone (the store is closing), and the job, dropped
    /// unrun, tells its waiter so.
    pub(crate) fn run(&self, job: Job) -> bool {
        self.send(Work::Job(job)).is_some()
    }

    fn send(&self, work: Work) -> Option<()> {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.as_ref()?.send(work).ok()
    }
}

fn nanos_since(t: std::time::Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn run(rx: &std::sync::mpsc::Receiver<Work>) {
    use std::sync::atomic::Ordering::Relaxed;
    while let Ok(first) = rx.recv() {
        let mut waiting = Vec::new();
        // Every flush request of a lane brings the same database (the one its store opened).
        let mut db = None;
        let mut next = Some(first);
        let mut taken = 0;
        let started = std::time::Instant::now();
        let mut jobs = 0;
        while let Some(work) = next {
            match work {
                // A panicking step must not end the lane: its waiter learns of the panic
                // from the job's own wrapper (see `KvStore::on_lane`).
                Work::Job(job) => {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    jobs += 1;
                }
                Work::Flush(of, tx) => {
                    db = Some(of);
                    waiting.push(tx);
                }
            }
            taken += 1;
            next = if taken < MAX_ROUND {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        JOBS.fetch_add(jobs, Relaxed);
        JOB_NANOS.fetch_add(nanos_since(started), Relaxed);
        let Some(db) = db.take() else {
            continue;
        };
        let flush_started = std::time::Instant::now();
        let result = db.flush().map(|_| ()).map_err(StoreError::from);
        drop(db);
        FLUSH_NANOS.fetch_add(nanos_since(flush_started), Relaxed);
        FLUSHES.fetch_add(1, Relaxed);
        REQUESTS.fetch_add(waiting.len() as u64, Relaxed);
        for waiter in waiting {
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
    use crate::KvStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_flushes_all_complete_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = KvStore::open(&dir.path().join("db"), 8 << 20).unwrap();
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
        // sled's flusher thread lets go of the file lock a moment after the last handle.
        let store =
            crate::open::retry_locked(|| KvStore::open(&dir.path().join("db"), 8 << 20)).unwrap();
        assert_eq!(store.user_count(), 40);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn durable_lane_steps_are_on_disk_when_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = KvStore::open(&dir.path().join("db"), 8 << 20).unwrap();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let s = store.clone();
                    store
                        .on_lane_durable(move || s.create_user(&format!("u{i}")).map(|_| ()))
                        .await
                })
            })
            .collect();
        for t in tasks {
            let (created, flushed) = t.await.unwrap().expect("ran");
            created.unwrap();
            flushed.unwrap();
        }
        drop(store);
        let store =
            crate::open::retry_locked(|| KvStore::open(&dir.path().join("db"), 8 << 20)).unwrap();
        assert_eq!(store.user_count(), 64);
    }

    #[tokio::test]
    async fn lane_steps_run_in_order_and_a_panic_reaches_its_caller_only() {
        let store = KvStore::open_temporary().unwrap();
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waits = Vec::new();
        for i in 0..20 {
            let order = order.clone();
            waits.push(store.on_lane(move || order.lock().unwrap().push(i)));
        }
        for w in waits {
            w.await.expect("ran");
        }
        assert_eq!(*order.lock().unwrap(), (0..20).collect::<Vec<_>>());
        let s = store.clone();
        let panicked = tokio::spawn(async move { s.on_lane(|| panic!("a step failed")).await })
            .await
            .unwrap_err();
        assert!(panicked.is_panic());
        // The lane goes on.
        assert_eq!(store.on_lane(|| 7).await, Some(7));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reopen_while_a_step_waits_on_the_lane_does_not_deadlock() {
        let dir = tempfile::tempdir().unwrap();
        let store = KvStore::open(&dir.path().join("db"), 8 << 20).unwrap();
        // A step that starts before the reopen and writes while it runs: it needs the locks
        // the reopen holds while it closes the old database (and its lane).
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let s = store.clone();
        let step = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .on_lane(move || {
                        started_tx.send(()).unwrap();
                        std::thread::sleep(std::time::Duration::from_millis(300));
                        s.create_user("during the reopen").map(|_| ())
                    })
                    .await
            }
        });
        started_rx.recv().unwrap();
        let reopener = store.clone();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || done_tx.send(reopener.recover()).unwrap());
        let reopened = done_rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the reopen deadlocked with the lane");
        reopened.unwrap();
        let written = tokio::time::timeout(std::time::Duration::from_secs(20), step)
            .await
            .expect("the step never finished")
            .unwrap();
        written.expect("ran").unwrap();
        // The lane of the reopened database works.
        let s = store.clone();
        let (created, flushed) = store
            .on_lane_durable(move || s.create_user("after").map(|_| ()))
            .await
            .unwrap();
        created.unwrap();
        flushed.unwrap();
        assert_eq!(store.user_count(), 2);
    }
}
