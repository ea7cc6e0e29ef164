//! Quota reserve + settle throughput: `USERS` threads (one user each) reserve and settle
//! as fast as they can for `SECS` seconds on one store, then the ledger is audited against
//! the balances. Baseline in the same run: the same threads doing plain `sled` inserts of the
//! same size into one tree (what the disk layer costs without transactions).
//!
//! Usage: `quota_bench [USERS] [SECS] [DIR]` (default 64 5, a temporary directory). With a
//! `DIR` holding a store already (from `gen_store`), its users are reused.
//!
//! Prints `key=value` lines.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chatrelay_storage::{EntryKind, Store, Uid};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let users: usize = args.first().map_or(Ok(64), |a| a.parse())?;
    let secs: u64 = args.get(1).map_or(Ok(5), |a| a.parse())?;
    let tmp = tempfile::tempdir()?;
    let dir = args
        .get(2)
        .map_or_else(|| tmp.path().join("db"), std::path::PathBuf::from);
    let store = Store::open(&dir, 64 * 1024 * 1024)?;

    // Baseline: plain inserts, same threads, same duration.
    let raw = sled::open(tmp.path().join("raw"))?;
    let raw_tree = raw.open_tree("t")?;
    let base = run(users, secs, move |t, i| {
        let key = format!("{t:04}:{i:012}");
        raw_tree
            .insert(key.as_bytes(), vec![7u8; 96])
            .map(|_| ())
            .map_err(|e| e.to_string())
    });

    let mut uids = Vec::with_capacity(users);
    for t in 0..users {
        let u = store.create_user(&format!("bench-{t}"))?;
        store.grant(
            u.uid,
            1_000_000_000,
            EntryKind::Grant,
            "bench",
            &format!("bench-grant-{}", u.uid),
            0,
        )?;
        uids.push(u.uid);
    }
    let uids = Arc::new(uids);
    let run_id = std::process::id();
    let store2 = store.clone();
    let ops = run(users, secs, move |t, i| {
        let uid: Uid = uids[t];
        let reference = format!("bench:{run_id}:{t}:{i}");
        let id = store2
            .reserve(uid, 5, &reference, 20_000, 0, i64::MAX)
            .map_err(|e| e.to_string())?;
        store2
            .settle(id, 3, "bench answer", 20_000, 0, 0)
            .map_err(|e| e.to_string())?;
        Ok(())
    });
    let started = Instant::now();
    let audit = store.audit()?;
    println!("users={users} secs={secs}");
    println!("baseline_sled_inserts_per_sec={:.0}", base);
    println!("reserve_settle_per_sec={:.0}", ops);
    println!("ratio_over_baseline={:.3}", ops / base);
    println!(
        "audit_ms={} ledger_entries={} consistent={}",
        started.elapsed().as_millis(),
        audit.ledger_entries,
        audit.is_consistent()
    );
    if !audit.is_consistent() {
        return Err("the ledger does not sum to the balances".into());
    }
    Ok(())
}

/// Runs `op(thread, i)` on `threads` threads for `secs`; returns operations per second.
fn run<F>(threads: usize, secs: u64, op: F) -> f64
where
    F: Fn(usize, u64) -> Result<(), String> + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (op, stop, done) = (op.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = op(t, i) {
                        eprintln!("operation failed: {e}");
                        std::process::exit(1);
                    }
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}
