//! The content filter from the outside: dodges, scopes, directions,
//! streaming, a large word list, and never panicking on any text.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use chatrelay_rules::{ApplyTo, ContentFilter, Direction, FilterRuleConfig, Hit};

fn rule(id: &str, words: &[&str]) -> FilterRuleConfig {
    FilterRuleConfig {
        words: words.iter().map(|w| (*w).to_owned()).collect(),
        ..FilterRuleConfig::new(id)
    }
}

fn build(rules: &[FilterRuleConfig]) -> ContentFilter {
    ContentFilter::build(rules, Path::new(".")).unwrap()
}

fn hits(f: &ContentFilter, text: &str) -> bool {
    f.check(text, Direction::Input, "web").is_some()
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

#[test]
fn normalisation_defeats_dodges() {
    let f = build(&[rule("r", &["敏感词", "abc", "Ｆｏｏ"])]);
    for text in [
        "敏感词",
        "敏 感 词",
        "敏，感词",
        "敏、感。词！",
        "“敏”“感”“词”",
        "敏\u{200B}感\u{200C}词",
        "敏\u{200D}感\u{FEFF}词",
        "敏\u{3000}感\u{3000}词",
        "ＡＢＣ",
        "ABC",
        "a b c",
        "A\u{200B}B\u{200B}C",
        "foo",
        "FOO",
        "f.o.o",
    ] {
        assert!(hits(&f, text), "{text:?} should hit");
    }
    for text in ["敏感", "感词", "ab d c", "a-b", "fo", "敏感的词"] {
        assert!(!hits(&f, text), "{text:?} should not hit");
    }
}

#[test]
fn scopes_and_directions() {
    let mut tg = rule("tg", &["telegram-only"]);
    tg.scopes = vec!["telegram".into()];
    let mut bot = rule("bot", &["bot-only"]);
    bot.scopes = vec!["telegram:42".into(), "web".into()];
    let mut input = rule("in", &["question-word"]);
    input.apply_to = ApplyTo::Input;
    let mut output = rule("out", &["answer-word"]);
    output.apply_to = ApplyTo::Output;
    let f = build(&[tg, bot, input, output]);

    let check = |text: &str, dir, scope: &str| f.check(text, dir, scope).map(|h| h.rule);
    assert_eq!(
        check("telegramonly", Direction::Input, "telegram").as_deref(),
        Some("tg")
    );
    assert_eq!(
        check("telegramonly", Direction::Input, "telegram:7").as_deref(),
        Some("tg")
    );
    assert_eq!(check("telegramonly", Direction::Input, "web"), None);
    assert_eq!(
        check("botonly", Direction::Input, "telegram:42").as_deref(),
        Some("bot")
    );
    assert_eq!(
        check("botonly", Direction::Input, "web").as_deref(),
        Some("bot")
    );
    assert_eq!(check("botonly", Direction::Input, "telegram:43"), None);
    assert_eq!(check("botonly", Direction::Input, "telegram"), None);

    assert_eq!(
        check("question word", Direction::Input, "v1").as_deref(),
        Some("in")
    );
    assert_eq!(check("question word", Direction::Output, "v1"), None);
    assert_eq!(
        check("answer word", Direction::Output, "v1").as_deref(),
        Some("out")
    );
    assert_eq!(check("answer word", Direction::Input, "v1"), None);

    // Streams apply output rules only.
    let f = Arc::new(f);
    let mut s = f.stream("v1");
    assert!(s.push("question word").is_none());
    assert_eq!(
        s.push(" answer word").map(|h| h.rule).as_deref(),
        Some("out")
    );
}

#[test]
fn stream_catches_words_split_anywhere() {
    let f = Arc::new(build(&[rule("r", &["敏感词汇", "secret"])]));
    let text = "这是一个包含敏，感 词\u{200B}汇的回答，还有 S-E-C-R-E-T 内容。";
    let chars: Vec<&str> = text
        .char_indices()
        .map(|(i, c)| &text[i..i + c.len_utf8()])
        .collect();
    // One char per piece.
    let mut s = f.stream("web");
    let found: Vec<Hit> = chars.iter().filter_map(|p| s.push(p)).collect();
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].word, "敏感词汇");
    // Streamed: the right context is what had arrived when the word completed.
    assert_eq!(found[0].excerpt, "这是一个包含敏，感 词\u{200B}汇");
    assert_eq!(found[1].word, "secret");
    assert!(found[1].excerpt.contains("S-E-C-R-E-T"));

    // Every split point of the text into two and three pieces. A push
    // returns only the first hit it completes, so a piece holding the ends
    // of both words reports one.
    let first_end = text.find('汇').unwrap() + '汇'.len_utf8();
    let second_end = text.find("T ").unwrap() + 1;
    let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    for &a in &bounds {
        for &b in bounds.iter().filter(|&&b| b >= a).step_by(3) {
            let mut s = f.stream("web");
            let found: Vec<Hit> = [&text[..a], &text[a..b], &text[b..]]
                .iter()
                .filter_map(|p| s.push(p))
                .collect();
            let apart = [a, b]
                .iter()
                .any(|&cut| first_end <= cut && cut < second_end);
            assert_eq!(found.len(), if apart { 2 } else { 1 }, "split at {a}, {b}");
            assert_eq!(found[0].word, "敏感词汇");
        }
    }
}

#[test]
fn ten_thousand_words_from_a_file() {
    let mut rng = Rng(0x5EED);
    let mut words = HashSet::new();
    // Words from U+4E00..U+5E00; the misses below use U+6000.. only.
    while words.len() < 10_000 {
        let len = 2 + rng.below(4);
        let w: String = (0..len)
            .map(|_| char::from_u32(0x4E00 + rng.below(0x1000) as u32).unwrap())
            .collect();
        words.insert(w);
    }
    let mut words: Vec<String> = words.into_iter().collect();
    words.sort();
    for i in 0..500 {
        // Some latin words too.
        words.push(format!("latin{i}word"));
    }

    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "# generated word list").unwrap();
    for (i, w) in words.iter().enumerate() {
        if i % 1000 == 0 {
            writeln!(file, "\n# section {i}\r").unwrap();
        }
        writeln!(file, "{w}").unwrap();
    }
    file.flush().unwrap();

    let mut cfg = FilterRuleConfig::new("big");
    cfg.word_files = vec![file.path().file_name().unwrap().into()];
    let f = ContentFilter::build(&[cfg], file.path().parent().unwrap()).unwrap();
    assert_eq!(f.word_count(), words.len());

    let filler = |rng: &mut Rng, n: usize| -> String {
        (0..n)
            .map(|_| char::from_u32(0x6000 + rng.below(0x1000) as u32).unwrap())
            .collect()
    };
    for _ in 0..300 {
        let text = filler(&mut rng, 200);
        assert!(f.check(&text, Direction::Output, "web").is_none());
    }
    for _ in 0..300 {
        let w = rng.pick(&words).clone();
        let text = format!("{}{}{}", filler(&mut rng, 50), w, filler(&mut rng, 50));
        let hit = f.check(&text, Direction::Output, "web").unwrap();
        assert!(text.contains(&hit.word), "{text} / {hit:?}");
        assert!(hit.excerpt.contains(&hit.word));
    }
}

/// A random string mixing everything a filter could trip on.
fn random_text(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "a",
        "B",
        "z",
        "0",
        " ",
        ".",
        ",",
        "\n",
        "\t",
        "\0",
        "#",
        "敏",
        "感",
        "词",
        "汇",
        "你",
        "好",
        "，",
        "。",
        "、",
        "“",
        "”",
        "【",
        "】",
        "…",
        "😀",
        "👨\u{200D}👩\u{200D}👧",
        "🇨🇳",
        "\u{200B}",
        "\u{200D}",
        "\u{FEFF}",
        "\u{3000}",
        "Ａ",
        "ｂ",
        "！",
        "～",
        "e\u{301}",
        "\u{301}",
        "\u{20DD}",
        "İ",
        "ẞ",
        "Σ",
        "ς",
        "ǅ",
        "ﬃ",
        "\u{FE0F}",
        "\u{10FFFF}",
        "\u{FFFD}",
        "secret",
        "SeCrEt",
        "s e c r e t",
        "ab",
        "abc",
    ];
    let len = rng.below(40);
    let mut s = String::new();
    for _ in 0..len {
        if rng.below(8) == 0 {
            // Any scalar value at all.
            let c = loop {
                if let Some(c) = char::from_u32(rng.below(0x11_0000) as u32) {
                    break c;
                }
            };
            s.push(c);
        } else {
            let piece: &&str = rng.pick(PIECES);
            s.push_str(piece);
        }
    }
    s
}

#[test]
fn never_panics_and_stream_agrees_with_check() {
    let mut out_only = rule("out", &["secret", "敏感词", "e\u{301}x", "İi"]);
    out_only.apply_to = ApplyTo::Output;
    let mut scoped = rule("scoped", &["abc", "感词汇"]);
    scoped.scopes = vec!["telegram".into()];
    let mut input = rule("in", &["ab", "你好"]);
    input.apply_to = ApplyTo::Input;
    let long: String = "敏".repeat(64);
    let f = Arc::new(build(&[out_only, scoped, input, rule("long", &[&long])]));

    let mut rng = Rng(0xDEC0_DED5);
    let (mut hit_count, mut miss_count) = (0, 0);
    for _ in 0..20_000 {
        let text = random_text(&mut rng);
        let scope = *rng.pick(&["web", "telegram:1", "telegram"]);
        let _ = f.check(&text, Direction::Input, scope);
        let whole = f.check(&text, Direction::Output, scope);
        if whole.is_some() {
            hit_count += 1;
        } else {
            miss_count += 1;
        }
        if let Some(hit) = &whole
            && !hit.excerpt.contains('…')
        {
            let shown: String = text
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            assert!(shown.contains(&hit.excerpt), "{text:?} {hit:?}");
        }

        // The same text in random pieces (at char boundaries).
        let mut s = f.stream(scope);
        let mut streamed = false;
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let mut cut = 1 + rng.below(rest.len().min(12));
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            let (piece, tail) = rest.split_at(cut);
            streamed |= s.push(piece).is_some();
            rest = tail;
        }
        assert_eq!(whole.is_some(), streamed, "{text:?} in {scope}");
    }
    // The generator must exercise both outcomes to mean anything.
    assert!(
        hit_count > 2000 && miss_count > 2000,
        "{hit_count} hits, {miss_count} misses"
    );
}
