//! Backup and restore: a round trip keeps every record, exports under write load are
//! consistent snapshots, and bad files or targets are refused without writing a database.

use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use chatrelay_core::{Platform, UserKey};
use chatrelay_storage::{EntryKind, KvStore, Order, OrderStatus, StoreError, Turn, Uid};

const CACHE: u64 = 16 << 20;

const FREE_DAILY: u64 = 10;
const TODAY: i64 = 20_000;

fn export(store: &KvStore) -> Vec<u8> {
    let mut out = Vec::new();
    store.export_backup(&mut out, 1_700_000_000_000).unwrap();
    out
}

fn restore(bytes: &[u8], dir: &Path) -> Result<chatrelay_storage::BackupSummary, StoreError> {
    KvStore::restore_backup(&mut Cursor::new(bytes), dir, CACHE)
}

fn order(id: &str, uid: Uid) -> Order {
    Order {
        id: id.to_owned(),
        uid,
        product_id: "p100".to_owned(),
        product_name: "100 credits".to_owned(),
        channel: "wechat".to_owned(),
        method: None,
        amount_fen: 990,
        credits: 100,
        status: OrderStatus::Created,
        created_at_ms: 1_000,
        expires_at_ms: 1_000_000,
        code_url: None,
        provider_trade_no: None,
        credited_at_ms: None,
        closed_at_ms: None,
        refunded_at_ms: None,
        plan: None,
    }
}

/// A store with a bit of everything.
fn populated(dir: &Path) -> KvStore {
    let store = KvStore::open(dir, CACHE).unwrap();
    let alice = store
        .resolve_identity(&UserKey::new(Platform::Tg, "main", "1"), Some("alice"))
        .unwrap();
    let bob = store.create_user("bob").unwrap().uid;
    store
        .link_identity(&UserKey::new(Platform::Tg, "main", "2"), bob)
        .unwrap();
    store
        .grant(alice, 500, EntryKind::Purchase, "seed", "seed-a", 1)
        .unwrap();
    store
        .grant(bob, 50, EntryKind::Grant, "gift", "seed-b", 2)
        .unwrap();
    for i in 0..5 {
        let id = store
            .reserve(alice, 20, &format!("ans-{i}"), TODAY, FREE_DAILY, 10_000)
            .unwrap();
        store
            .settle(id, 15, "answer", TODAY, FREE_DAILY, 3 + i)
            .unwrap();
    }
    // One left open.
    store
        .reserve(bob, 7, "open-1", TODAY, FREE_DAILY, 10_000)
        .unwrap();
    store.create_token(alice, "cli", None, 5).unwrap();
    store.create_order(&order("o-1", alice), 6).unwrap();
    store.add_order_event("o-1", "created", "test", 6).unwrap();
    store.credit_order("o-1", 990, Some("tx-1"), 7).unwrap();
    store.create_order(&order("o-2", bob), 8).unwrap();
    store
        .append_turns(
            "tg:main:1",
            &[Turn {
                role: "user".into(),
                content: "hello\n\"quoted\" \u{1F600}".into(),
                at_ms: 9,
            }],
            10,
        )
        .unwrap();
    store
        .checkpoint_cas("zsxq:topic:1", None, "answered")
        .unwrap();
    store.bump_counter("answers:today").unwrap();
    store.dedupe_insert("msg-1", 100_000, 10).unwrap();
    store.outbox_push("tg:main:2", "later").unwrap();
    store.login_code(bob, 60_000, 11).unwrap();
    store
}

#[test]
fn round_trip_keeps_every_record() {
    let src_dir = tempfile::tempdir().unwrap();
    let store = populated(src_dir.path());
    assert!(store.audit().unwrap().is_consistent());
    let bytes = export(&store);
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(text.starts_with("{\"chatrelay_backup\":1,\"schema_version\":2,"));
    assert!(text.lines().last().unwrap().starts_with("{\"end\":true,"));

    let mut out = Vec::new();
    let exported = store.export_backup(&mut out, 1_700_000_000_000).unwrap();
    let target = tempfile::tempdir().unwrap();
    let dir = target.path().join("restored");
    let restored = restore(&bytes, &dir).unwrap();
    assert_eq!(exported, restored);
    assert_eq!(restored.schema_version, 2);
    assert!(restored.trees >= 15, "{restored:?}");
    assert_eq!(restored.records as usize, store.dump().unwrap().len());

    let copy = KvStore::open_closed(&dir, CACHE).unwrap();
    let before = store.dump().unwrap();
    assert_eq!(before, copy.dump().unwrap());
    let audit = copy.audit().unwrap();
    assert!(audit.is_consistent(), "{audit:?}");
    assert_eq!(audit, store.audit().unwrap());

    // The copy works, and its generated ids never reuse the source's.
    let bob = Uid(2);
    let old_max = store
        .reserve(bob, 1, "probe", TODAY, FREE_DAILY, 10_000)
        .unwrap();
    let new = copy
        .reserve(bob, 1, "probe-copy", TODAY, FREE_DAILY, 10_000)
        .unwrap();
    assert!(new > old_max, "{new} should be above {old_max}");
    assert!(copy.token_uid("sk-cr-nope", 0).unwrap().is_none());
    assert_eq!(copy.counter("answers:today").unwrap(), 1);
    assert_eq!(copy.conversation("tg:main:1").unwrap().len(), 1);

    // Restoring into an existing empty directory works too.
    let empty = tempfile::tempdir().unwrap();
    restore(&bytes, empty.path()).unwrap();
    let again = KvStore::open(empty.path(), CACHE).unwrap();
    assert_eq!(again.dump().unwrap(), before);
}

#[test]
fn exports_under_write_load_are_consistent() {
    const THREADS: usize = 8;
    let src_dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(src_dir.path(), CACHE).unwrap();
    let uids: Vec<Uid> = (0..4)
        .map(|i| store.create_user(&format!("u{i}")).unwrap().uid)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(THREADS + 1));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            let uids = uids.clone();
            let stop = Arc::clone(&stop);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && i < 2_000 {
                    let uid = uids[(t + i as usize) % uids.len()];
                    let reference = format!("t{t}-{i}");
                    store
                        .grant(
                            uid,
                            3,
                            EntryKind::Grant,
                            "load",
                            &format!("g-{reference}"),
                            1,
                        )
                        .unwrap();
                    match store.reserve(uid, 2, &reference, TODAY, FREE_DAILY, i64::MAX) {
                        Ok(id) => {
                            if !i.is_multiple_of(3) {
                                store
                                    .settle(id, 1 + i % 4, "load", TODAY, FREE_DAILY, 2)
                                    .unwrap();
                            }
                        }
                        Err(StoreError::InsufficientCredits { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                    i += 1;
                }
                i
            })
        })
        .collect();
    start.wait();
    let mut backups = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(150));
        backups.push(export(&store));
    }
    stop.store(true, Ordering::Relaxed);
    let ops: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(ops > 0);

    let target = tempfile::tempdir().unwrap();
    let mut sizes = Vec::new();
    for (n, bytes) in backups.iter().enumerate() {
        let dir = target.path().join(format!("copy{n}"));
        let summary = restore(bytes, &dir).unwrap();
        sizes.push(summary.records);
        let copy = KvStore::open_closed(&dir, CACHE).unwrap();
        let audit = copy.audit().unwrap();
        assert!(audit.is_consistent(), "backup {n}: {audit:?}");
        assert!(audit.ledger_entries > 0, "backup {n} saw no load");
    }
    assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");
    assert!(store.audit().unwrap().is_consistent());
}

/// An output that, at its first write (the snapshot has started), runs `writes` on another
/// thread and waits for them: before copy-on-write snapshots, they waited for the export and
/// this deadlocked (cut short by the timeout).
struct WritesDuringExport {
    out: Vec<u8>,
    writes: Option<Box<dyn FnOnce() + Send>>,
}

impl std::io::Write for WritesDuringExport {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(writes) = self.writes.take() {
            let (done, finished) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                writes();
                let _ = done.send(());
            });
            finished
                .recv_timeout(std::time::Duration::from_secs(20))
                .expect("writes waited for the backup to finish");
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn writers_do_not_wait_for_an_export_and_it_keeps_its_snapshot() {
    let src_dir = tempfile::tempdir().unwrap();
    let store = populated(src_dir.path());
    let before = store.dump().unwrap();
    let writer = store.clone();
    let mut out = WritesDuringExport {
        out: Vec::new(),
        writes: Some(Box::new(move || {
            let alice = Uid(1);
            // Changed (twice), removed, and created keys, across several trees.
            for n in 0..2 {
                writer
                    .grant(
                        alice,
                        5,
                        EntryKind::Grant,
                        "during",
                        &format!("during-{n}"),
                        50,
                    )
                    .unwrap();
            }
            assert_eq!(writer.outbox_take("tg:main:2").unwrap(), vec!["later"]);
            writer.outbox_push("tg:main:1", "new").unwrap();
            writer.create_user("carol").unwrap();
            writer.dedupe_insert("msg-2", 100_000, 10).unwrap();
            writer.purge_expired_dedupe(1_000_000).unwrap();
            writer.bump_counter("answers:today").unwrap();
        })),
    };
    let summary = store.export_backup(&mut out, 1_700_000_000_000).unwrap();
    let after = store.dump().unwrap();
    assert_ne!(after, before, "the writes happened");

    let target = tempfile::tempdir().unwrap();
    let dir = target.path().join("restored");
    let restored = restore(&out.out, &dir).unwrap();
    assert_eq!(summary, restored);
    let copy = KvStore::open_closed(&dir, CACHE).unwrap();
    assert_eq!(
        copy.dump().unwrap(),
        before,
        "the backup is the state at its start"
    );
    assert!(copy.audit().unwrap().is_consistent());

    // The next export, with nothing written during it, is the state now.
    let again = export(&store);
    let dir = target.path().join("again");
    restore(&again, &dir).unwrap();
    assert_eq!(
        KvStore::open_closed(&dir, CACHE).unwrap().dump().unwrap(),
        after
    );
}

/// `dir` holds nothing (or does not exist).
fn assert_no_database(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        let names: Vec<_> = entries.map(|e| e.unwrap().file_name()).collect();
        assert!(names.is_empty(), "{} holds {names:?}", dir.display());
    }
}

/// The parent holds only what it held before (no staging directory left behind).
fn assert_parent_clean(parent: &Path, expected: usize) {
    let n = std::fs::read_dir(parent).unwrap().count();
    assert_eq!(n, expected, "leftovers in {}", parent.display());
}

fn expect_backup_error(result: Result<chatrelay_storage::BackupSummary, StoreError>, what: &str) {
    match result {
        Err(StoreError::Backup(msg)) => {
            assert!(msg.contains(what), "{msg:?} should mention {what:?}")
        }
        other => panic!("expected a Backup error mentioning {what:?}, got {other:?}"),
    }
}

#[test]
fn bad_files_and_targets_are_refused() {
    let src_dir = tempfile::tempdir().unwrap();
    let store = populated(src_dir.path());
    let good = export(&store);
    let text = String::from_utf8(good.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let target = tempfile::tempdir().unwrap();
    let dir = target.path().join("db");

    // Truncated at a line boundary: no footer.
    let cut = lines[..lines.len() / 2].join("\n") + "\n";
    expect_backup_error(restore(cut.as_bytes(), &dir), "truncated");
    assert_no_database(&dir);
    assert_parent_clean(target.path(), 0);

    // Truncated mid-line.
    expect_backup_error(restore(&good[..good.len() - 10], &dir), "line");
    assert_no_database(&dir);

    // A corrupted line (not JSON).
    let mut bad = lines.clone();
    let broken = bad[3].replace("\"k\"", "\"k");
    bad[3] = &broken;
    expect_backup_error(restore((bad.join("\n") + "\n").as_bytes(), &dir), "line 4");
    assert_no_database(&dir);

    // A changed value, still well-formed: the checksum catches it.
    let mut bad = lines.clone();
    let changed = {
        let line = bad[2];
        let at = line.rfind('"').unwrap() - 1;
        let digit = if &line[at..=at] == "0" { "1" } else { "0" };
        format!("{}{}{}", &line[..at], digit, &line[at + 1..])
    };
    bad[2] = &changed;
    expect_backup_error(
        restore((bad.join("\n") + "\n").as_bytes(), &dir),
        "checksum",
    );
    assert_no_database(&dir);

    // A wrong checksum in the footer.
    let mut bad = lines.clone();
    let footer = lines.last().unwrap();
    let at = footer.find("\"sha256\":\"").unwrap() + 10;
    let wrong = format!("{}{}", &footer[..at], "0".repeat(64) + "\"}");
    *bad.last_mut().unwrap() = &wrong;
    expect_backup_error(
        restore((bad.join("\n") + "\n").as_bytes(), &dir),
        "checksum",
    );
    assert_no_database(&dir);

    // A wrong record count.
    let mut bad = lines.clone();
    let recount = footer.replace(
        &format!("\"records\":{}", lines.len() - 2),
        &format!("\"records\":{}", lines.len()),
    );
    *bad.last_mut().unwrap() = &recount;
    expect_backup_error(restore((bad.join("\n") + "\n").as_bytes(), &dir), "records");
    assert_no_database(&dir);

    // A newer schema version.
    let newer = text.replacen("\"schema_version\":2,", "\"schema_version\":3,", 1);
    match restore(newer.as_bytes(), &dir) {
        Err(StoreError::SchemaTooNew {
            found: 3,
            supported: 2,
        }) => {}
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    assert_no_database(&dir);

    // Not a backup at all.
    expect_backup_error(restore(b"hello\n", &dir), "line 1");
    expect_backup_error(restore(b"", &dir), "empty");
    assert_no_database(&dir);
    assert_parent_clean(target.path(), 0);

    // A non-empty target is left untouched.
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("keep.txt"), b"mine").unwrap();
    expect_backup_error(restore(&good, &dir), "not empty");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("keep.txt")]);
    assert_eq!(std::fs::read(dir.join("keep.txt")).unwrap(), b"mine");
    // An existing database is never overwritten.
    expect_backup_error(restore(&good, src_dir.path()), "not empty");
    assert_parent_clean(target.path(), 1);

    // And the good file still restores.
    let fine = target.path().join("fine");
    restore(&good, &fine).unwrap();
    assert_eq!(
        KvStore::open_closed(&fine, CACHE).unwrap().dump().unwrap(),
        store.dump().unwrap()
    );
}
