//! Alipay notifications are unauthenticated form bodies until verified: parsing and
//! verification must never panic on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

static KEY: &str = include_str!("../../connectors/alipay/testdata/alipay_public.pem");

fuzz_target!(|data: &[u8]| {
    let _ = chatrelay_alipay::parse_form(data);
    if let Ok(key) = chatrelay_alipay::AlipayPublicKey::from_pem_or_base64(KEY) {
        let _ = chatrelay_alipay::verify_notification(&key, data);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = chatrelay_alipay::parse_yuan(s);
    }
});
