//! The content filter and keyword replies read every user message and every
//! streamed answer: no text may make them panic, and feeding an answer in
//! pieces must find a hit exactly when checking it whole does.
#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use chatrelay_rules::{
    ApplyTo, ContentFilter, Direction, FilterRuleConfig, KeywordMatch, KeywordReplies,
    KeywordRuleConfig,
};
use libfuzzer_sys::fuzz_target;

struct Rules {
    filter: Arc<ContentFilter>,
    keywords: KeywordReplies,
}

static RULES: OnceLock<Option<Rules>> = OnceLock::new();

const SCOPES: [&str; 4] = ["web", "telegram:42", "wechat_mp:gh_1", "zsxq:7"];

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|w| (*w).to_owned()).collect()
}

fn build() -> Option<Rules> {
    let filters = vec![
        FilterRuleConfig {
            words: words(&["敏感词", "违禁", "ＢＡＤ word", "secret", "e\u{301}x", "İi"]),
            ..FilterRuleConfig::new("both")
        },
        FilterRuleConfig {
            words: words(&["abc", "感词汇", "长长长长长长长长长长长长长长长长长长长长"]),
            apply_to: ApplyTo::Output,
            scopes: vec!["telegram".into(), "web".into()],
            ..FilterRuleConfig::new("out")
        },
        FilterRuleConfig {
            words: words(&["ab", "你好", "敏感"]),
            apply_to: ApplyTo::Input,
            scopes: vec!["wechat_mp:gh_1".into()],
            ..FilterRuleConfig::new("in")
        },
    ];
    let keyword = |id: &str, kind, patterns: &[&str], reply: &str| KeywordRuleConfig {
        id: id.into(),
        kind,
        patterns: words(patterns),
        reply: reply.into(),
        priority: 0,
        scopes: Vec::new(),
        case_sensitive: false,
    };
    let mut order = keyword(
        "order",
        KeywordMatch::Regex,
        &[r"订单号?\s*(?P<no>\d{1,20})", r"(?i)order\s+#?(\w+)"],
        "订单 ${no}${1} $$ 已收到",
    );
    order.priority = 2;
    let mut vip = keyword("vip", KeywordMatch::Contains, &["VIP", "会员"], "vip");
    vip.case_sensitive = true;
    vip.scopes = vec!["telegram".into()];
    let keywords = vec![
        keyword("hi", KeywordMatch::Exact, &["你好", "Hello"], "hi"),
        keyword("price", KeywordMatch::Contains, &["价格", "price"], "10"),
        order,
        vip,
    ];
    Some(Rules {
        filter: Arc::new(ContentFilter::build(&filters, Path::new(".")).ok()?),
        keywords: KeywordReplies::build(&keywords).ok()?,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(rules) = RULES.get_or_init(build).as_ref() else {
        return;
    };
    // First byte: the scope; next byte: the seed of the cut points.
    let [scope_byte, seed, rest @ ..] = data else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let scope = SCOPES[usize::from(*scope_byte) % SCOPES.len()];

    let _ = rules.filter.check(text, Direction::Input, scope);
    let whole = rules.filter.check(text, Direction::Output, scope);

    let mut stream = rules.filter.stream(scope);
    let mut streamed = false;
    let mut left = text;
    let mut state = u32::from(*seed);
    while !left.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let mut cut = 1 + (state >> 16) as usize % left.len().min(16);
        while !left.is_char_boundary(cut) {
            cut += 1;
        }
        let (piece, tail) = left.split_at(cut);
        streamed |= stream.push(piece).is_some();
        left = tail;
    }
    assert_eq!(whole.is_some(), streamed, "stream and whole check disagree");

    let _ = rules.keywords.find(text, scope);
});
