//! The PostgreSQL engine: every tree in one table `chatrelay_kv (tree, k, v)` keyed by
//! `(tree, k)`, transactions with row locks, versioned migrations, advisory locks.
//!
//! The store's API is synchronous (it was written over sled), so the driver (tokio-postgres,
//! TLS by rustls) runs its connections on a small runtime of its own, and callers wait for
//! replies on their own thread; a caller on a multi-threaded tokio runtime first steps aside
//! with `block_in_place`, so waiting never starves the daemon's other tasks.
//!
//! Why transactions are serializable without SERIALIZABLE: they run at REPEATABLE READ (one
//! snapshot), and every row a transaction reads is locked (`SELECT ... FOR UPDATE`) until it
//! ends, so no other transaction changes what it based its writes on (a row changed since the
//! snapshot is a serialization failure at once). A key it read as absent has no row to lock;
//! it is written with a plain `INSERT`, so the primary key is the guard: of two daemons racing
//! on one reference (a ledger entry, an order's credit, a dedupe mark, a new identity), one
//! gets a unique violation, runs its closure again and finds the other's entry. Every
//! decision the store's transactions make on a missing key ends in inserting that key (that
//! is the rule for new transactions too). SERIALIZABLE was measured first: its predicate
//! locks cover whole index pages for missing keys, so unrelated users' transactions failed
//! each other about 8 times per Official Account message (BENCHMARKS.md).
//!
//! Writes are buffered and sent at commit in one pipelined batch. Serialization failures,
//! deadlocks and unique violations are retried with a jittered backoff.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

use super::{Pair, TransactionError, TxError, TxResult};
use crate::StoreError;

/// The migrations, in order. Each runs once, in a transaction, recorded in
/// `chatrelay_migrations`; never edit one that has shipped, add the next.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "key-value table and id sequence",
        "CREATE TABLE chatrelay_kv (
             tree text NOT NULL,
             k bytea NOT NULL,
             v bytea NOT NULL,
             PRIMARY KEY (tree, k)
         );
         CREATE SEQUENCE chatrelay_ids;",
    ),
    (
        2,
        "uid sequence (daemons creating users at once no longer update one counter)",
        // Started past the uids in use by SYNC_UIDS, in the same transaction.
        "CREATE SEQUENCE chatrelay_uids;",
    ),
];

/// Moves the uid sequence past every uid in use (after a copy brings users along).
const SYNC_UIDS: &str = "SELECT setval('chatrelay_uids', GREATEST(m, 1), m > 0) FROM (
         SELECT COALESCE(max(('x' || encode(k, 'hex'))::bit(64)::bigint), 0) AS m
         FROM chatrelay_kv WHERE tree = 'users' AND length(k) = 8
     ) AS users";

/// How a store reaches its PostgreSQL database.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// A libpq-style URL or key=value string (`postgres://user:pass@host/db?sslmode=disable`).
    pub url: String,
    /// The schema holding chatrelay's tables (created if missing); `None`: `public`.
    pub schema: Option<String>,
    /// Connections kept for requests (advisory locks take their own).
    pub pool_size: usize,
    /// A PEM file of CA certificates the server's certificate must chain to (besides the
    /// web's public roots), for TLS to a server with a private CA.
    pub ca_file: Option<std::path::PathBuf>,
}

impl PgOptions {
    /// Options for `url` with the defaults: schema `public`, 8 connections.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: None,
            pool_size: 8,
            ca_file: None,
        }
    }

    /// Whether `url` is a connection string the driver understands (for config checks).
    pub fn check_url(url: &str) -> Result<(), String> {
        url.parse::<tokio_postgres::Config>()
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// What [`crate::KvStore::migrate_postgres`] found and did.
#[derive(Clone, Debug, Default)]
pub struct MigrationReport {
    /// Versions applied before this run.
    pub already: Vec<i32>,
    /// Versions this run applied, with their names.
    pub applied: Vec<(i32, String)>,
}

/// Retries of a transaction that keeps conflicting, before giving up.
const MAX_ATTEMPTS: u32 = 100;
/// Rows fetched per page by iterators.
const PAGE: i64 = 500;

/// The engine: a connection pool on its own runtime.
pub struct Pg {
    /// Taken only on drop.
    rt: Option<tokio::runtime::Runtime>,
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    schema: String,
    pool: Mutex<PoolState>,
    returned: Condvar,
    max: usize,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Client>,
    open: usize,
}

impl Drop for Pg {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside async code (where the last store
        // handle may well go): let its threads wind down on their own.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A pooled connection, returned on drop (unless it broke).
struct Conn<'a> {
    pg: &'a Pg,
    client: Option<Client>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Present from checkout until drop.
        self.client.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let mut pool = self.pg.pool.lock().unwrap_or_else(|p| p.into_inner());
        match self.client.take() {
            Some(c) if !c.is_closed() => pool.idle.push(c),
            _ => pool.open = pool.open.saturating_sub(1),
        }
        self.pg.returned.notify_one();
    }
}

/// Waits for `f` on this thread; on a multi-threaded tokio runtime the worker steps aside
/// first. The driver's futures need no runtime of their own (the connections run on
/// [`Pg`]'s), so any executor may poll them.
pub(crate) fn wait<F: Future>(f: F) -> F::Output {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| futures_executor::block_on(f))
        }
        _ => futures_executor::block_on(f),
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Whether running the transaction again may succeed.
fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::UNIQUE_VIOLATION
    )
}

fn tx_err(e: tokio_postgres::Error) -> TxError {
    if retryable(&e) {
        TxError::Conflict
    } else {
        TxError::Storage(backend(error_text(&e)))
    }
}

/// The error that explains a failed batch: after the first failure of a transaction every
/// later statement fails with "current transaction is aborted" (25P02), which says nothing.
fn first_cause(results: Vec<Result<u64, tokio_postgres::Error>>) -> Result<(), TxError> {
    let mut aborted = None;
    for r in results {
        match r {
            Ok(_) => {}
            Err(e) if e.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) => {
                aborted.get_or_insert(e);
            }
            Err(e) => return Err(tx_err(e)),
        }
    }
    match aborted {
        // Only "aborted" errors: the cause went unseen; running again is the safe reading.
        Some(_) => Err(TxError::Conflict),
        None => Ok(()),
    }
}

pub(crate) fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

impl Pg {
    /// Prepares the pool (connections are made when first needed); see [`Pg::migrate`].
    pub(crate) fn open(opts: &PgOptions) -> Result<Arc<Pg>, StoreError> {
        let schema = opts.schema.clone().unwrap_or_else(|| "public".to_owned());
        if !valid_schema(&schema) {
            return Err(StoreError::InvalidInput(format!(
                "schema {schema:?}: use lowercase letters, digits and _ (at most 63)"
            )));
        }
        let mut config: tokio_postgres::Config = opts
            .url
            .parse()
            .map_err(|e| StoreError::InvalidInput(format!("storage.url: {e}")))?;
        config
            .options(format!("-c search_path={schema}"))
            .application_name("chatrelay")
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10));
        let tls = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => None,
            _ => Some(tls_connector(opts.ca_file.as_deref())?),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("chatrelay-pg")
            .enable_all()
            .build()
            .map_err(backend)?;
        let pg = Arc::new(Pg {
            rt: Some(rt),
            config,
            tls,
            schema,
            pool: Mutex::new(PoolState::default()),
            returned: Condvar::new(),
            max: opts.pool_size.max(1),
        });
        Ok(pg)
    }

    /// A new connection, driven by this engine's runtime.
    fn connect(&self) -> Result<Client, StoreError> {
        let config = self.config.clone();
        let tls = self.tls.clone();
        let Some(rt) = &self.rt else {
            return Err(StoreError::Backend("the store is closing".into()));
        };
        let task = rt.spawn(async move {
            let client = match tls {
                None => {
                    let (client, conn) = config.connect(NoTls).await?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::warn!(error = %e, "PostgreSQL connection ended");
                        }
                    });
                    client
                }
                Some(tls) => {
                    let (client, conn) = config.connect(tls).await?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::warn!(error = %e, "PostgreSQL connection ended");
                        }
                    });
                    client
                }
            };
            Ok::<_, tokio_postgres::Error>(client)
        });
        match wait(task) {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(StoreError::Backend(format!(
                "cannot connect to PostgreSQL: {}",
                error_text(&e)
            ))),
            Err(e) => Err(backend(e)),
        }
    }

    /// A pooled connection: an idle one, a new one while under the limit, or the next one
    /// returned.
    fn conn(&self) -> Result<Conn<'_>, StoreError> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            while let Some(c) = pool.idle.pop() {
                if c.is_closed() {
                    pool.open = pool.open.saturating_sub(1);
                    continue;
                }
                return Ok(Conn {
                    pg: self,
                    client: Some(c),
                });
            }
            if pool.open < self.max {
                pool.open += 1;
                drop(pool);
                return match self.connect() {
                    Ok(c) => Ok(Conn {
                        pg: self,
                        client: Some(c),
                    }),
                    Err(e) => {
                        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
                        pool.open = pool.open.saturating_sub(1);
                        self.returned.notify_one();
                        Err(e)
                    }
                };
            }
            let (next, timeout) = self
                .returned
                .wait_timeout(pool, Duration::from_secs(30))
                .unwrap_or_else(|p| p.into_inner());
            pool = next;
            if timeout.timed_out() && pool.idle.is_empty() && pool.open >= self.max {
                return Err(StoreError::Backend(
                    "no PostgreSQL connection free for 30 s (raise storage.pool_size?)".into(),
                ));
            }
        }
    }

    /// Applies every pending migration in one transaction, under a lock so that daemons
    /// starting together do not race.
    pub(crate) fn migrate(&self) -> Result<MigrationReport, StoreError> {
        let mut client = self.connect()?;
        let schema = &self.schema;
        wait(async {
            // Locked before anything, CREATE SCHEMA included: daemons starting together on a
            // new schema would otherwise race on it (a unique violation in pg_namespace).
            // A session lock: it goes with this connection, dropped at the end.
            client
                .execute(
                    "SELECT pg_advisory_lock($1)",
                    &[&lock_key(&format!("{schema}/migrations"))],
                )
                .await?;
            // Created only when missing: CREATE SCHEMA IF NOT EXISTS would still need the
            // right to create schemas, which a role given an existing schema may lack.
            let exists = client
                .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[schema])
                .await?
                .is_some();
            if !exists {
                client
                    .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                    .await?;
            }
            let tx = client.transaction().await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS chatrelay_migrations (
                     version integer PRIMARY KEY,
                     name text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 )",
            )
            .await?;
            let rows = tx
                .query(
                    "SELECT version FROM chatrelay_migrations ORDER BY version",
                    &[],
                )
                .await?;
            let already: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
            let mut report = MigrationReport {
                already: already.clone(),
                applied: Vec::new(),
            };
            if let Some(newest) = already.iter().max()
                && !MIGRATIONS.iter().any(|(v, _, _)| v == newest)
            {
                return Ok(Err(StoreError::SchemaTooNew {
                    found: u32::try_from(*newest).unwrap_or(u32::MAX),
                    supported: latest(),
                }));
            }
            for (version, name, sql) in MIGRATIONS {
                if already.contains(version) {
                    continue;
                }
                tx.batch_execute(sql).await?;
                tx.execute(
                    "INSERT INTO chatrelay_migrations (version, name) VALUES ($1, $2)",
                    &[version, name],
                )
                .await?;
                if *version == 2 {
                    tx.batch_execute(SYNC_UIDS).await?;
                }
                report.applied.push((*version, (*name).to_owned()));
            }
            tx.commit().await?;
            Ok(Ok(report))
        })
        .map_err(|e: tokio_postgres::Error| {
            StoreError::Backend(format!("migrating the database: {}", error_text(&e)))
        })?
    }

    fn query(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let conn = self.conn()?;
        wait(conn.query_typed(sql, params)).map_err(|e| backend(error_text(&e)))
    }

    pub(crate) fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.query(
            "SELECT v FROM chatrelay_kv WHERE tree = $1 AND k = $2",
            &[(&tree, Type::TEXT), (&key, Type::BYTEA)],
        )?;
        first_column(&rows)
    }

    pub(crate) fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.query(
            "INSERT INTO chatrelay_kv (tree, k, v) VALUES ($1, $2, $3)
             ON CONFLICT (tree, k) DO UPDATE SET v = excluded.v",
            &[
                (&tree, Type::TEXT),
                (&key, Type::BYTEA),
                (&value, Type::BYTEA),
            ],
        )
        .map(|_| ())
    }

    pub(crate) fn delete(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.query(
            "DELETE FROM chatrelay_kv WHERE tree = $1 AND k = $2 RETURNING v",
            &[(&tree, Type::TEXT), (&key, Type::BYTEA)],
        )?;
        first_column(&rows)
    }

    pub(crate) fn count(&self, tree: &str) -> Result<usize, StoreError> {
        let rows = self.query(
            "SELECT count(*) FROM chatrelay_kv WHERE tree = $1",
            &[(&tree, Type::TEXT)],
        )?;
        let n: i64 = first_column(&rows)?.unwrap_or(0);
        Ok(usize::try_from(n).unwrap_or(0))
    }

    pub(crate) fn next_id(&self) -> Result<u64, StoreError> {
        let rows = self.query("SELECT nextval('chatrelay_ids')", &[])?;
        let n: i64 = first_column(&rows)?.unwrap_or(0);
        u64::try_from(n).map_err(backend)
    }

    /// A uid for a new user.
    pub(crate) fn next_uid(&self) -> Result<u64, StoreError> {
        let rows = self.query("SELECT nextval('chatrelay_uids')", &[])?;
        let n: i64 = first_column(&rows)?.unwrap_or(0);
        u64::try_from(n).map_err(backend)
    }

    /// Moves the uid sequence past every uid in use (after a copy brought users along).
    pub(crate) fn sync_uids(&self) -> Result<(), StoreError> {
        self.query(SYNC_UIDS, &[]).map(|_| ())
    }

    /// Moves the id sequence past `floor` (a copy from sled brings its ids along).
    pub(crate) fn raise_ids(&self, floor: u64) -> Result<(), StoreError> {
        let floor = i64::try_from(floor).map_err(backend)?.max(1);
        self.query(
            "SELECT setval('chatrelay_ids', greatest($1, (SELECT last_value FROM chatrelay_ids)))",
            &[(&floor, Type::INT8)],
        )
        .map(|_| ())
    }

    /// One page of `tree` from `start` (inclusive unless `after`) up to `end` (exclusive).
    fn page(
        &self,
        tree: &str,
        start: &[u8],
        after: bool,
        end: Option<&[u8]>,
    ) -> Result<Vec<Pair>, StoreError> {
        let cmp = if after { ">" } else { ">=" };
        let rows = match end {
            Some(end) => self.query(
                &format!(
                    "SELECT k, v FROM chatrelay_kv WHERE tree = $1 AND k {cmp} $2 AND k < $3
                     ORDER BY k LIMIT $4"
                ),
                &[
                    (&tree, Type::TEXT),
                    (&start, Type::BYTEA),
                    (&end, Type::BYTEA),
                    (&PAGE, Type::INT8),
                ],
            )?,
            None => self.query(
                &format!(
                    "SELECT k, v FROM chatrelay_kv WHERE tree = $1 AND k {cmp} $2
                     ORDER BY k LIMIT $3"
                ),
                &[
                    (&tree, Type::TEXT),
                    (&start, Type::BYTEA),
                    (&PAGE, Type::INT8),
                ],
            )?,
        };
        pairs(&rows)
    }

    /// The last `limit` pairs with `start <= key < end`, last first.
    pub(crate) fn last_in_range(
        &self,
        tree: &str,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Pair>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // An open end is the whole tree after `start`: no key is above 0xff × 1024.
        let open_end = vec![0xffu8; 1024];
        let end = end.unwrap_or(&open_end);
        let rows = self.query(
            "SELECT k, v FROM chatrelay_kv WHERE tree = $1 AND k >= $2 AND k < $3
             ORDER BY k DESC LIMIT $4",
            &[
                (&tree, Type::TEXT),
                (&start, Type::BYTEA),
                (&end, Type::BYTEA),
                (&limit, Type::INT8),
            ],
        )?;
        pairs(&rows)
    }

    /// Runs `body` in a transaction (see the module docs) until it commits, aborts or fails.
    pub(crate) fn transaction<R>(
        &self,
        body: impl Fn(&PgTx<'_>) -> TxResult<R>,
    ) -> Result<R, TransactionError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let conn = self.conn().map_err(TransactionError::Storage)?;
            match run_once(&conn, &body) {
                Ok(r) => return Ok(r),
                Err(TxError::Abort(e)) => return Err(TransactionError::Abort(e)),
                Err(TxError::Storage(e)) => return Err(TransactionError::Storage(e)),
                Err(TxError::Conflict) if attempt >= MAX_ATTEMPTS => {
                    return Err(TransactionError::Storage(StoreError::Backend(format!(
                        "a transaction conflicted {MAX_ATTEMPTS} times in a row; giving up"
                    ))));
                }
                Err(TxError::Conflict) => {
                    drop(conn);
                    tracing::trace!(
                        attempt,
                        "PostgreSQL transaction conflicted; running it again"
                    );
                    std::thread::sleep(backoff(attempt));
                }
            }
        }
    }

    /// Takes the session advisory lock `name` on a connection of its own, if free.
    pub(crate) fn try_lock(&self, name: &str) -> Result<Option<PgLock>, StoreError> {
        let client = self.connect()?;
        let key = lock_key(&format!("{}/{name}", self.schema));
        let row = wait(client.query_one("SELECT pg_try_advisory_lock($1)", &[&key]))
            .map_err(|e| backend(error_text(&e)))?;
        let got: bool = row.try_get(0).map_err(backend)?;
        Ok(got.then_some(PgLock { client }))
    }
}

/// Rows of `SELECT k, v` as pairs.
fn pairs(rows: &[tokio_postgres::Row]) -> Result<Vec<Pair>, StoreError> {
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(0).map_err(backend)?,
                r.try_get(1).map_err(backend)?,
            ))
        })
        .collect()
}

/// The first column of the first row, if there is a row.
fn first_column<T>(rows: &[tokio_postgres::Row]) -> Result<Option<T>, StoreError>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    rows.first()
        .map(|r| r.try_get(0).map_err(backend))
        .transpose()
}

/// The newest migration this build knows, as the schema version it reports.
fn latest() -> u32 {
    MIGRATIONS
        .iter()
        .map(|m| u32::try_from(m.0).unwrap_or(0))
        .max()
        .unwrap_or(0)
}

/// 1–10 ms at first, growing to about 100 ms; jittered so that racing daemons part ways.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let mut byte = [0u8; 1];
    let jitter = match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte) {
        Ok(()) => u64::from(byte[0]) % 10,
        Err(_) => 5,
    };
    Duration::from_millis(1 + jitter + u64::from(attempt.min(10)) * 9)
}

/// A stable 64-bit advisory-lock key for `name`.
pub(crate) fn lock_key(name: &str) -> i64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let mut eight = [0u8; 8];
    eight.copy_from_slice(digest.as_ref().get(..8).unwrap_or(&[0; 8]));
    i64::from_be_bytes(eight)
}

/// The server's message with its detail, or the driver's.
pub(crate) fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

pub(crate) fn tls_connector(
    ca_file: Option<&std::path::Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
            StoreError::InvalidInput(format!("storage.ca_file {}: {e}", path.display()))
        })?;
        for cert in certs {
            let cert = cert.map_err(|e| {
                StoreError::InvalidInput(format!("storage.ca_file {}: {e}", path.display()))
            })?;
            roots.add(cert).map_err(|e| {
                StoreError::InvalidInput(format!("storage.ca_file {}: {e}", path.display()))
            })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(backend)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Buffered writes by (tree, key): `Some` to set, `None` to delete.
type Writes = BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>>;

/// What one run of a closure leaves: its reads, and its writes waiting for the commit.
pub(crate) struct PgTx<'a> {
    client: &'a Client,
    writes: RefCell<Writes>,
    /// Keys read as absent: written with a plain INSERT, so a racing insert collides.
    absent: RefCell<HashSet<(&'static str, Vec<u8>)>>,
}

impl PgTx<'_> {
    pub(crate) fn get(&self, tree: &'static str, key: &[u8]) -> TxResult<Option<Vec<u8>>> {
        if let Some(w) = self.writes.borrow().get(&(tree, key.to_vec())) {
            return Ok(w.clone());
        }
        // Locked: a row this transaction read is not changed by another before it ends.
        let rows = wait(self.client.query_typed(
            "SELECT v FROM chatrelay_kv WHERE tree = $1 AND k = $2 FOR UPDATE",
            &[(&tree, Type::TEXT), (&key, Type::BYTEA)],
        ))
        .map_err(tx_err)?;
        let value: Option<Vec<u8>> = rows
            .first()
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(|e| TxError::Storage(backend(e)))?;
        if value.is_none() {
            self.absent.borrow_mut().insert((tree, key.to_vec()));
        }
        Ok(value)
    }

    pub(crate) fn insert(&self, tree: &'static str, key: &[u8], value: &[u8]) {
        self.writes
            .borrow_mut()
            .insert((tree, key.to_vec()), Some(value.to_vec()));
    }

    pub(crate) fn remove(&self, tree: &'static str, key: &[u8]) -> TxResult<Option<Vec<u8>>> {
        let old = self.get(tree, key)?;
        self.writes.borrow_mut().insert((tree, key.to_vec()), None);
        Ok(old)
    }
}

fn run_once<R>(client: &Client, body: &impl Fn(&PgTx<'_>) -> TxResult<R>) -> TxResult<R> {
    wait(client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")).map_err(tx_err)?;
    let tx = PgTx {
        client,
        writes: RefCell::new(BTreeMap::new()),
        absent: RefCell::new(HashSet::new()),
    };
    let outcome = body(&tx).and_then(|r| {
        commit(&tx)?;
        Ok(r)
    });
    if outcome.is_err() {
        // A failed ROLLBACK means a broken connection, which the pool drops.
        let _ = wait(client.batch_execute("ROLLBACK"));
    }
    outcome
}

/// Sends the buffered writes (pipelined on the one connection), then commits.
fn commit(tx: &PgTx<'_>) -> TxResult<()> {
    let writes = std::mem::take(&mut *tx.writes.borrow_mut());
    let absent = tx.absent.borrow();
    let client = tx.client;
    let statements = writes.iter().map(|((tree, key), value)| {
        let fresh = absent.contains(&(*tree, key.clone()));
        async move {
            match value {
                Some(v) if fresh => {
                    client
                        .query_typed(
                            "INSERT INTO chatrelay_kv (tree, k, v) VALUES ($1, $2, $3)",
                            &[(tree, Type::TEXT), (key, Type::BYTEA), (v, Type::BYTEA)],
                        )
                        .await
                }
                Some(v) => {
                    client
                        .query_typed(
                            "INSERT INTO chatrelay_kv (tree, k, v) VALUES ($1, $2, $3)
                             ON CONFLICT (tree, k) DO UPDATE SET v = excluded.v",
                            &[(tree, Type::TEXT), (key, Type::BYTEA), (v, Type::BYTEA)],
                        )
                        .await
                }
                None => {
                    client
                        .query_typed(
                            "DELETE FROM chatrelay_kv WHERE tree = $1 AND k = $2",
                            &[(tree, Type::TEXT), (key, Type::BYTEA)],
                        )
                        .await
                }
            }
        }
    });
    let results = wait(futures_util::future::join_all(statements));
    first_cause(
        results
            .into_iter()
            .map(|r| r.map(|rows| rows.len() as u64))
            .collect(),
    )?;
    wait(client.batch_execute("COMMIT")).map_err(tx_err)
}

/// Pages of a range, fetched as the iterator goes (sled's iterators are lazy too).
pub(crate) struct PageIter {
    pg: Arc<Pg>,
    tree: &'static str,
    start: Vec<u8>,
    after: bool,
    end: Option<Vec<u8>>,
    buffer: VecDeque<Pair>,
    done: bool,
}

impl PageIter {
    pub(crate) fn new(
        pg: Arc<Pg>,
        tree: &'static str,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    ) -> Self {
        Self {
            pg,
            tree,
            start,
            after: false,
            end,
            buffer: VecDeque::new(),
            done: false,
        }
    }
}

impl Iterator for PageIter {
    type Item = Result<Pair, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffer.is_empty() && !self.done {
            match self
                .pg
                .page(self.tree, &self.start, self.after, self.end.as_deref())
            {
                Ok(rows) => {
                    self.done = (rows.len() as i64) < PAGE;
                    if let Some((last, _)) = rows.last() {
                        self.start = last.clone();
                        self.after = true;
                    }
                    self.buffer = rows.into();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        self.buffer.pop_front().map(Ok)
    }
}

/// A session advisory lock, held while this value lives; PostgreSQL lets go of it when the
/// connection ends, so a daemon that dies loses it at once.
pub struct PgLock {
    client: Client,
}

impl PgLock {
    /// Whether the connection (and so the lock) is still alive.
    pub(crate) async fn alive(&self) -> bool {
        !self.client.is_closed()
            && tokio::time::timeout(
                Duration::from_secs(10),
                self.client.simple_query("SELECT 1"),
            )
            .await
            .is_ok_and(|r| r.is_ok())
    }
}
