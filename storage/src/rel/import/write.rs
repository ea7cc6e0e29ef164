//! The import's writes: each batch one `INSERT ... SELECT FROM unnest(...)` statement (one
//! round trip, one transaction), the columns sent as arrays.

use tokio_postgres::types::{ToSql, Type};

use super::super::money::kind_name;
use super::super::{RelStore, amount, col, one, uid_param};
use super::{Batch, ReservationRow};
use crate::{LedgerEntry, Order, StoreError, Turn, User};

/// Statement parameters: arrays with their types.
type Arrays<'a> = Vec<(&'a (dyn ToSql + Sync), Type)>;

const USERS: &str = "WITH u AS (
         INSERT INTO users (uid, name, created_at_ms, banned, ban_reason, groups)
         SELECT v.uid, v.name, v.at, v.banned, v.reason,
                ARRAY(SELECT jsonb_array_elements_text(v.groups::jsonb))
         FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bool[], $5::text[],
                     $6::text[]) AS v(uid, name, at, banned, reason, groups)
         RETURNING uid),
     b AS (INSERT INTO balances (uid) SELECT uid FROM u RETURNING 1)
     SELECT count(*) AS n FROM b";

/// Every user has its balance row already (made with it): a balance of no user updates
/// nothing, which the count shows.
const BALANCES: &str = "WITH b AS (
         UPDATE balances SET paid = v.paid, held = v.held, free_day = v.free_day,
                free_used = v.free_used, next_seq = v.next_seq
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                     $6::bigint[]) AS v(uid, paid, held, free_day, free_used, next_seq)
         WHERE balances.uid = v.uid RETURNING 1)
     SELECT count(*) AS n FROM b";

const IDENTITIES: &str = "WITH i AS (
         INSERT INTO identities (platform, account, user_id, uid)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) RETURNING 1)
     SELECT count(*) AS n FROM i";

const LEDGER: &str = "WITH l AS (
         INSERT INTO ledger (uid, seq, at_ms, kind, free_delta, paid_delta, paid_after, reason,
                             reference)
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[],
                              $5::bigint[], $6::bigint[], $7::bigint[], $8::text[], $9::text[])
         RETURNING 1)
     SELECT count(*) AS n FROM l";

const RESERVATIONS: &str = "WITH r AS (
         INSERT INTO reservations (id, uid, amount, reference, expires_at_ms, status, charged,
                                   settled_at_ms)
         SELECT id, uid, amount, reference, expires_at_ms,
                CASE WHEN settled_at_ms IS NULL THEN 'open' ELSE 'settled' END, charged,
                settled_at_ms
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[],
                     $6::bool[], $7::bigint[])
              AS v(id, uid, amount, reference, expires_at_ms, charged, settled_at_ms)
         RETURNING 1)
     SELECT count(*) AS n FROM r";

const ORDERS: &str = "WITH o AS (
         INSERT INTO orders (id, uid, product, product_name, channel, method, amount_fen,
                             credits, status, created_at_ms, expires_at_ms, code_url,
                             provider_trade_no, credited_at_ms, closed_at_ms, refunded_at_ms,
                             open_slot)
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                              $6::text[], $7::bigint[], $8::bigint[], $9::text[],
                              $10::bigint[], $11::bigint[], $12::text[], $13::text[],
                              $14::bigint[], $15::bigint[], $16::bigint[], $17::text[])
         RETURNING 1)
     SELECT count(*) AS n FROM o";

/// The events keep their ids (sled's generated ids, increasing over the store's life).
const ORDER_EVENTS: &str = "WITH e AS (
         INSERT INTO order_events (id, order_id, at_ms, kind, detail) OVERRIDING SYSTEM VALUE
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[])
         RETURNING 1)
     SELECT count(*) AS n FROM e";

const TOKENS: &str = "WITH t AS (
         INSERT INTO tokens (hash, uid, label, created_at_ms, expires_at_ms, revoked_at_ms)
         SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::text[], $4::bigint[],
                              $5::bigint[], $6::bigint[])
         RETURNING 1)
     SELECT count(*) AS n FROM t";

const LOGIN_CODES: &str = "WITH c AS (
         INSERT INTO login_codes (code, uid, expires_at_ms)
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) RETURNING 1)
     SELECT count(*) AS n FROM c";

/// Conversations and their turns (in order: `seq` follows the ordinality).
const CONVERSATIONS: &str = "WITH c AS (
         INSERT INTO conversations (key, updated_at_ms)
         SELECT * FROM unnest($1::text[], $2::bigint[]) RETURNING 1),
     t AS (
         INSERT INTO turns (conversation, role, content, at_ms)
         SELECT conversation, role, content, at_ms
         FROM unnest($3::text[], $4::text[], $5::text[], $6::bigint[]) WITH ORDINALITY
              AS v(conversation, role, content, at_ms, n)
         ORDER BY n
         RETURNING 1)
     SELECT (SELECT count(*) FROM c) AS n, (SELECT count(*) FROM t) AS turns";

const MARKS: &str = "WITH d AS (
         INSERT INTO dedupe (key, expires_at_ms, bound)
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[]) RETURNING 1)
     SELECT count(*) AS n FROM d";

const ANSWERS: &str = "WITH a AS (
         INSERT INTO answers (key, text, expires_at_ms)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) RETURNING 1)
     SELECT count(*) AS n FROM a";

const HANDOFFS: &str = "WITH h AS (
         INSERT INTO handoffs (key, value, expires_at_ms)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) RETURNING 1)
     SELECT count(*) AS n FROM h";

/// Outbox texts, in order per key (`seq` follows the ordinality).
const OUTBOX: &str = "WITH o AS (
         INSERT INTO outbox (key, text)
         SELECT key, text FROM unnest($1::text[], $2::text[]) WITH ORDINALITY
              AS v(key, text, n)
         ORDER BY n
         RETURNING 1)
     SELECT count(*) AS n FROM o";

const CHECKPOINTS: &str = "WITH c AS (
         INSERT INTO checkpoints (key, value)
         SELECT * FROM unnest($1::text[], $2::text[]) RETURNING 1)
     SELECT count(*) AS n FROM c";

const STATS: &str = "WITH s AS (
         INSERT INTO stats (key, n) SELECT * FROM unnest($1::text[], $2::bigint[]) RETURNING 1)
     SELECT count(*) AS n FROM s";

impl RelStore {
    /// Writes one batch; the rows written.
    pub(super) async fn write_batch(&self, batch: Batch) -> Result<u64, StoreError> {
        match batch {
            Batch::Users(users) => self.write_users(&users).await,
            Batch::Balances(rows) => {
                let mut c: [Vec<i64>; 6] = Default::default();
                for (uid, b) in &rows {
                    c[0].push(uid_param(*uid)?);
                    c[1].push(amount(b.paid)?);
                    c[2].push(amount(b.held)?);
                    c[3].push(b.free_day);
                    c[4].push(amount(b.free_used)?);
                    c[5].push(amount(b.next_seq)?);
                }
                let n = self.count(BALANCES, int8s(&c)).await?;
                if n != rows.len() as u64 {
                    return Err(StoreError::InvalidInput(format!(
                        "{} balance records belong to no user; run `chatrelay audit`",
                        rows.len() as u64 - n
                    )));
                }
                Ok(n)
            }
            Batch::Identities(rows) => {
                let (mut p, mut a, mut u, mut id) = (vec![], vec![], vec![], vec![]);
                for (platform, account, user, uid) in rows {
                    p.push(platform);
                    a.push(account);
                    u.push(user);
                    id.push(uid_param(uid)?);
                }
                self.count(
                    IDENTITIES,
                    vec![
                        (&p, Type::TEXT_ARRAY),
                        (&a, Type::TEXT_ARRAY),
                        (&u, Type::TEXT_ARRAY),
                        (&id, Type::INT8_ARRAY),
                    ],
                )
                .await
            }
            Batch::Ledger(entries) => self.write_ledger(&entries).await,
            Batch::Reservations(rows) => self.write_reservations(&rows).await,
            Batch::Orders(orders) => self.write_orders(&orders).await,
            Batch::OrderEvents(events) => {
                let (mut id, mut order, mut at, mut kind, mut detail) =
                    (vec![], vec![], vec![], vec![], vec![]);
                for (order_id, event_id, e) in events {
                    id.push(amount(event_id)?);
                    order.push(order_id);
                    at.push(e.at_ms);
                    kind.push(e.kind);
                    detail.push(e.detail);
                }
                self.count(
                    ORDER_EVENTS,
                    vec![
                        (&id, Type::INT8_ARRAY),
                        (&order, Type::TEXT_ARRAY),
                        (&at, Type::INT8_ARRAY),
                        (&kind, Type::TEXT_ARRAY),
                        (&detail, Type::TEXT_ARRAY),
                    ],
                )
                .await
            }
            other => self.write_small(other).await,
        }
    }

    /// The tables of small records.
    async fn write_small(&self, batch: Batch) -> Result<u64, StoreError> {
        match batch {
            Batch::Tokens(rows) => {
                let (mut hash, mut uid, mut label) = (vec![], vec![], vec![]);
                let (mut at, mut expires, mut revoked) = (vec![], vec![], vec![]);
                for (h, t) in rows {
                    hash.push(h);
                    uid.push(uid_param(t.uid)?);
                    label.push(t.label);
                    at.push(t.created_at_ms);
                    expires.push(t.expires_at_ms);
                    revoked.push(t.revoked_at_ms);
                }
                self.count(
                    TOKENS,
                    vec![
                        (&hash, Type::BYTEA_ARRAY),
                        (&uid, Type::INT8_ARRAY),
                        (&label, Type::TEXT_ARRAY),
                        (&at, Type::INT8_ARRAY),
                        (&expires, Type::INT8_ARRAY),
                        (&revoked, Type::INT8_ARRAY),
                    ],
                )
                .await
            }
            Batch::LoginCodes(rows) => {
                let (mut code, mut uid, mut expires) = (vec![], vec![], vec![]);
                for c in rows {
                    code.push(c.code);
                    uid.push(uid_param(c.uid)?);
                    expires.push(c.expires_at_ms);
                }
                let params = vec![
                    (&code as &(dyn ToSql + Sync), Type::TEXT_ARRAY),
                    (&uid, Type::INT8_ARRAY),
                    (&expires, Type::INT8_ARRAY),
                ];
                self.count(LOGIN_CODES, params).await
            }
            Batch::Conversations(rows) => self.write_conversations(rows).await,
            Batch::Marks(rows) => {
                let (k, e, b) = unzip3(rows);
                self.count(MARKS, texts_ints_texts(&k, &e, &b)).await
            }
            Batch::Answers(rows) => {
                let (k, t, e) = unzip3(rows);
                self.count(ANSWERS, texts_texts_ints(&k, &t, &e)).await
            }
            Batch::Handoffs(rows) => {
                let (k, v, e) = unzip3(rows);
                self.count(HANDOFFS, texts_texts_ints(&k, &v, &e)).await
            }
            other => self.write_keyed(other).await,
        }
    }

    /// Outbox, checkpoints and stats: text keys.
    async fn write_keyed(&self, batch: Batch) -> Result<u64, StoreError> {
        match batch {
            Batch::Outbox(rows) => {
                let (mut keys, mut texts) = (vec![], vec![]);
                for (key, items) in rows {
                    for text in items {
                        keys.push(key.clone());
                        texts.push(text);
                    }
                }
                let params = vec![
                    (&keys as &(dyn ToSql + Sync), Type::TEXT_ARRAY),
                    (&texts, Type::TEXT_ARRAY),
                ];
                self.count(OUTBOX, params).await
            }
            Batch::Checkpoints(rows) => {
                let (keys, values): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
                let params = vec![
                    (&keys as &(dyn ToSql + Sync), Type::TEXT_ARRAY),
                    (&values, Type::TEXT_ARRAY),
                ];
                self.count(CHECKPOINTS, params).await
            }
            Batch::Stats(rows) => {
                let mut keys = Vec::with_capacity(rows.len());
                let mut counts = Vec::with_capacity(rows.len());
                for (key, n) in rows {
                    keys.push(key);
                    counts.push(amount(n)?);
                }
                let params = vec![
                    (&keys as &(dyn ToSql + Sync), Type::TEXT_ARRAY),
                    (&counts, Type::INT8_ARRAY),
                ];
                self.count(STATS, params).await
            }
            other => self.write_extra(other).await,
        }
    }

    async fn write_users(&self, users: &[User]) -> Result<u64, StoreError> {
        let (mut uid, mut name, mut at, mut banned, mut reason, mut groups) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for u in users {
            uid.push(uid_param(u.uid)?);
            name.push(u.name.as_str());
            at.push(u.created_at_ms);
            banned.push(u.banned);
            // As the database wants it: a reason only while banned.
            reason.push(u.ban_reason.as_deref().filter(|_| u.banned));
            groups.push(
                serde_json::to_string(&u.groups).map_err(|e| {
                    StoreError::InvalidInput(format!("groups of user {}: {e}", u.uid))
                })?,
            );
        }
        self.count(
            USERS,
            vec![
                (&uid, Type::INT8_ARRAY),
                (&name, Type::TEXT_ARRAY),
                (&at, Type::INT8_ARRAY),
                (&banned, Type::BOOL_ARRAY),
                (&reason, Type::TEXT_ARRAY),
                (&groups, Type::TEXT_ARRAY),
            ],
        )
        .await
    }

    async fn write_ledger(&self, entries: &[LedgerEntry]) -> Result<u64, StoreError> {
        let mut ints: [Vec<i64>; 5] = Default::default();
        let (mut kind, mut reason, mut reference) = (vec![], vec![], vec![]);
        for e in entries {
            ints[0].push(uid_param(e.uid)?);
            ints[1].push(amount(e.seq)?);
            ints[2].push(e.at_ms);
            ints[3].push(e.free_delta);
            ints[4].push(e.paid_delta);
            kind.push(kind_name(e.kind));
            reason.push(e.reason.as_str());
            reference.push(e.reference.as_str());
        }
        let paid_after = entries
            .iter()
            .map(|e| amount(e.paid_after))
            .collect::<Result<Vec<_>, _>>()?;
        self.count(
            LEDGER,
            vec![
                (&ints[0], Type::INT8_ARRAY),
                (&ints[1], Type::INT8_ARRAY),
                (&ints[2], Type::INT8_ARRAY),
                (&kind, Type::TEXT_ARRAY),
                (&ints[3], Type::INT8_ARRAY),
                (&ints[4], Type::INT8_ARRAY),
                (&paid_after, Type::INT8_ARRAY),
                (&reason, Type::TEXT_ARRAY),
                (&reference, Type::TEXT_ARRAY),
            ],
        )
        .await
    }

    async fn write_reservations(&self, rows: &[ReservationRow]) -> Result<u64, StoreError> {
        let mut ints: [Vec<i64>; 4] = Default::default();
        let (mut reference, mut charged, mut settled) = (vec![], vec![], vec![]);
        for r in rows {
            ints[0].push(amount(r.id)?);
            ints[1].push(uid_param(r.uid)?);
            ints[2].push(amount(r.amount)?);
            ints[3].push(r.expires_at_ms);
            reference.push(r.reference.as_str());
            charged.push(r.charged);
            settled.push(r.settled_at_ms);
        }
        self.count(
            RESERVATIONS,
            vec![
                (&ints[0], Type::INT8_ARRAY),
                (&ints[1], Type::INT8_ARRAY),
                (&ints[2], Type::INT8_ARRAY),
                (&reference, Type::TEXT_ARRAY),
                (&ints[3], Type::INT8_ARRAY),
                (&charged, Type::BOOL_ARRAY),
                (&settled, Type::INT8_ARRAY),
            ],
        )
        .await
    }

    async fn write_orders(&self, orders: &[(Order, Option<String>)]) -> Result<u64, StoreError> {
        let mut texts: [Vec<&str>; 6] = Default::default();
        let mut maybe: [Vec<Option<&str>>; 4] = Default::default();
        let mut ints: [Vec<i64>; 5] = Default::default();
        let mut times: [Vec<Option<i64>>; 3] = Default::default();
        for (o, slot) in orders {
            texts[0].push(&o.id);
            texts[1].push(&o.product_id);
            texts[2].push(&o.product_name);
            texts[3].push(&o.channel);
            texts[4].push(o.status.as_str());
            maybe[0].push(o.method.as_deref());
            maybe[1].push(o.code_url.as_deref());
            maybe[2].push(o.provider_trade_no.as_deref());
            maybe[3].push(slot.as_deref());
            ints[0].push(uid_param(o.uid)?);
            ints[1].push(o.amount_fen);
            ints[2].push(amount(o.credits)?);
            ints[3].push(o.created_at_ms);
            ints[4].push(o.expires_at_ms);
            times[0].push(o.credited_at_ms);
            times[1].push(o.closed_at_ms);
            times[2].push(o.refunded_at_ms);
        }
        let (t, m, i, w) = (&texts, &maybe, &ints, &times);
        let params: Arrays<'_> = vec![
            (&t[0], Type::TEXT_ARRAY),
            (&i[0], Type::INT8_ARRAY),
            (&t[1], Type::TEXT_ARRAY),
            (&t[2], Type::TEXT_ARRAY),
            (&t[3], Type::TEXT_ARRAY),
            (&m[0], Type::TEXT_ARRAY),
            (&i[1], Type::INT8_ARRAY),
            (&i[2], Type::INT8_ARRAY),
            (&t[4], Type::TEXT_ARRAY),
            (&i[3], Type::INT8_ARRAY),
            (&i[4], Type::INT8_ARRAY),
            (&m[1], Type::TEXT_ARRAY),
            (&m[2], Type::TEXT_ARRAY),
            (&w[0], Type::INT8_ARRAY),
            (&w[1], Type::INT8_ARRAY),
            (&w[2], Type::INT8_ARRAY),
            (&m[3], Type::TEXT_ARRAY),
        ];
        self.count(ORDERS, params).await
    }

    async fn write_conversations(&self, rows: Vec<(String, Vec<Turn>)>) -> Result<u64, StoreError> {
        let (mut keys, mut updated) = (vec![], vec![]);
        let (mut conv, mut role, mut content, mut at) = (vec![], vec![], vec![], vec![]);
        for (key, turns) in rows {
            updated.push(turns.iter().map(|t| t.at_ms).max().unwrap_or(0));
            for t in turns {
                conv.push(key.clone());
                role.push(t.role);
                content.push(t.content);
                at.push(t.at_ms);
            }
            keys.push(key);
        }
        let params: Arrays<'_> = vec![
            (&keys, Type::TEXT_ARRAY),
            (&updated, Type::INT8_ARRAY),
            (&conv, Type::TEXT_ARRAY),
            (&role, Type::TEXT_ARRAY),
            (&content, Type::TEXT_ARRAY),
            (&at, Type::INT8_ARRAY),
        ];
        self.count(CONVERSATIONS, params).await
    }

    /// Runs a statement that answers one row with a count `n`.
    pub(super) async fn count(&self, sql: &str, params: Arrays<'_>) -> Result<u64, StoreError> {
        let rows = self.rows(sql, &params).await?;
        let n: i64 = col(one(&rows)?, "n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// Six bigint arrays as parameters.
fn int8s(c: &[Vec<i64>; 6]) -> Arrays<'_> {
    c.iter()
        .map(|v| (v as &(dyn ToSql + Sync), Type::INT8_ARRAY))
        .collect()
}

fn unzip3<A, B, C>(rows: Vec<(A, B, C)>) -> (Vec<A>, Vec<B>, Vec<C>) {
    let (mut a, mut b, mut c) = (
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
    );
    for (x, y, z) in rows {
        a.push(x);
        b.push(y);
        c.push(z);
    }
    (a, b, c)
}

fn texts_ints_texts<'a>(
    a: &'a Vec<String>,
    b: &'a Vec<i64>,
    c: &'a Vec<Option<String>>,
) -> Arrays<'a> {
    vec![
        (a, Type::TEXT_ARRAY),
        (b, Type::INT8_ARRAY),
        (c, Type::TEXT_ARRAY),
    ]
}

fn texts_texts_ints<'a, T: ToSql + Sync>(
    a: &'a Vec<String>,
    b: &'a Vec<T>,
    c: &'a Vec<i64>,
) -> Arrays<'a> {
    vec![
        (a, Type::TEXT_ARRAY),
        (b, Type::TEXT_ARRAY),
        (c, Type::INT8_ARRAY),
    ]
}
