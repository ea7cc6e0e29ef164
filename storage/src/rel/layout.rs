//! What a PostgreSQL schema holds, looked at before anything is created in it, and the
//! opening that refuses a layout it does not understand ([`RelStore::open_checked`]).
//!
//! A schema may hold today's one-table layout (`chatrelay_kv`, with `chatrelay_migrations`
//! and the sequences `chatrelay_ids` and `chatrelay_uids`), the relational tables (`meta`
//! with `schema_version`), both, or neither. The relational `meta` keeps the story of an
//! import: `import_source` (what it copies), `import_started_at_ms` (the import claimed the
//! schema), `imported_at_ms` (the rows are copied), `import_finished_at_ms` (the census
//! matched: only now is the copy the store) and, for `chatrelay migrate` in place,
//! `migrated_from_kv_at_ms` (written in the transaction that dropped the old table).

use tokio_postgres::GenericClient;

use super::pool::Pool;
use super::schema::{self, MIGRATIONS, latest};
use super::{RelStore, Retry, db_err};
use crate::StoreError;
use crate::kv::pg::PgOptions;

/// The one-table layout's relations, dropped once its data is in the relational tables.
pub(crate) const KV_TABLES: &[&str] = &["chatrelay_kv", "chatrelay_migrations"];
/// The one-table layout's sequences.
pub(crate) const KV_SEQUENCES: &[&str] = &["chatrelay_ids", "chatrelay_uids"];

/// `import_source` of an in-place migration of the one-table layout.
pub(crate) const SOURCE_KV: &str = "chatrelay_kv";

/// What a schema holds (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The schema's name.
    pub(crate) schema: String,
    /// `chatrelay_kv` exists.
    pub(crate) kv_table: bool,
    /// `chatrelay_kv` holds rows.
    pub(crate) kv_rows: bool,
    /// The relational `meta.schema_version`, if the relational tables exist.
    pub(crate) rel_version: Option<i64>,
    /// The relational tables hold data (users, orders, anything a daemon or an import
    /// writes).
    pub(crate) rel_data: bool,
    /// `meta.import_source`.
    pub(crate) import_source: Option<String>,
    /// `meta.import_started_at_ms`.
    pub(crate) import_started: Option<String>,
    /// `meta.import_finished_at_ms`.
    pub(crate) import_finished: Option<String>,
}

impl Layout {
    /// An import claimed the schema and its census never matched.
    pub(crate) fn interrupted(&self) -> bool {
        self.import_started.is_some() && self.import_finished.is_none()
    }

    /// Why a daemon may not open this schema as it is, or `None` when it may (after the
    /// pending relational migrations).
    pub(crate) fn refusal(&self) -> Option<StoreError> {
        let schema = &self.schema;
        if let Some(found) = self.rel_version
            && found > latest()
        {
            return Some(StoreError::SchemaTooNew {
                found: u32::try_from(found).unwrap_or(u32::MAX),
                supported: u32::try_from(latest()).unwrap_or(u32::MAX),
            });
        }
        if self.interrupted() {
            let started = self.import_started.as_deref().unwrap_or("?");
            let again = match self.import_source.as_deref() {
                Some(SOURCE_KV) | None if self.kv_rows => "run `chatrelay migrate` again",
                Some(source) if source.starts_with("sled:") => {
                    "run `chatrelay migrate-data --from sled:DIR` again (it discards the \
                     partial copy)"
                }
                _ => "drop the schema and copy the data again",
            };
            return Some(StoreError::NeedsMigration(format!(
                "schema {schema} holds an interrupted migration (an import started at {started} \
                 ms, from {}, whose census was never checked); {again}",
                self.import_source.as_deref().unwrap_or("an unknown source")
            )));
        }
        if self.kv_rows && self.import_finished.is_some() {
            return Some(StoreError::NeedsMigration(format!(
                "schema {schema} holds both layouts: the relational tables (migrated at {} ms) \
                 and a table chatrelay_kv holding rows written since (did an older chatrelay \
                 run on this schema?); chatrelay opens neither until one is removed",
                self.import_finished.as_deref().unwrap_or("?")
            )));
        }
        if self.kv_rows && self.rel_data {
            return Some(StoreError::NeedsMigration(format!(
                "schema {schema} holds both layouts: the one-table layout of an older chatrelay \
                 (chatrelay_kv, with rows) and relational tables holding data that no finished \
                 migration wrote; chatrelay opens neither until one is removed"
            )));
        }
        if self.kv_rows {
            return Some(StoreError::NeedsMigration(format!(
                "schema {schema} holds the one-table layout of an older chatrelay; run \
                 `chatrelay migrate` (it copies it into the relational tables, checks a census, \
                 and only then drops the old table)"
            )));
        }
        None
    }
}

/// Reads the layout of the pool's schema without creating or changing anything.
pub(crate) async fn inspect(pool: &Pool) -> Result<Layout, StoreError> {
    let client = pool.get().await?;
    inspect_with(&*client, pool.schema()).await
}

/// [`inspect`] on a given connection.
pub(crate) async fn inspect_with(
    client: &impl GenericClient,
    schema: &str,
) -> Result<Layout, StoreError> {
    let mut layout = Layout {
        schema: schema.to_owned(),
        ..Layout::default()
    };
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_tables
                            WHERE schemaname = $1 AND tablename = 'chatrelay_kv') AS kv,
                    EXISTS (SELECT 1 FROM pg_tables
                            WHERE schemaname = $1 AND tablename = 'meta') AS meta,
                    EXISTS (SELECT 1 FROM pg_tables
                            WHERE schemaname = $1 AND tablename = 'users') AS users",
            &[&schema],
        )
        .await
        .map_err(hard)?;
    layout.kv_table = row.try_get("kv").map_err(hard)?;
    let meta: bool = row.try_get("meta").map_err(hard)?;
    let users: bool = row.try_get("users").map_err(hard)?;
    // The names are fixed and the schema checked (`valid_schema`), so quoting is enough.
    if layout.kv_table {
        let row = client
            .query_one(
                &format!("SELECT EXISTS (SELECT 1 FROM \"{schema}\".chatrelay_kv)"),
                &[],
            )
            .await
            .map_err(hard)?;
        layout.kv_rows = row.try_get(0).map_err(hard)?;
    }
    if meta {
        let rows = client
            .query(
                &format!(
                    "SELECT key, value FROM \"{schema}\".meta WHERE key IN ('schema_version', \
                     'import_source', 'import_started_at_ms', 'import_finished_at_ms')"
                ),
                &[],
            )
            .await
            .map_err(hard)?;
        for row in rows {
            let key: String = row.try_get(0).map_err(hard)?;
            let value: String = row.try_get(1).map_err(hard)?;
            match key.as_str() {
                "schema_version" => {
                    layout.rel_version = Some(
                        value
                            .parse::<i64>()
                            .map_err(|e| StoreError::corrupt("meta", "schema_version", e))?,
                    );
                }
                "import_source" => layout.import_source = Some(value),
                "import_started_at_ms" => layout.import_started = Some(value),
                "import_finished_at_ms" => layout.import_finished = Some(value),
                _ => {}
            }
        }
    }
    if users && layout.rel_version.is_some() {
        // What a daemon writes first (a user) or an import (ledger, orders, ...): the same
        // test as the import's own refusal of a busy target.
        let row = client
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM \"{schema}\".users)
                         OR EXISTS (SELECT 1 FROM \"{schema}\".ledger)
                         OR EXISTS (SELECT 1 FROM \"{schema}\".orders)
                         OR EXISTS (SELECT 1 FROM \"{schema}\".tokens)
                         OR EXISTS (SELECT 1 FROM \"{schema}\".checkpoints)"
                ),
                &[],
            )
            .await
            .map_err(hard)?;
        layout.rel_data = row.try_get(0).map_err(hard)?;
    }
    Ok(layout)
}

/// The relational tables, in the order their migrations create them (each `CREATE TABLE
/// name` of [`MIGRATIONS`]): what discarding a partial import empties.
pub(crate) fn relational_tables() -> Vec<&'static str> {
    let mut tables = Vec::new();
    for (_, _, sql) in MIGRATIONS {
        let mut rest = *sql;
        while let Some(at) = rest.find("CREATE TABLE ") {
            rest = &rest[at + "CREATE TABLE ".len()..];
            let rest_trim = rest.strip_prefix("IF NOT EXISTS ").unwrap_or(rest);
            let end = rest_trim
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest_trim.len());
            let name = &rest_trim[..end];
            if !name.is_empty() && !tables.contains(&name) {
                tables.push(name);
            }
        }
    }
    tables
}

/// Empties the relational tables of a schema whose import never finished (its rows are a
/// partial copy nobody may use: a daemon refuses the schema) and forgets the import, in one
/// transaction. The identity sequences restart; the next import sets them again.
pub(crate) async fn discard_partial_import(pool: &Pool) -> Result<(), StoreError> {
    let mut conn = pool.get().await?;
    let schema = pool.schema().to_owned();
    let tx = conn.transaction().await.map_err(hard)?;
    let layout = inspect_with(&tx, &schema).await?;
    if !layout.interrupted() {
        return Err(StoreError::InvalidInput(format!(
            "schema {schema} holds no interrupted import to discard"
        )));
    }
    let list = relational_tables()
        .iter()
        .map(|t| format!("\"{schema}\".{t}"))
        .collect::<Vec<_>>()
        .join(", ");
    tx.batch_execute(&format!(
        "TRUNCATE {list} RESTART IDENTITY;
         DELETE FROM \"{schema}\".meta WHERE key IN ('import_source', 'import_started_at_ms',
             'imported_at_ms', 'import_finished_at_ms');"
    ))
    .await
    .map_err(hard)?;
    tx.commit().await.map_err(hard)?;
    tracing::warn!(
        schema,
        "discarded the partial copy of an interrupted import"
    );
    Ok(())
}

impl RelStore {
    /// Opens the relational store on the schema of `opts` if its layout is one this build
    /// understands, looking before creating anything (see [`Layout::refusal`]): the
    /// one-table layout of an older chatrelay, an interrupted migration, both layouts at
    /// once are refused with [`StoreError::NeedsMigration`]; a newer relational schema with
    /// [`StoreError::SchemaTooNew`]. Otherwise pending relational migrations are applied (an
    /// empty schema gets every table) and the store opens.
    pub(crate) async fn open_checked(opts: &PgOptions) -> Result<RelStore, StoreError> {
        let pool = Pool::new(opts)?;
        let layout = inspect(&pool).await?;
        if let Some(refused) = layout.refusal() {
            return Err(refused);
        }
        schema::migrate(&pool).await?;
        Ok(RelStore::from_pool(pool))
    }
}

/// A catalog query's failure (never retried: nothing here races).
pub(crate) fn hard(e: tokio_postgres::Error) -> StoreError {
    match db_err(e) {
        Retry::Again(e) | Retry::Fail(e) => e,
    }
}
