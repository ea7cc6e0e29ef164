//! zsxq API bodies and topic markup come from an undocumented API (and
//! whatever a proxy or a broken session returns instead): parsing must
//! never panic on any bytes.
#![no_main]

use chatrelay_zsxq::{TopicId, parse_topics, render_answer, to_plain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The body as received: envelope, topic list, every topic.
    if let Ok(questions) = parse_topics(data) {
        for q in &questions {
            let _ = q.topic_id.to_string();
        }
    }
    let _ = serde_json::from_slice::<TopicId>(data);
    let _ = serde_json::from_slice::<Vec<TopicId>>(data);

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = text.parse::<TopicId>();
    let plain = to_plain(text);
    if !text.contains("<e") {
        // Text outside `<e .. />` tags is kept as it is.
        assert_eq!(plain, text);
    }
    let _ = render_answer(text);
    let _ = render_answer(&plain);

    // The text inside a well-formed page, to reach the field parsers
    // (timestamps, ids, markup) without first having to find valid JSON.
    let body = serde_json::json!({
        "succeeded": true,
        "resp_data": {"topics": [{
            "type": "q&a",
            "topic_id": text,
            "create_time": text,
            "group": {"group_id": text},
            "question": {"text": text, "owner": {"user_id": text, "name": text}},
        }, {
            "type": "q&a",
            "topic_id": 1,
            "create_time": "2024-01-01T00:00:00.000+0800",
            "question": {"text": text},
        }]}
    });
    let parsed = parse_topics(body.to_string().as_bytes());
    assert!(parsed.is_ok_and(|q| q.iter().any(|q| q.topic_id == TopicId(1))));

    let failure = serde_json::json!({"succeeded": false, "code": text, "info": text});
    assert!(parse_topics(failure.to_string().as_bytes()).is_err());
});
