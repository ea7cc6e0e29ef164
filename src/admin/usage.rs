//! A user's usage log for operators: `GET /admin/users/{uid}/usage?before=&limit=`
//! (`chatrelay admin user usage UID`), the same page the user sees at `/api/usage`.

use axum::Json;
use axum::extract::RawQuery;

use super::common::{AdminError, Answer, St, UidPath, existing_user};
use crate::channels::web::usage::{page_json, parse_page_query};

/// A page of the user's usage log, newest first; `404` for an unknown user.
pub async fn user_usage(st: St, UidPath(uid): UidPath, RawQuery(query): RawQuery) -> Answer {
    let (before, limit) = parse_page_query(query.as_deref()).map_err(AdminError::bad_request)?;
    let store = st.engine.store();
    existing_user(store, uid).await?;
    let page = store.usage(uid, before, limit).await?;
    Ok(Json(page_json(&page)))
}
