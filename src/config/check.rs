//! Small format checks shared by the validation files.

/// Letters, digits, `_` and `-` only (ids used in URLs, keys and secrets Telegram accepts).
pub(super) fn id_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A non-empty [`id_chars`] string.
pub(super) fn is_id(s: &str) -> bool {
    !s.is_empty() && id_chars(s)
}

/// An http(s) URL with something after the scheme.
pub(super) fn is_http_url(s: &str) -> bool {
    (s.starts_with("http://") && s.len() > 7) || (s.starts_with("https://") && s.len() > 8)
}
