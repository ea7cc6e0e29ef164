//! Quota reserve + settle throughput: `USERS` threads (one user each) reserve and settle
//! as fast as they can for `SECS` seconds on one store, then the ledger is audited against
//! the balances. Baseline in the same run: the same threads doing plain inserts of the same
//! size (what the engine costs without transactions): into one `sled` tree, or with `--pg`
//! single-row autocommit `INSERT`s over a pool of the same size as the store's.
//!
//! Usage: `quota_bench [USERS] [SECS] [DIR] [OPTIONS]` (default 64 5, a temporary
//! directory). With a `DIR` holding a store already (from `gen_store`), its users are reused.
//!
//! Options, for PostgreSQL and for several processes on one database:
//! - `--pg URL`: run on PostgreSQL instead of sled.
//! - `--schema S`: the schema (default: a fresh `bench_<pid>_<time>`, dropped at the end).
//! - `--pool N`: the store's connection pool (default 16, the daemon's default).
//! - `--users-offset K`: thread `t` works for user `api:bench-{K+t}` (created if missing, so
//!   two processes with the same offset share their users, and contend on their balances).
//! - `--barrier DIR`: after setting up, write `DIR/ready.<pid>` and start only once
//!   `DIR/go` exists (so that processes measure the same seconds).
//! - `--no-baseline`, `--no-audit`: skip those (a driver audits once every process is done).
//! - `--baseline-only`: measure the baseline and stop.
//! - `--audit-only`: only audit the store (`users`, `ledger_entries`, `open_reservations`).
//!
//! Prints `key=value` lines. Every failed operation is counted (`errors=`), the first few
//! printed, and makes the exit status 1 after the figures.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use chatrelay_core::UserKey;
use chatrelay_storage::{EntryKind, KvStore, PgOptions, Uid};

type BoxError = Box<dyn std::error::Error>;

struct Opts {
    users: usize,
    secs: u64,
    dir: Option<PathBuf>,
    pg: Option<String>,
    schema: Option<String>,
    pool: usize,
    offset: usize,
    barrier: Option<PathBuf>,
    baseline: bool,
    audit: bool,
    audit_only: bool,
    baseline_only: bool,
}

fn parse_opts() -> Result<Opts, BoxError> {
    let mut positional = Vec::new();
    let mut o = Opts {
        users: 64,
        secs: 5,
        dir: None,
        pg: None,
        schema: None,
        pool: 16,
        offset: 0,
        barrier: None,
        baseline: true,
        audit: true,
        audit_only: false,
        baseline_only: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--pg" => o.pg = Some(value()?),
            "--schema" => o.schema = Some(value()?),
            "--pool" => o.pool = value()?.parse()?,
            "--users-offset" => o.offset = value()?.parse()?,
            "--barrier" => o.barrier = Some(PathBuf::from(value()?)),
            "--no-baseline" => o.baseline = false,
            "--no-audit" => o.audit = false,
            "--audit-only" => o.audit_only = true,
            "--baseline-only" => o.baseline_only = true,
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}").into()),
            _ => positional.push(a),
        }
    }
    if let Some(u) = positional.first() {
        o.users = u.parse()?;
    }
    if let Some(s) = positional.get(1) {
        o.secs = s.parse()?;
    }
    o.dir = positional.get(2).map(PathBuf::from);
    Ok(o)
}

fn main() -> Result<(), BoxError> {
    let o = parse_opts()?;
    let tmp = tempfile::tempdir()?;
    // A schema made up here is dropped at the end; a given one is the driver's to drop.
    let own_schema = o.pg.is_some() && o.schema.is_none();
    let schema = o.schema.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("bench_{}_{nanos}", std::process::id())
    });
    let store = match &o.pg {
        Some(url) => KvStore::open_postgres(&PgOptions {
            url: url.clone(),
            schema: Some(schema.clone()),
            pool_size: o.pool,
            ca_file: None,
        })?,
        None => KvStore::open(
            &o.dir.clone().unwrap_or_else(|| tmp.path().join("db")),
            64 * 1024 * 1024,
        )?,
    };
    let engine = store.backend_name();

    if o.audit_only {
        return audit(&store);
    }

    let (users, secs) = (o.users, o.secs);
    println!(
        "engine={engine} users={users} secs={secs} pid={}",
        std::process::id()
    );
    // Baseline: plain inserts, same threads, same duration.
    let baseline = if !o.baseline {
        None
    } else {
        match &o.pg {
            Some(url) => {
                let base = pg_baseline(url, &schema, users, o.pool, secs)?;
                println!("baseline_pg_inserts_per_sec={:.0}", base.rate());
                Some(base.rate())
            }
            None => {
                let raw = sled::open(tmp.path().join("raw"))?;
                let raw_tree = raw.open_tree("t")?;
                let base = run(users, secs, move |t, i| {
                    let key = format!("{t:04}:{i:012}");
                    raw_tree
                        .insert(key.as_bytes(), vec![7u8; 96])
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                });
                println!("baseline_sled_inserts_per_sec={:.0}", base.rate());
                Some(base.rate())
            }
        }
    };

    if o.baseline_only {
        if own_schema && let Some(url) = &o.pg {
            drop(store);
            drop_schema(url, &schema)?;
        }
        return Ok(());
    }

    let mut uids = Vec::with_capacity(users);
    for t in 0..users {
        let key: UserKey = format!("api:bench-{}", o.offset + t).parse()?;
        let uid = store.resolve_identity(&key, None)?;
        // Idempotent on the reference: processes sharing the user grant once.
        store.grant(
            uid,
            1_000_000_000,
            EntryKind::Grant,
            "bench",
            &format!("bench-grant-{uid}"),
            0,
        )?;
        uids.push(uid);
    }
    if let Some(dir) = &o.barrier {
        std::fs::write(dir.join(format!("ready.{}", std::process::id())), b"")?;
        let go = dir.join("go");
        while !go.exists() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let uids = Arc::new(uids);
    let run_id = std::process::id();
    let store2 = store.clone();
    let stats = run(users, secs, move |t, i| {
        let uid: Uid = uids[t];
        let reference = format!("bench:{run_id}:{t}:{i}");
        let id = store2
            .reserve(uid, 5, &reference, 20_000, 0, i64::MAX)
            .map_err(|e| format!("reserve: {e}"))?;
        store2
            .settle(id, 3, "bench answer", 20_000, 0, 0)
            .map_err(|e| format!("settle: {e}"))?;
        Ok(())
    });
    println!("ops={} errors={}", stats.ops, stats.errors);
    println!("reserve_settle_per_sec={:.0}", stats.rate());
    if let Some(base) = baseline {
        println!("ratio_over_baseline={:.3}", stats.rate() / base);
    }
    println!(
        "latency_ms p50={:.2} p99={:.2} max={:.2}",
        stats.percentile(0.50),
        stats.percentile(0.99),
        stats.percentile(1.0)
    );
    let result = if o.audit { audit(&store) } else { Ok(()) };
    if own_schema && let Some(url) = &o.pg {
        drop(store);
        drop_schema(url, &schema)?;
    }
    result?;
    if stats.errors > 0 {
        return Err(format!("{} operations failed", stats.errors).into());
    }
    Ok(())
}

fn audit(store: &KvStore) -> Result<(), BoxError> {
    let started = Instant::now();
    let audit = store.audit()?;
    println!(
        "audit_ms={} users={} ledger_entries={} open_reservations={} consistent={}",
        started.elapsed().as_millis(),
        audit.users,
        audit.ledger_entries,
        audit.open_reservations,
        audit.is_consistent()
    );
    if !audit.is_consistent() {
        for m in audit.mismatches.iter().take(10) {
            eprintln!("mismatch: {m:?}");
        }
        return Err("the ledger does not sum to the balances".into());
    }
    Ok(())
}

/// What [`run`] measured.
struct Stats {
    ops: u64,
    errors: u64,
    secs: f64,
    /// Every successful operation's time, sorted.
    latencies: Vec<Duration>,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    fn percentile(&self, p: f64) -> f64 {
        let n = self.latencies.len();
        if n == 0 {
            return 0.0;
        }
        let i = ((n as f64 * p) as usize).min(n - 1);
        self.latencies[i].as_secs_f64() * 1000.0
    }
}

/// Runs `op(thread, i)` on `threads` threads for `secs`.
fn run<F>(threads: usize, secs: u64, op: F) -> Stats
where
    F: Fn(usize, u64) -> Result<(), String> + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (op, stop, done, failed) = (op.clone(), stop.clone(), done.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    match op(t, i) {
                        Ok(()) => {
                            latencies.push(began.elapsed());
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                                eprintln!("operation failed (thread {t}, op {i}): {e}");
                            }
                        }
                    }
                    i += 1;
                }
                latencies
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for h in handles {
        if let Ok(l) = h.join() {
            latencies.extend(l);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Stats {
        ops: done.load(Ordering::Relaxed),
        errors: failed.load(Ordering::Relaxed),
        secs,
        latencies,
    }
}

/// A client of `url` with `schema` first on its search path, driven by `rt`.
fn pg_connect(
    rt: &tokio::runtime::Runtime,
    url: &str,
    schema: &str,
) -> Result<tokio_postgres::Client, BoxError> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.options(format!("-c search_path={schema}"));
    let (client, conn) = rt.block_on(config.connect(tokio_postgres::NoTls))?;
    rt.spawn(conn);
    Ok(client)
}

/// The PostgreSQL baseline: `threads` threads doing single-row autocommit inserts of 96
/// bytes (one round trip, one commit each) over `pool` connections, checked out and back
/// the way the store's pool does.
fn pg_baseline(
    url: &str,
    schema: &str,
    threads: usize,
    pool: usize,
    secs: u64,
) -> Result<Stats, BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut clients = Vec::new();
    for _ in 0..pool.max(1) {
        clients.push(pg_connect(&rt, url, schema)?);
    }
    rt.block_on(clients[0].batch_execute(
        "CREATE TABLE IF NOT EXISTS bench_raw (k text PRIMARY KEY, v bytea NOT NULL)",
    ))?;
    let idle = Arc::new((Mutex::new(clients), Condvar::new()));
    let pid = std::process::id();
    let stats = run(threads, secs, move |t, i| {
        let (lock, returned) = &*idle;
        let client = {
            let mut idle = lock.lock().map_err(|e| e.to_string())?;
            loop {
                if let Some(c) = idle.pop() {
                    break c;
                }
                idle = returned.wait(idle).map_err(|e| e.to_string())?;
            }
        };
        let key = format!("{pid}:{t:04}:{i:012}");
        let value = vec![7u8; 96];
        let result = futures_executor::block_on(client.execute(
            "INSERT INTO bench_raw (k, v) VALUES ($1, $2)",
            &[&key, &value],
        ));
        lock.lock().map_err(|e| e.to_string())?.push(client);
        returned.notify_one();
        result.map(|_| ()).map_err(|e| e.to_string())
    });
    rt.shutdown_background();
    Ok(stats)
}

fn drop_schema(url: &str, schema: &str) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = pg_connect(&rt, url, "public")?;
    rt.block_on(client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")))?;
    Ok(())
}
