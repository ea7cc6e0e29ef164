//! Splitting long answers into messages a platform accepts.
//!
//! Platforms cap one message in different units (WeChat: 2048 UTF-8 bytes,
//! Telegram: 4096 UTF-16 code units), so [`split_message`] measures in a
//! chosen [`Unit`] and cuts at the most natural boundary that fits: a blank
//! line, a newline, the end of a sentence, a space, and only as a last resort
//! between two characters. Cuts always fall on `char` boundaries, so no UTF-8
//! sequence or UTF-16 surrogate pair is ever broken, and the parts
//! concatenate back to the original text exactly. Pure code, std only.

/// The unit in which a message length is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// UTF-8 bytes (WeChat, WeCom).
    Bytes,
    /// UTF-16 code units (Telegram): 1 per BMP character, 2 per emoji and
    /// other astral characters.
    Utf16,
    /// Unicode scalar values (`char`s).
    Chars,
}

impl Unit {
    /// The length of one character in this unit.
    fn len_of(self, c: char) -> usize {
        match self {
            Unit::Bytes => c.len_utf8(),
            Unit::Utf16 => c.len_utf16(),
            Unit::Chars => 1,
        }
    }

    /// The length of a string in this unit.
    fn len_of_str(self, s: &str) -> usize {
        match self {
            Unit::Bytes => s.len(),
            Unit::Utf16 => s.chars().map(char::len_utf16).sum(),
            Unit::Chars => s.chars().count(),
        }
    }
}

/// Kinds of cut points, best first. The discriminant indexes
/// `Candidates::last`.
#[derive(Clone, Copy)]
enum Break {
    /// After a blank line (`\n\n` or `\n\r\n`): between paragraphs.
    Paragraph = 0,
    /// After a newline.
    Line = 1,
    /// After sentence punctuation: `。！？` anywhere, `.!?` followed by
    /// whitespace (the cut goes after that whitespace).
    Sentence = 2,
    /// After whitespace.
    Space = 3,
}

const BREAK_KINDS: usize = 4;

/// The latest cut point of each kind seen in the current window, as
/// (byte offset into the text, length of the part in the unit).
struct Candidates {
    last: [Option<(usize, usize)>; BREAK_KINDS],
}

impl Candidates {
    fn record(&mut self, kind: Break, at: usize, len: usize) {
        if let Some(slot) = self.last.get_mut(kind as usize) {
            *slot = Some((at, len));
        }
    }

    /// The best cut: the highest-priority kind whose latest cut keeps at
    /// least half the window (so one early blank line doesn't leave a tiny
    /// part while a sentence end sits near the limit); failing that, the
    /// highest-priority cut anywhere.
    fn best(&self, max: usize) -> Option<usize> {
        let full_enough = self
            .last
            .iter()
            .flatten()
            .find(|&&(_, len)| len.saturating_mul(2) >= max);
        full_enough
            .or_else(|| self.last.iter().flatten().next())
            .map(|&(at, _)| at)
    }
}

fn is_cjk_sentence_end(c: char) -> bool {
    matches!(c, '。' | '！' | '？')
}

fn is_ascii_sentence_end(c: char) -> bool {
    matches!(c, '.' | '!' | '?')
}

/// Splits `text` into parts no longer than `max` in `unit`.
///
/// - Each part is cut at the best boundary available: blank line, newline,
///   sentence end, space, then any character boundary. Separators stay at the
///   end of the part before the cut.
/// - Parts are never empty, and concatenated they equal `text` exactly.
/// - A character longer than `max` (e.g. an emoji with `max = 1` byte) still
///   forms a part of its own, so the function always terminates; `max = 0`
///   is treated as 1.
/// - Empty text gives no parts.
#[must_use]
pub fn split_message(text: &str, max: usize, unit: Unit) -> Vec<String> {
    let max = max.max(1);
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if unit.len_of_str(rest) <= max {
            parts.push(rest.to_owned());
            break;
        }
        let cut = find_cut(rest, max, unit);
        // `find_cut` returns a char boundary in 1..=rest.len(); the fallback
        // takes everything, which also guarantees progress.
        let (head, tail) = rest.split_at_checked(cut).unwrap_or((rest, ""));
        parts.push(head.to_owned());
        rest = tail;
    }
    parts
}

/// The byte offset at which to end the next part of `s` (which is longer
/// than `max`). Always a char boundary greater than zero.
fn find_cut(s: &str, max: usize, unit: Unit) -> usize {
    let mut cands = Candidates {
        last: [None; BREAK_KINDS],
    };
    let mut len = 0usize;
    // End of the longest prefix that fits (at least one char).
    let mut hard = 0usize;
    let mut prev: Option<char> = None;
    let mut prev2: Option<char> = None;

    for (i, c) in s.char_indices() {
        let c_len = unit.len_of(c);
        if hard > 0 && len.saturating_add(c_len) > max {
            break;
        }
        len = len.saturating_add(c_len);
        let end = i + c.len_utf8();
        hard = end;

        if c == '\n' {
            let blank = prev == Some('\n') || (prev == Some('\r') && prev2 == Some('\n'));
            if blank {
                cands.record(Break::Paragraph, end, len);
            }
            cands.record(Break::Line, end, len);
        } else if is_cjk_sentence_end(c) {
            cands.record(Break::Sentence, end, len);
        } else if c.is_whitespace() {
            if prev.is_some_and(is_ascii_sentence_end) {
                cands.record(Break::Sentence, end, len);
            }
            cands.record(Break::Space, end, len);
        }
        prev2 = prev;
        prev = Some(c);
        if len >= max {
            break;
        }
    }

    // A cut at the very end of the window equals the hard cut, and a cut at
    // 0 cannot happen (every recorded offset is after a char).
    cands.best(max).unwrap_or(hard).max(1).min(s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The invariants every split must keep.
    fn check(text: &str, max: usize, unit: Unit) -> Vec<String> {
        let parts = split_message(text, max, unit);
        assert_eq!(parts.concat(), text, "parts must concatenate to the text");
        for p in &parts {
            assert!(!p.is_empty(), "empty part");
            let n = unit.len_of_str(p);
            assert!(
                n <= max.max(1) || p.chars().count() == 1,
                "part of {n} {unit:?} over {max}: {p:?}"
            );
        }
        parts
    }

    #[test]
    fn empty_and_short_texts() {
        assert!(split_message("", 10, Unit::Bytes).is_empty());
        assert_eq!(split_message("hello", 10, Unit::Bytes), vec!["hello"]);
        assert_eq!(split_message("hello", 5, Unit::Bytes), vec!["hello"]);
    }

    #[test]
    fn ascii_prefers_spaces_over_hard_cuts() {
        let parts = check("the quick brown fox jumps", 10, Unit::Bytes);
        assert_eq!(parts, vec!["the quick ", "brown fox ", "jumps"]);
        // No space at all: hard cuts.
        let parts = check("abcdefghijkl", 5, Unit::Chars);
        assert_eq!(parts, vec!["abcde", "fghij", "kl"]);
    }

    #[test]
    fn sentences_beat_spaces() {
        let parts = check("Aaaa bbbbbb. Cc dd ee ff gg", 18, Unit::Bytes);
        assert_eq!(parts[0], "Aaaa bbbbbb. ");
        // A period inside a word (3.14, example.com) is not a sentence end.
        let parts = check("pi is 3.14159 and e is 2.71828", 16, Unit::Bytes);
        assert_eq!(parts[0], "pi is 3.14159 ");
        // A sentence end in the first half of the window loses to a later
        // space, so parts stay reasonably full.
        let parts = check("One two. Three four five six", 20, Unit::Bytes);
        assert_eq!(parts[0], "One two. Three four ");
    }

    #[test]
    fn paragraphs_beat_lines_and_sentences() {
        let text = "First paragraph line one.\nline two.\n\nSecond paragraph. More text here.";
        let parts = check(text, 50, Unit::Bytes);
        assert_eq!(parts[0], "First paragraph line one.\nline two.\n\n");
        // \r\n blank lines too.
        let text = "Para one here.\r\n\r\nPara two is right here.";
        let parts = check(text, 30, Unit::Bytes);
        assert_eq!(parts[0], "Para one here.\r\n\r\n");
        // Newline beats sentence ends.
        let parts = check("Line one. Still one.\nLine two. And more.", 30, Unit::Bytes);
        assert_eq!(parts[0], "Line one. Still one.\n");
    }

    #[test]
    fn an_early_blank_line_does_not_leave_a_tiny_part() {
        // The only paragraph break is in the first tenth of the window; a
        // sentence end near the limit is preferred.
        let text = format!("Hi\n\n{} end. {}", "word ".repeat(15), "tail ".repeat(20));
        let parts = check(&text, 100, Unit::Bytes);
        assert!(parts[0].len() >= 50, "{parts:?}");
        // With nothing else in the window, the early break is still used.
        let text = format!("Hi\n\n{}", "x".repeat(200));
        let parts = check(&text, 100, Unit::Bytes);
        assert_eq!(parts[0], "Hi\n\n");
    }

    #[test]
    fn cjk_near_the_2048_byte_limit() {
        // 700 three-byte chars with no punctuation: 2100 bytes.
        let text = "汉".repeat(700);
        let parts = check(&text, 2048, Unit::Bytes);
        assert_eq!(parts.len(), 2);
        // 2048 / 3 = 682 chars = 2046 bytes; never a split char.
        assert_eq!(parts[0].len(), 2046);
        assert_eq!(parts[1].chars().count(), 18);

        // CJK sentence ends are cut points without a following space.
        let sentence = format!("{}。", "字".repeat(99)); // 300 bytes
        let text = sentence.repeat(8); // 2400 bytes
        let parts = check(&text, 2048, Unit::Bytes);
        assert_eq!(parts[0], sentence.repeat(6));
        assert!(parts[0].ends_with('。'));
        for p in [
            format!("{}！{}", "好".repeat(600), "好".repeat(200)),
            format!("{}？{}", "好".repeat(600), "好".repeat(200)),
        ] {
            let parts = check(&p, 2048, Unit::Bytes);
            assert_eq!(parts[0].chars().count(), 601);
        }
    }

    #[test]
    fn emoji_is_never_split() {
        // 😀 is 4 UTF-8 bytes and 2 UTF-16 units (a surrogate pair).
        let text = "😀".repeat(5);
        let parts = check(&text, 6, Unit::Bytes);
        assert!(parts.iter().all(|p| p == "😀"));
        let parts = check(&text, 3, Unit::Utf16);
        assert!(parts.iter().all(|p| p == "😀"), "{parts:?}");
        let parts = check(&text, 4, Unit::Utf16);
        assert!(parts.iter().all(|p| p == "😀😀" || p == "😀"));
        assert_eq!(parts.len(), 3);
        let parts = check(&text, 2, Unit::Chars);
        assert_eq!(parts, vec!["😀😀", "😀😀", "😀"]);
        // Mixed with ASCII at an odd boundary.
        let parts = check("a😀b😀c", 3, Unit::Utf16);
        assert_eq!(parts, vec!["a😀", "b😀", "c"]);
    }

    #[test]
    fn max_smaller_than_a_char_yields_one_char_per_part() {
        let parts = check("a汉😀", 1, Unit::Bytes);
        assert_eq!(parts, vec!["a", "汉", "😀"]);
        let parts = check("😀😀", 1, Unit::Utf16);
        assert_eq!(parts, vec!["😀", "😀"]);
        let parts = check("ab", 0, Unit::Chars);
        assert_eq!(parts, vec!["a", "b"]);
    }

    #[test]
    fn telegram_utf16_limit() {
        let text = format!("{}\n{}", "😀".repeat(2000), "b".repeat(200)); // 4000 + 1 + 200 units
        let parts = check(&text, 4096, Unit::Utf16);
        assert_eq!(parts.len(), 2);
        assert!(parts[0].ends_with('\n'));
    }

    /// xorshift64: a tiny deterministic generator for the property test.
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
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn concatenation_property_over_generated_texts() {
        const PIECES: &[&str] = &[
            "a", "b", "z", " ", " ", "\n", "\n\n", "\r\n", ".", ". ", "!", "? ", "。", "！", "？",
            "汉", "字", "é", "😀", "👍🏽", "\t", "word", "\u{3000}", "𝒳",
        ];
        let mut rng = XorShift(0xDEAD_BEEF_CAFE_F00D);
        for _ in 0..3000 {
            let n = rng.below(80);
            let text: String = (0..n).map(|_| PIECES[rng.below(PIECES.len())]).collect();
            let max = 1 + rng.below(40);
            let unit = [Unit::Bytes, Unit::Utf16, Unit::Chars][rng.below(3)];
            let parts = check(&text, max, unit);
            if text.is_empty() {
                assert!(parts.is_empty());
            }
            // A split is only made when needed.
            if unit.len_of_str(&text) <= max && !text.is_empty() {
                assert_eq!(parts.len(), 1);
            }
        }
    }
}
