//! Tests of the relational store against a real PostgreSQL (`CHATRELAY_TEST_PG_URL`; each
//! test in a fresh schema). Without the variable they skip, saying so.

use super::RelStore;
use crate::kv::pg::PgOptions;

/// A store on a fresh schema, or `None` when no PostgreSQL is configured.
pub(super) async fn store() -> Option<RelStore> {
    let url = std::env::var("CHATRELAY_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    let opts = PgOptions {
        schema: Some(crate::temporary_schema()),
        pool_size: 24,
        ..PgOptions::new(url)
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
pub(super) use store_or_skip;
