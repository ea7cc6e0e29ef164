//! Users as channels see them: a user recorded on first contact, a guest with trial credits,
//! an account's balance and recent ledger for the web page.

use chatrelay_core::UserKey;
use chatrelay_storage::{EntryKind, LedgerEntry, User};

use super::*;

/// The name (and token label) of guest users: how the cleanup of expired guests knows them.
pub(super) const GUEST_NAME: &str = "guest";

/// A new guest: a user with trial credits and a token that expires.
#[derive(Debug, Clone)]
pub struct Guest {
    /// The guest's user.
    pub uid: Uid,
    /// The bearer token.
    pub token: String,
    /// When the token expires, ms since the Unix epoch.
    pub expires_at_ms: i64,
}

/// An account as its owner sees it.
#[derive(Debug, Clone)]
pub struct Account {
    /// The user.
    pub user: User,
    /// Credits left (free today and paid).
    pub balance: Balance,
    /// The free credits a day, from the same settings as `balance`.
    pub free_daily: u64,
    /// The latest ledger entries, newest first (empty if reading them failed).
    pub recent: Vec<LedgerEntry>,
    /// The user's membership plan (active or ended), if any.
    pub plan: Option<chatrelay_storage::ActivePlan>,
    /// The quota day `balance` was read on.
    pub today: i64,
}

impl Engine {
    /// The user behind `key`, created on first contact.
    pub async fn record_user(
        &self,
        key: &UserKey,
        display_name: Option<&str>,
    ) -> Result<Uid, StoreError> {
        self.inner.store.resolve_identity(key, display_name).await
    }

    /// Creates a guest with `credits` (a ledger grant, idempotent on the guest's uid) and a
    /// token valid for `token_ttl`, and flushes it to disk (a failed flush is logged: the
    /// guest works until a crash).
    pub async fn create_guest(
        &self,
        credits: u64,
        token_ttl: Duration,
    ) -> Result<Guest, StoreError> {
        let store = &self.inner.store;
        let now = now_ms();
        let user = store.create_user(GUEST_NAME).await?;
        store
            .grant(
                user.uid,
                credits,
                EntryKind::Grant,
                "guest trial",
                &format!("guest:{}", user.uid),
                now,
            )
            .await?;
        // The user is new, so the grant is too.
        self.inner.stats.granted(self.settings().today(), credits);
        let expires = now.saturating_add(token_ttl.as_millis() as i64);
        let token = store
            .create_token(user.uid, GUEST_NAME, Some(expires), now)
            .await?;
        if let Err(e) = store.flush().await {
            warn!(error = %e, "flushing a guest failed");
        }
        Ok(Guest {
            uid: user.uid,
            token,
            expires_at_ms: expires,
        })
    }

    /// The account of `uid` with its `recent` latest ledger entries; `None` if there is no
    /// such user.
    pub async fn account(&self, uid: Uid, recent: usize) -> Result<Option<Account>, StoreError> {
        let store = &self.inner.store;
        let s = self.settings();
        let today = s.today();
        match (
            store.user(uid).await,
            store.balance(uid, today, s.free_daily).await,
        ) {
            (Ok(Some(user)), Ok(balance)) => Ok(Some(Account {
                user,
                balance,
                free_daily: s.free_daily,
                recent: store.ledger(uid, recent).await.unwrap_or_default(),
                plan: store.plan(uid).await?,
                today,
            })),
            (Ok(None), _) => Ok(None),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }
}
