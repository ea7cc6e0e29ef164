//! Keyword replies: priorities, case, regex captures, scopes.

use chatrelay_rules::{KeywordMatch, KeywordReplies, KeywordRuleConfig};

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

fn id<'a>(k: &'a KeywordReplies, text: &str, scope: &str) -> Option<&'a str> {
    k.find(text, scope).map(|r| r.id)
}

#[test]
fn priority_then_listing_order() {
    let mut urgent = kw("urgent", KeywordMatch::Contains, &["价格"], "contains wins");
    urgent.priority = 10;
    let mut regex_mid = kw("regex-mid", KeywordMatch::Regex, &["价"], "regex");
    regex_mid.priority = 5;
    let k = KeywordReplies::build(&[
        kw("exact", KeywordMatch::Exact, &["价格"], "exact"),
        urgent,
        regex_mid,
        kw(
            "second",
            KeywordMatch::Exact,
            &["价格"],
            "never: equal priority, listed later",
        ),
    ])
    .unwrap();
    // A higher-priority contains rule beats an earlier exact rule.
    let r = k.find("价格", "web").unwrap();
    assert_eq!((r.id, r.reply.as_ref()), ("urgent", "contains wins"));
    // Without the contains pattern, the regex (priority 5) beats exact (0).
    assert_eq!(id(&k, "价", "web"), Some("regex-mid"));

    // Equal priority: the rule listed first.
    let k = KeywordReplies::build(&[
        kw("first", KeywordMatch::Contains, &["hello"], "1"),
        kw("second", KeywordMatch::Exact, &["hello"], "2"),
        kw("third", KeywordMatch::Regex, &["hello"], "3"),
    ])
    .unwrap();
    assert_eq!(id(&k, "hello", "web"), Some("first"));
    let k = KeywordReplies::build(&[
        kw("third", KeywordMatch::Regex, &["hello"], "3"),
        kw("first", KeywordMatch::Contains, &["hello"], "1"),
    ])
    .unwrap();
    assert_eq!(id(&k, "hello", "web"), Some("third"));

    // Negative priorities sort below the default.
    let mut low = kw("low", KeywordMatch::Contains, &["a"], "low");
    low.priority = -1;
    let k = KeywordReplies::build(&[low, kw("zero", KeywordMatch::Contains, &["a"], "0")]).unwrap();
    assert_eq!(id(&k, "a", "web"), Some("zero"));
}

#[test]
fn case_sensitivity() {
    let mut cased = kw("cased", KeywordMatch::Contains, &["VIP"], "cased");
    cased.case_sensitive = true;
    let mut cased_exact = kw("cased-exact", KeywordMatch::Exact, &["Help"], "cased exact");
    cased_exact.case_sensitive = true;
    let mut cased_re = kw("cased-re", KeywordMatch::Regex, &["^Menu$"], "menu");
    cased_re.case_sensitive = true;
    let k = KeywordReplies::build(&[
        cased,
        cased_exact,
        cased_re,
        kw("folded", KeywordMatch::Contains, &["Refund"], "folded"),
        kw("folded-re", KeywordMatch::Regex, &["^ord(er)?$"], "order"),
    ])
    .unwrap();
    assert_eq!(id(&k, "I am a VIP", "web"), Some("cased"));
    assert_eq!(id(&k, "I am a ＶＩＰ", "web"), Some("cased"));
    assert_eq!(id(&k, "I am a vip", "web"), None);
    assert_eq!(id(&k, " Help ", "web"), Some("cased-exact"));
    assert_eq!(id(&k, "help", "web"), None);
    assert_eq!(id(&k, "Menu", "web"), Some("cased-re"));
    assert_eq!(id(&k, "menu", "web"), None);
    assert_eq!(id(&k, "REFUND please", "web"), Some("folded"));
    assert_eq!(id(&k, "ｒｅｆｕｎｄ", "web"), Some("folded"));
    assert_eq!(id(&k, "ORDER", "web"), Some("folded-re"));
}

#[test]
fn regex_captures_expand_into_the_reply() {
    let k = KeywordReplies::build(&[
        kw(
            "order",
            KeywordMatch::Regex,
            &[r"订单号?\s*(?P<no>\d{4,})", r"order\s+#?(\d+)"],
            "订单 ${1} 已收到，$$0 运费。",
        ),
        kw(
            "named",
            KeywordMatch::Regex,
            &[r"^(?P<city>\p{Han}+)天气$"],
            "${city}: 晴",
        ),
        kw("plain", KeywordMatch::Regex, &["hi"], "literal $1 stays"),
    ])
    .unwrap();
    assert_eq!(
        k.find("我的订单号 12345 到哪了", "web").unwrap().reply,
        "订单 12345 已收到，$0 运费。"
    );
    assert_eq!(
        k.find("Order #987", "web").unwrap().reply,
        "订单 987 已收到，$0 运费。"
    );
    assert_eq!(k.find("hi", "web").unwrap().reply, "literal  stays");
    assert_eq!(k.find("北京天气", "web").unwrap().reply, "北京: 晴");
    assert!(k.find("订单 12", "web").is_none());
}

#[test]
fn scopes() {
    let mut mp = kw("mp", KeywordMatch::Contains, &["菜单"], "mp menu");
    mp.scopes = vec!["wechat_mp".into()];
    mp.priority = 1;
    let mut one = kw("one", KeywordMatch::Exact, &["菜单"], "one account");
    one.scopes = vec!["wechat_mp:gh_1".into()];
    one.priority = 2;
    let mut re = kw("re", KeywordMatch::Regex, &["菜单"], "telegram");
    re.scopes = vec!["telegram".into()];
    re.priority = 3;
    let k = KeywordReplies::build(&[
        mp,
        one,
        re,
        kw("any", KeywordMatch::Contains, &["菜单"], "any"),
    ])
    .unwrap();
    assert_eq!(id(&k, "菜单", "wechat_mp:gh_1"), Some("one"));
    assert_eq!(id(&k, "菜单", "wechat_mp:gh_2"), Some("mp"));
    assert_eq!(id(&k, "菜单", "telegram:5"), Some("re"));
    assert_eq!(id(&k, "菜单", "web"), Some("any"));
    assert_eq!(id(&k, "别的", "web"), None);
}

#[test]
fn exact_needs_the_whole_message() {
    let k =
        KeywordReplies::build(&[kw("hi", KeywordMatch::Exact, &["你好", "hello"], "hi!")]).unwrap();
    assert_eq!(id(&k, "  你好\n", "web"), Some("hi"));
    assert_eq!(id(&k, "HELLO", "web"), Some("hi"));
    assert_eq!(id(&k, "你好吗", "web"), None);
    assert!(KeywordReplies::build(&[]).unwrap().is_empty());
    assert_eq!(k.len(), 1);
}

#[test]
fn many_contains_rules() {
    let rules: Vec<KeywordRuleConfig> = (0..2000)
        .map(|i| {
            kw(
                &format!("r{i}"),
                KeywordMatch::Contains,
                &[&format!("key{i:04}x")],
                "r",
            )
        })
        .collect();
    let k = KeywordReplies::build(&rules).unwrap();
    assert_eq!(id(&k, "...key1999x and key0005x...", "web"), Some("r5"));
    assert_eq!(id(&k, "key20000x", "web"), None);
}
