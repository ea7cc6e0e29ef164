//! Text conversion, both ways, without I/O.
//!
//! - [`to_plain`]: zsxq stores rich text as plain text with self-closing
//!   `<e type=".." .. />` elements whose attributes are URL-encoded (links,
//!   hashtags, mentions, bold text). The daemon wants what a reader sees.
//! - [`render_answer`]: zsxq shows answers as plain text, so an LLM's
//!   markdown loses its markers but keeps its words, links and code.
//!
//! Both are total: any input, however broken, gives some output and never
//! panics.

/// Converts zsxq markup to plain text.
///
/// - `<e type="web" href=".." title=".." />` becomes `title (href)` (or just
///   one of them when the other is empty or they are equal);
/// - `<e type="hashtag" title="%23x%23" />` becomes `#x#`;
/// - `<e type="mention" uid=".." title="%40name" />` becomes `@name`;
/// - any other `<e .. />` becomes its title, or nothing.
///
/// Attribute values are HTML-unescaped (`&amp;`, `&quot;`, ..) and then
/// URL-decoded (`%E4%BD%A0` → `你`; invalid escapes are kept, invalid UTF-8
/// becomes U+FFFD). A tag that does not close is left as it is, and text
/// outside tags is unchanged.
#[must_use]
pub fn to_plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find_tag_start(rest) {
        let (before, tag) = rest.split_at_checked(start).unwrap_or((rest, ""));
        out.push_str(before);
        match parse_tag(tag) {
            Some((attrs, consumed)) => {
                render_tag(&attrs, &mut out);
                rest = tag.get(consumed..).unwrap_or("");
            }
            None => {
                // Broken: keep "<e" literally and look further.
                out.push_str(tag.get(..2).unwrap_or(tag));
                rest = tag.get(2..).unwrap_or("");
            }
        }
    }
    out.push_str(rest);
    out
}

/// Byte offset of the next `<e` followed by whitespace.
fn find_tag_start(s: &str) -> Option<usize> {
    s.match_indices("<e").map(|(i, _)| i).find(|&i| {
        s.as_bytes()
            .get(i.saturating_add(2))
            .is_some_and(u8::is_ascii_whitespace)
    })
}

/// Parses the tag at the start of `s` (which starts with `<e`): its
/// attributes (raw values) and the bytes it spans, or `None` if broken.
fn parse_tag(s: &str) -> Option<(Vec<(&str, &str)>, usize)> {
    let bytes = s.as_bytes();
    let mut i = 2;
    let mut attrs = Vec::new();
    loop {
        while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        match bytes.get(i)? {
            b'/' if bytes.get(i + 1) == Some(&b'>') => return Some((attrs, i + 2)),
            b'>' => {
                i += 1;
                // Tolerate `<e ..></e>`.
                if s.get(i..).is_some_and(|r| r.starts_with("</e>")) {
                    i += 4;
                }
                return Some((attrs, i));
            }
            _ => {}
        }
        let name_start = i;
        while bytes
            .get(i)
            .is_some_and(|b| !b.is_ascii_whitespace() && !matches!(b, b'=' | b'/' | b'>'))
        {
            i += 1;
        }
        if i == name_start {
            return None;
        }
        let name = s.get(name_start..i)?;
        while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        if bytes.get(i) != Some(&b'=') {
            attrs.push((name, ""));
            continue;
        }
        i += 1;
        while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        let value = match *bytes.get(i)? {
            q @ (b'"' | b'\'') => {
                let start = i + 1;
                let len = bytes.get(start..)?.iter().position(|&b| b == q)?;
                i = start + len + 1;
                s.get(start..start + len)?
            }
            _ => {
                let start = i;
                while bytes
                    .get(i)
                    .is_some_and(|b| !b.is_ascii_whitespace() && *b != b'>')
                {
                    i += 1;
                }
                s.get(start..i)?
            }
        };
        attrs.push((name, value));
    }
}

/// Appends what a reader sees of a parsed tag.
fn render_tag(attrs: &[(&str, &str)], out: &mut String) {
    let attr = |key: &str| {
        attrs
            .iter()
            .find(|(n, _)| *n == key)
            .map(|(_, v)| percent_decode(&html_unescape(v)))
            .unwrap_or_default()
    };
    let title = attr("title");
    match attr("type").as_str() {
        "web" => {
            let href = attr("href");
            match (title.is_empty(), href.is_empty()) {
                (false, false) if title != href => {
                    out.push_str(&title);
                    out.push_str(" (");
                    out.push_str(&href);
                    out.push(')');
                }
                (_, false) => out.push_str(&href),
                _ => out.push_str(&title),
            }
        }
        "mention" => {
            if !title.is_empty() && !title.starts_with('@') {
                out.push('@');
            }
            out.push_str(&title);
        }
        _ => out.push_str(&title),
    }
}

/// Undoes the five XML entities (and numeric ones) an attribute may carry.
fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        let (before, from_amp) = rest.split_at_checked(amp).unwrap_or((rest, ""));
        out.push_str(before);
        let entity = from_amp
            .get(1..)
            .and_then(|r| r.find(';').filter(|&n| n <= 10).map(|n| (r, n)))
            .and_then(|(r, n)| {
                let name = r.get(..n)?;
                let c = match name {
                    "amp" => '&',
                    "lt" => '<',
                    "gt" => '>',
                    "quot" => '"',
                    "apos" => '\'',
                    _ => {
                        let num = name.strip_prefix('#')?;
                        let code = match num.strip_prefix(['x', 'X']) {
                            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                            None => num.parse().ok()?,
                        };
                        char::from_u32(code)?
                    }
                };
                Some((c, n + 2))
            });
        match entity {
            Some((c, len)) => {
                out.push(c);
                rest = from_amp.get(len..).unwrap_or("");
            }
            None => {
                out.push('&');
                rest = from_amp.get(1..).unwrap_or("");
            }
        }
    }
    out.push_str(rest);
    out
}

/// URL-decodes `%XX` escapes (`+` stays `+`); invalid escapes are kept and
/// invalid UTF-8 becomes U+FFFD.
pub(crate) fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|&h| hex_val(h)),
                bytes.get(i + 2).and_then(|&l| hex_val(l)),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Turns an LLM's markdown into the plain text zsxq shows.
///
/// - Headings lose their `#`s; `**`, `__` and `~~` disappear; inline code
///   loses its backticks but keeps its content verbatim.
/// - Fenced code blocks (```` ``` ```` or `~~~`, with or without a
///   language) lose their fences and keep their lines verbatim.
/// - `[text](url)` and `![alt](url)` become `text (url)` (just `url` when
///   the text is empty or the URL itself).
/// - List markers `- `, `* `, `+ ` become `• ` (indentation kept);
///   numbered lists stay; horizontal rules become blank lines.
/// - Runs of blank lines outside code collapse to one; leading and trailing
///   blank lines go.
///
/// Everything else, including single `*`/`_`, `#hashtags#` and quotes, is
/// kept.
#[must_use]
pub fn render_answer(markdown: &str) -> String {
    // (line, is code)
    let mut lines: Vec<(String, bool)> = Vec::new();
    let mut fence: Option<(char, usize)> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if let Some((ch, len)) = fence {
            let run = trimmed.len() - trimmed.trim_start_matches(ch).len();
            if run >= len && trimmed.trim_start_matches(ch).trim().is_empty() {
                fence = None;
            } else {
                lines.push((line.to_owned(), true));
            }
            continue;
        }
        if let Some(ch) = ['`', '~']
            .into_iter()
            .find(|&c| trimmed.starts_with([c, c, c]))
        {
            let run = trimmed.len() - trimmed.trim_start_matches(ch).len();
            fence = Some((ch, run));
            continue;
        }
        lines.push((render_line(line), false));
    }
    let mut out = String::with_capacity(markdown.len());
    let mut pending_blank = false;
    for (line, code) in lines {
        if !code && line.trim().is_empty() {
            pending_blank = !out.is_empty();
            continue;
        }
        if pending_blank {
            out.push('\n');
            pending_blank = false;
        }
        out.push_str(&line);
        out.push('\n');
    }
    let kept = out.trim_end().len();
    out.truncate(kept);
    out
}

/// One line outside code blocks.
fn render_line(line: &str) -> String {
    let body = line.trim_start();
    let indent = line.get(..line.len() - body.len()).unwrap_or("");
    let body = body.trim_end();
    // Horizontal rule: three or more of one of - * _ (spaces allowed).
    let marks: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    if marks.len() >= 3
        && ['-', '*', '_']
            .iter()
            .any(|&m| marks.chars().all(|c| c == m))
    {
        return String::new();
    }
    let hashes = body.len() - body.trim_start_matches('#').len();
    if (1..=6).contains(&hashes) {
        let after = body.get(hashes..).unwrap_or("");
        if after.is_empty() || after.starts_with(' ') {
            return format!("{indent}{}", inline(after.trim_start()));
        }
    }
    for marker in ["- ", "* ", "+ "] {
        if let Some(item) = body.strip_prefix(marker) {
            return format!("{indent}• {}", inline(item.trim_start()));
        }
    }
    format!("{indent}{}", inline(body))
}

/// Inline markdown: code spans, links, images, emphasis markers.
fn inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while let Some(rest) = s.get(i..) {
        let Some(c) = rest.chars().next() else { break };
        if c == '`' {
            let ticks = rest.len() - rest.trim_start_matches('`').len();
            let fence = rest.get(..ticks).unwrap_or("");
            let after = rest.get(ticks..).unwrap_or("");
            if let Some(end) = after.find(fence) {
                out.push_str(after.get(..end).unwrap_or(""));
                i += ticks + end + ticks;
            } else {
                out.push_str(fence);
                i += ticks;
            }
            continue;
        }
        if rest.starts_with("**") || rest.starts_with("__") || rest.starts_with("~~") {
            i += 2;
            continue;
        }
        let link_at = if rest.starts_with("![") { 1 } else { 0 };
        if rest.get(link_at..).is_some_and(|r| r.starts_with('['))
            && let Some((text, url, len)) = rest.get(link_at..).and_then(parse_link)
        {
            let text = inline(text);
            if text.is_empty() || text == url {
                out.push_str(url);
            } else {
                out.push_str(&text);
                out.push_str(" (");
                out.push_str(url);
                out.push(')');
            }
            i += link_at + len;
            continue;
        }
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// `[text](url "title")` at the start of `s`: text, url, bytes spanned.
fn parse_link(s: &str) -> Option<(&str, &str, usize)> {
    let close = s.find(']')?;
    let text = s.get(1..close)?;
    let after = s.get(close + 1..)?;
    if !after.starts_with('(') {
        return None;
    }
    let end = after.find(')')?;
    let target = after.get(1..end)?.trim();
    let url = target.split_whitespace().next()?;
    let url = url
        .strip_prefix('<')
        .and_then(|u| u.strip_suffix('>'))
        .unwrap_or(url);
    if url.is_empty() {
        return None;
    }
    Some((text, url, close + 1 + end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_links() {
        assert_eq!(
            to_plain(
                r#"see <e type="web" href="https%3A%2F%2Fexample.com%2Fa%3Fb%3D1" title="%E7%A4%BA%E4%BE%8B" /> ok"#
            ),
            "see 示例 (https://example.com/a?b=1) ok"
        );
        assert_eq!(
            to_plain(r#"<e type="web" href="https%3A%2F%2Fx.cn" title="https%3A%2F%2Fx.cn" />"#),
            "https://x.cn"
        );
        assert_eq!(
            to_plain(r#"<e type="web" href="https%3A%2F%2Fx.cn"/>"#),
            "https://x.cn"
        );
        assert_eq!(to_plain(r#"<e type="web" title="only" />"#), "only");
    }

    #[test]
    fn hashtags_mentions_and_unknown() {
        assert_eq!(
            to_plain(r#"<e type="hashtag" hid="1" title="%23%E6%8F%90%E9%97%AE%23" /> 你好"#),
            "#提问# 你好"
        );
        assert_eq!(
            to_plain(r#"hi <e type="mention" uid="1234" title="%40%E5%B0%8F%E6%98%8E" />!"#),
            "hi @小明!"
        );
        assert_eq!(
            to_plain(r#"<e type="mention" uid="1" title="bob" />"#),
            "@bob"
        );
        assert_eq!(
            to_plain(r#"a<e type="text_bold" title="%E9%87%8D%E7%82%B9" />b"#),
            "a重点b"
        );
        assert_eq!(to_plain(r#"a<e type="image" id="5" />b"#), "ab");
        assert_eq!(
            to_plain(r#"<e type='web' href='x' title="a&amp;b">"#),
            "a&b (x)"
        );
        assert_eq!(
            to_plain(r#"<e type="web" href="x" title="t"></e>."#),
            "t (x)."
        );
        // Plain text, '+' and stray '%' stay.
        assert_eq!(
            to_plain("1+1 = 2, 100% <b> <email>"),
            "1+1 = 2, 100% <b> <email>"
        );
        assert_eq!(to_plain(r#"<e type="hashtag" title="a+b%2" />"#), "a+b%2");
    }

    #[test]
    fn broken_tags_do_not_panic() {
        for s in [
            "<e",
            "<e ",
            "<e type=",
            r#"<e type="web"#,
            r#"<e type="web" href="x""#,
            r#"<e type="web" href="x" /"#,
            "<e =x />",
            "<e 中=\"文\" />",
            "x <e type=\"%E4\" title=\"%E4%B8\" /> y",
            "%%%",
        ] {
            let _ = to_plain(s);
        }
        assert_eq!(
            to_plain(r#"a <e type="web" href="x" b"#),
            r#"a <e type="web" href="x" b"#
        );
        // Invalid UTF-8 after decoding becomes U+FFFD.
        assert_eq!(to_plain(r#"<e type="x" title="%E4%B8" />"#), "\u{fffd}");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn markdown_to_plain() {
        let md = "# Title\n\nSome **bold** and __strong__ and `code_x` text.\n\n\n\n\
                  ## Steps\n- one\n  - nested [docs](https://d.cn/a_b) here\n* two\n1. first\n\n\
                  ```rust\nfn main() {\n\n\n    let x = **y;\n}\n```\n---\n![pic](https://i.cn/p.png)\n\
                  [https://x.cn](https://x.cn) and #话题# keep_snake_case 2*3\n\n\n";
        let want = "Title\n\nSome bold and strong and code_x text.\n\n\
                    Steps\n• one\n  • nested docs (https://d.cn/a_b) here\n• two\n1. first\n\n\
                    fn main() {\n\n\n    let x = **y;\n}\n\npic (https://i.cn/p.png)\n\
                    https://x.cn and #话题# keep_snake_case 2*3";
        assert_eq!(render_answer(md), want);
        assert_eq!(
            render_answer("a ``x ` y`` b [no link] [x](y"),
            "a x ` y b [no link] [x](y"
        );
        assert_eq!(render_answer("unclosed ```\ncode"), "unclosed ```\ncode");
        assert_eq!(render_answer("```\nopen fence\n\n\n"), "open fence");
        assert_eq!(render_answer(""), "");
        assert_eq!(render_answer("#hashtag# stays"), "#hashtag# stays");
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = crate::types::tests::Rng(0x2545_f491_4f6c_dd1d);
        let pieces = [
            "<e",
            " ",
            "type=",
            "\"web\"",
            "'",
            "\"",
            "href=",
            "title=",
            "%",
            "%E4",
            "%B8%AD",
            "/>",
            ">",
            "</e>",
            "&amp;",
            "&#x1F600;",
            "&#99999999;",
            "&",
            ";",
            "中",
            "=",
            "`",
            "```",
            "**",
            "[",
            "](",
            ")",
            "#",
            "- ",
            "\n",
            "~~~",
            "!",
            "é",
        ];
        for _ in 0..5000 {
            let mut s = String::new();
            for _ in 0..rng.below(30) {
                s.push_str(pieces[rng.below(pieces.len())]);
            }
            let _ = to_plain(&s);
            let _ = render_answer(&s);
        }
        for _ in 0..2000 {
            let len = rng.below(100);
            let bytes: Vec<u8> = (0..len).map(|_| (rng.next() & 0xff) as u8).collect();
            let s = String::from_utf8_lossy(&bytes);
            let _ = to_plain(&s);
            let _ = render_answer(&s);
        }
    }
}
