//! The domain interface on every engine: one suite. Each case runs on a temporary sled
//! database and, when `CHATRELAY_TEST_PG_URL` is set (CI sets it), on a fresh relational
//! schema and on the one-table PostgreSQL layout (the key-value store kept for migrations),
//! with the same values and the same answers (`{engine}` in every assertion names the engine
//! that failed). What only one engine has (statement counts, raw SQL, the import and
//! migrations, sled's trees) is tested beside it: `rel/tests` and the sled modules' tests.

mod admin;
mod admin_log;
pub(crate) mod chats;
mod codes;
mod misc;
mod money;
mod orders;
mod outbox;
mod plans;
mod usage;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chatrelay_core::{Platform, UserKey};

use super::Engine;
use crate::kv::Db;
use crate::rel::RelStore;
use crate::{EntryKind, KvStore, PgOptions, PlanGrant, Remember, Store, StoreError, Turn, Uid};

/// Every engine a case runs on, by name: `sled`, then `relational` and `one-table` when
/// PostgreSQL is set.
pub(super) async fn engines() -> Vec<(&'static str, Store)> {
    let sled = Db::Sled(sled::Config::new().temporary(true).open().unwrap());
    let mut all = vec![(
        "sled",
        Store::from(KvStore::from_db(sled, None, 0).unwrap()),
    )];
    if let Some(opts) = crate::test_pg_options() {
        all.push(("relational", Store::open_postgres(&opts).await.unwrap()));
        let opts = PgOptions {
            schema: Some(crate::open::temporary_schema()),
            ..opts
        };
        // The older one-table layout, kept to migrate from (opened off the runtime: its
        // calls block).
        let one_table = tokio::task::spawn_blocking(move || KvStore::open_postgres(&opts))
            .await
            .unwrap()
            .unwrap();
        all.push(("one-table", Store::from(one_table)));
    }
    all
}

/// The relational engine of `store`, for the checks only it can make (its statements, its
/// tables); `None` on sled.
pub(super) fn rel(store: &Store) -> Option<&RelStore> {
    match &store.engine {
        Engine::Rel(r) => Some(r),
        Engine::Kv(_) => None,
    }
}

/// Statements sent so far on the relational engine (0 on sled), for [`assert_trips`].
pub(super) fn sent(store: &Store) -> u64 {
    rel(store).map_or(0, RelStore::statements_sent)
}

/// On the relational engine, that exactly `trips` statements went out since `before`
/// ([`sent`]); sled has no round trips to count.
pub(super) fn assert_trips(engine: &str, store: &Store, before: u64, trips: u64) {
    if let Some(r) = rel(store) {
        assert_eq!(r.statements_sent() - before, trips, "{engine}: round trips");
    }
}

/// Checks every balance against the ledger and the open reservations with the engine's own
/// audit (paid the sum of the paid deltas, each entry's `paid_after` the running sum, held the
/// sum of the open holds, a gapless sequence), and on PostgreSQL with SQL of its own too.
pub(super) async fn assert_consistent(engine: &str, store: &Store) {
    let report = store.audit().await.unwrap();
    assert!(
        report.is_consistent(),
        "{engine}: inconsistent store: {:?}",
        report.mismatches
    );
    if let Some(r) = rel(store) {
        crate::rel::tests::assert_consistent(r).await;
    }
}

/// The key of user `user` on the main WeChat account.
pub(super) fn key(user: &str) -> UserKey {
    UserKey::new(Platform::Mp, "main", user)
}

/// A new user holding `paid` purchased credits.
pub(super) async fn with_paid(store: &Store, paid: u64) -> Uid {
    let uid = store.create_user("u").await.unwrap().uid;
    if paid > 0 {
        store
            .grant(
                uid,
                paid,
                EntryKind::Purchase,
                "order",
                &format!("seed{uid}"),
                1,
            )
            .await
            .unwrap();
    }
    uid
}

/// The month plan of the plan cases (UTC+8, as `quota.timezone = "Asia/Shanghai"`).
pub(super) fn month() -> PlanGrant {
    PlanGrant {
        id: "month".into(),
        name: "月卡".into(),
        days: 30,
        daily_credits: 20,
        utc_offset_secs: 8 * 3600,
    }
}

/// How many of `n` racing calls of `attempt` said true.
pub(super) async fn winners<F, Fut>(store: &Store, n: usize, attempt: F) -> usize
where
    F: Fn(Store, usize) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let wins = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (fut, wins) = (attempt(store.clone(), i), wins.clone());
            tokio::spawn(async move {
                if fut.await {
                    wins.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    wins.load(Ordering::SeqCst)
}

#[tokio::test]
async fn a_message_is_admitted_reserved_settled_and_remembered_once() {
    for (engine, store) in engines().await {
        let key: chatrelay_core::UserKey = "mp:main:o1".parse().unwrap();
        let uid = match store
            .admit(&key, Some("Ann"), "m1", 10_000, 1)
            .await
            .unwrap()
        {
            crate::Admission::New(uid) => uid,
            crate::Admission::Seen => panic!("{engine}: a first message seen"),
        };
        assert!(
            matches!(
                store.admit(&key, None, "m1", 10_000, 2).await.unwrap(),
                crate::Admission::Seen
            ),
            "{engine}"
        );
        store
            .grant(uid, 50, EntryKind::Purchase, "order", "o-1", 3)
            .await
            .unwrap();
        let id = store
            .reserve(uid, 20, "msg:1", 0, 0, i64::MAX)
            .await
            .unwrap();
        let held = store.balance(uid, 0, 0).await.unwrap();
        assert_eq!((held.paid, held.held), (50, 20), "{engine}");
        let turns = [Turn {
            role: "user".into(),
            content: "hi".into(),
            at_ms: 4,
        }];
        for at in [4, 5] {
            let remember = Remember {
                conversation: "c1",
                turns: &turns,
                max_turns: 4,
            };
            store
                .settle_metered(id, 12, "answer", 0, 0, at, Some(remember), None)
                .await
                .unwrap();
        }
        let after = store.balance(uid, 0, 0).await.unwrap();
        assert_eq!((after.paid, after.held), (38, 0), "{engine}");
        assert_eq!(store.conversation("c1").await.unwrap(), turns, "{engine}");
        let ledger = store.ledger(uid, 10).await.unwrap();
        assert_eq!(ledger.len(), 2, "{engine}");
        assert!(matches!(
            store.release(id).await,
            Ok(false) | Err(StoreError::UnknownReservation(_))
        ));
        // A grant again under its reference changes nothing.
        store
            .grant(uid, 50, EntryKind::Purchase, "order", "o-1", 6)
            .await
            .unwrap();
        assert_eq!(store.balance(uid, 0, 0).await.unwrap().paid, 38, "{engine}");
        assert!(
            store.audit().await.unwrap().mismatches.is_empty(),
            "{engine}"
        );
    }
}

#[tokio::test]
async fn leadership_and_sharing_follow_the_engine() {
    for (engine, store) in engines().await {
        let lead = store.try_lead("job").await.unwrap();
        assert!(lead.is_some(), "{engine}");
        assert_eq!(store.is_shared(), engine != "sled", "{engine}");
        if store.is_shared() {
            assert!(store.try_lead("job").await.unwrap().is_none());
        }
        drop(lead);
        assert!(store.probe_write().await, "{engine}");
        store.flush().await.unwrap();
    }
}
