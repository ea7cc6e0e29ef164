//! Many flushes at once complete (sled 0.34's own `flush_async` can deadlock under this load:
//! spacejam/sled#1308).

use std::future::Future;
use std::sync::Arc;
use std::sync::mpsc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use chatrelay_storage::{EntryKind, KvStore};

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

#[test]
fn concurrent_flushes_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(&dir.path().join("db"), 8 * 1024 * 1024).unwrap();
    let uid = store.create_user("u").unwrap().uid;
    let (tx, rx) = mpsc::channel();
    for t in 0..64 {
        let store = store.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for i in 0..10 {
                store
                    .grant(uid, 1, EntryKind::Grant, "t", &format!("f-{t}-{i}"), 0)
                    .unwrap();
                block_on(store.flush()).unwrap();
            }
            tx.send(()).unwrap();
        });
    }
    drop(tx);
    for n in 0..64 {
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("only {n} of 64 writers finished: a flush hung"));
    }
    assert_eq!(store.balance(uid, 0, 0).unwrap().paid, 640);
}
