//! The shop's checks (`[[products]]`, `[pay]` and its ways to pay) and the web login's
//! (`[web] login_account`, `[[wechat_mp]] oauth*`): they reference each other (JSAPI pays
//! with the openid of the account bound to the merchant).

use std::collections::BTreeMap;

use super::check::{is_http_url, is_id};
use super::pay::{ALIPAY_METHODS, WECHAT_METHODS, load_alipay_keys, load_wechat_keys};
use super::read::{Problem, problem};
use super::sections::Config;

fn check_methods(
    key: &str,
    methods: Option<&[String]>,
    known: &[&str],
    problems: &mut Vec<Problem>,
) {
    let Some(methods) = methods else { return };
    if methods.is_empty() {
        problems.push(problem(
            key,
            format!("must name at least one of {}", known.join(", ")),
        ));
    }
    for (i, m) in methods.iter().enumerate() {
        if !known.contains(&m.as_str()) {
            problems.push(problem(
                format!("{key}[{i}]"),
                format!("{m:?} is not one of {}", known.join(", ")),
            ));
        } else if methods[..i].contains(m) {
            problems.push(problem(
                format!("{key}[{i}]"),
                format!("{m:?} is listed twice"),
            ));
        }
    }
}

/// `[web] login_account` and each account's web authorization settings.
pub(super) fn validate_web_login(c: &Config, problems: &mut Vec<Problem>) {
    if let Some(id) = &c.web.login_account
        && !c.wechat_mp.iter().any(|a| &a.id == id)
    {
        problems.push(problem(
            "web.login_account",
            format!("{id:?} is not a [[wechat_mp]] id"),
        ));
    }
    for (i, mp) in c.wechat_mp.iter().enumerate() {
        let key = |k: &str| format!("wechat_mp[{i}].{k}");
        if !matches!(mp.oauth_scope.as_str(), "snsapi_base" | "snsapi_userinfo") {
            problems.push(problem(
                key("oauth_scope"),
                "must be \"snsapi_base\" or \"snsapi_userinfo\"",
            ));
        }
        if !is_http_url(&mp.oauth_base) {
            problems.push(problem(
                key("oauth_base"),
                "must start with http:// or https://",
            ));
        }
        if !mp.oauth {
            continue;
        }
        if mp.app_secret.is_none() {
            problems.push(problem(
                key("app_secret"),
                "is required with oauth = true (the code is exchanged with it)",
            ));
        }
        if !c.server.public_url.as_deref().is_some_and(is_http_url) {
            problems.push(problem(
                "server.public_url",
                "web authorization needs the page's public URL (its domain is the account's 网页授权域名)",
            ));
        }
    }
}

/// The `id` (unique in its section) and `name` of entry `i` of `[[section]]`.
fn check_id_and_name(
    section: &str,
    i: usize,
    (id, name): (&str, &str),
    ids: &mut BTreeMap<String, usize>,
    problems: &mut Vec<Problem>,
) {
    let key = |k: &str| format!("{section}[{i}].{k}");
    if !is_id(id) {
        problems.push(problem(
            key("id"),
            "must be non-empty letters, digits, _ or -",
        ));
    } else if let Some(first) = ids.insert(id.to_owned(), i) {
        problems.push(problem(
            key("id"),
            format!("{id:?} is already {section}[{first}]"),
        ));
    }
    if name.trim().is_empty() || name.chars().count() > 100 {
        problems.push(problem(key("name"), "must be 1 to 100 characters"));
    }
}

/// `[[products]]`: ids, names, prices and credits.
fn validate_products(c: &Config, problems: &mut Vec<Problem>) {
    let mut ids = BTreeMap::new();
    for (i, p) in c.products.iter().enumerate() {
        let key = |k: &str| format!("products[{i}].{k}");
        check_id_and_name("products", i, (&p.id, &p.name), &mut ids, problems);
        if !(1..=100_000_000).contains(&p.price_fen) {
            problems.push(problem(
                key("price_fen"),
                "must be between 1 and 100000000 fen",
            ));
        }
        match (p.credits, &p.plan) {
            (0, None) => problems.push(problem(
                key("credits"),
                "give credits (at least 1) or a plan (`plan = \"<[[plans]] id>\"`)",
            )),
            (1.., Some(_)) => problems.push(problem(
                key("plan"),
                "a product sells credits or a plan, not both: drop `credits` or `plan`",
            )),
            (_, Some(plan)) if !c.plans.iter().any(|x| &x.id == plan) => {
                problems.push(problem(
                    key("plan"),
                    format!("{plan:?} is not one of [[plans]] ids"),
                ));
            }
            _ => {}
        }
    }
}

/// `[[plans]]`: ids, names, days, daily credits, and the models they unlock.
fn validate_plans(c: &Config, problems: &mut Vec<Problem>) {
    let mut ids = BTreeMap::new();
    for (i, p) in c.plans.iter().enumerate() {
        let key = |k: &str| format!("plans[{i}].{k}");
        check_id_and_name("plans", i, (&p.id, &p.name), &mut ids, problems);
        if !(1..=3660).contains(&p.days) {
            problems.push(problem(key("days"), "must be between 1 and 3660"));
        }
        if !(1..=100_000_000).contains(&p.daily_credits) {
            problems.push(problem(
                key("daily_credits"),
                "must be between 1 and 100000000",
            ));
        }
        for (j, m) in p.models.iter().enumerate() {
            if !c.llm.models.iter().any(|x| &x.name == m) {
                problems.push(problem(
                    format!("plans[{i}].models[{j}]"),
                    format!("{m:?} is not one of [[llm.models]]"),
                ));
            }
        }
    }
}

/// `[pay]` and its channels: keys, URLs and the ways to pay.
pub(super) fn validate_pay(c: &Config, problems: &mut Vec<Problem>) {
    validate_plans(c, problems);
    validate_products(c, problems);
    let pay = &c.pay;
    if pay.order_ttl_secs == 0 {
        problems.push(problem("pay.order_ttl_secs", "must be greater than 0"));
    }
    if pay.reconcile_interval_secs == 0 {
        problems.push(problem(
            "pay.reconcile_interval_secs",
            "must be greater than 0",
        ));
    }
    if (pay.wechat.is_some() || pay.alipay.is_some())
        && !c
            .server
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://") && u.len() > 8)
    {
        problems.push(problem(
            "server.public_url",
            "payments need the public https URL the providers send notifications to",
        ));
    }
    if let Some(w) = &pay.wechat {
        if let Err(e) = load_wechat_keys(w) {
            problems.push(problem(format!("pay.wechat.{}", e.0), e.1));
        }
        if !is_http_url(&w.api_base) {
            problems.push(problem(
                "pay.wechat.api_base",
                "must start with http:// or https://",
            ));
        }
        check_methods(
            "pay.wechat.methods",
            w.methods.as_deref(),
            &WECHAT_METHODS,
            problems,
        );
        if w.methods_in_force(&c.wechat_mp)
            .iter()
            .any(|m| m == "jsapi")
            && !c.wechat_mp.iter().any(|a| a.app_id == w.app_id)
        {
            problems.push(problem(
                "pay.wechat.methods",
                "\"jsapi\" needs the [[wechat_mp]] bound to the merchant (its app_id = pay.wechat.app_id): JSAPI pays with the openid under that account",
            ));
        }
    }
    if let Some(a) = &pay.alipay {
        if let Err(e) = load_alipay_keys(a) {
            problems.push(problem(format!("pay.alipay.{}", e.0), e.1));
        }
        if a.app_id.trim().is_empty() {
            problems.push(problem("pay.alipay.app_id", "is required"));
        }
        if !is_http_url(&a.gateway) {
            problems.push(problem(
                "pay.alipay.gateway",
                "must start with http:// or https://",
            ));
        }
        check_methods(
            "pay.alipay.methods",
            a.methods.as_deref(),
            &ALIPAY_METHODS,
            problems,
        );
    }
}
