//! The admin paths on PostgreSQL: bans and groups, finding users by name, identity or token,
//! moving identities between users, the per-user figures of `admin user list`, a user's
//! ledger page by page, and the audit of balances against ledger and reservations. The sled
//! modules (`users.rs`, `tokens.rs`, `quota.rs`, `audit.rs`) are the spec; each operation here
//! is one statement.

use chatrelay_core::UserKey;
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use super::money::{ENTRY_COLS, entry_from};
use super::users::{USER_COLS, user_from};
use super::{RelStore, col, one, uid_of, uid_param};
use crate::codec::check_key;
use crate::tokens::{hash_prefix, token_hash};
use crate::{
    AuditMismatch, AuditReport, LedgerEntry, StoreError, TOKEN_PREFIX, Uid, User, UserActivity,
};

/// A ledger page's most entries (as `KvStore::ledger_page` clamps).
const MAX_LEDGER_PAGE: usize = 1_000;

/// An identity's key text (`UserKey`'s `Display`) from its columns.
const KEY_TEXT: &str = "(platform || ':' || CASE WHEN account = '' THEN '' ELSE account || ':' END
     || user_id)";

/// $1 uid, $2 groups to add (trimmed), $3 groups to remove. Removal first, then the added
/// ones, deduplicated and sorted by their bytes (as on sled).
const CHANGE_GROUPS: &str = "UPDATE users SET groups = ARRAY(
         SELECT g FROM (SELECT g FROM unnest(groups) AS g WHERE g <> ALL ($3::text[])
                        UNION SELECT unnest($2::text[])) AS x (g)
         ORDER BY g COLLATE \"C\")
     WHERE uid = $1
     RETURNING uid, name, created_at_ms, banned, ban_reason, groups";

/// $1 platform, $2 account, $3 user id, $4 uid: the identity moved to (or made for) the user,
/// with its previous owner. Nothing is written when the user does not exist.
const LINK: &str = "WITH u AS (SELECT uid FROM users WHERE uid = $4),
     prev AS (SELECT uid FROM identities
              WHERE platform = $1 AND account = $2 AND user_id = $3 FOR UPDATE),
     ins AS (INSERT INTO identities (platform, account, user_id, uid)
             SELECT $1, $2, $3, uid FROM u
             ON CONFLICT (platform, account, user_id) DO UPDATE SET uid = excluded.uid
             RETURNING 1)
     SELECT EXISTS (SELECT 1 FROM u) AS user_exists, (SELECT uid FROM prev) AS previous,
            (SELECT count(*) FROM ins) AS written";

/// $1 uid, $2 lowercase hex prefix, $3 now: revokes the user's one token whose hash starts
/// with the prefix (none when two or more match), saying how many matched.
const REVOKE_BY_HASH: &str = "WITH m AS (
         SELECT hash FROM tokens WHERE uid = $1 AND starts_with(encode(hash, 'hex'), $2)
         LIMIT 2),
     r AS (UPDATE tokens SET revoked_at_ms = $3
           WHERE hash IN (SELECT hash FROM m) AND (SELECT count(*) FROM m) = 1
             AND revoked_at_ms IS NULL
           RETURNING 1)
     SELECT (SELECT count(*) FROM m) AS matching, EXISTS (SELECT 1 FROM r) AS revoked";

/// The audit in one statement: the totals on every row, then one row per mismatch (none:
/// one row whose `kind` is null). A user without a balance row counts as a zero balance, as
/// on sled; orphans, dangling and unindexed references cannot exist here (foreign keys,
/// `ledger.reference` unique), so they are not looked for.
const AUDIT: &str = "WITH bal AS (
         SELECT u.uid, COALESCE(b.paid, 0) AS paid, COALESCE(b.held, 0) AS held,
                COALESCE(b.next_seq, 1) AS next_seq
         FROM users u LEFT JOIN balances b ON b.uid = u.uid),
     l AS (SELECT uid, sum(paid_delta) AS s, max(seq) AS m FROM ledger GROUP BY uid),
     r AS (SELECT uid, sum(amount) AS h FROM reservations WHERE status = 'open' GROUP BY uid),
     e AS (SELECT uid, seq, paid_after,
                  sum(paid_delta) OVER w AS running, lag(seq, 1, 0::bigint) OVER w + 1 AS expected
           FROM ledger WINDOW w AS (PARTITION BY uid ORDER BY seq)),
     found AS (
         SELECT 'seq_gap' AS kind, uid, seq, expected::text AS a, seq::text AS b
         FROM e WHERE seq <> expected
         UNION ALL
         SELECT 'paid_after', uid, seq, running::text, paid_after::text
         FROM e WHERE running < 0 OR running <> paid_after
         UNION ALL
         SELECT 'paid', bal.uid, NULL, COALESCE(l.s, 0)::text, bal.paid::text
         FROM bal LEFT JOIN l ON l.uid = bal.uid WHERE COALESCE(l.s, 0) <> bal.paid
         UNION ALL
         SELECT 'held', bal.uid, NULL, COALESCE(r.h, 0)::text, bal.held::text
         FROM bal LEFT JOIN r ON r.uid = bal.uid WHERE COALESCE(r.h, 0) <> bal.held
         UNION ALL
         SELECT 'next_seq', bal.uid, NULL, bal.next_seq::text, COALESCE(l.m, 0)::text
         FROM bal LEFT JOIN l ON l.uid = bal.uid WHERE bal.next_seq <> COALESCE(l.m, 0) + 1),
     totals AS (
         SELECT (SELECT count(*) FROM users) AS users,
                (SELECT count(*) FROM ledger) AS entries,
                (SELECT count(*) FROM reservations WHERE status = 'open') AS open_reservations,
                (SELECT COALESCE(sum(paid), 0)::text FROM bal) AS total_paid,
                (SELECT COALESCE(sum(held), 0)::text FROM bal) AS total_held)
     SELECT totals.*, f.kind, f.uid, f.seq, f.a, f.b
     FROM totals LEFT JOIN found f ON true
     ORDER BY f.uid, f.seq NULLS LAST, f.kind";

impl RelStore {
    /// Bans (with a reason for admins) or unbans a user; returns the updated user. The reason
    /// goes with the ban.
    pub(crate) async fn set_banned(
        &self,
        uid: Uid,
        banned: bool,
        reason: Option<&str>,
    ) -> Result<User, StoreError> {
        let id = uid_param(uid)?;
        let sql = format!(
            "UPDATE users SET banned = $2, ban_reason = CASE WHEN $2 THEN $3 END
             WHERE uid = $1 RETURNING {USER_COLS}"
        );
        let rows = self
            .rows(
                &sql,
                &[
                    (&id, Type::INT8),
                    (&banned, Type::BOOL),
                    (&reason, Type::TEXT),
                ],
            )
            .await?;
        match rows.first() {
            Some(row) => user_from(row),
            None => Err(StoreError::UnknownUser(uid)),
        }
    }

    /// Adds the user to the groups in `add` and removes them from those in `remove` (names
    /// of 1 to 64 bytes); returns the updated user, groups sorted.
    pub(crate) async fn change_groups(
        &self,
        uid: Uid,
        add: &[String],
        remove: &[String],
    ) -> Result<User, StoreError> {
        if add
            .iter()
            .chain(remove)
            .any(|g| g.trim().is_empty() || g.len() > 64)
        {
            return Err(StoreError::InvalidInput(
                "group names must be 1 to 64 bytes".into(),
            ));
        }
        let id = uid_param(uid)?;
        let add: Vec<String> = add.iter().map(|g| g.trim().to_owned()).collect();
        let rows = self
            .rows(
                CHANGE_GROUPS,
                &[
                    (&id, Type::INT8),
                    (&add, Type::TEXT_ARRAY),
                    (&remove, Type::TEXT_ARRAY),
                ],
            )
            .await?;
        match rows.first() {
            Some(row) => user_from(row),
            None => Err(StoreError::UnknownUser(uid)),
        }
    }

    /// Users whose name contains `query` (case-insensitive), lowest uid first, at most
    /// `limit`. An admin tool: it reads every name.
    pub(crate) async fn find_users_by_name(
        &self,
        query: &str,
        limit: usize,
    ) -> Result<Vec<User>, StoreError> {
        let needle = query.to_lowercase();
        let limit = sql_limit(limit);
        let sql = format!(
            "SELECT {USER_COLS} FROM users WHERE strpos(lower(name), $1) > 0
             ORDER BY uid LIMIT $2"
        );
        let rows = self
            .rows(&sql, &[(&needle, Type::TEXT), (&limit, Type::INT8)])
            .await?;
        rows.iter().map(user_from).collect()
    }

    /// Identities whose key text contains `query` (a bare openid or Telegram id finds its
    /// key), with their users, in the order of the key text, at most `limit`.
    pub(crate) async fn find_identities(
        &self,
        query: &str,
        limit: usize,
    ) -> Result<Vec<(UserKey, Uid)>, StoreError> {
        let limit = sql_limit(limit);
        let sql = format!(
            "SELECT {KEY_TEXT} AS key_text, uid FROM identities
             WHERE strpos({KEY_TEXT}, $1) > 0
             ORDER BY {KEY_TEXT} COLLATE \"C\" LIMIT $2"
        );
        let rows = self
            .rows(&sql, &[(&query, Type::TEXT), (&limit, Type::INT8)])
            .await?;
        let mut found = Vec::with_capacity(rows.len());
        for row in &rows {
            let text: String = col(row, "key_text")?;
            // As on sled: a key that no longer parses is left out of a search.
            if let Ok(key) = text.parse::<UserKey>() {
                found.push((key, uid_of(row, "uid")?));
            }
        }
        Ok(found)
    }

    /// Makes `key` belong to `uid` (one user per identity: the primary key); returns its
    /// previous owner, if any. [`StoreError::UnknownUser`] (and nothing written) when `uid`
    /// does not exist.
    pub(crate) async fn link_identity(
        &self,
        key: &UserKey,
        uid: Uid,
    ) -> Result<Option<Uid>, StoreError> {
        check_key("user key", &key.to_string())?;
        let id = uid_param(uid)?;
        let platform = key.platform.as_str();
        let params: [(&(dyn ToSql + Sync), Type); 4] = [
            (&platform, Type::TEXT),
            (&key.account, Type::TEXT),
            (&key.user, Type::TEXT),
            (&id, Type::INT8),
        ];
        let rows = self.rows(LINK, &params).await?;
        let row = one(&rows)?;
        if !col::<bool>(row, "user_exists")? {
            return Err(StoreError::UnknownUser(uid));
        }
        col::<Option<i64>>(row, "previous")?
            .map(|_| uid_of(row, "previous"))
            .transpose()
    }

    /// Detaches `key` from its user; false if it belonged to no one. The user stays.
    pub(crate) async fn unlink_identity(&self, key: &UserKey) -> Result<bool, StoreError> {
        let platform = key.platform.as_str();
        let rows = self
            .rows(
                "DELETE FROM identities WHERE platform = $1 AND account = $2 AND user_id = $3
                 RETURNING 1",
                &[
                    (&platform, Type::TEXT),
                    (&key.account, Type::TEXT),
                    (&key.user, Type::TEXT),
                ],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// How many users exist.
    pub(crate) async fn user_count(&self) -> Result<usize, StoreError> {
        let rows = self.rows("SELECT count(*) AS n FROM users", &[]).await?;
        let n: i64 = col(one(&rows)?, "n")?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// When the users created since `since_ms` were created, newest user first (for the
    /// per-day figures). Exact here (an index on the time), where sled stops after a run of
    /// older users.
    pub(crate) async fn users_created_since(&self, since_ms: i64) -> Result<Vec<i64>, StoreError> {
        let rows = self
            .rows(
                "SELECT created_at_ms FROM users WHERE created_at_ms >= $1 ORDER BY uid DESC",
                &[(&since_ms, Type::INT8)],
            )
            .await?;
        rows.iter().map(|r| col(r, "created_at_ms")).collect()
    }

    /// Every user with when their credits last changed (their newest ledger entry), lowest
    /// uid first. An admin tool: it reads every user.
    pub(crate) async fn user_activity(&self) -> Result<Vec<UserActivity>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLS},
                    (SELECT at_ms FROM ledger l WHERE l.uid = users.uid
                     ORDER BY seq DESC LIMIT 1) AS last_active_ms
             FROM users ORDER BY uid"
        );
        let rows = self.rows(&sql, &[]).await?;
        rows.iter()
            .map(|r| {
                Ok(UserActivity {
                    user: user_from(r)?,
                    last_active_ms: col(r, "last_active_ms")?,
                })
            })
            .collect()
    }

    /// The owners of the tokens `q` names: a whole token (looked up by its hash), or the
    /// start of a token's hash as `TokenInfo::hash_prefix` shows it (at least 6 hex
    /// characters, so a search never lists every token); at most `limit`, each with its hash
    /// prefix.
    pub(crate) async fn find_tokens(
        &self,
        q: &str,
        limit: usize,
    ) -> Result<Vec<(Uid, String)>, StoreError> {
        let q = q.trim();
        let rows = if q.starts_with(TOKEN_PREFIX) {
            let hash = token_hash(q).to_vec();
            self.rows(
                "SELECT hash, uid FROM tokens WHERE hash = $1",
                &[(&hash, Type::BYTEA)],
            )
            .await?
        } else {
            let prefix = q.to_ascii_lowercase();
            if prefix.len() < 6 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(Vec::new());
            }
            let limit = sql_limit(limit);
            self.rows(
                "SELECT hash, uid FROM tokens WHERE starts_with(encode(hash, 'hex'), $1)
                 ORDER BY hash LIMIT $2",
                &[(&prefix, Type::TEXT), (&limit, Type::INT8)],
            )
            .await?
        };
        rows.iter()
            .map(|r| {
                let hash: Vec<u8> = col(r, "hash")?;
                Ok((uid_of(r, "uid")?, hash_prefix(&hash)))
            })
            .collect()
    }

    /// Revokes `uid`'s token whose hash starts with `prefix`: true if it was live, false if
    /// already revoked; [`StoreError::InvalidInput`] unless exactly one of the user's tokens
    /// matches.
    pub(crate) async fn revoke_token_by_hash(
        &self,
        uid: Uid,
        prefix: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let prefix = prefix.trim().to_ascii_lowercase();
        if prefix.len() < 6 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::InvalidInput(format!(
                "{prefix:?} is not a token's hash prefix (6 to 64 hex characters)"
            )));
        }
        let id = uid_param(uid)
            .map_err(|_| StoreError::InvalidInput(format!("user {uid} has no token {prefix}")))?;
        let rows = self
            .rows(
                REVOKE_BY_HASH,
                &[
                    (&id, Type::INT8),
                    (&prefix, Type::TEXT),
                    (&now_ms, Type::INT8),
                ],
            )
            .await?;
        let row = one(&rows)?;
        match col::<i64>(row, "matching")? {
            1 => col(row, "revoked"),
            0 => Err(StoreError::InvalidInput(format!(
                "user {uid} has no token {prefix}"
            ))),
            _ => Err(StoreError::InvalidInput(format!(
                "{prefix} names more than one of user {uid}'s tokens; give more of it"
            ))),
        }
    }

    /// A page of `uid`'s ledger, newest first: at most `limit` (1 to 1,000) entries with a
    /// seq below `before` (all, when `None`), and the seq the next (older) page starts
    /// before, if there are older entries.
    pub(crate) async fn ledger_page(
        &self,
        uid: Uid,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<LedgerEntry>, Option<u64>), StoreError> {
        let Ok(id) = uid_param(uid) else {
            return Ok((Vec::new(), None));
        };
        let limit = limit.clamp(1, MAX_LEDGER_PAGE);
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let fetch = sql_limit(limit + 1);
        let sql = format!(
            "SELECT {ENTRY_COLS} FROM ledger WHERE uid = $1 AND seq < $2
             ORDER BY seq DESC LIMIT $3"
        );
        let rows = self
            .rows(
                &sql,
                &[
                    (&id, Type::INT8),
                    (&before, Type::INT8),
                    (&fetch, Type::INT8),
                ],
            )
            .await?;
        let more = rows.len() > limit;
        let mut entries = Vec::with_capacity(limit);
        for row in rows.iter().take(limit) {
            entries.push(
                entry_from(row)?.ok_or_else(|| StoreError::Backend("empty ledger row".into()))?,
            );
        }
        let next = if more {
            entries.last().map(|e| e.seq)
        } else {
            None
        };
        Ok((entries, next))
    }

    /// Checks, for every user, that the ledger's paid deltas add up to the paid balance
    /// (entry by entry, never below zero, seqs gapless from 1), that open reservations add
    /// up to the held credits and that the next seq follows the last entry (as
    /// `KvStore::audit`), in one statement. Not a snapshot across users' later writes: run it
    /// on a quiet store, as on sled.
    pub(crate) async fn audit(&self) -> Result<AuditReport, StoreError> {
        let rows = self.rows(AUDIT, &[]).await?;
        let first = one(&rows)?;
        let mut report = AuditReport {
            users: count(first, "users")?,
            ledger_entries: count(first, "entries")?,
            open_reservations: count(first, "open_reservations")?,
            total_paid: number(first, "total_paid")?,
            total_held: number(first, "total_held")?,
            mismatches: Vec::new(),
        };
        for row in &rows {
            if let Some(m) = mismatch(row)? {
                report.mismatches.push(m);
            }
        }
        if !report.is_consistent() {
            tracing::warn!(
                mismatches = report.mismatches.len(),
                "store audit found inconsistencies"
            );
        }
        Ok(report)
    }
}

/// One audit row's mismatch (`None`: the row of a consistent store).
fn mismatch(row: &Row) -> Result<Option<AuditMismatch>, StoreError> {
    let Some(kind) = col::<Option<String>>(row, "kind")? else {
        return Ok(None);
    };
    let uid = uid_of(row, "uid")?;
    let seq = || -> Result<u64, StoreError> {
        let seq: i64 = col(row, "seq")?;
        u64::try_from(seq).map_err(|_| StoreError::Backend(format!("ledger seq {seq}")))
    };
    Ok(Some(match kind.as_str() {
        "seq_gap" => AuditMismatch::SeqGap {
            uid,
            expected: number(row, "a")?,
            found: seq()?,
        },
        "paid_after" => AuditMismatch::PaidAfter {
            uid,
            seq: seq()?,
            running: number(row, "a")?,
            recorded: number(row, "b")?,
        },
        "paid" => AuditMismatch::Paid {
            uid,
            ledger_sum: number(row, "a")?,
            paid: number(row, "b")?,
        },
        "held" => AuditMismatch::Held {
            uid,
            reserved: number(row, "a")?,
            held: number(row, "b")?,
        },
        "next_seq" => AuditMismatch::NextSeq {
            uid,
            next_seq: number(row, "a")?,
            last_seq: number(row, "b")?,
        },
        other => return Err(StoreError::Backend(format!("audit row kind {other:?}"))),
    }))
}

/// A count column as a `usize`.
fn count(row: &Row, name: &str) -> Result<usize, StoreError> {
    let n: i64 = col(row, name)?;
    usize::try_from(n).map_err(|_| StoreError::Backend(format!("column {name}: {n}")))
}

/// A whole number sent as text (sums are numeric in PostgreSQL and may pass i64).
fn number<T: std::str::FromStr>(row: &Row, name: &str) -> Result<T, StoreError> {
    let text: String = col(row, name)?;
    text.parse()
        .map_err(|_| StoreError::Backend(format!("column {name}: {text:?} is not a whole number")))
}

/// A caller's limit as SQL's (`usize::MAX`, "all", saturates).
pub(super) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}
