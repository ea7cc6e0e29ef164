//! The SSE parser reads whatever an upstream (or a proxy in front of it) sends, split at
//! arbitrary points: it must never panic, and splitting must not change the events.
#![no_main]

use chatrelay_openai::sse::SseParser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize) % (data.len().max(1));
    let mut whole = SseParser::default();
    let mut a = whole.push(data);
    a.extend(whole.finish());
    let mut parts = SseParser::default();
    let (x, y) = data.split_at(split);
    let mut b = parts.push(x);
    b.extend(parts.push(y));
    b.extend(parts.finish());
    assert_eq!(a.len(), b.len());
    for (e, f) in a.iter().zip(&b) {
        assert_eq!(e.data, f.data);
        assert_eq!(e.event, f.event);
    }
});
