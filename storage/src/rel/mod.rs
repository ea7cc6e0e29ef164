//! PostgreSQL with real tables: the relational store (issue 21, item 4).
//!
//! The daemon's store on PostgreSQL: `Store` (`facade/`) dispatches every operation here
//! when `[storage] backend = "postgres"` (async on tokio-postgres with a pool; nothing
//! blocks a worker). The one-table key-value layout (`kv/pg.rs`, table `chatrelay_kv`) is
//! only read any more, by the migration.
//! - **Migration**: done (`migrate.rs`, `layout.rs`). `migrate_postgres_in_place` (`chatrelay
//!   migrate`) copies the one-table schema into these tables, compares the census, and only
//!   then drops `chatrelay_kv` (one transaction with the finished mark);
//!   `copy_into_relational` (`chatrelay migrate-data --from sled:DIR`) the same from sled.
//!   [`RelStore::open_checked`] is the opening a daemon must use: it looks before creating
//!   anything and refuses the one-table layout, an interrupted import, both layouts with
//!   data, a newer schema ([`StoreError::NeedsMigration`], `SchemaTooNew`). The import's
//!   `setval` of the identity sequences is in `import.rs` (`finish_import`).
//! - **The shared store test suite**: the tests in `tests/` are sled's cases ported one by
//!   one (same values, same answers); the next session runs one suite against both engines.
//! - Here since session 10 (issue 21): the admin paths (`admin.rs`: ban, groups, finding
//!   users by name, identity or token, linking and unlinking identities, user counts,
//!   creation times, activity, ledger pages, the audit in one statement), the orders listing
//!   (`orders`, `set_order_code_url`), the outbox and kept answers (`outbox.rs`), checkpoints
//!   and counters (`checkpoints.rs`: `stats:` counts live in `stats`, other keys in
//!   `checkpoints`, a key never in both; reads see both) and the web conversations
//!   (`chats.rs`, with `import_chats_from`, which the migration runs after `import_from`).
//!   `KvStore::purge_expired_dedupe` is `purge_expired_marks` (bounded per call as on sled);
//!   `try_lead` (`lead.rs`) holds a session advisory lock on a connection of its own, with
//!   the key-value layer's key, so daemons on either layer exclude each other.
//! - Also since session 10: redemption codes (`codes.rs`), membership plans
//!   (`plans.rs`, the plan columns of `balances` and `orders`), the usage log (`usage.rs`:
//!   `settle_metered` writes the usage row with the settlement, `refund_answer`) and the
//!   change log (`admin_log.rs`), with their import.
//! - Not yet here: `record_counts` / `copy_into` (the census replaces them). The
//!   conversation turns of sled's `settle_metered` are `append_turns`, a second statement.
//!
//! # Tables (`schema/0001_tables.sql`, version in `meta.schema_version`)
//! `users`, `identities` (primary key `(platform, account, user_id)`: the platform's user id
//! is `user_id`, `user` being reserved in SQL), `balances` (one row per user, made with it:
//! `paid`, `held`, the free allowance's `free_day` and `free_used`, `next_seq`), `ledger`
//! (`uid`, `seq`, `at_ms`, `kind`, `free_delta`, `paid_delta`, `delta` = their sum,
//! `paid_after`, `reason`, `reference` UNIQUE), `reservations` (open or settled, `charged`),
//! `orders` (`id`, `uid`, `product`, `product_name`, `channel`, `method`, `amount_fen`,
//! `credits`, `status`, `*_at_ms`, `code_url`, `provider_trade_no`, `open_slot`),
//! `order_events`, `tokens` (SHA-256 only), `login_codes`, `conversations` + `turns`,
//! `dedupe`, `answers`, `handoffs`, `outbox`, `checkpoints`, `stats`, `meta`; version 2
//! (`schema/0002_codes_plans_usage.sql`): `code_batches` (the grant as columns: credits, or
//! a plan's id, name, days, daily credits, timezone), `codes` (`(batch, n)`, `hash` the
//! SHA-256 of the code UNIQUE, `status` unused/used/revoked with `uid` and `at_ms`), the plan
//! columns of `balances` (`plan_id`, `plan_name`, `plan_daily_credits`, `plan_start_day`,
//! `plan_end_day`: all or none) and of `orders`, `usage` (keyed `(uid, at_ms, id)`: `free`,
//! `plan`, `paid`, `refunded`, `ledger_seq`, `outcome`), `admin_changes` (keyed `(at_ms, id)`,
//! `summary` jsonb).; version 3
//! (`schema/0003_admin_chats.sql`) adds `chats` (`uid`, `id`, `title`, `updated_at_ms` = its
//! version, `message_count`, `bytes`, `messages` a JSON array) and indexes for users by
//! creation time and for checkpoint and statistics prefixes. They can share
//! a schema with `chatrelay_kv` (no name in common), so a migration can run in place.
//!
//! # What the database enforces
//! Uniqueness: one user per identity, one ledger entry per reference, one reservation per
//! reference, one waiting order per user and slot, one login code per user and per code,
//! one code per hash, one usage row per `(uid, at_ms, reservation)`.
//! Ranges: `paid`, `held`, `free_used`, `paid_after`, amounts, fen and credits never
//! negative, `free_delta` never positive; `kind`, reservation and order `status` only their
//! valid values; an order's times agree with its status (a refunded order was credited,
//! only a waiting one holds a slot); a login code is 8 symbols of its alphabet; a token hash
//! 32 bytes, a code's hash too; a used code names its user, an unused one no time; a
//! batch's grant is credits (positive) or a whole plan; a plan all five columns or none; a
//! web conversation's id of its characters, its title's length, its messages an array.
//! Foreign keys from every per-user table to `users`. Transitions: each UPDATE names
//! the status it leaves (`WHERE status IN ('created', 'closed')` to credit, `= 'credited'` to
//! refund, `= 'open'` to settle or release), so a transition happens once however many
//! callers race; the losers find the row changed and report what it is now.
//!
//! # How operations map to statements (READ COMMITTED, autocommit)
//! Each money step is one statement (data-modifying CTEs), atomic by itself:
//! - `resolve_identity`: find the identity; if missing, insert user, balance and identity.
//!   Of two racing first contacts one hits the primary key; its statement rolls back whole
//!   (no orphan user) and runs again, finding the other's.
//! - `reserve`: lock the balance row (`FOR UPDATE`, which reads the newest committed values),
//!   insert the reservation only if `free_left + paid - held >= amount` (`ON CONFLICT
//!   (reference) DO NOTHING`; `free_left`: the day's allowance and an active plan's daily
//!   credits, less what the day spent), raise `held` only if the insert happened. Concurrent reserves
//!   of one user queue on the row lock: never overdrawn.
//! - `settle`: lock the open reservation and its balance, charge `min(actual, free_left +
//!   paid)`, free credits first, write the usage entry, mark the reservation settled. A racing
//!   settle waits for the lock, finds it settled, and reads the entry (a second statement).
//!   `release` / `release_stale_reservations`: delete open reservations, lower `held`.
//! - `grant` / `debit`: `UPDATE balances ... WHERE NOT EXISTS (entry with this reference)
//!   AND paid + delta >= held`, then the entry. A racing twin collides on the unique
//!   reference, rolls back whole, and on its second run returns the first's entry.
//! - `credit_order`: `UPDATE orders SET status = 'credited' WHERE status IN ('created',
//!   'closed') AND amount_fen = $paid`, the balance (with a plan order's plan granted or
//!   extended) and the purchase entry. `close_order`: one
//!   UPDATE. `create_order` and `refund_order` (rare): one short transaction each.
//! - `redeem_code`: one short transaction: the code row locked (`FOR UPDATE`; racing
//!   redeemers wait, then find it used), the balance row locked, then one statement marks
//!   the code used, changes the balance (and plan) and writes the entry `code:<batch>-<n>`
//!   (UNIQUE). `create_code_batch` (batch and codes), `revoke_code_batch`: one statement.
//! - `settle_metered`: `settle`, with the plan's daily credits, and the usage row, in one
//!   statement; `refund_answer`: the refund entry and the usage row marked, one statement.
//! - `dedupe_insert` / `dedupe_bind`: `INSERT ... ON CONFLICT DO UPDATE ... WHERE the mark
//!   expired` (or is bound to the same value); handoffs, tokens, login codes, conversation
//!   appends, checkpoints, counters, admin changes: one statement each.
//! - `outbox_push` and `put_chat` keep a per-key bound (20 texts; the user's chat count), so
//!   each is a short transaction: a transaction-scoped advisory lock on the key, then one
//!   statement whose snapshot, taken after the lock, sees every earlier push or save.
//!
//! Round trips per chat message: resolve (1) + dedupe (1) + reserve (1) + settle (1) = 4,
//! with the conversation append 5 (`tests::money::a_returning_users_message_is_four_round_
//! trips` counts them); with `admit` (the mark and the sender in one statement, as sled's
//! step) 3, and 4 with the append (`tests::misc::admit_...` counts its one). Unique violations and deadlocks re-run the statement (at most
//! [`MAX_ATTEMPTS`] times, jittered backoff); nothing holds a lock across a round trip of
//! the caller's.
//!
//! # For operators (README, "Several daemons on one PostgreSQL", runs these in its e2e test)
//! ```sql
//! -- revenue per day (credited orders, yuan)
//! SELECT to_timestamp(credited_at_ms / 1000)::date AS day, sum(amount_fen) / 100.0 AS yuan
//! FROM orders WHERE status = 'credited' GROUP BY 1 ORDER BY 1;
//! -- a user's ledger
//! SELECT seq, to_timestamp(at_ms / 1000.0), kind, delta, paid_after, reason, reference
//! FROM ledger WHERE uid = 42 ORDER BY seq DESC LIMIT 50;
//! -- top users this week by credits spent
//! SELECT uid, -sum(delta) AS spent FROM ledger
//! WHERE kind = 'usage' AND at_ms > (extract(epoch FROM now() - interval '7 days') * 1000)
//! GROUP BY uid ORDER BY spent DESC LIMIT 20;
//! ```

mod admin;
mod admin_log;
mod auth;
mod census;
mod chats;
mod checkpoints;
mod codes;
mod conversations;
mod import;
mod layout;
mod lead;
pub(crate) use lead::RelLeadership;
mod marks;
mod migrate;
mod money;
mod orders;
mod outbox;
mod plans;
mod pool;
mod reads;
mod schema;
mod usage;
mod users;

#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql, Type};

use crate::kv::pg::{backoff, error_text};
use crate::{StoreError, Uid};

pub use migrate::{InPlaceReport, RelCopyReport, copy_into_relational, migrate_postgres_in_place};

/// Runs of one statement that keeps conflicting, before giving up.
pub(crate) const MAX_ATTEMPTS: u32 = 50;

/// Statement parameters with their types (sent with the statement: no prepare round trip).
pub(crate) type Params<'a> = [(&'a (dyn ToSql + Sync), Type)];

/// The relational store: a pool of connections to one schema.
/// Statements sent by every relational store of the process.
static STATEMENTS: AtomicU64 = AtomicU64::new(0);

/// How many statements (round trips to PostgreSQL) the relational store has sent since the
/// process started, over every pool: `/metrics` reports it, and the benchmarks divide it by
/// the messages answered. Statements inside a transaction (orders) are not counted.
#[must_use]
pub fn statement_count() -> u64 {
    STATEMENTS.load(Ordering::Relaxed)
}

#[derive(Clone)]
pub(crate) struct RelStore {
    pool: Arc<pool::Pool>,
    /// Statements sent (each one round trip), for tests and metrics.
    statements: Arc<AtomicU64>,
}

impl RelStore {
    /// Connects to the schema of `opts` and applies pending migrations (creating it), without
    /// the layout check daemons make ([`RelStore::open_checked`]): for tests.
    #[cfg(test)]
    pub(crate) async fn open(opts: &crate::PgOptions) -> Result<RelStore, StoreError> {
        let pool = pool::Pool::new(opts)?;
        schema::migrate(&pool).await?;
        Ok(RelStore::from_pool(pool))
    }

    /// A store on a pool whose schema is migrated.
    fn from_pool(pool: Arc<pool::Pool>) -> RelStore {
        RelStore {
            pool,
            statements: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Applies pending migrations and says what it did (tests).
    #[cfg(test)]
    pub(crate) async fn migrate(opts: &crate::PgOptions) -> Result<schema::Migrated, StoreError> {
        let pool = pool::Pool::new(opts)?;
        schema::migrate(&pool).await
    }

    /// How many single statements (round trips) this store has sent; transactions
    /// (`create_order`, `refund_order`) are not counted.
    #[cfg(test)]
    pub(crate) fn statements_sent(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Counts a statement sent, here and process-wide ([`statement_count`]).
    /// Traced (`RUST_LOG=chatrelay_storage::sql=trace`) with the statement's first words, to
    /// see which statements a request costs.
    fn count_statement(&self, sql: &str) {
        self.statements.fetch_add(1, Ordering::Relaxed);
        STATEMENTS.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(target: "chatrelay_storage::sql", statement = %sql.split_whitespace().take(12).collect::<Vec<_>>().join(" "));
    }

    /// Runs one statement. `Ok(None)`: it conflicted (a unique key taken meanwhile, a
    /// deadlock) and rolled back whole; run it again.
    async fn run(&self, sql: &str, params: &Params<'_>) -> Result<Option<Vec<Row>>, StoreError> {
        let conn = self.pool.get().await?;
        self.count_statement(sql);
        match conn.query_typed(sql, params).await {
            Ok(rows) => Ok(Some(rows)),
            Err(e) => match db_err(e) {
                Retry::Again(e) => {
                    tracing::trace!(error = %e, "statement conflicted; running it again");
                    Ok(None)
                }
                Retry::Fail(e) => Err(e),
            },
        }
    }

    /// Runs one statement that cannot conflict (reads, single-row writes without unique
    /// races that matter): a conflict is an error.
    async fn rows(&self, sql: &str, params: &Params<'_>) -> Result<Vec<Row>, StoreError> {
        let conn = self.pool.get().await?;
        self.count_statement(sql);
        conn.query_typed(sql, params)
            .await
            .map_err(|e| match db_err(e) {
                Retry::Again(e) | Retry::Fail(e) => e,
            })
    }
}

/// Whether a failed statement may succeed when run again.
pub(crate) enum Retry {
    /// A conflict with a concurrent statement; the statement rolled back whole.
    Again(StoreError),
    /// Anything else.
    Fail(StoreError),
}

/// Sorts a driver error: conflicts may be run again, a number out of range is the caller's.
pub(crate) fn db_err(e: tokio_postgres::Error) -> Retry {
    let text = error_text(&e);
    match e.code() {
        Some(c)
            if *c == SqlState::UNIQUE_VIOLATION
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::T_R_SERIALIZATION_FAILURE =>
        {
            Retry::Again(StoreError::Backend(text))
        }
        Some(c) if *c == SqlState::NUMERIC_VALUE_OUT_OF_RANGE => Retry::Fail(
            StoreError::InvalidInput(format!("amount out of range: {text}")),
        ),
        _ => Retry::Fail(StoreError::Backend(text)),
    }
}

/// Counts the runs of a statement and sleeps a little between them.
pub(crate) struct Attempts(u32);

impl Attempts {
    pub(crate) fn new() -> Self {
        Attempts(0)
    }

    /// Before each run: the first goes at once, later ones after a backoff; an error after
    /// [`MAX_ATTEMPTS`].
    pub(crate) async fn next(&mut self) -> Result<(), StoreError> {
        if self.0 >= MAX_ATTEMPTS {
            return Err(StoreError::Backend(format!(
                "a statement conflicted {MAX_ATTEMPTS} times in a row; giving up"
            )));
        }
        if self.0 > 0 {
            tokio::time::sleep(backoff(self.0)).await;
        }
        self.0 += 1;
        Ok(())
    }
}

/// Column `name` of `row`.
pub(crate) fn col<'a, T: FromSql<'a>>(row: &'a Row, name: &str) -> Result<T, StoreError> {
    row.try_get(name)
        .map_err(|e| StoreError::Backend(format!("column {name}: {e}")))
}

/// The only row of a statement that always returns one.
pub(crate) fn one(rows: &[Row]) -> Result<&Row, StoreError> {
    rows.first()
        .ok_or_else(|| StoreError::Backend("a statement returned no row".into()))
}

/// A credit amount as the database's bigint.
pub(crate) fn amount(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::InvalidInput(format!("amount {n} is too large")))
}

/// A stored bigint that must not be negative, as credits.
pub(crate) fn credits(
    n: i64,
    table: &'static str,
    key: impl Fn() -> String,
) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::corrupt(table, key(), format!("negative: {n}")))
}

/// A uid as the database's bigint; one beyond it cannot exist.
pub(crate) fn uid_param(uid: Uid) -> Result<i64, StoreError> {
    i64::try_from(uid.0).map_err(|_| StoreError::UnknownUser(uid))
}

/// A stored uid.
pub(crate) fn uid_of(row: &Row, name: &str) -> Result<Uid, StoreError> {
    let raw: i64 = col(row, name)?;
    u64::try_from(raw)
        .map(Uid)
        .map_err(|_| StoreError::Backend(format!("column {name}: negative uid {raw}")))
}
