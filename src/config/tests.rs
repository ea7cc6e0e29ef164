//! Loading and validation, end to end from TOML text and an environment.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn plaintext_accounts_with_login_codes_are_warned_about() {
    let account = |key: &str| {
        format!("[[wechat_mp]]\nid = \"m\"\napp_id = \"wx1234567890abcdef\"\ntoken = \"t\"\n{key}")
    };
    let (plain, _) = parse(&account(""), &[], None).unwrap();
    let warnings = plain.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].key, "wechat_mp[0].encoding_aes_key");
    let key = format!("encoding_aes_key = \"{}\"\n", "a".repeat(43));
    let (safe, _) = parse(&account(&key), &[], None).unwrap();
    assert!(safe.warnings().is_empty());
    assert!(parse("", &[], None).unwrap().0.warnings().is_empty());
}

#[test]
fn empty_config_is_valid_and_uses_demo() {
    let (c, _) = parse("", &[], None).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:8080");
    assert_eq!(c.storage.path, PathBuf::from("./data"));
    // Small enough for 100,000 users in ~115 MiB (BENCHMARKS.md).
    assert_eq!(c.storage.cache_capacity_mb, 8);
    assert_eq!(c.provider(), Provider::Demo);
    assert_eq!(c.llm.models.len(), 1);
    assert_eq!(c.llm.models[0].name, c.llm.model);
}

#[test]
fn postgres_storage_needs_a_url_and_a_plain_schema() {
    let err = parse(
        "[storage]\nbackend = \"postgres\"\nschema = \"Bad-Name\"\npool_size = 0\n",
        &[],
        None,
    )
    .unwrap_err();
    let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["storage.url", "storage.schema", "storage.pool_size"]);
    let err = parse(
        "[storage]\nbackend = \"postgres\"\nurl = \"postgres://a@b/c?sslmode=nonsense\"\n",
        &[],
        None,
    )
    .unwrap_err();
    assert_eq!(err.0[0].key, "storage.url");
    let url = "postgres://u:secret@db:5432/cr?sslmode=require";
    let (c, _) = parse(
        "",
        &env(&[
            ("CHATRELAY__STORAGE__BACKEND", "postgres"),
            ("CHATRELAY__STORAGE__URL", url),
        ]),
        None,
    )
    .unwrap();
    let opts = c.storage.postgres().unwrap();
    assert_eq!(
        (opts.url.as_str(), opts.schema.as_deref(), opts.pool_size),
        (url, Some("public"), 16)
    );
    assert!(!c.redacted_summary().contains("secret"));
    let (sled, _) = parse("", &[], None).unwrap();
    assert!(sled.storage.postgres().is_none());
}

#[test]
fn openai_api_key_env_switches_to_openai() {
    let (c, _) = parse("", &env(&[("OPENAI_API_KEY", "sk-test")]), None).unwrap();
    assert_eq!(c.provider(), Provider::Openai);
    assert_eq!(c.llm.api_keys[0].expose(), "sk-test");
}

#[test]
fn env_overrides_file() {
    let text = "[server]\nlisten = \"127.0.0.1:1\"\n[quota]\nfree_daily = 3\n";
    let (c, keys) = parse(
        text,
        &env(&[
            ("CHATRELAY__SERVER__LISTEN", "0.0.0.0:9000"),
            ("CHATRELAY__QUOTA__FREE_DAILY", "7"),
            ("CHATRELAY__SERVER__ADMIN_TOKEN", "1234567890123456"),
            ("CHATRELAY__LLM__API_KEYS", "[\"a\", \"b\"]"),
            ("CHATRELAY__LLM__MODEL", "42"),
            ("CHATRELAY__LLM__MODELS", "[{name = \"42\", credits = 2}]"),
        ]),
        None,
    )
    .unwrap();
    assert_eq!(c.server.listen, "0.0.0.0:9000");
    assert_eq!(c.quota.free_daily, 7);
    assert_eq!(c.server.admin_token.unwrap().expose(), "1234567890123456");
    assert_eq!(c.llm.api_keys.len(), 2);
    assert_eq!(c.llm.model, "42");
    assert_eq!(c.llm.models[0].credits, 2);
    assert!(keys.contains(&"server.listen".to_owned()));
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let text = r#"
[server]
listen = "nope"
lisen = "typo"
admin_token = "short"
[quota]
free_daily = "ten"
[llm]
model = "missing"
[[llm.models]]
name = "a"
[[llm.models]]
name = "a"
[bogus]
x = 1
"#;
    let err = parse(text, &[], None).unwrap_err();
    let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
    for expected in [
        "server.listen",
        "server.lisen",
        "server.admin_token",
        "quota.free_daily",
        "llm.model",
        "llm.models[1].name",
        "bogus",
    ] {
        assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
    }
}

#[test]
fn problems_beside_a_type_error_are_all_reported() {
    // Once, a type error hid the rest of its section: the unknown key and the negative
    // number here went unreported.
    let text = r#"
[llm]
timeout_secs = -5
modle = "x"
max_retries = "three"
[[products]]
id = "p1"
name = "P"
price_fen = "ten"
credits = 10
[[products]]
id = "p2"
name = "Q"
price_fen = 0
credit = 5
"#;
    let err = parse(text, &[], None).unwrap_err();
    let got: Vec<String> = err.0.iter().map(ToString::to_string).collect();
    for expected in [
        "llm.timeout_secs: must be a whole number, 0 or more (found -5)",
        "llm.modle: unknown key; did you mean `model`?",
        "llm.max_retries: must be a whole number, 0 or more (found the text \"three\")",
        "products[0].price_fen: must be a whole number (found the text \"ten\")",
        "products[1].credit: unknown key; did you mean `credits`?",
        "products[1].credits: give credits (at least 1) or a plan (`plan = \"<[[plans]] id>\"`)",
    ] {
        assert!(
            got.iter().any(|g| g == expected),
            "{expected} missing from {got:#?}"
        );
    }
    assert!(
        got.iter()
            .any(|g| g.starts_with("products[1].price_fen: must be between")),
        "validation still runs beside type errors: {got:#?}"
    );
    // Nothing in serde's words, nothing reported twice.
    for g in &got {
        for word in ["usize", "u64", "i64", "u32", ".[", "\nin `"] {
            assert!(!g.contains(word), "{g}");
        }
    }
    let keys: std::collections::BTreeSet<_> = err.0.iter().map(|p| &p.key).collect();
    assert_eq!(keys.len(), err.0.len(), "{got:#?}");
}

#[test]
fn secret_files_are_read_and_redacted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "abcdefghijklmnopqrst\n").unwrap();
    std::fs::write(dir.path().join("keys"), "sk-1\nsk-2\n").unwrap();
    let cfg_path = dir.path().join("chatrelay.toml");
    let text = "[server]\nadmin_token_file = \"token\"\n[llm]\napi_keys_file = \"keys\"\n";
    let (c, _) = parse(text, &[], Some(&cfg_path)).unwrap();
    assert_eq!(
        c.server.admin_token.as_ref().unwrap().expose(),
        "abcdefghijklmnopqrst"
    );
    assert_eq!(c.llm.api_keys.len(), 2);
    let summary = c.redacted_summary();
    assert!(!summary.contains("abcdefghijklmnopqrst"), "{summary}");
    assert!(!summary.contains("sk-1"), "{summary}");
    assert!(format!("{c:?}").find("sk-2").is_none());
}

#[test]
fn missing_secret_file_and_both_forms_are_problems() {
    let text = "[server]\nadmin_token = \"abcdefghijklmnopq\"\nadmin_token_file = \"x\"\n[llm]\napi_keys_file = \"/nonexistent/keys\"\n";
    let err = parse(text, &[], None).unwrap_err();
    let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"server.admin_token_file"), "{keys:?}");
    assert!(keys.contains(&"llm.api_keys_file"), "{keys:?}");
}

#[test]
fn syntax_error_names_the_file() {
    let err = parse("[server\n", &[], None).unwrap_err();
    assert_eq!(err.0[0].key, "(file)");
}

#[test]
fn the_buy_hint_names_only_what_exists() {
    let mut c = Config::default();
    c.quota.free_daily = 0;
    assert_eq!(c.bot.texts.buy_hint_for(&c), "", "nothing to point to");
    c.quota.free_daily = 10;
    assert_eq!(c.bot.texts.buy_hint_for(&c), "免费额度每天零点恢复。");
    // Products without a payment channel cannot be bought.
    c.products.push(
        serde_json::from_value(
            serde_json::json!({"id": "p10", "name": "10", "price_fen": 100, "credits": 10}),
        )
        .unwrap(),
    );
    assert!(!c.bot.texts.buy_hint_for(&c).contains("购买"));
    c.bot.texts.buy_hint = "找管理员充值。".into();
    assert_eq!(
        c.bot.texts.buy_hint_for(&c),
        "找管理员充值。",
        "a configured hint is kept"
    );
}

#[test]
fn web_login_and_pay_methods_are_checked_together() {
    let mp = "[[wechat_mp]]\nid = \"main\"\napp_id = \"wxA\"\ntoken = \"t\"\n";
    let err = parse(
        &format!(
            "{mp}oauth = true\noauth_scope = \"snsapi_all\"\n[web]\nlogin_account = \"other\"\n"
        ),
        &[],
        None,
    )
    .unwrap_err();
    let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "web.login_account",
            "wechat_mp[0].oauth_scope",
            "wechat_mp[0].app_secret",
            "server.public_url"
        ],
        "{err:?}"
    );
    let (c, _) = parse(
        &format!("[server]\npublic_url = \"https://chat.example.com\"\n{mp}oauth = true\napp_secret = \"s\"\n"),
        &[],
        None,
    )
    .unwrap();
    assert_eq!(
        c.web.login_mp(&c.wechat_mp).map(|a| a.id.as_str()),
        Some("main")
    );
    assert!(c.web.wechat_auto_login);
}

#[test]
fn pay_methods_default_to_what_the_keys_and_accounts_allow() {
    let wx = |app_id: &str, methods: Option<&[&str]>| WechatPayConfig {
        mch_id: "1900000001".into(),
        app_id: app_id.into(),
        serial_no: "S".into(),
        private_key_file: "k.pem".into(),
        api_v3_key: Secret::default(),
        platform_public_key_file: None,
        public_key_id: None,
        platform_cert_files: Vec::new(),
        api_base: "https://api.mch.weixin.qq.com".into(),
        methods: methods.map(|m| m.iter().map(|s| (*s).to_owned()).collect()),
    };
    let accounts = [WechatMpConfig {
        id: "main".into(),
        app_id: "wxA".into(),
        ..WechatMpConfig::default()
    }];
    assert_eq!(
        wx("wxA", None).methods_in_force(&accounts),
        ["native", "jsapi"]
    );
    assert_eq!(wx("wxB", None).methods_in_force(&accounts), ["native"]);
    assert_eq!(wx("wxB", Some(&["h5"])).methods_in_force(&accounts), ["h5"]);
    // Unknown or repeated names and JSAPI without the bound account are problems.
    let toml = "[server]\npublic_url = \"https://chat.example.com\"\n[pay.wechat]\nmch_id = \"1900000001\"\napp_id = \"wxB\"\nserial_no = \"S\"\nprivate_key_file = \"/nonexistent\"\napi_v3_key = \"k\"\nmethods = [\"native\", \"jsapi\", \"native\", \"card\"]\n[pay.alipay]\napp_id = \"2021\"\nprivate_key_file = \"/nonexistent\"\nalipay_public_key_file = \"/nonexistent\"\nmethods = []\n";
    let err = parse(toml, &[], None).unwrap_err();
    let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "pay.wechat.methods[2]",
        "pay.wechat.methods[3]",
        "pay.wechat.methods",
        "pay.alipay.methods",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
}

#[test]
fn plans_and_plan_products_are_checked() {
    let text = r#"
[[plans]]
id = "month"
name = "月卡"
daily_credits = 20
days = 30
models = ["gpt-4o-mini"]
[[plans]]
id = "month"
name = ""
daily_credits = 0
days = 0
models = ["nope"]
[[products]]
id = "m"
name = "月卡"
price_fen = 3000
plan = "month"
[[products]]
id = "both"
name = "B"
price_fen = 100
credits = 5
plan = "month"
[[products]]
id = "ghost"
name = "G"
price_fen = 100
plan = "year"
"#;
    let err = parse(text, &[], None).unwrap_err();
    let got: Vec<String> = err.0.iter().map(ToString::to_string).collect();
    for expected in [
        "plans[1].id: \"month\" is already plans[0]",
        "plans[1].name: must be 1 to 100 characters",
        "plans[1].days: must be between 1 and 3660",
        "plans[1].daily_credits: must be between 1 and 100000000",
        "plans[1].models[0]: \"nope\" is not one of [[llm.models]]",
        "products[1].plan: a product sells credits or a plan, not both: drop `credits` or `plan`",
        "products[2].plan: \"year\" is not one of [[plans]] ids",
    ] {
        assert!(
            got.iter().any(|g| g == expected),
            "{expected} missing from {got:#?}"
        );
    }
    assert_eq!(got.len(), 7, "the good plan and product pass: {got:#?}");
    let ok = parse(
        r#"
[[plans]]
id = "month"
name = "月卡"
daily_credits = 20
days = 30
[[products]]
id = "m"
name = "月卡"
price_fen = 3000
plan = "month"
"#,
        &[],
        None,
    )
    .unwrap()
    .0;
    assert_eq!(ok.products[0].plan.as_deref(), Some("month"));
    assert_eq!(ok.products[0].credits, 0);
    assert_eq!(ok.plans[0].grant(28_800).days, 30);
}

#[test]
fn web_conversation_limits_have_defaults_and_bounds() {
    let (c, _) = parse("", &[], None).unwrap();
    assert_eq!(
        (c.web.conversations_max, c.web.conversation_max_kb),
        (200, 512)
    );
    let (c, _) = parse(
        "[web]\nconversations_max = 5\nconversation_max_kb = 64\n",
        &[],
        None,
    )
    .unwrap();
    assert_eq!(
        (c.web.conversations_max, c.web.conversation_max_kb),
        (5, 64)
    );
    let err = parse(
        "[web]\nconversations_max = 0\nconversation_max_kb = 0\n",
        &[],
        None,
    )
    .unwrap_err();
    let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["web.conversations_max", "web.conversation_max_kb"],
        "{err:?}"
    );
}

#[test]
fn the_change_log_keeps_1_to_3650_days() {
    let (c, _) = parse("", &[], None).unwrap();
    assert_eq!(c.console.change_log_days, 180);
    let (c, _) = parse("[console]\nchange_log_days = 30\n", &[], None).unwrap();
    assert_eq!(c.console.change_log_days, 30);
    for bad in [0, 3651] {
        let err = parse(&format!("[console]\nchange_log_days = {bad}\n"), &[], None).unwrap_err();
        let got: Vec<String> = err.0.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["console.change_log_days: must be 1 to 3650"], "{bad}");
    }
}

#[test]
fn speech_has_defaults_and_every_bad_key_is_named() {
    let (c, _) = parse("[speech]\nmodel = \"whisper-1\"\n", &[], None).unwrap();
    let sp = c.speech.unwrap();
    assert_eq!(sp.max_bytes, 2 * 1024 * 1024);
    assert_eq!(sp.max_seconds, 60);
    assert!(sp.show_text);
    assert_eq!(sp.ffmpeg, "ffmpeg");
    assert_eq!((sp.credits, sp.credits_per_minute), (0, 0));
    assert!(parse("", &[], None).unwrap().0.speech.is_none());

    let bad = "[[llm.upstreams]]\nid = \"glm\"\nbase_url = \"https://open.bigmodel.cn/api/paas/v4\"\n\
               [speech]\nmodel = \" \"\nupstream = \"nope\"\nfallbacks = [\"glm\", \"gone\"]\n\
               max_bytes = 0\nmax_seconds = 0\nffmpeg = \"\"\nffmpeg_timeout_secs = 0\n";
    let err = parse(bad, &[], None).unwrap_err();
    let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "speech.model",
        "speech.upstream",
        "speech.fallbacks[1]",
        "speech.max_bytes",
        "speech.max_seconds",
        "speech.ffmpeg",
        "speech.ffmpeg_timeout_secs",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    assert!(!keys.contains(&"speech.fallbacks[0]"), "{keys:?}");
    let typo = parse("[speech]\nmodel = \"m\"\nmax_byte = 1\n", &[], None).unwrap_err();
    assert!(typo.0[0].to_string().contains("max_bytes"), "{}", typo.0[0]);
}

#[test]
fn voice_replies_have_defaults_and_need_speech() {
    let (c, _) = parse(
        "[speech]\nmodel = \"whisper-1\"\n[[scopes]]\nscope = \"telegram\"\nvoice_reply = true\n",
        &[],
        None,
    )
    .unwrap();
    let sp = c.speech.unwrap();
    assert_eq!(sp.voice, "alloy");
    assert_eq!(sp.speech_model, "tts-1");
    assert_eq!(sp.reply_max_chars, 300);
    assert_eq!(sp.speech_credits, 0);
    assert!(c.scopes[0].voice_reply);
    let (c, _) = parse("[[scopes]]\nscope = \"web\"\n", &[], None).unwrap();
    assert!(
        !c.scopes[0].voice_reply,
        "voice replies are off unless asked for"
    );

    let bad = "[speech]\nmodel = \"m\"\nvoice = \" \"\nspeech_model = \"\"\nreply_max_chars = 0\n";
    let err = parse(bad, &[], None).unwrap_err();
    let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "speech.voice",
        "speech.speech_model",
        "speech.reply_max_chars",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    let long = parse(
        "[speech]\nmodel = \"m\"\nreply_max_chars = 4097\n",
        &[],
        None,
    )
    .unwrap_err();
    assert_eq!(long.0[0].key, "speech.reply_max_chars");
    let orphan = parse(
        "[[scopes]]\nscope = \"web\"\nvoice_reply = true\n",
        &[],
        None,
    )
    .unwrap_err();
    assert_eq!(orphan.0[0].key, "scopes[0].voice_reply");
}
