//! WeChat / WeCom message crypto ("safe mode"): AES-256-CBC with Tencent's
//! framing.
//!
//! Owns the EncodingAESKey decoding, the plaintext layout
//! `random(16) | be_u32 msg_len | msg | receiveid`, the 32-byte PKCS#7
//! padding and the checks on decryption. The receive id is the appid for an
//! Official Account and the corpid for a WeCom self-built app. Pure code, no
//! I/O; the random prefix is passed in so encryption is deterministic in
//! tests.
//!
//! Two details differ from textbook AES-CBC (see PROTOCOLS.md §0):
//! - the key's 43rd base64 character carries two bits Tencent does not zero,
//!   so a strict base64 decoder rejects most real keys;
//! - the padding is PKCS#7 with a block of **32** bytes (pad 1..=32), which
//!   RustCrypto's `Pkcs7` (block 16) refuses, so padding is done here by hand
//!   and the cipher runs without padding.

use std::fmt;

use aes::Aes256;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use cbc::cipher::{Block, BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};

use crate::signature::ct_eq;

type Aes256CbcEnc = cbc::Encryptor<Aes256>;
type Aes256CbcDec = cbc::Decryptor<Aes256>;

/// Tencent pads to multiples of this many bytes (not the AES block size).
const PAD_BLOCK: usize = 32;
/// Length of the random prefix of every plaintext.
const RANDOM_LEN: usize = 16;
/// Random prefix plus the big-endian `u32` message length.
const HEADER_LEN: usize = RANDOM_LEN + 4;
/// AES block size; a ciphertext must be a whole number of blocks.
const AES_BLOCK: usize = 16;

/// Failures of key decoding and of message decryption.
///
/// Messages name the failed check only; they never contain key material or
/// decrypted bytes, so they are safe to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The EncodingAESKey is not 43 base64 characters.
    #[error("EncodingAESKey must be 43 base64 characters")]
    InvalidKey,
    /// The ciphertext is not valid base64.
    #[error("ciphertext is not valid base64")]
    Base64,
    /// The ciphertext is empty or not a whole number of AES blocks, or the
    /// plaintext is too short for its header or its length prefix points
    /// past the end of the buffer.
    #[error("ciphertext or embedded message length is invalid")]
    Length,
    /// The PKCS#7 padding is malformed (pad byte outside 1..=32, or the pad
    /// bytes disagree). Usually a wrong key.
    #[error("invalid padding (wrong key or corrupted ciphertext)")]
    Padding,
    /// The message decrypted, but it was addressed to another app or corp.
    #[error("receive id does not match")]
    ReceiveId,
}

/// A decoded 32-byte EncodingAESKey.
///
/// `Debug` is redacted so the key can sit in structs that get logged.
#[derive(Clone, PartialEq, Eq)]
pub struct AesKey([u8; 32]);

impl fmt::Debug for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AesKey(<redacted>)")
    }
}

/// base64 engine for the EncodingAESKey: tolerant of the non-zero trailing
/// bits Tencent leaves in the last character and of a missing or present `=`.
const KEY_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl AesKey {
    /// Decodes the 43-character EncodingAESKey shown in the WeChat/WeCom
    /// console into the 32-byte AES key.
    ///
    /// # Errors
    /// [`CryptoError::InvalidKey`] unless `key43` is exactly 43 characters of
    /// the standard base64 alphabet.
    pub fn from_encoding_aes_key(key43: &str) -> Result<Self, CryptoError> {
        if key43.len() != 43 {
            return Err(CryptoError::InvalidKey);
        }
        let bytes = KEY_ENGINE
            .decode(key43)
            .map_err(|_| CryptoError::InvalidKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::InvalidKey)?;
        Ok(Self(key))
    }

    /// Wraps raw key bytes (tests, or keys kept in decoded form).
    #[must_use]
    pub fn from_bytes(key: [u8; 32]) -> Self {
        Self(key)
    }

    /// The CBC initialisation vector: Tencent uses the first 16 key bytes.
    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        for (dst, src) in iv.iter_mut().zip(self.0.iter()) {
            *dst = *src;
        }
        iv
    }
}

/// Encrypts `msg` for `receive_id` and returns the base64 ciphertext (the
/// `Encrypt` element of a reply).
///
/// `random` is the 16-byte prefix; pass fresh random bytes in production and a
/// fixed value in tests.
#[must_use]
pub fn encrypt_message(key: &AesKey, msg: &[u8], receive_id: &str, random: [u8; 16]) -> String {
    // A message over 4 GiB cannot be framed; it cannot occur either (replies
    // are a few KiB), so saturate instead of panicking.
    let msg_len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    let mut buf = Vec::with_capacity(HEADER_LEN + msg.len() + receive_id.len() + PAD_BLOCK);
    buf.extend_from_slice(&random);
    buf.extend_from_slice(&msg_len.to_be_bytes());
    buf.extend_from_slice(msg);
    buf.extend_from_slice(receive_id.as_bytes());
    pad32(&mut buf);

    let iv = key.iv();
    let mut enc = Aes256CbcEnc::new(&key.0.into(), &iv.into());
    // `pad32` made the length a multiple of 32, so there is no remainder.
    let (blocks, _rest) = Block::<Aes256CbcEnc>::slice_as_chunks_mut(&mut buf);
    enc.encrypt_blocks(blocks);
    STANDARD.encode(&buf)
}

/// Decrypts a base64 `Encrypt` value and returns the inner message (XML or
/// JSON bytes) after checking that it was addressed to `expected_receive_id`.
///
/// Never panics, whatever the input. Call it only after the `msg_signature`
/// has been verified: the signature covers the ciphertext, which keeps
/// attackers from using the error kinds here as a padding oracle.
///
/// # Errors
/// [`CryptoError::Base64`], [`CryptoError::Length`], [`CryptoError::Padding`]
/// or [`CryptoError::ReceiveId`], see their docs.
pub fn decrypt_message(
    key: &AesKey,
    encrypted_b64: &str,
    expected_receive_id: &str,
) -> Result<Vec<u8>, CryptoError> {
    let mut buf = STANDARD
        .decode(encrypted_b64)
        .map_err(|_| CryptoError::Base64)?;
    if buf.is_empty() || buf.len() % AES_BLOCK != 0 {
        return Err(CryptoError::Length);
    }

    let iv = key.iv();
    let mut dec = Aes256CbcDec::new(&key.0.into(), &iv.into());
    let (blocks, _rest) = Block::<Aes256CbcDec>::slice_as_chunks_mut(&mut buf);
    dec.decrypt_blocks(blocks);

    let content = unpad32(&buf)?;
    let header = content.get(..HEADER_LEN).ok_or(CryptoError::Length)?;
    let len_bytes: [u8; 4] = header
        .get(RANDOM_LEN..HEADER_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(CryptoError::Length)?;
    let msg_len =
        usize::try_from(u32::from_be_bytes(len_bytes)).map_err(|_| CryptoError::Length)?;
    let msg_end = HEADER_LEN.checked_add(msg_len).ok_or(CryptoError::Length)?;
    let msg = content
        .get(HEADER_LEN..msg_end)
        .ok_or(CryptoError::Length)?;
    let receive_id = content.get(msg_end..).ok_or(CryptoError::Length)?;
    if !ct_eq(receive_id, expected_receive_id.as_bytes()) {
        return Err(CryptoError::ReceiveId);
    }
    Ok(msg.to_vec())
}

/// Appends PKCS#7 padding with Tencent's 32-byte block: `n = 32 - len % 32`
/// bytes of value `n`, so a full extra block when `len` is already aligned.
fn pad32(buf: &mut Vec<u8>) {
    let n = PAD_BLOCK - buf.len() % PAD_BLOCK;
    // n is in 1..=32, so the cast cannot truncate.
    let byte = u8::try_from(n).unwrap_or(PAD_BLOCK as u8);
    buf.resize(buf.len() + n, byte);
}

/// Strips 32-byte PKCS#7 padding, rejecting pad values outside 1..=32, pads
/// longer than the buffer and pad bytes that disagree.
fn unpad32(buf: &[u8]) -> Result<&[u8], CryptoError> {
    let &last = buf.last().ok_or(CryptoError::Padding)?;
    let n = usize::from(last);
    if n == 0 || n > PAD_BLOCK || n > buf.len() {
        return Err(CryptoError::Padding);
    }
    let split = buf.len() - n;
    let (content, pad) = buf.split_at_checked(split).ok_or(CryptoError::Padding)?;
    if pad.iter().any(|&b| b != last) {
        return Err(CryptoError::Padding);
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AesKey {
        // wechatpy's WeCom test key (vector `wecom_wechatpy_work_crypto`).
        AesKey::from_encoding_aes_key("kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR").unwrap()
    }

    /// Encrypts an arbitrary, already framed and padded plaintext, so tests
    /// can build malformed messages that `encrypt_message` never would.
    fn encrypt_raw(key: &AesKey, plain: &[u8]) -> String {
        assert_eq!(plain.len() % AES_BLOCK, 0);
        let mut buf = plain.to_vec();
        let mut enc = Aes256CbcEnc::new(&key.0.into(), &key.iv().into());
        let (blocks, _) = Block::<Aes256CbcEnc>::slice_as_chunks_mut(&mut buf);
        enc.encrypt_blocks(blocks);
        STANDARD.encode(&buf)
    }

    fn frame(msg: &[u8], receive_id: &str) -> Vec<u8> {
        let mut buf = vec![7u8; RANDOM_LEN];
        buf.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
        buf.extend_from_slice(msg);
        buf.extend_from_slice(receive_id.as_bytes());
        buf
    }

    #[test]
    fn pad32_covers_1_to_32_including_a_full_block() {
        for len in 0..=96usize {
            let mut buf = vec![0xAB; len];
            pad32(&mut buf);
            assert_eq!(buf.len() % 32, 0, "len {len}");
            let n = buf.len() - len;
            assert!((1..=32).contains(&n), "len {len} pad {n}");
            if len % 32 == 0 {
                assert_eq!(n, 32, "aligned input gets a whole extra block");
            }
            assert!(buf[len..].iter().all(|&b| usize::from(b) == n));
            assert_eq!(unpad32(&buf).unwrap(), &vec![0xAB; len][..]);
        }
    }

    #[test]
    fn every_pad_length_round_trips_through_encryption() {
        let key = key();
        // Header 20 bytes + receive id 3 bytes; message lengths 0..64 cover
        // every pad value 1..=32 twice.
        let mut seen = [false; 33];
        for msg_len in 0..64usize {
            let msg: Vec<u8> = (0..msg_len).map(|i| (i * 7 % 251) as u8).collect();
            let ct = encrypt_message(&key, &msg, "rid", [1; 16]);
            let total = HEADER_LEN + msg_len + 3;
            seen[32 - total % 32] = true;
            assert_eq!(decrypt_message(&key, &ct, "rid").unwrap(), msg);
        }
        assert!(
            seen[1..].iter().all(|&s| s),
            "pad values 1..=32 all exercised"
        );
    }

    #[test]
    fn unpad_rejects_bad_pad_bytes() {
        assert_eq!(unpad32(&[]), Err(CryptoError::Padding));
        assert_eq!(unpad32(&[0u8; 32]), Err(CryptoError::Padding), "pad 0");
        assert_eq!(unpad32(&[33u8; 64]), Err(CryptoError::Padding), "pad 33");
        assert_eq!(unpad32(&[5u8; 4]), Err(CryptoError::Padding), "pad > len");
        let mut buf = vec![0u8; 32];
        buf[28..].copy_from_slice(&[4, 4, 3, 4]);
        assert_eq!(unpad32(&buf), Err(CryptoError::Padding), "inconsistent");
        buf[30] = 4;
        assert_eq!(unpad32(&buf).unwrap().len(), 28);
    }

    #[test]
    fn decrypt_rejects_bad_pad_byte_in_ciphertext() {
        let key = key();
        let mut plain = frame(b"hello", "rid");
        // Pad to 32 by hand, then corrupt the last byte to 0 and to 40.
        pad32(&mut plain);
        for bad in [0u8, 33, 40, 255] {
            let mut p = plain.clone();
            *p.last_mut().unwrap() = bad;
            assert_eq!(
                decrypt_message(&key, &encrypt_raw(&key, &p), "rid"),
                Err(CryptoError::Padding),
                "pad byte {bad}"
            );
        }
    }

    #[test]
    fn decrypt_rejects_bad_length_prefix() {
        let key = key();
        let mut plain = frame(b"hello", "rid");
        // Claim 9 bytes more than the buffer holds.
        plain[16..20].copy_from_slice(&(5u32 + 3 + 9).to_be_bytes());
        pad32(&mut plain);
        assert_eq!(
            decrypt_message(&key, &encrypt_raw(&key, &plain), "rid"),
            Err(CryptoError::Length)
        );
        // A huge length must not overflow or allocate.
        let mut plain = frame(b"hello", "rid");
        plain[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        pad32(&mut plain);
        assert_eq!(
            decrypt_message(&key, &encrypt_raw(&key, &plain), "rid"),
            Err(CryptoError::Length)
        );
        // Too short for the 20-byte header: 12 content bytes + pad 20.
        let mut plain = vec![1u8; 12];
        pad32(&mut plain);
        assert_eq!(
            decrypt_message(&key, &encrypt_raw(&key, &plain), "rid"),
            Err(CryptoError::Length)
        );
    }

    #[test]
    fn decrypt_rejects_wrong_receive_id_and_bad_sizes() {
        let key = key();
        let ct = encrypt_message(&key, b"<xml/>", "wx_app", [9; 16]);
        assert_eq!(decrypt_message(&key, &ct, "wx_app").unwrap(), b"<xml/>");
        assert_eq!(
            decrypt_message(&key, &ct, "wx_other"),
            Err(CryptoError::ReceiveId)
        );
        assert_eq!(
            decrypt_message(&key, &ct, "wx_ap"),
            Err(CryptoError::ReceiveId)
        );
        assert_eq!(decrypt_message(&key, &ct, ""), Err(CryptoError::ReceiveId));
        assert_eq!(
            decrypt_message(&key, "", "wx_app"),
            Err(CryptoError::Length)
        );
        assert_eq!(
            decrypt_message(&key, "not base64!", "wx_app"),
            Err(CryptoError::Base64)
        );
        // 20 bytes: valid base64, not a whole number of AES blocks.
        assert_eq!(
            decrypt_message(&key, &STANDARD.encode([0u8; 20]), "wx_app"),
            Err(CryptoError::Length)
        );
    }

    #[test]
    fn tampered_ciphertext_is_rejected() {
        let key = key();
        let ct = encrypt_message(&key, b"<xml><Content>hi</Content></xml>", "wx_app", [3; 16]);
        let raw = STANDARD.decode(&ct).unwrap();
        // Flip one bit in every byte position in turn: every variant must
        // fail (or, if CBC garbage happens to frame correctly, never yield
        // the original message for the right app silently changed).
        for i in 0..raw.len() {
            let mut t = raw.clone();
            t[i] ^= 0x01;
            match decrypt_message(&key, &STANDARD.encode(&t), "wx_app") {
                Err(_) => {}
                Ok(msg) => assert_ne!(msg, b"<xml><Content>hi</Content></xml>", "byte {i}"),
            }
        }
        // Flipping a bit in the last block corrupts the padding or receive id.
        let mut t = raw.clone();
        let last = t.len() - 1;
        t[last] ^= 0x80;
        assert!(decrypt_message(&key, &STANDARD.encode(&t), "wx_app").is_err());
    }

    #[test]
    fn wrong_key_is_rejected() {
        let ct = encrypt_message(&key(), b"hello", "wx_app", [0; 16]);
        let other = AesKey::from_bytes([0x42; 32]);
        assert!(decrypt_message(&other, &ct, "wx_app").is_err());
    }

    #[test]
    fn lenient_key_decoding() {
        // 43 chars = 258 bits for a 256-bit key: the last char's top four
        // bits end byte 31, its two low bits are discarded. Tencent leaves
        // them non-zero, which a strict decoder rejects.
        let a42 = "A".repeat(42);
        // 'B' = 0b0000_01: data bits 0000, trailing bits 01.
        assert!(STANDARD.decode(format!("{a42}B=")).is_err());
        assert_eq!(
            AesKey::from_encoding_aes_key(&format!("{a42}B")).unwrap().0,
            [0u8; 32]
        );
        // 'H' = 0b0001_11: data bits 0001, trailing bits 11.
        assert!(STANDARD.decode(format!("{a42}H=")).is_err());
        let key = AesKey::from_encoding_aes_key(&format!("{a42}H")).unwrap();
        assert_eq!(key.0[31], 0x01);
        assert!(key.0[..31].iter().all(|&b| b == 0));
        // 'Q' = 0b0100_00: clean trailing bits, accepted by both decoders.
        assert_eq!(STANDARD.decode(format!("{a42}Q=")).unwrap()[31], 0x04);
        assert_eq!(
            AesKey::from_encoding_aes_key(&format!("{a42}Q")).unwrap().0[31],
            0x04
        );
    }

    #[test]
    fn key_length_and_alphabet_are_checked() {
        assert_eq!(
            AesKey::from_encoding_aes_key(""),
            Err(CryptoError::InvalidKey)
        );
        assert_eq!(
            AesKey::from_encoding_aes_key(&"A".repeat(42)),
            Err(CryptoError::InvalidKey)
        );
        assert_eq!(
            AesKey::from_encoding_aes_key(&format!("{}=", "A".repeat(43))),
            Err(CryptoError::InvalidKey)
        );
        assert_eq!(
            AesKey::from_encoding_aes_key(&format!("{}!", "A".repeat(42))),
            Err(CryptoError::InvalidKey)
        );
        // 43 bytes, but multi-byte chars: still not base64.
        assert_eq!(
            AesKey::from_encoding_aes_key(&format!("{}é", "A".repeat(41))),
            Err(CryptoError::InvalidKey)
        );
    }

    #[test]
    fn debug_is_redacted() {
        let dbg = format!("{:?}", key());
        assert_eq!(dbg, "AesKey(<redacted>)");
    }

    /// xorshift64: a tiny deterministic generator for the fuzz loops.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    #[test]
    fn decrypt_never_panics_on_garbage() {
        let key = key();
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let valid = encrypt_message(&key, b"<xml><A>b</A></xml>", "wx_app", [5; 16]);
        for round in 0..4000 {
            let input: String = match round % 4 {
                // Random printable-ish bytes, often invalid base64.
                0 => {
                    let len = (rng.next() % 200) as usize;
                    (0..len)
                        .map(|_| char::from((rng.next() % 96 + 32) as u8))
                        .collect()
                }
                // Valid base64 of random bytes of random length.
                1 => {
                    let len = (rng.next() % 160) as usize;
                    let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    STANDARD.encode(bytes)
                }
                // Valid base64 of whole AES blocks: exercises unpad/framing.
                2 => {
                    let blocks = (rng.next() % 8) as usize;
                    let bytes: Vec<u8> = (0..blocks * 16).map(|_| rng.next() as u8).collect();
                    STANDARD.encode(bytes)
                }
                // Truncations of a valid ciphertext.
                _ => {
                    let cut = (rng.next() as usize) % (valid.len() + 1);
                    valid[..cut].to_owned()
                }
            };
            let _ = decrypt_message(&key, &input, "wx_app");
        }
    }
}
