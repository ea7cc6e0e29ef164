//! Tests of the relational store itself against a real PostgreSQL (`CHATRELAY_TEST_PG_URL`;
//! each test in a fresh schema): what only it has (raw SQL, the import, migrations, leases).
//! The cases both engines share are one suite in `facade/tests`. Without the variable they
//! skip, saying so.

use super::RelStore;
use crate::kv::pg::PgOptions;

/// A store on a fresh schema, or `None` when no PostgreSQL is configured.
pub(super) async fn store() -> Option<RelStore> {
    let opts = PgOptions {
        pool_size: 24,
        ..crate::test_pg_options()?
    };
    Some(RelStore::open(&opts).await.unwrap())
}

/// The store of a test, or a skip.
macro_rules! store_or_skip {
    () => {
        match crate::rel::tests::store().await {
            Some(store) => store,
            None => {
                eprintln!("skipped: CHATRELAY_TEST_PG_URL is not set");
                return;
            }
        }
    };
}

mod admin;
mod chats;
mod import;
mod lead;
mod migrate;
mod misc;
mod outbox;
mod plans;
mod trips;

/// Runs one statement of a test on `store` and returns its rows (for the suite in
/// `facade/tests`, whose relational checks read the tables themselves).
pub(crate) async fn sql(
    store: &RelStore,
    sql: &str,
    params: &super::Params<'_>,
) -> Vec<tokio_postgres::Row> {
    store.rows(sql, params).await.unwrap()
}

/// Checks every balance against the ledger and the open reservations: paid is the sum of
/// the paid deltas, each entry's `paid_after` the running sum, held the sum of the open
/// holds, and `next_seq` one past a gapless sequence.
pub(crate) async fn assert_consistent(store: &RelStore) {
    let rows = store
        .rows(
            "WITH l AS (SELECT uid, sum(paid_delta) AS s, max(seq) AS m, count(*) AS c
                        FROM ledger GROUP BY uid),
                  r AS (SELECT uid, sum(amount) AS h FROM reservations
                        WHERE status = 'open' GROUP BY uid)
             SELECT b.uid::text AS uid FROM balances b
             LEFT JOIN l ON l.uid = b.uid LEFT JOIN r ON r.uid = b.uid
             WHERE b.paid <> COALESCE(l.s, 0) OR b.held <> COALESCE(r.h, 0)
                OR b.next_seq <> COALESCE(l.m, 0) + 1 OR COALESCE(l.c, 0) <> COALESCE(l.m, 0)
             UNION ALL
             SELECT uid::text || '/' || seq::text FROM (
                 SELECT uid, seq, paid_after,
                        sum(paid_delta) OVER (PARTITION BY uid ORDER BY seq) AS running
                 FROM ledger) AS e
             WHERE paid_after <> running",
            &[],
        )
        .await
        .unwrap();
    let bad: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(bad.is_empty(), "inconsistent balances or entries: {bad:?}");
}
