//! An async pool of PostgreSQL connections for the relational store.
//!
//! The key-value engine's pool (`kv/pg.rs`) is synchronous: its callers wait on a condition
//! variable and its connections run on a runtime of its own. Here every wait is a future: a
//! semaphore bounds the connections, idle ones are kept in a short-held `std` mutex (never
//! across an `.await`), and each connection's driver task runs on the caller's runtime. The
//! connection settings (search path, keepalives, TLS verified by rustls) are the key-value
//! engine's, through its shared helpers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::StoreError;
use crate::kv::pg::{PgOptions, error_text, tls_connector, valid_schema};

/// How long a caller waits for a free connection before giving up.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections to one schema of one database.
pub(crate) struct Pool {
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    schema: String,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
}

/// A connection checked out of the pool; back in the pool when dropped (unless it broke).
pub(crate) struct Conn<'a> {
    pool: &'a Pool,
    client: Option<Client>,
    _permit: SemaphorePermit<'a>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Present from checkout until drop.
        self.client.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && !client.is_closed()
        {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(client);
        }
    }
}

impl Pool {
    /// A pool for `opts` (connections are made when first needed).
    pub(crate) fn new(opts: &PgOptions) -> Result<Arc<Pool>, StoreError> {
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
        Ok(Arc::new(Pool {
            config,
            tls,
            schema,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(opts.pool_size.max(1)),
        }))
    }

    /// The schema holding the tables.
    pub(crate) fn schema(&self) -> &str {
        &self.schema
    }

    /// A connection: an idle one, or a new one while under the limit; otherwise waits for
    /// one to come back (at most [`CHECKOUT_TIMEOUT`]).
    pub(crate) async fn get(&self) -> Result<Conn<'_>, StoreError> {
        let permit = tokio::time::timeout(CHECKOUT_TIMEOUT, self.permits.acquire())
            .await
            .map_err(|_| {
                StoreError::Backend(
                    "no PostgreSQL connection free for 30 s (raise storage.pool_size?)".into(),
                )
            })?
            .map_err(|_| StoreError::Backend("the store is closing".into()))?;
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let mut found = None;
            while let Some(c) = idle.pop() {
                if !c.is_closed() {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let client = match reused {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(Conn {
            pool: self,
            client: Some(client),
            _permit: permit,
        })
    }

    /// A new connection, its driver spawned on the current runtime (also used outside the
    /// pool, for a session-scoped lock, which must not go back to the pool with it).
    pub(crate) async fn connect(&self) -> Result<Client, StoreError> {
        let failed = |e: tokio_postgres::Error| {
            StoreError::Backend(format!("cannot connect to PostgreSQL: {}", error_text(&e)))
        };
        let client = match &self.tls {
            None => {
                let (client, conn) = self.config.connect(NoTls).await.map_err(failed)?;
                tokio::spawn(drive(conn));
                client
            }
            Some(tls) => {
                let (client, conn) = self.config.connect(tls.clone()).await.map_err(failed)?;
                tokio::spawn(drive(conn));
                client
            }
        };
        Ok(client)
    }
}

/// Runs a connection until it ends.
async fn drive<F>(conn: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = conn.await {
        tracing::warn!(error = %e, "PostgreSQL connection ended");
    }
}
