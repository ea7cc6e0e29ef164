//! Configuration: field names as parsed from TOML, defaults, and error
//! reports with their keys and lines.

use std::path::{Path, PathBuf};

use chatrelay_rules::{
    ApplyTo, ContentFilter, DEFAULT_REFUSAL, FilterRuleConfig, KeywordMatch, KeywordReplies,
    KeywordRuleConfig, RuleError,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    filters: Vec<FilterRuleConfig>,
    #[serde(default)]
    keywords: Vec<KeywordRuleConfig>,
}

#[test]
fn parses_from_toml() {
    let cfg: Config = toml::from_str(
        r#"
        [[filters]]
        id = "politics"
        words = ["敏感词", "another"]
        word_files = ["words/politics.txt", "/etc/chatrelay/extra.txt"]
        refusal = "换个话题吧。"
        apply_to = "output"
        scopes = ["wechat_mp", "telegram:42"]

        [[filters]]
        id = "minimal"
        words = ["x"]

        [[keywords]]
        id = "price"
        match = "contains"
        patterns = ["价格", "多少钱"]
        reply = "基础版 10 元/月。"
        priority = 5
        scopes = ["wechat_mp:gh_1"]
        case_sensitive = true

        [[keywords]]
        id = "order"
        match = "regex"
        patterns = ['^订单\s*(?P<no>\d+)$']
        reply = "订单 ${no} 正在处理。"
        "#,
    )
    .unwrap();

    let f = &cfg.filters[0];
    assert_eq!(f.id, "politics");
    assert_eq!(f.words, ["敏感词", "another"]);
    assert_eq!(
        f.word_files,
        [
            PathBuf::from("words/politics.txt"),
            PathBuf::from("/etc/chatrelay/extra.txt")
        ]
    );
    assert_eq!(f.refusal, "换个话题吧。");
    assert_eq!(f.apply_to, ApplyTo::Output);
    assert_eq!(f.scopes, ["wechat_mp", "telegram:42"]);

    let m = &cfg.filters[1];
    assert_eq!(m.refusal, DEFAULT_REFUSAL);
    assert_eq!(m.apply_to, ApplyTo::Both);
    assert!(m.word_files.is_empty() && m.scopes.is_empty());
    assert_eq!(
        *m,
        FilterRuleConfig {
            words: vec!["x".into()],
            ..FilterRuleConfig::new("minimal")
        }
    );

    let k = &cfg.keywords[0];
    assert_eq!(k.kind, KeywordMatch::Contains);
    assert_eq!(k.patterns, ["价格", "多少钱"]);
    assert_eq!(k.priority, 5);
    assert_eq!(k.scopes, ["wechat_mp:gh_1"]);
    assert!(k.case_sensitive);
    let r = &cfg.keywords[1];
    assert_eq!(r.kind, KeywordMatch::Regex);
    assert_eq!(r.priority, 0);
    assert!(!r.case_sensitive && r.scopes.is_empty());

    let keywords = KeywordReplies::build(&cfg.keywords).unwrap();
    assert_eq!(keywords.len(), 2);
    assert_eq!(
        keywords.find("订单 123", "web").unwrap().reply,
        "订单 123 正在处理。"
    );

    // Round trip through Serialize.
    let again: FilterRuleConfig = toml::from_str(&toml::to_string(f).unwrap()).unwrap();
    assert_eq!(&again, f);
    for apply in ["input", "output", "both"] {
        let c: FilterRuleConfig =
            toml::from_str(&format!("id = \"a\"\napply_to = \"{apply}\"")).unwrap();
        assert!(toml::to_string(&c).unwrap().contains(apply));
    }
}

#[test]
fn unknown_fields_and_bad_values_are_refused() {
    assert!(toml::from_str::<FilterRuleConfig>("id = \"a\"\nword = [\"x\"]").is_err());
    assert!(toml::from_str::<FilterRuleConfig>("id = \"a\"\napply_to = \"Both\"").is_err());
    assert!(toml::from_str::<FilterRuleConfig>("words = [\"x\"]").is_err());
    assert!(
        toml::from_str::<KeywordRuleConfig>(
            "id = \"a\"\nmatch = \"fuzzy\"\npatterns = [\"x\"]\nreply = \"y\""
        )
        .is_err()
    );
    assert!(
        toml::from_str::<KeywordRuleConfig>(
            "id = \"a\"\nmatch = \"exact\"\npatterns = [\"x\"]\nreply = \"y\"\nregex = true"
        )
        .is_err()
    );
}

fn keys(errors: &[RuleError]) -> Vec<(&str, Option<usize>)> {
    errors.iter().map(|e| (e.key.as_str(), e.line)).collect()
}

#[test]
fn filter_errors_are_all_collected_with_keys_and_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("words")).unwrap();
    // Line 3 is not UTF-8; line 5 is only punctuation; line 6 too long.
    let mut bad = b"# comment\nok1\n\xFF\xFEbad\n\n!!!\n".to_vec();
    bad.extend("长".repeat(65).as_bytes());
    bad.extend(b"\nok2\n");
    std::fs::write(dir.path().join("words/bad.txt"), bad).unwrap();
    std::fs::write(dir.path().join("only-comments.txt"), "# nothing\n\n  \n").unwrap();

    let rules = vec![
        FilterRuleConfig {
            words: vec!["fine".into(), " ，。 ".into()],
            word_files: vec!["words/bad.txt".into(), "missing.txt".into()],
            ..FilterRuleConfig::new("a")
        },
        FilterRuleConfig::new("a"),
        FilterRuleConfig {
            words: vec!["x".into()],
            refusal: " ".into(),
            scopes: vec!["".into()],
            ..FilterRuleConfig::new("bad id")
        },
        FilterRuleConfig {
            word_files: vec![dir.path().join("only-comments.txt")],
            ..FilterRuleConfig::new("empty")
        },
    ];
    let errors = ContentFilter::build(&rules, dir.path()).unwrap_err();
    assert_eq!(
        keys(&errors),
        [
            ("filters[1].id", None),
            ("filters[2].id", None),
            ("filters[0].words[1]", None),
            ("filters[0].word_files[0]", Some(3)),
            ("filters[0].word_files[0]", Some(5)),
            ("filters[0].word_files[0]", Some(6)),
            ("filters[0].word_files[1]", None),
            ("filters[1].words", None),
            ("filters[2].scopes[0]", None),
            ("filters[2].refusal", None),
            ("filters[3].words", None),
        ],
        "{errors:#?}"
    );
    let utf8 = &errors[3];
    assert!(
        utf8.to_string()
            .starts_with("filters[0].word_files[0] (line 3): line is not valid UTF-8")
    );
    assert!(utf8.message.contains("bad.txt"));
    let missing = &errors[6].message;
    assert!(
        missing.contains(&dir.path().join("missing.txt").display().to_string()),
        "{missing}"
    );
    assert!(missing.contains("No such file"), "{missing}");
    assert!(errors[5].message.contains("65 characters"));
    assert!(errors[1].message.contains("\"bad id\""));
    assert_eq!(
        errors[0].to_string(),
        "filters[1].id: duplicate id \"a\" (also filters[0].id)"
    );
}

#[test]
fn relative_word_files_resolve_against_base_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w.txt"), "\u{FEFF}第一\r\n# c\r\n第二\r\n").unwrap();
    let cfg = FilterRuleConfig {
        word_files: vec!["w.txt".into()],
        ..FilterRuleConfig::new("f")
    };
    let f = ContentFilter::build(std::slice::from_ref(&cfg), dir.path()).unwrap();
    assert_eq!(f.word_count(), 2);
    assert!(ContentFilter::build(&[cfg], Path::new("/nonexistent")).is_err());
}

fn kw(id: &str, kind: KeywordMatch, patterns: &[&str], reply: &str) -> KeywordRuleConfig {
    KeywordRuleConfig {
        id: id.into(),
        kind,
        patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
        reply: reply.into(),
        priority: 0,
        scopes: Vec::new(),
        case_sensitive: false,
    }
}

#[test]
fn keyword_errors_are_all_collected() {
    let rules = vec![
        kw("ok", KeywordMatch::Regex, &["^a$"], "fine"),
        kw(
            "re",
            KeywordMatch::Regex,
            &["(unclosed", "ok", "[z-a]"],
            "x",
        ),
        kw("no-patterns", KeywordMatch::Exact, &[], "x"),
        kw("empty", KeywordMatch::Contains, &["a", "  "], ""),
        kw("ok", KeywordMatch::Exact, &["b"], "x"),
        kw("", KeywordMatch::Exact, &["c"], "x"),
    ];
    let errors = KeywordReplies::build(&rules).unwrap_err();
    assert_eq!(
        keys(&errors),
        [
            ("keywords[4].id", None),
            ("keywords[5].id", None),
            ("keywords[1].patterns[0]", None),
            ("keywords[1].patterns[2]", None),
            ("keywords[2].patterns", None),
            ("keywords[3].reply", None),
            ("keywords[3].patterns[1]", None),
        ],
        "{errors:#?}"
    );
    // The regex crate's message, with its pointer into the pattern.
    let msg = errors[2].to_string();
    assert!(
        msg.starts_with("keywords[1].patterns[0]: regex parse error:"),
        "{msg}"
    );
    assert!(msg.contains("(unclosed") && msg.contains('^'), "{msg}");
    assert!(msg.contains("unclosed group"), "{msg}");
}

#[test]
fn huge_regex_is_refused() {
    let errors =
        KeywordReplies::build(&[kw("big", KeywordMatch::Regex, &[r"\w{1000}"], "x")]).unwrap_err();
    assert_eq!(errors[0].key, "keywords[0].patterns[0]");
    assert!(
        errors[0].message.contains("size limit"),
        "{}",
        errors[0].message
    );
}
