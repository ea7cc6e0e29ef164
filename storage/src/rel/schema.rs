//! The relational schema's versioned migrations and how they are applied.
//!
//! Each migration is a file in `schema/`, applied once, in order, in one transaction with the
//! version it reaches written to `meta.schema_version`. Daemons starting together take a
//! transaction-scoped advisory lock first, so they apply each migration once. A schema whose
//! version this build does not know is refused.

use crate::StoreError;
use crate::kv::pg::lock_key;

use super::pool::Pool;
use super::{Retry, db_err};

/// The migrations, in order: (version, name, SQL). Never edit one that has shipped.
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "tables: users, identities, balances, ledger, reservations, orders, tokens, ...",
        include_str!("schema/0001_tables.sql"),
    ),
    (
        2,
        "codes, plans, usage log, admin change log",
        include_str!("schema/0002_codes_plans_usage.sql"),
    ),
    (
        3,
        "admin paths and web chats: users by creation time, chats",
        include_str!("schema/0003_admin_chats.sql"),
    ),
];

/// What [`migrate`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Migrated {
    /// The version found (0: a schema without chatrelay's tables).
    pub(crate) from: i64,
    /// The versions this run applied.
    pub(crate) applied: Vec<i64>,
}

/// The newest version this build knows.
pub(crate) fn latest() -> i64 {
    MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0)
}

/// Applies every pending migration to the pool's schema (creating it if needed).
pub(crate) async fn migrate(pool: &Pool) -> Result<Migrated, StoreError> {
    let mut conn = pool.get().await?;
    let schema = pool.schema().to_owned();
    let tx = conn.transaction().await.map_err(hard)?;
    // Held until commit: daemons starting together wait here, then find the work done.
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&lock_key(&format!("{schema}/rel-migrations"))],
    )
    .await
    .map_err(hard)?;
    // Only when missing: CREATE SCHEMA IF NOT EXISTS still needs the right to create schemas,
    // which a role given an existing schema may lack.
    let exists = tx
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .map_err(hard)?
        .is_some();
    if !exists {
        tx.batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
            .await
            .map_err(hard)?;
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS meta (
             key text PRIMARY KEY,
             value text NOT NULL
         )",
    )
    .await
    .map_err(hard)?;
    let found: Option<String> = tx
        .query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])
        .await
        .map_err(hard)?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(hard)?;
    let from = match found {
        None => 0,
        Some(text) => text
            .parse::<i64>()
            .map_err(|e| StoreError::corrupt("meta", "schema_version", e))?,
    };
    if from > latest() {
        return Err(StoreError::SchemaTooNew {
            found: u32::try_from(from).unwrap_or(u32::MAX),
            supported: u32::try_from(latest()).unwrap_or(u32::MAX),
        });
    }
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > from) {
        tx.batch_execute(sql).await.map_err(hard)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&version.to_string()],
        )
        .await
        .map_err(hard)?;
        tracing::info!(
            version,
            name,
            schema,
            "applied a migration of the relational store"
        );
        applied.push(*version);
    }
    tx.commit().await.map_err(hard)?;
    Ok(Migrated { from, applied })
}

/// A migration's failure: never retried (it runs under a lock, alone).
fn hard(e: tokio_postgres::Error) -> StoreError {
    match db_err(e) {
        Retry::Again(e) | Retry::Fail(e) => e,
    }
}
