//! `chatrelay migrate` in place and `migrate-data` into the relational tables, and the
//! opening that refuses layouts it does not understand (`layout.rs`, `migrate.rs`).

use super::super::RelStore;
use super::super::layout::{inspect, relational_tables};
use super::super::migrate::{census_differences, in_place};
use super::super::pool::Pool;
use super::super::schema::latest;
use super::assert_consistent;
use super::import::{FREE, TODAY, fill};
use crate::kv::Db;
use crate::kv::pg::PgOptions;
use crate::{
    Census, KvStore, OrderTally, StoreError, copy_into_relational, migrate_postgres_in_place,
    system_now_ms,
};

/// Options for a fresh schema, or `None` when no PostgreSQL is configured.
fn fresh() -> Option<PgOptions> {
    let url = std::env::var("CHATRELAY_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    Some(PgOptions {
        schema: Some(crate::open::temporary_schema()),
        pool_size: 8,
        ..PgOptions::new(url)
    })
}

macro_rules! opts_or_skip {
    () => {
        match fresh() {
            Some(opts) => opts,
            None => {
                eprintln!("skipped: CHATRELAY_TEST_PG_URL is not set");
                return;
            }
        }
    };
}

/// The tables and sequences of the schema of `opts`, by name.
async fn relations(opts: &PgOptions) -> Vec<String> {
    let pool = Pool::new(opts).unwrap();
    let conn = pool.get().await.unwrap();
    conn.query(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'S') ORDER BY 1",
        &[&opts.schema.clone().unwrap()],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// A fresh sled store.
fn sled_store() -> KvStore {
    let db = sled::Config::new().temporary(true).open().unwrap();
    KvStore::from_db(Db::Sled(db), None, 0).unwrap()
}

fn needs_migration(result: Result<RelStore, StoreError>) -> String {
    match result {
        Err(StoreError::NeedsMigration(text)) => text,
        Err(other) => panic!("expected NeedsMigration, got {other:?}"),
        Ok(_) => panic!("expected NeedsMigration, the store opened"),
    }
}

/// A one-table schema filled through today's store is refused (before anything is
/// created in it), migrated with an equal census and its old tables dropped, then opens
/// and answers as the old store did; migrating again is a no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_table_schema_migrates_in_place_and_then_opens() {
    let opts = opts_or_skip!();
    let kv = KvStore::open_postgres(&opts).unwrap();
    let m = fill(&kv);
    let now = system_now_ms();
    let before = kv.census(now).unwrap();
    let balances: Vec<_> = [m.a, m.b]
        .iter()
        .map(|uid| {
            (
                kv.balance(*uid, TODAY, FREE).unwrap(),
                kv.ledger(*uid, 100).unwrap(),
            )
        })
        .collect();
    let orders: Vec<_> = m.orders.iter().map(|id| kv.order(id).unwrap()).collect();
    drop(kv);
    let old_layout = relations(&opts).await;

    let text = needs_migration(RelStore::open_checked(&opts).await);
    assert!(
        text.contains("one-table layout") && text.contains("run `chatrelay migrate`"),
        "{text}"
    );
    assert_eq!(relations(&opts).await, old_layout, "nothing created");

    let mut lines = Vec::new();
    let report = migrate_postgres_in_place(&opts, |l| lines.push(l.to_owned()))
        .await
        .unwrap();
    let copied = report.copied.expect("a copy");
    assert_eq!(
        census_differences(&before, &copied.census),
        Vec::<String>::new()
    );
    assert_eq!(copied.census.users, 4);
    assert_eq!(
        (report.found_version, report.version, report.applied.len()),
        (0, latest(), usize::try_from(latest()).unwrap())
    );
    assert!(
        lines.iter().any(|l| l.contains("rows into ledger")),
        "{lines:?}"
    );
    let now_there = relations(&opts).await;
    for gone in [
        "chatrelay_kv",
        "chatrelay_migrations",
        "chatrelay_ids",
        "chatrelay_uids",
    ] {
        assert!(
            !now_there.iter().any(|r| r == gone),
            "{gone} in {now_there:?}"
        );
    }
    assert!(now_there.iter().any(|r| r == "ledger"));

    let rel = RelStore::open_checked(&opts).await.unwrap();
    for (uid, (balance, ledger)) in [m.a, m.b].iter().zip(&balances) {
        assert_eq!(&rel.balance(*uid, TODAY, FREE).await.unwrap(), balance);
        assert_eq!(&rel.ledger(*uid, 100).await.unwrap(), ledger);
    }
    for (id, order) in m.orders.iter().zip(&orders) {
        assert_eq!(&rel.order(id).await.unwrap(), order, "order {id}");
    }
    assert_consistent(&rel).await;
    assert_eq!(rel.create_user("next").await.unwrap().uid.0, 5);

    let again = migrate_postgres_in_place(&opts, |_| {}).await.unwrap();
    assert!(again.copied.is_none() && again.applied.is_empty() && !again.discarded_partial);
    assert_eq!(again.found_version, latest());
    RelStore::open_checked(&opts).await.unwrap();
}

/// A copy whose census differs (a balance changed between the copy and the census) keeps
/// the old table, names the figure, and leaves a schema a daemon refuses; the next run
/// discards the partial copy and migrates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_census_mismatch_keeps_the_old_table() {
    let opts = opts_or_skip!();
    let kv = KvStore::open_postgres(&opts).unwrap();
    let m = fill(&kv);
    let paid = kv.census(system_now_ms()).unwrap().paid_sum;
    drop(kv);
    let tamper = format!("UPDATE balances SET paid = paid + 1 WHERE uid = {}", m.a.0);
    let err = in_place(&opts, |_| {}, Some(&tamper)).await.unwrap_err();
    let text = match err {
        StoreError::NeedsMigration(text) => text,
        other => panic!("expected NeedsMigration, got {other:?}"),
    };
    let figure = format!("paid credits (sum): {paid} ≠ {}", paid + 1);
    assert!(text.contains(&figure), "{text}");
    assert!(
        !text.contains("users:"),
        "only differing figures are named: {text}"
    );
    assert!(relations(&opts).await.iter().any(|r| r == "chatrelay_kv"));
    let layout = inspect(&Pool::new(&opts).unwrap()).await.unwrap();
    assert!(layout.kv_rows && layout.interrupted(), "{layout:?}");
    let refused = needs_migration(RelStore::open_checked(&opts).await);
    assert!(
        refused.contains("interrupted migration") && refused.contains("`chatrelay migrate` again"),
        "{refused}"
    );

    let report = migrate_postgres_in_place(&opts, |_| {}).await.unwrap();
    assert!(report.discarded_partial);
    let copied = report.copied.unwrap();
    assert_eq!(copied.census.paid_sum, paid);
    let rel = RelStore::open_checked(&opts).await.unwrap();
    assert_consistent(&rel).await;
}

/// The comparison names each differing figure with both values, and nothing else.
#[test]
fn census_differences_name_each_figure() {
    let old = Census {
        users: 3,
        paid_sum: 100,
        ..Census::default()
    };
    let mut new = old.clone();
    assert!(census_differences(&old, &new).is_empty());
    new.users = 2;
    new.orders.insert(
        "credited".into(),
        OrderTally {
            count: 1,
            amount_fen: 990,
        },
    );
    assert_eq!(
        census_differences(&old, &new),
        [
            "users: 3 ≠ 2",
            "orders credited: 0 ≠ 1",
            "orders credited (fen): 0 ≠ 990"
        ]
    );
}

/// An import that claimed the schema and never finished (its census unchecked) is refused
/// by the daemon's opening and by `migrate`; `migrate-data` discards it and copies again.
#[tokio::test]
async fn an_interrupted_import_is_refused_until_copied_again() {
    let opts = opts_or_skip!();
    let src = sled_store();
    fill(&src);
    let rel = RelStore::open(&opts).await.unwrap();
    // What a migrate-data killed after the copy, before its census, leaves.
    rel.import_from(&src, |_, _| {}).await.unwrap();
    let refused = needs_migration(RelStore::open_checked(&opts).await);
    assert!(
        refused.contains("interrupted migration") && refused.contains("migrate-data"),
        "{refused}"
    );
    let err = migrate_postgres_in_place(&opts, |_| {}).await.unwrap_err();
    assert!(matches!(err, StoreError::NeedsMigration(_)), "{err:?}");

    let mut lines = Vec::new();
    let copied = copy_into_relational(&src, &opts, |l| lines.push(l.to_owned()))
        .await
        .unwrap();
    assert!(lines.iter().any(|l| l.contains("discarded")), "{lines:?}");
    assert_eq!(copied.census.users, 4);
    let rel = RelStore::open_checked(&opts).await.unwrap();
    assert_consistent(&rel).await;
    assert_eq!(rel.create_user("next").await.unwrap().uid.0, 5);

    // Finished: a second copy is refused as a non-empty schema, and changes nothing.
    let err = copy_into_relational(&src, &opts, |_| {}).await.unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(rel.census(system_now_ms()).await.unwrap().users, 5);
}

/// An empty schema is created fresh; a relational schema newer than this build is refused
/// by the opening and by `migrate`.
#[tokio::test]
async fn an_empty_schema_opens_and_a_newer_one_is_refused() {
    let opts = opts_or_skip!();
    let rel = RelStore::open_checked(&opts).await.unwrap();
    let tables = relations(&opts).await;
    for table in relational_tables() {
        assert!(tables.iter().any(|t| t == table), "{table} in {tables:?}");
    }
    let report = migrate_postgres_in_place(&opts, |_| {}).await.unwrap();
    assert_eq!((report.found_version, report.applied.len()), (latest(), 0));
    rel.rows(
        "UPDATE meta SET value = '999' WHERE key = 'schema_version'",
        &[],
    )
    .await
    .unwrap();
    assert!(matches!(
        RelStore::open_checked(&opts).await,
        Err(StoreError::SchemaTooNew { found: 999, .. })
    ));
    assert!(matches!(
        migrate_postgres_in_place(&opts, |_| {}).await,
        Err(StoreError::SchemaTooNew { found: 999, .. })
    ));
}

/// A schema holding a daemon's relational data and a one-table store with rows is refused
/// by the opening, by `migrate` (which drops nothing) and by `migrate-data`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_layouts_are_refused() {
    let opts = opts_or_skip!();
    let rel = RelStore::open(&opts).await.unwrap();
    rel.create_user("relational").await.unwrap();
    let kv = KvStore::open_postgres(&opts).unwrap();
    kv.create_user("one-table").unwrap();
    drop(kv);
    let text = needs_migration(RelStore::open_checked(&opts).await);
    assert!(text.contains("both layouts"), "{text}");
    let err = migrate_postgres_in_place(&opts, |_| {}).await.unwrap_err();
    assert!(err.to_string().contains("both layouts"), "{err}");
    assert!(relations(&opts).await.iter().any(|r| r == "chatrelay_kv"));
    let err = copy_into_relational(&sled_store(), &opts, |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("chatrelay_kv"), "{err}");
    assert_eq!(rel.census(system_now_ms()).await.unwrap().users, 1);
}

/// Once migrated, a one-table layout written again (an older chatrelay started on the
/// schema) is refused, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_layout_written_after_the_migration_is_refused() {
    let opts = opts_or_skip!();
    let kv = KvStore::open_postgres(&opts).unwrap();
    kv.create_user("before").unwrap();
    drop(kv);
    migrate_postgres_in_place(&opts, |_| {}).await.unwrap();
    let kv = KvStore::open_postgres(&opts).unwrap();
    kv.create_user("after").unwrap();
    drop(kv);
    let text = needs_migration(RelStore::open_checked(&opts).await);
    assert!(
        text.contains("both layouts") && text.contains("written since"),
        "{text}"
    );
}
