//! Steps: a piece of store work (an async block of [`Store`] calls) run as one unit, on the
//! sled write lane when the engine has one, so that the engine's logic is written once, as
//! async code over [`Store`], and still costs one lane hop per step on sled.
//!
//! On the key-value engine every [`Store`] method completes without waiting (the sled call
//! runs inline), so the whole step can be polled to its end on the lane's thread by the
//! small executor below ([`run_to_end`]); the step keeps the lane's benefits (off the async
//! workers, no contention on sled's lock, one grouped flush per round). On the relational
//! engine the step is simply awaited where it is: its statements wait on the network, not on
//! a lock, and tokio-postgres needs no thread of its own.
//!
//! A step must only await [`Store`] calls that finish on their own, never [`Store::flush`]
//! (on sled that waits for the lane the step is running on: use [`Store::step_durable`]),
//! nor tokio's timers or tasks (the lane thread has no runtime).

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use super::{Engine, Store};
use crate::StoreError;

impl Store {
    /// Runs `step` as one unit of store work: on sled, on the database's write lane (one hop,
    /// see [`crate::KvStore::on_lane`]); on PostgreSQL, awaited here. `None` when it never
    /// ran (the store or the runtime is shutting down); a panic in `step` is passed on.
    pub async fn step<R, F>(&self, step: F) -> Option<R>
    where
        R: Send + 'static,
        F: Future<Output = R> + Send + 'static,
    {
        match &self.engine {
            Engine::Kv(kv) => kv.on_lane(move || run_to_end(step)).await,
            Engine::Rel(_) => Some(step.await),
        }
    }

    /// [`Store::step`], then waits until what it wrote is durable: on sled, the flush that
    /// ends its lane round (shared with every step of the round, as
    /// [`crate::KvStore::on_lane_durable`]); on PostgreSQL its commits already are. The second
    /// value is that flush's outcome.
    pub async fn step_durable<R, F>(&self, step: F) -> Option<(R, Result<(), StoreError>)>
    where
        R: Send + 'static,
        F: Future<Output = R> + Send + 'static,
    {
        match &self.engine {
            Engine::Kv(kv) => kv.on_lane_durable(move || run_to_end(step)).await,
            Engine::Rel(_) => Some((step.await, Ok(()))),
        }
    }
}

/// Wakes the thread that polls a step.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `f` to its end on this thread, parking between polls. Not `futures::executor::
/// block_on`: that one refuses to run inside another of its kind, and the older one-table
/// PostgreSQL layout waits on its driver with it from inside store calls.
fn run_to_end<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(r) = f.as_mut().poll(&mut cx) {
            return r;
        }
        // A wake between the poll and here leaves the token set: park returns at once.
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::run_to_end;
    use crate::{Admission, Store};

    #[test]
    fn the_executor_runs_a_future_that_waits_on_another_thread() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            tx.send(41).unwrap();
        });
        assert_eq!(run_to_end(async { rx.await.unwrap() + 1 }), 42);
        sender.join().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_step_runs_on_the_lane_in_order_with_its_store_calls() {
        // sled whatever the environment (`open_temporary` is PostgreSQL when tests have one).
        let sled = crate::kv::Db::Sled(sled::Config::new().temporary(true).open().unwrap());
        let store = Store::from(crate::KvStore::from_db(sled, None, 0).unwrap());
        let key: chatrelay_core::UserKey = "mp:main:o1".parse().unwrap();
        let s = store.clone();
        let k = key.clone();
        let (uid, thread) = store
            .step(async move {
                let Admission::New(uid) = s.admit(&k, Some("Ann"), "m1", 10_000, 1).await.unwrap()
                else {
                    panic!("a first message seen");
                };
                // Reads in the same step see its writes.
                assert_eq!(s.identity(&k).await.unwrap(), Some(uid));
                (uid, std::thread::current().name().map(str::to_owned))
            })
            .await
            .expect("ran");
        // It ran on the lane's thread. (Not the lane's job counter: the lane adds a round's
        // jobs after answering them, so a caller may see its answer first.)
        assert_eq!(thread.as_deref(), Some("chatrelay-lane"));
        assert_eq!(store.identity(&key).await.unwrap(), Some(uid));
        // A step's panic reaches its caller; the lane goes on.
        let s = store.clone();
        let panicked = tokio::spawn(async move { s.step(async { panic!("a step failed") }).await })
            .await
            .unwrap_err();
        assert!(panicked.is_panic());
        assert_eq!(store.step(async { 7 }).await, Some(7));
    }

    /// On PostgreSQL (when `CHATRELAY_TEST_PG_URL` is set) a step is awaited where it is,
    /// on the caller's task, and its writes are there when it answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_the_relational_engine_a_step_is_awaited_in_place() {
        let Some(opts) = crate::test_pg_options() else {
            return;
        };
        let store = Store::open_postgres(&opts).await.unwrap();
        let key: chatrelay_core::UserKey = "mp:main:o2".parse().unwrap();
        let s = store.clone();
        let k = key.clone();
        let ((uid, thread), flushed) = store
            .step_durable(async move {
                let Admission::New(uid) = s.admit(&k, None, "m1", 10_000, 1).await.unwrap() else {
                    panic!("a first message seen");
                };
                (uid, std::thread::current().name().map(str::to_owned))
            })
            .await
            .expect("ran");
        flushed.unwrap();
        assert_ne!(thread.as_deref(), Some("chatrelay-lane"));
        assert_eq!(store.identity(&key).await.unwrap(), Some(uid));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn durable_steps_are_on_disk_when_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let s = store.clone();
                    store
                        .step_durable(async move { s.create_user(&format!("u{i}")).await })
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
            crate::open::retry_locked(|| Store::open(&dir.path().join("db"), 8 << 20)).unwrap();
        assert_eq!(store.user_count().await.unwrap(), 32);
    }
}
