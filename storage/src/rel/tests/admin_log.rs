//! The admin change log on PostgreSQL: the cases of `admin_log.rs`'s tests, the same
//! answers, plus what PostgreSQL cannot hold (NUL).

use serde_json::json;

use crate::{ChangeCursor, ChangeRecord, MAX_CHANGE_BYTES};

fn change(at_ms: i64, path: &str) -> ChangeRecord {
    ChangeRecord {
        at_ms,
        id: 0,
        actor: "console".into(),
        address: "127.0.0.1".into(),
        method: "POST".into(),
        path: path.into(),
        status: 200,
        reason: Some("support ticket 7".into()),
        summary: json!({"credits": 5}),
    }
}
