//! Serde types of the OpenAI Chat Completions wire format (requests,
//! responses, stream chunks, models). Pure data, no I/O.
//!
//! Every struct that crosses the wire keeps fields it does not know in a
//! flattened `extra` map, because OpenAI-compatible providers add their own
//! (DeepSeek's `reasoning_content`, `system_fingerprint`, `logprobs`, tool
//! calls, ...) and the daemon must pass them through untouched rather than
//! lose them on a round trip. Response fields that some providers omit or
//! send as `null` fall back to their defaults instead of failing the decode.

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
}
