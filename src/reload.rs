//! Everything built from the configuration that a reload can replace, and the reload itself
//! (SIGHUP and `POST /admin/reload`).
//!
//! The configuration-derived parts (Official Accounts, WeCom, zsxq, Telegram, the shop, the
//! admin token, the engine's settings and LLM backend) live behind one swappable [`Live`]
//! handle. A reload reads and validates the file again, builds new parts next to the old
//! ones (an error leaves the old ones in place), then swaps them in. Requests already running
//! keep the snapshot they started with, so nothing in flight is dropped; components hand over
//! their runtime state (message tries, AI-bot streams, zsxq pauses) to their replacements.
//! Background pollers (zsxq groups, Telegram bots) are restarted only when their own
//! configuration changed, and a replacement waits for the old poller to finish its run.
//!
//! Keys that shape the process itself (`server.listen`, body limits, `storage.*`, `log.*`,
//! `web.enabled`) are reported as needing a restart and keep their running values.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use chatrelay_wechat::RobotClient;
use chatrelay_wechat::robot::{ROBOT_MESSAGES_PER_WINDOW, ROBOT_RATE_WINDOW};

use crate::alerts::{AlertSink, Alerter, Pace, SendFuture};
use crate::billing::Billing;
use crate::channels::{Channels, Poller};
use crate::config::{self, Config, Secret};
use crate::engine::{Engine, Settings, llm};
use crate::util::Current;

/// The pace of the WeCom group robots, the alert sinks: 20 messages a minute each.
pub const ROBOT_PACE: Pace = Pace {
    messages: ROBOT_MESSAGES_PER_WINDOW,
    window: ROBOT_RATE_WINDOW,
};

/// An alert sink: one WeCom group robot of `[[wecom_robot]]`.
struct RobotSink {
    id: String,
    client: RobotClient,
}

impl AlertSink for RobotSink {
    fn name(&self) -> &str {
        &self.id
    }

    fn send<'a>(&'a self, text: &'a str) -> SendFuture<'a> {
        Box::pin(async move { self.client.send_text(text).await.map_err(|e| e.to_string()) })
    }
}

/// The alert sinks of a configuration: its WeCom group robots.
#[must_use]
pub fn robot_sinks(config: &Config, http: &reqwest::Client) -> Vec<Arc<dyn AlertSink>> {
    config
        .wecom_robot
        .iter()
        .map(|r| {
            Arc::new(RobotSink {
                id: r.id.clone(),
                client: RobotClient::new(r.webhook.expose(), &r.api_base, http.clone()),
            }) as Arc<dyn AlertSink>
        })
        .collect()
}

/// The configuration-derived parts of a running daemon, one consistent generation.
pub struct Parts {
    /// The configuration they were built from.
    pub config: Arc<Config>,
    /// The admin API's bearer token.
    pub admin_token: Secret,
    /// The shop: products, orders, payments.
    pub billing: Arc<Billing>,
    /// Every channel (Official Accounts, WeCom, zsxq, Telegram, the web page).
    pub channels: Arc<Channels>,
}

impl Parts {
    /// Builds every part from a validated configuration; `previous` (on a reload) hands over
    /// runtime state and unchanged components.
    pub fn build(
        config: Arc<Config>,
        engine: &Engine,
        http: &reqwest::Client,
        alerts: &Alerter,
        previous: Option<&Parts>,
    ) -> anyhow::Result<Parts> {
        let admin_token = crate::auth::resolve_admin_token(&config)?;
        let billing = Arc::new(
            Billing::from_config(
                &config,
                engine.store().clone(),
                http.clone(),
                alerts.clone(),
            )
            .context("setting up payments")?,
        );
        let channels = Arc::new(Channels::build(
            config.clone(),
            billing.clone(),
            http,
            previous.map(|p| &*p.channels),
        )?);
        Ok(Parts {
            config,
            admin_token,
            billing,
            channels,
        })
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    /// Top-level sections whose values changed and now apply.
    pub applied: Vec<String>,
    /// Keys that changed but take effect only after a restart (their old values stay).
    pub restart_needed: Vec<String>,
    /// The file read (`None`: built-in defaults).
    pub file: Option<PathBuf>,
}

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration is invalid.
    #[error("{0}")]
    Invalid(#[from] config::ConfigError),
    /// It is valid but could not be put to work (a key file, a client...).
    #[error("{0:#}")]
    Build(anyhow::Error),
}

/// A running poller and the token that stops it.
struct Job {
    /// The component it runs (held, so that its identity stays unique while the job is
    /// listed).
    poller: Poller,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

/// The handle on the live parts, shared by every request handler. Cheap to clone.
#[derive(Clone)]
pub struct Live {
    inner: Arc<LiveInner>,
}

struct LiveInner {
    parts: RwLock<Arc<Parts>>,
    /// The file the daemon started from (`None`: the default lookup).
    source: Option<PathBuf>,
    engine: Engine,
    http: reqwest::Client,
    alerts: Alerter,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    jobs: Mutex<Jobs>,
}

#[derive(Default)]
struct Jobs {
    running: HashMap<String, Job>,
    /// Pollers removed from the configuration, still finishing their run: a poller added
    /// again under the same key waits for them.
    retiring: HashMap<String, JoinHandle<()>>,
}

impl Live {
    /// Wraps the first generation.
    #[must_use]
    pub fn new(
        parts: Parts,
        source: Option<PathBuf>,
        engine: Engine,
        http: reqwest::Client,
        alerts: Alerter,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Live {
        Live {
            inner: Arc::new(LiveInner {
                parts: RwLock::new(Arc::new(parts)),
                source,
                engine,
                http,
                alerts,
                tracker,
                shutdown,
                reloading: tokio::sync::Mutex::new(()),
                jobs: Mutex::new(Jobs::default()),
            }),
        }
    }

    /// The parts now. Hold the `Arc` for the length of a request, not longer.
    #[must_use]
    pub fn get(&self) -> Arc<Parts> {
        self.inner
            .parts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A handle on the channels in force, for their request handlers.
    #[must_use]
    pub fn channels(&self) -> Current<Channels> {
        let live = self.clone();
        Current::new(move || live.get().channels.clone())
    }

    /// A handle on the shop in force, for the payment notifications.
    #[must_use]
    pub fn billing(&self) -> Current<Billing> {
        let live = self.clone();
        Current::new(move || live.get().billing.clone())
    }

    /// Starts (or, after a reload, restarts) the pollers: one per zsxq group and one per
    /// Telegram bot. A poller whose component was kept keeps running; a replaced one is
    /// stopped, and its successor starts once it has finished.
    pub fn sync_jobs(&self) {
        let parts = self.get();
        let inner = &self.inner;
        let mut jobs = inner.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let wanted = parts.channels.pollers();
        let Jobs { running, retiring } = &mut *jobs;
        retiring.retain(|_, handle| !handle.is_finished());
        // Stop pollers whose component is gone.
        let gone: Vec<String> = running
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(job) = running.remove(&key) {
                info!(job = %key, "stopping the poller (removed from the configuration)");
                job.stop.cancel();
                retiring.insert(key, job.handle);
            }
        }
        for (key, poller) in wanted {
            if running.get(&key).is_some_and(|j| j.poller.same(&poller)) {
                continue;
            }
            let previous = match running.remove(&key) {
                Some(old) => {
                    info!(job = %key, "restarting the poller with its new configuration");
                    old.stop.cancel();
                    Some(old.handle)
                }
                None => retiring.remove(&key),
            };
            let stop = inner.shutdown.child_token();
            let engine = inner.engine.clone();
            let alerts = inner.alerts.clone();
            let shutdown = inner.shutdown.clone();
            let task_stop = stop.clone();
            let task_poller = poller.clone();
            let job_name = key.clone();
            let handle = inner.tracker.spawn(async move {
                if let Some(previous) = previous {
                    // Two pollers of one zsxq group could answer a topic twice, and two
                    // getUpdates on one bot make Telegram refuse both.
                    let _ = previous.await;
                }
                // With several daemons on one database, one of them polls (the others
                // stand by and take over when it dies).
                let store = engine.store().clone();
                crate::leader::run(store, job_name, task_stop, move |stop| {
                    let (engine, alerts, shutdown) =
                        (engine.clone(), alerts.clone(), shutdown.clone());
                    let poller = task_poller.clone();
                    poller.run(engine, alerts, stop, shutdown)
                })
                .await;
            });
            running.insert(
                key,
                Job {
                    poller,
                    stop,
                    handle,
                },
            );
        }
    }

    /// The configuration file the daemon started from (`None`: the default lookup).
    #[must_use]
    pub fn source(&self) -> Option<&std::path::Path> {
        self.inner.source.as_deref()
    }

    /// Reads the configuration again and applies it; on any error the running one stays.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let inner = &self.inner;
        let _one = inner.reloading.lock().await;
        metrics::counter!("chatrelay_config_reloads_total").increment(1);
        let result = self.reload_locked().await;
        match &result {
            Ok(report) => info!(
                applied = ?report.applied,
                restart_needed = ?report.restart_needed,
                "configuration reloaded"
            ),
            Err(e) => {
                metrics::counter!("chatrelay_config_reload_failures_total").increment(1);
                warn!(error = %e, "configuration reload refused; the running configuration stays");
            }
        }
        result
    }

    async fn reload_locked(&self) -> Result<ReloadReport, ReloadError> {
        let inner = &self.inner;
        let source = inner.source.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load(source.as_deref()))
            .await
            .map_err(|e| ReloadError::Build(anyhow::anyhow!("reading the configuration: {e}")))??;
        let old = self.get();
        let mut new = loaded.config;
        let restart_needed = keep_process_keys(&old.config, &mut new);
        let applied = changed_sections(&old.config, &new);
        let new = Arc::new(new);
        // Unchanged upstreams keep their client (connections, key cooldowns, health).
        let backend = if old.config.llm == new.llm && old.config.images == new.images {
            inner.engine.llm()
        } else {
            llm::from_config(&new)
                .context("building the LLM client")
                .map_err(ReloadError::Build)?
        };
        let settings = Settings::from_config(&new)
            .context("setting up content rules")
            .map_err(ReloadError::Build)?;
        let parts = {
            let engine = inner.engine.clone();
            let http = inner.http.clone();
            let alerts = inner.alerts.clone();
            let new = new.clone();
            let old = old.clone();
            // Building reads key files from disk.
            tokio::task::spawn_blocking(move || {
                Parts::build(new, &engine, &http, &alerts, Some(&old))
            })
            .await
            .map_err(|e| ReloadError::Build(anyhow::anyhow!("building the new parts: {e}")))?
            .map_err(ReloadError::Build)?
        };
        // Everything is built: swap. Nothing below can fail.
        notify_reloading(true);
        inner.alerts.set_sinks(robot_sinks(&new, &inner.http));
        inner.engine.reload(settings, backend);
        *inner.parts.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(parts);
        self.sync_jobs();
        notify_reloading(false);
        Ok(ReloadReport {
            applied,
            restart_needed,
            file: loaded.file,
        })
    }

    /// Reloads on every SIGHUP until shutdown.
    pub async fn reload_on_sighup(self) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            warn!("cannot listen for SIGHUP; reload with `chatrelay admin reload`");
            return;
        };
        loop {
            tokio::select! {
                got = hup.recv() => if got.is_none() { return },
                () = self.inner.shutdown.cancelled() => return,
            }
            info!("SIGHUP received: reloading the configuration");
            // The outcome is logged by reload().
            let _ = self.reload().await;
        }
    }
}

fn notify_reloading(starting: bool) {
    let state = if starting {
        sd_notify::NotifyState::Reloading
    } else {
        sd_notify::NotifyState::Ready
    };
    if let Err(e) = sd_notify::notify(&[state]) {
        warn!(error = %e, "sd_notify failed");
    }
}

/// Puts the running values of keys that only a restart can change back into `new`, and
/// names those that differed.
fn keep_process_keys(old: &Config, new: &mut Config) -> Vec<String> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($($path:ident).+) => {
            if old.$($path).+ != new.$($path).+ {
                changed.push(stringify!($($path).+).replace(' ', ""));
                new.$($path).+ = old.$($path).+.clone();
            }
        };
    }
    keep!(server.listen);
    keep!(server.max_body_bytes);
    keep!(server.shutdown_grace_secs);
    keep!(storage);
    keep!(log);
    keep!(web.enabled);
    changed
}

/// The top-level sections that differ.
fn changed_sections(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    macro_rules! cmp {
        ($($field:ident),+) => {
            $(if old.$field != new.$field {
                changed.push(stringify!($field).to_owned());
            })+
        };
    }
    cmp!(
        filters,
        keywords,
        roles,
        scopes,
        moderation,
        server,
        storage,
        llm,
        quota,
        bot,
        log,
        wechat_mp,
        products,
        pay,
        web,
        wecom,
        wecom_aibot,
        wecom_robot,
        zsxq,
        telegram
    );
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_keys_keep_their_running_values() {
        let old = Config::default();
        let mut new = Config::default();
        new.server.listen = "127.0.0.1:9999".into();
        new.storage.path = "/elsewhere".into();
        new.llm.system_prompt = "new prompt".into();
        let restart = keep_process_keys(&old, &mut new);
        assert_eq!(restart, vec!["server.listen", "storage"]);
        assert_eq!(new.server.listen, old.server.listen);
        assert_eq!(new.storage.path, old.storage.path);
        assert_eq!(changed_sections(&old, &new), vec!["llm"]);
    }
}
