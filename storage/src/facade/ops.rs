//! The operations with one meaning on both engines, delegated by the `both!` macro.

use chatrelay_core::UserKey;

use super::{Engine, Store, both};
use crate::{
    ActivePlan, Admission, Balance, ChangeCursor, ChangePage, ChangeRecord, Chat, ChatLimits,
    ChatMessage, ChatPut, ChatSummary, CodeBatch, CodeGrant, CodeRecord, CreditOutcome, EntryKind,
    LedgerEntry, LoginCode, Order, OrderEvent, RedeemOutcome, ReservationId, SharedAnswer,
    StoreError, TokenInfo, Turn, Uid, UsageCursor, UsagePage, User,
};

both! {
    fn add_counters(&self, deltas: &[(String, u64)], markers: &[String]) -> Result<(), StoreError>;
    fn add_order_event(&self, id: &str, kind: &str, detail: &str, now_ms: i64) -> Result<(), StoreError>;
    fn admit(&self, key: &UserKey, display_name: Option<&str>, mark: &str, expires_at_ms: i64, now_ms: i64) -> Result<Admission, StoreError>;
    fn append_turns(&self, key: &str, turns: &[Turn], max_turns: usize) -> Result<(), StoreError>;
    fn balance(&self, uid: Uid, today: i64, free_daily: u64) -> Result<Balance, StoreError>;
    fn batch_codes(&self, batch: u64) -> Result<Vec<CodeRecord>, StoreError>;
    fn bump_counter(&self, key: &str) -> Result<u64, StoreError>;
    fn change_groups(&self, uid: Uid, add: &[String], remove: &[String]) -> Result<User, StoreError>;
    fn changes(&self, before: Option<ChangeCursor>, limit: usize) -> Result<ChangePage, StoreError>;
    fn chat(&self, uid: Uid, id: &str) -> Result<Option<Chat>, StoreError>;
    fn chats(&self, uid: Uid) -> Result<Vec<ChatSummary>, StoreError>;
    fn checkpoint(&self, key: &str) -> Result<Option<String>, StoreError>;
    fn checkpoint_cas(&self, key: &str, expected: Option<&str>, new: &str) -> Result<bool, StoreError>;
    fn clear_conversation(&self, key: &str) -> Result<(), StoreError>;
    fn close_order(&self, id: &str, now_ms: i64) -> Result<Order, StoreError>;
    fn code_batch(&self, id: u64) -> Result<Option<CodeBatch>, StoreError>;
    fn consume_login_code(&self, code: &str, now_ms: i64) -> Result<Option<Uid>, StoreError>;
    fn conversation(&self, key: &str) -> Result<Vec<Turn>, StoreError>;
    fn counter(&self, key: &str) -> Result<u64, StoreError>;
    fn create_code_batch(&self, grant: CodeGrant, count: u32, expires_at_ms: Option<i64>, note: &str, now_ms: i64) -> Result<(CodeBatch, Vec<String>), StoreError>;
    fn create_order(&self, order: &Order, now_ms: i64) -> Result<Order, StoreError>;
    fn create_token(&self, uid: Uid, label: &str, expires_at_ms: Option<i64>, now_ms: i64) -> Result<String, StoreError>;
    fn create_user(&self, name: &str) -> Result<User, StoreError>;
    fn credit_order(&self, id: &str, paid_fen: i64, provider_trade_no: Option<&str>, now_ms: i64) -> Result<CreditOutcome, StoreError>;
    fn debit(&self, uid: Uid, credits: u64, kind: EntryKind, reason: &str, reference: &str, now_ms: i64) -> Result<LedgerEntry, StoreError>;
    fn dedupe_bind(&self, key: &str, bound: &str, expires_at_ms: i64, now_ms: i64) -> Result<bool, StoreError>;
    fn dedupe_insert(&self, key: &str, expires_at_ms: i64, now_ms: i64) -> Result<bool, StoreError>;
    fn delete_chat(&self, uid: Uid, id: &str) -> Result<bool, StoreError>;
    fn delete_chats_of(&self, uid: Uid) -> Result<usize, StoreError>;
    fn grant(&self, uid: Uid, credits: u64, kind: EntryKind, reason: &str, reference: &str, now_ms: i64) -> Result<LedgerEntry, StoreError>;
    fn handoff(&self, key: &str, now_ms: i64) -> Result<Option<String>, StoreError>;
    fn identities_of(&self, uid: Uid) -> Result<Vec<UserKey>, StoreError>;
    fn identity(&self, key: &UserKey) -> Result<Option<Uid>, StoreError>;
    fn ledger(&self, uid: Uid, limit: usize) -> Result<Vec<LedgerEntry>, StoreError>;
    fn ledger_by_reference(&self, reference: &str) -> Result<Option<LedgerEntry>, StoreError>;
    fn ledger_page(&self, uid: Uid, before: Option<u64>, limit: usize) -> Result<(Vec<LedgerEntry>, Option<u64>), StoreError>;
    fn link_identity(&self, key: &UserKey, uid: Uid) -> Result<Option<Uid>, StoreError>;
    fn login_code(&self, uid: Uid, ttl_ms: i64, now_ms: i64) -> Result<LoginCode, StoreError>;
    fn order(&self, id: &str) -> Result<Option<Order>, StoreError>;
    fn order_events(&self, id: &str) -> Result<Vec<OrderEvent>, StoreError>;
    fn outbox_len(&self, key: &str) -> Result<usize, StoreError>;
    fn outbox_push(&self, key: &str, text: &str) -> Result<(), StoreError>;
    fn outbox_take(&self, key: &str) -> Result<Vec<String>, StoreError>;
    fn plan(&self, uid: Uid) -> Result<Option<ActivePlan>, StoreError>;
    fn put_answer(&self, key: &str, answer: &SharedAnswer) -> Result<(), StoreError>;
    fn put_chat(&self, uid: Uid, id: &str, title: &str, messages: &[ChatMessage], base: Option<i64>, now_ms: i64, limits: ChatLimits) -> Result<ChatPut, StoreError>;
    fn put_handoff(&self, key: &str, value: &str, expires_at_ms: i64) -> Result<(), StoreError>;
    fn record_change(&self, change: ChangeRecord) -> Result<ChangeRecord, StoreError>;
    fn redeem_code(&self, uid: Uid, input: &str, now_ms: i64) -> Result<RedeemOutcome, StoreError>;
    fn refund_order(&self, id: &str, reason: &str, now_ms: i64) -> Result<(Order, Option<LedgerEntry>), StoreError>;
    fn release(&self, id: ReservationId) -> Result<bool, StoreError>;
    fn rename_chat(&self, uid: Uid, id: &str, title: &str, now_ms: i64) -> Result<Option<i64>, StoreError>;
    fn resolve_identity(&self, key: &UserKey, display_name: Option<&str>) -> Result<Uid, StoreError>;
    fn revoke_code_batch(&self, batch: u64, now_ms: i64) -> Result<Option<u32>, StoreError>;
    fn revoke_token(&self, token: &str, now_ms: i64) -> Result<bool, StoreError>;
    fn revoke_token_by_hash(&self, uid: Uid, prefix: &str, now_ms: i64) -> Result<bool, StoreError>;
    fn set_banned(&self, uid: Uid, banned: bool, reason: Option<&str>) -> Result<User, StoreError>;
    fn set_checkpoint(&self, key: &str, value: Option<&str>) -> Result<(), StoreError>;
    fn set_order_code_url(&self, id: &str, code_url: &str) -> Result<Order, StoreError>;
    fn settle(&self, id: ReservationId, actual: u64, reason: &str, today: i64, free_daily: u64, now_ms: i64) -> Result<Option<LedgerEntry>, StoreError>;
    fn shared_answer(&self, key: &str, now_ms: i64) -> Result<Option<SharedAnswer>, StoreError>;
    fn swap_handoff(&self, key: &str, expected: &str, new: &str, expires_at_ms: i64, now_ms: i64) -> Result<bool, StoreError>;
    fn take_handoff(&self, key: &str, now_ms: i64) -> Result<Option<String>, StoreError>;
    fn token_uid(&self, token: &str, now_ms: i64) -> Result<Option<Uid>, StoreError>;
    fn tokens_of(&self, uid: Uid) -> Result<Vec<TokenInfo>, StoreError>;
    fn unlink_identity(&self, key: &UserKey) -> Result<bool, StoreError>;
    fn usage(&self, uid: Uid, before: Option<UsageCursor>, limit: usize) -> Result<UsagePage, StoreError>;
    fn user(&self, uid: Uid) -> Result<Option<User>, StoreError>;
}
