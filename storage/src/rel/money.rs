//! Credits on PostgreSQL: balances, reservations and the ledger, each step one statement.
//!
//! The same rules as the sled side (`quota.rs`): the free allowance is spent first and
//! resets lazily by day; a reservation holds credits until settled or released; every
//! change of a balance writes one ledger entry with a unique reference, in the statement
//! that changes the balance. See the module docs of `rel` for how each statement stays
//! correct under concurrency.

use tokio_postgres::Row;
use tokio_postgres::types::Type;

use super::plans::{PLAN_COLS, plan_from};
use super::{Attempts, RelStore, amount, col, credits, one, uid_of, uid_param};
use crate::codec::check_key;
use crate::{Balance, EntryKind, LedgerEntry, ReservationId, StoreError, Uid};

/// The columns of a ledger entry, in [`entry_from`]'s names.
pub(crate) const ENTRY_COLS: &str =
    "uid, seq, at_ms, kind, free_delta, paid_delta, paid_after, reason, reference";

/// The membership plan's daily credits of balance row `b` on day `$today` (numeric; 0
/// without a plan active that day), as `ActivePlan::daily_on`.
macro_rules! plan_daily {
    ($b:literal, $today:literal) => {
        concat!(
            "(CASE WHEN ",
            $b,
            ".plan_id IS NOT NULL AND ",
            $b,
            ".plan_start_day <= ",
            $today,
            " AND ",
            $today,
            " < ",
            $b,
            ".plan_end_day THEN ",
            $b,
            ".plan_daily_credits::numeric ELSE 0 END)"
        )
    };
}
pub(crate) use plan_daily;

/// What is left of the free allowance of balance row `b` on day `$today` with a daily
/// allowance of `$free` and the plan's daily credits (numeric: no overflow), as in
/// `BalanceRecord::free_left`.
macro_rules! free_left {
    ($b:literal, $today:literal, $free:literal) => {
        concat!(
            "(CASE WHEN ",
            $today,
            " > ",
            $b,
            ".free_day THEN ",
            $free,
            "::numeric + ",
            plan_daily!($b, $today),
            " ELSE GREATEST(",
            $free,
            "::numeric + ",
            plan_daily!($b, $today),
            " - ",
            $b,
            ".free_used, 0) END)"
        )
    };
}

/// $1 uid, $2 amount, $3 reference, $4 today, $5 free daily, $6 expiry.
const RESERVE: &str = concat!(
    "WITH prior AS (SELECT id, status, charged FROM reservations WHERE reference = $3),
     done AS (SELECT uid, seq, at_ms, kind, free_delta, paid_delta, paid_after, reason, reference
              FROM ledger WHERE reference = $3),
     bal AS (
         SELECT b.uid, GREATEST(",
    free_left!("b", "$4", "$5"),
    " + b.paid - b.held, 0) AS available
         FROM balances b
         WHERE b.uid = $1 AND NOT EXISTS (SELECT 1 FROM prior) AND NOT EXISTS (SELECT 1 FROM done)
         FOR UPDATE),
     ins AS (
         INSERT INTO reservations (uid, amount, reference, expires_at_ms)
         SELECT uid, $2, $3, $6 FROM bal WHERE available >= $2
         ON CONFLICT (reference) DO NOTHING
         RETURNING id),
     hold AS (UPDATE balances SET held = held + $2 FROM ins WHERE balances.uid = $1)
     SELECT (SELECT id FROM ins) AS new_id,
            (SELECT id FROM prior) AS prior_id,
            (SELECT status FROM prior) AS prior_status,
            (SELECT charged FROM prior) AS prior_charged,
            (SELECT LEAST(available, 9223372036854775807)::bigint FROM bal) AS available,
            EXISTS (SELECT 1 FROM users WHERE uid = $1) AS user_exists,
            done.*
     FROM (SELECT 1) AS one LEFT JOIN done ON true"
);

/// $1 id: a reservation as it is now, with its entry if it charged one.
const SETTLED: &str = "SELECT r.status, r.charged, l.uid, l.seq, l.at_ms, l.kind, l.free_delta,
            l.paid_delta, l.paid_after, l.reason, l.reference
     FROM reservations r LEFT JOIN ledger l ON l.reference = r.reference AND r.charged
     WHERE r.id = $1";

/// $1 uid, $2 signed delta, $3 kind, $4 reason, $5 reference, $6 at.
const CHANGE_PAID: &str = "WITH prior AS (
         SELECT uid, seq, at_ms, kind, free_delta, paid_delta, paid_after, reason, reference
         FROM ledger WHERE reference = $5),
     b AS (
         UPDATE balances SET paid = paid + $2, next_seq = next_seq + 1
         WHERE uid = $1 AND NOT EXISTS (SELECT 1 FROM prior)
           AND ($2 > 0 OR paid + $2 >= held)
           AND paid::numeric + $2 <= 9223372036854775807
         RETURNING uid, paid, next_seq - 1 AS seq),
     ent AS (
         INSERT INTO ledger (uid, seq, at_ms, kind, free_delta, paid_delta, paid_after, reason,
                             reference)
         SELECT uid, seq, $6, $3, 0, $2, paid, $4, $5 FROM b
         RETURNING uid, seq, at_ms, kind, free_delta, paid_delta, paid_after, reason, reference),
     cur AS (SELECT paid, held FROM balances WHERE uid = $1)
     SELECT EXISTS (SELECT 1 FROM users WHERE uid = $1) AS user_exists,
            (SELECT paid FROM cur) AS cur_paid, (SELECT held FROM cur) AS cur_held, e.*
     FROM (SELECT 1) AS one
     LEFT JOIN (SELECT * FROM ent UNION ALL SELECT * FROM prior) AS e ON true";

impl RelStore {
    /// The user's credits on day `today` with a daily allowance of `free_daily`.
    pub(crate) async fn balance(
        &self,
        uid: Uid,
        today: i64,
        free_daily: u64,
    ) -> Result<Balance, StoreError> {
        let id = uid_param(uid)?;
        let rows = self
            .rows(
                &format!(
                    "SELECT b.paid, b.held, b.free_day, b.free_used, {PLAN_COLS}
                     FROM users u LEFT JOIN balances b ON b.uid = u.uid WHERE u.uid = $1"
                ),
                &[(&id, Type::INT8)],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Err(StoreError::UnknownUser(uid));
        };
        let key = || uid.to_string();
        let get = |name: &str| -> Result<u64, StoreError> {
            let v: Option<i64> = col(row, name)?;
            credits(v.unwrap_or(0), "balances", key)
        };
        let (paid, held, free_used) = (get("paid")?, get("held")?, get("free_used")?);
        let free_day: Option<i64> = col(row, "free_day")?;
        // The plan's daily credits join the allowance while it is active.
        let allowance = free_daily.saturating_add(plan_from(row)?.map_or(0, |p| p.daily_on(today)));
        let free_left = if today > free_day.unwrap_or(i64::MIN) {
            allowance
        } else {
            allowance.saturating_sub(free_used)
        };
        Ok(Balance {
            paid,
            free_left,
            held,
            available: free_left.saturating_add(paid).saturating_sub(held),
        })
    }

    /// Holds `amount` credits (as `KvStore::reserve`): idempotent on `reference`, refused with
    /// [`StoreError::InsufficientCredits`] when less is available, [`StoreError::AlreadySettled`]
    /// once the reference has a ledger entry.
    pub(crate) async fn reserve(
        &self,
        uid: Uid,
        amount_: u64,
        reference: &str,
        today: i64,
        free_daily: u64,
        expires_at_ms: i64,
    ) -> Result<ReservationId, StoreError> {
        check_key("reference", reference)?;
        let (id, want) = (uid_param(uid)?, amount(amount_)?);
        let free = i64::try_from(free_daily).unwrap_or(i64::MAX);
        let mut attempts = Attempts::new();
        loop {
            attempts.next().await?;
            let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 6] = [
                (&id, Type::INT8),
                (&want, Type::INT8),
                (&reference, Type::TEXT),
                (&today, Type::INT8),
                (&free, Type::INT8),
                (&expires_at_ms, Type::INT8),
            ];
            let Some(rows) = self.run(RESERVE, &params).await? else {
                continue;
            };
            if let Some(outcome) = reserve_outcome(one(&rows)?, uid, amount_)? {
                return outcome;
            }
        }
    }

    /// Settles a reservation (as `KvStore::settle`): drops its hold and charges
    /// `min(actual, free_left + paid)`, free credits first, as one usage entry. Settling
    /// again answers the same; an id never reserved (or released) is
    /// [`StoreError::UnknownReservation`].
    pub(crate) async fn settle(
        &self,
        id: ReservationId,
        actual: u64,
        reason: &str,
        today: i64,
        free_daily: u64,
        now_ms: i64,
    ) -> Result<Option<LedgerEntry>, StoreError> {
        // The metered statement without a usage row: one settling statement for both.
        self.settle_metered(id, actual, reason, today, free_daily, now_ms, None, None)
            .await
    }

    /// The answer of a settle that found reservation `id` not open: `Some` when it was
    /// settled before (or just now, by a racing call that held the lock first), `None` when
    /// it is open again (run the settle again); an unknown id is
    /// [`StoreError::UnknownReservation`].
    pub(super) async fn settled_before(
        &self,
        id: ReservationId,
        rid: i64,
    ) -> Result<Option<Option<LedgerEntry>>, StoreError> {
        let rows = self.rows(SETTLED, &[(&rid, Type::INT8)]).await?;
        let Some(row) = rows.first() else {
            return Err(StoreError::UnknownReservation(id));
        };
        let status: String = col(row, "status")?;
        if status == "open" {
            return Ok(None);
        }
        match (col::<bool>(row, "charged")?, entry_from(row)?) {
            (false, _) => Ok(Some(None)),
            (true, Some(entry)) => Ok(Some(Some(entry))),
            (true, None) => Err(StoreError::corrupt(
                "reservations",
                id.to_string(),
                "charged, but its ledger entry is missing",
            )),
        }
    }

    /// What the settling statement's row (`SETTLE_METERED`) says: `Some(answer)`
    /// when the reservation was open (settled now, or its earlier charge found by reference),
    /// `None` when it was not open when the statement looked.
    pub(super) async fn settled_answer(
        &self,
        row: &Row,
        id: ReservationId,
    ) -> Result<Option<Option<LedgerEntry>>, StoreError> {
        let open: Option<i64> = col(row, "open_id")?;
        let settled: Option<i64> = col(row, "settled_id")?;
        match (open, settled) {
            (Some(_), Some(_)) => {
                if let Some(entry) = entry_from(row)? {
                    return Ok(Some(Some(entry)));
                }
                if col::<bool>(row, "prior")? {
                    let reference: String = col(row, "res_reference")?;
                    return self.ledger_by_reference(&reference).await.map(Some);
                }
                Ok(Some(None))
            }
            (Some(_), None) => Err(StoreError::corrupt(
                "balances",
                format!("reservation {id}"),
                "the reservation's user has no balance",
            )),
            _ => Ok(None),
        }
    }

    /// Drops an open reservation without charging; false if it was not open.
    pub(crate) async fn release(&self, id: ReservationId) -> Result<bool, StoreError> {
        let Ok(rid) = i64::try_from(id.0) else {
            return Ok(false);
        };
        let rows = self
            .rows(
                "WITH r AS (DELETE FROM reservations WHERE id = $1 AND status = 'open'
                            RETURNING uid, amount),
                      u AS (UPDATE balances SET held = GREATEST(balances.held - r.amount, 0)
                            FROM r WHERE balances.uid = r.uid)
                 SELECT count(*) AS n FROM r",
                &[(&rid, Type::INT8)],
            )
            .await?;
        Ok(col::<i64>(one(&rows)?, "n")? > 0)
    }

    /// Releases every open reservation that expired before `now_ms`; returns how many.
    pub(crate) async fn release_stale_reservations(
        &self,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let rows = self
            .rows(
                "WITH r AS (DELETE FROM reservations WHERE status = 'open' AND expires_at_ms < $1
                            RETURNING uid, amount),
                      s AS (SELECT uid, sum(amount) AS amount FROM r GROUP BY uid),
                      u AS (UPDATE balances SET held = GREATEST(balances.held - s.amount, 0)
                            FROM s WHERE balances.uid = s.uid)
                 SELECT count(*) AS n FROM r",
                &[(&now_ms, Type::INT8)],
            )
            .await?;
        let n: i64 = col(one(&rows)?, "n")?;
        if n > 0 {
            tracing::info!(released = n, "released stale credit reservations");
        }
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Forgets settled reservations settled before `before_ms` (their entries stay).
    pub(crate) async fn purge_settled_reservations(
        &self,
        before_ms: i64,
    ) -> Result<usize, StoreError> {
        let rows = self
            .rows(
                "WITH r AS (DELETE FROM reservations WHERE status = 'settled'
                            AND settled_at_ms < $1 RETURNING 1)
                 SELECT count(*) AS n FROM r",
                &[(&before_ms, Type::INT8)],
            )
            .await?;
        Ok(usize::try_from(col::<i64>(one(&rows)?, "n")?).unwrap_or(0))
    }

    /// Adds paid credits (as `KvStore::grant`); idempotent on `reference`.
    pub(crate) async fn grant(
        &self,
        uid: Uid,
        credits: u64,
        kind: EntryKind,
        reason: &str,
        reference: &str,
        now_ms: i64,
    ) -> Result<LedgerEntry, StoreError> {
        let delta = positive(credits)?;
        self.change_paid(uid, delta, kind, reason, reference, now_ms)
            .await
    }

    /// Removes paid credits, never below what is held (as `KvStore::debit`); idempotent on
    /// `reference`.
    pub(crate) async fn debit(
        &self,
        uid: Uid,
        credits: u64,
        kind: EntryKind,
        reason: &str,
        reference: &str,
        now_ms: i64,
    ) -> Result<LedgerEntry, StoreError> {
        let delta = -positive(credits)?;
        self.change_paid(uid, delta, kind, reason, reference, now_ms)
            .await
    }

    async fn change_paid(
        &self,
        uid: Uid,
        delta: i64,
        kind: EntryKind,
        reason: &str,
        reference: &str,
        now_ms: i64,
    ) -> Result<LedgerEntry, StoreError> {
        check_key("reference", reference)?;
        let id = uid_param(uid)?;
        let kind_name = kind_name(kind);
        let mut attempts = Attempts::new();
        loop {
            attempts.next().await?;
            let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 6] = [
                (&id, Type::INT8),
                (&delta, Type::INT8),
                (&kind_name, Type::TEXT),
                (&reason, Type::TEXT),
                (&reference, Type::TEXT),
                (&now_ms, Type::INT8),
            ];
            let Some(rows) = self.run(CHANGE_PAID, &params).await? else {
                continue;
            };
            let row = one(&rows)?;
            if let Some(entry) = entry_from(row)? {
                if entry.uid != uid || entry.paid_delta != delta {
                    tracing::warn!(
                        reference, %uid, delta, entry_uid = %entry.uid,
                        entry_paid_delta = entry.paid_delta,
                        "reference already used for a different ledger entry; kept the original"
                    );
                }
                return Ok(entry);
            }
            if !col::<bool>(row, "user_exists")? {
                return Err(StoreError::UnknownUser(uid));
            }
            let paid: i64 = col::<Option<i64>>(row, "cur_paid")?.unwrap_or(0);
            let held: i64 = col::<Option<i64>>(row, "cur_held")?.unwrap_or(0);
            if delta < 0 {
                let spendable = u64::try_from(paid.saturating_sub(held)).unwrap_or(0);
                if spendable < delta.unsigned_abs() {
                    return Err(StoreError::InsufficientCredits {
                        available: spendable,
                        needed: delta.unsigned_abs(),
                    });
                }
            } else if paid.checked_add(delta).is_none() {
                return Err(StoreError::InvalidInput(format!(
                    "granting {delta} would overflow"
                )));
            }
            // The balance changed between the statement's snapshot and its lock: again.
        }
    }

    /// The user's newest `limit` ledger entries, newest first.
    pub(crate) async fn ledger(
        &self,
        uid: Uid,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let id = uid_param(uid)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql =
            format!("SELECT {ENTRY_COLS} FROM ledger WHERE uid = $1 ORDER BY seq DESC LIMIT $2");
        let rows = self
            .rows(&sql, &[(&id, Type::INT8), (&limit, Type::INT8)])
            .await?;
        rows.iter()
            .map(|r| entry_from(r)?.ok_or_else(|| StoreError::Backend("empty ledger row".into())))
            .collect()
    }

    /// The ledger entry written with `reference`, if any.
    pub(crate) async fn ledger_by_reference(
        &self,
        reference: &str,
    ) -> Result<Option<LedgerEntry>, StoreError> {
        let sql = format!("SELECT {ENTRY_COLS} FROM ledger WHERE reference = $1");
        let rows = self.rows(&sql, &[(&reference, Type::TEXT)]).await?;
        match rows.first() {
            Some(row) => entry_from(row),
            None => Ok(None),
        }
    }
}

/// What one run of [`RESERVE`] means; `None`: it raced and must run again.
fn reserve_outcome(
    row: &Row,
    uid: Uid,
    want: u64,
) -> Result<Option<Result<ReservationId, StoreError>>, StoreError> {
    let rid = |n: i64| ReservationId(u64::try_from(n).unwrap_or(0));
    if let Some(prior) = col::<Option<i64>>(row, "prior_id")? {
        let status: Option<String> = col(row, "prior_status")?;
        let charged: Option<bool> = col(row, "prior_charged")?;
        if status.as_deref() == Some("settled") && charged == Some(true) {
            let entry = entry_from(row)?.ok_or_else(|| {
                StoreError::corrupt("reservations", prior.to_string(), "charged, but no entry")
            })?;
            return Ok(Some(Err(StoreError::AlreadySettled(Box::new(entry)))));
        }
        return Ok(Some(Ok(rid(prior))));
    }
    if let Some(entry) = entry_from(row)? {
        return Ok(Some(Err(StoreError::AlreadySettled(Box::new(entry)))));
    }
    if !col::<bool>(row, "user_exists")? {
        return Ok(Some(Err(StoreError::UnknownUser(uid))));
    }
    if let Some(new) = col::<Option<i64>>(row, "new_id")? {
        return Ok(Some(Ok(rid(new))));
    }
    let Some(available) = col::<Option<i64>>(row, "available")? else {
        return Err(StoreError::corrupt(
            "balances",
            uid.to_string(),
            "the user has no balance row",
        ));
    };
    let available = u64::try_from(available).unwrap_or(0);
    if available < want {
        return Ok(Some(Err(StoreError::InsufficientCredits {
            available,
            needed: want,
        })));
    }
    // Enough credits, yet no reservation: a racing call took the reference first.
    Ok(None)
}

/// The ledger entry in `row` ([`ENTRY_COLS`]), `None` when its columns are null (an outer
/// join that found none).
pub(crate) fn entry_from(row: &Row) -> Result<Option<LedgerEntry>, StoreError> {
    let Some(seq) = col::<Option<i64>>(row, "seq")? else {
        return Ok(None);
    };
    let reference: String = col(row, "reference")?;
    let key = || format!("{reference:?}");
    let kind: String = col(row, "kind")?;
    let kind = kind_parse(&kind)
        .ok_or_else(|| StoreError::corrupt("ledger", key(), format!("kind {kind:?}")))?;
    Ok(Some(LedgerEntry {
        uid: uid_of(row, "uid")?,
        seq: credits(seq, "ledger", key)?,
        at_ms: col(row, "at_ms")?,
        kind,
        free_delta: col(row, "free_delta")?,
        paid_delta: col(row, "paid_delta")?,
        paid_after: credits(col(row, "paid_after")?, "ledger", key)?,
        reason: col(row, "reason")?,
        reference,
    }))
}

/// The `kind` column's value for `kind`.
pub(crate) fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Usage => "usage",
        EntryKind::Grant => "grant",
        EntryKind::Purchase => "purchase",
        EntryKind::Refund => "refund",
        EntryKind::Adjust => "adjust",
    }
}

fn kind_parse(s: &str) -> Option<EntryKind> {
    [
        EntryKind::Usage,
        EntryKind::Grant,
        EntryKind::Purchase,
        EntryKind::Refund,
        EntryKind::Adjust,
    ]
    .into_iter()
    .find(|k| kind_name(*k) == s)
}

/// A grant's or debit's size: positive and a bigint.
fn positive(credits: u64) -> Result<i64, StoreError> {
    if credits == 0 {
        return Err(StoreError::InvalidInput(
            "credits must be positive".to_owned(),
        ));
    }
    amount(credits)
}
