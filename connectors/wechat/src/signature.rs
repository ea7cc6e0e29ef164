//! SHA-1 request signatures of the Tencent callback protocols.
//!
//! WeChat signs callback URLs with `hex_lower(sha1(concat(sort(parts))))`:
//! the plain `signature` over `(token, timestamp, nonce)` and, in safe mode,
//! the `msg_signature` over `(token, timestamp, nonce, Encrypt)`. Both are
//! the same function of a different list, so one implementation serves both
//! (and WeCom, which uses the same scheme). Pure code, no I/O.

use ring::digest::{Context, SHA1_FOR_LEGACY_USE_ONLY};

/// Computes `hex_lower(sha1(concat(sort(parts))))`.
///
/// The parts are sorted by plain byte order (Rust's `str` ordering) and joined
/// with no separator, as Tencent's reference code does.
#[must_use]
pub fn sha1_signature(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    // SHA-1 is what the protocol mandates; it is used here as a keyed MAC
    // (the token is secret), not for collision resistance.
    let mut ctx = Context::new(&SHA1_FOR_LEGACY_USE_ONLY);
    for part in sorted {
        ctx.update(part.as_bytes());
    }
    hex::encode(ctx.finish().as_ref())
}

/// Checks `given` against [`sha1_signature`] of `parts` in constant time.
///
/// Hex case is ignored (some proxies upper-case it). A length mismatch is
/// simply `false`.
#[must_use]
pub fn verify_sha1_signature(parts: &[&str], given: &str) -> bool {
    let expected = sha1_signature(parts);
    // Lower-casing maps each byte independently, so it leaks nothing about
    // how much of the signature matched.
    let given = given.to_ascii_lowercase();
    ct_eq(expected.as_bytes(), given.as_bytes())
}

/// Constant-time equality of two byte strings: the time depends only on the
/// lengths, never on where the first difference is, so an attacker cannot
/// discover a valid signature byte by byte.
#[must_use]
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_by_byte_order_and_joins_without_separator() {
        // sha1("abc") is the classic FIPS 180 test vector.
        assert_eq!(
            sha1_signature(&["c", "a", "b"]),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        // Byte order: upper-case letters sort before lower-case ones.
        assert_eq!(sha1_signature(&["b", "B"]), sha1_signature(&["B", "b"]));
        assert_eq!(sha1_signature(&["b", "B"]), sha1_signature(&["Bb"]));
    }

    #[test]
    fn verify_accepts_upper_case_and_rejects_other_lengths() {
        let sig = sha1_signature(&["token", "1", "2"]);
        assert!(verify_sha1_signature(&["token", "1", "2"], &sig));
        assert!(verify_sha1_signature(
            &["token", "1", "2"],
            &sig.to_ascii_uppercase()
        ));
        assert!(!verify_sha1_signature(&["token", "1", "2"], &sig[..39]));
        assert!(!verify_sha1_signature(&["token", "1", "2"], ""));
        assert!(!verify_sha1_signature(&["token", "1", "3"], &sig));
    }

    #[test]
    fn ct_eq_basics() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }
}
