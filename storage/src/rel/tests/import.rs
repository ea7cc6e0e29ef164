//! The import of today's layout into the relational tables: a store with every kind of
//! record comes out with an equal census, and the relational store's operations find the
//! records where the old store had them.

use std::collections::BTreeSet;

use chatrelay_core::{Platform, UserKey};

use super::super::RelStore;
use super::assert_consistent;
use crate::kv::Db;
use crate::{
    CreditOutcome, EntryKind, KvStore, LedgerEntry, Order, OrderStatus, ReservationId,
    SharedAnswer, StoreError, Turn, Uid, system_now_ms,
};

/// A fresh sled store (whatever `CHATRELAY_TEST_PG_URL` says).
fn sled_store() -> KvStore {
    let db = sled::Config::new().temporary(true).open().unwrap();
    KvStore::from_db(Db::Sled(db), None, 0).unwrap()
}

/// What [`fill`] made, for the checks after the import.
pub(super) struct Made {
    pub(super) a: Uid,
    pub(super) b: Uid,
    mp: UserKey,
    settled: ReservationId,
    settled_entry: LedgerEntry,
    unpaid_settle: ReservationId,
    open: ReservationId,
    token: String,
    revoked: String,
    code: String,
    pub(super) orders: Vec<String>,
    waiting: Order,
}

pub(super) const TODAY: i64 = 20_000;
pub(super) const FREE: u64 = 10;

fn order(uid: Uid, id: &str, method: Option<&str>, now: i64) -> Order {
    Order {
        id: id.into(),
        uid,
        product_id: "p10".into(),
        product_name: "10 credits".into(),
        channel: "wechat".into(),
        method: method.map(str::to_owned),
        amount_fen: 100,
        credits: 10,
        status: OrderStatus::Created,
        created_at_ms: now,
        expires_at_ms: now + 3_600_000,
        code_url: Some("weixin://wxpay/x".into()),
        provider_trade_no: None,
        credited_at_ms: None,
        closed_at_ms: None,
        refunded_at_ms: None,
        plan: None,
    }
}

/// Every kind of record, through the store's public operations.
pub(super) fn fill(s: &KvStore) -> Made {
    let now = system_now_ms();
    let later = now + 3_600_000;
    let a = s.create_user("alice").unwrap().uid;
    let b = s.create_user("bob").unwrap().uid;
    let _c = s.create_user("carol").unwrap().uid;
    let mp = UserKey::new(Platform::Mp, "main", "oA1");
    s.link_identity(&mp, a).unwrap();
    s.link_identity(&UserKey::new(Platform::Web, "", "alice@x"), a)
        .unwrap();
    s.resolve_identity(&UserKey::new(Platform::Tg, "bot", "42"), Some("bob2"))
        .unwrap();
    s.set_banned(b, true, Some("spam")).unwrap();
    s.change_groups(a, &["vip".into(), "beta".into()], &[])
        .unwrap();

    s.grant(a, 1_000, EntryKind::Grant, "welcome", "g:a", now)
        .unwrap();
    s.grant(b, 50, EntryKind::Grant, "welcome", "g:b", now)
        .unwrap();
    s.debit(a, 7, EntryKind::Adjust, "fix", "adj:a", now)
        .unwrap();
    let settled = s.reserve(a, 30, "msg:1", TODAY, FREE, later).unwrap();
    let settled_entry = s
        .settle(settled, 25, "answer", TODAY, FREE, now)
        .unwrap()
        .unwrap();
    let unpaid_settle = s.reserve(b, 0, "msg:2", TODAY, FREE, later).unwrap();
    assert_eq!(
        s.settle(unpaid_settle, 0, "nothing", TODAY, FREE, now)
            .unwrap(),
        None
    );
    let open = s.reserve(a, 12, "msg:3", TODAY, FREE, later).unwrap();
    let (orders, waiting) = fill_orders(s, a, b, now);
    let token = s.create_token(a, "laptop", None, now).unwrap();
    let revoked = s.create_token(b, "old", Some(later), now).unwrap();
    s.revoke_token(&revoked, now).unwrap();
    let code = s.login_code(a, 600_000, now).unwrap().code;
    s.login_code(b, 1_000, now - 10_000).unwrap(); // expired
    fill_engine_records(s, now);
    Made {
        a,
        b,
        mp,
        settled,
        settled_entry,
        unpaid_settle,
        open,
        token,
        revoked,
        code,
        orders,
        waiting,
    }
}

/// Orders in every status (a refunded one, one credited after its close), waiting ones
/// of three methods, and events (one of no order).
fn fill_orders(s: &KvStore, a: Uid, b: Uid, now: i64) -> (Vec<String>, Order) {
    let waiting = s.create_order(&order(a, "O-wait", None, now), now).unwrap();
    s.create_order(&order(a, "O-jsapi", Some("jsapi"), now), now)
        .unwrap();
    s.create_order(&order(a, "O-h5", Some("h5"), now), now)
        .unwrap();
    for id in ["O-paid", "O-closed", "O-refunded", "O-late"] {
        s.create_order(&order(b, id, Some("precreate"), now), now)
            .unwrap();
        s.add_order_event(id, "created", "by the test", now)
            .unwrap();
        match id {
            "O-paid" | "O-refunded" => {
                s.credit_order(id, 100, Some("T1"), now).unwrap();
            }
            _ => {
                s.close_order(id, now).unwrap();
            }
        }
    }
    s.refund_order("O-refunded", "asked", now).unwrap();
    s.credit_order("O-late", 100, None, now + 1).unwrap();
    s.add_order_event("forged", "notify", "no such order", now)
        .unwrap();
    let orders = [
        "O-wait",
        "O-jsapi",
        "O-h5",
        "O-paid",
        "O-closed",
        "O-refunded",
        "O-late",
    ];
    (orders.iter().map(|s| (*s).to_owned()).collect(), waiting)
}

/// Conversations, outbox, checkpoints and counters, marks, answers and handoffs (with an
/// expired mark and handoff).
fn fill_engine_records(s: &KvStore, now: i64) {
    let later = now + 3_600_000;
    let turn = |role: &str, content: &str, at| Turn {
        role: role.into(),
        content: content.into(),
        at_ms: at,
    };
    let turns = [
        turn("user", "hi", now - 2),
        turn("assistant", "hello", now - 1),
        turn("user", "more", now),
    ];
    s.append_turns("mp:main:oA1", &turns, 10).unwrap();
    s.append_turns("tg:bot:42", &turns[..1], 10).unwrap();
    s.outbox_push("mp:main:oA1", "owed 1").unwrap();
    s.outbox_push("mp:main:oA1", "owed 2").unwrap();

    s.set_checkpoint("zsxq:main:topic:1", Some("answered"))
        .unwrap();
    s.bump_counter("zsxq:main:day:20000").unwrap();
    s.add_counters(
        &[("stats:20000:credits".into(), 25)],
        &["stats:20000:active:1".into()],
    )
    .unwrap();
    s.dedupe_insert("mp:msg:1", later, now).unwrap();
    s.dedupe_insert("mp:msg:old", now - 1, now - 10).unwrap(); // expired
    s.dedupe_bind("nonce:1", "bodyhash", later, now).unwrap();
    let answer = SharedAnswer {
        text: Some("kept answer".into()),
        expires_at_ms: later,
    };
    s.put_answer("answer:1", &answer).unwrap();
    s.put_handoff("state:1", "pending", later).unwrap();
    s.put_handoff("state:old", "x", now - 1).unwrap(); // expired
}

/// Imports `src` into `rel`, checks both censuses are equal, returns what was skipped.
async fn import_and_compare(src: &KvStore, rel: &RelStore) -> u64 {
    let imported = rel.import_from(src, |_, _| {}).await.unwrap();
    let now = system_now_ms();
    let before = src.census(now).unwrap();
    let after = rel.census(now).await.unwrap();
    assert_eq!(
        before.differences(&after),
        Vec::<String>::new(),
        "\n{before}\n{after}"
    );
    assert_eq!(before, after);
    assert!(src.audit().unwrap().is_consistent());
    assert_consistent(rel).await;
    imported.skipped_expired
}

#[tokio::test]
async fn a_sled_store_imports_whole_and_works_on() {
    let rel = store_or_skip!();
    let src = sled_store();
    let m = fill(&src);
    let census = src.census(system_now_ms()).unwrap();
    assert_eq!((census.users, census.identities, census.tokens), (4, 3, 2));
    assert_eq!(census.orders["refunded"].count, 1, "{census}");
    assert_eq!(
        import_and_compare(&src, &rel).await,
        3,
        "expired mark, handoff, code"
    );
    let now = system_now_ms();

    check_money(&src, &rel, &m, now).await;
    check_people(&src, &rel, &m, now).await;
    check_orders(&src, &rel, &m, now).await;
    check_engine_records(&src, &rel, now).await;
    assert_consistent(&rel).await;
}

/// Settled references answer the same, open ones keep their ids, new ids are new, grants
/// stay idempotent, balances and ledgers are the same.
async fn check_money(src: &KvStore, rel: &RelStore, m: &Made, now: i64) {
    let again = rel
        .settle(m.settled, 999, "again", TODAY, FREE, now)
        .await
        .unwrap();
    assert_eq!(again, Some(m.settled_entry.clone()));
    let unpaid = rel
        .settle(m.unpaid_settle, 5, "again", TODAY, FREE, now)
        .await
        .unwrap();
    assert_eq!(unpaid, None);
    match rel.reserve(m.a, 1, "msg:1", TODAY, FREE, now + 1_000).await {
        Err(StoreError::AlreadySettled(entry)) => assert_eq!(*entry, m.settled_entry),
        other => panic!("expected AlreadySettled, got {other:?}"),
    }
    assert_eq!(
        rel.reserve(m.a, 12, "msg:3", TODAY, FREE, now + 1_000)
            .await
            .unwrap(),
        m.open
    );
    let fresh = rel
        .reserve(m.a, 1, "msg:new", TODAY, FREE, now + 1_000)
        .await
        .unwrap();
    assert!(
        fresh.0 > m.open.0.max(m.settled.0).max(m.unpaid_settle.0),
        "{fresh:?}"
    );
    let granted = rel
        .grant(m.a, 1_000, EntryKind::Grant, "welcome", "g:a", now)
        .await
        .unwrap();
    assert_eq!(Some(granted), src.ledger_by_reference("g:a").unwrap());
    for uid in [m.a, m.b] {
        let mut theirs = src.balance(uid, TODAY, FREE).unwrap();
        if uid == m.a {
            theirs.held += 1; // msg:new
            theirs.available -= 1;
        }
        assert_eq!(
            rel.balance(uid, TODAY, FREE).await.unwrap(),
            theirs,
            "user {uid}"
        );
        assert_eq!(
            rel.ledger(uid, 100).await.unwrap(),
            src.ledger(uid, 100).unwrap()
        );
    }
}

/// Users, identities, tokens, login codes.
async fn check_people(src: &KvStore, rel: &RelStore, m: &Made, now: i64) {
    let next = rel.create_user("dave").await.unwrap();
    assert_eq!(next.uid, Uid(5), "past the copied uids");
    assert_eq!(rel.user(m.b).await.unwrap(), src.user(m.b).unwrap());
    assert_eq!(
        rel.user(m.a).await.unwrap().unwrap().groups,
        ["beta", "vip"]
    );

    assert_eq!(rel.identity(&m.mp).await.unwrap(), Some(m.a));
    assert_eq!(
        rel.identities_of(m.a).await.unwrap(),
        src.identities_of(m.a).unwrap()
    );
    assert_eq!(rel.token_uid(&m.token, now).await.unwrap(), Some(m.a));
    assert_eq!(rel.token_uid(&m.revoked, now).await.unwrap(), None);
    assert_eq!(
        rel.tokens_of(m.b).await.unwrap(),
        src.tokens_of(m.b).unwrap()
    );
    assert_eq!(
        rel.login_code(m.a, 600_000, now).await.unwrap().code,
        m.code
    );
    assert_eq!(
        rel.consume_login_code(&m.code, now).await.unwrap(),
        Some(m.a)
    );
}

/// Orders, their events and slots, and transitions after the import.
async fn check_orders(src: &KvStore, rel: &RelStore, m: &Made, now: i64) {
    for id in &m.orders {
        assert_eq!(
            rel.order(id).await.unwrap(),
            src.order(id).unwrap(),
            "order {id}"
        );
        assert_eq!(
            rel.order_events(id).await.unwrap(),
            src.order_events(id).unwrap()
        );
    }
    assert_eq!(rel.order_events("forged").await.unwrap().len(), 1);
    let ids = |orders: Vec<Order>| orders.into_iter().map(|o| o.id).collect::<BTreeSet<_>>();
    assert_eq!(
        ids(rel.open_orders().await.unwrap()),
        ids(src.open_orders().unwrap())
    );
    // The waiting order kept its slot: asking again for the same pack gets it back.
    let again = order(m.a, "O-new", None, now);
    assert_eq!(rel.create_order(&again, now).await.unwrap(), m.waiting);
    let jsapi = order(m.a, "O-new2", Some("jsapi"), now);
    assert_eq!(rel.create_order(&jsapi, now).await.unwrap().id, "O-jsapi");
    let h5 = order(m.a, "O-new3", Some("h5"), now);
    assert_eq!(
        rel.create_order(&h5, now).await.unwrap().id,
        "O-new3",
        "never shared"
    );
    let rows = rel
        .rows(
            "SELECT id, open_slot FROM orders WHERE id IN ('O-jsapi', 'O-h5') ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let slots: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        slots,
        [
            ("O-h5".into(), "p10\u{1f}wechat\u{1f}h5\u{1f}O-h5".into()),
            ("O-jsapi".into(), "p10\u{1f}wechat\u{1f}jsapi".into())
        ]
    );
    // A refunded order stays refunded; a waiting one is credited once.
    assert!(matches!(
        rel.credit_order("O-refunded", 100, None, now)
            .await
            .unwrap(),
        CreditOutcome::AlreadyCredited
    ));
    assert!(matches!(
        rel.credit_order("O-wait", 100, None, now).await.unwrap(),
        CreditOutcome::Credited(_)
    ));
}

/// Conversations, marks, handoffs, answers, outbox, checkpoints and stats.
async fn check_engine_records(src: &KvStore, rel: &RelStore, now: i64) {
    for key in ["mp:main:oA1", "tg:bot:42"] {
        assert_eq!(
            rel.conversation(key).await.unwrap(),
            src.conversation(key).unwrap()
        );
    }
    assert!(
        !rel.dedupe_insert("mp:msg:1", now + 1_000, now)
            .await
            .unwrap(),
        "live mark"
    );
    assert!(
        rel.dedupe_insert("mp:msg:old", now + 1_000, now)
            .await
            .unwrap(),
        "not copied"
    );
    assert!(
        rel.dedupe_bind("nonce:1", "bodyhash", now + 1_000, now)
            .await
            .unwrap()
    );
    assert!(
        !rel.dedupe_bind("nonce:1", "other", now + 1_000, now)
            .await
            .unwrap()
    );
    assert_eq!(
        rel.handoff("state:1", now).await.unwrap().as_deref(),
        Some("pending")
    );
    assert_eq!(rel.handoff("state:old", now).await.unwrap(), None);
    let rows = rel
        .rows(
            "SELECT (SELECT string_agg(text, '|' ORDER BY seq) FROM outbox) AS outbox,
                    (SELECT text FROM answers WHERE key = 'answer:1') AS answer,
                    (SELECT n FROM stats WHERE key = 'stats:20000:credits')::text AS credits,
                    (SELECT count(*) FROM stats)::text AS stats,
                    (SELECT value FROM checkpoints WHERE key = 'zsxq:main:day:20000') AS day",
            &[],
        )
        .await
        .unwrap();
    let row = &rows[0];
    let get = |name: &str| row.get::<_, Option<String>>(name);
    assert_eq!(get("outbox").as_deref(), Some("owed 1|owed 2"));
    assert_eq!(get("answer").as_deref(), Some("kept answer"));
    assert_eq!(get("credits").as_deref(), Some("25"));
    assert_eq!(
        get("stats").as_deref(),
        Some("2"),
        "the counter and the active marker"
    );
    assert_eq!(
        get("day").as_deref(),
        Some("1"),
        "other counters stay checkpoints"
    );
}

#[tokio::test]
async fn a_second_import_into_the_same_schema_is_refused() {
    let rel = store_or_skip!();
    let src = sled_store();
    fill(&src);
    rel.import_from(&src, |_, _| {}).await.unwrap();
    let err = rel.import_from(&src, |_, _| {}).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    assert!(err.to_string().contains("never merges"), "{err}");

    // An empty source leaves no users, but its import is still the schema's one import.
    let rel = store_or_skip!();
    let empty = sled_store();
    rel.import_from(&empty, |_, _| {}).await.unwrap();
    let err = rel.import_from(&src, |_, _| {}).await.unwrap_err();
    assert!(err.to_string().contains("started before"), "{err}");
    // A schema a daemon wrote to is refused too.
    let rel = store_or_skip!();
    rel.create_user("someone").await.unwrap();
    assert!(rel.import_from(&src, |_, _| {}).await.is_err());
}

#[tokio::test]
async fn twenty_thousand_ledger_entries_import_in_batches() {
    let rel = store_or_skip!();
    let src = sled_store();
    let now = system_now_ms();
    for u in 0..200 {
        let uid = src.create_user(&format!("u{u}")).unwrap().uid;
        for n in 0..100 {
            let reference = format!("g:{u}:{n}");
            src.grant(uid, 1 + n, EntryKind::Grant, "bulk", &reference, now)
                .unwrap();
        }
    }
    let mut ledger_progress = Vec::new();
    let started = std::time::Instant::now();
    let imported = rel
        .import_from(&src, |table, rows| {
            if table == "ledger" {
                ledger_progress.push(rows);
            }
        })
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!(
        "imported 200 users and 20,000 ledger entries in {} batches, {took:?}",
        imported.batches
    );
    let steps: Vec<u64> = (1..=10).map(|i| i * 2_000).collect();
    assert_eq!(ledger_progress, steps, "ten batches of 2,000 entries");
    assert!(
        imported.tables.contains(&("ledger", 20_000)),
        "{:?}",
        imported.tables
    );
    let now = system_now_ms();
    assert_eq!(src.census(now).unwrap(), rel.census(now).await.unwrap());
    assert_consistent(&rel).await;
}

/// Today's one-table PostgreSQL schema (`KvStore::open_temporary` with the variable set)
/// imports the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_table_postgres_store_imports_whole() {
    let rel = store_or_skip!();
    let src = KvStore::open_temporary().unwrap();
    assert_eq!(src.backend_name(), "postgres");
    let m = fill(&src);
    assert_eq!(import_and_compare(&src, &rel).await, 3);
    let now = system_now_ms();
    let again = rel
        .settle(m.settled, 1, "again", TODAY, FREE, now)
        .await
        .unwrap();
    assert_eq!(again, Some(m.settled_entry));
    assert_eq!(rel.token_uid(&m.token, now).await.unwrap(), Some(m.a));
}

#[tokio::test]
async fn a_store_of_older_json_values_imports() {
    use crate::quota::value::tests::{DAY, OPEN, write_json_records};
    let rel = store_or_skip!();
    let src = sled_store();
    let uid = write_json_records(&src);
    // A binary entry beside the JSON ones (a store written by both versions).
    src.grant(uid, 10, EntryKind::Grant, "gift", "g2", 8)
        .unwrap();
    assert_eq!(import_and_compare(&src, &rel).await, 0);
    assert_eq!(
        rel.ledger(uid, 100).await.unwrap(),
        src.ledger(uid, 100).unwrap()
    );
    assert_eq!(
        rel.balance(uid, DAY, 10).await.unwrap(),
        src.balance(uid, DAY, 10).unwrap()
    );
    let settled = rel.settle(OPEN, 6, "answer", DAY, 10, 9).await.unwrap();
    assert_eq!(settled.map(|e| e.seq), Some(4));
}
