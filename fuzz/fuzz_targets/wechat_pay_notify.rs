//! WeChat Pay notifications: headers and body are attacker-controlled until the signature
//! is checked; nothing may panic.
#![no_main]

use chatrelay_wechat_pay::{ApiV3Key, NotifyHeaders, PlatformKey, PlatformKeys};
use libfuzzer_sys::fuzz_target;

static KEY: &str = include_str!("../../connectors/wechat-pay/testdata/test_only_platform_pub.pem");

fuzz_target!(|data: &[u8]| {
    let mut keys = PlatformKeys::new();
    if let Ok(k) = PlatformKey::from_pem(KEY) {
        keys.insert("PUB_KEY_ID_TEST", k);
    }
    let Ok(v3) = ApiV3Key::new("0123456789abcdef0123456789abcdef") else {
        return;
    };
    let text = String::from_utf8_lossy(data);
    let mut fields = text.splitn(4, '\n');
    let timestamp = fields.next().unwrap_or("");
    let nonce = fields.next().unwrap_or("");
    let signature = fields.next().unwrap_or("");
    let body = fields.next().unwrap_or("").as_bytes();
    let h = NotifyHeaders { timestamp, nonce, signature, serial: "PUB_KEY_ID_TEST" };
    let _ = chatrelay_wechat_pay::open_notification(&keys, &v3, &h, body, 1_800_000_000);
});
