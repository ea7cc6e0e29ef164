//! A writer process is killed with SIGKILL at random moments; after each kill the database
//! reopens consistent, every grant the writer reported as flushed is there, and releasing the
//! stale reservations leaves nothing held.
//!
//! The writer is this test binary itself, re-run with `CRASH_WRITER_DIR` set on the ignored
//! test `crash_child_writer`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use chatrelay_core::{Platform, UserKey};
use chatrelay_storage::{EntryKind, KvStore, StoreError, Uid};

const DIR_VAR: &str = "CRASH_WRITER_DIR";
const ROUND_VAR: &str = "CRASH_WRITER_ROUND";
const ROUNDS: u64 = 5;
const FREE_DAILY: u64 = 20;
const USERS: u64 = 3;

/// Runs a future to completion on this thread (sled completes its flush on its own threads).
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn user_key(i: u64) -> UserKey {
    UserKey::new(Platform::Tg, "main", i.to_string())
}

/// The writer: loops reserving, settling, releasing and granting until killed. After each
/// grant is flushed it prints `GRANTED <reference>`.
#[test]
#[ignore = "run by crash_safety_under_sigkill in a child process"]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let round: u64 = std::env::var(ROUND_VAR).unwrap().parse().unwrap();
    let store = KvStore::open(Path::new(&dir), 8 << 20).unwrap();
    let uids: Vec<Uid> = (0..USERS)
        .map(|i| store.resolve_identity(&user_key(i), None).unwrap())
        .collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();

    let started = Instant::now();
    let mut i: u64 = 0;
    // A safety net: never outlive a parent that forgot us.
    while started.elapsed() < Duration::from_secs(30) {
        i += 1;
        let uid = uids[(i % USERS) as usize];
        let today = (i / 200) as i64;
        let reference = format!("r-{round}-{i}");
        match store.reserve(uid, i % 13, &reference, today, FREE_DAILY, 0) {
            Ok(id) => {
                if i.is_multiple_of(5) {
                    store.release(id).unwrap();
                } else if !i.is_multiple_of(7) {
                    // Every seventh reservation stays open: the parent releases it as stale.
                    store
                        .settle(id, i % 17, "answer", today, FREE_DAILY, i as i64)
                        .unwrap();
                }
            }
            Err(StoreError::InsufficientCredits { .. }) => {}
            Err(e) => panic!("reserve: {e}"),
        }
        if i.is_multiple_of(10) {
            let reference = format!("g-{round}-{i}");
            store
                .grant(uid, 3, EntryKind::Grant, "gift", &reference, i as i64)
                .unwrap();
            block_on(store.flush()).unwrap();
            writeln!(out, "GRANTED {reference}").unwrap();
            out.flush().unwrap();
        }
        if i.is_multiple_of(50) {
            let _ = store.debit(
                uid,
                2,
                EntryKind::Adjust,
                "fee",
                &format!("d-{round}-{i}"),
                i as i64,
            );
        }
    }
}

#[test]
fn crash_safety_under_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    let mut total_granted = 0;

    for round in 1..=ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_VAR, dir.path())
            .env(ROUND_VAR, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });

        // Wait until the writer has the database open, then let it run 50–300 ms.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the writer never became ready");
            // libtest's "test crash_child_writer ... " may precede it on the line.
            if line.ends_with("READY") {
                break;
            }
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let run_ms = 50 + seed % 251;
        std::thread::sleep(Duration::from_millis(run_ms));
        child.kill().unwrap(); // SIGKILL on unix
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "the writer should have been killed, not finished"
        );
        reader.join().unwrap();
        let granted: Vec<String> = rx
            .try_iter()
            .filter_map(|line| line.strip_prefix("GRANTED ").map(str::to_owned))
            .collect();
        total_granted += granted.len();

        let store = KvStore::open(dir.path(), 8 << 20).unwrap();
        let report = store.audit().unwrap();
        assert!(
            report.is_consistent(),
            "round {round} after {run_ms} ms: {:#?}",
            report.mismatches
        );
        for reference in &granted {
            let entry = store.ledger_by_reference(reference).unwrap();
            assert!(
                entry.is_some(),
                "round {round}: flushed grant {reference} lost"
            );
        }
        store.release_stale_reservations(i64::MAX).unwrap();
        for i in 0..USERS {
            let uid = store.identity(&user_key(i)).unwrap().unwrap();
            assert_eq!(store.balance(uid, 0, FREE_DAILY).unwrap().held, 0);
        }
        let report = store.audit().unwrap();
        assert!(
            report.is_consistent(),
            "round {round} after release: {:#?}",
            report.mismatches
        );
        assert_eq!((report.open_reservations, report.total_held), (0, 0));
        drop(store);
    }
    assert!(
        total_granted > 0,
        "the writer never got as far as a flushed grant"
    );
}
