//! Jobs that must run on one daemon at a time when several share a PostgreSQL database:
//! zsxq polling, Telegram long polling, payment reconciliation, cleanup.
//!
//! A job runs only while its daemon leads it (a PostgreSQL advisory lock on a connection of
//! its own, see [`chatrelay_storage::Leadership`]). A daemon that does not lead tries again
//! every [`RETRY`]; when the leader dies its connection closes and PostgreSQL frees the lock
//! at once, so another daemon takes the job within about that time. A leader checks its lock
//! every [`CHECK`]; when the lock is lost (database restart, network cut) the job is asked to
//! stop, allowed to finish what it is doing, and the daemon tries to lead again. On the
//! embedded store a daemon is alone: it always leads.

use std::future::Future;
use std::time::Duration;

use chatrelay_storage::{Leadership, Store};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often a daemon that does not lead a job tries to take it.
pub const RETRY: Duration = Duration::from_secs(2);
/// How often a leader checks that it still holds its lock.
pub const CHECK: Duration = Duration::from_secs(5);

/// Tries to lead `job` without blocking the runtime.
pub async fn try_lead(store: &Store, job: &str) -> Option<Leadership> {
    let (store, name) = (store.clone(), job.to_owned());
    match tokio::task::spawn_blocking(move || store.try_lead(&name)).await {
        Ok(Ok(lead)) => lead,
        Ok(Err(e)) => {
            warn!(job, error = %e, "cannot take part in leading the job");
            None
        }
        Err(e) => {
            warn!(job, error = %e, "leadership check failed");
            None
        }
    }
}

/// Runs `job` whenever this daemon leads `name`, until `stop`. `job` gets a token cancelled
/// when it must stop (the daemon stops or the leadership is lost) and should return soon
/// after; it is started again when the daemon leads once more.
pub async fn run<F, Fut>(store: Store, name: String, stop: CancellationToken, mut job: F)
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    if !store.is_shared() {
        job(stop).await;
        return;
    }
    let gauge = metrics::gauge!("chatrelay_leader", "job" => name.clone());
    loop {
        if stop.is_cancelled() {
            return;
        }
        let Some(lead) = try_lead(&store, &name).await else {
            tokio::select! {
                () = tokio::time::sleep(RETRY) => continue,
                () = stop.cancelled() => return,
            }
        };
        info!(job = %name, "leading job");
        gauge.set(1.0);
        let token = stop.child_token();
        let running = job(token.clone());
        tokio::pin!(running);
        let lost = async {
            loop {
                tokio::time::sleep(CHECK).await;
                if !lead.still_held().await {
                    return;
                }
            }
        };
        tokio::select! {
            () = &mut running => {}
            () = lost => {
                warn!(job = %name, "lost the job's lock (database connection gone); stopping it");
                token.cancel();
                running.await;
            }
        }
        gauge.set(0.0);
        drop(lead);
        if stop.is_cancelled() {
            return;
        }
        // The job ended by itself (or lost its lock): pause before leading again.
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Leadership kept across the rounds of a periodic task (cleanup): taken when free, checked
/// each round, let go of when lost.
#[derive(Default)]
pub struct Held {
    lead: Option<Leadership>,
}

impl Held {
    /// Whether this daemon leads `name` for this round.
    pub async fn leads(&mut self, store: &Store, name: &str) -> bool {
        if !store.is_shared() {
            return true;
        }
        if let Some(lead) = &self.lead
            && !lead.still_held().await
        {
            warn!(job = name, "lost the job's lock (database connection gone)");
            self.lead = None;
        }
        if self.lead.is_none() {
            self.lead = try_lead(store, name).await;
            if self.lead.is_some() {
                info!(job = name, "leading job");
            }
        }
        self.lead.is_some()
    }
}
