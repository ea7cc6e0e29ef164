//! OpenAI-compatible client for chatrelay: chat completions (streamed or
//! not), image generation, moderation and speech to text, over one upstream or several.
//!
//! This crate owns everything the daemon says to an LLM provider (OpenAI,
//! DeepSeek, Qwen, GLM, a local Ollama or vLLM, ...): the wire types, the
//! Server-Sent Events framing of streamed answers, and the HTTP client with
//! its timeouts, retries, API key rotation and error mapping, and the routing
//! of requests over several providers with fallback. It knows
//! nothing about chat platforms, users or quotas.
//!
//! # Layout
//!
//! Pure protocol code, no I/O:
//! - [`sse`]: incremental `text/event-stream` parser ([`sse::SseParser`]).
//! - [`types`]: serde types of requests, responses, chunks and models; unknown
//!   fields are kept in `extra` so provider extensions pass through.
//! - `error`: [`Error`] and the mapping of error bodies (JSON or not) to it.
//! - `retry`: when to retry and how long to wait (openai-python's rules).
//! - `keys`: round-robin API key rotation with cooldowns.
//!
//! I/O:
//! - `client`: [`Client`] and [`ClientConfig`]: requests, timeouts, retries.
//! - [`audio`]: speech to text (`/audio/transcriptions`, a multipart upload).
//! - [`speech`]: text to speech (`/audio/speech`, the answer's audio bytes, size-bounded).
//! - `stream`: [`ChatStream`], the typed chunk stream of a streaming answer.
//! - [`router`]: [`router::Router`], several upstreams with fallback,
//!   health tracking and a circuit breaker.
//!
//! # Example
//!
//! ```no_run
//! use chatrelay_openai::{ChatRequest, Client, ClientConfig, Message};
//! use futures_util::StreamExt;
//!
//! # async fn run() -> Result<(), chatrelay_openai::Error> {
//! let client = Client::new(ClientConfig {
//!     base_url: "https://api.deepseek.com/v1".into(),
//!     api_keys: vec!["sk-...".into()],
//!     ..ClientConfig::default()
//! })?;
//! let req = ChatRequest {
//!     model: "deepseek-chat".into(),
//!     messages: vec![Message::new("user", "Hello")],
//!     ..ChatRequest::default()
//! };
//! let mut stream = client.chat_stream(&req).await?;
//! while let Some(chunk) = stream.next().await {
//!     let chunk = chunk?;
//!     if let Some(text) = chunk.content() {
//!         print!("{text}");
//!     }
//!     if let Some(usage) = &chunk.usage {
//!         println!("\n[{} tokens]", usage.total_tokens);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audio;
mod client;
mod error;
mod keys;
mod retry;
pub mod router;
pub mod speech;
pub mod sse;
mod stream;
pub mod types;

pub use client::{Client, ClientConfig};
pub use error::Error;
pub use stream::ChatStream;
pub use types::*;
