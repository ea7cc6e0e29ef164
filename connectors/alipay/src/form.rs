//! `application/x-www-form-urlencoded` encoding and strict decoding.
//!
//! Written by hand (it is small) so the decoder can be stricter than a
//! browser's: Alipay signs the *decoded* values, so anything ambiguous —
//! a malformed `%XX`, invalid UTF-8, a key given twice — is an error rather
//! than a guess that might make us check a different string than the one
//! Alipay signed.

use std::collections::BTreeSet;

use crate::AlipayError;

/// Decoded `(key, value)` byte strings, before the UTF-8 check.
pub type BytePairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Splits a form body into percent-decoded `(key, value)` byte strings, in
/// body order.
///
/// `+` decodes to a space and `%XX` to the byte `XX`; a `%` not followed by
/// two hex digits is an error. Empty segments (`a=1&&b=2`, a trailing `&`)
/// are skipped; a segment without `=` is a key with an empty value. Empty
/// keys and repeated keys are errors: we would not know which value was
/// signed. Bytes are returned undecoded as text so the caller can look at
/// `charset` before insisting on UTF-8.
pub fn decode_bytes(body: &[u8]) -> Result<BytePairs, AlipayError> {
    let mut pairs = Vec::new();
    for segment in body.split(|&b| b == b'&') {
        if segment.is_empty() {
            continue;
        }
        // Split at the first `=` only: base64 values end in `=` padding.
        let mut parts = segment.splitn(2, |&b| b == b'=');
        let k = parts.next().unwrap_or_default();
        let v = parts.next().unwrap_or_default();
        let key = percent_decode(k)?;
        if key.is_empty() {
            return Err(AlipayError::Form("empty parameter name".into()));
        }
        pairs.push((key, percent_decode(v)?));
    }
    // A set, not a pairwise scan: the body is attacker-sized.
    let mut seen = BTreeSet::new();
    for (k, _) in &pairs {
        if !seen.insert(k.as_slice()) {
            return Err(AlipayError::Form(format!(
                "duplicate parameter `{}`",
                crate::error::truncate(&String::from_utf8_lossy(k), 64)
            )));
        }
    }
    Ok(pairs)
}

/// Decodes a form body into UTF-8 `(key, value)` pairs: [`decode_bytes`]
/// plus a strict UTF-8 check (invalid UTF-8 is [`AlipayError::Form`]).
pub fn decode(body: &[u8]) -> Result<Vec<(String, String)>, AlipayError> {
    decode_bytes(body)?.into_iter().map(pair_to_utf8).collect()
}

/// Converts one decoded byte pair to UTF-8 strings, or fails with
/// [`AlipayError::Form`].
pub(crate) fn pair_to_utf8((k, v): (Vec<u8>, Vec<u8>)) -> Result<(String, String), AlipayError> {
    let k = String::from_utf8(k)
        .map_err(|_| AlipayError::Form("parameter name is not UTF-8".into()))?;
    let v = String::from_utf8(v).map_err(|_| {
        AlipayError::Form(format!(
            "value of `{}` is not UTF-8",
            crate::error::truncate(&k, 64)
        ))
    })?;
    Ok((k, v))
}

/// Encodes pairs as a form body, UTF-8, in the given order.
///
/// Unreserved bytes (`A-Z a-z 0-9 * - . _`) are kept, a space becomes `+`,
/// every other byte becomes `%XX` (upper-case hex). This matches Java's
/// `URLEncoder` and Python's `quote_plus` closely enough for any decoder.
#[must_use]
pub fn encode(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_component(k, &mut out);
        out.push('=');
        encode_component(v, &mut out);
    }
    out
}

/// Appends the form encoding of `s` to `out`.
fn encode_component(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
        }
    }
}

/// Decodes `+` and `%XX` escapes into raw bytes.
fn percent_decode(input: &[u8]) -> Result<Vec<u8>, AlipayError> {
    let mut out = Vec::with_capacity(input.len());
    let mut iter = input.iter();
    while let Some(&b) = iter.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = iter.next().copied().and_then(hex_value);
                let lo = iter.next().copied().and_then(hex_value);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(AlipayError::Form("invalid percent escape".into())),
                }
            }
            _ => out.push(b),
        }
    }
    Ok(out)
}

/// The value of one hex digit, either case.
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn decodes_plus_percent_and_chinese() {
        let got = decode(b"a=1+2&b=1%2B2&c=%E4%BD%A0%e5%a5%bd&d=&e&f=x%3Dy%26z").unwrap();
        assert_eq!(
            got,
            pairs(&[
                ("a", "1 2"),
                ("b", "1+2"),
                ("c", "你好"),
                ("d", ""),
                ("e", ""),
                ("f", "x=y&z")
            ])
        );
    }

    #[test]
    fn value_may_contain_equals() {
        assert_eq!(decode(b"sign=abc==").unwrap(), pairs(&[("sign", "abc==")]));
    }

    #[test]
    fn skips_empty_segments() {
        assert_eq!(
            decode(b"&a=1&&b=2&").unwrap(),
            pairs(&[("a", "1"), ("b", "2")])
        );
        assert_eq!(decode(b"").unwrap(), pairs(&[]));
    }

    #[test]
    fn rejects_malformed() {
        for body in [
            &b"a=%"[..],
            b"a=%4",
            b"a=%4G",
            b"a=%%41",
            b"%ZZ=1",
            b"a=%FF",     // decodes to invalid UTF-8
            b"a=\xff",    // raw invalid UTF-8
            b"a=%E4%BD",  // truncated UTF-8 sequence
            b"=x",        // empty key
            b"a=1&a=2",   // duplicate
            b"a=1&%61=2", // duplicate after decoding
        ] {
            assert!(
                matches!(decode(body), Err(AlipayError::Form(_))),
                "{:?} should be rejected",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn encode_round_trips() {
        let p = pairs(&[
            ("biz_content", r#"{"subject":"你好 & = + %","n":1}"#),
            ("timestamp", "2014-07-24 03:07:50"),
            ("empty", ""),
            ("safe", "AZaz09*-._"),
        ]);
        let body = encode(&p);
        assert!(body.contains("timestamp=2014-07-24+03%3A07%3A50"), "{body}");
        assert!(body.contains("safe=AZaz09*-._"), "{body}");
        assert_eq!(decode(body.as_bytes()).unwrap(), p);
    }
}
