//! Builds the daemon from a [`Config`] and runs it: store, engine, HTTP listener, background
//! jobs, signals, systemd notifications, and a graceful shutdown bounded in time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use chatrelay_storage::Store;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::channels::ChannelState;
use crate::config::Config;
use crate::engine::{Engine, Settings, llm};
use crate::http::{self, AppState};
use crate::reload::{Live, Parts};

/// Where the database lives inside the data directory.
#[must_use]
pub fn db_path(config: &Config) -> PathBuf {
    config.storage.path.join("db")
}

/// The admin token's file and its resolution belong to `auth`; this path is kept for the CLI.
pub use crate::auth::admin_token_path;

/// The process-wide Prometheus recorder (installed once; tests build several apps).
fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            match PrometheusBuilder::new()
                // Latencies as histograms (aggregatable across daemons), not summaries.
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".to_owned()),
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                        120.0,
                    ],
                )
                .and_then(|b| b.install_recorder())
            {
                Ok(h) => Some(h),
                Err(e) => {
                    warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

/// A daemon built and bound, not yet serving.
pub struct App {
    /// Shared state of the HTTP handlers.
    pub state: AppState,
    listener: TcpListener,
    tracker: TaskTracker,
    grace: Duration,
}

/// Opens the configured store: the embedded database in `storage.path`, or PostgreSQL (with
/// pending migrations applied).
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    match config.storage.postgres() {
        Some(opts) => {
            let store = Store::open_postgres(&opts).await.with_context(|| {
                format!(
                    "opening the PostgreSQL database (schema {})",
                    config.storage.schema
                )
            })?;
            info!(schema = %config.storage.schema, "storage: PostgreSQL");
            Ok(store)
        }
        None => Store::open(
            &db_path(config),
            config.storage.cache_capacity_mb * 1024 * 1024,
        )
        .with_context(|| format!("opening the database in {}", db_path(config).display())),
    }
}

impl App {
    /// Opens the store, builds the engine and binds the listener. `source` is the
    /// configuration file a reload reads again (`None`: the default lookup).
    pub async fn build(config: Config, source: Option<PathBuf>) -> anyhow::Result<App> {
        let config = Arc::new(config);
        let store = open_store_at_start(&config).await?;
        let backend = llm::from_config(&config).context("building the LLM client")?;
        if backend.name() == "demo" {
            warn!("no LLM API key configured: answering with the offline demo provider");
        }
        if let Some(sp) = &config.speech {
            // Detected once, off the async workers; voice messages reuse the answer.
            let program = sp.ffmpeg.clone();
            match tokio::task::spawn_blocking(move || crate::engine::ffmpeg::detect(&program))
                .await
                .ok()
                .flatten()
            {
                Some(version) => info!(%version, "ffmpeg found: WeChat voice audio is converted"),
                None => warn!(
                    ffmpeg = %sp.ffmpeg,
                    "ffmpeg not found: WeChat voice messages need WeChat's Recognition (接收语音识别结果)"
                ),
            }
        }
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let http = platform_http_client()?;
        // Alerts are sent by a task on the daemon's tracker, which stops on shutdown.
        let alerts = crate::alerts::Alerter::new(
            crate::reload::ROBOT_PACE,
            tracker.clone(),
            shutdown.clone(),
        );
        alerts.set_sinks(crate::reload::robot_sinks(&config, &http));
        let engine = Engine::new(
            store,
            backend,
            Settings::from_config(&config).context("setting up content rules")?,
            shutdown.clone(),
            tracker.clone(),
        )
        .with_alerts(alerts.clone());
        let listener = bind(&config).await?;
        let grace = Duration::from_secs(config.server.shutdown_grace_secs);
        let parts = Parts::build(config.clone(), &engine, &http, &alerts, None)?;
        if parts.billing.enabled() {
            info!(channels = ?parts.billing.channels(), products = parts.billing.products().len(), "payments enabled");
        }
        for id in parts.channels.mp.keys() {
            info!(account = %id, "WeChat Official Account at /wechat/mp/{id}");
        }
        let live = Live::new(
            parts,
            source,
            engine.clone(),
            http,
            alerts,
            tracker.clone(),
            shutdown.clone(),
        );
        let channels = ChannelState {
            engine: engine.clone(),
            current: live.channels(),
            shutdown: shutdown.clone(),
            login: Arc::new(crate::auth::Login::default()),
            guests: Arc::new(crate::channels::web::guests::PageLimits::default()),
        };
        Ok(App {
            state: AppState {
                engine,
                live,
                metrics: metrics_handle(),
                shutdown,
                channels,
                body_limit: config.server.max_body_bytes,
                web_page: config.web.enabled,
                console: Arc::new(crate::console::sessions::Sessions::default()),
                started_at_ms: crate::util::now_ms(),
            },
            listener,
            tracker,
            grace,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The token that stops the daemon.
    #[must_use]
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Serves until the shutdown token fires, then drains within the grace period and
    /// flushes the store.
    pub async fn serve(self) -> anyhow::Result<()> {
        let App {
            state,
            listener,
            tracker,
            grace,
        } = self;
        let shutdown = state.shutdown.clone();
        let engine = state.engine.clone();
        spawn_background(&tracker, &state);
        let live = state.live.clone();
        let router = http::router(state);
        let addr = listener.local_addr()?;
        // The listener is the one task outside the tracker: it is awaited right here, and it
        // drains its own connections (below) before the tracker's tasks are waited for.
        let mut server = tokio::spawn(serve_http(listener, router, live, shutdown.clone()));
        info!(%addr, llm = engine.backend_name(), "chatrelay is ready");
        notify(&[sd_notify::NotifyState::Ready]);

        let finished_early = tokio::select! {
            biased;
            () = shutdown.cancelled() => None,
            r = &mut server => Some(r),
        };
        info!(grace_secs = grace.as_secs(), "shutting down");
        // One budget for the whole drain (systemd's TimeoutStopSec is set against it): first
        // the HTTP server stops accepting and finishes its requests, then the tracked tasks
        // (answers being delivered, which watch the shutdown token) end.
        let deadline = tokio::time::Instant::now() + grace;
        notify(&[sd_notify::NotifyState::Stopping]);
        stop_server(finished_early, server, &shutdown, deadline).await?;
        drain_tasks(&tracker, deadline).await;
        if let Err(e) = engine.stats().flush(engine.store()).await {
            warn!(error = %e, "writing the last statistics failed");
        }
        engine
            .store()
            .flush()
            .await
            .context("flushing the database")?;
        info!("stopped");
        Ok(())
    }
}

/// Creates the data directory and opens the store, releasing the credit holds a previous run
/// left open.
async fn open_store_at_start(config: &Config) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&config.storage.path).with_context(|| {
        format!(
            "creating the data directory {}",
            config.storage.path.display()
        )
    })?;
    let store = open_store(config).await?;
    // Alone on its database, a daemon starting finds only its own previous run's holds;
    // sharing it, other daemons' answers are in progress: only expired holds go.
    let cutoff = if store.is_shared() {
        crate::util::now_ms()
    } else {
        i64::MAX
    };
    let released = store
        .release_stale_reservations(cutoff)
        .await
        .context("releasing reservations left by the previous run")?;
    if released > 0 {
        warn!(
            released,
            "released reservations left open by the previous run"
        );
    }
    Ok(store)
}

/// The HTTP client for the platforms' APIs (WeChat, WeCom, Telegram, payments).
fn platform_http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .build()
        .context("building the HTTP client for platform APIs")
}

/// Binds `server.listen`.
async fn bind(config: &Config) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = config
        .server
        .listen
        .parse()
        .with_context(|| format!("server.listen {:?}", config.server.listen))?;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))
}

/// Starts the daemon's background work on `tracker`: housekeeping, the store doctor, the
/// systemd watchdog, the configured jobs, reconciliation (on the leader) and SIGHUP reloads.
fn spawn_background(tracker: &TaskTracker, state: &AppState) {
    let shutdown = state.shutdown.clone();
    let engine = state.engine.clone();
    let metrics = state.metrics.clone();
    tracker.spawn(housekeeping(
        engine.clone(),
        state.channels.login.clone(),
        state.channels.guests.clone(),
        metrics,
        shutdown.clone(),
    ));

    tracker.spawn(store_doctor(engine.clone(), shutdown.clone()));
    if let Some(interval) = sd_notify::watchdog_enabled() {
        tracker.spawn(watchdog(engine.clone(), interval, shutdown.clone()));
    }
    state.live.sync_jobs();
    let live = state.live.clone();
    tracker.spawn(crate::leader::run(
        engine.store().clone(),
        "reconcile".to_owned(),
        shutdown.clone(),
        move |stop| reconcile(live.clone(), stop),
    ));
    tracker.spawn(state.live.clone().reload_on_sighup());
}

/// Stops the HTTP server: `finished_early` is its result when it ended before shutdown was
/// asked for; else it drains its requests until `deadline`, then its connections are closed.
async fn stop_server(
    finished_early: Option<Result<std::io::Result<()>, tokio::task::JoinError>>,
    mut server: tokio::task::JoinHandle<std::io::Result<()>>,
    shutdown: &CancellationToken,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    match finished_early {
        // The server can only end by itself when it failed; unless shutdown was asked
        // for at the same moment, that is an error.
        Some(r) if !shutdown.is_cancelled() => {
            shutdown.cancel();
            r.context("the HTTP server task failed")?
                .context("the HTTP server failed")?;
            bail!("the HTTP server stopped unexpectedly");
        }
        Some(_) => {}
        None => match tokio::time::timeout_at(deadline, &mut server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "the HTTP server failed while draining"),
            Ok(Err(e)) => warn!(error = %e, "the HTTP server task failed while draining"),
            Err(_) => {
                warn!("connections still open after the grace period; closing them");
                server.abort();
            }
        },
    }
    Ok(())
}

/// Waits until `deadline` for the tracked tasks (answers being delivered) to end.
async fn drain_tasks(tracker: &TaskTracker, deadline: tokio::time::Instant) {
    tracker.close();
    if tokio::time::timeout_at(deadline, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            tasks = tracker.len(),
            "background tasks still running after the grace period"
        );
    }
}

/// Accepts connections and serves each with hyper's HTTP/1 server, configured from
/// `[server]` at the time the connection is accepted: how many header lines and bytes a
/// request head may have (`431` beyond), and how long the head may take to arrive (a client
/// that never finishes its headers is dropped). On shutdown: stop accepting, let each
/// connection finish the request it is on, and return when all are closed.
async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    live: Live,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    // Each connection holds a receiver; all are gone when the last connection closed.
    let (all_closed, open) = tokio::sync::watch::channel(());
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors or a connection reset before it was accepted:
                    // nothing to do for it, and a short pause keeps this from spinning.
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (max_headers, max_header_bytes, head_timeout) = {
            let parts = live.get();
            let s = &parts.config.server;
            (
                s.max_headers,
                s.max_header_bytes,
                Duration::from_secs(s.request_timeout_secs),
            )
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
        let open = open.clone();
        let shutdown = shutdown.clone();
        // A connection's task is counted in `open`, which the accept loop drains at shutdown
        // (before the tracker's tasks, which the requests may have started, are waited for).
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(head_timeout)
                .max_headers(max_headers)
                .max_header_size(max_header_bytes);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(open);
        });
    }
    drop(open);
    drop(listener);
    all_closed.closed().await;
    Ok(())
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, "sd_notify failed");
    }
}

/// Every minute: expire dedupe marks, forget idle rate-limit windows, refresh gauges.
async fn housekeeping(
    engine: Engine,
    login: Arc<crate::auth::Login>,
    guests: Arc<crate::channels::web::guests::PageLimits>,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    let mut cleanup = crate::leader::Held::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        login.sweep();
        guests.sweep();
        // Purging stored records is one daemon's job when several share the database.
        let store = engine.store();
        let purge = cleanup.leads(store, "cleanup").await;
        // The engine's in-memory sweeps are sync (and can take a while): off the workers.
        let e = engine.clone();
        let swept = tokio::task::spawn_blocking(move || e.housekeeping()).await;
        if purge {
            engine.purge_old_records().await;
        }
        if let Err(err) = swept {
            warn!(error = %err, "housekeeping stopped");
        }
        if purge && let Err(err) = store.purge_expired_login_codes(crate::util::now_ms()).await {
            warn!(error = %err, "purging expired login codes failed");
        }
        if let Err(err) = engine.stats().flush(store).await {
            warn!(error = %err, "writing the statistics failed; kept for the next minute");
        }
        set_depth_gauges(store).await;
        crate::http::ops::export_store_counters();
        if let Some(m) = &metrics {
            m.run_upkeep();
        }
    }
}

/// Sets the gauges of users, users with answers waiting and open orders; a count the store
/// cannot give leaves its gauge as it was (logged).
async fn set_depth_gauges(store: &chatrelay_storage::Store) {
    let failed = |what: &str, e: &chatrelay_storage::StoreError| {
        warn!(error = %e, "counting {what} for the metrics failed");
    };
    match store.user_count().await {
        Ok(n) => metrics::gauge!("chatrelay_users").set(n as f64),
        Err(e) => failed("users", &e),
    }
    match store.outbox_users().await {
        Ok(n) => metrics::gauge!("chatrelay_outbox_users").set(n as f64),
        Err(e) => failed("waiting answers", &e),
    }
    match store.open_orders().await {
        Ok(o) => metrics::gauge!("chatrelay_open_orders").set(o.len() as f64),
        Err(e) => failed("open orders", &e),
    }
}

/// Pings systemd's watchdog at half its interval, but only while the daemon really works:
/// the runtime schedules this task, and the store answers a read within the interval. A
/// wedged store stops the pings, and systemd restarts the service.
async fn watchdog(engine: Engine, interval: Duration, shutdown: CancellationToken) {
    let every = interval / 2;
    info!(
        interval_ms = interval.as_millis() as u64,
        "systemd watchdog enabled"
    );
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
        let store = engine.store();
        let alive = tokio::time::timeout(every, store.user(chatrelay_storage::Uid(0))).await;
        match alive {
            Ok(Ok(_)) => notify(&[sd_notify::NotifyState::Watchdog]),
            _ => warn!("store not answering: skipping the watchdog ping"),
        }
    }
}

/// Every two seconds: does the store take writes? sled refuses every write after an I/O
/// error (a full disk) until it is reopened, so when the probe fails the store is reopened —
/// at once if space is back, else at a later round. Requests meanwhile fail cleanly (503) and
/// health checks keep answering.
async fn store_doctor(engine: Engine, shutdown: CancellationToken) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = shutdown.cancelled() => return,
        }
        let store = engine.store();
        let ok = store.probe_write().await
            || match store.recover().await {
                Ok(()) => store.probe_write().await && release_after_reopen(store).await,
                Err(e) => {
                    warn!(error = %e, "reopening the store failed; trying again shortly");
                    false
                }
            };
        metrics::gauge!("chatrelay_store_writable").set(if ok { 1.0 } else { 0.0 });
        if ok && failing {
            info!("the store takes writes again");
        } else if !ok && !failing {
            warn!(
                "the store refuses writes (disk full?): requests that write fail until it recovers"
            );
        }
        failing = !ok;
    }
}

/// After a reopen, releases every open hold, as a start does: the reopened database is what
/// reached the disk, so a hold whose settle or release was lost with the failed writes would
/// stay open until the next start (an answer still being written then finds its hold gone
/// and is not charged: the user never pays twice, nor for a lost record). False if the
/// release fails (the store is not writable after all).
async fn release_after_reopen(store: &chatrelay_storage::Store) -> bool {
    if store.is_shared() {
        // Nothing was reopened (the pool replaces connections), and other daemons' answers
        // hold credits: their expired holds go with the cleanup job.
        return true;
    }
    match store.release_stale_reservations(i64::MAX).await {
        Ok(0) => true,
        Ok(released) => {
            warn!(released, "released holds the storage failure left open");
            true
        }
        Err(e) => {
            warn!(error = %e, "releasing holds after the reopen failed");
            false
        }
    }
}

/// Keeps orders in step with the providers: missed notifications, expired orders. The shop
/// and the interval are read at each round, so a reload that enables payments or changes
/// `pay.reconcile_interval_secs` takes effect at the next one.
async fn reconcile(live: Live, shutdown: CancellationToken) {
    loop {
        let parts = live.get();
        let every = Duration::from_secs(parts.config.pay.reconcile_interval_secs.max(1));
        let billing = parts.billing.clone();
        drop(parts);
        if billing.enabled() {
            tokio::select! {
                _ = billing.reconcile() => {}
                () = shutdown.cancelled() => return,
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Fires the token on SIGTERM or SIGINT.
pub async fn stop_on_signals(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
        () = token.cancelled() => return,
    }
    token.cancel();
}
