//! Verifying and opening synchronous gateway responses.
//!
//! The gateway answers `{"<method with . → _>_response": {...}, "sign":
//! "..."}` and signs the *exact bytes* of the `*_response` value as sent.
//! Re-serializing a parsed value would change whitespace, key order or
//! escapes and break the check, so this module scans the raw JSON
//! structure to find that value's text, verifies the signature over it, and
//! only then parses it.

use serde_json::{Map, Value};

use crate::{AlipayError, AlipayPublicKey, sign};

/// Deepest nesting the scanner follows; serde_json's own limit is 128 too.
const MAX_DEPTH: usize = 128;

/// Alipay's success code.
pub const SUCCESS_CODE: &str = "10000";

/// The raw pieces of a gateway response, before any trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse<'a> {
    /// The top-level key the payload was found under: the method's
    /// `*_response` key or, for gateway-level failures, `error_response`.
    pub key: String,
    /// The exact JSON text of the payload, as received (what `sign` covers).
    pub payload: &'a str,
    /// The top-level `sign`, if any.
    pub sign: Option<String>,
}

/// The response key of an API method: `alipay.trade.query` →
/// `alipay_trade_query_response`.
#[must_use]
pub fn response_key(method: &str) -> String {
    format!("{}_response", method.replace('.', "_"))
}

/// Finds the payload of `method`'s response (or `error_response`) and the
/// `sign` in a raw body by scanning its JSON structure; nothing is trusted
/// or fully parsed yet. Errors are [`AlipayError::Decode`].
pub fn extract<'a>(body: &'a str, method: &str) -> Result<RawResponse<'a>, AlipayError> {
    let fields = top_level_fields(body).map_err(|why| AlipayError::decode(why, body))?;
    let wanted = response_key(method);
    let mut payload: Option<(String, &str)> = None;
    let mut error_payload: Option<&str> = None;
    let mut sign: Option<String> = None;
    for (raw_key, raw_value) in fields {
        let key: String = serde_json::from_str(raw_key)
            .map_err(|_| AlipayError::decode("invalid JSON key", body))?;
        // A repeated key would let two different payloads compete.
        let duplicate = || AlipayError::decode(format!("duplicate top-level key `{key}`"), body);
        if key == wanted {
            if payload.is_some() {
                return Err(duplicate());
            }
            payload = Some((key, raw_value));
        } else if key == "error_response" {
            if error_payload.replace(raw_value).is_some() {
                return Err(duplicate());
            }
        } else if key == "sign" {
            if sign.is_some() {
                return Err(duplicate());
            }
            let s: String = serde_json::from_str(raw_value)
                .map_err(|_| AlipayError::decode("`sign` is not a string", body))?;
            sign = Some(s);
        }
    }
    let (key, payload) = payload
        .or_else(|| error_payload.map(|p| ("error_response".to_owned(), p)))
        .ok_or_else(|| AlipayError::decode(format!("no `{wanted}` in response"), body))?;
    Ok(RawResponse { key, payload, sign })
}

/// Verifies a gateway response and returns its payload object if `code` is
/// [`SUCCESS_CODE`].
///
/// - No `sign`: [`AlipayError::Decode`] (the body is kept in `raw` for
///   diagnosis, but nothing in it is trusted — not even an error code).
/// - Bad signature: [`AlipayError::BadSignature`]. Like alipay-sdk-java we
///   retry once with `\/` unescaped to `/`, since the gateway has signed
///   that form while sending the escaped one.
/// - Verified, `code` ≠ `"10000"`: [`AlipayError::Api`].
pub fn open(
    key: &AlipayPublicKey,
    body: &str,
    method: &str,
) -> Result<Map<String, Value>, AlipayError> {
    let raw = extract(body, method)?;
    let Some(signature) = raw.sign.as_deref().filter(|s| !s.is_empty()) else {
        return Err(AlipayError::decode(
            "response is not signed; not trusted",
            body,
        ));
    };
    if sign::verify(key, raw.payload, signature).is_err() {
        let unescaped = raw.payload.replace("\\/", "/");
        if unescaped == raw.payload || sign::verify(key, &unescaped, signature).is_err() {
            return Err(AlipayError::BadSignature);
        }
    }
    // Trusted from here on.
    let payload: Map<String, Value> = serde_json::from_str(raw.payload).map_err(|e| {
        AlipayError::decode(format!("`{}` is not a JSON object: {e}", raw.key), body)
    })?;
    let text = |name: &str| payload.get(name).and_then(Value::as_str).map(str::to_owned);
    let code = text("code").ok_or_else(|| AlipayError::decode("response has no `code`", body))?;
    if code != SUCCESS_CODE {
        return Err(AlipayError::Api {
            code,
            msg: text("msg").unwrap_or_default(),
            sub_code: text("sub_code"),
            sub_msg: text("sub_msg"),
        });
    }
    Ok(payload)
}

/// The raw text of each top-level `key: value` of a JSON object, keys with
/// their quotes. The whole body must be one object (whitespace around it
/// allowed). Values are delimited structurally, not validated: the one we
/// use is fully parsed by serde_json after its signature checks out.
fn top_level_fields(body: &str) -> Result<Vec<(&str, &str)>, &'static str> {
    let mut sc = Scanner {
        s: body.as_bytes(),
        pos: 0,
    };
    let mut fields = Vec::new();
    sc.ws();
    sc.expect(b'{')?;
    sc.ws();
    if sc.peek() == Some(b'}') {
        sc.pos += 1;
    } else {
        loop {
            sc.ws();
            let k = sc.string()?;
            sc.ws();
            sc.expect(b':')?;
            sc.ws();
            let v = sc.value(1)?;
            let (Some(k), Some(v)) = (body.get(k.0..k.1), body.get(v.0..v.1)) else {
                return Err("span not on a character boundary");
            };
            fields.push((k, v));
            sc.ws();
            match sc.bump() {
                Some(b',') => {}
                Some(b'}') => break,
                _ => return Err("expected `,` or `}`"),
            }
        }
    }
    sc.ws();
    if sc.peek().is_some() {
        return Err("trailing data after the JSON object");
    }
    Ok(fields)
}

/// A byte cursor over JSON text. Spans it returns start and end at ASCII
/// delimiters, so they are always `str` character boundaries.
struct Scanner<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, want: u8) -> Result<(), &'static str> {
        if self.bump() == Some(want) {
            Ok(())
        } else {
            Err("unexpected character in JSON")
        }
    }

    /// A string, quotes included. Escapes are skipped as pairs so `\"` does
    /// not end the string; their validity is serde_json's job later.
    fn string(&mut self) -> Result<(usize, usize), &'static str> {
        let start = self.pos;
        self.expect(b'"')?;
        loop {
            match self.bump() {
                None => return Err("unterminated string"),
                Some(b'"') => return Ok((start, self.pos)),
                Some(b'\\') => {
                    self.bump().ok_or("unterminated string")?;
                }
                Some(c) if c < 0x20 => return Err("control character in string"),
                Some(_) => {}
            }
        }
    }

    /// Any value; braces and brackets inside strings do not count.
    fn value(&mut self, depth: usize) -> Result<(usize, usize), &'static str> {
        if depth > MAX_DEPTH {
            return Err("JSON nested too deeply");
        }
        let start = self.pos;
        match self.peek() {
            Some(b'"') => return self.string(),
            Some(open @ (b'{' | b'[')) => {
                let close = if open == b'{' { b'}' } else { b']' };
                self.pos += 1;
                self.ws();
                if self.peek() == Some(close) {
                    self.pos += 1;
                    return Ok((start, self.pos));
                }
                loop {
                    self.ws();
                    if open == b'{' {
                        self.string()?;
                        self.ws();
                        self.expect(b':')?;
                        self.ws();
                    }
                    self.value(depth + 1)?;
                    self.ws();
                    match self.bump() {
                        Some(b',') => {}
                        Some(c) if c == close => return Ok((start, self.pos)),
                        _ => return Err("expected `,` or a closing bracket"),
                    }
                }
            }
            _ => {
                // Numbers, true, false, null.
                while matches!(
                    self.peek(),
                    Some(b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'+' | b'-' | b'.')
                ) {
                    self.pos += 1;
                }
                if self.pos == start {
                    return Err("expected a JSON value");
                }
            }
        }
        Ok((start, self.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AppPrivateKey;

    const ALIPAY_PRIVATE: &str = include_str!("../testdata/alipay_private_pkcs1.b64");
    const ALIPAY_PUBLIC: &str = include_str!("../testdata/alipay_public.pem");
    const APP_PRIVATE: &str = include_str!("../testdata/app_private_pkcs8.b64");

    const M: &str = "alipay.trade.query";

    #[test]
    fn extracts_exact_raw_text() {
        let payload = r#"{ "code":"10000", "nested":{"a":[1,2,{"b":"}"}],"c":null}, "s":"br{ace}s \"quoted\" \\ ]", "n":-1.5e3,"t":true }"#;
        let body = format!(
            "  {{\"other\":{{\"x\":\"}}\"}},\"alipay_trade_query_response\" :\n{payload} , \"sign\":\"c2ln\\/bg==\",\"alipay_cert_sn\":\"\"}}\n"
        );
        let raw = extract(&body, M).unwrap();
        assert_eq!(raw.payload, payload);
        assert_eq!(raw.key, "alipay_trade_query_response");
        assert_eq!(raw.sign.as_deref(), Some("c2ln/bg=="));
    }

    #[test]
    fn falls_back_to_error_response() {
        let body = r#"{"error_response":{"code":"40002","msg":"Invalid Arguments","sub_code":"isv.invalid-app-id"}}"#;
        let raw = extract(body, M).unwrap();
        assert_eq!(raw.key, "error_response");
        assert_eq!(raw.sign, None);
    }

    #[test]
    fn extract_rejects_malformed() {
        for body in [
            "",
            "[]",
            "{",
            r#"{"alipay_trade_query_response":{"code":"10000"}"#,
            r#"{"alipay_trade_query_response":{"code":"10000"}} x"#,
            r#"{"alipay_trade_query_response":{"code":"10000}}"#,
            r#"{"alipay_trade_query_response":{"code":"10000"},"alipay_trade_query_response":{}}"#,
            r#"{"alipay_trade_query_response":{},"sign":"a","sign":"b"}"#,
            r#"{"alipay_trade_query_response":{},"sign":1}"#,
            r#"{"other_response":{}}"#,
            r#"{"alipay_trade_query_response":{"a" "b"}}"#,
            r#"{"alipay_trade_query_response":}"#,
            "{\"alipay_trade_query_response\":\"a\nb\"}",
        ] {
            assert!(
                matches!(extract(body, M), Err(AlipayError::Decode { .. })),
                "{body:?}"
            );
        }
        let deep = format!("{{\"k\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(extract(&deep, M), Err(AlipayError::Decode { .. })));
    }

    fn signed(payload: &str, key_b64: &str) -> String {
        let key = AppPrivateKey::from_pem_or_base64(key_b64).unwrap();
        let sig = sign::sign(&key, payload).unwrap();
        format!(r#"{{"alipay_trade_query_response":{payload},"sign":"{sig}"}}"#)
    }

    fn alipay_key() -> AlipayPublicKey {
        AlipayPublicKey::from_pem_or_base64(ALIPAY_PUBLIC).unwrap()
    }

    #[test]
    fn opens_signed_success_and_api_errors() {
        let payload = r#"{"code":"10000","msg":"Success","trade_status":"TRADE_SUCCESS","total_amount":"12.34"}"#;
        let map = open(&alipay_key(), &signed(payload, ALIPAY_PRIVATE), M).unwrap();
        assert_eq!(map["trade_status"], "TRADE_SUCCESS");

        let payload = r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_NOT_EXIST","sub_msg":"交易不存在"}"#;
        assert_eq!(
            open(&alipay_key(), &signed(payload, ALIPAY_PRIVATE), M),
            Err(AlipayError::Api {
                code: "40004".into(),
                msg: "Business Failed".into(),
                sub_code: Some("ACQ.TRADE_NOT_EXIST".into()),
                sub_msg: Some("交易不存在".into()),
            })
        );
    }

    #[test]
    fn rejects_wrong_key_tampering_and_unsigned() {
        let payload = r#"{"code":"10000","msg":"Success","total_amount":"12.34"}"#;
        let wrong = signed(payload, APP_PRIVATE);
        assert_eq!(
            open(&alipay_key(), &wrong, M),
            Err(AlipayError::BadSignature)
        );

        let tampered = signed(payload, ALIPAY_PRIVATE).replace("12.34", "99.99");
        assert_eq!(
            open(&alipay_key(), &tampered, M),
            Err(AlipayError::BadSignature)
        );

        // Re-formatting (what re-serializing would do) breaks the signature.
        let reformatted = signed(payload, ALIPAY_PRIVATE).replace(r#""code":"#, r#""code": "#);
        assert_eq!(
            open(&alipay_key(), &reformatted, M),
            Err(AlipayError::BadSignature)
        );

        // Unsigned error responses are not trusted either: no Api error.
        let unsigned =
            r#"{"alipay_trade_query_response":{"code":"40004","sub_code":"ACQ.TRADE_NOT_EXIST"}}"#;
        assert!(matches!(
            open(&alipay_key(), unsigned, M),
            Err(AlipayError::Decode { .. })
        ));
    }

    #[test]
    fn accepts_signature_over_unescaped_slashes() {
        let signed_text =
            r#"{"code":"10000","msg":"Success","qr_code":"https://qr.alipay.com/bax0"}"#;
        let key = AppPrivateKey::from_pem_or_base64(ALIPAY_PRIVATE).unwrap();
        let sig = sign::sign(&key, signed_text).unwrap();
        let sent = signed_text.replace('/', "\\/");
        let body = format!(r#"{{"alipay_trade_query_response":{sent},"sign":"{sig}"}}"#);
        let map = open(&alipay_key(), &body, M).unwrap();
        assert_eq!(map["qr_code"], "https://qr.alipay.com/bax0");
    }

    #[test]
    fn garbage_never_panics() {
        let good = signed(r#"{"code":"10000","a":["}",{"b":"\"x"}]}"#, ALIPAY_PRIVATE);
        let alphabet = br#"{}[]":,\ "a0-e.tn_response"#;
        let mut x: u64 = 0x1234_5678_9ABC_DEF1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            usize::try_from(x % 1_000_003).unwrap()
        };
        for round in 0..20_000 {
            let body: Vec<u8> = if round % 2 == 0 {
                (0..next() % 120)
                    .map(|_| alphabet[next() % alphabet.len()])
                    .collect()
            } else {
                let mut b = good.clone().into_bytes();
                let i = next() % b.len();
                b[i] = alphabet[next() % alphabet.len()];
                b
            };
            let Ok(text) = std::str::from_utf8(&body) else {
                continue;
            };
            let _ = extract(text, M);
            let _ = open(&alipay_key(), text, M);
        }
    }
}
