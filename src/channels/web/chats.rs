//! The page's conversations on the server (`/api/conversations`), so that a user finds the
//! same conversations on every device: web conversations the page saves whole
//! ([`chatrelay_storage::Chat`], ids `w_…` the page makes), and the user's chat-platform
//! conversations (Official Account, WeCom, Telegram, zsxq), read from the engine's memory of
//! each of the user's identities (ids `p_…`, stable per identity; nothing is stored twice)
//! and continued from the page through the engine (`POST …/messages`, streamed like `/v1`).
//!
//! Routes (bearer token, JSON, errors `{"error": {"code", "message"}}`):
//! - `GET /api/conversations`: summaries, newest first.
//! - `GET /api/conversations/{id}`: one, with its messages; `404 not_found` for one that
//!   does not exist or is another user's.
//! - `PUT /api/conversations/{id}`: saves a web conversation whole; `base` = the version the
//!   page last saw (`409 conflict` with `error.current` when the stored one differs); `413
//!   too_large` over `[web] conversation_max_kb`; beyond `[web] conversations_max` the least
//!   recently updated ones are removed (their ids in `pruned`).
//! - `PATCH /api/conversations/{id}`: renames a web conversation.
//! - `DELETE /api/conversations/{id}`: `204`; for a platform conversation it clears the
//!   engine's memory of it (as "/new" there does).
//! - `POST /api/conversations/{id}/messages`: continues a platform conversation; the answer
//!   streams as OpenAI chat-completion chunks.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chatrelay_core::{Platform, UserKey};
use chatrelay_storage::{
    Chat, ChatLimits, ChatMessage, ChatPut, Store, StoreError, Turn, Uid, valid_chat_id,
};
use ring::digest::{SHA256, digest};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::warn;

use super::error;
use crate::channels::web::state::WebState;

/// Ids of platform conversations start with this; web conversations may not.
pub const PLATFORM_PREFIX: &str = "p_";

/// The longest title kept, in characters (longer ones are cut: a title is a label).
pub const MAX_TITLE_CHARS: usize = 200;

/// Bytes a `PUT` body may have beyond three times `conversation_max_kb` (JSON's quotes,
/// escapes and field names around the text the limit counts).
const BODY_SLACK: usize = 64 * 1024;

/// The routes.
pub fn routes() -> axum::Router<WebState> {
    axum::Router::new()
        .route("/api/conversations", get(list))
        .route(
            "/api/conversations/{id}",
            get(open).put(save).patch(rename).delete(remove),
        )
        .route("/api/conversations/{id}/messages", post(continue_platform))
}

/// A platform conversation of the user: one of their identities whose memory the engine
/// keeps.
struct PlatformChat {
    id: String,
    key: UserKey,
    source: &'static str,
    title: String,
    turns: Vec<Turn>,
}

/// The `source` of a platform's conversations (`None`: not a chat platform with memory).
fn source_of(platform: Platform) -> Option<&'static str> {
    match platform {
        Platform::Mp => Some("wechat_mp"),
        Platform::Wecom => Some("wecom"),
        Platform::Tg => Some("telegram"),
        Platform::Zsxq => Some("zsxq"),
        Platform::Web | Platform::Api => None,
    }
}

/// The default title of a platform's conversation (the page shows its own label by source).
fn platform_title(platform: Platform) -> &'static str {
    match platform {
        Platform::Mp => "公众号对话",
        Platform::Wecom => "企业微信对话",
        Platform::Tg => "Telegram 对话",
        Platform::Zsxq => "知识星球对话",
        Platform::Web | Platform::Api => "对话",
    }
}

/// The id of the platform conversation of `key`: stable, and revealing nothing of the key
/// (an openid is not shown to the page).
#[must_use]
pub fn platform_chat_id(key: &UserKey) -> String {
    let hash = digest(&SHA256, key.to_string().as_bytes());
    format!(
        "{PLATFORM_PREFIX}{}",
        hex::encode(hash.as_ref().get(..12).unwrap_or_default())
    )
}

/// The user's platform identities (chat platforms with memory), with their ids.
async fn platform_keys(store: &Store, uid: Uid) -> Result<Vec<(String, UserKey)>, StoreError> {
    let keys = store.identities_of(uid).await?;
    Ok(keys
        .into_iter()
        .filter(|k| source_of(k.platform).is_some())
        .map(|k| (platform_chat_id(&k), k))
        .collect())
}

/// The user's platform conversations that have memory (`only`: just the one with that id).
async fn platform_chats(
    store: &Store,
    uid: Uid,
    only: Option<&str>,
) -> Result<Vec<PlatformChat>, StoreError> {
    let keys = platform_keys(store, uid).await?;
    let mut out = Vec::new();
    for (id, key) in &keys {
        if only.is_some_and(|o| o != id) {
            continue;
        }
        let turns: Vec<Turn> = store
            .conversation(&key.to_string())
            .await?
            .into_iter()
            .filter(|t| t.role == "user" || t.role == "assistant")
            .collect();
        if turns.is_empty() {
            continue;
        }
        let Some(source) = source_of(key.platform) else {
            continue;
        };
        // Two accounts of one platform: the account tells them apart.
        let same_platform = keys
            .iter()
            .filter(|(_, k)| k.platform == key.platform)
            .count();
        let title = if same_platform > 1 && !key.account.is_empty() {
            format!("{} · {}", platform_title(key.platform), key.account)
        } else {
            platform_title(key.platform).to_owned()
        };
        out.push(PlatformChat {
            id: id.clone(),
            key: key.clone(),
            source,
            title,
            turns,
        });
    }
    Ok(out)
}

fn updated_of(turns: &[Turn]) -> i64 {
    turns.iter().map(|t| t.at_ms).max().unwrap_or(0)
}

fn chat_json(chat: &Chat) -> Value {
    json!({
        "id": chat.id,
        "title": chat.title,
        "source": "web",
        "updated_at": chat.updated_at_ms,
        "messages": chat.messages.iter().map(|m| {
            let mut v = json!({"role": m.role, "content": m.content});
            if let Some(at) = m.at_ms {
                v["at"] = json!(at);
            }
            if let Some(model) = &m.model {
                v["model"] = json!(model);
            }
            v
        }).collect::<Vec<_>>(),
    })
}

fn platform_json(p: &PlatformChat) -> Value {
    json!({
        "id": p.id,
        "title": p.title,
        "source": p.source,
        "updated_at": updated_of(&p.turns),
        "messages": p.turns.iter().map(|t| json!({
            "role": t.role,
            "content": t.content,
            "at": t.at_ms,
        })).collect::<Vec<_>>(),
    })
}

fn unavailable() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "服务暂时不可用",
    )
}

fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such conversation / 没有这个对话",
    )
}

/// Awaits a read of the store; a failure is answered `503 unavailable` (and logged).
///
/// The reads are awaited on the store's domain interface: short sled calls on the key-value
/// engine (as every other handler's), statements on the pool on PostgreSQL.
async fn read<R>(f: impl Future<Output = Result<R, StoreError>>) -> Result<R, Response> {
    match f.await {
        Ok(r) => Ok(r),
        Err(e) => {
            warn!(error = %e, "reading conversations failed");
            Err(unavailable())
        }
    }
}

/// Awaits a write to the store; input the store refuses is `400 bad_request`, any other
/// failure `503 unavailable` (and logged).
///
/// A page's conversation is not money: it is written without waiting for a flush.
async fn write<R>(f: impl Future<Output = Result<R, StoreError>>) -> Result<R, Response> {
    match f.await {
        Ok(r) => Ok(r),
        Err(StoreError::InvalidInput(m)) => Err(error(StatusCode::BAD_REQUEST, "bad_request", &m)),
        Err(e) => {
            warn!(error = %e, "saving conversations failed");
            Err(unavailable())
        }
    }
}

/// The user a request's bearer token belongs to: an extractor, so that a handler is reached
/// only with one (a missing or wrong token is answered as on `/v1`).
struct Authed(Uid);

impl FromRequestParts<WebState> for Authed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &WebState) -> Result<Self, Response> {
        super::v1::authenticate(st, &parts.headers)
            .await
            .map(Authed)
            .map_err(IntoResponse::into_response)
    }
}

async fn list(State(st): State<WebState>, Authed(uid): Authed) -> Response {
    let store = st.engine.store();
    let got = read(async {
        let web = store.chats(uid).await?;
        let platform = platform_chats(store, uid, None).await?;
        Ok((web, platform))
    })
    .await;
    let (web, platform) = match got {
        Ok(both) => both,
        Err(refused) => return refused,
    };
    let mut all: Vec<(i64, Value)> = web
        .iter()
        .map(|s| {
            (
                s.updated_at_ms,
                json!({"id": s.id, "title": s.title, "source": "web", "updated_at": s.updated_at_ms, "count": s.count}),
            )
        })
        .collect();
    all.extend(platform.iter().map(|p| {
        let updated = updated_of(&p.turns);
        (
            updated,
            json!({"id": p.id, "title": p.title, "source": p.source, "updated_at": updated, "count": p.turns.len()}),
        )
    }));
    all.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    let conversations: Vec<Value> = all.into_iter().map(|(_, v)| v).collect();
    Json(json!({"conversations": conversations})).into_response()
}

async fn open(State(st): State<WebState>, Authed(uid): Authed, Path(id): Path<String>) -> Response {
    if !valid_chat_id(&id) {
        return not_found();
    }
    let store = st.engine.store();
    if id.starts_with(PLATFORM_PREFIX) {
        let got = read(platform_chats(store, uid, Some(&id))).await;
        return match got.map(|mut found| found.pop()) {
            Ok(Some(p)) => Json(platform_json(&p)).into_response(),
            Ok(None) => not_found(),
            Err(refused) => refused,
        };
    }
    match read(store.chat(uid, &id)).await {
        Ok(Some(chat)) => Json(chat_json(&chat)).into_response(),
        Ok(None) => not_found(),
        Err(refused) => refused,
    }
}

/// A message as the page sends it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageIn {
    role: String,
    content: String,
    #[serde(default)]
    at: Option<i64>,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Deserialize)]
struct SaveRequest {
    #[serde(default)]
    title: String,
    messages: Vec<MessageIn>,
    #[serde(default)]
    base: Option<i64>,
}

/// A title as kept: trimmed, at most [`MAX_TITLE_CHARS`] characters.
fn clean_title(title: &str) -> String {
    title.trim().chars().take(MAX_TITLE_CHARS).collect()
}

/// Checks an id a web conversation may have; the refusal otherwise.
fn web_id(id: &str) -> Result<(), Box<Response>> {
    if id.starts_with(PLATFORM_PREFIX) {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "platform_conversation",
            "a platform conversation is not saved through the page; continue it with POST /api/conversations/{id}/messages",
        )));
    }
    if !valid_chat_id(id) {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a conversation id is 1 to 80 characters of A-Z a-z 0-9 _ . : -",
        )));
    }
    Ok(())
}

async fn save(
    State(st): State<WebState>,
    Authed(uid): Authed,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    if let Err(refused) = web_id(&id) {
        return *refused;
    }
    let web = &st.parts().config.web;
    let limits = ChatLimits {
        max_count: web.conversations_max,
        max_bytes: web.conversation_max_kb.saturating_mul(1024),
    };
    let body_limit = usize::try_from(limits.max_bytes)
        .unwrap_or(usize::MAX)
        .saturating_mul(3)
        .saturating_add(BODY_SLACK);
    let Ok(body) = axum::body::to_bytes(body, body_limit).await else {
        return too_large(limits.max_bytes);
    };
    let Ok(req) = serde_json::from_slice::<SaveRequest>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "send {\"title\": \"…\", \"messages\": [{\"role\": \"user\", \"content\": \"…\"}], \"base\": 1700000000000}",
        );
    };
    let title = clean_title(&req.title);
    let messages: Vec<ChatMessage> = req
        .messages
        .into_iter()
        .map(|m| ChatMessage {
            role: m.role,
            content: m.content,
            at_ms: m.at,
            model: m.model,
        })
        .collect();
    let now = crate::util::now_ms();
    // One step of the store: on sled's write lane (the conversation, up to its size limit,
    // is encoded there, off the async workers), awaited on PostgreSQL.
    let (store, chat_id, base) = (st.engine.store().clone(), id.clone(), req.base);
    let outcome = write(async move {
        let s = store.clone();
        store
            .step(async move {
                s.put_chat(uid, &chat_id, &title, &messages, base, now, limits)
                    .await
            })
            .await
            .unwrap_or(Err(StoreError::Reopening))
    })
    .await;
    match outcome {
        Ok(ChatPut::Saved {
            updated_at_ms,
            pruned,
        }) => {
            Json(json!({"id": id, "updated_at": updated_at_ms, "pruned": pruned})).into_response()
        }
        Ok(ChatPut::Conflict(current)) => (
            StatusCode::CONFLICT,
            Json(json!({"error": {
                "code": "conflict",
                "message": "the conversation changed on another device / 对话已在其他设备上更改",
                "current": chat_json(&current),
            }})),
        )
            .into_response(),
        Ok(ChatPut::TooLarge { limit, .. }) => too_large(limit),
        Err(refused) => refused,
    }
}

fn too_large(limit: u64) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        &format!(
            "the conversation is over {} KiB / 对话超过 {} KiB，请新开一个对话",
            limit / 1024,
            limit / 1024
        ),
    )
}

#[derive(Deserialize)]
struct RenameRequest {
    title: String,
}

async fn rename(
    State(st): State<WebState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (uid, req) =
        match super::authed_json::<RenameRequest>(&st, &headers, body, "send {\"title\": \"…\"}")
            .await
        {
            Ok(got) => got,
            Err(refused) => return *refused,
        };
    if let Err(refused) = web_id(&id) {
        return *refused;
    }
    let title = clean_title(&req.title);
    let now = crate::util::now_ms();
    match write(st.engine.store().rename_chat(uid, &id, &title, now)).await {
        Ok(Some(updated_at_ms)) => {
            Json(json!({"id": id, "updated_at": updated_at_ms})).into_response()
        }
        Ok(None) => not_found(),
        Err(refused) => refused,
    }
}

async fn remove(
    State(st): State<WebState>,
    Authed(uid): Authed,
    Path(id): Path<String>,
) -> Response {
    if !valid_chat_id(&id) {
        return not_found();
    }
    let store = st.engine.store();
    let result = if id.starts_with(PLATFORM_PREFIX) {
        // Clearing the memory is what "/new" does on the platform.
        write(async {
            let keys = platform_keys(store, uid).await?;
            if let Some((_, key)) = keys.into_iter().find(|(k, _)| *k == id) {
                store.clear_conversation(&key.to_string()).await?;
            }
            Ok(())
        })
        .await
    } else {
        write(async { store.delete_chat(uid, &id).await.map(|_| ()) }).await
    };
    match result {
        // Deleting what is not there (any more) is done: idempotent, and reveals nothing.
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(refused) => refused,
    }
}

#[derive(Deserialize)]
struct ContinueRequest {
    content: String,
    #[serde(default)]
    model: Option<String>,
}

async fn continue_platform(
    State(st): State<WebState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (uid, req) = match super::authed_json::<ContinueRequest>(
        &st,
        &headers,
        body,
        "send {\"content\": \"…\"}",
    )
    .await
    {
        Ok(got) => got,
        Err(refused) => return *refused,
    };
    if !id.starts_with(PLATFORM_PREFIX) {
        return error(
            StatusCode::BAD_REQUEST,
            "web_conversation",
            "a web conversation continues through /v1/chat/completions with its whole history",
        );
    }
    let settings = st.engine.settings();
    if let Some(model) = &req.model
        && settings.model(model).is_none()
    {
        return error(
            StatusCode::BAD_REQUEST,
            "model_not_found",
            &format!("the model {model} is not offered"),
        );
    }
    // Only a conversation the user has (one the platform remembers): a platform that keeps
    // no memory for this identity (zsxq's one-shot questions) has nothing to continue.
    let key = match read(platform_chats(st.engine.store(), uid, Some(&id))).await {
        Ok(mut found) => found.pop().map(|p| p.key),
        Err(refused) => return refused,
    };
    let Some(key) = key else {
        return not_found();
    };
    let shown_model = req
        .model
        .clone()
        .unwrap_or_else(|| settings.default_model.clone());
    let reference = format!("webconv:{}", crate::util::random_id());
    let reply = st
        .engine
        .continue_on_web(uid, key, &req.content, req.model, &reference);
    match super::v1::stream_reply(st, &headers, uid, reference, shown_model, reply).await {
        Ok(res) => res,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn platform_conversations_are_the_identities_memory_on_both_engines() {
        for (engine, store) in crate::auth::test_stores().await {
            // Shown with a failure: which engine the case failed on.
            eprintln!("engine: {engine}");
            let mp = UserKey::new(Platform::Mp, "main", "o1");
            let tg = UserKey::new(Platform::Tg, "bot", "42");
            let uid = store.resolve_identity(&mp, None).await.unwrap();
            assert_eq!(store.link_identity(&tg, uid).await.unwrap(), None);
            let turn = |role: &str, at_ms| Turn {
                role: role.into(),
                content: format!("{role} {at_ms}"),
                at_ms,
            };
            let turns = [turn("system", 1), turn("user", 2), turn("assistant", 3)];
            store
                .append_turns(&mp.to_string(), &turns, 50)
                .await
                .unwrap();
            // Telegram has no memory yet: only the Official Account's conversation shows.
            let found = platform_chats(&store, uid, None).await.unwrap();
            assert_eq!(found.len(), 1);
            let chat = &found[0];
            assert_eq!(chat.id, platform_chat_id(&mp));
            assert_eq!(
                (chat.source, chat.title.as_str()),
                ("wechat_mp", "公众号对话")
            );
            assert_eq!(
                chat.turns
                    .iter()
                    .map(|t| t.role.as_str())
                    .collect::<Vec<_>>(),
                ["user", "assistant"]
            );
            assert_eq!(updated_of(&chat.turns), 3);
            let only = platform_chats(&store, uid, Some(&platform_chat_id(&tg)))
                .await
                .unwrap();
            assert!(only.is_empty());
            let keys = platform_keys(&store, uid).await.unwrap();
            assert_eq!(keys.len(), 2);
            // What DELETE does for a platform conversation: its memory is gone.
            store.clear_conversation(&mp.to_string()).await.unwrap();
            assert!(platform_chats(&store, uid, None).await.unwrap().is_empty());
        }
    }

    #[test]
    fn platform_ids_are_stable_valid_and_hide_the_key() {
        let key = UserKey::new(Platform::Mp, "main", "oABC-openid_1");
        let id = platform_chat_id(&key);
        assert_eq!(id, platform_chat_id(&key.clone()));
        assert!(id.starts_with(PLATFORM_PREFIX));
        assert!(valid_chat_id(&id));
        assert!(!id.contains("oABC"));
        assert_ne!(
            id,
            platform_chat_id(&UserKey::new(Platform::Mp, "other", "oABC-openid_1"))
        );
    }

    #[test]
    fn sources_and_titles() {
        assert_eq!(source_of(Platform::Mp), Some("wechat_mp"));
        assert_eq!(source_of(Platform::Tg), Some("telegram"));
        assert_eq!(source_of(Platform::Web), None);
        assert_eq!(source_of(Platform::Api), None);
        assert_eq!(
            clean_title(&format!("  {}  ", "字".repeat(300)))
                .chars()
                .count(),
            200
        );
    }

    #[test]
    fn web_ids_refuse_platform_and_bad_ids() {
        assert!(web_id("w_abcdefghijklmnop").is_ok());
        assert_eq!(
            web_id("p_123").unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(web_id("w x").unwrap_err().status(), StatusCode::BAD_REQUEST);
    }
}
