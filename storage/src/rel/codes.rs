//! Redemption codes on PostgreSQL, as `codes.rs` on sled: batches (`code_batches`) of
//! single-use codes (`codes`), each kept only as the SHA-256 of its canonical text.
//!
//! A batch and its codes are one statement. A redemption is one short transaction: the code
//! row is locked (`FOR UPDATE`: of users racing for one code, the others wait and then find
//! it used), the user's balance row too, then one statement marks the code used, changes the
//! balance (and the plan of a plan code) and writes the ledger entry `code:<batch>-<n>`,
//! whose UNIQUE reference makes the grant happen once even if the code row were not locked.
//! Revoking a batch is one statement, which waits for a redemption holding a code's lock and
//! then revokes only codes still unused.

use ring::digest::{SHA256, digest};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Row, Transaction};

use super::money::{ENTRY_COLS, entry_from, kind_name};
use super::plans::{PLAN_COLS, plan_from};
use super::{Attempts, RelStore, Retry, amount, col, credits, db_err, one, uid_of, uid_param};
use crate::{
    CodeBatch, CodeGrant, CodeRecord, CodeState, EntryKind, MAX_CODES_PER_BATCH, RedeemOutcome,
    StoreError, Uid, code_id, code_reference, display_redeem_code, normalize_redeem_code,
    random_redeem_code,
};

const BATCH_COLS: &str = "id, grant_type, credits, plan_id, plan_name, plan_days,
     plan_daily_credits, plan_utc_offset_secs, count, created_at_ms, expires_at_ms, note,
     revoked_at_ms";

/// $1 grant type, $2 credits, $3..$7 plan, $8 count, $9 now, $10 expiry, $11 note, $12 the
/// hashes in code order: the batch and its codes, in one statement.
const CREATE: &str = "WITH b AS (
         INSERT INTO code_batches (grant_type, credits, plan_id, plan_name, plan_days,
                                   plan_daily_credits, plan_utc_offset_secs, count,
                                   created_at_ms, expires_at_ms, note)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         RETURNING id),
     c AS (
         INSERT INTO codes (batch, n, hash)
         SELECT b.id, h.n, h.hash FROM b, unnest($12::bytea[]) WITH ORDINALITY AS h (hash, n)
         RETURNING 1)
     SELECT (SELECT id FROM b) AS id, (SELECT count(*) FROM c) AS codes";

/// $1 batch, $2 now: the batch marked revoked (its first revocation time kept) and its
/// unused codes revoked.
const REVOKE: &str = "WITH b AS (
         UPDATE code_batches SET revoked_at_ms = COALESCE(revoked_at_ms, $2)
         WHERE id = $1 RETURNING id),
     r AS (
         UPDATE codes SET status = 'revoked', at_ms = $2
         WHERE batch = (SELECT id FROM b) AND status = 'unused'
         RETURNING 1)
     SELECT (SELECT count(*) FROM b) AS found, (SELECT count(*) FROM r) AS revoked";

/// The SHA-256 of a code's canonical text: all the store keeps of it.
fn hash_code(canonical: &str) -> Vec<u8> {
    digest(&SHA256, canonical.as_bytes()).as_ref().to_vec()
}

impl RelStore {
    /// Makes a batch of `count` codes granting `grant` (as `KvStore::create_code_batch`), in
    /// one statement; returns the batch and its codes in display form, in id order (the only
    /// time they are seen).
    pub(crate) async fn create_code_batch(
        &self,
        grant: CodeGrant,
        count: u32,
        expires_at_ms: Option<i64>,
        note: &str,
        now_ms: i64,
    ) -> Result<(CodeBatch, Vec<String>), StoreError> {
        if count == 0 || count > MAX_CODES_PER_BATCH {
            return Err(StoreError::InvalidInput(format!(
                "count must be 1 to {MAX_CODES_PER_BATCH}"
            )));
        }
        let mut credits_col: Option<i64> = None;
        let (mut plan_id, mut plan_name): (Option<&str>, Option<&str>) = (None, None);
        let (mut days, mut daily, mut offset): (Option<i32>, Option<i64>, Option<i32>) =
            (None, None, None);
        let grant_type = match &grant {
            CodeGrant::Credits { credits } => {
                if *credits == 0 {
                    return Err(StoreError::InvalidInput("credits must be positive".into()));
                }
                credits_col = Some(amount(*credits)?);
                "credits"
            }
            CodeGrant::Plan {
                plan,
                name,
                days: d,
                daily_credits,
                utc_offset_secs,
            } => {
                plan_id = Some(plan);
                plan_name = Some(name);
                days = Some(i32::try_from(*d).map_err(|_| {
                    StoreError::InvalidInput(format!("{d} days is too many for a plan"))
                })?);
                daily = Some(amount(*daily_credits)?);
                offset = Some(*utc_offset_secs);
                "plan"
            }
        };
        let count_col = i32::try_from(count).unwrap_or(i32::MAX);
        // Drawn once: a run again (a hash collision) draws new ones.
        let mut attempts = Attempts::new();
        loop {
            attempts.next().await?;
            let mut codes = Vec::with_capacity(count as usize);
            let mut seen = std::collections::HashSet::with_capacity(count as usize);
            while codes.len() < count as usize {
                let code = random_redeem_code()?;
                if seen.insert(code.clone()) {
                    codes.push(code);
                }
            }
            let hashes: Vec<Vec<u8>> = codes.iter().map(|c| hash_code(c)).collect();
            let params: [(&(dyn ToSql + Sync), Type); 12] = [
                (&grant_type, Type::TEXT),
                (&credits_col, Type::INT8),
                (&plan_id, Type::TEXT),
                (&plan_name, Type::TEXT),
                (&days, Type::INT4),
                (&daily, Type::INT8),
                (&offset, Type::INT4),
                (&count_col, Type::INT4),
                (&now_ms, Type::INT8),
                (&expires_at_ms, Type::INT8),
                (&note, Type::TEXT),
                (&hashes, Type::BYTEA_ARRAY),
            ];
            // A unique violation: a generated code's hash exists (78 random bits: never in
            // practice); the whole statement rolled back, so draw again.
            let Some(rows) = self.run(CREATE, &params).await? else {
                continue;
            };
            let row = one(&rows)?;
            let id: i64 = col(row, "id")?;
            let batch = CodeBatch {
                id: credits(id, "code_batches", || id.to_string())?,
                grant,
                count,
                created_at_ms: now_ms,
                expires_at_ms,
                note: note.to_owned(),
                revoked_at_ms: None,
            };
            return Ok((
                batch,
                codes.iter().map(|c| display_redeem_code(c)).collect(),
            ));
        }
    }

    /// One batch.
    pub(crate) async fn code_batch(&self, id: u64) -> Result<Option<CodeBatch>, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        let sql = format!("SELECT {BATCH_COLS} FROM code_batches WHERE id = $1");
        let rows = self.rows(&sql, &[(&id, Type::INT8)]).await?;
        rows.first().map(batch_from).transpose()
    }

    /// The newest `limit` batches, newest first.
    pub(crate) async fn code_batches(&self, limit: usize) -> Result<Vec<CodeBatch>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!("SELECT {BATCH_COLS} FROM code_batches ORDER BY id DESC LIMIT $1");
        let rows = self.rows(&sql, &[(&limit, Type::INT8)]).await?;
        rows.iter().map(batch_from).collect()
    }

    /// The codes of a batch, in order.
    pub(crate) async fn batch_codes(&self, batch: u64) -> Result<Vec<CodeRecord>, StoreError> {
        let Ok(id) = i64::try_from(batch) else {
            return Ok(Vec::new());
        };
        let rows = self
            .rows(
                "SELECT batch, n, status, uid, at_ms FROM codes WHERE batch = $1 ORDER BY n",
                &[(&id, Type::INT8)],
            )
            .await?;
        rows.iter().map(code_from).collect()
    }

    /// Revokes the unused codes of a batch (used ones stay used); how many were revoked now,
    /// or `None` for an unknown batch. Revoking again revokes nothing more.
    pub(crate) async fn revoke_code_batch(
        &self,
        batch: u64,
        now_ms: i64,
    ) -> Result<Option<u32>, StoreError> {
        let Ok(id) = i64::try_from(batch) else {
            return Ok(None);
        };
        // A deadlock with a racing revocation of the same batch rolls back whole: again.
        let mut attempts = Attempts::new();
        let rows = loop {
            attempts.next().await?;
            if let Some(rows) = self
                .run(REVOKE, &[(&id, Type::INT8), (&now_ms, Type::INT8)])
                .await?
            {
                break rows;
            }
        };
        let row = one(&rows)?;
        if col::<i64>(row, "found")? == 0 {
            return Ok(None);
        }
        let n: i64 = col(row, "revoked")?;
        Ok(Some(u32::try_from(n).unwrap_or(u32::MAX)))
    }

    /// Redeems the code `input` (as typed) for `uid` (as `KvStore::redeem_code`): the code
    /// marked used and its grant written with the ledger entry `code:<id>`, in one
    /// transaction, or nothing changes.
    pub(crate) async fn redeem_code(
        &self,
        uid: Uid,
        input: &str,
        now_ms: i64,
    ) -> Result<RedeemOutcome, StoreError> {
        let Some(canonical) = normalize_redeem_code(input) else {
            return Ok(RedeemOutcome::Unknown);
        };
        let hash = hash_code(&canonical);
        let id = uid_param(uid)?;
        let mut attempts = Attempts::new();
        loop {
            attempts.next().await?;
            let mut conn = self.pool.get().await?;
            let tx = conn.transaction().await.map_err(fail)?;
            let outcome = match redeem_in(&tx, uid, id, &hash, now_ms).await {
                Ok(outcome) => outcome,
                Err(Retry::Again(_)) => continue,
                Err(Retry::Fail(e)) => return Err(e),
            };
            // Nothing written (an answer without a grant, or an error): rolled back on drop.
            if !matches!(outcome, RedeemOutcome::Redeemed { .. }) {
                return Ok(outcome);
            }
            match tx.commit().await.map_err(db_err) {
                Ok(()) => return Ok(outcome),
                Err(Retry::Again(_)) => continue,
                Err(Retry::Fail(e)) => return Err(e),
            }
        }
    }

    /// Every code redemption in the ledger as (time ms, credits), in no particular order.
    pub(crate) async fn code_redemptions(&self) -> Result<Vec<(i64, i64)>, StoreError> {
        let rows = self
            .rows(
                "SELECT at_ms, paid_delta FROM ledger WHERE reference LIKE 'code:%'",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((col(r, "at_ms")?, col(r, "paid_delta")?)))
            .collect()
    }
}

/// One redemption inside its transaction. `Retry::Again`: a conflict; run it all again.
async fn redeem_in(
    tx: &Transaction<'_>,
    uid: Uid,
    id: i64,
    hash: &[u8],
    now_ms: i64,
) -> Result<RedeemOutcome, Retry> {
    // No column of `code_batches` is named as one of `codes`'s selected here.
    let sql = "SELECT c.batch, c.n, c.status, c.uid, b.*
         FROM codes c JOIN code_batches b ON b.id = c.batch
         WHERE c.hash = $1 FOR UPDATE OF c";
    let rows = tx
        .query_typed(sql, &[(&hash, Type::BYTEA)])
        .await
        .map_err(db_err)?;
    let Some(row) = rows.first() else {
        return Ok(RedeemOutcome::Unknown);
    };
    let hard = Retry::Fail;
    let batch_id: i64 = col(row, "batch").map_err(hard)?;
    let n: i32 = col(row, "n").map_err(hard)?;
    let (batch_id, n) = (
        u64::try_from(batch_id).unwrap_or(0),
        u32::try_from(n).unwrap_or(0),
    );
    let code = code_id(batch_id, n);
    let status: String = col(row, "status").map_err(hard)?;
    match status.as_str() {
        "used" => {
            let by = uid_of(row, "uid").map_err(hard)?;
            return Ok(RedeemOutcome::AlreadyUsed { by_you: by == uid });
        }
        "revoked" => return Ok(RedeemOutcome::Revoked),
        _ => {}
    }
    let batch = batch_from(row).map_err(hard)?;
    if batch.expires_at_ms.is_some_and(|end| end <= now_ms) {
        return Ok(RedeemOutcome::Expired);
    }
    let (grant_credits, plan) = match &batch.grant {
        CodeGrant::Credits { credits } => (*credits, None),
        CodeGrant::Plan { days: 0, .. } => {
            return Err(hard(StoreError::Unsupported(
                "a plan code without days (made before plans existed)".into(),
            )));
        }
        grant => (0, grant.plan_grant()),
    };
    let reference = code_reference(batch_id, n);
    // The balance (and whether the user exists, and whether the entry does: a code unused
    // with its entry written is a damaged store, not a redemption to make).
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM users WHERE uid = $1) AS user_exists,
                EXISTS (SELECT 1 FROM ledger WHERE reference = $2) AS entry_exists,
                b.paid, b.uid AS balance_uid, {PLAN_COLS}
         FROM (SELECT 1) AS one
         LEFT JOIN (SELECT * FROM balances WHERE uid = $1 FOR UPDATE) AS b ON true"
    );
    let rows = tx
        .query_typed(&sql, &[(&id, Type::INT8), (&reference, Type::TEXT)])
        .await
        .map_err(db_err)?;
    let bal = one(&rows).map_err(hard)?;
    if !col::<bool>(bal, "user_exists").map_err(hard)? {
        return Err(hard(StoreError::UnknownUser(uid)));
    }
    if col::<bool>(bal, "entry_exists").map_err(hard)? {
        return Err(hard(StoreError::corrupt(
            "codes",
            &code,
            "unused, but its ledger entry exists",
        )));
    }
    if col::<Option<i64>>(bal, "balance_uid")
        .map_err(hard)?
        .is_none()
    {
        return Err(hard(StoreError::corrupt(
            "balances",
            uid.to_string(),
            "the user has no balance row",
        )));
    }
    let paid: i64 = col::<Option<i64>>(bal, "paid").map_err(hard)?.unwrap_or(0);
    let delta = amount(grant_credits).map_err(hard)?;
    if paid.checked_add(delta).is_none() {
        return Err(hard(StoreError::InvalidInput("credits overflow".into())));
    }
    let mut reason = format!("兑换码 {code}");
    let current = plan_from(bal).map_err(hard)?;
    let new_plan = plan.as_ref().map(|grant| {
        let p = crate::after_grant(current.as_ref(), grant, grant.day_of(now_ms));
        reason.push_str(&crate::plans::grant_note(&p));
        p
    });
    let (plan_id, plan_name) = (
        new_plan.as_ref().map(|p| p.id.as_str()),
        new_plan.as_ref().map(|p| p.name.as_str()),
    );
    let plan_daily = new_plan
        .as_ref()
        .map(|p| amount(p.daily_credits))
        .transpose()
        .map_err(hard)?;
    let (start, end) = (
        new_plan.as_ref().map(|p| p.start_day),
        new_plan.as_ref().map(|p| p.end_day),
    );
    let has_plan = new_plan.is_some();
    let kind = kind_name(EntryKind::Purchase);
    // $1 uid, $2 delta, $3 now, $4 reason, $5 reference, $6 kind, $7 has plan, $8..$12 plan,
    // $13 batch, $14 n.
    let sql = format!(
        "WITH b AS (
             UPDATE balances SET paid = paid + $2, next_seq = next_seq + 1,
                 plan_id = CASE WHEN $7 THEN $8 ELSE plan_id END,
                 plan_name = CASE WHEN $7 THEN $9 ELSE plan_name END,
                 plan_daily_credits = CASE WHEN $7 THEN $10 ELSE plan_daily_credits END,
                 plan_start_day = CASE WHEN $7 THEN $11 ELSE plan_start_day END,
                 plan_end_day = CASE WHEN $7 THEN $12 ELSE plan_end_day END
             WHERE uid = $1
             RETURNING uid, paid, next_seq - 1 AS seq),
         c AS (
             UPDATE codes SET status = 'used', uid = $1, at_ms = $3
             WHERE batch = $13 AND n = $14 AND status = 'unused'
             RETURNING 1)
         INSERT INTO ledger (uid, seq, at_ms, kind, free_delta, paid_delta, paid_after, reason,
                             reference)
         SELECT b.uid, b.seq, $3, $6, 0, $2, b.paid, $4, $5 FROM b WHERE EXISTS (SELECT 1 FROM c)
         RETURNING {ENTRY_COLS}"
    );
    let n_col = i32::try_from(n).unwrap_or(i32::MAX);
    let batch_col = i64::try_from(batch_id).unwrap_or(i64::MAX);
    let params: [(&(dyn ToSql + Sync), Type); 14] = [
        (&id, Type::INT8),
        (&delta, Type::INT8),
        (&now_ms, Type::INT8),
        (&reason, Type::TEXT),
        (&reference, Type::TEXT),
        (&kind, Type::TEXT),
        (&has_plan, Type::BOOL),
        (&plan_id, Type::TEXT),
        (&plan_name, Type::TEXT),
        (&plan_daily, Type::INT8),
        (&start, Type::INT8),
        (&end, Type::INT8),
        (&batch_col, Type::INT8),
        (&n_col, Type::INT4),
    ];
    let rows = tx.query_typed(&sql, &params).await.map_err(db_err)?;
    let Some(entry) = rows
        .first()
        .map(entry_from)
        .transpose()
        .map_err(hard)?
        .flatten()
    else {
        // The code was locked and unused above: it cannot have changed. Never a grant without
        // its entry (the transaction is dropped, so rolled back).
        return Err(hard(StoreError::Backend(format!(
            "code {code}: its redemption wrote no entry"
        ))));
    };
    Ok(RedeemOutcome::Redeemed {
        code,
        grant: batch.grant,
        entry: Box::new(entry),
    })
}

/// A batch from its columns ([`BATCH_COLS`]).
fn batch_from(row: &Row) -> Result<CodeBatch, StoreError> {
    let id: i64 = col(row, "id")?;
    let key = || id.to_string();
    let grant_type: String = col(row, "grant_type")?;
    let grant = match grant_type.as_str() {
        "credits" => CodeGrant::Credits {
            credits: credits(
                col::<Option<i64>>(row, "credits")?.unwrap_or(0),
                "code_batches",
                key,
            )?,
        },
        "plan" => CodeGrant::Plan {
            plan: col::<Option<String>>(row, "plan_id")?.unwrap_or_default(),
            name: col::<Option<String>>(row, "plan_name")?.unwrap_or_default(),
            days: u32::try_from(col::<Option<i32>>(row, "plan_days")?.unwrap_or(0))
                .map_err(|e| StoreError::corrupt("code_batches", key(), e))?,
            daily_credits: credits(
                col::<Option<i64>>(row, "plan_daily_credits")?.unwrap_or(0),
                "code_batches",
                key,
            )?,
            utc_offset_secs: col::<Option<i32>>(row, "plan_utc_offset_secs")?.unwrap_or(0),
        },
        other => {
            return Err(StoreError::corrupt(
                "code_batches",
                key(),
                format!("grant type {other:?}"),
            ));
        }
    };
    let count: i32 = col(row, "count")?;
    Ok(CodeBatch {
        id: credits(id, "code_batches", key)?,
        grant,
        count: u32::try_from(count).map_err(|e| StoreError::corrupt("code_batches", key(), e))?,
        created_at_ms: col(row, "created_at_ms")?,
        expires_at_ms: col(row, "expires_at_ms")?,
        note: col(row, "note")?,
        revoked_at_ms: col(row, "revoked_at_ms")?,
    })
}

/// A code from its columns.
fn code_from(row: &Row) -> Result<CodeRecord, StoreError> {
    let batch: i64 = col(row, "batch")?;
    let n: i32 = col(row, "n")?;
    let key = || format!("{batch}-{n}");
    let status: String = col(row, "status")?;
    let at: Option<i64> = col(row, "at_ms")?;
    let state = match (status.as_str(), at) {
        ("unused", _) => CodeState::Unused,
        ("used", Some(at_ms)) => CodeState::Used {
            uid: uid_of(row, "uid")?,
            at_ms,
        },
        ("revoked", Some(at_ms)) => CodeState::Revoked { at_ms },
        _ => {
            return Err(StoreError::corrupt(
                "codes",
                key(),
                format!("status {status:?} at {at:?}"),
            ));
        }
    };
    Ok(CodeRecord {
        batch: credits(batch, "codes", key)?,
        n: u32::try_from(n).map_err(|e| StoreError::corrupt("codes", key(), e))?,
        state,
    })
}

/// A transaction's own failure (begin), never retried.
fn fail(e: tokio_postgres::Error) -> StoreError {
    match db_err(e) {
        Retry::Again(e) | Retry::Fail(e) => e,
    }
}
