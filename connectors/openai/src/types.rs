//! Serde types of the OpenAI wire format: chat completions (requests,
//! responses, stream chunks), models, image generation and moderation. Pure
//! data, no I/O.
//!
//! Every struct that crosses the wire keeps fields it does not know in a
//! flattened `extra` map, because OpenAI-compatible providers add their own
//! (DeepSeek's `reasoning_content`, `system_fingerprint`, `logprobs`, tool
//! calls, ...) and the daemon must pass them through untouched rather than
//! lose them on a round trip. Response fields that some providers omit or
//! send as `null` fall back to their defaults instead of failing the decode.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Deserializes `null` as the type's default, for fields some providers send
/// as `null` although OpenAI always fills them.
fn null_as_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

/// Body of `POST /chat/completions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Model name, e.g. `gpt-4o-mini` or `deepseek-chat`.
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// Sampling temperature; provider default when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Output token cap. `max_tokens` is deprecated and rejected by reasoning
    /// models, so this is the field to use (older servers can get
    /// `max_tokens` through `extra`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Opaque end-user id, which helps the provider trace abuse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Whether to stream; the [`Client`](crate::Client) sets this itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Streaming options; the [`Client`](crate::Client) sets this itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Any other request field (`tools`, `top_p`, `response_format`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `stream_options` of a streaming request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Ask for a final chunk with token usage (and empty `choices`), which is
    /// what quota accounting is charged from.
    #[serde(default)]
    pub include_usage: bool,
}

/// One chat message, in a request or in a non-streaming response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub role: String,
    /// A string, an array of content parts (`{"type":"text","text":..}`,
    /// images, ...), or `null` (assistant messages that only call tools).
    #[serde(default)]
    pub content: Value,
    /// Other fields: `name`, `tool_calls`, `refusal`, `reasoning_content`, ...
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Message {
    /// A message with plain-text content.
    pub fn new(role: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: Value::String(text.into()),
            extra: Map::new(),
        }
    }

    /// The text of the message: the string content, or the `text` of every
    /// text part of an array content concatenated; empty for anything else.
    #[must_use]
    pub fn text(&self) -> String {
        match &self.content {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter(|p| {
                    // Parts without a type are treated as text, as lenient
                    // providers accept them.
                    matches!(p.get("type").and_then(Value::as_str), None | Some("text"))
                })
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect(),
            _ => String::new(),
        }
    }

    /// The text of the last `user` message of a conversation: what the user is asking now
    /// (empty when there is none).
    #[must_use]
    pub fn last_user_text(messages: &[Message]) -> String {
        messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(Message::text)
            .unwrap_or_default()
    }
}

/// Body of a non-streaming chat completion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// Completion id (`chatcmpl-...`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub id: String,
    /// `chat.completion`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub object: String,
    /// Unix seconds.
    #[serde(default, deserialize_with = "null_as_default")]
    pub created: i64,
    /// The model that actually answered (may differ from the one asked for).
    #[serde(default, deserialize_with = "null_as_default")]
    pub model: String,
    /// Usually exactly one choice.
    #[serde(default, deserialize_with = "null_as_default")]
    pub choices: Vec<Choice>,
    /// Token usage, which quotas are charged from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Other fields (`system_fingerprint`, `service_tier`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatResponse {
    /// The text of the first choice, or an empty string if there is none.
    #[must_use]
    pub fn text(&self) -> String {
        self.choices
            .first()
            .map(|c| c.message.text())
            .unwrap_or_default()
    }
}

/// One choice of a non-streaming completion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Position among the choices.
    #[serde(default, deserialize_with = "null_as_default")]
    pub index: u32,
    /// The assistant message.
    #[serde(default, deserialize_with = "null_as_default")]
    pub message: Message,
    /// `stop`, `length`, `tool_calls`, `content_filter`, ...
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Other fields (`logprobs`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One `data:` chunk of a streaming completion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatChunk {
    /// Completion id, the same on every chunk of one stream.
    #[serde(default, deserialize_with = "null_as_default")]
    pub id: String,
    /// `chat.completion.chunk`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub object: String,
    /// Unix seconds.
    #[serde(default, deserialize_with = "null_as_default")]
    pub created: i64,
    /// The model that answers.
    #[serde(default, deserialize_with = "null_as_default")]
    pub model: String,
    /// Usually one choice; empty on the final usage chunk.
    #[serde(default, deserialize_with = "null_as_default")]
    pub choices: Vec<ChunkChoice>,
    /// Set only on the final chunk when `include_usage` was requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Other fields (`system_fingerprint`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatChunk {
    /// The content delta of the first choice, if any.
    #[must_use]
    pub fn content(&self) -> Option<&str> {
        self.choices
            .first()
            .and_then(|c| c.delta.content.as_deref())
    }
}

/// One choice of a stream chunk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// Position among the choices.
    #[serde(default, deserialize_with = "null_as_default")]
    pub index: u32,
    /// What this chunk adds to the message.
    #[serde(default, deserialize_with = "null_as_default")]
    pub delta: Delta,
    /// Set on the last content chunk of this choice.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Other fields (`logprobs`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The increment a stream chunk adds to the assistant message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// `assistant`, on the first chunk only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Text to append; absent or `null` on role-only, tool-call and final chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Other fields (`refusal`, `tool_calls`, DeepSeek `reasoning_content`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Token usage of one completion.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    #[serde(default, deserialize_with = "null_as_default")]
    pub prompt_tokens: u64,
    /// Tokens generated.
    #[serde(default, deserialize_with = "null_as_default")]
    pub completion_tokens: u64,
    /// Sum of the two.
    #[serde(default, deserialize_with = "null_as_default")]
    pub total_tokens: u64,
    /// Other fields (`prompt_tokens_details`, `completion_tokens_details`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `GET /models`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Model name to put in [`ChatRequest::model`].
    #[serde(default, deserialize_with = "null_as_default")]
    pub id: String,
    /// Owner (`openai`, `system`, `library`, ...); empty when omitted.
    #[serde(default, deserialize_with = "null_as_default")]
    pub owned_by: String,
    /// Other fields (`object`, `created`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Body of `GET /models`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ModelList {
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) data: Vec<ModelInfo>,
}

/// Body of `POST /images/generations`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageRequest {
    /// Model name, e.g. `dall-e-3`, `gpt-image-1`, `wanx-v1`, `cogview-3`.
    pub model: String,
    /// What to draw.
    pub prompt: String,
    /// Number of images; provider default (1) when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// `1024x1024`, `1792x1024`, ...; provider default when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// `url` or `b64_json`; provider default (usually `url`) when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<String>,
    /// Any other request field (`quality`, `style`, `user`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Body of a successful `POST /images/generations`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImagesResponse {
    /// Unix seconds.
    #[serde(default, deserialize_with = "null_as_default")]
    pub created: i64,
    /// One entry per generated image.
    #[serde(default, deserialize_with = "null_as_default")]
    pub data: Vec<ImageData>,
    /// Other fields (`usage` of `gpt-image-1`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One generated image: a URL or the image itself, depending on the
/// request's `response_format`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageData {
    /// Where to download the image (providers expire these after a while).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The image, base64-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b64_json: Option<String>,
    /// The prompt the model actually used, when it rewrote it (`dall-e-3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revised_prompt: Option<String>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Body of `POST /moderations`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModerationRequest {
    /// Model name, e.g. `omni-moderation-latest`; provider default when
    /// `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The text to classify.
    pub input: String,
    /// Any other request field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Body of a successful `POST /moderations`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModerationResponse {
    /// Moderation id (`modr-...`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub id: String,
    /// The model that classified the input.
    #[serde(default, deserialize_with = "null_as_default")]
    pub model: String,
    /// One result per input (one here, since the input is a single string).
    #[serde(default, deserialize_with = "null_as_default")]
    pub results: Vec<ModerationResult>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ModerationResponse {
    /// Whether any result is flagged, or has a category set to `true`
    /// (counted too because some compatible servers fill the categories but
    /// leave `flagged` false).
    #[must_use]
    pub fn is_flagged(&self) -> bool {
        self.results
            .iter()
            .any(|r| r.flagged || r.categories.values().any(|hit| *hit))
    }

    /// The names of the categories set to `true` in any result, sorted and
    /// without duplicates (e.g. `["harassment", "violence"]`).
    #[must_use]
    pub fn flagged_categories(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .results
            .iter()
            .flat_map(|r| r.categories.iter())
            .filter(|(_, hit)| **hit)
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// The classification of one input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModerationResult {
    /// Whether the provider considers the input harmful.
    #[serde(default, deserialize_with = "null_as_default")]
    pub flagged: bool,
    /// Per category (`hate`, `violence`, `sexual/minors`, ...): whether it
    /// applies. Entries that are not booleans are dropped.
    #[serde(default, deserialize_with = "lenient_map")]
    pub categories: BTreeMap<String, bool>,
    /// Per category: the model's confidence, 0 to 1. Entries that are not
    /// numbers are dropped.
    #[serde(default, deserialize_with = "lenient_map")]
    pub category_scores: BTreeMap<String, f64>,
    /// Other fields (`category_applied_input_types`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Deserializes a JSON object into a map, keeping only the entries whose
/// value has the expected type; `null` or a non-object gives an empty map.
/// One odd category (a `null` score, a nested object from a newer API
/// version) must not make the whole moderation answer undecodable.
fn lenient_map<'de, D, T>(de: D) -> Result<BTreeMap<String, T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let Value::Object(entries) = Value::deserialize(de)? else {
        return Ok(BTreeMap::new());
    };
    Ok(entries
        .into_iter()
        .filter_map(|(k, v)| serde_json::from_value(v).ok().map(|v| (k, v)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseParser;
    use serde_json::json;

    fn recorded() -> (String, Value) {
        let v: Value =
            serde_json::from_str(include_str!("../testdata/openai_vectors.json")).unwrap();
        let entry = v["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == "openai_chat_stream_recorded")
            .unwrap()
            .clone();
        (
            entry["input"]["raw_sse"].as_str().unwrap().to_owned(),
            entry["expected"].clone(),
        )
    }

    #[test]
    fn recorded_chunks_deserialize() {
        let (raw, expected) = recorded();
        let events = SseParser::new().push(raw.as_bytes());
        let chunks: Vec<ChatChunk> = events
            .iter()
            .filter(|e| e.data != "[DONE]")
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        assert_eq!(chunks.len(), 33);
        let first = &chunks[0];
        assert_eq!(first.object, "chat.completion.chunk");
        assert_eq!(first.created, 1_727_346_168);
        assert_eq!(first.model, "gpt-4o-2024-08-06");
        assert_eq!(first.choices[0].delta.role.as_deref(), Some("assistant"));
        assert_eq!(first.choices[0].delta.extra["refusal"], Value::Null);
        assert_eq!(first.extra["system_fingerprint"], "fp_5050236cbd");
        let content: String = chunks.iter().filter_map(ChatChunk::content).collect();
        assert_eq!(content, expected["content"]);
        let last = chunks.last().unwrap();
        assert!(last.choices.is_empty());
        let usage = last.usage.as_ref().unwrap();
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens
            ),
            (14, 30, 44)
        );
        assert_eq!(serde_json::to_value(usage).unwrap(), expected["usage"]);
        assert_eq!(chunks[31].choices[0].finish_reason.as_deref(), Some("stop"));
        assert!(chunks[..32].iter().all(|c| c.usage.is_none()));
    }

    #[test]
    fn unknown_fields_are_kept_in_extra() {
        let chunk: ChatChunk = serde_json::from_value(json!({
            "id": "x", "object": "chat.completion.chunk", "created": 1, "model": "deepseek-reasoner",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": null,
                         "reasoning_content": "Let me think"}, "finish_reason": null, "logprobs": null}],
            "usage": null
        }))
        .unwrap();
        let choice = &chunk.choices[0];
        assert_eq!(choice.delta.content, None);
        assert_eq!(choice.delta.extra["reasoning_content"], "Let me think");
        assert_eq!(choice.extra["logprobs"], Value::Null);
        // And they are written back out.
        let back = serde_json::to_value(&chunk).unwrap();
        assert_eq!(
            back["choices"][0]["delta"]["reasoning_content"],
            "Let me think"
        );
    }

    #[test]
    fn response_with_missing_and_null_fields() {
        let resp: ChatResponse = serde_json::from_value(json!({
            "id": null,
            "choices": [{"message": {"role": "assistant", "content": "hi",
                                      "reasoning_content": "because"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4,
                      "prompt_tokens_details": {"cached_tokens": 0}}
        }))
        .unwrap();
        assert_eq!(resp.id, "");
        assert_eq!(resp.text(), "hi");
        assert_eq!(
            resp.choices[0].message.extra["reasoning_content"],
            "because"
        );
        let usage = resp.usage.unwrap();
        assert_eq!(usage.total_tokens, 4);
        assert_eq!(usage.extra["prompt_tokens_details"]["cached_tokens"], 0);
    }

    #[test]
    fn chat_request_round_trip_keeps_extra() {
        let body = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "t1"}],
                 "reasoning_content": "echoed back for DeepSeek"}
            ],
            "temperature": 0.5,
            "tools": [{"type": "function"}],
            "top_p": 0.9
        });
        let req: ChatRequest = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(req.extra["top_p"], 0.9);
        assert_eq!(req.messages[1].content, Value::Null);
        assert_eq!(req.messages[1].extra["tool_calls"][0]["id"], "t1");
        assert_eq!(serde_json::to_value(&req).unwrap(), body);
    }

    #[test]
    fn request_skips_none_fields() {
        let req = ChatRequest {
            model: "m".into(),
            messages: vec![Message::new("user", "hello")],
            ..ChatRequest::default()
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"model": "m", "messages": [{"role": "user", "content": "hello"}]})
        );
        let req = ChatRequest {
            stream: Some(true),
            stream_options: Some(StreamOptions {
                include_usage: true,
            }),
            max_completion_tokens: Some(5),
            ..req
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["stream"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["max_completion_tokens"], 5);
    }

    #[test]
    fn message_text_of_string_parts_and_null() {
        assert_eq!(Message::new("user", "plain").text(), "plain");
        let m: Message = serde_json::from_value(json!({"role": "user", "content": [
            {"type": "text", "text": "a"},
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
            {"type": "text", "text": "b"}
        ]}))
        .unwrap();
        assert_eq!(m.text(), "ab");
        let m: Message = serde_json::from_value(json!({"role": "assistant"})).unwrap();
        assert_eq!(m.content, Value::Null);
        assert_eq!(m.text(), "");
    }

    #[test]
    fn model_list() {
        let list: ModelList = serde_json::from_value(json!({"object": "list", "data": [
            {"id": "gpt-4o", "object": "model", "created": 1, "owned_by": "openai"},
            {"id": "llama3"}
        ]}))
        .unwrap();
        assert_eq!(list.data.len(), 2);
        assert_eq!(list.data[0].owned_by, "openai");
        assert_eq!(list.data[0].extra["created"], 1);
        assert_eq!(list.data[1].owned_by, "");
    }

    #[test]
    fn image_request_and_tolerant_response() {
        let mut req = ImageRequest {
            model: "dall-e-3".into(),
            prompt: "a cat".into(),
            size: Some("1024x1024".into()),
            ..ImageRequest::default()
        };
        req.extra.insert("quality".into(), json!("hd"));
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"model": "dall-e-3", "prompt": "a cat", "size": "1024x1024", "quality": "hd"})
        );
        let resp: ImagesResponse = serde_json::from_value(json!({
            "created": 1_700_000_000,
            "data": [{"url": "https://x/1.png", "revised_prompt": "a small cat"}, {"b64_json": "aGk="}, {}],
            "usage": {"total_tokens": 5}
        }))
        .unwrap();
        assert_eq!(resp.data.len(), 3);
        assert_eq!(resp.data[0].url.as_deref(), Some("https://x/1.png"));
        assert_eq!(resp.data[0].revised_prompt.as_deref(), Some("a small cat"));
        assert_eq!(resp.data[1].b64_json.as_deref(), Some("aGk="));
        assert_eq!(resp.data[2], ImageData::default());
        assert_eq!(resp.extra["usage"]["total_tokens"], 5);
        let empty: ImagesResponse = serde_json::from_value(json!({"data": null})).unwrap();
        assert_eq!(empty, ImagesResponse::default());
    }

    #[test]
    fn moderation_request_and_tolerant_response() {
        let req = ModerationRequest {
            input: "hello".into(),
            ..ModerationRequest::default()
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"input": "hello"})
        );
        let resp: ModerationResponse = serde_json::from_value(json!({
            "id": "modr-1", "model": "omni-moderation-latest",
            "results": [
                {"flagged": true,
                 "categories": {"violence": true, "hate": false, "harassment": true, "odd": null},
                 "category_scores": {"violence": 0.9, "hate": 0.01, "odd": "n/a"},
                 "category_applied_input_types": {"violence": ["text"]}},
                {"flagged": false, "categories": {"violence": true}},
                {"flagged": null, "categories": null}
            ]
        }))
        .unwrap();
        assert!(resp.is_flagged());
        assert_eq!(resp.flagged_categories(), ["harassment", "violence"]);
        let first = &resp.results[0];
        assert_eq!(first.categories.len(), 3);
        assert_eq!(first.category_scores.len(), 2);
        assert!(first.extra.contains_key("category_applied_input_types"));
        assert!(resp.results[2].categories.is_empty());

        let clean: ModerationResponse =
            serde_json::from_value(json!({"results": [{"flagged": false}]})).unwrap();
        assert!(!clean.is_flagged());
        assert!(clean.flagged_categories().is_empty());
        assert_eq!(clean.results[0].category_scores.len(), 0);
    }
}
