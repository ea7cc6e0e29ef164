//! Fills a store for start-up and memory benchmarks: `USERS` users, each with a platform
//! identity, and `ENTRIES` ledger entries spread over them (grants and debits).
//!
//! Usage: `gen_store DIR USERS ENTRIES`. Prints `key=value` lines.

use std::time::Instant;

use chatrelay_core::{Platform, UserKey};
use chatrelay_storage::{EntryKind, KvStore};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args.first().ok_or("usage: gen_store DIR USERS ENTRIES")?;
    let users: u64 = args.get(1).ok_or("USERS")?.parse()?;
    let entries: u64 = args.get(2).ok_or("ENTRIES")?.parse()?;
    let store = KvStore::open(std::path::Path::new(dir), 64 * 1024 * 1024)?;
    let started = Instant::now();
    let mut uids = Vec::with_capacity(users as usize);
    for i in 0..users {
        let key = UserKey::new(Platform::Mp, "main", format!("o_gen_{i:08}"));
        uids.push(store.resolve_identity(&key, Some(&format!("用户{i}")))?);
    }
    let users_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for n in 0..entries {
        let Some(&uid) = uids.get((n % users.max(1)) as usize) else {
            break;
        };
        let reference = format!("gen:{n}");
        // Mostly grants; every fourth round a debit of what earlier rounds granted.
        if (n / users.max(1)) % 4 == 3 {
            store.debit(uid, 1, EntryKind::Adjust, "gen", &reference, 0)?;
        } else {
            store.grant(uid, 2, EntryKind::Grant, "gen", &reference, 0)?;
        }
    }
    store.flush_blocking()?;
    println!("users={users} users_secs={users_secs:.1}");
    println!(
        "entries={entries} entries_secs={:.1}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
