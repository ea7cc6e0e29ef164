//! The operations that read or sweep many records (listings, searches, the audit, purges):
//! on the key-value engine they run on tokio's blocking pool, so that a long scan of a big
//! sled store delays its caller, not every connection on the async workers. The relational
//! engine awaits them like every other statement.

use chatrelay_core::UserKey;

use super::{Engine, Store};
use crate::{
    AuditReport, CodeBatch, KvStore, Order, OrderStatus, StoreError, Uid, UsagePurge, User,
    UserActivity,
};

/// An argument carried into a blocking task: owned there ([`Carry::carry`]), lent to the
/// call ([`Lend::lend`]).
trait Carry {
    type Owned: Lend + Send + 'static;
    fn carry(self) -> Self::Owned;
}

/// What an owned argument lends to the key-value engine's method.
trait Lend {
    type Out<'a>
    where
        Self: 'a;
    fn lend(&self) -> Self::Out<'_>;
}

impl Carry for &str {
    type Owned = String;
    fn carry(self) -> String {
        self.to_owned()
    }
}

impl Lend for String {
    type Out<'a> = &'a str;
    fn lend(&self) -> &str {
        self
    }
}

/// Copies are carried and lent as they are.
macro_rules! by_copy {
    ($($t:ty),*) => {$(
        impl Carry for $t {
            type Owned = $t;
            fn carry(self) -> $t {
                self
            }
        }
        impl Lend for $t {
            type Out<'a> = $t;
            fn lend(&self) -> $t {
                *self
            }
        }
    )*};
}
by_copy!(i64, usize, Uid, Option<OrderStatus>);

#[cfg(test)]
mod tests {
    use crate::{EntryKind, Store};

    /// On sled a scan runs on the blocking pool, not on the caller's worker; inside a step
    /// (on the write lane, no runtime there) it runs in place.
    #[tokio::test]
    async fn a_scan_leaves_the_worker_and_runs_in_place_in_a_step() {
        let store = Store::open_temporary().unwrap();
        let uid = store.create_user("a").await.unwrap().uid;
        store
            .grant(uid, 5, EntryKind::Grant, "test", "g1", 1)
            .await
            .unwrap();
        let worker = std::thread::current().id();
        let on = store.kv().unwrap().clone();
        // The closure a scan runs reports its thread: the blocking pool's, not this one.
        let elsewhere = super::blocking(&on, |_| std::thread::current().id())
            .await
            .unwrap();
        assert_ne!(elsewhere, worker);
        assert!(store.audit().await.unwrap().mismatches.is_empty());
        let s = store.clone();
        let counted = store
            .step(async move { s.user_count().await.unwrap() })
            .await
            .unwrap();
        assert_eq!(counted, 1);
    }
}

/// Runs `f` on the key-value engine on the blocking pool; where there is no runtime (a step
/// polled on sled's write lane, which is off the workers already), here.
pub(super) async fn blocking<R: Send + 'static>(
    kv: &KvStore,
    f: impl FnOnce(&KvStore) -> R + Send + 'static,
) -> Result<R, StoreError> {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Ok(f(kv));
    };
    let kv = kv.clone();
    match runtime.spawn_blocking(move || f(&kv)).await {
        Ok(r) => Ok(r),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(StoreError::Reopening),
    }
}

/// Delegates each listed method: off the workers on the key-value engine, awaited on the
/// relational one.
macro_rules! scans {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)* $(,)?) -> $ret:ty; )*) => {
        impl Store {
            $(
                #[doc = concat!("See [`KvStore::", stringify!($name), "`] (the same on both engines; a scan, run off the async workers on sled).")]
                pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match &self.engine {
                        Engine::Kv(kv) => {
                            $(let $arg = Carry::carry($arg);)*
                            blocking(kv, move |kv| kv.$name($(Lend::lend(&$arg)),*)).await?
                        }
                        Engine::Rel(r) => r.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

scans! {
fn audit(&self) -> Result<AuditReport, StoreError>;
fn chat_owners(&self, from: Uid, limit: usize) -> Result<(Vec<Uid>, Option<Uid>), StoreError>;
fn checkpoints_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError>;
fn code_batches(&self, limit: usize) -> Result<Vec<CodeBatch>, StoreError>;
fn code_redemptions(&self) -> Result<Vec<(i64, i64)>, StoreError>;
fn count_prefix(&self, prefix: &str) -> Result<usize, StoreError>;
fn find_identities(&self, query: &str, limit: usize) -> Result<Vec<(UserKey, Uid)>, StoreError>;
fn find_tokens(&self, q: &str, limit: usize) -> Result<Vec<(Uid, String)>, StoreError>;
fn find_users_by_name(&self, query: &str, limit: usize) -> Result<Vec<User>, StoreError>;
fn open_orders(&self) -> Result<Vec<Order>, StoreError>;
fn orders(&self, status: Option<OrderStatus>, limit: usize) -> Result<Vec<Order>, StoreError>;
fn purge_changes(&self, before_ms: i64, max: usize) -> Result<usize, StoreError>;
fn purge_checkpoints_before(&self, prefix: &str, before: &str) -> Result<usize, StoreError>;
fn purge_expired_login_codes(&self, now_ms: i64) -> Result<usize, StoreError>;
fn purge_settled_reservations(&self, before_ms: i64) -> Result<usize, StoreError>;
fn purge_usage(&self, before_ms: i64, from: Uid, users: usize) -> Result<UsagePurge, StoreError>;
fn release_stale_reservations(&self, now_ms: i64) -> Result<usize, StoreError>;
fn user_activity(&self) -> Result<Vec<UserActivity>, StoreError>;
fn users_created_since(&self, since_ms: i64) -> Result<Vec<i64>, StoreError>;}
