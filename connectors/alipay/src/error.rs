//! The crate's error type.
//!
//! One enum for the pure protocol code and the HTTP client, so a caller that
//! handles a notification and one that queries an order match on the same
//! variants. Messages are for humans and logs and may change; match on the
//! variants instead. No variant ever carries key material.

/// Longest raw body kept in [`AlipayError::Decode`], in bytes, so a huge or
/// hostile response cannot bloat logs.
pub(crate) const MAX_RAW_BYTES: usize = 1024;

/// Everything that can go wrong loading keys, checking notifications or
/// talking to the Alipay gateway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AlipayError {
    /// A key could not be loaded (bad PEM/base64/DER, wrong type, too
    /// small). The message says which check failed, never the key itself.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// An argument we were asked to send is unusable (empty, too long, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// An amount is not an exact non-negative yuan decimal with at most two
    /// decimals, or does not fit in `i64` fen, or is out of the allowed range.
    #[error("invalid amount: {0}")]
    InvalidAmount(String),
    /// The RSA2 signature did not verify (or was not valid base64). Nothing
    /// in the message or response may be trusted.
    #[error("signature verification failed")]
    BadSignature,
    /// A required parameter or response field is absent or empty.
    #[error("missing parameter `{0}`")]
    MissingParam(&'static str),
    /// The notification declares a charset other than UTF-8. Only UTF-8 is
    /// supported: we never configure GBK, so a GBK notify is unexpected.
    #[error("unsupported charset `{0}` (only utf-8 is supported)")]
    UnsupportedCharset(String),
    /// The notification body is larger than [`crate::notify::MAX_BODY_BYTES`].
    #[error("body too large")]
    TooLarge,
    /// The body is not well-formed `application/x-www-form-urlencoded`
    /// UTF-8 (bad `%XX`, invalid UTF-8, duplicate key, ...).
    #[error("malformed form body: {0}")]
    Form(String),
    /// A gateway response could not be understood. `raw` keeps (a bounded
    /// prefix of) the body for bug reports; it contains no secrets of ours.
    #[error("cannot decode Alipay response: {message}")]
    Decode {
        /// What was wrong with it.
        message: String,
        /// The start of the raw body, at most 1 KiB.
        raw: String,
    },
    /// The gateway answered, with a valid signature, a business error
    /// (`code` other than `"10000"`), e.g. `sub_code` `ACQ.TRADE_NOT_EXIST`.
    #[error(
        "Alipay API error {code} {msg}{}",
        match (.sub_code, .sub_msg) {
            (Some(c), Some(m)) => format!(" ({c}: {m})"),
            (Some(c), None) => format!(" ({c})"),
            _ => String::new(),
        }
    )]
    Api {
        /// Gateway code, e.g. `"40004"` (business failure).
        code: String,
        /// Gateway message, e.g. `"Business Failed"`.
        msg: String,
        /// Business error code, e.g. `"ACQ.TRADE_NOT_EXIST"`.
        sub_code: Option<String>,
        /// Human-readable business error message.
        sub_msg: Option<String>,
    },
    /// Transport failure: connect, timeout, TLS, or a non-2xx HTTP status.
    #[error("HTTP error: {0}")]
    Http(String),
}

impl AlipayError {
    /// Builds a [`AlipayError::Decode`] keeping at most [`MAX_RAW_BYTES`] of
    /// the body, cut on a character boundary.
    pub(crate) fn decode(message: impl Into<String>, raw: &str) -> Self {
        Self::Decode {
            message: message.into(),
            raw: truncate(raw, MAX_RAW_BYTES).to_owned(),
        }
    }
}

/// The longest prefix of `s` that is at most `max` bytes and ends on a char
/// boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("你好", 4), "你");
        assert_eq!(truncate("你好", 2), "");
        let e = AlipayError::decode("x", &"y".repeat(5000));
        match e {
            AlipayError::Decode { raw, .. } => assert_eq!(raw.len(), MAX_RAW_BYTES),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn api_error_display_mentions_sub_code() {
        let e = AlipayError::Api {
            code: "40004".into(),
            msg: "Business Failed".into(),
            sub_code: Some("ACQ.TRADE_NOT_EXIST".into()),
            sub_msg: Some("交易不存在".into()),
        };
        assert_eq!(
            e.to_string(),
            "Alipay API error 40004 Business Failed (ACQ.TRADE_NOT_EXIST: 交易不存在)"
        );
    }
}
