//! The ordered key-value layer under every module: named trees of byte keys and values, and
//! transactions over several trees. Two engines implement it: sled (embedded, one process)
//! and PostgreSQL (`pg.rs`: one table keyed by tree and key, shared by many daemons).
//!
//! The modules above are written once against this layer, so the money rules (a ledger entry
//! in the same transaction as every balance change, idempotency on references) hold on both
//! engines by the same code. The shapes mirror sled's: transaction closures may run more than
//! once and must not have side effects; they see only the keys they ask for.

pub(crate) mod pg;

use std::sync::Arc;

use sled::Transactional as _;
use sled::transaction::{
    ConflictableTransactionError, TransactionError as SledTxError, TransactionalTree,
    UnabortableTransactionError,
};

use crate::StoreError;
use crate::backup::Journal;

/// A key-value pair read from a tree.
pub(crate) type Pair = (Vec<u8>, Vec<u8>);

/// The database engine behind a store.
#[derive(Clone)]
pub(crate) enum Db {
    /// The embedded engine.
    Sled(sled::Db),
    /// A PostgreSQL database, shared with other daemons.
    Pg(Arc<pg::Pg>),
}

impl Db {
    /// Opens tree `name`; its writes keep their old values in `journal` while a backup runs.
    pub(crate) fn open_tree(
        &self,
        name: &'static str,
        journal: &Arc<Journal>,
    ) -> Result<Tree, StoreError> {
        Ok(Tree {
            name,
            imp: match self {
                Db::Sled(db) => TreeImp::Sled(db.open_tree(name)?),
                Db::Pg(pg) => TreeImp::Pg(pg.clone()),
            },
            journal: journal.clone(),
        })
    }

    /// A uid for a new user drawn from the engine (PostgreSQL's sequence: unique and
    /// increasing, with gaps where a draw went unused); `None`: the store keeps its own
    /// dense counter (sled).
    pub(crate) fn new_uid(&self) -> Result<Option<u64>, StoreError> {
        match self {
            Db::Sled(_) => Ok(None),
            Db::Pg(pg) => pg.next_uid().map(Some),
        }
    }

    /// A new id, unique across the database's life (and across daemons on PostgreSQL).
    pub(crate) fn generate_id(&self) -> Result<u64, StoreError> {
        match self {
            Db::Sled(db) => Ok(db.generate_id()?),
            Db::Pg(pg) => pg.next_id(),
        }
    }
}

/// One named tree.
pub(crate) struct Tree {
    name: &'static str,
    imp: TreeImp,
    /// Where a write on sled first keeps the value it replaces while a backup runs (the
    /// backup's snapshot is the live tree with these old values put back).
    journal: Arc<Journal>,
}

enum TreeImp {
    Sled(sled::Tree),
    Pg(Arc<pg::Pg>),
}

/// What [`Tree::compare_and_swap`] found instead of the expected value.
pub(crate) struct CasFailure {
    /// The value the key holds.
    pub current: Option<Vec<u8>>,
}

impl Tree {
    /// The sled tree, when the engine is sled (backups, which are sled's only).
    pub(crate) fn sled(&self) -> Option<&sled::Tree> {
        match &self.imp {
            TreeImp::Sled(t) => Some(t),
            TreeImp::Pg(_) => None,
        }
    }

    /// The value at `key`.
    pub(crate) fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.imp {
            TreeImp::Sled(t) => Ok(t.get(key)?.map(|v| v.to_vec())),
            TreeImp::Pg(pg) => pg.get(self.name, key.as_ref()),
        }
    }

    /// Sets `key` to `value`.
    pub(crate) fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<(), StoreError> {
        match &self.imp {
            TreeImp::Sled(t) => {
                self.journal
                    .before_write(self.name, key.as_ref(), || sled_get(t, key.as_ref()))?;
                t.insert(key.as_ref(), value.as_ref()).map(|_| ())?;
            }
            TreeImp::Pg(pg) => pg.put(self.name, key.as_ref(), value.as_ref())?,
        }
        Ok(())
    }

    /// Removes `key`; returns what it held.
    pub(crate) fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.imp {
            TreeImp::Sled(t) => {
                self.journal
                    .before_write(self.name, key.as_ref(), || sled_get(t, key.as_ref()))?;
                Ok(t.remove(key)?.map(|v| v.to_vec()))
            }
            TreeImp::Pg(pg) => pg.delete(self.name, key.as_ref()),
        }
    }

    /// Sets `key` to `new` (or removes it, for `None`) only if it holds `old` (`None`: absent).
    pub(crate) fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Result<(), CasFailure>, StoreError> {
        let key = key.as_ref();
        match &self.imp {
            TreeImp::Sled(t) => {
                self.journal
                    .before_write(self.name, key, || sled_get(t, key))?;
                Ok(t.compare_and_swap(key, old, new)?.map_err(|e| CasFailure {
                    current: e.current.map(|v| v.to_vec()),
                }))
            }
            TreeImp::Pg(pg) => pg
                .transaction(|tx| {
                    let current = tx.get(self.name, key)?;
                    if current.as_deref() != old {
                        return Ok(Err(CasFailure { current }));
                    }
                    match new {
                        Some(v) => tx.insert(self.name, key, v),
                        None => {
                            tx.remove(self.name, key)?;
                        }
                    }
                    Ok(Ok(()))
                })
                .map_err(flatten),
        }
    }

    /// How many keys the tree holds.
    pub(crate) fn len(&self) -> Result<usize, StoreError> {
        match &self.imp {
            TreeImp::Sled(t) => Ok(t.len()),
            TreeImp::Pg(pg) => pg.count(self.name),
        }
    }

    /// Every pair, in key order.
    pub(crate) fn iter(&self) -> KvIter {
        self.range_iter(Vec::new(), None)
    }

    /// The pairs whose key starts with `prefix`, in key order.
    pub(crate) fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> KvIter {
        let prefix = prefix.as_ref().to_vec();
        let end = prefix_end(&prefix);
        self.range_iter(prefix, end)
    }

    /// The last `limit` pairs whose key starts with `prefix`, last first.
    pub(crate) fn scan_prefix_rev(
        &self,
        prefix: impl AsRef<[u8]>,
        limit: usize,
    ) -> Result<Vec<Pair>, StoreError> {
        let prefix = prefix.as_ref();
        match &self.imp {
            TreeImp::Sled(t) => t
                .scan_prefix(prefix)
                .rev()
                .take(limit)
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into))
                .collect(),
            TreeImp::Pg(pg) => {
                pg.last_in_range(self.name, prefix, prefix_end(prefix).as_deref(), limit)
            }
        }
    }

    /// The last `limit` pairs with `start <= key < end`, last first (a page of a newest-first
    /// listing whose keys end in a time).
    pub(crate) fn range_rev(
        &self,
        start: impl AsRef<[u8]>,
        end: impl AsRef<[u8]>,
        limit: usize,
    ) -> Result<Vec<Pair>, StoreError> {
        let (start, end) = (start.as_ref(), end.as_ref());
        match &self.imp {
            TreeImp::Sled(t) => t
                .range(start..end)
                .rev()
                .take(limit)
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into))
                .collect(),
            TreeImp::Pg(pg) => pg.last_in_range(self.name, start, Some(end), limit),
        }
    }

    /// The pairs with `start <= key < end`, in key order.
    pub(crate) fn range(&self, start: impl AsRef<[u8]>, end: impl AsRef<[u8]>) -> KvIter {
        self.range_iter(start.as_ref().to_vec(), Some(end.as_ref().to_vec()))
    }

    /// The pairs with `start <= key`, in key order.
    pub(crate) fn range_from(&self, start: impl AsRef<[u8]>) -> KvIter {
        self.range_iter(start.as_ref().to_vec(), None)
    }

    fn range_iter(&self, start: Vec<u8>, end: Option<Vec<u8>>) -> KvIter {
        match &self.imp {
            TreeImp::Sled(t) => {
                let inner = match end {
                    Some(end) => t.range(start..end),
                    None => t.range(start..),
                };
                KvIter::Sled(inner)
            }
            TreeImp::Pg(pg) => KvIter::Pg(pg::PageIter::new(pg.clone(), self.name, start, end)),
        }
    }
}

/// The value at `key` of a sled tree, owned.
fn sled_get(t: &sled::Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(t.get(key)?.map(|v| v.to_vec()))
}

/// The smallest key greater than every key starting with `prefix` (`None`: no such key).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// An iterator over pairs: sled's, or pages fetched from PostgreSQL as it goes.
pub(crate) enum KvIter {
    /// sled's own.
    Sled(sled::Iter),
    /// Pages of a PostgreSQL range.
    Pg(pg::PageIter),
}

impl Iterator for KvIter {
    type Item = Result<Pair, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            KvIter::Sled(it) => it
                .next()
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into)),
            KvIter::Pg(it) => it.next(),
        }
    }
}

/// Why a transaction closure stopped.
#[derive(Debug)]
pub(crate) enum TxError {
    /// The closure gave up with this error: roll back and return it.
    Abort(StoreError),
    /// Another transaction got in the way: roll back and run the closure again.
    Conflict,
    /// The engine failed.
    Storage(StoreError),
}

/// The result type of a transaction closure.
pub(crate) type TxResult<T> = Result<T, TxError>;

/// How a transaction ended when it did not commit.
#[derive(Debug)]
pub(crate) enum TransactionError {
    /// The closure aborted with this error.
    Abort(StoreError),
    /// The engine failed.
    Storage(StoreError),
}

/// One tree as a transaction sees it.
pub(crate) enum TxTree<'a> {
    /// Inside a sled transaction.
    Sled {
        /// The transaction's view of the tree.
        tree: &'a TransactionalTree,
        /// The tree's name.
        name: &'static str,
        /// Where old values go while a backup runs.
        journal: &'a Journal,
    },
    /// Inside a PostgreSQL transaction.
    Pg {
        /// The tree's name (its rows' `tree` column).
        name: &'static str,
        /// The transaction.
        tx: &'a pg::PgTx<'a>,
    },
}

fn from_sled(e: UnabortableTransactionError) -> TxError {
    match e {
        UnabortableTransactionError::Conflict => TxError::Conflict,
        UnabortableTransactionError::Storage(e) => TxError::Storage(StoreError::Sled(e)),
    }
}

impl TxTree<'_> {
    /// The value at `key`, as this transaction sees it.
    pub(crate) fn get(&self, key: impl AsRef<[u8]>) -> TxResult<Option<Vec<u8>>> {
        match self {
            TxTree::Sled { tree, .. } => tree
                .get(key)
                .map(|v| v.map(|v| v.to_vec()))
                .map_err(from_sled),
            TxTree::Pg { name, tx } => tx.get(name, key.as_ref()),
        }
    }

    /// Sets `key` to `value` when the transaction commits.
    pub(crate) fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> TxResult<()> {
        match self {
            TxTree::Sled {
                tree,
                name,
                journal,
            } => {
                // The transaction holds sled's global transaction lock: `tree.get` reads the
                // committed value (or this transaction's own write, already journalled).
                journal.before_write(name, key.as_ref(), || self.get(key.as_ref()))?;
                tree.insert(key.as_ref(), value.as_ref())
                    .map(|_| ())
                    .map_err(from_sled)
            }
            TxTree::Pg { name, tx } => {
                tx.insert(name, key.as_ref(), value.as_ref());
                Ok(())
            }
        }
    }

    /// Removes `key` when the transaction commits; returns what it held.
    pub(crate) fn remove(&self, key: impl AsRef<[u8]>) -> TxResult<Option<Vec<u8>>> {
        match self {
            TxTree::Sled {
                tree,
                name,
                journal,
            } => {
                journal.before_write(name, key.as_ref(), || self.get(key.as_ref()))?;
                tree.remove(key.as_ref())
                    .map(|v| v.map(|v| v.to_vec()))
                    .map_err(from_sled)
            }
            TxTree::Pg { name, tx } => tx.remove(name, key.as_ref()),
        }
    }
}

fn to_sled<T>(r: TxResult<T>) -> Result<T, ConflictableTransactionError<StoreError>> {
    r.map_err(|e| match e {
        TxError::Abort(e) => ConflictableTransactionError::Abort(e),
        TxError::Conflict => ConflictableTransactionError::Conflict,
        TxError::Storage(StoreError::Sled(e)) => ConflictableTransactionError::Storage(e),
        TxError::Storage(e) => ConflictableTransactionError::Abort(e),
    })
}

fn from_sled_outcome<T>(r: Result<T, SledTxError<StoreError>>) -> Result<T, TransactionError> {
    r.map_err(|e| match e {
        SledTxError::Abort(e) => TransactionError::Abort(e),
        SledTxError::Storage(e) => TransactionError::Storage(StoreError::Sled(e)),
    })
}

/// A set of trees a transaction can span: one tree, or a tuple of them.
pub(crate) trait Transactional {
    /// What the closure sees: one [`TxTree`] per tree, in the same shape.
    type View<'a>;

    /// Runs `f` atomically over the trees, again on conflicts, until it commits or aborts.
    fn transaction<R>(
        &self,
        body: impl Fn(&Self::View<'_>) -> TxResult<R>,
    ) -> Result<R, TransactionError>;
}

/// The PostgreSQL handle shared by every tree of a transaction; a mix of engines is a bug.
fn same_pg<'t>(trees: &[&'t Tree]) -> Result<&'t Arc<pg::Pg>, TransactionError> {
    let mixed = || {
        TransactionError::Storage(StoreError::InvalidInput(
            "a transaction mixes storage engines".into(),
        ))
    };
    let mut found = None;
    for t in trees {
        match &t.imp {
            TreeImp::Pg(pg) => found = Some(pg),
            TreeImp::Sled(_) => return Err(mixed()),
        }
    }
    found.ok_or_else(mixed)
}

/// Flattens a transaction's failure into the store's error type.
pub(crate) fn flatten(e: TransactionError) -> StoreError {
    match e {
        TransactionError::Abort(e) | TransactionError::Storage(e) => e,
    }
}

impl Transactional for Tree {
    type View<'a> = TxTree<'a>;

    fn transaction<R>(
        &self,
        body: impl Fn(&Self::View<'_>) -> TxResult<R>,
    ) -> Result<R, TransactionError> {
        match &self.imp {
            TreeImp::Sled(t) => from_sled_outcome(t.transaction(|a| {
                to_sled(body(&TxTree::Sled {
                    tree: a,
                    name: self.name,
                    journal: &self.journal,
                }))
            })),
            TreeImp::Pg(pg) => pg.transaction(|tx| {
                body(&TxTree::Pg {
                    name: self.name,
                    tx,
                })
            }),
        }
    }
}

macro_rules! tuple_transactional {
    ($($t:ident $n:tt),+) => {
        impl Transactional for ($(tuple_transactional!(@tree $t),)+) {
            type View<'a> = ($(tuple_transactional!(@view $t),)+);

            fn transaction<R>(
                &self,
                body: impl Fn(&Self::View<'_>) -> TxResult<R>,
            ) -> Result<R, TransactionError> {
                if let ($(Some($t),)+) = ($(self.$n.sled(),)+) {
                    return from_sled_outcome(($($t,)+).transaction(|($($t,)+)| {
                        to_sled(body(&($(TxTree::Sled {
                            tree: $t,
                            name: self.$n.name,
                            journal: &self.$n.journal,
                        },)+)))
                    }));
                }
                let pg = same_pg(&[$(self.$n),+])?;
                pg.transaction(|tx| body(&($(TxTree::Pg { name: self.$n.name, tx },)+)))
            }
        }
    };
    (@view $t:ident) => { TxTree<'a> };
    (@tree $t:ident) => { &Tree };
}

tuple_transactional!(a 0, b 1);
tuple_transactional!(a 0, b 1, c 2);
tuple_transactional!(a 0, b 1, c 2, d 3);
tuple_transactional!(a 0, b 1, c 2, d 3, e 4);
tuple_transactional!(a 0, b 1, c 2, d 3, e 4, f 5);
tuple_transactional!(a 0, b 1, c 2, d 3, e 4, f 5, g 6);

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
