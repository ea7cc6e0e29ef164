//! Safe-mode decryption of attacker-chosen `Encrypt` text (the signature only proves the
//! sender knows the token): any input must give a clean error or a message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = match chatrelay_wechat::AesKey::from_encoding_aes_key(
        "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    ) {
        Ok(k) => k,
        Err(_) => return,
    };
    let text = String::from_utf8_lossy(data);
    let _ = chatrelay_wechat::decrypt_message(&key, &text, "wx1234567890abcdef");
    // Also as valid base64 of arbitrary bytes, to reach the padding and length checks.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let _ = chatrelay_wechat::decrypt_message(&key, &b64, "wx1234567890abcdef");
});
