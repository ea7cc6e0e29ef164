//! The one error type of the store.

use std::path::PathBuf;

use crate::{LedgerEntry, ReservationId, Uid};

/// Everything that can go wrong in the store.
///
/// Variants other than [`StoreError::Sled`], [`StoreError::Locked`], [`StoreError::Corrupt`] and
/// [`StoreError::Rng`] are expected outcomes the caller handles (an unknown user, too few
/// credits...). The messages may change over time: match on the variants, not on the text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The storage engine failed (I/O, corruption it detected itself, a bug it reports).
    #[error("storage engine error: {0}")]
    Sled(#[from] sled::Error),
    /// The PostgreSQL database failed or could not be reached (the server's message).
    #[error("database error: {0}")]
    Backend(String),
    /// The operation is not available on this storage engine.
    #[error("{0}")]
    Unsupported(String),
    /// The database is closed while it is reopened after a storage failure (a full disk);
    /// try again shortly.
    #[error("the database is being reopened after a storage failure")]
    Reopening,
    /// Another process holds the database: only one process may open it.
    #[error("database {} is locked by another process (only one process may open it)", path.display())]
    Locked {
        /// The database directory.
        path: PathBuf,
    },
    /// The database was written by a newer chatrelay; this build refuses to touch it.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// The version recorded in the database.
        found: u32,
        /// The newest version this build knows ([`crate::SCHEMA_VERSION`]).
        supported: u32,
    },
    /// The PostgreSQL schema holds a layout this build does not open as it is: the one-table
    /// layout of an older chatrelay (run `chatrelay migrate`), an interrupted migration, both
    /// layouts at once, or a migration whose census did not match. The message says which
    /// and what to do.
    #[error("{0}")]
    NeedsMigration(String),
    /// A record on disk could not be read.
    #[error("corrupt record in tree {tree:?} at key {key}: {detail}")]
    Corrupt {
        /// The tree holding the record.
        tree: &'static str,
        /// The record's key, printed readably (a uid, a reference, a hash prefix...).
        key: String,
        /// What was wrong with it.
        detail: String,
    },
    /// No user has this uid.
    #[error("unknown user {0}")]
    UnknownUser(Uid),
    /// No open or settled reservation has this id.
    #[error("unknown reservation {0}")]
    UnknownReservation(ReservationId),
    /// The user has fewer credits available than the operation needs.
    #[error("insufficient credits: {available} available, {needed} needed")]
    InsufficientCredits {
        /// What the user could spend.
        available: u64,
        /// What the operation asked for.
        needed: u64,
    },
    /// The reservation's reference was already settled: the entry that settled it.
    #[error("reference {:?} was already settled (ledger entry {}/{})", .0.reference, .0.uid, .0.seq)]
    AlreadySettled(Box<LedgerEntry>),
    /// An argument was rejected (empty reference, amount out of range...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The system's secure random generator failed (creating a token).
    #[error("the system random generator failed")]
    Rng,
    /// No order has this id.
    #[error("unknown order {0}")]
    UnknownOrder(String),
    /// A payment's amount is not the order's.
    #[error("amount mismatch: the order is {expected} fen, the payment {got} fen")]
    AmountMismatch {
        /// The order's amount.
        expected: i64,
        /// The payment's amount.
        got: i64,
    },
    /// The order is not in a state that allows the operation.
    #[error("order {id} is {status}")]
    OrderState {
        /// The order.
        id: String,
        /// Its status.
        status: String,
    },
    /// A backup file is malformed, truncated, fails its checksum, or cannot be restored where
    /// asked (the message names the line).
    #[error("backup: {0}")]
    Backup(String),
}

impl StoreError {
    /// Builds a [`StoreError::Corrupt`].
    pub(crate) fn corrupt(
        tree: &'static str,
        key: impl Into<String>,
        detail: impl ToString,
    ) -> Self {
        StoreError::Corrupt {
            tree,
            key: key.into(),
            detail: detail.to_string(),
        }
    }
}
