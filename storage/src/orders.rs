//! Orders for credit packs and their state machine: `created → credited` (paid and credited
//! in one transaction), `created → closed`, `closed → credited` (a payment that arrives after
//! a local close: the provider is the truth), `credited → refunded`.
//!
//! Crediting writes the order's new state, the purchase ledger entry (reference
//! `order:<id>`) and the balance in one transaction, so an order is credited exactly once
//! whatever arrives twice. What happened to an order (provider calls, notifications) is kept
//! as a list of events beside it.

use crate::kv::Transactional;
use serde::{Deserialize, Serialize};

use crate::codec::{OrAbort, abort, check_key, decode, encode, finish, prefixed_key, u64_key};
use crate::quota::{Change, append_entry, entry_by_reference, load_balance, store_balance};
use crate::{EntryKind, KvStore, LedgerEntry, OPEN_ORDERS, ORDER_EVENTS, ORDERS, StoreError, Uid};

/// Where an order is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Waiting for the payment.
    Created,
    /// Paid and credited (both happen in one transaction).
    Credited,
    /// Closed unpaid.
    Closed,
    /// Paid, credited, then refunded.
    Refunded,
}

impl OrderStatus {
    /// The name used in the API and the CLI.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Created => "created",
            OrderStatus::Credited => "credited",
            OrderStatus::Closed => "closed",
            OrderStatus::Refunded => "refunded",
        }
    }

    /// Parses [`OrderStatus::as_str`].
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Created, Self::Credited, Self::Closed, Self::Refunded]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// An order for a credit pack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Our id, also the provider's `out_trade_no`.
    pub id: String,
    /// The buyer.
    pub uid: Uid,
    /// The product bought.
    pub product_id: String,
    /// Its name when bought.
    pub product_name: String,
    /// `wechat` or `alipay`.
    pub channel: String,
    /// How it is paid within the channel (`native`, `jsapi`, `h5`; `precreate`, `wap`,
    /// `page`); absent on orders from before methods existed, which are QR orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The price, in fen.
    pub amount_fen: i64,
    /// Credits the order gives.
    pub credits: u64,
    /// Where it is.
    pub status: OrderStatus,
    /// Created, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// When the QR code stops working and the order is closed.
    pub expires_at_ms: i64,
    /// What the provider gave for paying, once it did: what the user scans (`weixin://…`
    /// or an Alipay QR URL), JSAPI's `prepay_id`, H5's page or the signed Alipay page URL.
    #[serde(default)]
    pub code_url: Option<String>,
    /// The provider's transaction id, once paid.
    #[serde(default)]
    pub provider_trade_no: Option<String>,
    /// When it was paid and credited.
    #[serde(default)]
    pub credited_at_ms: Option<i64>,
    /// When it was closed.
    #[serde(default)]
    pub closed_at_ms: Option<i64>,
    /// When it was refunded.
    #[serde(default)]
    pub refunded_at_ms: Option<i64>,
    /// The membership plan it sells (then `credits` is usually 0): granted with the payment,
    /// in the same transaction, and ended by a refund.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<crate::PlanGrant>,
}

/// Something that happened to an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvent {
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
    /// What (`created`, `provider_order`, `notify`, `query`, `credited`, `closed`, ...).
    pub kind: String,
    /// Details for people.
    pub detail: String,
}

/// What crediting an order did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreditOutcome {
    /// Credited now: the purchase entry.
    Credited(Box<LedgerEntry>),
    /// It had been credited before; nothing changed.
    AlreadyCredited,
}

/// The user's open order for a product, channel and method. QR orders keep the key they had
/// before methods existed, so an open order from an older version is still found. An H5
/// order's page works 5 minutes only, so each H5 order has its own key: it is never handed
/// out again, and it stays listed for reconciliation.
fn open_key(order: &Order) -> Vec<u8> {
    let (product_id, channel) = (&order.product_id, &order.channel);
    let key = match order.method.as_deref() {
        None | Some("native" | "precreate") => format!("{product_id}\u{0}{channel}"),
        Some("h5") => format!("{product_id}\u{0}{channel}\u{0}h5\u{0}{}", order.id),
        Some(method) => format!("{product_id}\u{0}{channel}\u{0}{method}"),
    };
    prefixed_key(order.uid.0, key.as_bytes())
}

/// The ledger reference of an order's purchase entry.
#[must_use]
pub fn purchase_reference(order_id: &str) -> String {
    format!("order:{order_id}")
}

impl KvStore {
    /// Creates `order` (status created), unless the user has a live open order for the same
    /// product and channel: then that one is returned and nothing is written.
    pub fn create_order(&self, order: &Order, now_ms: i64) -> Result<Order, StoreError> {
        let _writing = self.writing();
        check_key("order id", &order.id)?;
        let t = self.trees()?;
        let key = open_key(order);
        finish(
            (&t.users, &t.orders, &t.open_orders).transaction(|(users, orders, open)| {
                if users.get(u64_key(order.uid.0))?.is_none() {
                    return abort(StoreError::UnknownUser(order.uid));
                }
                if let Some(raw) = open.get(&key)? {
                    let id: String =
                        decode(OPEN_ORDERS, &raw, || order.uid.to_string()).or_abort()?;
                    if let Some(raw) = orders.get(id.as_bytes())? {
                        let existing: Order = decode(ORDERS, &raw, || id.clone()).or_abort()?;
                        if existing.status == OrderStatus::Created
                            && existing.expires_at_ms > now_ms
                        {
                            return Ok(existing);
                        }
                    }
                }
                if orders.get(order.id.as_bytes())?.is_some() {
                    return abort(StoreError::InvalidInput(format!(
                        "order {} exists",
                        order.id
                    )));
                }
                let mut new = order.clone();
                new.status = OrderStatus::Created;
                orders.insert(new.id.as_bytes(), encode(&new).or_abort()?)?;
                open.insert(key.clone(), encode(&new.id).or_abort()?)?;
                Ok(new)
            }),
        )
    }

    /// The order with this id.
    pub fn order(&self, id: &str) -> Result<Option<Order>, StoreError> {
        match self.trees()?.orders.get(id.as_bytes())? {
            Some(raw) => decode(ORDERS, &raw, || id.to_owned()).map(Some),
            None => Ok(None),
        }
    }

    /// Records what the user scans.
    pub fn set_order_code_url(&self, id: &str, code_url: &str) -> Result<Order, StoreError> {
        let _writing = self.writing();
        self.update_order(id, |order| {
            order.code_url = Some(code_url.to_owned());
            Ok(())
        })
    }

    fn update_order(
        &self,
        id: &str,
        change: impl Fn(&mut Order) -> Result<(), StoreError>,
    ) -> Result<Order, StoreError> {
        let tree = &self.trees()?.orders;
        finish(tree.transaction(|orders| {
            let Some(raw) = orders.get(id.as_bytes())? else {
                return abort(StoreError::UnknownOrder(id.to_owned()));
            };
            let mut order: Order = decode(ORDERS, &raw, || id.to_owned()).or_abort()?;
            change(&mut order).or_abort()?;
            orders.insert(id.as_bytes(), encode(&order).or_abort()?)?;
            Ok(order)
        }))
    }

    /// Orders, newest first, optionally only those with `status`, at most `limit`.
    pub fn orders(
        &self,
        status: Option<OrderStatus>,
        limit: usize,
    ) -> Result<Vec<Order>, StoreError> {
        let mut all = Vec::new();
        for item in self.trees()?.orders.iter() {
            let (key, raw) = item?;
            let order: Order = decode(ORDERS, &raw, || crate::codec::describe_bytes(&key))?;
            if status.is_none_or(|s| s == order.status) {
                all.push(order);
            }
        }
        all.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(b.id.cmp(&a.id)));
        all.truncate(limit);
        Ok(all)
    }

    /// Every order still waiting for its payment (for reconciliation).
    pub fn open_orders(&self) -> Result<Vec<Order>, StoreError> {
        let t = self.trees()?;
        let mut out = Vec::new();
        for item in t.open_orders.iter() {
            let (key, raw) = item?;
            let id: String = decode(OPEN_ORDERS, &raw, || crate::codec::describe_bytes(&key))?;
            if let Some(order) = self.order(&id)?
                && order.status == OrderStatus::Created
            {
                out.push(order);
            }
        }
        Ok(out)
    }

    /// Marks a verified payment: checks the amount, moves the order to credited and adds its
    /// credits, in one transaction. A closed order is credited too (the payment is real).
    /// Idempotent: a second call changes nothing and says [`CreditOutcome::AlreadyCredited`].
    pub fn credit_order(
        &self,
        id: &str,
        paid_fen: i64,
        provider_trade_no: Option<&str>,
        now_ms: i64,
    ) -> Result<CreditOutcome, StoreError> {
        let _writing = self.writing();
        let t = self.trees()?;
        let reference = purchase_reference(id);
        finish(
            (
                &t.orders,
                &t.open_orders,
                &t.balances,
                &t.ledger,
                &t.ledger_refs,
            )
                .transaction(|(orders, open, balances, ledger, ledger_refs)| {
                    let Some(raw) = orders.get(id.as_bytes())? else {
                        return abort(StoreError::UnknownOrder(id.to_owned()));
                    };
                    let mut order: Order = decode(ORDERS, &raw, || id.to_owned()).or_abort()?;
                    match order.status {
                        OrderStatus::Credited | OrderStatus::Refunded => {
                            return Ok(CreditOutcome::AlreadyCredited);
                        }
                        OrderStatus::Created | OrderStatus::Closed => {}
                    }
                    if paid_fen != order.amount_fen {
                        return abort(StoreError::AmountMismatch {
                            expected: order.amount_fen,
                            got: paid_fen,
                        });
                    }
                    if entry_by_reference(ledger_refs, ledger, &reference)?.is_some() {
                        return abort(StoreError::corrupt(
                            ORDERS,
                            id,
                            "not credited, but its purchase entry exists",
                        ));
                    }
                    let mut balance = load_balance(balances, order.uid)?;
                    let Some(paid) = balance.paid.checked_add(order.credits) else {
                        return abort(StoreError::InvalidInput("credits overflow".into()));
                    };
                    let Ok(delta) = i64::try_from(order.credits) else {
                        return abort(StoreError::InvalidInput("credits overflow".into()));
                    };
                    balance.paid = paid;
                    let mut reason = format!("order {id}: {}", order.product_name);
                    if let Some(grant) = &order.plan {
                        crate::plans::apply_grant(&mut balance, grant, now_ms, &mut reason);
                    }
                    let entry = append_entry(
                        &mut balance,
                        ledger,
                        ledger_refs,
                        Change {
                            uid: order.uid,
                            at_ms: now_ms,
                            kind: EntryKind::Purchase,
                            free_delta: 0,
                            paid_delta: delta,
                            reason: &reason,
                            reference: &reference,
                        },
                    )?;
                    store_balance(balances, order.uid, &balance)?;
                    order.status = OrderStatus::Credited;
                    order.credited_at_ms = Some(now_ms);
                    if let Some(no) = provider_trade_no {
                        order.provider_trade_no = Some(no.to_owned());
                    }
                    orders.insert(id.as_bytes(), encode(&order).or_abort()?)?;
                    let key = open_key(&order);
                    if let Some(raw) = open.get(&key)?
                        && decode::<String>(OPEN_ORDERS, &raw, || id.to_owned()).or_abort()? == id
                    {
                        open.remove(key)?;
                    }
                    Ok(CreditOutcome::Credited(Box::new(entry)))
                }),
        )
    }

    /// Closes an order that is still waiting (call after the provider said it is unpaid).
    /// Returns the order as it is afterwards; a paid order stays paid.
    pub fn close_order(&self, id: &str, now_ms: i64) -> Result<Order, StoreError> {
        let _writing = self.writing();
        let t = self.trees()?;
        finish((&t.orders, &t.open_orders).transaction(|(orders, open)| {
            let Some(raw) = orders.get(id.as_bytes())? else {
                return abort(StoreError::UnknownOrder(id.to_owned()));
            };
            let mut order: Order = decode(ORDERS, &raw, || id.to_owned()).or_abort()?;
            if order.status != OrderStatus::Created {
                return Ok(order);
            }
            order.status = OrderStatus::Closed;
            order.closed_at_ms = Some(now_ms);
            orders.insert(id.as_bytes(), encode(&order).or_abort()?)?;
            let key = open_key(&order);
            if let Some(raw) = open.get(&key)?
                && decode::<String>(OPEN_ORDERS, &raw, || id.to_owned()).or_abort()? == id
            {
                open.remove(key)?;
            }
            Ok(order)
        }))
    }

    /// Marks a credited order refunded and takes back its credits — as many as the user
    /// still has (paid minus held), never below zero — in one transaction. Returns the order
    /// and the debit entry (none when nothing was left to take).
    pub fn refund_order(
        &self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(Order, Option<LedgerEntry>), StoreError> {
        let _writing = self.writing();
        let t = self.trees()?;
        let reference = format!("refund:{id}");
        finish(
            (&t.orders, &t.balances, &t.ledger, &t.ledger_refs).transaction(
                |(orders, balances, ledger, ledger_refs)| {
                    let Some(raw) = orders.get(id.as_bytes())? else {
                        return abort(StoreError::UnknownOrder(id.to_owned()));
                    };
                    let mut order: Order = decode(ORDERS, &raw, || id.to_owned()).or_abort()?;
                    if order.status == OrderStatus::Refunded {
                        let entry = entry_by_reference(ledger_refs, ledger, &reference)?;
                        return Ok((order, entry));
                    }
                    if order.status != OrderStatus::Credited {
                        return abort(StoreError::OrderState {
                            id: id.to_owned(),
                            status: order.status.as_str().to_owned(),
                        });
                    }
                    let mut balance = load_balance(balances, order.uid)?;
                    let take = order.credits.min(balance.paid.saturating_sub(balance.held));
                    let mut ended = String::new();
                    if let Some(grant) = &order.plan {
                        let today = grant.day_of(now_ms);
                        balance.plan = crate::after_refund(balance.plan.as_ref(), grant, today);
                        if let Some(p) = &balance.plan {
                            ended = crate::plans::refund_note(p, today);
                        }
                    }
                    // A plan order's refund is always written: it is the record that the plan
                    // was cut short, even when no credit changes.
                    let entry = if take == 0 && order.plan.is_none() {
                        None
                    } else {
                        let Ok(delta) = i64::try_from(take) else {
                            return abort(StoreError::InvalidInput("credits overflow".into()));
                        };
                        balance.paid = balance.paid.saturating_sub(take);
                        let why = format!("refund of order {id}: {reason}{ended}");
                        let entry = append_entry(
                            &mut balance,
                            ledger,
                            ledger_refs,
                            Change {
                                uid: order.uid,
                                at_ms: now_ms,
                                kind: EntryKind::Refund,
                                free_delta: 0,
                                paid_delta: -delta,
                                reason: &why,
                                reference: &reference,
                            },
                        )?;
                        store_balance(balances, order.uid, &balance)?;
                        Some(entry)
                    };
                    order.status = OrderStatus::Refunded;
                    order.refunded_at_ms = Some(now_ms);
                    orders.insert(id.as_bytes(), encode(&order).or_abort()?)?;
                    Ok((order, entry))
                },
            ),
        )
    }

    /// Appends an event to an order's history.
    pub fn add_order_event(
        &self,
        id: &str,
        kind: &str,
        detail: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let _writing = self.writing();
        let seq = self.trees()?.db.generate_id()?;
        let mut key = id.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(&u64_key(seq));
        let event = OrderEvent {
            at_ms: now_ms,
            kind: kind.to_owned(),
            detail: detail.to_owned(),
        };
        self.trees()?.order_events.insert(key, encode(&event)?)?;
        Ok(())
    }

    /// An order's history, oldest first.
    pub fn order_events(&self, id: &str) -> Result<Vec<OrderEvent>, StoreError> {
        let mut prefix = id.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.trees()?.order_events.scan_prefix(&prefix) {
            let (key, raw) = item?;
            out.push(decode(ORDER_EVENTS, &raw, || {
                crate::codec::describe_bytes(&key)
            })?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(s: &KvStore, uid: Uid, id: &str) -> Order {
        let o = Order {
            id: id.into(),
            uid,
            product_id: "p10".into(),
            product_name: "10 credits".into(),
            channel: "wechat".into(),
            method: None,
            amount_fen: 100,
            credits: 10,
            status: OrderStatus::Created,
            created_at_ms: 1_000,
            expires_at_ms: 100_000,
            code_url: None,
            provider_trade_no: None,
            credited_at_ms: None,
            closed_at_ms: None,
            refunded_at_ms: None,
            plan: None,
        };
        s.create_order(&o, 1_000).unwrap()
    }

    #[test]
    fn credited_exactly_once_with_the_amount_checked() {
        let s = KvStore::open_temporary().unwrap();
        let uid = s.create_user("u").unwrap().uid;
        let o = order(&s, uid, "CR1");
        assert!(matches!(
            s.credit_order("CR1", 99, None, 2_000),
            Err(StoreError::AmountMismatch {
                expected: 100,
                got: 99
            })
        ));
        assert_eq!(s.balance(uid, 0, 0).unwrap().paid, 0);
        assert!(matches!(
            s.credit_order("CR1", 100, Some("T1"), 2_000).unwrap(),
            CreditOutcome::Credited(_)
        ));
        assert_eq!(
            s.credit_order("CR1", 100, Some("T1"), 3_000).unwrap(),
            CreditOutcome::AlreadyCredited
        );
        assert_eq!(s.balance(uid, 0, 0).unwrap().paid, 10);
        let got = s.order(&o.id).unwrap().unwrap();
        assert_eq!(got.status, OrderStatus::Credited);
        assert_eq!(got.provider_trade_no.as_deref(), Some("T1"));
        assert!(s.open_orders().unwrap().is_empty());
        assert!(s.audit().unwrap().is_consistent());
        assert!(matches!(
            s.credit_order("nope", 100, None, 0),
            Err(StoreError::UnknownOrder(_))
        ));
    }

    #[test]
    fn open_orders_are_reused_per_method_and_h5_never() {
        let s = KvStore::open_temporary().unwrap();
        let uid = s.create_user("u").unwrap().uid;
        let with = |id: &str, method: Option<&str>| {
            let mut o = order(&s, uid, "X0");
            o.id = id.into();
            o.method = method.map(str::to_owned);
            o
        };
        // "native" finds the QR order made before methods existed (method absent).
        let old = order(&s, uid, "M0");
        assert_eq!(
            s.create_order(&with("M1", Some("native")), 1_000)
                .unwrap()
                .id,
            old.id
        );
        let j1 = s.create_order(&with("M2", Some("jsapi")), 1_000).unwrap();
        assert_eq!(j1.id, "M2", "another method is another order");
        assert_eq!(
            s.create_order(&with("M3", Some("jsapi")), 1_000)
                .unwrap()
                .id,
            "M2"
        );
        let h1 = s.create_order(&with("M4", Some("h5")), 1_000).unwrap();
        let h2 = s.create_order(&with("M5", Some("h5")), 1_000).unwrap();
        assert_eq!(
            (h1.id.as_str(), h2.id.as_str()),
            ("M4", "M5"),
            "H5 pages expire: never reused"
        );
        let mut open: Vec<String> = s.open_orders().unwrap().into_iter().map(|o| o.id).collect();
        open.sort();
        assert_eq!(
            open,
            ["M0", "M2", "M4", "M5"],
            "every open order is reconciled"
        );
        assert!(matches!(
            s.credit_order("M4", 100, None, 2_000).unwrap(),
            CreditOutcome::Credited(_)
        ));
        assert_eq!(
            s.close_order("M5", 3_000).unwrap().status,
            OrderStatus::Closed
        );
        assert_eq!(s.open_orders().unwrap().len(), 2);
    }

    #[test]
    fn open_orders_are_reused_until_closed_and_late_payments_count() {
        let s = KvStore::open_temporary().unwrap();
        let uid = s.create_user("u").unwrap().uid;
        let a = order(&s, uid, "CR1");
        let b = order(&s, uid, "CR2");
        assert_eq!(a.id, b.id, "the open order is reused");
        assert_eq!(s.open_orders().unwrap().len(), 1);
        let closed = s.close_order("CR1", 5_000).unwrap();
        assert_eq!(closed.status, OrderStatus::Closed);
        let c = order(&s, uid, "CR3");
        assert_eq!(c.id, "CR3", "a closed order is not reused");
        // Paid after the local close: still credited.
        assert!(matches!(
            s.credit_order("CR1", 100, None, 6_000).unwrap(),
            CreditOutcome::Credited(_)
        ));
        assert_eq!(
            s.close_order("CR1", 7_000).unwrap().status,
            OrderStatus::Credited
        );
        assert_eq!(s.balance(uid, 0, 0).unwrap().paid, 10);
        s.add_order_event("CR1", "notify", "paid", 6_000).unwrap();
        s.add_order_event("CR1", "query", "SUCCESS", 6_500).unwrap();
        let ev = s.order_events("CR1").unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].kind, "notify");
        assert!(
            s.order_events("CR10").unwrap().is_empty(),
            "prefixes do not leak"
        );
        assert_eq!(s.orders(Some(OrderStatus::Credited), 10).unwrap().len(), 1);
        assert_eq!(s.orders(None, 10).unwrap().len(), 2);
    }

    #[test]
    fn refunds_take_back_what_is_left_never_below_zero() {
        let s = KvStore::open_temporary().unwrap();
        let uid = s.create_user("u").unwrap().uid;
        order(&s, uid, "CR1");
        assert!(matches!(
            s.refund_order("CR1", "x", 1).unwrap_err(),
            StoreError::OrderState { .. }
        ));
        s.credit_order("CR1", 100, None, 2_000).unwrap();
        s.debit(uid, 7, EntryKind::Adjust, "spent", "spend-1", 3_000)
            .unwrap();
        let (o, entry) = s.refund_order("CR1", "asked", 4_000).unwrap();
        assert_eq!(o.status, OrderStatus::Refunded);
        assert_eq!(entry.unwrap().paid_delta, -3);
        assert_eq!(s.balance(uid, 0, 0).unwrap().paid, 0);
        let (_, again) = s.refund_order("CR1", "asked", 5_000).unwrap();
        assert_eq!(again.unwrap().paid_delta, -3, "idempotent");
        assert_eq!(
            s.credit_order("CR1", 100, None, 6_000).unwrap(),
            CreditOutcome::AlreadyCredited
        );
        assert!(s.audit().unwrap().is_consistent());
    }
}
