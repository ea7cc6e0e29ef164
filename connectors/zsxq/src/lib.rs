//! zsxq (知识星球) web API client for chatrelay.
//!
//! The daemon uses this crate to list the unanswered questions of a paid
//! zsxq group, post an answer, and check whether a topic has been answered
//! (after an answer post whose outcome is unknown). The API is undocumented;
//! see `PROTOCOLS.md` section 5 for what is known about it.
//!
//! # Layout
//!
//! Pure code, no I/O:
//! - [`types`]: [`TopicId`], [`Question`], [`parse_topics`] and the
//!   `{"succeeded":..}` envelope with its error mapping.
//! - [`markup`]: zsxq's `<e type=".." .. />` markup to plain text
//!   ([`to_plain`]) and an LLM's markdown to the plain text zsxq shows
//!   ([`render_answer`]).
//! - [`error`]: [`ZsxqError`], the one error type.
//!
//! I/O:
//! - [`client`]: [`Client`], spacing its requests and keeping the access
//!   token out of logs and errors.

#![warn(missing_docs)]

pub mod client;
pub mod error;
pub mod markup;
pub mod types;

pub use client::{Client, ClientConfig, DEFAULT_API_BASE, DEFAULT_USER_AGENT, DEFAULT_X_VERSION};
pub use error::ZsxqError;
pub use markup::{render_answer, to_plain};
pub use types::{Owner, Question, TopicId, parse_topics};
