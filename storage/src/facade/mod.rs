//! The store's domain interface: [`Store`], what the daemon calls for every durable fact.
//!
//! One type over two engines: the embedded key-value store ([`KvStore`]: sled, or the older
//! one-table PostgreSQL layout kept for migrations) and the relational PostgreSQL store
//! (`rel/`: real tables, async on tokio-postgres with a pool). Every method is async; on the
//! key-value engine the work runs as it always has (sled calls are short, and the money steps
//! of a message run on its write lane through [`Store::kv`]), on the relational one each is a
//! statement or two awaited on the pool, never blocking a worker.
//!
//! Most methods are one operation with the same meaning on both engines (the money rules: a
//! ledger entry with every balance change, idempotent on its reference, hold by construction
//! in each); their documentation is on [`KvStore`]'s method of the same name, and the
//! one suite in `tests/` runs every case on each engine.

mod infra;
mod lane;
mod ops;
mod reads;
mod scans;

use crate::KvStore;
use crate::rel::RelStore;

/// The store. Cheap to clone: clones share one open database (or one connection pool).
#[derive(Clone)]
pub struct Store {
    engine: Engine,
}

#[derive(Clone)]
enum Engine {
    Kv(KvStore),
    Rel(RelStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.engine {
            Engine::Kv(kv) => kv.fmt(f),
            Engine::Rel(_) => f.write_str("Store(relational)"),
        }
    }
}

impl From<KvStore> for Store {
    fn from(kv: KvStore) -> Store {
        Store {
            engine: Engine::Kv(kv),
        }
    }
}

/// Delegates each listed method to the engine's method of the same name and arguments.
macro_rules! both {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)* $(,)?) -> $ret:ty; )*) => {
        impl Store {
            $(
                #[doc = concat!("See [`KvStore::", stringify!($name), "`] (the same on both engines).")]
                #[allow(clippy::too_many_arguments)]
                pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match &self.engine {
                        Engine::Kv(s) => s.$name($($arg),*),
                        Engine::Rel(r) => r.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}
pub(crate) use both;

#[cfg(test)]
pub(crate) mod tests;
