//! The usage log: one record per metered answer, so users can see where their credits went.
//!
//! A record is written by the settlement of its answer, in the same transaction as the
//! ledger's usage entry ([`KvStore::settle_metered`]), and only by the call that settles: the
//! log's credits always add up to the ledger's usage debits, and settling again (a retry)
//! writes nothing. An answer refunded because it never reached its reader is marked in the
//! refund's transaction ([`KvStore::refund_answer`]).
//!
//! # Key and value
//! Key: uid ‖ time (ms) ‖ reservation id, 8 bytes big-endian each, so that a user's records
//! are one range in time order and a page (newest first, before a cursor) is one reverse
//! range scan. The reservation id is unique, so two answers in one millisecond both stay.
//!
//! Value: compact binary, not JSON (it is written on the settle's hot path, once per answer,
//! and kept for months): a format byte (`1`), the outcome's code, then LEB128 varints for
//! prompt tokens, completion tokens, free, paid and plan credits, refunded credits, the ledger
//! seq of the charge (0: nothing charged), and the platform and model as length-prefixed
//! UTF-8. Readers ignore bytes after the model, so later fields can be appended without a new
//! format; the `plan` part is what the membership plan's daily credits paid.
//!
//! Retention: [`KvStore::purge_usage`] removes records older than a cut-off, a few users per
//! call, in bounded transactions (the daemon's cleanup job, `[quota] usage_days`).

use crate::codec::{
    BINARY, OrAbort, Reader, TxResult, abort, check_key, finish, put_str, put_varint, u64_key,
};
use crate::kv::{Transactional, TxTree};
use crate::quota::{Settled, entry_by_reference, load_balance, store_balance};
use crate::{EntryKind, KvStore, LedgerEntry, ReservationId, StoreError, USAGE, USERS, Uid};

/// The most records one page of [`KvStore::usage`] returns.
pub const MAX_USAGE_PAGE: usize = 100;

/// Records removed per transaction by [`KvStore::purge_usage`].
const PURGE_BATCH: usize = 500;

/// The longest platform and model names kept (longer ones are cut at a character boundary).
const MAX_NAME: usize = 128;

/// How a metered answer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UsageOutcome {
    /// Answered to its end (or to what the payer could afford).
    Answered,
    /// Cut by an output content rule; what was generated is charged.
    Cut,
    /// Stopped by its reader part way; what was received is charged.
    Stopped,
    /// Charged, but never reached its reader: the credits were given back.
    Refunded,
}

impl UsageOutcome {
    /// The outcome's name in the API and the CLI: `answered`, `cut`, `stopped`, `refunded`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            UsageOutcome::Answered => "answered",
            UsageOutcome::Cut => "cut",
            UsageOutcome::Stopped => "stopped",
            UsageOutcome::Refunded => "refunded",
        }
    }

    fn code(self) -> u8 {
        match self {
            UsageOutcome::Answered => 1,
            UsageOutcome::Cut => 2,
            UsageOutcome::Stopped => 3,
            UsageOutcome::Refunded => 4,
        }
    }

    fn from_code(code: u8) -> Option<UsageOutcome> {
        Some(match code {
            1 => UsageOutcome::Answered,
            2 => UsageOutcome::Cut,
            3 => UsageOutcome::Stopped,
            4 => UsageOutcome::Refunded,
            _ => return None,
        })
    }
}

/// What the engine knows of an answer when it settles it (the credits come from the
/// settlement itself).
#[derive(Clone, Copy, Debug)]
pub struct UsageNote<'a> {
    /// The platform's short name (`web`, `api`, `mp`, ...).
    pub platform: &'a str,
    /// The model (or `image` for a drawing).
    pub model: &'a str,
    /// Prompt tokens (the upstream's count, else an estimate).
    pub prompt_tokens: u64,
    /// Completion tokens (likewise).
    pub completion_tokens: u64,
    /// How the answer ended.
    pub outcome: UsageOutcome,
}

/// One answer in the usage log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    /// Whose answer.
    pub uid: Uid,
    /// When it was settled, in ms since the Unix epoch.
    pub at_ms: i64,
    /// The reservation it was settled from (unique; part of the key).
    pub id: ReservationId,
    /// The platform's short name.
    pub platform: String,
    /// The model.
    pub model: String,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Credits charged from the day's free allowance.
    pub free: u64,
    /// Credits charged from paid credits.
    pub paid: u64,
    /// Credits charged from a membership plan's daily credits (beyond the base free allowance).
    pub plan: u64,
    /// Credits given back afterwards (an undelivered answer).
    pub refunded: u64,
    /// The seq of the ledger entry of the charge; `None` when nothing was charged.
    pub ledger_seq: Option<u64>,
    /// How it ended.
    pub outcome: UsageOutcome,
}

impl UsageRecord {
    /// Every credit charged: free + paid + plan (refunds are separate ledger entries).
    #[must_use]
    pub fn charged(&self) -> u64 {
        self.free
            .saturating_add(self.paid)
            .saturating_add(self.plan)
    }

    /// Where the page after this record starts.
    #[must_use]
    pub fn cursor(&self) -> UsageCursor {
        UsageCursor {
            at_ms: self.at_ms,
            id: self.id.0,
        }
    }
}

/// A position in a user's usage log (`AT_MS-ID`, the id a reservation's): records strictly
/// before it (older) come next.
pub type UsageCursor = crate::TimeCursor;

/// One page of a user's usage log, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsagePage {
    /// The records.
    pub records: Vec<UsageRecord>,
    /// Where the next (older) page starts; `None` when there is none.
    pub next: Option<UsageCursor>,
}

/// What one [`KvStore::purge_usage`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsagePurge {
    /// Records removed.
    pub removed: usize,
    /// The first user the next call should look at; `None` when this call reached the last
    /// user (a pass is complete).
    pub resume: Option<Uid>,
}

/// The key of a record.
fn usage_key(uid: Uid, at_ms: i64, id: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&uid.0.to_be_bytes());
    key[8..16].copy_from_slice(&u64::try_from(at_ms).unwrap_or(0).to_be_bytes());
    key[16..].copy_from_slice(&id.to_be_bytes());
    key
}

/// A [`UsageNote`] checked before its transaction: names cut to [`MAX_NAME`] bytes.
pub(crate) struct NoteBytes<'a> {
    note: UsageNote<'a>,
}

impl<'a> NoteBytes<'a> {
    /// Checks `note` (nothing to refuse today; names too long are cut).
    pub(crate) fn new(note: &UsageNote<'a>) -> Result<NoteBytes<'a>, StoreError> {
        Ok(NoteBytes {
            note: UsageNote {
                platform: cut(note.platform),
                model: cut(note.model),
                ..*note
            },
        })
    }
}

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

/// Writes the record of a settlement that just happened (`done.fresh`), inside its
/// transaction.
pub(crate) fn record_in(
    usage: &TxTree<'_>,
    id: ReservationId,
    now_ms: i64,
    done: &Settled,
    note: &NoteBytes<'_>,
) -> TxResult<()> {
    let charged = done.from_free.saturating_add(done.from_paid) > 0;
    let record = UsageRecord {
        uid: done.uid,
        at_ms: now_ms.max(0),
        id,
        platform: String::new(),
        model: String::new(),
        prompt_tokens: note.note.prompt_tokens,
        completion_tokens: note.note.completion_tokens,
        free: done.from_free.saturating_sub(done.from_plan),
        paid: done.from_paid,
        plan: done.from_plan,
        refunded: 0,
        ledger_seq: done.entry.as_ref().filter(|_| charged).map(|e| e.seq),
        outcome: note.note.outcome,
    };
    let value = encode_record(&record, note.note.platform, note.note.model);
    usage.insert(usage_key(done.uid, record.at_ms, id.0), value)?;
    Ok(())
}

/// The value of `r` (its `platform` and `model` given separately, to spare a copy).
fn encode_record(r: &UsageRecord, platform: &str, model: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + platform.len() + model.len());
    out.push(BINARY);
    out.push(r.outcome.code());
    for n in [
        r.prompt_tokens,
        r.completion_tokens,
        r.free,
        r.paid,
        r.plan,
        r.refunded,
        r.ledger_seq.unwrap_or(0),
    ] {
        put_varint(&mut out, n);
    }
    put_str(&mut out, platform);
    put_str(&mut out, model);
    out
}

/// Decodes a record from its key and value; a bad one is [`StoreError::Corrupt`].
pub(crate) fn read_record(key: &[u8], raw: &[u8]) -> Result<UsageRecord, StoreError> {
    let describe = || crate::codec::describe_bytes(key);
    let (Some(uid), Some(at), Some(id)) = (
        key.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()),
        key.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()),
        key.get(16..24).and_then(|b| <[u8; 8]>::try_from(b).ok()),
    ) else {
        return Err(StoreError::corrupt(
            USAGE,
            describe(),
            "key is not 24 bytes",
        ));
    };
    let mut r = Reader::new(raw);
    let decoded = (|| {
        if r.byte()? != BINARY {
            return None;
        }
        let outcome = UsageOutcome::from_code(r.byte()?)?;
        let mut n = [0u64; 7];
        for slot in &mut n {
            *slot = r.varint()?;
        }
        let [prompt, completion, free, paid, plan, refunded, seq] = n;
        Some(UsageRecord {
            uid: Uid(u64::from_be_bytes(uid)),
            at_ms: i64::try_from(u64::from_be_bytes(at)).ok()?,
            id: ReservationId(u64::from_be_bytes(id)),
            platform: r.text()?.to_owned(),
            model: r.text()?.to_owned(),
            prompt_tokens: prompt,
            completion_tokens: completion,
            free,
            paid,
            plan,
            refunded,
            ledger_seq: (seq > 0).then_some(seq),
            outcome,
        })
    })();
    decoded.ok_or_else(|| StoreError::corrupt(USAGE, describe(), "not a usage record"))
}

impl KvStore {
    /// A page of `uid`'s usage log, newest first: at most `limit` records (capped at
    /// [`MAX_USAGE_PAGE`]) older than `before` (all, when `None`). One range scan.
    pub fn usage(
        &self,
        uid: Uid,
        before: Option<UsageCursor>,
        limit: usize,
    ) -> Result<UsagePage, StoreError> {
        let limit = limit.clamp(1, MAX_USAGE_PAGE);
        let start = usage_key(uid, 0, 0);
        let end = match before {
            Some(c) => usage_key(uid, c.at_ms, c.id),
            None => usage_key(uid, i64::MAX, u64::MAX),
        };
        let t = self.trees()?;
        let mut pairs = t.usage.range_rev(start, end, limit + 1)?;
        // uid ‖ MAX ‖ MAX itself is outside the range; no record has that key anyway.
        let more = pairs.len() > limit;
        pairs.truncate(limit);
        let records = pairs
            .iter()
            .map(|(k, v)| read_record(k, v))
            .collect::<Result<Vec<_>, _>>()?;
        let next = if more {
            records.last().map(UsageRecord::cursor)
        } else {
            None
        };
        Ok(UsagePage { records, next })
    }

    /// Removes usage records settled before `before_ms` of up to `users` users, starting at
    /// uid `from` (pass [`Uid`]`(0)` to start a pass): per user one range scan of its oldest
    /// records, removed in transactions of at most 500. Call it again with
    /// `UsagePurge::resume` until that is `None`; each call's work is bounded by `users`.
    pub fn purge_usage(
        &self,
        before_ms: i64,
        from: Uid,
        users: usize,
    ) -> Result<UsagePurge, StoreError> {
        let t = self.trees()?;
        let mut uids = Vec::with_capacity(users.min(4096));
        for item in t.users.range(u64_key(from.0), [0xffu8; 9]) {
            let (key, _) = item?;
            uids.push(Uid(crate::codec::read_u64_key(USERS, &key)?));
            if uids.len() > users {
                break;
            }
        }
        let resume = if uids.len() > users { uids.pop() } else { None };
        let mut removed = 0;
        for uid in uids {
            let (start, end) = (usage_key(uid, 0, 0), usage_key(uid, before_ms.max(0), 0));
            loop {
                let old: Vec<Vec<u8>> = t
                    .usage
                    .range(start, end)
                    .take(PURGE_BATCH)
                    .map(|item| item.map(|(k, _)| k))
                    .collect::<Result<_, _>>()?;
                if old.is_empty() {
                    break;
                }
                let _writing = self.writing();
                finish(t.usage.transaction(|usage| {
                    for key in &old {
                        usage.remove(key)?;
                    }
                    Ok(())
                }))?;
                removed += old.len();
                if old.len() < PURGE_BATCH {
                    break;
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "purged old usage records");
        }
        Ok(UsagePurge { removed, resume })
    }

    /// Gives back `credits` (as paid credits, a [`EntryKind::Refund`] entry with reference
    /// `refund_reference`) charged for the answer settled from the reservation of
    /// `answer_reference`, and marks its usage record refunded, in one transaction.
    /// Idempotent on `refund_reference`: applying it again changes nothing and returns the
    /// original entry. The record is marked only while the settlement is remembered (a day).
    pub fn refund_answer(
        &self,
        uid: Uid,
        credits: u64,
        reason: &str,
        refund_reference: &str,
        answer_reference: &str,
        now_ms: i64,
    ) -> Result<LedgerEntry, StoreError> {
        let _writing = self.writing();
        check_key("reference", refund_reference)?;
        check_key("reference", answer_reference)?;
        let delta = match crate::codec::to_delta(credits) {
            Ok(d) if d > 0 => d,
            _ => {
                return Err(StoreError::InvalidInput(
                    "credits must be positive".to_owned(),
                ));
            }
        };
        let t = self.trees()?;
        let trees = (
            &t.users,
            &t.balances,
            &t.ledger,
            &t.ledger_refs,
            &t.reservation_refs,
            &t.settled_reservations,
            &t.usage,
        );
        finish(trees.transaction(
            |(users, balances, ledger, ledger_refs, res_refs, settled, usage)| {
                if let Some(existing) = entry_by_reference(ledger_refs, ledger, refund_reference)? {
                    return Ok(existing);
                }
                if users.get(u64_key(uid.0))?.is_none() {
                    return abort(StoreError::UnknownUser(uid));
                }
                let mut balance = load_balance(balances, uid)?;
                balance.paid = match balance
                    .paid
                    .checked_add(credits)
                    .filter(|p| crate::codec::to_delta(*p).is_ok())
                {
                    Some(paid) => paid,
                    None => {
                        return abort(StoreError::InvalidInput(format!(
                            "granting {credits} would overflow"
                        )));
                    }
                };
                let change = crate::quota::Change {
                    uid,
                    at_ms: now_ms,
                    kind: EntryKind::Refund,
                    free_delta: 0,
                    paid_delta: delta,
                    reason,
                    reference: refund_reference,
                };
                let entry = crate::quota::append_entry(&mut balance, ledger, ledger_refs, change)?;
                store_balance(balances, uid, &balance)?;
                mark_refunded(res_refs, settled, usage, uid, answer_reference, credits)?;
                Ok(entry)
            },
        ))
    }
}

/// Marks the usage record of the answer settled from `answer_reference`'s reservation as
/// refunded (if the settlement is still remembered and the record is `uid`'s).
fn mark_refunded(
    res_refs: &TxTree<'_>,
    settled: &TxTree<'_>,
    usage: &TxTree<'_>,
    uid: Uid,
    answer_reference: &str,
    credits: u64,
) -> TxResult<()> {
    let Some(raw) = res_refs.get(answer_reference.as_bytes())? else {
        return Ok(());
    };
    let id =
        crate::quota::value::read_reservation_ref(answer_reference.as_bytes(), &raw).or_abort()?;
    let Some(raw) = settled.get(u64_key(id.0))? else {
        return Ok(());
    };
    let done = crate::quota::value::read_settled(id, &raw).or_abort()?;
    if done.uid != uid {
        return Ok(());
    }
    let key = usage_key(uid, done.settled_at_ms.max(0), id.0);
    let Some(raw) = usage.get(key)? else {
        return Ok(());
    };
    let mut record = read_record(&key, &raw).or_abort()?;
    record.refunded = record.refunded.saturating_add(credits);
    record.outcome = UsageOutcome::Refunded;
    let value = encode_record(&record, &record.platform, &record.model);
    usage.insert(key, value)?;
    Ok(())
}

#[cfg(test)]
mod tests;
