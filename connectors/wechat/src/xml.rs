//! The XML of WeChat Official Account callbacks: incoming messages, the
//! safe-mode envelope, and passive replies.
//!
//! Incoming XML is attacker-controlled until its signature is checked, and
//! WeChat's own output varies (CDATA or not, any element order, new elements
//! added without notice, empty elements). So parsing walks quick-xml events
//! and collects the text of the root's direct children by name, instead of
//! deserializing into a fixed schema: unknown and nested elements are
//! skipped, and nothing here panics on any input. Pure code, no I/O.

use std::borrow::Cow;

use quick_xml::Reader;
use quick_xml::escape::resolve_xml_entity;
use quick_xml::events::Event;

/// Largest XML accepted. Real callbacks are well under 4 KiB; the limit
/// bounds the work an attacker can cause.
pub const MAX_XML_BYTES: usize = 64 * 1024;

/// Why an XML document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// The document is larger than [`MAX_XML_BYTES`].
    #[error("XML larger than {MAX_XML_BYTES} bytes")]
    TooLarge,
    /// The document is not valid UTF-8.
    #[error("XML is not valid UTF-8")]
    Utf8,
    /// The document is not well-formed XML (or has no root element).
    #[error("malformed XML: {0}")]
    Malformed(String),
    /// A required element is missing.
    #[error("missing element <{0}>")]
    MissingField(&'static str),
    /// An element that must hold an integer does not.
    #[error("element <{0}> is not a valid integer")]
    InvalidNumber(&'static str),
}

/// One message or event pushed to an Official Account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// `ToUserName`: the account's own `gh_` id.
    pub to_user: String,
    /// `FromUserName`: the sender's openid.
    pub from_user: String,
    /// `CreateTime`, Unix seconds.
    pub create_time: i64,
    /// `MsgId`; events have none.
    pub msg_id: Option<u64>,
    /// What was sent.
    pub kind: IncomingKind,
}

/// The type-specific part of an [`Incoming`] message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncomingKind {
    /// `MsgType=text`.
    Text {
        /// `Content`, exactly as sent (not trimmed).
        content: String,
    },
    /// `MsgType=voice`.
    Voice {
        /// `MediaId` of the recording.
        media_id: String,
        /// `Format`, e.g. `amr` or `speex`; empty when missing.
        format: String,
        /// `Recognition` (WeChat's transcript); `None` when missing or empty.
        recognition: Option<String>,
    },
    /// `MsgType=image`.
    Image {
        /// `PicUrl`; empty when missing.
        pic_url: String,
        /// `MediaId` of the picture.
        media_id: String,
    },
    /// `MsgType=event`.
    Event {
        /// `Event` as sent (`subscribe`, `unsubscribe`, `CLICK`, `SCAN`,
        /// `VIEW`, ...); case is kept because WeChat mixes cases.
        event: String,
        /// `EventKey` (`qrscene_...` for a subscribe through a QR code, the
        /// menu key for `CLICK`); `None` when missing or empty.
        event_key: Option<String>,
        /// `Ticket` of a QR-code scan; `None` when missing or empty.
        ticket: Option<String>,
    },
    /// Any other `MsgType` (`video`, `location`, `link`, ...).
    Other {
        /// The `MsgType` as sent.
        msg_type: String,
    },
}

impl Incoming {
    /// The key under which WeChat's retries of this message are recognised.
    ///
    /// `MsgId` in decimal when present; otherwise (events)
    /// `"{from_user}:{create_time}:{event}"`, or
    /// `"{from_user}:{create_time}:{msg_type}"` for the rare non-event
    /// without a `MsgId`.
    #[must_use]
    pub fn dedupe_id(&self) -> String {
        if let Some(id) = self.msg_id {
            return id.to_string();
        }
        let what = match &self.kind {
            IncomingKind::Event { event, .. } => event.as_str(),
            IncomingKind::Text { .. } => "text",
            IncomingKind::Voice { .. } => "voice",
            IncomingKind::Image { .. } => "image",
            IncomingKind::Other { msg_type } => msg_type.as_str(),
        };
        format!("{}:{}:{}", self.from_user, self.create_time, what)
    }
}

/// The outer document of a safe-mode (or compatible-mode) callback:
/// `<xml><ToUserName/><Encrypt/></xml>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `ToUserName`, if present.
    pub to_user: Option<String>,
    /// `Encrypt`: the base64 ciphertext, exactly the text the
    /// `msg_signature` covers.
    pub encrypt: Option<String>,
}

/// The text of the root element's direct children, in document order.
struct Fields(Vec<(String, String)>);

impl Fields {
    /// The first element named `name`, as sent.
    fn raw(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first element named `name`, trimmed; identifiers and numbers
    /// tolerate surrounding whitespace from pretty-printed XML.
    fn trimmed(&self, name: &str) -> Option<&str> {
        self.raw(name).map(str::trim)
    }

    /// Like [`Self::trimmed`], but an empty element counts as missing.
    fn non_empty(&self, name: &str) -> Option<String> {
        self.trimmed(name)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    fn required(&self, name: &'static str) -> Result<String, XmlError> {
        self.trimmed(name)
            .map(str::to_owned)
            .ok_or(XmlError::MissingField(name))
    }
}

/// Checks the size and encoding limits and walks the document.
fn parse_fields(xml: &[u8]) -> Result<Fields, XmlError> {
    if xml.len() > MAX_XML_BYTES {
        return Err(XmlError::TooLarge);
    }
    let text = std::str::from_utf8(xml).map_err(|_| XmlError::Utf8)?;
    collect_children(text)
}

/// Collects `(name, text)` for each direct child of the root element.
///
/// Text, CDATA sections and character/entity references directly inside a
/// child are concatenated; deeper elements (e.g. `ScanCodeInfo` in some
/// events) are skipped with their text. Processing stops at the end of the
/// root element, so trailing bytes are ignored.
fn collect_children(text: &str) -> Result<Fields, XmlError> {
    let mut reader = Reader::from_str(text);
    // Depth 0: outside the root; 1: inside the root; 2: inside a child.
    let mut depth: usize = 0;
    let mut seen_root = false;
    let mut fields = Vec::new();
    // The child being read: its name and text so far.
    let mut current: Option<(String, String)> = None;

    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlError::Malformed(e.to_string()))?;
        match event {
            Event::Start(start) => {
                if depth == 0 {
                    seen_root = true;
                } else if depth == 1 {
                    current = Some((start.name().as_ref().to_owned(), String::new()));
                }
                depth = depth.saturating_add(1);
            }
            Event::Empty(start) => {
                if depth == 0 {
                    // `<xml/>`: a root with no children.
                    return Ok(Fields(fields));
                }
                if depth == 1 {
                    fields.push((start.name().as_ref().to_owned(), String::new()));
                }
            }
            Event::End(_) => {
                // The reader checks that end names match their start tags,
                // so an End at depth 0 cannot happen; stay defensive anyway.
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| XmlError::Malformed("end tag without a start tag".into()))?;
                match depth {
                    0 => return Ok(Fields(fields)),
                    1 => {
                        if let Some(field) = current.take() {
                            fields.push(field);
                        }
                    }
                    _ => {}
                }
            }
            Event::Text(t) if depth == 2 => push_text(&mut current, &t.xml10_content()),
            Event::CData(c) if depth == 2 => push_text(&mut current, &c.into_inner()),
            Event::GeneralRef(r) => {
                // Resolve even outside a child so undefined entities are
                // always an error; only keep the text inside a child.
                let resolved: Cow<'_, str> = match r.resolve_char_ref() {
                    Ok(Some(ch)) => Cow::Owned(ch.to_string()),
                    Ok(None) => match resolve_xml_entity(&r) {
                        Some(s) => Cow::Borrowed(s),
                        None => {
                            return Err(XmlError::Malformed(format!(
                                "undefined entity &{};",
                                r.as_ref()
                            )));
                        }
                    },
                    Err(e) => return Err(XmlError::Malformed(e.to_string())),
                };
                if depth == 2 {
                    push_text(&mut current, &resolved);
                }
            }
            Event::Eof => {
                return Err(XmlError::Malformed(if seen_root {
                    "unexpected end of document".into()
                } else {
                    "no root element".into()
                }));
            }
            // Text and CDATA outside a child (whitespace between elements,
            // or noise WeChat never sends), comments, declarations,
            // processing instructions and DOCTYPE (never expanded by
            // quick-xml) carry nothing.
            Event::Text(_)
            | Event::CData(_)
            | Event::Comment(_)
            | Event::Decl(_)
            | Event::PI(_)
            | Event::DocType(_) => {}
        }
    }
}

fn push_text(current: &mut Option<(String, String)>, text: &str) {
    if let Some((_, value)) = current.as_mut() {
        value.push_str(text);
    }
}

fn parse_i64(fields: &Fields, name: &'static str) -> Result<i64, XmlError> {
    let raw = fields.trimmed(name).ok_or(XmlError::MissingField(name))?;
    raw.parse().map_err(|_| XmlError::InvalidNumber(name))
}

/// Parses a plaintext (or decrypted) message pushed to an Official Account.
///
/// Accepts values with or without CDATA, in any order, with whitespace
/// between elements; unknown elements are ignored.
///
/// # Errors
/// [`XmlError::TooLarge`] over [`MAX_XML_BYTES`], [`XmlError::Utf8`],
/// [`XmlError::Malformed`], [`XmlError::MissingField`] when `ToUserName`,
/// `FromUserName`, `CreateTime`, `MsgType` or the type's essential field
/// (`Content`, `MediaId`, `Event`) is absent, and [`XmlError::InvalidNumber`]
/// for a non-integer `CreateTime` or `MsgId`.
pub fn parse_incoming(xml: &[u8]) -> Result<Incoming, XmlError> {
    let f = parse_fields(xml)?;
    let to_user = f.required("ToUserName")?;
    let from_user = f.required("FromUserName")?;
    let create_time = parse_i64(&f, "CreateTime")?;
    let msg_type = f.required("MsgType")?;
    let msg_id = match f.trimmed("MsgId") {
        None | Some("") => None,
        Some(raw) => Some(
            raw.parse::<u64>()
                .map_err(|_| XmlError::InvalidNumber("MsgId"))?,
        ),
    };

    let kind = if msg_type.eq_ignore_ascii_case("text") {
        IncomingKind::Text {
            // User text is kept exactly, leading/trailing spaces included.
            content: f
                .raw("Content")
                .map(str::to_owned)
                .ok_or(XmlError::MissingField("Content"))?,
        }
    } else if msg_type.eq_ignore_ascii_case("voice") {
        IncomingKind::Voice {
            media_id: f.required("MediaId")?,
            format: f.trimmed("Format").unwrap_or_default().to_owned(),
            recognition: f
                .raw("Recognition")
                .filter(|r| !r.trim().is_empty())
                .map(str::to_owned),
        }
    } else if msg_type.eq_ignore_ascii_case("image") {
        IncomingKind::Image {
            pic_url: f.trimmed("PicUrl").unwrap_or_default().to_owned(),
            media_id: f.required("MediaId")?,
        }
    } else if msg_type.eq_ignore_ascii_case("event") {
        IncomingKind::Event {
            event: f.required("Event")?,
            event_key: f.non_empty("EventKey"),
            ticket: f.non_empty("Ticket"),
        }
    } else {
        IncomingKind::Other { msg_type }
    };

    Ok(Incoming {
        to_user,
        from_user,
        create_time,
        msg_id,
        kind,
    })
}

/// Parses the outer document of a safe-mode callback. Both fields are
/// optional here; the caller decides what it needs.
///
/// # Errors
/// As [`parse_incoming`] for size, encoding and well-formedness.
pub fn parse_envelope(xml: &[u8]) -> Result<Envelope, XmlError> {
    let f = parse_fields(xml)?;
    Ok(Envelope {
        to_user: f.non_empty("ToUserName"),
        // base64 never contains whitespace, so trimming only removes
        // pretty-printing around the CDATA section.
        encrypt: f.non_empty("Encrypt"),
    })
}

/// The text of the root's first direct child named `name`, trimmed; `None`
/// when absent or empty. Used for fields [`parse_incoming`] does not keep,
/// such as WeCom's `AgentID`.
///
/// # Errors
/// As [`parse_incoming`] for size, encoding and well-formedness.
pub(crate) fn child_text(xml: &[u8], name: &str) -> Result<Option<String>, XmlError> {
    Ok(parse_fields(xml)?.non_empty(name))
}

/// Wraps `text` in a CDATA section, splitting any `]]>` so the section
/// cannot be closed early (`]]>` becomes `]]]]><![CDATA[>`).
fn cdata(text: &str) -> String {
    format!("<![CDATA[{}]]>", text.replace("]]>", "]]]]><![CDATA[>"))
}

/// Escapes text for an element without CDATA (numbers, timestamps).
fn escape_text(text: &str) -> Cow<'_, str> {
    quick_xml::escape::escape(text)
}

/// Builds a passive text reply. `to_user` is the user's openid and
/// `from_user` the account's `gh_` id (swapped relative to the incoming
/// message).
#[must_use]
pub fn text_reply_xml(to_user: &str, from_user: &str, create_time: i64, content: &str) -> String {
    format!(
        "<xml><ToUserName>{}</ToUserName><FromUserName>{}</FromUserName>\
         <CreateTime>{create_time}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content>{}</Content></xml>",
        cdata(to_user),
        cdata(from_user),
        cdata(content),
    )
}

/// Builds the safe-mode reply envelope around an encrypted reply, in the
/// exact layout of Tencent's samples and wechatpy (newlines included).
#[must_use]
pub fn encrypted_reply_xml(
    encrypt: &str,
    msg_signature: &str,
    timestamp: &str,
    nonce: &str,
) -> String {
    format!(
        "<xml>\n<Encrypt>{}</Encrypt>\n<MsgSignature>{}</MsgSignature>\n\
         <TimeStamp>{}</TimeStamp>\n<Nonce>{}</Nonce>\n</xml>",
        cdata(encrypt),
        cdata(msg_signature),
        escape_text(timestamp),
        cdata(nonce),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_without_cdata_in_any_order_with_unknown_elements() {
        let xml = b"<xml>\n  <MsgId> 42 </MsgId>\n  <Content>a &amp; b &#x4F60;</Content>\n\
                    <Unknown><Nested>x</Nested></Unknown>\n  <MsgType>text</MsgType>\n\
                    <CreateTime>\n1700000000\n</CreateTime>\n  <FromUserName>o_user</FromUserName>\n\
                    <ToUserName>gh_1</ToUserName>\n</xml>";
        let m = parse_incoming(xml).unwrap();
        assert_eq!(m.to_user, "gh_1");
        assert_eq!(m.from_user, "o_user");
        assert_eq!(m.create_time, 1_700_000_000);
        assert_eq!(m.msg_id, Some(42));
        assert_eq!(
            m.kind,
            IncomingKind::Text {
                content: "a & b 你".into()
            }
        );
        assert_eq!(m.dedupe_id(), "42");
    }

    #[test]
    fn content_is_kept_verbatim_and_may_mix_cdata_and_text() {
        let xml = "<xml><ToUserName>t</ToUserName><FromUserName>f</FromUserName>\
                   <CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType>\
                   <Content>  <![CDATA[<b>hi</b> ]]]]><![CDATA[>]]> &lt;x&gt; </Content></xml>";
        let m = parse_incoming(xml.as_bytes()).unwrap();
        assert_eq!(
            m.kind,
            IncomingKind::Text {
                content: "  <b>hi</b> ]]> <x> ".into()
            }
        );
    }

    #[test]
    fn nested_elements_do_not_leak_into_the_parent_value() {
        let xml = "<xml><ToUserName>t</ToUserName><FromUserName>f</FromUserName>\
                   <CreateTime>5</CreateTime><MsgType>event</MsgType><Event>scancode_push</Event>\
                   <EventKey>k</EventKey><ScanCodeInfo><ScanType>qrcode</ScanType>\
                   <ScanResult>r</ScanResult></ScanCodeInfo><Ticket></Ticket></xml>";
        let m = parse_incoming(xml.as_bytes()).unwrap();
        assert_eq!(
            m.kind,
            IncomingKind::Event {
                event: "scancode_push".into(),
                event_key: Some("k".into()),
                ticket: None,
            }
        );
        assert_eq!(m.dedupe_id(), "f:5:scancode_push");
    }

    #[test]
    fn empty_elements_and_self_closing_root() {
        let xml = b"<xml><ToUserName/><FromUserName>f</FromUserName><CreateTime>1</CreateTime>\
                    <MsgType>text</MsgType><Content/><MsgId></MsgId></xml>";
        let m = parse_incoming(xml).unwrap();
        assert_eq!(m.to_user, "");
        assert_eq!(m.msg_id, None);
        assert_eq!(
            m.kind,
            IncomingKind::Text {
                content: String::new()
            }
        );
        assert_eq!(m.dedupe_id(), "f:1:text");
        assert_eq!(
            parse_envelope(b"<xml/>").unwrap(),
            Envelope {
                to_user: None,
                encrypt: None
            }
        );
    }

    #[test]
    fn other_types_and_required_fields() {
        let base = |extra: &str| {
            format!(
                "<xml><ToUserName>t</ToUserName><FromUserName>f</FromUserName>\
                 <CreateTime>9</CreateTime>{extra}</xml>"
            )
        };
        let m =
            parse_incoming(base("<MsgType>video</MsgType><MsgId>7</MsgId>").as_bytes()).unwrap();
        assert_eq!(
            m.kind,
            IncomingKind::Other {
                msg_type: "video".into()
            }
        );
        assert_eq!(
            parse_incoming(base("").as_bytes()),
            Err(XmlError::MissingField("MsgType"))
        );
        assert_eq!(
            parse_incoming(base("<MsgType>text</MsgType>").as_bytes()),
            Err(XmlError::MissingField("Content"))
        );
        assert_eq!(
            parse_incoming(base("<MsgType>event</MsgType>").as_bytes()),
            Err(XmlError::MissingField("Event"))
        );
        assert_eq!(
            parse_incoming(base("<MsgType>image</MsgType>").as_bytes()),
            Err(XmlError::MissingField("MediaId"))
        );
        assert_eq!(
            parse_incoming(
                base("<MsgType>text</MsgType><Content>x</Content><MsgId>-1</MsgId>").as_bytes()
            ),
            Err(XmlError::InvalidNumber("MsgId"))
        );
        assert_eq!(
            parse_incoming(b"<xml><ToUserName>t</ToUserName><FromUserName>f</FromUserName><CreateTime>x</CreateTime><MsgType>text</MsgType></xml>"),
            Err(XmlError::InvalidNumber("CreateTime"))
        );
        assert_eq!(
            parse_incoming(b"<xml><FromUserName>f</FromUserName></xml>"),
            Err(XmlError::MissingField("ToUserName"))
        );
    }

    #[test]
    fn limits_and_malformed_documents() {
        let mut big = b"<xml><Content>".to_vec();
        big.resize(MAX_XML_BYTES + 1, b'a');
        assert_eq!(parse_incoming(&big), Err(XmlError::TooLarge));
        assert_eq!(parse_envelope(&big), Err(XmlError::TooLarge));
        assert_eq!(parse_incoming(b"<xml>\xff</xml>"), Err(XmlError::Utf8));
        for bad in [
            &b""[..],
            b"   ",
            b"not xml",
            b"<xml>",
            b"<xml><ToUserName>a</FromUserName></xml>",
            b"<xml><A>&bogus;</A></xml>",
            b"<xml><A>&#0;</A></xml>",
            b"</xml>",
        ] {
            assert!(
                matches!(parse_incoming(bad), Err(XmlError::Malformed(_))),
                "{:?} -> {:?}",
                String::from_utf8_lossy(bad),
                parse_incoming(bad)
            );
        }
        // Whatever follows the root element is ignored.
        assert_eq!(
            parse_envelope(
                b"<xml><Encrypt>e</Encrypt></xml><xml><Encrypt>f</Encrypt></xml>garbage"
            )
            .unwrap()
            .encrypt
            .as_deref(),
            Some("e")
        );
    }

    #[test]
    fn doctype_entities_are_not_expanded() {
        let xml = b"<!DOCTYPE xml [<!ENTITY x \"boom\">]><xml><ToUserName>&x;</ToUserName></xml>";
        assert!(matches!(parse_incoming(xml), Err(XmlError::Malformed(_))));
    }

    #[test]
    fn envelope_with_compatible_mode_fields() {
        let xml = b"<xml>\n<ToUserName><![CDATA[gh_1]]></ToUserName>\n<Encrypt>\n<![CDATA[abc+/=]]>\n</Encrypt>\n\
                    <MsgType>text</MsgType><Content>plain copy</Content></xml>";
        assert_eq!(
            parse_envelope(xml).unwrap(),
            Envelope {
                to_user: Some("gh_1".into()),
                encrypt: Some("abc+/=".into())
            }
        );
    }

    #[test]
    fn text_reply_escapes_cdata_end_and_round_trips() {
        let content = "a ]]> b ]]]]> <tag> & \"q\" 你好 ]]";
        let xml = text_reply_xml("o_user", "gh_1", 1_700_000_000, content);
        assert!(xml.contains("]]]]><![CDATA[>"));
        let back = parse_incoming(xml.as_bytes()).unwrap();
        assert_eq!(back.to_user, "o_user");
        assert_eq!(back.from_user, "gh_1");
        assert_eq!(back.create_time, 1_700_000_000);
        assert_eq!(
            back.kind,
            IncomingKind::Text {
                content: content.into()
            }
        );
        // The exact layout of PROTOCOLS.md §1.3.
        assert_eq!(
            text_reply_xml("o", "gh", 1, "hi"),
            "<xml><ToUserName><![CDATA[o]]></ToUserName><FromUserName><![CDATA[gh]]></FromUserName>\
             <CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType>\
             <Content><![CDATA[hi]]></Content></xml>"
        );
    }

    #[test]
    fn encrypted_reply_parses_back() {
        let xml = encrypted_reply_xml("ab+/==", "sig", "123", "n]]>x");
        let env = parse_envelope(xml.as_bytes()).unwrap();
        assert_eq!(env.encrypt.as_deref(), Some("ab+/=="));
        assert_eq!(
            encrypted_reply_xml("E", "S", "1<2", "N"),
            "<xml>\n<Encrypt><![CDATA[E]]></Encrypt>\n<MsgSignature><![CDATA[S]]></MsgSignature>\n\
             <TimeStamp>1&lt;2</TimeStamp>\n<Nonce><![CDATA[N]]></Nonce>\n</xml>"
        );
    }

    /// xorshift64: a tiny deterministic generator for the fuzz loop.
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
    fn garbage_never_panics() {
        let seeds: [&[u8]; 4] = [
            b"<xml><ToUserName><![CDATA[t]]></ToUserName><FromUserName>f</FromUserName>\
              <CreateTime>1</CreateTime><MsgType>text</MsgType><Content>a&amp;b</Content>\
              <MsgId>1</MsgId></xml>",
            b"<xml><ToUserName>t</ToUserName><Encrypt><![CDATA[AAAA]]></Encrypt></xml>",
            b"<?xml version=\"1.0\"?><!-- c --><xml><A><B><C/></B></A></xml>",
            b"<xml><MsgType>event</MsgType><Event>CLICK</Event><EventKey>k</EventKey></xml>",
        ];
        let alphabet: &[u8] = b"<>/![]CDATA&;#x=\"' \n\txml?-ab\xff\xc3\xa9";
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        for round in 0..6000 {
            let seed = seeds[round % seeds.len()];
            let input: Vec<u8> = match round % 3 {
                // Truncation.
                0 => seed[..(rng.next() as usize) % (seed.len() + 1)].to_vec(),
                // Random mutations of a valid document.
                1 => {
                    let mut v = seed.to_vec();
                    for _ in 0..(rng.next() % 6 + 1) {
                        let i = (rng.next() as usize) % v.len();
                        match rng.next() % 3 {
                            0 => v[i] = alphabet[(rng.next() as usize) % alphabet.len()],
                            1 => {
                                v.remove(i);
                            }
                            _ => v.insert(i, alphabet[(rng.next() as usize) % alphabet.len()]),
                        }
                        if v.is_empty() {
                            break;
                        }
                    }
                    v
                }
                // Pure noise from an XML-heavy alphabet.
                _ => (0..(rng.next() % 120))
                    .map(|_| alphabet[(rng.next() as usize) % alphabet.len()])
                    .collect(),
            };
            let _ = parse_incoming(&input);
            let _ = parse_envelope(&input);
        }
        // Deep nesting is just a counter, not recursion.
        let deep = format!(
            "<xml>{}{}</xml>",
            "<a>".repeat(10_000),
            "</a>".repeat(10_000)
        );
        assert!(parse_incoming(deep.as_bytes()).is_err());
    }
}
