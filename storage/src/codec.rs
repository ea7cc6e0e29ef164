//! Key encoding, value (de)serialisation and transaction plumbing shared by the modules.
//!
//! Integer keys are big-endian so that sled's byte order is numeric order. Most values are
//! serde_json: readable with any tool, and evolvable with `#[serde(default)]`. The records
//! written on every credit change (the ledger, its reference index, balances, reservations)
//! and the usage log are compact binary instead: a leading [`BINARY`] byte (which no JSON
//! value starts with, so older JSON values of the same tree still read, see
//! [`decode_versioned`]), then LEB128 varints ([`put_varint`], zigzag for signed numbers) and
//! length-prefixed UTF-8 ([`put_str`]), read back by a bounded [`Reader`] that never panics.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::StoreError;
pub(crate) use crate::kv::TxResult;
use crate::kv::{TransactionError, TxError};

/// The longest reference or free-form key accepted, in bytes.
pub(crate) const MAX_KEY_LEN: usize = 512;

/// An 8-byte big-endian key.
pub(crate) fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// A 16-byte key: two big-endian u64s (e.g. uid ‖ seq).
pub(crate) fn pair_key(a: u64, b: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    let (hi, lo) = key.split_at_mut(8);
    hi.copy_from_slice(&a.to_be_bytes());
    lo.copy_from_slice(&b.to_be_bytes());
    key
}

/// A key made of a big-endian u64 followed by arbitrary bytes (e.g. uid ‖ user key).
pub(crate) fn prefixed_key(a: u64, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + rest.len());
    key.extend_from_slice(&a.to_be_bytes());
    key.extend_from_slice(rest);
    key
}

/// Splits a key made by [`prefixed_key`] or [`pair_key`]: the leading u64 and the rest.
pub(crate) fn split_u64_prefix<'a>(
    tree: &'static str,
    raw: &'a [u8],
) -> Result<(u64, &'a [u8]), StoreError> {
    match raw.split_first_chunk::<8>() {
        Some((head, rest)) => Ok((u64::from_be_bytes(*head), rest)),
        None => Err(StoreError::corrupt(
            tree,
            describe_bytes(raw),
            "key shorter than 8 bytes",
        )),
    }
}

/// Reads an 8-byte big-endian key.
pub(crate) fn read_u64_key(tree: &'static str, raw: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(raw)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::corrupt(tree, describe_bytes(raw), "key is not 8 bytes"))
}

/// Reads a 16-byte key made by [`pair_key`].
pub(crate) fn read_pair_key(tree: &'static str, raw: &[u8]) -> Result<(u64, u64), StoreError> {
    let (a, rest) = split_u64_prefix(tree, raw)?;
    let b = read_u64_key(tree, rest)?;
    Ok((a, b))
}

/// A readable form of an arbitrary key for error messages: the text if it is UTF-8, else hex.
pub(crate) fn describe_bytes(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("0x{}", hex::encode(raw)),
    }
}

/// Decodes a JSON value read from `tree`; a bad value is [`StoreError::Corrupt`] naming the key.
pub(crate) fn decode<T: DeserializeOwned>(
    tree: &'static str,
    raw: &[u8],
    key: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    serde_json::from_slice(raw).map_err(|e| StoreError::corrupt(tree, key(), e))
}

/// Decodes a value of `tree` that is compact binary when it starts with [`BINARY`] (read by
/// `binary`, given a [`Reader`] after that byte) and JSON otherwise (values written before the
/// tree went binary). Either way a bad value is [`StoreError::Corrupt`] naming the key.
pub(crate) fn decode_versioned<T: DeserializeOwned>(
    tree: &'static str,
    raw: &[u8],
    key: impl FnOnce() -> String,
    binary: impl FnOnce(&mut Reader<'_>) -> Option<T>,
) -> Result<T, StoreError> {
    match raw.split_first() {
        Some((&BINARY, rest)) => binary(&mut Reader::new(rest))
            .ok_or_else(|| StoreError::corrupt(tree, key(), "bad binary record")),
        _ => decode(tree, raw, key),
    }
}

/// The first byte of a compact binary value (format 1). JSON values start with `{`, `[`, `"`,
/// `-`, a digit, a letter of `true`/`false`/`null` or white space, never with byte 1.
pub(crate) const BINARY: u8 = 1;

/// Appends `n` as an LEB128 varint (1 byte below 128, at most 10).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends a signed number as a zigzag varint (small magnitudes of either sign are short).
pub(crate) fn put_ivarint(out: &mut Vec<u8>, n: i64) {
    put_varint(out, ((n << 1) ^ (n >> 63)) as u64);
}

/// Appends `s` as its length (a varint) and its UTF-8 bytes.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Reads what [`put_varint`], [`put_ivarint`] and [`put_str`] wrote. Every read is bounded by
/// the bytes left and answers `None` on anything malformed (never panics, never allocates more
/// than the input's length).
pub(crate) struct Reader<'a> {
    raw: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader of `raw`.
    pub(crate) fn new(raw: &'a [u8]) -> Reader<'a> {
        Reader { raw }
    }

    /// One byte.
    pub(crate) fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.raw.split_first()?;
        self.raw = rest;
        Some(*first)
    }

    /// An LEB128 varint of at most 10 bytes that fits a u64.
    pub(crate) fn varint(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            // The 10th byte may only carry the top bit.
            if shift == 63 && part > 1 {
                return None;
            }
            n |= part.checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }

    /// A zigzag varint.
    pub(crate) fn ivarint(&mut self) -> Option<i64> {
        let z = self.varint()?;
        Some(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    /// A length-prefixed UTF-8 string.
    pub(crate) fn text(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.varint()?).ok()?;
        if len > self.raw.len() {
            return None;
        }
        let (text, rest) = self.raw.split_at(len);
        self.raw = rest;
        std::str::from_utf8(text).ok()
    }
}

/// Encodes a value as JSON.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value)
        .map_err(|e| StoreError::InvalidInput(format!("cannot encode record: {e}")))
}

/// Turns a [`StoreError`] result into a transaction result that aborts the transaction.
pub(crate) trait OrAbort<T> {
    /// Aborts the transaction with the error, if any.
    fn or_abort(self) -> TxResult<T>;
}

impl<T> OrAbort<T> for Result<T, StoreError> {
    fn or_abort(self) -> TxResult<T> {
        self.map_err(TxError::Abort)
    }
}

/// Aborts the current transaction with `err`.
pub(crate) fn abort<T>(err: StoreError) -> TxResult<T> {
    Err(TxError::Abort(err))
}

/// Flattens a transaction's outcome into the store's error type.
pub(crate) fn finish<T>(result: Result<T, TransactionError>) -> Result<T, StoreError> {
    result.map_err(crate::kv::flatten)
}

/// Rejects empty or oversized references and keys.
pub(crate) fn check_key(what: &str, key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidInput(format!(
            "{what} must not be empty"
        )));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(StoreError::InvalidInput(format!(
            "{what} is {} bytes long, the limit is {MAX_KEY_LEN}",
            key.len()
        )));
    }
    Ok(())
}

/// Converts a credit amount to a signed ledger delta.
pub(crate) fn to_delta(amount: u64) -> Result<i64, StoreError> {
    i64::try_from(amount)
        .map_err(|_| StoreError::InvalidInput(format!("amount {amount} is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_numerically() {
        assert!(u64_key(255) < u64_key(256));
        assert!(pair_key(1, u64::MAX) < pair_key(2, 0));
        assert_eq!(read_pair_key("t", &pair_key(7, 9)).unwrap(), (7, 9));
        assert_eq!(read_u64_key("t", &u64_key(42)).unwrap(), 42);
        let key = prefixed_key(3, b"tg:main:1");
        let (uid, rest) = split_u64_prefix("t", &key).unwrap();
        assert_eq!((uid, rest), (3, &b"tg:main:1"[..]));
    }

    #[test]
    fn short_keys_are_corrupt_not_panics() {
        assert!(matches!(
            read_u64_key("t", b"abc"),
            Err(StoreError::Corrupt { tree: "t", .. })
        ));
        assert!(matches!(
            read_pair_key("t", &[0; 12]),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            split_u64_prefix("t", &[1, 2]),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn bad_json_is_corrupt_with_the_key() {
        let err = decode::<u64>("users", b"{nope", || "17".to_owned()).unwrap_err();
        match err {
            StoreError::Corrupt { tree, key, .. } => {
                assert_eq!((tree, key.as_str()), ("users", "17"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn varints_round_trip_and_stay_short() {
        let mut out = Vec::new();
        let unsigned = [0, 1, 127, 128, 300, 1 << 35, u64::MAX];
        let signed = [0, -1, 1, -64, 63, 1_733_600_000_000, i64::MIN, i64::MAX];
        for n in unsigned {
            put_varint(&mut out, n);
        }
        for n in signed {
            put_ivarint(&mut out, n);
        }
        put_str(&mut out, "用户 1");
        let mut r = Reader::new(&out);
        for n in unsigned {
            assert_eq!(r.varint(), Some(n));
        }
        for n in signed {
            assert_eq!(r.ivarint(), Some(n));
        }
        assert_eq!(r.text(), Some("用户 1"));
        assert_eq!(r.byte(), None);
        let mut one = Vec::new();
        put_ivarint(&mut one, -1);
        put_varint(&mut one, 127);
        assert_eq!(one.len(), 2);
    }

    #[test]
    fn malformed_varints_and_strings_are_none() {
        // Runs past the end, more than 64 bits, a length beyond the input, bad UTF-8.
        assert_eq!(Reader::new(&[0x80]).varint(), None);
        assert_eq!(Reader::new(&[0xff; 10]).varint(), None);
        assert_eq!(Reader::new(&[0xff; 11]).varint(), None);
        let mut max = vec![0xff; 9];
        max.push(0x01);
        assert_eq!(Reader::new(&max).varint(), Some(u64::MAX));
        assert_eq!(Reader::new(&[5, b'a']).text(), None);
        assert_eq!(Reader::new(&[2, 0xc3, 0x28]).text(), None);
        assert_eq!(Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x0f]).text(), None);
    }

    #[test]
    fn versioned_values_read_json_and_binary() {
        let json = decode_versioned("t", b"17", || "k".to_owned(), |_| Some(0u64)).unwrap();
        assert_eq!(json, 17);
        let bin = decode_versioned("t", &[BINARY, 42], || "k".to_owned(), |r| r.varint());
        assert_eq!(bin.unwrap(), 42);
        let bad = decode_versioned("t", &[BINARY, 0x80], || "k".to_owned(), |r| r.varint());
        match bad.unwrap_err() {
            StoreError::Corrupt { tree, key, .. } => assert_eq!((tree, key.as_str()), ("t", "k")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn key_checks() {
        assert!(check_key("reference", "").is_err());
        assert!(check_key("reference", &"x".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(check_key("reference", "msg:1").is_ok());
        assert!(to_delta(u64::MAX).is_err());
        assert_eq!(to_delta(5).unwrap(), 5);
    }
}
