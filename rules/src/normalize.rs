//! The text normalisation shared by configured words and checked text, and
//! the excerpt of an original text around a hit.
//!
//! Words and text must go through exactly the same function, char by char
//! and without context, so that a text split into pieces normalises to the
//! concatenation of its pieces' normal forms (the stream check relies on
//! it).

/// First full-width ASCII form (`！`).
const FULLWIDTH_FIRST: u32 = 0xFF01;
/// Last full-width ASCII form (`～`).
const FULLWIDTH_LAST: u32 = 0xFF5E;
/// Distance from a full-width ASCII form to its ASCII character.
const FULLWIDTH_OFFSET: u32 = 0xFEE0;

/// Characters of context kept on each side of a hit in an excerpt.
pub(crate) const EXCERPT_CONTEXT_CHARS: usize = 10;
/// Characters of the hit itself kept in an excerpt, so an excerpt stays
/// short (about 80 characters) even when a word was padded with many
/// dodge characters.
const EXCERPT_MATCH_CHARS: usize = 60;

/// Normalises `text` the way the content filter sees it.
///
/// Lower-cases (per char, [`char::to_lowercase`]), folds full-width ASCII
/// forms (`Ａ`, `！`) to ASCII and the ideographic space to a space, then
/// drops the characters people insert to dodge a filter: whitespace,
/// control characters, ASCII punctuation and symbols, CJK and general
/// punctuation, and invisible characters (zero-width space and joiners,
/// BOM, soft hyphen, variation selectors). Combining marks are kept.
///
/// ```
/// assert_eq!(chatrelay_rules::normalize("敏 感，词 ＡＢＣ!"), "敏感词abc");
/// ```
#[must_use]
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    normalize_each(text, 0, |c, _, _| out.push(c));
    out
}

/// Calls `emit(char, original start, original end)` for each normalised
/// char of `text`, with byte offsets into `text` shifted by `base`. One
/// original char may give several normalised chars (lower-casing `İ`
/// gives two), which then share its range.
#[inline]
pub(crate) fn normalize_each(text: &str, base: usize, mut emit: impl FnMut(char, usize, usize)) {
    for (i, c) in text.char_indices() {
        let start = base + i;
        let end = start + c.len_utf8();
        if c.is_ascii() {
            // The common case, kept branch-light: letters and digits stay,
            // everything else ASCII (spaces, punctuation, controls) is a
            // separator.
            if c.is_ascii_alphanumeric() {
                emit(c.to_ascii_lowercase(), start, end);
            }
            continue;
        }
        let c = fold_width(c);
        if is_skipped(c) {
            continue;
        }
        for lower in c.to_lowercase() {
            emit(lower, start, end);
        }
    }
}

/// Maps a full-width ASCII form to ASCII and the ideographic space to a
/// space; any other char is returned unchanged.
#[inline]
pub(crate) fn fold_width(c: char) -> char {
    let u = u32::from(c);
    if (FULLWIDTH_FIRST..=FULLWIDTH_LAST).contains(&u) {
        char::from_u32(u - FULLWIDTH_OFFSET).unwrap_or(c)
    } else if c == '\u{3000}' {
        ' '
    } else {
        c
    }
}

/// Whether `c` is a character that carries no meaning for the filter and is
/// typically inserted between the characters of a word to dodge it.
#[inline]
fn is_skipped(c: char) -> bool {
    if c.is_ascii() {
        return !c.is_ascii_alphanumeric();
    }
    // Latin-1 punctuation and symbols (¡ § « ° · » ¿ and the soft hyphen),
    // but not the letters and digits among them (ª µ º ¹).
    if ('\u{A1}'..='\u{BF}').contains(&c) {
        return !c.is_alphanumeric();
    }
    c.is_whitespace()
        || c.is_control()
        || matches!(c,
            '\u{D7}' | '\u{F7}'
            // Zero-width space, non-joiner, joiner, LRM, RLM; dashes,
            // quotes, bullets, ellipsis (U+2010..U+2027); bidi controls;
            // per-mille, primes, guillemets, reference mark, ... (to U+205E);
            // word joiner and invisible operators.
            | '\u{200B}'..='\u{2027}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2030}'..='\u{205E}'
            | '\u{2060}'..='\u{206F}'
            // Mongolian vowel separator (historically zero-width).
            | '\u{180E}'
            // CJK symbols and punctuation: 、。〃 〈〉《》「」『』【】 〔〕 ...
            | '\u{3001}'..='\u{3003}'
            | '\u{3008}'..='\u{3011}'
            | '\u{3014}'..='\u{301F}'
            | '\u{3030}'
            // Katakana middle dot.
            | '\u{30FB}'
            // Variation selectors, vertical forms, CJK compatibility and
            // small form variants (︰ ﹏ ﹐ ﹑ ...).
            | '\u{FE00}'..='\u{FE6F}'
            // Byte order mark / zero-width no-break space.
            | '\u{FEFF}'
            // Half-width CJK punctuation: ｡ ｢ ｣ ､ ･
            | '\u{FF61}'..='\u{FF65}'
        )
}

/// The original text around `start..end` (byte offsets into `text`): up to
/// [`EXCERPT_CONTEXT_CHARS`] chars either side and at most
/// [`EXCERPT_MATCH_CHARS`] chars of the hit itself (then `…`). Control
/// characters (line breaks) become spaces so the excerpt fits a log line.
///
/// Offsets that are out of range or not at char boundaries are moved to the
/// previous boundary, so this never panics.
pub(crate) fn excerpt(text: &str, start: usize, end: usize) -> String {
    let end = floor_boundary(text, end);
    let start = floor_boundary(text, start.min(end));
    let before = text.get(..start).unwrap_or("");
    let hit = text.get(start..end).unwrap_or("");
    let after = text.get(end..).unwrap_or("");

    let mut left: Vec<char> = before.chars().rev().take(EXCERPT_CONTEXT_CHARS).collect();
    left.reverse();
    let mut out = String::with_capacity(hit.len().min(EXCERPT_MATCH_CHARS * 4) + 96);
    let mut push = |c: char| out.push(if c.is_control() { ' ' } else { c });
    left.into_iter().for_each(&mut push);
    let mut hit_chars = hit.chars();
    hit_chars
        .by_ref()
        .take(EXCERPT_MATCH_CHARS)
        .for_each(&mut push);
    if hit_chars.next().is_some() {
        push('…');
    }
    after
        .chars()
        .take(EXCERPT_CONTEXT_CHARS)
        .for_each(&mut push);
    out
}

/// The largest char boundary of `text` that is `<= at`.
pub(crate) fn floor_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while at > 0 && !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dodge_characters_are_dropped() {
        assert_eq!(normalize("敏 感 词"), "敏感词");
        assert_eq!(normalize("敏，感词"), "敏感词");
        assert_eq!(normalize("敏\u{200B}感\u{200D}词\u{FEFF}"), "敏感词");
        assert_eq!(normalize("【敏】·感—词…～"), "敏感词");
        assert_eq!(normalize("敏\u{3000}感\t词\n"), "敏感词");
        assert_eq!(normalize("敏\u{FE0F}感\u{AD}词"), "敏感词");
    }

    #[test]
    fn width_and_case_are_folded() {
        assert_eq!(normalize("ＡＢＣ"), "abc");
        assert_eq!(normalize("ＡbＣ１２３"), "abc123");
        assert_eq!(normalize("HeLLo"), "hello");
        assert_eq!(normalize("ΣΑΣ"), "σασ");
        // One char lower-cases to two; combining marks stay.
        assert_eq!(normalize("İ").chars().count(), 2);
        assert_eq!(normalize("e\u{301}"), "e\u{301}");
    }

    #[test]
    fn offsets_point_into_the_original() {
        let text = "a 敏，Ｂ";
        let mut seen = Vec::new();
        normalize_each(text, 100, |c, s, e| seen.push((c, s, e)));
        assert_eq!(
            seen,
            vec![('a', 100, 101), ('敏', 102, 105), ('b', 108, 111)]
        );
    }

    #[test]
    fn excerpt_keeps_context_at_char_boundaries() {
        let text = "一二三四五六七八九十甲乙丙丁敏感词子丑寅卯辰巳午未申酉戌亥";
        let start = text.find("敏").unwrap();
        let end = start + "敏感词".len();
        assert_eq!(
            excerpt(text, start, end),
            "五六七八九十甲乙丙丁敏感词子丑寅卯辰巳午未申酉"
        );
        // Offsets inside a char or past the end do not panic.
        assert_eq!(
            excerpt(text, start + 1, end + 1),
            "五六七八九十甲乙丙丁敏感词子丑寅卯辰巳午未申酉"
        );
        assert_eq!(excerpt(text, 0, 10_000), text);
        let long = "字".repeat(100);
        assert_eq!(
            excerpt(&long, 0, long.len()),
            format!("{}…", "字".repeat(60))
        );
        assert_eq!(excerpt("", 5, 3), "");
        assert_eq!(excerpt("a\nb", 0, 3), "a b");
    }
}
