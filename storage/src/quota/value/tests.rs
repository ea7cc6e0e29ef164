use super::*;
use crate::codec::{pair_key, u64_key};
use crate::{KvStore, StoreError};

fn entry(kind: EntryKind, reason: &str, reference: &str) -> LedgerEntry {
    LedgerEntry {
        uid: Uid(12_345),
        seq: 678,
        at_ms: 1_765_000_000_000,
        kind,
        free_delta: -3,
        paid_delta: -12,
        paid_after: 4_000,
        reason: reason.to_owned(),
        reference: reference.to_owned(),
    }
}

fn plan() -> ActivePlan {
    ActivePlan {
        id: "vip".to_owned(),
        name: "会员 VIP".to_owned(),
        daily_credits: 50,
        start_day: 20_400,
        end_day: 20_430,
    }
}

fn balances() -> Vec<BalanceRecord> {
    vec![
        BalanceRecord::default(),
        BalanceRecord {
            paid: u64::MAX,
            held: 7,
            free_day: -5,
            free_used: 3,
            next_seq: 1 << 40,
            plan: Some(plan()),
        },
    ]
}

fn settled() -> Vec<SettledReservation> {
    vec![
        SettledReservation {
            uid: Uid(3),
            reference: "mp:main:msg-1".to_owned(),
            entry: Some(LedgerRef {
                uid: Uid(3),
                seq: 9,
            }),
            settled_at_ms: 1_765_000_000_123,
        },
        SettledReservation {
            uid: Uid(u64::MAX),
            reference: String::new(),
            entry: None,
            settled_at_ms: i64::MIN,
        },
    ]
}

fn reservation() -> Reservation {
    Reservation {
        uid: Uid(77),
        amount: 1_000,
        reference: "web:答".to_owned(),
        expires_at_ms: -1,
    }
}

/// Every value kind, encoded, with a reader of it that answers whether it decoded.
#[allow(clippy::type_complexity)]
fn samples() -> Vec<(Vec<u8>, Box<dyn Fn(&[u8]) -> bool>)> {
    let mut out: Vec<(Vec<u8>, Box<dyn Fn(&[u8]) -> bool>)> = Vec::new();
    for kind in [
        EntryKind::Usage,
        EntryKind::Grant,
        EntryKind::Purchase,
        EntryKind::Refund,
        EntryKind::Adjust,
    ] {
        out.push((
            entry_value(&entry(kind, "gpt-4o answer", "mp:main:1")),
            Box::new(|raw| read_entry(1, 2, raw).is_ok()),
        ));
    }
    out.push((
        ref_value(LedgerRef {
            uid: Uid(5),
            seq: 300,
        }),
        Box::new(|raw| read_ref(b"r", raw).is_ok()),
    ));
    for b in balances() {
        out.push((
            balance_value(&b),
            Box::new(|raw| read_balance(1, raw).is_ok()),
        ));
    }
    out.push((
        reservation_value(&reservation()),
        Box::new(|raw| read_reservation(ReservationId(1), raw).is_ok()),
    ));
    for s in settled() {
        out.push((
            settled_value(&s),
            Box::new(|raw| read_settled(ReservationId(1), raw).is_ok()),
        ));
    }
    out.push((
        reservation_ref_value(ReservationId(u64::MAX)),
        Box::new(|raw| read_reservation_ref(b"r", raw).is_ok()),
    ));
    out
}

#[test]
fn every_record_round_trips() {
    for kind in [EntryKind::Usage, EntryKind::Adjust] {
        for (reason, reference) in [("", "x"), ("管理员: 补偿", &*"r".repeat(512))] {
            let e = entry(kind, reason, reference);
            assert_eq!(read_entry(12_345, 678, &entry_value(&e)).unwrap(), e);
        }
    }
    // uid and seq come from the key, not the value.
    let e = entry(EntryKind::Grant, "gen", "gen:1");
    let other = read_entry(1, 2, &entry_value(&e)).unwrap();
    assert_eq!((other.uid, other.seq), (Uid(1), 2));
    let at = LedgerRef {
        uid: Uid(u64::MAX),
        seq: 0,
    };
    assert_eq!(read_ref(b"r", &ref_value(at)).unwrap(), at);
    for b in balances() {
        assert_eq!(read_balance(1, &balance_value(&b)).unwrap(), b);
    }
    let r = reservation();
    assert_eq!(
        read_reservation(ReservationId(1), &reservation_value(&r)).unwrap(),
        r
    );
    for s in settled() {
        assert_eq!(
            read_settled(ReservationId(1), &settled_value(&s)).unwrap(),
            s
        );
    }
    let id = ReservationId(1 << 50);
    assert_eq!(
        read_reservation_ref(b"r", &reservation_ref_value(id)).unwrap(),
        id
    );
    // Bytes after the last field (a later version's additions) are ignored.
    let mut longer = entry_value(&e);
    longer.extend_from_slice(&[0xaa, 0xbb, 0xcc]);
    assert_eq!(read_entry(1, 2, &longer).unwrap(), other);
    let mut longer = balance_value(&balances()[1]);
    longer.push(0xff);
    assert_eq!(read_balance(1, &longer).unwrap(), balances()[1]);
}

#[test]
fn values_are_compact() {
    // What `gen_store` writes: 133 bytes of JSON before.
    let e = LedgerEntry {
        uid: Uid(9_999),
        seq: 10,
        at_ms: 0,
        kind: EntryKind::Grant,
        free_delta: 0,
        paid_delta: 2,
        paid_after: 20,
        reason: "gen".to_owned(),
        reference: "gen:99999".to_owned(),
    };
    assert_eq!(entry_value(&e).len(), 1 + 1 + 1 + 1 + 1 + 1 + 4 + 10);
    // A real answer's entry, with a millisecond time.
    assert!(entry_value(&entry(EntryKind::Usage, "gpt-4o answer", "mp:main:1")).len() < 40);
    let at = LedgerRef {
        uid: Uid(9_999),
        seq: 10,
    };
    assert_eq!(ref_value(at).len(), 4);
    let b = BalanceRecord {
        paid: 20,
        free_day: 20_430,
        next_seq: 11,
        ..BalanceRecord::default()
    };
    assert_eq!(balance_value(&b).len(), 9);
    for (raw, _) in samples() {
        assert_eq!(raw.first(), Some(&BINARY));
    }
}

/// xorshift64*: deterministic pseudo-random bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    let samples = samples();
    // Every strict prefix of a valid value is missing a field: refused, not misread.
    for (raw, read) in &samples {
        assert!(read(raw), "{raw:?}");
        for end in 0..raw.len() {
            assert!(!read(&raw[..end]), "prefix {end} of {raw:?} was accepted");
        }
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..20_000 {
        let (valid, read) = &samples[round % samples.len()];
        // Half the time a mutated valid value (flipped bytes, a changed length), half
        // random bytes behind the format byte; some of them huge varints.
        let mut raw = if round % 2 == 0 {
            let mut raw = valid.clone();
            for _ in 0..=rng.below(3) {
                let at = rng.below(raw.len() as u64) as usize;
                raw[at] = rng.next() as u8;
            }
            if rng.below(4) == 0 {
                raw.truncate(rng.below(raw.len() as u64 + 1) as usize);
            }
            raw
        } else {
            let len = rng.below(48) as usize;
            (0..len).map(|_| rng.next() as u8).collect()
        };
        if round % 3 == 0 {
            raw.insert(0, BINARY);
        }
        if round % 7 == 0 {
            raw.splice(1.min(raw.len()).., [0xff; 12]);
        }
        let _ = read(&raw);
    }
}

#[test]
fn bad_values_are_corrupt_naming_tree_and_key() {
    let check = |err: StoreError, want_tree: &str, want_key: &str| match err {
        StoreError::Corrupt { tree, key, .. } => {
            assert_eq!((tree, key.as_str()), (want_tree, want_key))
        }
        other => panic!("unexpected {other:?}"),
    };
    check(read_entry(3, 9, &[BINARY, 9]).unwrap_err(), "ledger", "3/9");
    check(read_entry(3, 9, b"{}").unwrap_err(), "ledger", "3/9");
    check(
        read_ref(b"g1", &[BINARY]).unwrap_err(),
        "ledger_refs",
        "\"g1\"",
    );
    check(
        read_balance(4, &[BINARY, 0x80]).unwrap_err(),
        "balances",
        "4",
    );
    check(
        read_reservation(ReservationId(5), &[BINARY, 1, 1, 1, 9]).unwrap_err(),
        "reservations",
        "5",
    );
    check(
        read_settled(ReservationId(6), &[BINARY, 1, 2, 7]).unwrap_err(),
        "settled_reservations",
        "6",
    );
    check(
        read_reservation_ref(b"m", b"").unwrap_err(),
        "reservation_refs",
        "\"m\"",
    );
}

#[test]
fn old_json_records_still_read() {
    let e = read_entry(
        1,
        2,
        br#"{"uid":1,"seq":2,"at_ms":5,"kind":"usage","free_delta":-1,"paid_delta":-4,"paid_after":95,"reason":"answer","reference":"m-done"}"#,
    )
    .unwrap();
    assert_eq!(
        (e.kind, e.free_delta, e.paid_delta, e.paid_after),
        (EntryKind::Usage, -1, -4, 95)
    );
    assert_eq!(
        (e.reason.as_str(), e.reference.as_str()),
        ("answer", "m-done")
    );
    assert_eq!(
        read_ref(b"g1", br#"{"uid":1,"seq":2}"#).unwrap(),
        LedgerRef {
            uid: Uid(1),
            seq: 2
        }
    );
    let b = read_balance(
        1,
        r#"{"paid":95,"held":7,"free_day":3,"free_used":1,"next_seq":3,"plan":{"id":"vip","name":"会员 VIP","daily_credits":50,"start_day":20400,"end_day":20430}}"#
            .as_bytes(),
    )
    .unwrap();
    assert_eq!((b.paid, b.held, b.free_day, b.next_seq), (95, 7, 3, 3));
    assert_eq!(b.plan, Some(plan()));
    // A record from before plans (and `#[serde(default)]` fields) still reads.
    assert_eq!(read_balance(1, br#"{"paid":1}"#).unwrap().next_seq, 1);
    let r = read_reservation(
        ReservationId(1),
        r#"{"uid":77,"amount":1000,"reference":"web:答","expires_at_ms":-1}"#.as_bytes(),
    )
    .unwrap();
    assert_eq!(r, reservation());
    let s = read_settled(
        ReservationId(1),
        br#"{"uid":3,"reference":"mp:main:msg-1","entry":{"uid":3,"seq":9},"settled_at_ms":1765000000123}"#,
    )
    .unwrap();
    assert_eq!(s, settled()[0]);
    assert_eq!(
        read_reservation_ref(b"m", b"1099511627776").unwrap(),
        ReservationId(1 << 40)
    );
}

/// The day of the records [`write_json_records`] writes.
pub(crate) const DAY: i64 = 10;
/// The settled reservation it writes (reference `m-done`, entry 2).
pub(crate) const DONE: ReservationId = ReservationId(1 << 40);
/// The open reservation it writes (reference `m-open`, 7 credits).
pub(crate) const OPEN: ReservationId = ReservationId((1 << 40) + 1);

/// A temporary store (sled, or PostgreSQL when the tests say so) with [`write_json_records`].
fn json_store() -> (KvStore, Uid) {
    let store = KvStore::open_temporary().unwrap();
    let uid = write_json_records(&store);
    (store, uid)
}

/// Writes one new user's credits as the JSON values stores held before format 1: two ledger
/// entries (`g1`, a purchase of 100; `m-done`, an answer), a settled and an open reservation.
pub(crate) fn write_json_records(store: &KvStore) -> Uid {
    let uid = store.create_user("old").unwrap().uid;
    let u = uid.0;
    let t = store.trees().unwrap();
    let put = |tree: &crate::kv::Tree, key: &[u8], value: String| {
        tree.insert(key, value.as_bytes()).unwrap();
    };
    put(
        &t.ledger,
        &pair_key(u, 1),
        format!(
            r#"{{"uid":{u},"seq":1,"at_ms":1,"kind":"purchase","free_delta":0,"paid_delta":100,"paid_after":100,"reason":"order","reference":"g1"}}"#
        ),
    );
    put(
        &t.ledger,
        &pair_key(u, 2),
        format!(
            r#"{{"uid":{u},"seq":2,"at_ms":5,"kind":"usage","free_delta":-1,"paid_delta":-4,"paid_after":96,"reason":"answer","reference":"m-done"}}"#
        ),
    );
    put(&t.ledger_refs, b"g1", format!(r#"{{"uid":{u},"seq":1}}"#));
    put(
        &t.ledger_refs,
        b"m-done",
        format!(r#"{{"uid":{u},"seq":2}}"#),
    );
    put(
        &t.balances,
        &u64_key(u),
        format!(r#"{{"paid":96,"held":7,"free_day":{DAY},"free_used":1,"next_seq":3}}"#),
    );
    put(
        &t.settled_reservations,
        &u64_key(DONE.0),
        format!(
            r#"{{"uid":{u},"reference":"m-done","entry":{{"uid":{u},"seq":2}},"settled_at_ms":5}}"#
        ),
    );
    put(&t.reservation_refs, b"m-done", DONE.0.to_string());
    put(
        &t.reservations,
        &u64_key(OPEN.0),
        format!(r#"{{"uid":{u},"amount":7,"reference":"m-open","expires_at_ms":1000}}"#),
    );
    put(&t.reservation_refs, b"m-open", OPEN.0.to_string());
    uid
}

#[test]
fn a_store_written_as_json_keeps_working() {
    let (store, uid) = json_store();
    let report = store.audit().unwrap();
    assert!(report.is_consistent(), "{:?}", report.mismatches);
    let b = store.balance(uid, DAY, 10).unwrap();
    assert_eq!((b.paid, b.held, b.free_left), (96, 7, 9));
    // Idempotency still sees the old references.
    let again = store
        .grant(uid, 100, EntryKind::Purchase, "order", "g1", 9)
        .unwrap();
    assert_eq!((again.seq, again.at_ms), (1, 1));
    assert!(matches!(
        store.reserve(uid, 1, "m-done", DAY, 10, 1000),
        Err(StoreError::AlreadySettled(e)) if e.seq == 2
    ));
    assert_eq!(
        store.reserve(uid, 7, "m-open", DAY, 10, 1000).unwrap(),
        OPEN
    );
    assert_eq!(
        store
            .settle(DONE, 5, "answer", DAY, 10, 6)
            .unwrap()
            .map(|e| e.seq),
        Some(2)
    );
    // New writes (binary) continue the old ledger.
    let settled = store
        .settle(OPEN, 6, "answer", DAY, 10, 7)
        .unwrap()
        .unwrap();
    assert_eq!(
        (settled.seq, settled.free_delta, settled.paid_delta),
        (3, -6, 0)
    );
    let grant = store
        .grant(uid, 10, EntryKind::Grant, "gift", "g2", 8)
        .unwrap();
    assert_eq!((grant.seq, grant.paid_after), (4, 106));
    let ledger = store.ledger(uid, 10).unwrap();
    assert_eq!(
        ledger.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![4, 3, 2, 1]
    );
    assert_eq!(ledger[3].reference, "g1");
    assert_eq!(store.ledger_by_reference("m-done").unwrap().unwrap().seq, 2);
    let t = store.trees().unwrap();
    let raw = t.ledger.get(pair_key(uid.0, 4)).unwrap().unwrap();
    assert_eq!(raw.first(), Some(&BINARY));
    let raw = t.ledger.get(pair_key(uid.0, 1)).unwrap().unwrap();
    assert_eq!(raw.first(), Some(&b'{'));
    let b = store.balance(uid, DAY, 10).unwrap();
    assert_eq!((b.paid, b.held, b.free_left), (106, 0, 3));
    let census = store.census(0).unwrap();
    assert_eq!(
        (census.ledger_entries, census.ledger_paid_delta_sum),
        (4, 106)
    );
    assert_eq!(census.ledger_free_delta_sum, -7);
    let report = store.audit().unwrap();
    assert!(report.is_consistent(), "{:?}", report.mismatches);
    assert_eq!(store.purge_settled_reservations(i64::MAX).unwrap(), 2);
}

#[test]
fn a_backup_of_json_values_restores_and_reads() {
    let (store, uid) = json_store();
    if store.is_shared() {
        return; // Backups are of the embedded store (PostgreSQL has its own tools).
    }
    store
        .grant(uid, 10, EntryKind::Grant, "gift", "g2", 8)
        .unwrap();
    let mut file = Vec::new();
    store.export_backup(&mut file, 9).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("restored");
    KvStore::restore_backup(&mut file.as_slice(), &target, 1 << 20).unwrap();
    let restored = KvStore::open_closed(&target, 1 << 20).unwrap();
    assert_eq!(
        restored.ledger(uid, 10).unwrap(),
        store.ledger(uid, 10).unwrap()
    );
    assert_eq!(
        restored.balance(uid, DAY, 10).unwrap(),
        store.balance(uid, DAY, 10).unwrap()
    );
    assert_eq!(
        restored
            .settle(OPEN, 1, "answer", DAY, 10, 9)
            .unwrap()
            .unwrap()
            .seq,
        4
    );
    let report = restored.audit().unwrap();
    assert!(report.is_consistent(), "{:?}", report.mismatches);
}
