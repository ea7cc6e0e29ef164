//! Moving a store onto the relational tables (issue 21, item 5): `chatrelay migrate` on a
//! PostgreSQL schema of today's one-table layout ([`migrate_postgres_in_place`]) and
//! `chatrelay migrate-data --from sled:DIR` ([`copy_into_relational`]).
//!
//! Both copy with the importer (`import.rs`, then the web conversations), then take the
//! census of both sides (`census.rs`, `rel/census.rs`) and only when every figure is equal
//! mark the import finished (`meta.import_finished_at_ms`); in place, the same transaction
//! drops the old table. A difference keeps everything (the old data untouched, the copy
//! marked unfinished, which a daemon refuses to open) and names each differing figure. Run
//! again, a migration discards the partial copy of an unfinished one and starts over.
//! One migration at a time per schema (a session advisory lock); daemons must be stopped.

use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::layout::{
    KV_SEQUENCES, KV_TABLES, Layout, SOURCE_KV, discard_partial_import, hard, inspect,
};
use super::pool::Pool;
use super::schema::{self, latest};
use super::{RelStore, col, one};
use crate::kv::pg::{PgOptions, lock_key};
use crate::{Census, KvStore, StoreError, system_now_ms};

/// What a copy into the relational tables wrote, and the census both sides agreed on.
#[derive(Clone, Debug)]
pub struct RelCopyReport {
    /// Rows written per table, in the order written (`chats` last).
    pub tables: Vec<(String, u64)>,
    /// Expired dedupe marks, answers, handoffs and login codes left behind.
    pub skipped_expired: u64,
    /// The census, equal on both sides.
    pub census: Census,
}

/// What [`migrate_postgres_in_place`] found and did.
#[derive(Clone, Debug)]
pub struct InPlaceReport {
    /// The schema.
    pub schema: String,
    /// The relational schema version found (0: no relational tables yet).
    pub found_version: i64,
    /// The relational migrations this run applied.
    pub applied: Vec<i64>,
    /// The relational schema version now.
    pub version: i64,
    /// Whether an unfinished migration's partial copy was discarded first.
    pub discarded_partial: bool,
    /// The copy of the one-table layout, if there was one to copy.
    pub copied: Option<RelCopyReport>,
    /// The one-table layout's tables and sequences dropped after the census matched.
    pub dropped: Vec<String>,
}

/// `chatrelay migrate` on PostgreSQL: upgrades the schema of `opts` in place.
///
/// - Relational tables only (or nothing): applies the pending relational migrations.
///   Running it again on a migrated schema does nothing but say so.
/// - Today's one-table layout (`chatrelay_kv` holding rows): applies the relational
///   migrations, copies every record into the relational tables, compares the census of
///   both sides, and only if every figure is equal drops `chatrelay_kv` (with its migration
///   list and sequences) and marks the migration finished, in one transaction. A
///   difference keeps the old table, leaves the copy marked unfinished (which a daemon
///   refuses) and returns [`StoreError::NeedsMigration`] naming each differing figure.
/// - A copy left unfinished by an earlier run is discarded and made again.
/// - Refused: a schema holding both layouts, a relational schema newer than this build.
///
/// `progress` gets one line per step (and per batch of copied rows). Run it with every
/// daemon on the schema stopped.
pub async fn migrate_postgres_in_place(
    opts: &PgOptions,
    progress: impl FnMut(&str),
) -> Result<InPlaceReport, StoreError> {
    in_place(opts, progress, None).await
}

/// `chatrelay migrate-data --from sled:DIR`: copies `source` (a store of today's layout,
/// normally a sled directory) into the relational tables of the schema of `opts`, which
/// must be empty (or hold only an unfinished copy, which is discarded first), and checks
/// the census of both sides; only then is the copy marked finished (a daemon opens it).
/// A difference returns [`StoreError::NeedsMigration`] naming each differing figure, and
/// leaves the copy unfinished. Run it with the daemon stopped.
pub async fn copy_into_relational(
    source: &KvStore,
    opts: &PgOptions,
    mut progress: impl FnMut(&str),
) -> Result<RelCopyReport, StoreError> {
    let pool = Pool::new(opts)?;
    let schema = pool.schema().to_owned();
    let _alone = exclusive(&pool).await?;
    let layout = inspect(&pool).await?;
    refuse_too_new(&layout)?;
    if layout.kv_rows {
        return Err(StoreError::InvalidInput(format!(
            "schema {schema} is not empty: it holds the one-table layout of an older chatrelay \
             (chatrelay_kv); migrate-data copies only into an empty schema: name another \
             (--schema), or run `chatrelay migrate` to move that data into the relational tables"
        )));
    }
    if layout.interrupted() && layout.import_source.as_deref() != Some(SOURCE_KV) {
        discard_partial_import(&pool).await?;
        progress(&format!(
            "discarded the partial copy of an unfinished migrate-data into schema {schema} \
             (started at {} ms)",
            layout.import_started.as_deref().unwrap_or("?")
        ));
    } else if layout.rel_data || layout.import_started.is_some() {
        let what = match &layout.import_finished {
            Some(at) => format!("a copy finished at {at} ms"),
            None if layout.interrupted() => "an unfinished in-place migration".to_owned(),
            None => "a daemon's data".to_owned(),
        };
        return Err(StoreError::InvalidInput(format!(
            "schema {schema} is not empty: its relational tables hold {what}; migrate-data \
             copies only into an empty schema (two stores are never merged)"
        )));
    }
    let migrated = schema::migrate(&pool).await?;
    if !migrated.applied.is_empty() {
        progress(&format!(
            "schema {schema}: relational tables at version {}",
            latest()
        ));
    }
    let rel = RelStore::from_pool(pool.clone());
    let report = copy_verified(&rel, source, &mut progress, None).await?;
    mark_finished(&pool, false).await?;
    Ok(report)
}

/// [`migrate_postgres_in_place`], with a statement run on the copy before the census (for
/// tests: a tampered copy must not replace the old data).
pub(crate) async fn in_place(
    opts: &PgOptions,
    mut progress: impl FnMut(&str),
    tamper: Option<&str>,
) -> Result<InPlaceReport, StoreError> {
    let pool = Pool::new(opts)?;
    let schema = pool.schema().to_owned();
    let _alone = exclusive(&pool).await?;
    let layout = inspect(&pool).await?;
    refuse_too_new(&layout)?;
    let mut report = InPlaceReport {
        schema: schema.clone(),
        found_version: layout.rel_version.unwrap_or(0),
        applied: Vec::new(),
        version: latest(),
        discarded_partial: false,
        copied: None,
        dropped: Vec::new(),
    };
    if !layout.kv_rows {
        if let Some(refused) = layout.refusal() {
            return Err(refused);
        }
        report.applied = schema::migrate(&pool).await?.applied;
        return Ok(report);
    }
    if layout.interrupted() && layout.import_source.as_deref() == Some(SOURCE_KV) {
        discard_partial_import(&pool).await?;
        report.discarded_partial = true;
        progress(&format!(
            "discarded the partial copy of an unfinished migration of schema {schema} \
             (started at {} ms); copying again",
            layout.import_started.as_deref().unwrap_or("?")
        ));
    } else if layout.rel_data || layout.import_started.is_some() {
        return Err(layout.refusal().unwrap_or_else(|| {
            StoreError::NeedsMigration(format!(
                "schema {schema} holds both layouts (chatrelay_kv with rows, and relational \
                 tables that an import claimed); chatrelay migrates neither"
            ))
        }));
    }
    report.applied = schema::migrate(&pool).await?.applied;
    progress(&format!(
        "schema {schema}: relational tables at version {}; copying the one-table layout \
         (chatrelay_kv) into them",
        latest()
    ));
    let kv_opts = opts.clone();
    let source = tokio::task::spawn_blocking(move || KvStore::open_postgres(&kv_opts))
        .await
        .map_err(|e| StoreError::Backend(format!("opening the one-table layout: {e}")))??;
    let rel = RelStore::from_pool(pool.clone());
    let copied = copy_verified(&rel, &source, &mut progress, tamper).await?;
    // Its connections close with it: nothing of the old layout stays in use.
    drop(source);
    report.dropped = mark_finished(&pool, true).await?;
    progress(&format!(
        "census equal on both sides; dropped {}",
        report.dropped.join(", ")
    ));
    report.copied = Some(copied);
    Ok(report)
}

/// Refuses a relational schema newer than this build.
fn refuse_too_new(layout: &Layout) -> Result<(), StoreError> {
    match layout.rel_version {
        Some(found) if found > latest() => Err(StoreError::SchemaTooNew {
            found: u32::try_from(found).unwrap_or(u32::MAX),
            supported: u32::try_from(latest()).unwrap_or(u32::MAX),
        }),
        _ => Ok(()),
    }
}

/// Holds the schema's migration lock (a session advisory lock on a connection of its own,
/// released when it is dropped): two migrations never run on one schema at once.
async fn exclusive(pool: &Pool) -> Result<Client, StoreError> {
    let client = pool.connect().await?;
    let key = lock_key(&format!("{}/migrate-in-place", pool.schema()));
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await
        .map_err(hard)?
        .try_get(0)
        .map_err(hard)?;
    if !got {
        return Err(StoreError::InvalidInput(format!(
            "another `chatrelay migrate` or `migrate-data` is running on schema {}",
            pool.schema()
        )));
    }
    Ok(client)
}

/// Copies `source` into `rel` (the importer, then the web conversations) and compares the
/// census of both sides: any difference is an error naming each figure.
async fn copy_verified(
    rel: &RelStore,
    source: &KvStore,
    progress: &mut impl FnMut(&str),
    tamper: Option<&str>,
) -> Result<RelCopyReport, StoreError> {
    let imported = rel
        .import_from(source, |table, rows| {
            progress(&format!("copied {rows:>10} rows into {table}"));
        })
        .await?;
    let chats = rel.import_chats_from(source).await?;
    if chats > 0 {
        progress(&format!("copied {chats:>10} rows into chats"));
    }
    if let Some(sql) = tamper {
        rel.rows(sql, &[]).await?;
    }
    let now = system_now_ms();
    let src = source.clone();
    let (old, old_chats) = tokio::task::spawn_blocking(move || {
        let census = src.census(now)?;
        let chats = src.trees()?.chats.len()?;
        Ok::<_, StoreError>((census, chats))
    })
    .await
    .map_err(|e| StoreError::Backend(format!("the census of the source failed: {e}")))??;
    let new = rel.census(now).await?;
    let rows = rel.rows("SELECT count(*) AS n FROM chats", &[]).await?;
    let new_chats: i64 = col(one(&rows)?, "n")?;
    let mut differences = census_differences(&old, &new);
    if u64::try_from(old_chats).ok() != u64::try_from(new_chats).ok() {
        differences.push(format!("web conversations: {old_chats} ≠ {new_chats}"));
    }
    if !differences.is_empty() {
        return Err(StoreError::NeedsMigration(format!(
            "the census of the copy differs from the source's (figure: source ≠ relational \
             tables): {}; the source is kept as it was and the copy stays marked unfinished \
             (a daemon refuses it; running the migration again starts the copy over)",
            differences.join("; ")
        )));
    }
    let mut tables: Vec<(String, u64)> = imported
        .tables
        .iter()
        .map(|(t, n)| ((*t).to_owned(), *n))
        .collect();
    tables.push(("chats".to_owned(), chats));
    Ok(RelCopyReport {
        tables,
        skipped_expired: imported.skipped_expired,
        census: new,
    })
}

/// Each figure that differs between the source's census and the copy's, as
/// `label: source ≠ copy`; empty when they are equal.
pub(crate) fn census_differences(source: &Census, copy: &Census) -> Vec<String> {
    source.differences(copy)
}

/// Marks the import finished; with `drop_kv`, drops the one-table layout in the same
/// transaction and notes the in-place migration. Returns what was dropped.
async fn mark_finished(pool: &Pool, drop_kv: bool) -> Result<Vec<String>, StoreError> {
    let mut conn = pool.get().await?;
    let schema = pool.schema().to_owned();
    let now = system_now_ms().to_string();
    let tx = conn.transaction().await.map_err(hard)?;
    let mut dropped = Vec::new();
    if drop_kv {
        for table in KV_TABLES {
            tx.batch_execute(&format!("DROP TABLE IF EXISTS \"{schema}\".{table}"))
                .await
                .map_err(hard)?;
            dropped.push((*table).to_owned());
        }
        for sequence in KV_SEQUENCES {
            tx.batch_execute(&format!("DROP SEQUENCE IF EXISTS \"{schema}\".{sequence}"))
                .await
                .map_err(hard)?;
            dropped.push((*sequence).to_owned());
        }
        tx.execute(
            &format!(
                "INSERT INTO \"{schema}\".meta (key, value) VALUES ('migrated_from_kv_at_ms', $1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            ),
            &[&now],
        )
        .await
        .map_err(hard)?;
    }
    let finished = tx
        .query_typed(
            &format!(
                "INSERT INTO \"{schema}\".meta (key, value) VALUES ('import_finished_at_ms', $1)
                 ON CONFLICT (key) DO NOTHING RETURNING 1"
            ),
            &[(&now, Type::TEXT)],
        )
        .await
        .map_err(hard)?;
    if finished.is_empty() {
        return Err(StoreError::InvalidInput(format!(
            "schema {schema}: the import was marked finished meanwhile (another migration?)"
        )));
    }
    tx.commit().await.map_err(hard)?;
    Ok(dropped)
}
