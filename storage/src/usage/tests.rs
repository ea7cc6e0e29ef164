use super::*;
use crate::{Remember, Turn};

const DAY: i64 = 100;
const FREE: u64 = 10;
const LATER: i64 = i64::MAX;

fn note(outcome: UsageOutcome) -> UsageNote<'static> {
    UsageNote {
        platform: "web",
        model: "gpt-4o",
        prompt_tokens: 120,
        completion_tokens: 30,
        outcome,
    }
}

fn store_with_paid(paid: u64) -> (KvStore, Uid) {
    let store = KvStore::open_temporary().unwrap();
    let uid = store.create_user("u").unwrap().uid;
    if paid > 0 {
        store
            .grant(uid, paid, EntryKind::Purchase, "order", "seed", 1)
            .unwrap();
    }
    (store, uid)
}

/// Reserves and settles one answer of `cost` at `at_ms`; returns the reservation id.
fn answer(store: &KvStore, uid: Uid, reference: &str, cost: u64, at_ms: i64) -> ReservationId {
    let id = store
        .reserve(uid, cost, reference, DAY, FREE, LATER)
        .unwrap();
    store
        .settle_metered(
            id,
            cost,
            "answer",
            DAY,
            FREE,
            at_ms,
            None,
            Some(note(UsageOutcome::Answered)),
        )
        .unwrap();
    id
}

fn all_usage(store: &KvStore, uid: Uid) -> Vec<UsageRecord> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let page = store.usage(uid, before, MAX_USAGE_PAGE).unwrap();
        out.extend(page.records);
        match page.next {
            Some(next) => before = Some(next),
            None => return out,
        }
    }
}

#[test]
fn the_settlement_writes_the_record_with_its_free_and_paid_split() {
    let (store, uid) = store_with_paid(100);
    let id = store.reserve(uid, 15, "m1", DAY, FREE, LATER).unwrap();
    let turns = [Turn {
        role: "user".into(),
        content: "hi".into(),
        at_ms: 5,
    }];
    let entry = store
        .settle_metered(
            id,
            15,
            "answer",
            DAY,
            FREE,
            5_000,
            Some(Remember {
                conversation: "c1",
                turns: &turns,
                max_turns: 10,
            }),
            Some(note(UsageOutcome::Answered)),
        )
        .unwrap()
        .unwrap();
    let page = store.usage(uid, None, 10).unwrap();
    assert_eq!(page.next, None);
    assert_eq!(
        page.records,
        vec![UsageRecord {
            uid,
            at_ms: 5_000,
            id,
            platform: "web".into(),
            model: "gpt-4o".into(),
            prompt_tokens: 120,
            completion_tokens: 30,
            free: 10,
            paid: 5,
            plan: 0,
            refunded: 0,
            ledger_seq: Some(entry.seq),
            outcome: UsageOutcome::Answered,
        }]
    );
    assert_eq!(
        store.conversation("c1").unwrap().len(),
        1,
        "turns written too"
    );
    assert!(store.audit().unwrap().is_consistent());
}

#[test]
fn settling_again_writes_no_second_record() {
    let (store, uid) = store_with_paid(100);
    let id = answer(&store, uid, "m1", 7, 1_000);
    for at in [2_000, 3_000] {
        store
            .settle_metered(
                id,
                7,
                "answer",
                DAY,
                FREE,
                at,
                None,
                Some(note(UsageOutcome::Cut)),
            )
            .unwrap();
    }
    let records = all_usage(&store, uid);
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].at_ms, records[0].outcome),
        (1_000, UsageOutcome::Answered)
    );
}

#[test]
fn pages_go_newest_first_without_gaps_or_repeats() {
    let (store, uid) = store_with_paid(1_000);
    let (other, _) = (store.create_user("other").unwrap().uid, ());
    let mut ids = Vec::new();
    // Three answers share a millisecond: the reservation id keeps them apart.
    for (i, at) in [10, 20, 20, 20, 30, 40, 50].into_iter().enumerate() {
        ids.push(answer(&store, uid, &format!("m{i}"), 1, at));
    }
    answer(&store, other, "o1", 1, 25);
    let mut seen = Vec::new();
    let mut before = None;
    let mut pages = 0;
    loop {
        let page = store.usage(uid, before, 3).unwrap();
        assert!(page.records.len() <= 3);
        seen.extend(page.records.iter().map(|r| (r.at_ms, r.id)));
        pages += 1;
        match page.next {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut expected: Vec<(i64, ReservationId)> = [10, 20, 20, 20, 30, 40, 50]
        .into_iter()
        .zip(ids.iter().copied())
        .collect();
    expected.reverse();
    assert_eq!(seen, expected, "newest first, every record once");
    // A bare time: strictly before it.
    let page = store.usage(uid, Some("30".parse().unwrap()), 10).unwrap();
    let times: Vec<i64> = page.records.iter().map(|r| r.at_ms).collect();
    assert_eq!(times, vec![20, 20, 20, 10]);
    // The other user's answer is only theirs.
    let theirs = store.usage(other, None, 10).unwrap().records;
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].uid, other);
    // The limit is capped, and at least 1.
    assert_eq!(store.usage(uid, None, 0).unwrap().records.len(), 1);
    assert!(store.usage(uid, None, 100_000).unwrap().records.len() <= MAX_USAGE_PAGE);
}

#[test]
fn purging_removes_old_records_only_in_bounded_calls() {
    let store = KvStore::open_temporary().unwrap();
    let uids: Vec<Uid> = (0..5)
        .map(|i| store.create_user(&format!("u{i}")).unwrap().uid)
        .collect();
    for (n, uid) in uids.iter().enumerate() {
        for i in 0..(3 + n) {
            answer(
                &store,
                *uid,
                &format!("{uid}:{i}"),
                1,
                1_000 + i as i64 * 1_000,
            );
        }
    }
    // Before 3 000: the records at 1 000 and 2 000 of each user go.
    let mut from = Uid(0);
    let mut removed = 0;
    let mut calls = 0;
    loop {
        let purge = store.purge_usage(3_000, from, 2).unwrap();
        removed += purge.removed;
        calls += 1;
        match purge.resume {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(calls, 3, "five users, two per call");
    assert_eq!(removed, 10);
    for (n, uid) in uids.iter().enumerate() {
        let left = all_usage(&store, *uid);
        assert_eq!(left.len(), 1 + n);
        assert!(left.iter().all(|r| r.at_ms >= 3_000));
    }
    assert_eq!(store.purge_usage(3_000, Uid(0), 10).unwrap().removed, 0);
    // The ledger is untouched.
    assert!(store.audit().unwrap().is_consistent());
}

#[test]
fn purging_many_records_of_one_user_takes_several_batches() {
    let (store, uid) = store_with_paid(0);
    for i in 0..(PURGE_BATCH + 20) {
        let id = store
            .reserve(uid, 0, &format!("z{i}"), DAY, FREE, LATER)
            .unwrap();
        store
            .settle_metered(
                id,
                0,
                "a",
                DAY,
                FREE,
                10,
                None,
                Some(note(UsageOutcome::Answered)),
            )
            .unwrap();
    }
    answer(&store, uid, "new", 1, 50);
    let purge = store.purge_usage(20, Uid(0), 10).unwrap();
    assert_eq!(purge.removed, PURGE_BATCH + 20);
    assert_eq!(all_usage(&store, uid).len(), 1);
}

#[test]
fn records_round_trip_and_tolerate_appended_fields() {
    let record = UsageRecord {
        uid: Uid(3),
        at_ms: 1_700_000_000_000,
        id: ReservationId(99),
        platform: "mp".into(),
        model: "深度思考".into(),
        prompt_tokens: 1 << 40,
        completion_tokens: 0,
        free: 127,
        paid: 128,
        plan: u64::MAX,
        refunded: 1,
        ledger_seq: Some(300),
        outcome: UsageOutcome::Stopped,
    };
    let key = usage_key(record.uid, record.at_ms, record.id.0);
    let mut value = encode_record(&record, &record.platform, &record.model);
    assert!(value.len() < 48, "compact: {} bytes", value.len());
    assert_eq!(read_record(&key, &value).unwrap(), record);
    value.extend_from_slice(&[5, 6, 7]);
    assert_eq!(
        read_record(&key, &value).unwrap(),
        record,
        "later fields ignored"
    );
    value[0] = 9;
    assert!(matches!(
        read_record(&key, &value),
        Err(StoreError::Corrupt { tree: "usage", .. })
    ));
    let short = encode_record(&record, "mp", "m");
    assert!(read_record(&key, &short[..short.len() - 1]).is_err());
    assert!(read_record(&key[..20], &short).is_err());
    assert_eq!(
        cut(&"长".repeat(100)).len(),
        126,
        "cut at a character boundary"
    );
}

#[test]
fn cursors_read_and_print() {
    let c: UsageCursor = "1700-42".parse().unwrap();
    assert_eq!(
        c,
        UsageCursor {
            at_ms: 1700,
            id: 42
        }
    );
    assert_eq!(c.to_string(), "1700-42");
    assert_eq!("5".parse::<UsageCursor>().unwrap().id, 0);
    for bad in ["", "x", "-1", "1-x", "1-2-3"] {
        assert!(bad.parse::<UsageCursor>().is_err(), "{bad}");
    }
}

#[test]
fn backups_and_copies_keep_the_log() {
    let (store, uid) = store_with_paid(20);
    answer(&store, uid, "m1", 4, 1_000);
    answer(&store, uid, "m2", 9, 2_000);
    let before = all_usage(&store, uid);
    assert_eq!(before.len(), 2);

    // Backups are the embedded store's (PostgreSQL has pg_dump).
    if !store.is_shared() {
        let mut file = Vec::new();
        store.export_backup(&mut file, 5_000).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("restored");
        KvStore::restore_backup(&mut file.as_slice(), &target, 1 << 20).unwrap();
        let restored = KvStore::open_closed(&target, 1 << 20).unwrap();
        assert_eq!(all_usage(&restored, uid), before);
    }

    // `migrate-data`'s copy, and the census that checks it.
    let copy = KvStore::open_temporary().unwrap();
    let report = store.copy_into(&copy).unwrap();
    assert!(report.trees.contains(&("usage", 2)), "{:?}", report.trees);
    assert_eq!(all_usage(&copy, uid), before);
    let census = copy.census(0).unwrap();
    assert_eq!((census.usage_records, census.usage_charged_sum), (2, 13));
    assert!(store.census(0).unwrap().differences(&census).is_empty());
}
