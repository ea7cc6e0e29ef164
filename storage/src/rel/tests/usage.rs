//! The usage log on PostgreSQL: the cases of `usage/tests.rs` (without the conversation
//! turns, which `append_turns` writes here), the same answers, plus the plan's part.

use super::assert_consistent;
use crate::rel::RelStore;
use crate::{
    CodeGrant, EntryKind, MAX_USAGE_PAGE, PlanGrant, RedeemOutcome, ReservationId, StoreError, Uid,
    UsageNote, UsageOutcome, UsageRecord,
};

const DAY: i64 = 100;
const FREE: u64 = 10;
const LATER: i64 = i64::MAX;

fn note(outcome: UsageOutcome) -> UsageNote<'static> {
    UsageNote {
        platform: "web",
        model: "gpt-4o",
        prompt_tokens: 120,
        completion_tokens: 30,
        outcome,
    }
}

async fn with_paid(store: &RelStore, paid: u64) -> Uid {
    let uid = store.create_user("u").await.unwrap().uid;
    if paid > 0 {
        store
            .grant(
                uid,
                paid,
                EntryKind::Purchase,
                "order",
                &format!("seed{uid}"),
                1,
            )
            .await
            .unwrap();
    }
    uid
}

/// Reserves and settles one answer of `cost` at `at_ms`; returns the reservation id.
async fn answer(
    store: &RelStore,
    uid: Uid,
    reference: &str,
    cost: u64,
    at_ms: i64,
) -> ReservationId {
    let id = store
        .reserve(uid, cost, reference, DAY, FREE, LATER)
        .await
        .unwrap();
    store
        .settle_metered(
            id,
            cost,
            "answer",
            DAY,
            FREE,
            at_ms,
            None,
            Some(note(UsageOutcome::Answered)),
        )
        .await
        .unwrap();
    id
}

async fn all_usage(store: &RelStore, uid: Uid) -> Vec<UsageRecord> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let page = store.usage(uid, before, MAX_USAGE_PAGE).await.unwrap();
        out.extend(page.records);
        match page.next {
            Some(next) => before = Some(next),
            None => return out,
        }
    }
}

/// What the ledger's usage entries of `uid` charged.
async fn ledger_usage_debits(store: &RelStore, uid: Uid) -> u64 {
    store
        .ledger(uid, 10_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == EntryKind::Usage)
        .map(|e| e.free_delta.saturating_add(e.paid_delta).unsigned_abs())
        .sum()
}
