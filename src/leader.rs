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

/// Tries to lead `job` (`None` while another daemon leads it, or when the store cannot
/// say: logged, tried again later).
pub async fn try_lead(store: &Store, job: &str) -> Option<Leadership> {
    match store.try_lead(job).await {
        Ok(lead) => lead,
        Err(e) => {
            warn!(job, error = %e, "cannot take part in leading the job");
            None
        }
    }
}

/// Runs `job` whenever this daemon leads `name`, until `stop` (or until the job ends by
/// itself). `job` gets a token cancelled when it must stop (the daemon stops or the
/// leadership is lost) and should return soon after; after a lost leadership it is started
/// again when the daemon leads once more.
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
        let lost_lock = tokio::select! {
            () = &mut running => false,
            () = lost => {
                warn!(job = %name, "lost the job's lock (database connection gone); stopping it");
                token.cancel();
                running.await;
                true
            }
        };
        gauge.set(0.0);
        drop(lead);
        if stop.is_cancelled() || !lost_lock {
            // Stopped, or the job ended by itself (as it would alone): done.
            return;
        }
        // Pause before trying to lead again.
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Two daemons on one PostgreSQL schema (two stores, two pools, the relational tables).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_daemon_leads_and_another_takes_over() {
        let Some((a, b)) = crate::engine::tests::shared_pair().await else {
            eprintln!("skipped: CHATRELAY_TEST_PG_URL is not set");
            return;
        };
        assert!(a.is_shared() && a.kv().is_none());
        takeover(a, b).await;
    }

    /// `a` leads a job, `b` waits; when `a` stops, `b` takes over; never both at once.
    async fn takeover(a: Store, b: Store) {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let spawn = |store: Store, stop: CancellationToken| {
            let (running, most) = (running.clone(), most.clone());
            tokio::spawn(run(store, "job".into(), stop, move |token| {
                let (running, most) = (running.clone(), most.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    token.cancelled().await;
                    running.fetch_sub(1, Ordering::SeqCst);
                }
            }))
        };
        let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
        let first = spawn(a, stop_a.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let second = spawn(b, stop_b.clone());
        tokio::time::sleep(RETRY * 2).await;
        assert_eq!(running.load(Ordering::SeqCst), 1, "one leader");
        // The leader goes away: the other takes the job within about RETRY.
        stop_a.cancel();
        first.await.unwrap();
        let deadline = tokio::time::Instant::now() + RETRY * 3;
        while running.load(Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no takeover");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "never two at once");
        stop_b.cancel();
        second.await.unwrap();
    }

    #[tokio::test]
    async fn alone_a_daemon_always_leads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let mut held = Held::default();
        assert!(held.leads(&store, "cleanup").await);
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        run(store, "x".into(), CancellationToken::new(), move |_| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
            }
        })
        .await;
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }
}
