//! The errors of the zsxq client and parsers.
//!
//! No variant ever carries the access token: HTTP errors are stripped of
//! their URL, and the token only travels in a header marked sensitive.

/// Everything that can go wrong talking to zsxq.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ZsxqError {
    /// Code 1059: requests too frequent (or an intermittent failure). Back
    /// off exponentially; hammering on leads to a banned token.
    #[error("zsxq: too frequent (code 1059); back off")]
    TooFrequent,
    /// HTTP 401 or code 401: the access token expired or was banned. Stop
    /// polling and ask an operator to log in again and update the token.
    #[error("zsxq: access token rejected (401); a new token is needed")]
    Unauthorized,
    /// Any other `{"succeeded":false,..}` answer. `code` is 0 when zsxq sent
    /// none; `info` is its `info`, else its `error`, else empty.
    #[error("zsxq API error {code}: {info}")]
    Api {
        /// zsxq's error code.
        code: i64,
        /// zsxq's message.
        info: String,
    },
    /// The request timed out after it was sent. For [`crate::Client::answer`]
    /// the outcome is unknown: check with [`crate::Client::is_answered`].
    #[error("zsxq: request timed out")]
    Timeout,
    /// The request failed before zsxq could act on it (connection refused,
    /// DNS, a connect timeout) or zsxq refused it with an HTTP status other
    /// than 401 and 5xx.
    #[error("zsxq HTTP error: {0}")]
    Http(String),
    /// The request was sent but no usable answer came back (connection reset
    /// mid-response, a 5xx status): it may have taken effect.
    #[error("zsxq: request sent but unconfirmed: {0}")]
    Unconfirmed(String),
    /// The response was not the expected JSON.
    #[error("unexpected zsxq response: {message}")]
    Decode {
        /// What was wrong.
        message: String,
        /// The first KiB of the body (lossy UTF-8), for diagnosis.
        raw: String,
    },
    /// Refused locally, before any request: a malformed argument or
    /// configuration (a non-numeric group id, an empty answer, an access
    /// token with characters a cookie cannot hold).
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl ZsxqError {
    /// Whether the request may have taken effect although it failed:
    /// [`Self::Timeout`], [`Self::Unconfirmed`] (the request was sent, the
    /// answer was lost or a 5xx), or [`Self::Decode`] (zsxq answered, but
    /// not with anything understood). After an ambiguous
    /// [`crate::Client::answer`], check [`crate::Client::is_answered`] before
    /// answering again.
    #[must_use]
    pub fn is_ambiguous(&self) -> bool {
        matches!(
            self,
            Self::Timeout | Self::Unconfirmed(_) | Self::Decode { .. }
        )
    }
}
