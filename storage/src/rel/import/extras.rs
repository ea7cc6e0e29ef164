//! The import of redemption codes, membership plans (a user's, an order's), the usage log
//! and the admin change log: read from their trees like the others (`walk`), each batch one
//! `INSERT`/`UPDATE ... FROM unnest(...)` statement.
//!
//! - A code's row is made from its `code_hashes` entry (the hash is all that identifies a
//!   code) and its `codes` record; a code without its hash would be one the store could
//!   never redeem, and shows as a difference in the census's code count.
//! - A user's plan is written onto the balance row made with the user; an order's plan onto
//!   the order (both after their rows exist).
//! - Usage rows and change records keep their keys (`(uid, at_ms, id)`, `(at_ms, id)`).
//!   Afterwards the identities of `code_batches` and `admin_changes` move past the copied ids
//!   and every id the source handed out (both came from sled's id generator).

use tokio_postgres::types::{ToSql, Type};

use super::super::{RelStore, amount, uid_param};
use super::{Batch, Sink, walk};
use crate::codec::{decode, describe_bytes, read_pair_key, read_u64_key};
use crate::{
    ActivePlan, CodeBatch, CodeGrant, CodeRecord, CodeState, KvStore, PlanGrant, StoreError, Uid,
};

/// Statement parameters: arrays with their types.
type Arrays<'a> = Vec<(&'a (dyn ToSql + Sync), Type)>;

/// A code row: its record and its hash.
pub(crate) type CodeRow = (CodeRecord, Vec<u8>);

const PLANS: &str = "WITH b AS (
         UPDATE balances SET plan_id = v.id, plan_name = v.name, plan_daily_credits = v.daily,
                plan_start_day = v.start_day, plan_end_day = v.end_day
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                     $6::bigint[]) AS v(uid, id, name, daily, start_day, end_day)
         WHERE balances.uid = v.uid RETURNING 1)
     SELECT count(*) AS n FROM b";

const ORDER_PLANS: &str = "WITH o AS (
         UPDATE orders SET plan_id = v.id, plan_name = v.name, plan_days = v.days,
                plan_daily_credits = v.daily, plan_utc_offset_secs = v.utc_offset
         FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::bigint[], $6::int4[])
              AS v(order_id, id, name, days, daily, utc_offset)
         WHERE orders.id = v.order_id RETURNING 1)
     SELECT count(*) AS n FROM o";

const CODE_BATCHES: &str = "WITH b AS (
         INSERT INTO code_batches (id, grant_type, credits, plan_id, plan_name, plan_days,
                                   plan_daily_credits, plan_utc_offset_secs, count,
                                   created_at_ms, expires_at_ms, note, revoked_at_ms)
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                              $6::int4[], $7::bigint[], $8::int4[], $9::int4[], $10::bigint[],
                              $11::bigint[], $12::text[], $13::bigint[])
         RETURNING 1)
     SELECT count(*) AS n FROM b";

const CODES: &str = "WITH c AS (
         INSERT INTO codes (batch, n, hash, status, uid, at_ms)
         SELECT * FROM unnest($1::bigint[], $2::int4[], $3::bytea[], $4::text[], $5::bigint[],
                              $6::bigint[])
         RETURNING 1)
     SELECT count(*) AS n FROM c";

const USAGE: &str = "WITH u AS (
         INSERT INTO usage (uid, at_ms, id, platform, model, prompt_tokens, completion_tokens,
                            free, paid, plan, refunded, ledger_seq, outcome)
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
                              $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[],
                              $10::bigint[], $11::bigint[], $12::bigint[], $13::text[])
         RETURNING 1)
     SELECT count(*) AS n FROM u";

const CHANGES: &str = "WITH c AS (
         INSERT INTO admin_changes (at_ms, id, actor, address, method, path, status, reason,
                                    summary)
         OVERRIDING SYSTEM VALUE
         SELECT at_ms, id, actor, address, method, path, status, reason, summary::jsonb
         FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::int4[], $8::text[], $9::text[])
              AS v(at_ms, id, actor, address, method, path, status, reason, summary)
         RETURNING 1)
     SELECT count(*) AS n FROM c";

/// Reads the plans (after users and orders), the codes, the usage log and the change log.
pub(super) fn read(store: &KvStore, sink: &Sink) -> Result<(), StoreError> {
    let t = store.trees()?;
    walk(
        t.balances.iter(),
        sink,
        |k, v| {
            let uid = Uid(read_u64_key(crate::BALANCES, k)?);
            Ok(crate::census::read_balance(k, v)?.plan.map(|p| (uid, p)))
        },
        Batch::Plans,
    )?;
    walk(
        t.orders.iter(),
        sink,
        |k, v| {
            let order = crate::census::read_order(k, v)?;
            Ok(order.plan.map(|p| (order.id, p)))
        },
        Batch::OrderPlans,
    )?;
    walk(
        t.code_batches.iter(),
        sink,
        |k, v| decode::<CodeBatch>("code_batches", v, || describe_bytes(k)).map(Some),
        Batch::CodeBatches,
    )?;
    walk(
        t.code_hashes.iter(),
        sink,
        |k, v| {
            let (batch, n) = read_pair_key("code_hashes", v)?;
            let id = || format!("{batch}-{n}");
            let Some(raw) = t.codes.get(v)? else {
                return Err(StoreError::corrupt(
                    "code_hashes",
                    id(),
                    "code record missing",
                ));
            };
            let record: CodeRecord = decode("codes", &raw, id)?;
            Ok(Some((record, k.to_vec())))
        },
        Batch::Codes,
    )?;
    walk(
        t.usage.iter(),
        sink,
        |k, v| crate::usage::read_record(k, v).map(Some),
        Batch::Usage,
    )?;
    walk(
        t.admin_log.iter(),
        sink,
        |k, v| crate::admin_log::read_change(k, v).map(Some),
        Batch::Changes,
    )
}

impl RelStore {
    /// Writes a batch of this module's tables; the rows written.
    pub(super) async fn write_extra(&self, batch: Batch) -> Result<u64, StoreError> {
        match batch {
            Batch::Plans(rows) => self.write_plans(rows).await,
            Batch::OrderPlans(rows) => self.write_order_plans(rows).await,
            Batch::CodeBatches(rows) => self.write_code_batches(rows).await,
            Batch::Codes(rows) => self.write_codes(rows).await,
            Batch::Usage(rows) => self.write_usage(rows).await,
            Batch::Changes(rows) => self.write_changes(rows).await,
            _ => Err(StoreError::Backend("an import batch of no table".into())),
        }
    }

    /// Moves the identities of `code_batches` and `admin_changes` past the copied ids and
    /// `id_floor` (above every id the source generated).
    pub(super) async fn finish_extras(&self, id_floor: u64) -> Result<(), StoreError> {
        let floor = amount(id_floor)?;
        self.rows(
            "SELECT setval(pg_get_serial_sequence('code_batches', 'id'),
                        GREATEST((SELECT COALESCE(max(id), 0) FROM code_batches), $1, 1)),
                    setval(pg_get_serial_sequence('admin_changes', 'id'),
                        GREATEST((SELECT COALESCE(max(id), 0) FROM admin_changes), $1, 1))",
            &[(&floor, Type::INT8)],
        )
        .await
        .map(drop)
    }

    async fn write_plans(&self, rows: Vec<(Uid, ActivePlan)>) -> Result<u64, StoreError> {
        let (mut uid, mut id, mut name) = (vec![], vec![], vec![]);
        let (mut daily, mut start, mut end) = (vec![], vec![], vec![]);
        for (u, p) in rows {
            uid.push(uid_param(u)?);
            id.push(p.id);
            name.push(p.name);
            daily.push(amount(p.daily_credits)?);
            start.push(p.start_day);
            end.push(p.end_day);
        }
        let want = uid.len() as u64;
        let params: Arrays<'_> = vec![
            (&uid, Type::INT8_ARRAY),
            (&id, Type::TEXT_ARRAY),
            (&name, Type::TEXT_ARRAY),
            (&daily, Type::INT8_ARRAY),
            (&start, Type::INT8_ARRAY),
            (&end, Type::INT8_ARRAY),
        ];
        let n = self.count(PLANS, params).await?;
        if n != want {
            return Err(StoreError::InvalidInput(format!(
                "{} plans belong to no balance row; run `chatrelay audit`",
                want - n
            )));
        }
        Ok(n)
    }

    async fn write_order_plans(&self, rows: Vec<(String, PlanGrant)>) -> Result<u64, StoreError> {
        let (mut order, mut id, mut name) = (vec![], vec![], vec![]);
        let (mut days, mut daily, mut offset) = (vec![], vec![], vec![]);
        for (o, p) in rows {
            order.push(o);
            id.push(p.id);
            name.push(p.name);
            days.push(plan_days(p.days)?);
            daily.push(amount(p.daily_credits)?);
            offset.push(p.utc_offset_secs);
        }
        let params: Arrays<'_> = vec![
            (&order, Type::TEXT_ARRAY),
            (&id, Type::TEXT_ARRAY),
            (&name, Type::TEXT_ARRAY),
            (&days, Type::INT4_ARRAY),
            (&daily, Type::INT8_ARRAY),
            (&offset, Type::INT4_ARRAY),
        ];
        self.count(ORDER_PLANS, params).await
    }

    async fn write_code_batches(&self, rows: Vec<CodeBatch>) -> Result<u64, StoreError> {
        let (mut id, mut kind, mut credits) = (vec![], vec![], vec![]);
        let (mut plan, mut name, mut days, mut daily, mut offset) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut count, mut created, mut expires, mut note, mut revoked) =
            (vec![], vec![], vec![], vec![], vec![]);
        for b in rows {
            id.push(amount(b.id)?);
            match b.grant {
                CodeGrant::Credits { credits: c } => {
                    kind.push("credits");
                    credits.push(Some(amount(c)?));
                    plan.push(None);
                    name.push(None);
                    days.push(None);
                    daily.push(None);
                    offset.push(None);
                }
                CodeGrant::Plan {
                    plan: p,
                    name: n,
                    days: d,
                    daily_credits,
                    utc_offset_secs,
                } => {
                    kind.push("plan");
                    credits.push(None);
                    plan.push(Some(p));
                    name.push(Some(n));
                    days.push(Some(plan_days(d)?));
                    daily.push(Some(amount(daily_credits)?));
                    offset.push(Some(utc_offset_secs));
                }
            }
            count.push(i32::try_from(b.count).unwrap_or(i32::MAX));
            created.push(b.created_at_ms);
            expires.push(b.expires_at_ms);
            note.push(b.note);
            revoked.push(b.revoked_at_ms);
        }
        let params: Arrays<'_> = vec![
            (&id, Type::INT8_ARRAY),
            (&kind, Type::TEXT_ARRAY),
            (&credits, Type::INT8_ARRAY),
            (&plan, Type::TEXT_ARRAY),
            (&name, Type::TEXT_ARRAY),
            (&days, Type::INT4_ARRAY),
            (&daily, Type::INT8_ARRAY),
            (&offset, Type::INT4_ARRAY),
            (&count, Type::INT4_ARRAY),
            (&created, Type::INT8_ARRAY),
            (&expires, Type::INT8_ARRAY),
            (&note, Type::TEXT_ARRAY),
            (&revoked, Type::INT8_ARRAY),
        ];
        self.count(CODE_BATCHES, params).await
    }

    async fn write_codes(&self, rows: Vec<CodeRow>) -> Result<u64, StoreError> {
        let (mut batch, mut n, mut hash) = (vec![], vec![], vec![]);
        let (mut status, mut uid, mut at) = (vec![], vec![], vec![]);
        for (record, h) in rows {
            batch.push(amount(record.batch)?);
            n.push(i32::try_from(record.n).unwrap_or(i32::MAX));
            hash.push(h);
            let (s, u, a) = match record.state {
                CodeState::Unused => ("unused", None, None),
                CodeState::Used { uid: u, at_ms } => ("used", Some(uid_param(u)?), Some(at_ms)),
                CodeState::Revoked { at_ms } => ("revoked", None, Some(at_ms)),
            };
            status.push(s);
            uid.push(u);
            at.push(a);
        }
        let params: Arrays<'_> = vec![
            (&batch, Type::INT8_ARRAY),
            (&n, Type::INT4_ARRAY),
            (&hash, Type::BYTEA_ARRAY),
            (&status, Type::TEXT_ARRAY),
            (&uid, Type::INT8_ARRAY),
            (&at, Type::INT8_ARRAY),
        ];
        self.count(CODES, params).await
    }

    async fn write_usage(&self, rows: Vec<crate::UsageRecord>) -> Result<u64, StoreError> {
        let mut ints: [Vec<i64>; 10] = Default::default();
        let (mut platform, mut model, mut seq, mut outcome) = (vec![], vec![], vec![], vec![]);
        for r in rows {
            ints[0].push(uid_param(r.uid)?);
            ints[1].push(r.at_ms);
            ints[2].push(amount(r.id.0)?);
            ints[3].push(amount(r.prompt_tokens)?);
            ints[4].push(amount(r.completion_tokens)?);
            ints[5].push(amount(r.free)?);
            ints[6].push(amount(r.paid)?);
            ints[7].push(amount(r.plan)?);
            ints[8].push(amount(r.refunded)?);
            seq.push(r.ledger_seq.map(amount).transpose()?);
            platform.push(r.platform);
            model.push(r.model);
            outcome.push(r.outcome.as_str());
        }
        let i = &ints;
        let params: Arrays<'_> = vec![
            (&i[0], Type::INT8_ARRAY),
            (&i[1], Type::INT8_ARRAY),
            (&i[2], Type::INT8_ARRAY),
            (&platform, Type::TEXT_ARRAY),
            (&model, Type::TEXT_ARRAY),
            (&i[3], Type::INT8_ARRAY),
            (&i[4], Type::INT8_ARRAY),
            (&i[5], Type::INT8_ARRAY),
            (&i[6], Type::INT8_ARRAY),
            (&i[7], Type::INT8_ARRAY),
            (&i[8], Type::INT8_ARRAY),
            (&seq, Type::INT8_ARRAY),
            (&outcome, Type::TEXT_ARRAY),
        ];
        self.count(USAGE, params).await
    }

    async fn write_changes(&self, rows: Vec<crate::ChangeRecord>) -> Result<u64, StoreError> {
        let (mut at, mut id, mut actor, mut address) = (vec![], vec![], vec![], vec![]);
        let (mut method, mut path, mut status, mut reason, mut summary) =
            (vec![], vec![], vec![], vec![], vec![]);
        for c in rows {
            // As `record_change` writes them: NUL (which PostgreSQL's text cannot hold)
            // as U+FFFD.
            let c = super::super::admin_log::storable(c);
            at.push(c.at_ms);
            id.push(amount(c.id)?);
            summary.push(
                serde_json::to_string(&c.summary)
                    .map_err(|e| StoreError::InvalidInput(format!("summary: {e}")))?,
            );
            actor.push(c.actor);
            address.push(c.address);
            method.push(c.method);
            path.push(c.path);
            status.push(i32::from(c.status));
            reason.push(c.reason);
        }
        let params: Arrays<'_> = vec![
            (&at, Type::INT8_ARRAY),
            (&id, Type::INT8_ARRAY),
            (&actor, Type::TEXT_ARRAY),
            (&address, Type::TEXT_ARRAY),
            (&method, Type::TEXT_ARRAY),
            (&path, Type::TEXT_ARRAY),
            (&status, Type::INT4_ARRAY),
            (&reason, Type::TEXT_ARRAY),
            (&summary, Type::TEXT_ARRAY),
        ];
        self.count(CHANGES, params).await
    }
}

/// A plan's days as the database's integer.
fn plan_days(days: u32) -> Result<i32, StoreError> {
    i32::try_from(days).map_err(|_| StoreError::InvalidInput(format!("{days} days in a plan")))
}
