//! Pure parsing of zsxq API responses: topic ids, the unanswered-question
//! list, and the `{"succeeded":..,"code":..,"info":..}` envelope with its
//! error mapping. No I/O.
//!
//! Parsing is lenient where zsxq is known to vary (ids as numbers or
//! strings, `+0800` or `+08:00` offsets, optional fields) and strict where
//! it matters: a topic id is never read through `f64`, and a malformed topic
//! is skipped with a warning instead of failing its whole page.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, FixedOffset};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::ZsxqError;
use crate::markup;

/// Bytes of a body quoted in [`ZsxqError::Decode`].
const RAW_EXCERPT_BYTES: usize = 1024;

/// zsxq's "too frequent" code.
const CODE_TOO_FREQUENT: i64 = 1059;

/// zsxq's "not logged in / token expired" code.
const CODE_UNAUTHORIZED: i64 = 401;

/// A topic id. Digits only and possibly above 2^53, so it is kept as a
/// `u64` and never goes through `f64`.
///
/// Deserializes from a JSON integer or a string of digits; serializes as a
/// JSON number; displays and parses as decimal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicId(pub u64);

impl fmt::Display for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for TopicId {
    type Err = ZsxqError;

    /// Accepts 1 to 20 ASCII digits that fit a `u64` (no sign, no spaces).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_digits(s)
            .map(TopicId)
            .ok_or_else(|| ZsxqError::InvalidInput("topic id must be a decimal u64".into()))
    }
}

impl Serialize for TopicId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for TopicId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(IdVisitor).map(TopicId)
    }
}

/// Reads an id from an unsigned integer or a string of digits; refuses
/// floats (which would have lost precision) and negative numbers.
struct IdVisitor;

impl Visitor<'_> for IdVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an unsigned integer or a string of digits")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom("negative id"))
    }

    fn visit_f64<E: de::Error>(self, _v: f64) -> Result<u64, E> {
        Err(E::custom("id is not an exact integer"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse_digits(v).ok_or_else(|| E::custom("id string is not a decimal u64"))
    }
}

/// `s` as a `u64` if it is 1 or more ASCII digits and fits.
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// An id from a JSON value: an unsigned integer or a string of digits.
fn json_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => parse_digits(s),
        _ => None,
    }
}

/// The asker of a question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// zsxq's user id.
    pub user_id: u64,
    /// The display name (empty when zsxq sent none).
    pub name: String,
}

/// One unanswered question (a topic of type `q&a`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// The topic to answer.
    pub topic_id: TopicId,
    /// The group it was asked in, when the topic names it.
    pub group_id: Option<u64>,
    /// When it was asked.
    pub create_time: DateTime<FixedOffset>,
    /// `create_time` exactly as received: the `end_time` of the next page.
    pub create_time_raw: String,
    /// The asker. `None` when zsxq sent no (usable) owner, as for some
    /// anonymous questions; may be `Some` even when `anonymous` is true (do
    /// not reveal it then).
    pub owner: Option<Owner>,
    /// Whether the asker chose to stay anonymous.
    pub anonymous: bool,
    /// The question as plain text (markup converted by [`markup::to_plain`]).
    pub text: String,
    /// Whether the topic is already answered.
    pub answered: bool,
}

/// Parses the topic list (`GET /v2/groups/{id}/topics`) into its questions.
///
/// Topics whose `type` is not `q&a`, or that have no `question`, are
/// skipped. A malformed question topic (no usable `topic_id`, a bad
/// `create_time`, a non-string text) is skipped with a warning rather than
/// failing the page. A missing or `null` `topics` is an empty page.
///
/// # Errors
/// The envelope's errors (see [`ZsxqError`]): [`ZsxqError::TooFrequent`]
/// for code 1059, [`ZsxqError::Unauthorized`] for code 401,
/// [`ZsxqError::Api`] for other failures, [`ZsxqError::Decode`] for a body
/// that is not the expected JSON.
pub fn parse_topics(body: &[u8]) -> Result<Vec<Question>, ZsxqError> {
    let data = parse_envelope(body)?;
    let topics = match data.get("topics") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(topics)) => topics,
        Some(_) => return Err(decode_error("resp_data.topics is not an array", body)),
    };
    let mut out = Vec::with_capacity(topics.len());
    for (index, topic) in topics.iter().enumerate() {
        match parse_topic(topic) {
            Ok(Some(q)) => out.push(q),
            Ok(None) => {}
            Err(reason) => {
                let topic_id = topic.get("topic_id").and_then(json_u64);
                tracing::warn!(index, ?topic_id, reason, "skipping a malformed zsxq topic");
            }
        }
    }
    Ok(out)
}

/// One topic: `Ok(None)` when it is not a question, `Err(reason)` when it
/// is a malformed one.
fn parse_topic(topic: &Value) -> Result<Option<Question>, &'static str> {
    let obj = topic.as_object().ok_or("topic is not an object")?;
    if obj.get("type").and_then(Value::as_str) != Some("q&a") {
        return Ok(None);
    }
    let question = match obj.get("question") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(q)) => q,
        Some(_) => return Err("question is not an object"),
    };
    let topic_id = obj
        .get("topic_id")
        .and_then(json_u64)
        .map(TopicId)
        .ok_or("topic_id is missing or not an unsigned integer")?;
    let create_time_raw = obj
        .get("create_time")
        .and_then(Value::as_str)
        .ok_or("create_time is missing or not a string")?;
    let create_time = parse_time(create_time_raw).ok_or("create_time is not a valid timestamp")?;
    let text = match question.get("text") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => markup::to_plain(s),
        Some(_) => return Err("question.text is not a string"),
    };
    let group_id = obj
        .get("group")
        .and_then(|g| g.get("group_id"))
        .and_then(json_u64);
    Ok(Some(Question {
        topic_id,
        group_id,
        create_time,
        create_time_raw: create_time_raw.to_owned(),
        owner: question.get("owner").and_then(parse_owner),
        anonymous: question
            .get("anonymous")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        text,
        answered: obj
            .get("answered")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }))
}

/// An owner object with a usable `user_id`.
fn parse_owner(v: &Value) -> Option<Owner> {
    let user_id = v.get("user_id").and_then(json_u64)?;
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Some(Owner { user_id, name })
}

/// zsxq's `2023-02-19T11:14:49.231+0800`; also `+08:00`, without
/// fractional seconds, or RFC 3339.
fn parse_time(s: &str) -> Option<DateTime<FixedOffset>> {
    const FORMATS: [&str; 2] = ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M:%S%.f%:z"];
    FORMATS
        .iter()
        .find_map(|f| DateTime::parse_from_str(s, f).ok())
        .or_else(|| DateTime::parse_from_rfc3339(s).ok())
}

/// Checks the `{"succeeded":..}` envelope and returns `resp_data` (`Null`
/// when absent) on success.
///
/// # Errors
/// [`ZsxqError::TooFrequent`], [`ZsxqError::Unauthorized`],
/// [`ZsxqError::Api`] for `succeeded:false`; [`ZsxqError::Decode`] when the
/// body is not a JSON object with a boolean `succeeded`.
pub(crate) fn parse_envelope(body: &[u8]) -> Result<Value, ZsxqError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        decode_error(
            &format!("body is not JSON ({:?} error)", e.classify()),
            body,
        )
    })?;
    let Value::Object(mut obj) = value else {
        return Err(decode_error("body is not a JSON object", body));
    };
    match obj.get("succeeded").and_then(Value::as_bool) {
        Some(true) => Ok(obj.remove("resp_data").unwrap_or(Value::Null)),
        Some(false) => Err(api_error(&obj)),
        None => Err(decode_error("body has no boolean `succeeded`", body)),
    }
}

/// Maps a `succeeded:false` envelope.
fn api_error(obj: &Map<String, Value>) -> ZsxqError {
    let code = match obj.get("code") {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
        _ => 0,
    };
    match code {
        CODE_TOO_FREQUENT => ZsxqError::TooFrequent,
        CODE_UNAUTHORIZED => ZsxqError::Unauthorized,
        _ => {
            let text = |k: &str| obj.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
            let info = text("info").or_else(|| text("error")).unwrap_or_default();
            ZsxqError::Api {
                code,
                info: info.to_owned(),
            }
        }
    }
}

/// `resp_data.topic.answered` of `GET /v2/topics/{id}`.
///
/// # Errors
/// The envelope's errors; [`ZsxqError::Decode`] when the field is missing.
pub(crate) fn parse_answered(body: &[u8]) -> Result<bool, ZsxqError> {
    parse_envelope(body)?
        .get("topic")
        .and_then(|t| t.get("answered"))
        .and_then(Value::as_bool)
        .ok_or_else(|| decode_error("resp_data.topic.answered is missing", body))
}

/// A [`ZsxqError::Decode`] quoting the first KiB of `body`.
pub(crate) fn decode_error(message: &str, body: &[u8]) -> ZsxqError {
    let excerpt = body.get(..RAW_EXCERPT_BYTES).unwrap_or(body);
    ZsxqError::Decode {
        message: message.to_owned(),
        raw: String::from_utf8_lossy(excerpt).into_owned(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../testdata/topics_sample.json");

    fn topic(id: &str, time: &str, question: &str) -> String {
        format!(
            r#"{{"topic_id":{id},"type":"q&a","create_time":"{time}","answered":false,"question":{question}}}"#
        )
    }

    fn page(topics: &[String]) -> Vec<u8> {
        format!(
            r#"{{"succeeded":true,"resp_data":{{"topics":[{}]}}}}"#,
            topics.join(",")
        )
        .into_bytes()
    }

    const Q: &str = r#"{"owner":{"user_id":5,"name":"n"},"text":"hi","anonymous":false}"#;
    const T: &str = "2023-02-19T11:14:49.231+0800";

    #[test]
    fn parses_the_protocol_sample() {
        let qs = parse_topics(SAMPLE.as_bytes()).unwrap();
        assert_eq!(qs.len(), 1);
        let q = &qs[0];
        assert_eq!(q.topic_id, TopicId(412_851_145_544_158));
        assert_eq!(q.group_id, Some(88_885_511_815_222));
        assert_eq!(q.create_time_raw, "2023-02-19T11:14:49.231+0800");
        assert_eq!(q.create_time.to_rfc3339(), "2023-02-19T11:14:49.231+08:00");
        assert_eq!(
            q.owner,
            Some(Owner {
                user_id: 242_151_845_444_481,
                name: "小明".into()
            })
        );
        assert!(!q.anonymous);
        assert!(!q.answered);
        assert_eq!(q.text, "测试");
    }

    #[test]
    fn ids_above_2_pow_53_are_exact() {
        for id in [18_446_744_073_709_551_u64, 9_007_199_254_740_993, u64::MAX] {
            let body = page(&[topic(&id.to_string(), T, Q)]);
            let qs = parse_topics(&body).unwrap();
            assert_eq!(qs[0].topic_id, TopicId(id));
            let body = page(&[topic(&format!("\"{id}\""), T, Q)]);
            assert_eq!(parse_topics(&body).unwrap()[0].topic_id, TopicId(id));
        }
        // Serde round trip and string forms.
        let id: TopicId = serde_json::from_str("9007199254740993").unwrap();
        assert_eq!(id, TopicId(9_007_199_254_740_993));
        assert_eq!(serde_json::to_string(&id).unwrap(), "9007199254740993");
        let id: TopicId = serde_json::from_str("\"9007199254740993\"").unwrap();
        assert_eq!(id.to_string(), "9007199254740993");
        assert_eq!("42".parse::<TopicId>().unwrap(), TopicId(42));
        for bad in ["", "+1", "-1", " 1", "1.0", "18446744073709551616", "x"] {
            assert!(bad.parse::<TopicId>().is_err(), "{bad}");
        }
        for bad in [
            "1.5",
            "-3",
            "1e3",
            "\"\"",
            "\"12a\"",
            "null",
            "18446744073709551616",
        ] {
            assert!(serde_json::from_str::<TopicId>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn both_offset_forms_parse() {
        for (raw, rfc) in [
            (
                "2023-02-19T11:14:49.231+0800",
                "2023-02-19T11:14:49.231+08:00",
            ),
            (
                "2023-02-19T11:14:49.231+08:00",
                "2023-02-19T11:14:49.231+08:00",
            ),
            ("2023-02-19T11:14:49+0800", "2023-02-19T11:14:49+08:00"),
            ("2023-02-19T03:14:49.231Z", "2023-02-19T03:14:49.231+00:00"),
        ] {
            let qs = parse_topics(&page(&[topic("1", raw, Q)])).unwrap();
            assert_eq!(qs[0].create_time.to_rfc3339(), rfc, "{raw}");
            assert_eq!(qs[0].create_time_raw, raw);
        }
    }

    #[test]
    fn anonymous_without_owner() {
        let q = r#"{"text":"secret","anonymous":true}"#;
        let qs = parse_topics(&page(&[topic("7", T, q)])).unwrap();
        assert_eq!(qs.len(), 1);
        assert!(qs[0].anonymous);
        assert_eq!(qs[0].owner, None);
        assert_eq!(qs[0].group_id, None);
        assert_eq!(qs[0].text, "secret");
    }

    #[test]
    fn non_questions_and_malformed_topics_are_skipped() {
        let talk = r#"{"topic_id":2,"type":"talk","create_time":"2023-02-19T11:14:49.231+0800","talk":{"text":"x"}}"#;
        let no_question =
            r#"{"topic_id":3,"type":"q&a","create_time":"2023-02-19T11:14:49.231+0800"}"#;
        let body = page(&[
            topic("1", T, Q),
            talk.into(),
            no_question.into(),
            topic("\"abc\"", T, Q),         // bad id
            topic("1.5", T, Q),             // float id
            topic("4", "yesterday", Q),     // bad time
            topic("5", T, r#"{"text":7}"#), // text not a string
            topic("6", T, "[1]"),           // question not an object
            "17".into(),                    // not an object
            topic("8", T, Q),
        ]);
        let ids: Vec<u64> = parse_topics(&body)
            .unwrap()
            .iter()
            .map(|q| q.topic_id.0)
            .collect();
        assert_eq!(ids, [1, 8]);
        // An empty or null topic list is an empty page.
        assert!(
            parse_topics(br#"{"succeeded":true,"resp_data":{"topics":[]}}"#)
                .unwrap()
                .is_empty()
        );
        assert!(
            parse_topics(br#"{"succeeded":true,"resp_data":{}}"#)
                .unwrap()
                .is_empty()
        );
        assert!(parse_topics(br#"{"succeeded":true}"#).unwrap().is_empty());
    }

    #[test]
    fn error_mapping() {
        let too = br#"{"succeeded":false,"code":1059,"info":"too frequent","error":"x"}"#;
        assert_eq!(parse_topics(too), Err(ZsxqError::TooFrequent));
        assert_eq!(
            parse_topics(br#"{"succeeded":false,"code":"1059"}"#),
            Err(ZsxqError::TooFrequent)
        );
        assert_eq!(
            parse_topics(br#"{"succeeded":false,"code":401}"#),
            Err(ZsxqError::Unauthorized)
        );
        assert_eq!(
            parse_topics(r#"{"succeeded":false,"code":2,"info":"版本太旧"}"#.as_bytes()),
            Err(ZsxqError::Api {
                code: 2,
                info: "版本太旧".into()
            })
        );
        assert_eq!(
            parse_topics(br#"{"succeeded":false,"code":14210,"error":"no access"}"#),
            Err(ZsxqError::Api {
                code: 14210,
                info: "no access".into()
            })
        );
        assert_eq!(
            parse_topics(br#"{"succeeded":false}"#),
            Err(ZsxqError::Api {
                code: 0,
                info: String::new()
            })
        );
        for bad in [
            &br#"{"resp_data":{"topics":[]}}"#[..],
            br#"{"succeeded":"true"}"#,
            br#"[]"#,
            b"<html>502</html>",
            b"",
            br#"{"succeeded":true,"resp_data":{"topics":{}}}"#,
        ] {
            let e = parse_topics(bad).unwrap_err();
            assert!(matches!(e, ZsxqError::Decode { .. }), "{e:?}");
            assert!(e.is_ambiguous());
        }
        // The raw excerpt is capped at 1 KiB.
        let long = vec![b'x'; 5000];
        let Err(ZsxqError::Decode { raw, .. }) = parse_topics(&long) else {
            panic!("expected Decode");
        };
        assert_eq!(raw.len(), 1024);
        assert!(!ZsxqError::TooFrequent.is_ambiguous());
        assert!(!ZsxqError::Http("x".into()).is_ambiguous());
        assert!(ZsxqError::Unconfirmed("x".into()).is_ambiguous());
    }

    #[test]
    fn answered_flag() {
        assert_eq!(
            parse_answered(br#"{"succeeded":true,"resp_data":{"topic":{"answered":true}}}"#),
            Ok(true)
        );
        assert_eq!(
            parse_answered(br#"{"succeeded":true,"resp_data":{"topic":{"answered":false}}}"#),
            Ok(false)
        );
        assert!(matches!(
            parse_answered(br#"{"succeeded":true,"resp_data":{"topic":{}}}"#),
            Err(ZsxqError::Decode { .. })
        ));
        assert_eq!(
            parse_answered(br#"{"succeeded":false,"code":1059}"#),
            Err(ZsxqError::TooFrequent)
        );
    }

    /// xorshift64: a deterministic source of garbage.
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let seed = SAMPLE.as_bytes();
        let pieces: [&[u8]; 14] = [
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"",
            b":",
            b",",
            b"null",
            b"18446744073709551616",
            b"\"q&a\"",
            b"-1",
            b"1e999",
            b"\\u00",
            "时".as_bytes(),
        ];
        for _ in 0..5000 {
            let mut body = seed.to_vec();
            for _ in 0..1 + rng.below(6) {
                let at = rng.below(body.len() + 1);
                match rng.below(4) {
                    0 => body.truncate(at),
                    1 => {
                        if let Some(b) = body.get_mut(at) {
                            *b = u8::try_from(rng.next() & 0xff).unwrap_or(0);
                        }
                    }
                    2 => {
                        let p = pieces[rng.below(pieces.len())];
                        body.splice(at..at, p.iter().copied());
                    }
                    _ => {
                        let end = (at + rng.below(20)).min(body.len());
                        body.drain(at..end);
                    }
                }
            }
            let _ = parse_topics(&body);
            let _ = parse_answered(&body);
        }
        for _ in 0..2000 {
            let len = rng.below(200);
            let body: Vec<u8> = (0..len).map(|_| (rng.next() & 0xff) as u8).collect();
            let _ = parse_topics(&body);
        }
    }
}
