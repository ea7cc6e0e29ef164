//! The Official Account XML parsers take the body of any request that passes the signature
//! check (or, in safe mode, the decrypted plaintext): they must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = chatrelay_wechat::parse_incoming(data);
    let _ = chatrelay_wechat::parse_envelope(data);
});
