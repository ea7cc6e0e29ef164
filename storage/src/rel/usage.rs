//! The usage log on PostgreSQL, as `usage.rs` on sled: table `usage`, one row per metered
//! answer keyed `(uid, at_ms, id)` (the id the reservation's), written by the statement that
//! settles the answer ([`RelStore::settle_metered`]) and only by the run that settles it, so
//! the log's credits add up to the ledger's usage debits and a retry writes nothing.
//!
//! The settling statement is `money.rs`'s settle with the membership plan counted (its daily
//! credits join the free allowance while it is active; the base allowance goes first, what
//! the free part takes beyond it is the plan's) and the usage row inserted. A page of a
//! user's log is one keyset query on the primary key, newest first, before a cursor.

use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use super::money::{entry_from, plan_daily};
use super::{Attempts, RelStore, col, credits, one, uid_of, uid_param};
use crate::codec::check_key;
use crate::usage::UsagePurge;
use crate::{
    LedgerEntry, MAX_USAGE_PAGE, Remember, ReservationId, StoreError, Uid, UsageCursor, UsageNote,
    UsageOutcome, UsagePage, UsageRecord,
};

/// The longest platform and model names kept (as sled: cut at a character boundary).
const MAX_NAME: usize = 128;

const USAGE_COLS: &str = "uid, at_ms, id, platform, model, prompt_tokens, completion_tokens,
     free, paid, plan, refunded, ledger_seq, outcome";

/// $1 id, $2 actual, $3 today, $4 free daily, $5 now, $6 reason, $7 platform, $8 model,
/// $9 prompt tokens, $10 completion tokens, $11 outcome, $12 write a usage row (false for
/// `settle`, which runs this same statement).
const SETTLE_METERED: &str = concat!(
    "WITH r AS (
         SELECT id, uid, amount, reference FROM reservations
         WHERE id = $1 AND status = 'open' FOR UPDATE),
     prior AS (SELECT 1 FROM ledger WHERE reference = (SELECT reference FROM r)),
     b AS (
         SELECT b.uid, b.paid, r.amount, r.reference,
                CASE WHEN $3 > b.free_day THEN $4::numeric + ",
    plan_daily!("b", "$3"),
    "
                     ELSE GREATEST($4::numeric + ",
    plan_daily!("b", "$3"),
    " - b.free_used, 0) END AS free_left,
                CASE WHEN $3 > b.free_day THEN $4::numeric
                     ELSE GREATEST($4::numeric - b.free_used, 0) END AS base_left
         FROM balances b JOIN r ON r.uid = b.uid
         FOR UPDATE OF b),
     c AS (
         SELECT uid, amount, reference, free_left, base_left,
                CASE WHEN EXISTS (SELECT 1 FROM prior) THEN 0
                     ELSE LEAST($2::numeric, free_left + paid) END AS charge
         FROM b),
     d AS (
         SELECT uid, amount, reference, charge,
                LEAST(charge, free_left)::bigint AS from_free,
                (charge - LEAST(charge, free_left))::bigint AS from_paid,
                (LEAST(charge, free_left) - LEAST(charge, free_left, base_left))::bigint
                    AS from_plan
         FROM c),
     upd AS (
         UPDATE balances SET
             held = GREATEST(balances.held - d.amount, 0),
             paid = balances.paid - d.from_paid,
             free_used = CASE WHEN d.charge = 0 THEN balances.free_used
                              WHEN $3 > balances.free_day THEN d.from_free
                              ELSE balances.free_used + d.from_free END,
             free_day = CASE WHEN d.charge > 0 AND $3 > balances.free_day THEN $3
                             ELSE balances.free_day END,
             next_seq = balances.next_seq + CASE WHEN d.charge > 0 THEN 1 ELSE 0 END
         FROM d WHERE balances.uid = d.uid
         RETURNING balances.uid, balances.paid, balances.next_seq),
     ent AS (
         INSERT INTO ledger (uid, seq, at_ms, kind, free_delta, paid_delta, paid_after, reason,
                             reference)
         SELECT upd.uid, upd.next_seq - 1, $5, 'usage', -d.from_free, -d.from_paid, upd.paid, $6,
                d.reference
         FROM upd, d WHERE d.charge > 0
         RETURNING uid, seq, at_ms, kind, free_delta, paid_delta, paid_after, reason, reference),
     done AS (
         UPDATE reservations SET status = 'settled', settled_at_ms = $5,
                charged = EXISTS (SELECT 1 FROM prior) OR d.charge > 0
         FROM d WHERE reservations.id = $1
         RETURNING reservations.id),
     log AS (
         INSERT INTO usage (uid, at_ms, id, platform, model, prompt_tokens, completion_tokens,
                            free, paid, plan, ledger_seq, outcome)
         SELECT d.uid, GREATEST($5, 0), $1, $7, $8, $9, $10, d.from_free - d.from_plan,
                d.from_paid, d.from_plan, (SELECT seq FROM ent), $11
         FROM d WHERE $12 AND EXISTS (SELECT 1 FROM done)
         RETURNING 1)
     SELECT (SELECT id FROM r) AS open_id,
            (SELECT id FROM done) AS settled_id,
            (SELECT reference FROM r) AS res_reference,
            EXISTS (SELECT 1 FROM prior) AS prior,
            (SELECT count(*) FROM log) AS logged,
            ent.*
     FROM (SELECT 1) AS one LEFT JOIN ent ON true"
);

/// $1 uid, $2 credits, $3 reason, $4 refund reference, $5 answer reference, $6 now: the
/// refund entry (paid credits back) and the answer's usage row marked refunded, once.
const REFUND_ANSWER: &str = "WITH prior AS (
         SELECT uid, seq, at_ms, kind, free_delta, paid_delta, paid_after, reason, reference
         FROM ledger WHERE reference = $4),
     b AS (
         UPDATE balances SET paid = paid + $2, next_seq = next_seq + 1
         WHERE uid = $1 AND NOT EXISTS (SELECT 1 FROM prior)
           AND paid::numeric + $2 <= 9223372036854775807
         RETURNING uid, paid, next_seq - 1 AS seq),
     ent AS (
         INSERT INTO ledger (uid, seq, at_ms, kind, free_delta, paid_delta, paid_after, reason,
                             reference)
         SELECT uid, seq, $6, 'refund', 0, $2, paid, $3, $4 FROM b
         RETURNING uid, seq, at_ms, kind, free_delta, paid_delta, paid_after, reason, reference),
     answered AS (
         SELECT id, settled_at_ms FROM reservations
         WHERE reference = $5 AND status = 'settled' AND uid = $1),
     marked AS (
         UPDATE usage SET refunded = refunded + $2, outcome = 'refunded'
         FROM answered
         WHERE EXISTS (SELECT 1 FROM ent) AND usage.uid = $1 AND usage.id = answered.id
           AND usage.at_ms = GREATEST(answered.settled_at_ms, 0)
         RETURNING 1)
     SELECT EXISTS (SELECT 1 FROM users WHERE uid = $1) AS user_exists,
            (SELECT count(*) FROM marked) AS marked, e.*
     FROM (SELECT 1) AS one
     LEFT JOIN (SELECT * FROM ent UNION ALL SELECT * FROM prior) AS e ON true";

/// `s` cut to at most [`MAX_NAME`] bytes at a character boundary.
fn cut(s: &str) -> &str {
    if s.len() <= MAX_NAME {
        return s;
    }
    let mut end = MAX_NAME;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

impl RelStore {
    /// Settles a reservation (as `KvStore::settle_metered`): the charge, its ledger entry and,
    /// when `usage` is given, the answer's usage row, in one statement; then, only when this
    /// call settled it, the conversation's new turns (`remember`, a second statement: a crash
    /// between the two loses the turns, never the charge). Settling again answers as `settle`
    /// does and writes nothing.
    #[allow(clippy::too_many_arguments)] // settle's arguments and the usage note
    pub(crate) async fn settle_metered(
        &self,
        id: ReservationId,
        actual: u64,
        reason: &str,
        today: i64,
        free_daily: u64,
        now_ms: i64,
        remember: Option<Remember<'_>>,
        usage: Option<UsageNote<'_>>,
    ) -> Result<Option<LedgerEntry>, StoreError> {
        let Ok(rid) = i64::try_from(id.0) else {
            return Err(StoreError::UnknownReservation(id));
        };
        let actual_ = i64::try_from(actual).unwrap_or(i64::MAX);
        let free = i64::try_from(free_daily).unwrap_or(i64::MAX);
        let write = usage.is_some();
        let (platform, model) = usage.map_or(("", ""), |n| (cut(n.platform), cut(n.model)));
        let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let prompt = usage.map_or(0, |n| tokens(n.prompt_tokens));
        let completion = usage.map_or(0, |n| tokens(n.completion_tokens));
        let outcome = usage.map_or(UsageOutcome::Answered, |n| n.outcome).as_str();
        let mut attempts = Attempts::new();
        loop {
            attempts.next().await?;
            let params: [(&(dyn ToSql + Sync), Type); 12] = [
                (&rid, Type::INT8),
                (&actual_, Type::INT8),
                (&today, Type::INT8),
                (&free, Type::INT8),
                (&now_ms, Type::INT8),
                (&reason, Type::TEXT),
                (&platform, Type::TEXT),
                (&model, Type::TEXT),
                (&prompt, Type::INT8),
                (&completion, Type::INT8),
                (&outcome, Type::TEXT),
                (&write, Type::BOOL),
            ];
            let Some(rows) = self.run(SETTLE_METERED, &params).await? else {
                continue;
            };
            if let Some(answer) = self.settled_answer(one(&rows)?, id).await? {
                if let Some(r) = remember {
                    self.append_turns(r.conversation, r.turns, r.max_turns)
                        .await?;
                }
                return Ok(answer);
            }
            // Not open when the statement looked: settled before (its answer read, nothing
            // written), or unknown.
            if let Some(answer) = self.settled_before(id, rid).await? {
                return Ok(answer);
            }
        }
    }

    /// A page of `uid`'s usage log, newest first: at most `limit` records (clamped to 1 ..=
    /// [`MAX_USAGE_PAGE`]) strictly before `before` (all, when `None`). One keyset query.
    pub(crate) async fn usage(
        &self,
        uid: Uid,
        before: Option<UsageCursor>,
        limit: usize,
    ) -> Result<UsagePage, StoreError> {
        let limit = limit.clamp(1, MAX_USAGE_PAGE);
        let id = uid_param(uid)?;
        let (at, rid) = match before {
            Some(c) => (c.at_ms, i64::try_from(c.id).unwrap_or(i64::MAX)),
            None => (i64::MAX, i64::MAX),
        };
        let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {USAGE_COLS} FROM usage WHERE uid = $1 AND (at_ms, id) < ($2, $3)
             ORDER BY at_ms DESC, id DESC LIMIT $4"
        );
        let rows = self
            .rows(
                &sql,
                &[
                    (&id, Type::INT8),
                    (&at, Type::INT8),
                    (&rid, Type::INT8),
                    (&fetch, Type::INT8),
                ],
            )
            .await?;
        let more = rows.len() > limit;
        let records = rows
            .iter()
            .take(limit)
            .map(record_from)
            .collect::<Result<Vec<_>, _>>()?;
        let next = if more {
            records.last().map(UsageRecord::cursor)
        } else {
            None
        };
        Ok(UsagePage { records, next })
    }

    /// Removes usage records settled before `before_ms` of up to `users` users, starting at
    /// uid `from` (as `KvStore::purge_usage`): one statement; call again with
    /// `UsagePurge::resume` until it is `None`.
    pub(crate) async fn purge_usage(
        &self,
        before_ms: i64,
        from: Uid,
        users: usize,
    ) -> Result<UsagePurge, StoreError> {
        let from = i64::try_from(from.0).unwrap_or(i64::MAX);
        let users_ = i64::try_from(users).unwrap_or(i64::MAX - 1);
        let rows = self
            .rows(
                "WITH u AS (SELECT uid FROM users WHERE uid >= $2 ORDER BY uid LIMIT $3 + 1),
                      pick AS (SELECT uid FROM u ORDER BY uid LIMIT $3),
                      d AS (DELETE FROM usage
                            WHERE uid IN (SELECT uid FROM pick) AND at_ms < $1
                            RETURNING 1)
                 SELECT (SELECT count(*) FROM d) AS removed,
                        (SELECT uid FROM u ORDER BY uid OFFSET $3 LIMIT 1) AS resume",
                &[
                    (&before_ms, Type::INT8),
                    (&from, Type::INT8),
                    (&users_, Type::INT8),
                ],
            )
            .await?;
        let row = one(&rows)?;
        let removed = usize::try_from(col::<i64>(row, "removed")?).unwrap_or(0);
        let resume = match col::<Option<i64>>(row, "resume")? {
            Some(_) => Some(uid_of(row, "resume")?),
            None => None,
        };
        if removed > 0 {
            tracing::info!(removed, "purged old usage records");
        }
        Ok(UsagePurge { removed, resume })
    }

    /// Gives back `credits` as paid credits (a refund entry with reference
    /// `refund_reference`) for the answer settled from the reservation of
    /// `answer_reference`, and marks its usage row refunded, in one statement (as
    /// `KvStore::refund_answer`). Idempotent on `refund_reference`. The row is marked only
    /// while the settled reservation is kept.
    pub(crate) async fn refund_answer(
        &self,
        uid: Uid,
        credits_: u64,
        reason: &str,
        refund_reference: &str,
        answer_reference: &str,
        now_ms: i64,
    ) -> Result<LedgerEntry, StoreError> {
        check_key("reference", refund_reference)?;
        check_key("reference", answer_reference)?;
        let delta = match i64::try_from(credits_) {
            Ok(d) if d > 0 => d,
            _ => {
                return Err(StoreError::InvalidInput(
                    "credits must be positive".to_owned(),
                ));
            }
        };
        let id = uid_param(uid)?;
        let mut attempts = Attempts::new();
        loop {
            attempts.next().await?;
            let params: [(&(dyn ToSql + Sync), Type); 6] = [
                (&id, Type::INT8),
                (&delta, Type::INT8),
                (&reason, Type::TEXT),
                (&refund_reference, Type::TEXT),
                (&answer_reference, Type::TEXT),
                (&now_ms, Type::INT8),
            ];
            let Some(rows) = self.run(REFUND_ANSWER, &params).await? else {
                continue;
            };
            let row = one(&rows)?;
            if let Some(entry) = entry_from(row)? {
                return Ok(entry);
            }
            if !col::<bool>(row, "user_exists")? {
                return Err(StoreError::UnknownUser(uid));
            }
            return Err(StoreError::InvalidInput(format!(
                "granting {credits_} would overflow"
            )));
        }
    }
}

/// A usage record from its columns ([`USAGE_COLS`]).
fn record_from(row: &Row) -> Result<UsageRecord, StoreError> {
    let uid = uid_of(row, "uid")?;
    let at_ms: i64 = col(row, "at_ms")?;
    let rid: i64 = col(row, "id")?;
    let key = || format!("{uid}/{at_ms}/{rid}");
    let n = |name: &str| -> Result<u64, StoreError> { credits(col(row, name)?, "usage", key) };
    let outcome: String = col(row, "outcome")?;
    let outcome = [
        UsageOutcome::Answered,
        UsageOutcome::Cut,
        UsageOutcome::Stopped,
        UsageOutcome::Refunded,
    ]
    .into_iter()
    .find(|o| o.as_str() == outcome)
    .ok_or_else(|| StoreError::corrupt("usage", key(), format!("outcome {outcome:?}")))?;
    let seq: Option<i64> = col(row, "ledger_seq")?;
    Ok(UsageRecord {
        uid,
        at_ms,
        id: ReservationId(credits(rid, "usage", key)?),
        platform: col(row, "platform")?,
        model: col(row, "model")?,
        prompt_tokens: n("prompt_tokens")?,
        completion_tokens: n("completion_tokens")?,
        free: n("free")?,
        paid: n("paid")?,
        plan: n("plan")?,
        refunded: n("refunded")?,
        ledger_seq: seq.map(|s| credits(s, "usage", key)).transpose()?,
        outcome,
    })
}
