//! Redemption codes (卡密): batches of single-use codes an operator sells through a card shop
//! or a group chat, each granting credits or a membership plan when a user redeems it.
//!
//! A code is shown once, when its batch is made; the store keeps only the SHA-256 of its
//! canonical form (`code_hashes`), so a leaked database gives no code away. Every code of a
//! batch has an id `<batch>-<n>` (n from 1), and its redemption is the ledger entry with the
//! reference `code:<batch>-<n>`, written in the same transaction that marks the code used:
//! however many users redeem one code at the same moment, one gets the credits.
//!
//! Trees: `code_batches` (batch id → [`CodeBatch`]), `codes` (batch ‖ n → [`CodeRecord`]),
//! `code_hashes` (SHA-256 of the canonical code → batch ‖ n).

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::codec::{
    OrAbort, abort, decode, encode, finish, pair_key, read_pair_key, to_delta, u64_key,
};
use crate::kv::Transactional;
use crate::quota::{Change, append_entry, entry_by_reference, load_balance, store_balance};
use crate::{CODE_BATCHES, CODE_HASHES, CODES, EntryKind, KvStore, LedgerEntry, StoreError, Uid};

/// The most codes one batch may hold.
pub const MAX_CODES_PER_BATCH: u32 = 10_000;

/// Symbols in a redemption code (without the dashes).
pub const REDEEM_CODE_CHARS: usize = 16;

/// The alphabet of redemption codes: digits and upper-case letters without the look-alikes
/// 0/O, 1/I/L and U (read as V), so a code read off a card or a screenshot is typed right.
///
/// 16 symbols of 30: 30^16 ≈ 4.3e23 (78 bits). With a million live codes, a guess succeeds
/// with probability 2.3e-18; the per-user and per-address failure limits allow a few hundred
/// guesses a day per attacker.
pub const REDEEM_CODE_ALPHABET: &[u8; 30] = b"23456789ABCDEFGHJKMNPQRSTVWXYZ";

/// What a code grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CodeGrant {
    /// Paid credits.
    Credits {
        /// How many.
        credits: u64,
    },
    /// A membership plan: `[[plans]]` as it was when the batch was made.
    Plan {
        /// The plan's id.
        plan: String,
        /// Its name.
        #[serde(default)]
        name: String,
        /// How many days a code gives.
        #[serde(default)]
        days: u32,
        /// Credits a day.
        #[serde(default)]
        daily_credits: u64,
        /// The quota timezone's offset (seconds east of UTC) its days are counted in.
        #[serde(default)]
        utc_offset_secs: i32,
    },
}

impl CodeGrant {
    /// A plan code's grant.
    #[must_use]
    pub fn plan_grant(&self) -> Option<crate::PlanGrant> {
        match self {
            CodeGrant::Credits { .. } => None,
            CodeGrant::Plan {
                plan,
                name,
                days,
                daily_credits,
                utc_offset_secs,
            } => Some(crate::PlanGrant {
                id: plan.clone(),
                name: name.clone(),
                days: *days,
                daily_credits: *daily_credits,
                utc_offset_secs: *utc_offset_secs,
            }),
        }
    }

    /// The grant of a plan code.
    #[must_use]
    pub fn of_plan(grant: &crate::PlanGrant) -> Self {
        CodeGrant::Plan {
            plan: grant.id.clone(),
            name: grant.name.clone(),
            days: grant.days,
            daily_credits: grant.daily_credits,
            utc_offset_secs: grant.utc_offset_secs,
        }
    }
}

/// A batch of codes, as made by [`KvStore::create_code_batch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeBatch {
    /// The batch id.
    pub id: u64,
    /// What each code grants.
    pub grant: CodeGrant,
    /// How many codes it holds (ids `<id>-1` to `<id>-<count>`).
    pub count: u32,
    /// When it was made, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// When its codes stop working (`None`: never).
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
    /// The operator's note (the shop, the campaign).
    #[serde(default)]
    pub note: String,
    /// When it was revoked, if it was.
    #[serde(default)]
    pub revoked_at_ms: Option<i64>,
}

/// Where one code stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CodeState {
    /// Not redeemed yet (it may have expired: see the batch).
    Unused,
    /// Redeemed.
    Used {
        /// By whom.
        uid: Uid,
        /// When, ms since the Unix epoch.
        at_ms: i64,
    },
    /// Revoked by an operator before anyone redeemed it.
    Revoked {
        /// When, ms since the Unix epoch.
        at_ms: i64,
    },
}

/// One code of a batch (never its text: only its hash is stored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRecord {
    /// Its batch.
    pub batch: u64,
    /// Its number in the batch, from 1.
    pub n: u32,
    /// Where it stands.
    pub state: CodeState,
}

impl CodeRecord {
    /// The code's id, `<batch>-<n>`: what lists show and its ledger reference names.
    #[must_use]
    pub fn id(&self) -> String {
        code_id(self.batch, self.n)
    }
}

/// What a redemption attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedeemOutcome {
    /// The code was unused: its grant is the user's now.
    Redeemed {
        /// The code's id.
        code: String,
        /// What it granted.
        grant: CodeGrant,
        /// The ledger entry (reference `code:<id>`).
        entry: Box<LedgerEntry>,
    },
    /// No such code (or the text cannot be a code).
    Unknown,
    /// Redeemed before (by this user when `by_you`).
    AlreadyUsed {
        /// Whether it was this user.
        by_you: bool,
    },
    /// Revoked by an operator.
    Revoked,
    /// Its batch expired.
    Expired,
}

/// The id of code `n` of `batch`.
#[must_use]
pub fn code_id(batch: u64, n: u32) -> String {
    format!("{batch}-{n}")
}

/// The ledger reference of a code's redemption.
#[must_use]
pub fn code_reference(batch: u64, n: u32) -> String {
    format!("code:{}", code_id(batch, n))
}

/// The canonical form of what a user typed (upper case, no dashes or spaces; full-width
/// characters read as their ASCII twins), or `None` when it cannot be a code.
#[must_use]
pub fn normalize_redeem_code(input: &str) -> Option<String> {
    let mut out = String::with_capacity(REDEEM_CODE_CHARS);
    for c in input.chars() {
        // Full-width forms (a Chinese keyboard's ＡＢ１２－) as ASCII.
        let c = match u32::from(c) {
            0xFF01..=0xFF5E => char::from_u32(u32::from(c) - 0xFEE0).unwrap_or(c),
            0x3000 => ' ',
            _ => c,
        };
        if c.is_whitespace() || matches!(c, '-' | '_' | '‐' | '–' | '—') {
            continue;
        }
        let c = c.to_ascii_uppercase();
        if !c.is_ascii() || !REDEEM_CODE_ALPHABET.contains(&(c as u8)) {
            return None;
        }
        if out.len() == REDEEM_CODE_CHARS {
            return None;
        }
        out.push(c);
    }
    (out.len() == REDEEM_CODE_CHARS).then_some(out)
}

/// How a code is shown: groups of four (`K7QM-2XRT-9HWA-PZ3C`).
#[must_use]
pub fn display_redeem_code(canonical: &str) -> String {
    let chars: Vec<char> = canonical.chars().collect();
    chars
        .chunks(4)
        .map(|g| g.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// A fresh code in canonical form, every symbol drawn uniformly from the system CSPRNG
/// (bytes of 240 or more are drawn again, so no symbol is likelier than another).
pub fn random_redeem_code() -> Result<String, StoreError> {
    let rng = SystemRandom::new();
    let n = REDEEM_CODE_ALPHABET.len();
    let limit = 256 - 256 % n;
    let mut out = String::with_capacity(REDEEM_CODE_CHARS);
    let mut buf = [0u8; 32];
    while out.len() < REDEEM_CODE_CHARS {
        rng.fill(&mut buf).map_err(|_| StoreError::Rng)?;
        for b in buf {
            let b = usize::from(b);
            if b < limit && out.len() < REDEEM_CODE_CHARS {
                out.push(char::from(REDEEM_CODE_ALPHABET[b % n]));
            }
        }
    }
    Ok(out)
}

fn hash_code(canonical: &str) -> [u8; 32] {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest(&SHA256, canonical.as_bytes()).as_ref());
    hash
}

fn code_key(batch: u64, n: u32) -> [u8; 16] {
    pair_key(batch, u64::from(n))
}

impl KvStore {
    /// Makes a batch of `count` codes granting `grant`, in one transaction; returns the batch
    /// and its codes in display form (`XXXX-XXXX-XXXX-XXXX`, in order of their ids: the only
    /// time they are seen).
    pub fn create_code_batch(
        &self,
        grant: CodeGrant,
        count: u32,
        expires_at_ms: Option<i64>,
        note: &str,
        now_ms: i64,
    ) -> Result<(CodeBatch, Vec<String>), StoreError> {
        let _writing = self.writing();
        if count == 0 || count > MAX_CODES_PER_BATCH {
            return Err(StoreError::InvalidInput(format!(
                "count must be 1 to {MAX_CODES_PER_BATCH}"
            )));
        }
        if let CodeGrant::Credits { credits } = &grant {
            if *credits == 0 {
                return Err(StoreError::InvalidInput("credits must be positive".into()));
            }
            to_delta(*credits)?;
        }
        // From 1: sled's ids start at 0, and "batch 0" reads like a missing value.
        let id = self.trees()?.db.generate_id()?.saturating_add(1);
        let batch = CodeBatch {
            id,
            grant,
            count,
            created_at_ms: now_ms,
            expires_at_ms,
            note: note.to_owned(),
            revoked_at_ms: None,
        };
        // Drawn outside the transaction, which may run more than once.
        let mut codes = Vec::with_capacity(count as usize);
        let mut seen = std::collections::HashSet::with_capacity(count as usize);
        while codes.len() < count as usize {
            let code = random_redeem_code()?;
            if seen.insert(code.clone()) {
                codes.push(code);
            }
        }
        let hashes: Vec<[u8; 32]> = codes.iter().map(|c| hash_code(c)).collect();
        let t = self.trees()?;
        finish((&t.code_batches, &t.codes, &t.code_hashes).transaction(
            |(batches, records, by_hash)| {
                batches.insert(u64_key(id), encode(&batch).or_abort()?)?;
                for (i, hash) in hashes.iter().enumerate() {
                    let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
                    if by_hash.get(hash)?.is_some() {
                        // 78 random bits: never in practice; refused rather than shared.
                        return abort(StoreError::InvalidInput(
                            "a generated code already exists; try again".into(),
                        ));
                    }
                    let record = CodeRecord {
                        batch: id,
                        n,
                        state: CodeState::Unused,
                    };
                    records.insert(code_key(id, n), encode(&record).or_abort()?)?;
                    by_hash.insert(hash, code_key(id, n))?;
                }
                Ok(())
            },
        ))?;
        Ok((
            batch,
            codes.iter().map(|c| display_redeem_code(c)).collect(),
        ))
    }

    /// One batch.
    pub fn code_batch(&self, id: u64) -> Result<Option<CodeBatch>, StoreError> {
        match self.trees()?.code_batches.get(u64_key(id))? {
            Some(raw) => decode(CODE_BATCHES, &raw, || id.to_string()).map(Some),
            None => Ok(None),
        }
    }

    /// The newest `limit` batches, newest first.
    pub fn code_batches(&self, limit: usize) -> Result<Vec<CodeBatch>, StoreError> {
        let mut out = Vec::new();
        for (key, raw) in self.trees()?.code_batches.scan_prefix_rev([], limit)? {
            out.push(decode(CODE_BATCHES, &raw, || {
                crate::codec::describe_bytes(&key)
            })?);
        }
        Ok(out)
    }

    /// The codes of a batch, in order.
    pub fn batch_codes(&self, batch: u64) -> Result<Vec<CodeRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.trees()?.codes.scan_prefix(u64_key(batch)) {
            let (key, raw) = item?;
            let (b, n) = read_pair_key(CODES, &key)?;
            out.push(decode(CODES, &raw, || format!("{b}-{n}"))?);
        }
        Ok(out)
    }

    /// Revokes the unused codes of a batch, in one transaction (used ones stay used); returns
    /// how many were revoked now, or `None` for an unknown batch. Revoking again revokes
    /// nothing more.
    pub fn revoke_code_batch(&self, batch: u64, now_ms: i64) -> Result<Option<u32>, StoreError> {
        let _writing = self.writing();
        let t = self.trees()?;
        finish(
            (&t.code_batches, &t.codes).transaction(|(batches, records)| {
                let Some(raw) = batches.get(u64_key(batch))? else {
                    return Ok(None);
                };
                let mut b: CodeBatch =
                    decode(CODE_BATCHES, &raw, || batch.to_string()).or_abort()?;
                let mut revoked = 0u32;
                for n in 1..=b.count {
                    let Some(raw) = records.get(code_key(batch, n))? else {
                        continue;
                    };
                    let mut record: CodeRecord =
                        decode(CODES, &raw, || code_id(batch, n)).or_abort()?;
                    if record.state == CodeState::Unused {
                        record.state = CodeState::Revoked { at_ms: now_ms };
                        records.insert(code_key(batch, n), encode(&record).or_abort()?)?;
                        revoked += 1;
                    }
                }
                if b.revoked_at_ms.is_none() {
                    b.revoked_at_ms = Some(now_ms);
                    batches.insert(u64_key(batch), encode(&b).or_abort()?)?;
                }
                Ok(Some(revoked))
            }),
        )
    }

    /// Redeems the code `input` (as typed: see [`normalize_redeem_code`]) for `uid`, in one
    /// transaction: the code is marked used and its credits written to the ledger with the
    /// reference `code:<id>`, or nothing changes. A plan code grants or extends the plan
    /// ([`crate::after_grant`]) in the same transaction, its ledger entry changing no credits.
    pub fn redeem_code(
        &self,
        uid: Uid,
        input: &str,
        now_ms: i64,
    ) -> Result<RedeemOutcome, StoreError> {
        let _writing = self.writing();
        let Some(canonical) = normalize_redeem_code(input) else {
            return Ok(RedeemOutcome::Unknown);
        };
        let hash = hash_code(&canonical);
        let t = self.trees()?;
        let trees = (
            &t.code_hashes,
            &t.codes,
            &t.code_batches,
            &t.users,
            &t.balances,
            &t.ledger,
            &t.ledger_refs,
        );
        finish(trees.transaction(
            |(by_hash, records, batches, users, balances, ledger, ledger_refs)| {
                let Some(at) = by_hash.get(hash)? else {
                    return Ok(RedeemOutcome::Unknown);
                };
                let (batch, n) = read_pair_key(CODE_HASHES, &at).or_abort()?;
                let n = u32::try_from(n).unwrap_or(u32::MAX);
                let id = code_id(batch, n);
                let Some(raw) = records.get(code_key(batch, n))? else {
                    return abort(StoreError::corrupt(CODE_HASHES, &id, "code record missing"));
                };
                let mut record: CodeRecord = decode(CODES, &raw, || id.clone()).or_abort()?;
                match record.state {
                    CodeState::Used { uid: by, .. } => {
                        return Ok(RedeemOutcome::AlreadyUsed { by_you: by == uid });
                    }
                    CodeState::Revoked { .. } => return Ok(RedeemOutcome::Revoked),
                    CodeState::Unused => {}
                }
                let Some(raw) = batches.get(u64_key(batch))? else {
                    return abort(StoreError::corrupt(CODES, &id, "batch missing"));
                };
                let b: CodeBatch = decode(CODE_BATCHES, &raw, || batch.to_string()).or_abort()?;
                if b.expires_at_ms.is_some_and(|end| end <= now_ms) {
                    return Ok(RedeemOutcome::Expired);
                }
                let (credits, plan) = match &b.grant {
                    CodeGrant::Credits { credits } => (*credits, None),
                    CodeGrant::Plan { days: 0, .. } => {
                        return abort(StoreError::Unsupported(
                            "a plan code without days (made before plans existed)".into(),
                        ));
                    }
                    grant => (0, grant.plan_grant()),
                };
                if users.get(u64_key(uid.0))?.is_none() {
                    return abort(StoreError::UnknownUser(uid));
                }
                let reference = code_reference(batch, n);
                if entry_by_reference(ledger_refs, ledger, &reference)?.is_some() {
                    return abort(StoreError::corrupt(
                        CODES,
                        &id,
                        "unused, but its ledger entry exists",
                    ));
                }
                let mut balance = load_balance(balances, uid)?;
                let delta = to_delta(credits).or_abort()?;
                balance.paid = match balance.paid.checked_add(credits) {
                    Some(p) if to_delta(p).is_ok() => p,
                    _ => return abort(StoreError::InvalidInput("credits overflow".into())),
                };
                let mut reason = format!("兑换码 {id}");
                // A plan code: the plan changes with the zero-credit entry that records it.
                if let Some(grant) = &plan {
                    crate::plans::apply_grant(&mut balance, grant, now_ms, &mut reason);
                }
                let entry = append_entry(
                    &mut balance,
                    ledger,
                    ledger_refs,
                    Change {
                        uid,
                        at_ms: now_ms,
                        kind: EntryKind::Purchase,
                        free_delta: 0,
                        paid_delta: delta,
                        reason: &reason,
                        reference: &reference,
                    },
                )?;
                store_balance(balances, uid, &balance)?;
                record.state = CodeState::Used { uid, at_ms: now_ms };
                records.insert(code_key(batch, n), encode(&record).or_abort()?)?;
                Ok(RedeemOutcome::Redeemed {
                    code: id,
                    grant: b.grant.clone(),
                    entry: Box::new(entry),
                })
            },
        ))
    }

    /// Every code redemption in the ledger as (time ms, credits), in no particular order:
    /// what the per-day statistics count.
    pub fn code_redemptions(&self) -> Result<Vec<(i64, i64)>, StoreError> {
        let t = self.trees()?;
        let mut out = Vec::new();
        for item in t.ledger_refs.scan_prefix(b"code:") {
            let (key, raw) = item?;
            let at = crate::quota::value::read_ref(&key, &raw)?;
            let Some(raw) = t.ledger.get(pair_key(at.uid.0, at.seq))? else {
                continue;
            };
            let entry = crate::quota::value::read_entry(at.uid.0, at.seq, &raw)?;
            out.push((entry.at_ms, entry.paid_delta));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
