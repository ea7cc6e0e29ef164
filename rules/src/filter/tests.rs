//! The filter's unit tests.

use super::*;

fn rule(id: &str, words: &[&str]) -> FilterRuleConfig {
    FilterRuleConfig {
        words: words.iter().map(|w| (*w).to_owned()).collect(),
        ..FilterRuleConfig::new(id)
    }
}

fn filter(rules: &[FilterRuleConfig]) -> ContentFilter {
    ContentFilter::build(rules, Path::new(".")).unwrap()
}

#[test]
fn dodges_still_hit() {
    let f = filter(&[rule("r", &["敏感词", "abc"])]);
    for text in [
        "这是敏感词",
        "敏 感 词",
        "敏，感词",
        "敏\u{200B}感\u{200D}词",
        "ＡＢＣ",
        "xx A.B-C yy",
        "ABC",
    ] {
        let hit = f.check(text, Direction::Input, "web");
        assert!(hit.is_some(), "{text:?} should hit");
    }
    assert!(f.check("敏感的词", Direction::Input, "web").is_none());
    assert!(f.check("ab", Direction::Input, "web").is_none());
}

#[test]
fn hit_reports_rule_word_and_original_excerpt() {
    let f = filter(&[rule("politics", &["ＢＡＤ Word"])]);
    let hit = f
        .check(
            "Some text with a b-a-d w.o.r.d in it",
            Direction::Output,
            "v1",
        )
        .unwrap();
    assert_eq!(hit.rule, "politics");
    assert_eq!(hit.word, "ＢＡＤ Word");
    assert_eq!(hit.refusal, DEFAULT_REFUSAL);
    assert_eq!(hit.excerpt, "xt with a b-a-d w.o.r.d in it");
}

#[test]
fn shorter_word_of_applying_rule_under_a_longer_one() {
    // "abc" belongs to an input-only rule and shadows "ab" in a
    // leftmost-longest search; output checks must still find "ab", and
    // "bcd" starting inside the shadowing match.
    let mut long = rule("long", &["abc"]);
    long.apply_to = ApplyTo::Input;
    let short = rule("short", &["ab"]);
    let mut inner = rule("inner", &["bcd"]);
    inner.apply_to = ApplyTo::Output;
    let f = filter(&[long, short]);
    assert_eq!(
        f.check("xabcx", Direction::Input, "web").unwrap().rule,
        "long"
    );
    assert_eq!(
        f.check("xabcx", Direction::Output, "web").unwrap().rule,
        "short"
    );

    let mut long = rule("long", &["abc"]);
    long.apply_to = ApplyTo::Input;
    let f = filter(&[long, inner]);
    assert_eq!(
        f.check("abcd", Direction::Output, "web").unwrap().rule,
        "inner"
    );
    assert_eq!(
        f.check("abcd", Direction::Input, "web").unwrap().rule,
        "long"
    );
}

#[test]
fn same_word_in_two_rules() {
    let mut a = rule("a", &["词"]);
    a.scopes = vec!["telegram".into()];
    let b = rule("b", &["词", "词"]);
    let f = filter(&[a, b]);
    assert_eq!(f.word_count(), 1);
    assert_eq!(
        f.check("词", Direction::Input, "telegram:1").unwrap().rule,
        "a"
    );
    assert_eq!(f.check("词", Direction::Input, "web").unwrap().rule, "b");
}

#[test]
fn stream_catches_split_words_once() {
    let f = Arc::new(filter(&[rule("r", &["敏感词"])]));
    let mut s = f.stream("web");
    assert!(s.push("前面敏").is_none());
    assert!(s.push("感").is_none());
    let hit = s.push("词后面").unwrap();
    assert_eq!(hit.excerpt, "前面敏感词后面");
    assert!(s.push("还有").is_none());
    assert!(s.push("敏感词").is_some());
    assert_eq!(s.len(), "前面敏感词后面还有敏感词".len());
}

#[test]
fn stream_tail_is_bounded() {
    let f = Arc::new(filter(&[rule("r", &["敏感词"])]));
    let mut s = StreamCheck::new(Arc::clone(&f), "web");
    for _ in 0..10_000 {
        assert!(s.push("一段正常的回答。").is_none());
    }
    assert!(s.tail.len() <= 2 * STREAM_TRIM_BYTES + 64);
    assert!(s.spans.len() <= 2);
    let hit = s.push("敏感词").unwrap();
    assert_eq!(hit.excerpt, "答。一段正常的回答。敏感词");
}

#[test]
fn empty_filter() {
    let f = ContentFilter::build(&[], Path::new(".")).unwrap();
    assert!(f.is_empty());
    assert!(f.check("anything", Direction::Input, "web").is_none());
    let mut s = Arc::new(f).stream("web");
    assert!(s.push("anything").is_none());
    assert!(ContentFilter::default().is_empty());
}

#[test]
fn stream_is_send_and_static() {
    fn assert_send_static<T: Send + 'static>() {}
    assert_send_static::<StreamCheck>();
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ContentFilter>();
}
