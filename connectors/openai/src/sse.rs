//! Incremental parser for `text/event-stream` bodies (Server-Sent Events).
//!
//! This module owns the byte-level SSE framing and nothing else: it does no
//! I/O and knows nothing about OpenAI. Feed it whatever chunks the network
//! delivers with [`SseParser::push`]; it returns every event those bytes
//! completed. The rules follow the WHATWG HTML "event stream" interpretation
//! algorithm, with one deliberate difference copied from openai-python's
//! `SSEDecoder` (see [`SseParser`]).
//!
//! Memory is bounded: a single line, or the accumulated data of one event,
//! may not exceed [`SseParser::max_event_bytes`]. A larger event is dropped
//! whole (never dispatched truncated) and counted, so the caller can turn it
//! into an error with [`SseParser::take_dropped`].

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, or `None` when the event had no (or an empty) name,
    /// which WHATWG treats as the default `message` type.
    pub event: Option<String>,
    /// All `data:` lines of the event joined with `\n`.
    pub data: String,
    /// The last event id seen on the stream so far (it persists across events
    /// as WHATWG requires), or `None` if the server never sent one.
    pub id: Option<String>,
}

/// Default bound for one line and for the data of one event: 4 MiB.
///
/// Far above any real chat chunk (a few hundred bytes), but small enough that
/// a misbehaving upstream cannot make the daemon buffer without limit.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// UTF-8 byte order mark, skipped once at the very start of the stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Incremental SSE parser; see the [module docs](self).
///
/// Dispatch rule: WHATWG drops an event whose data buffer is empty, but
/// openai-python dispatches any event that set a name, data, or id, so
/// `event: ping\n\n` yields `{event: "ping", data: ""}`. This parser follows
/// openai-python (the `openai_sse_parser_cases` vectors), except that a
/// bare blank line never dispatches just because an id was seen earlier.
#[derive(Debug, Clone)]
pub struct SseParser {
    /// Bytes of the current, not yet terminated line. Kept as bytes so a
    /// multi-byte UTF-8 character split across chunks is decoded whole.
    line: Vec<u8>,
    /// The previous chunk ended in `\r`; a `\n` at the start of the next chunk
    /// belongs to that same line ending and must be skipped.
    pending_cr: bool,
    /// No line has been completed yet, so a leading BOM must still be removed.
    at_stream_start: bool,
    /// The current line exceeded the limit; ignore bytes up to its end.
    discarding_line: bool,
    /// The current event exceeded the limit; ignore lines up to the blank line.
    discarding_event: bool,
    /// Fields of the event being assembled.
    event: Option<String>,
    data: Option<String>,
    id_in_event: bool,
    /// Last event id (persists across events, per WHATWG).
    last_id: Option<String>,
    /// Events dropped for exceeding the limit since the last `take_dropped`.
    dropped: usize,
    max_event_bytes: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::with_limit(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseParser {
    /// Creates a parser with the default 4 MiB limit.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates a parser that drops any line or event larger than `max_event_bytes`.
    #[must_use]
    pub fn with_limit(max_event_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            pending_cr: false,
            at_stream_start: true,
            discarding_line: false,
            discarding_event: false,
            event: None,
            data: None,
            id_in_event: false,
            last_id: None,
            dropped: 0,
            max_event_bytes,
        }
    }

    /// The size limit for one line and for the data of one event.
    #[must_use]
    pub fn max_event_bytes(&self) -> usize {
        self.max_event_bytes
    }

    /// Returns how many events were dropped for exceeding the size limit since
    /// the last call, and resets the count.
    pub fn take_dropped(&mut self) -> usize {
        std::mem::take(&mut self.dropped)
    }

    /// Feeds the next chunk of the body (any size, split anywhere) and returns
    /// the events it completed, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let mut rest = bytes;
        if self.pending_cr {
            if let Some((&b'\n', tail)) = rest.split_first() {
                rest = tail;
            }
            // Only clear once we actually saw the next byte: an empty chunk
            // must not forget that a `\n` may still follow.
            if !bytes.is_empty() {
                self.pending_cr = false;
            }
        }
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(pos) => {
                    let (content, tail) = rest.split_at(pos);
                    self.append_to_line(content);
                    let mut tail = tail;
                    // `tail` starts with the terminator found above.
                    if let Some((&term, after)) = tail.split_first() {
                        tail = after;
                        if term == b'\r' {
                            match tail.split_first() {
                                Some((&b'\n', after_lf)) => tail = after_lf,
                                Some(_) => {}
                                None => self.pending_cr = true,
                            }
                        }
                    }
                    self.end_line(&mut out);
                    rest = tail;
                }
                None => {
                    self.append_to_line(rest);
                    rest = &[];
                }
            }
        }
        out
    }

    /// Signals the end of the body. Per WHATWG, an event not yet terminated by
    /// a blank line is discarded, so this never returns events today; it
    /// returns a `Vec` so callers need not change if that rule ever does.
    /// The parser is reset and can be reused for a new stream.
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let limit = self.max_event_bytes;
        let dropped = self.dropped;
        *self = Self::with_limit(limit);
        self.dropped = dropped;
        Vec::new()
    }

    fn append_to_line(&mut self, bytes: &[u8]) {
        if self.discarding_line || bytes.is_empty() {
            return;
        }
        if self.line.len().saturating_add(bytes.len()) > self.max_event_bytes {
            // Too long: forget the line and, because a missing line would
            // silently corrupt the event, the whole event it belongs to.
            self.line = Vec::new();
            self.discarding_line = true;
            self.drop_event();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn drop_event(&mut self) {
        if !self.discarding_event {
            self.discarding_event = true;
            self.dropped += 1;
        }
        self.event = None;
        self.data = None;
        self.id_in_event = false;
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let raw = std::mem::take(&mut self.line);
        let was_discarding_line = std::mem::replace(&mut self.discarding_line, false);
        let mut line: &[u8] = &raw;
        if std::mem::replace(&mut self.at_stream_start, false) {
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        if line.is_empty() && !was_discarding_line {
            self.dispatch(out);
            return;
        }
        if self.discarding_event {
            return;
        }
        self.process_field(line);
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if std::mem::replace(&mut self.discarding_event, false) {
            return;
        }
        let event = self.event.take();
        let data = self.data.take();
        let id_in_event = std::mem::replace(&mut self.id_in_event, false);
        if event.is_none() && data.is_none() && !id_in_event {
            return;
        }
        out.push(SseEvent {
            event,
            data: data.unwrap_or_default(),
            id: self.last_id.clone(),
        });
    }

    fn process_field(&mut self, line: &[u8]) {
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return, // comment, e.g. `: keep-alive`
            Some(pos) => {
                let (name, rest) = line.split_at(pos);
                let value = rest.get(1..).unwrap_or_default();
                (name, value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"event" => {
                self.event = if value.is_empty() {
                    None
                } else {
                    Some(value.into_owned())
                };
            }
            b"data" => {
                let len = self.data.as_ref().map_or(0, |d| d.len() + 1);
                if len.saturating_add(value.len()) > self.max_event_bytes {
                    self.drop_event();
                    return;
                }
                match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(&value);
                    }
                    None => self.data = Some(value.into_owned()),
                }
            }
            // WHATWG: an id containing NUL is ignored.
            b"id" if !value.contains('\0') => {
                self.last_id = if value.is_empty() {
                    None
                } else {
                    Some(value.into_owned())
                };
                self.id_in_event = true;
            }
            // `retry` only matters for reconnecting EventSource clients, which a
            // POST completion never is; unknown fields are ignored by the spec.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors() -> serde_json::Value {
        serde_json::from_str(include_str!("../testdata/openai_vectors.json")).unwrap()
    }

    fn vector(id: &str) -> serde_json::Value {
        vectors()["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == id)
            .unwrap()
            .clone()
    }

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(p.push(c));
        }
        out.extend(p.finish());
        out
    }

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
            id: None,
        }
    }

    #[test]
    fn openai_sse_parser_cases() {
        let v = vector("openai_sse_parser_cases");
        let cases = v["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 4);
        for case in cases {
            let raw = case["raw"].as_str().unwrap();
            let want: Vec<SseEvent> = case["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| ev(e["event"].as_str(), e["data"].as_str().unwrap()))
                .collect();
            assert_eq!(parse_all(&[raw.as_bytes()]), want, "case {}", case["name"]);
            // Byte by byte must give the same result.
            let bytes: Vec<&[u8]> = raw.as_bytes().chunks(1).collect();
            assert_eq!(parse_all(&bytes), want, "case {} bytewise", case["name"]);
        }
    }

    /// Checks the recorded OpenAI stream against the vector's expectations.
    fn check_recorded(events: &[SseEvent], expected: &serde_json::Value) {
        let (done, json_events) = events.split_last().unwrap();
        assert_eq!(format!("data: {}", done.data), expected["terminator"]);
        assert_eq!(
            json_events.len() as u64,
            expected["data_events"].as_u64().unwrap()
        );
        let chunks: Vec<serde_json::Value> = json_events
            .iter()
            .map(|e| {
                assert_eq!(e.event, None);
                serde_json::from_str(&e.data).unwrap()
            })
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"], expected["first_delta"]);
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, expected["content"]);
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], expected["last_json_chunk_choices"]);
        assert_eq!(last["usage"], expected["usage"]);
        let finish = &chunks[chunks.len() - 2]["choices"][0]["finish_reason"];
        assert_eq!(finish, &expected["finish_reason"]);
    }

    #[test]
    fn recorded_stream_whole_split_and_bytewise() {
        let v = vector("openai_chat_stream_recorded");
        let raw = v["input"]["raw_sse"].as_str().unwrap().as_bytes();
        let expected = &v["expected"];
        check_recorded(&parse_all(&[raw]), expected);
        for cut in 0..=raw.len() {
            let (a, b) = raw.split_at(cut);
            let events = parse_all(&[a, b]);
            assert_eq!(events.len(), 34, "cut at {cut}");
            check_recorded(&events, expected);
        }
        let bytes: Vec<&[u8]> = raw.chunks(1).collect();
        check_recorded(&parse_all(&bytes), expected);
    }

    #[test]
    fn recorded_stream_with_crlf_and_cr() {
        let v = vector("openai_chat_stream_recorded");
        let raw = v["input"]["raw_sse"].as_str().unwrap();
        for ending in ["\r\n", "\r"] {
            let converted = raw.replace('\n', ending);
            let bytes = converted.as_bytes();
            check_recorded(&parse_all(&[bytes]), &v["expected"]);
            let pieces: Vec<&[u8]> = bytes.chunks(1).collect();
            check_recorded(&parse_all(&pieces), &v["expected"]);
            for cut in 0..=bytes.len() {
                let (a, b) = bytes.split_at(cut);
                assert_eq!(parse_all(&[a, b]).len(), 34, "{ending:?} cut {cut}");
            }
        }
    }

    #[test]
    fn crlf_split_between_cr_and_lf_is_one_line_ending() {
        // If "\r" then "\n" were two endings, the second would be a blank
        // line and dispatch "a" early, and "b" would become a separate event.
        let events = parse_all(&[b"data: a\r", b"\ndata: b\r", b"\n\r\n"]);
        assert_eq!(events, vec![ev(None, "a\nb")]);
        // An empty chunk between the CR and the LF must not break this.
        let events = parse_all(&[b"data: a\r", b"", b"\ndata: b\r\n\r\n"]);
        assert_eq!(events, vec![ev(None, "a\nb")]);
    }

    #[test]
    fn mixed_line_endings() {
        let events = parse_all(&[b"data: 1\rdata: 2\ndata: 3\r\n\rdata: x\n\n"]);
        assert_eq!(events, vec![ev(None, "1\n2\n3"), ev(None, "x")]);
    }

    #[test]
    fn comments_are_ignored() {
        let events = parse_all(&[b": keep-alive\n\n:another\ndata: x\n: mid-event\n\n"]);
        assert_eq!(events, vec![ev(None, "x")]);
    }

    #[test]
    fn bom_is_skipped_only_at_start_even_when_split() {
        let events = parse_all(&[b"\xEF\xBB", b"\xBFdata: x\n\n"]);
        assert_eq!(events, vec![ev(None, "x")]);
        // A BOM later in the stream is part of the field name, so the line is
        // an unknown field and the event has nothing to dispatch.
        let events = parse_all(&[b"data: x\n\n\xEF\xBB\xBFdata: y\n\n"]);
        assert_eq!(events, vec![ev(None, "x")]);
    }

    #[test]
    fn line_without_colon_is_field_with_empty_value() {
        let events = parse_all(&[b"data\n\n"]);
        assert_eq!(events, vec![ev(None, "")]);
        let events = parse_all(&[b"data\ndata\ndata: z\n\n"]);
        assert_eq!(events, vec![ev(None, "\n\nz")]);
        let events = parse_all(&[b"event\ndata: q\n\n"]);
        assert_eq!(events, vec![ev(None, "q")]);
    }

    #[test]
    fn only_one_leading_space_is_stripped() {
        let events = parse_all(&[b"data:  two\n\ndata:none\n\n"]);
        assert_eq!(events, vec![ev(None, " two"), ev(None, "none")]);
    }

    #[test]
    fn unterminated_last_event_is_dropped() {
        let mut p = SseParser::new();
        assert_eq!(p.push(b"data: a\n\ndata: b\n"), vec![ev(None, "a")]);
        assert!(p.finish().is_empty());
        // Same with a missing final newline.
        let events = parse_all(&[b"data: a\n\ndata: [DONE]"]);
        assert_eq!(events, vec![ev(None, "a")]);
    }

    #[test]
    fn blank_lines_alone_dispatch_nothing() {
        assert!(parse_all(&[b"\n\n\r\n\r\r"]).is_empty());
    }

    #[test]
    fn id_persists_and_unknown_fields_are_ignored() {
        let events = parse_all(&[b"id: 7\nretry: 10\nfoo: bar\ndata: a\n\ndata: b\n\n\n"]);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].id.as_deref(), Some("7"));
        assert_eq!(events[1].id.as_deref(), Some("7"));
        assert_eq!(events[1].data, "b");
        // An id containing NUL is ignored.
        let events = parse_all(&[b"id: a\0b\ndata: x\n\n"]);
        assert_eq!(events, vec![ev(None, "x")]);
    }

    #[test]
    fn invalid_utf8_is_lossy_and_split_utf8_is_kept() {
        let events = parse_all(&[b"data: \xFF\xFEok\n\n"]);
        assert_eq!(events, vec![ev(None, "\u{FFFD}\u{FFFD}ok")]);
        let text = "data: 你好🙂\n\n".as_bytes();
        for cut in 0..=text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(parse_all(&[a, b]), vec![ev(None, "你好🙂")], "cut {cut}");
        }
    }

    #[test]
    fn huge_line_is_bounded_and_event_dropped() {
        let mut p = SseParser::with_limit(64);
        let mut out = p.push(b"data: small\n\ndata: ");
        // 10 000 bytes without a newline: far over the limit.
        for _ in 0..100 {
            out.extend(p.push(&[b'x'; 100]));
            assert!(p.line.len() <= 64, "line buffer must stay bounded");
        }
        out.extend(p.push(b"\ndata: tail of the same event\n\ndata: next\n\n"));
        assert_eq!(out, vec![ev(None, "small"), ev(None, "next")]);
        assert_eq!(p.take_dropped(), 1);
        assert_eq!(p.take_dropped(), 0);
    }

    #[test]
    fn many_data_lines_are_bounded_too() {
        let mut p = SseParser::with_limit(64);
        let mut out = Vec::new();
        for _ in 0..100 {
            out.extend(p.push(b"data: 0123456789\n"));
            assert!(p.data.as_ref().map_or(0, String::len) <= 64);
        }
        out.extend(p.push(b"\ndata: ok\n\n"));
        assert_eq!(out, vec![ev(None, "ok")]);
        assert_eq!(p.take_dropped(), 1);
    }

    #[test]
    fn default_limit_is_four_mib() {
        assert_eq!(SseParser::new().max_event_bytes(), 4 * 1024 * 1024);
    }
}
