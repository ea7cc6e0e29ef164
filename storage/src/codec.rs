//! Key encoding, value (de)serialisation and transaction plumbing shared by the modules.
//!
//! Integer keys are big-endian so that sled's byte order is numeric order. Values are
//! serde_json: readable with any tool, and evolvable with `#[serde(default)]`.

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
    fn key_checks() {
        assert!(check_key("reference", "").is_err());
        assert!(check_key("reference", &"x".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(check_key("reference", "msg:1").is_ok());
        assert!(to_delta(u64::MAX).is_err());
        assert_eq!(to_delta(5).unwrap(), 5);
    }
}
