//! The shop's checks (`[[products]]`, `[pay]` and its ways to pay) and the web login's
//! (`[web] login_account`, `[[wechat_mp]] oauth*`): they reference each other (JSAPI pays
//! with the openid of the account bound to the merchant).

use std::collections::BTreeMap;

use super::check::{is_http_url, is_id};
use super::pay::{ALIPAY_METHODS, WECHAT_METHODS, load_alipay_keys, load_wechat_keys};
use super::read::{Problem, problem};
use super::sections::Config;

/// An https URL, or an http URL on this machine (a local trial: providers cannot reach it).
fn public_or_loopback(url: &str) -> bool {
    if url.starts_with("https://") && url.len() > 8 {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

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

/// `[[products]]`: ids, names, prices and credits.
fn validate_products(c: &Config, problems: &mut Vec<Problem>) {
    let mut ids = BTreeMap::new();
    for (i, p) in c.products.iter().enumerate() {
        let key = |k: &str| format!("products[{i}].{k}");
        if !is_id(&p.id) {
            problems.push(problem(
                key("id"),
                "must be non-empty letters, digits, _ or -",
            ));
        } else if let Some(first) = ids.insert(p.id.clone(), i) {
            problems.push(problem(
                key("id"),
                format!("{:?} is already products[{first}]", p.id),
            ));
        }
        if p.name.trim().is_empty() || p.name.chars().count() > 100 {
            problems.push(problem(key("name"), "must be 1 to 100 characters"));
        }
        if !(1..=100_000_000).contains(&p.price_fen) {
            problems.push(problem(
                key("price_fen"),
                "must be between 1 and 100000000 fen",
            ));
        }
        if p.credits == 0 {
            problems.push(problem(key("credits"), "must be at least 1"));
        }
    }
}

/// `[pay]` and its channels: keys, URLs and the ways to pay.
pub(super) fn validate_pay(c: &Config, problems: &mut Vec<Problem>) {
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
            .is_some_and(public_or_loopback)
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

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_http_is_a_local_trial_only() {
        for ok in [
            "https://chat.example.com",
            "http://127.0.0.1:8080",
            "http://localhost/",
            "http://[::1]:9/x",
        ] {
            assert!(super::public_or_loopback(ok), "{ok}");
        }
        for bad in [
            "http://chat.example.com",
            "http://127.0.0.1.evil.com",
            "http://localhost.evil:80",
            "ftp://127.0.0.1",
            "https://",
        ] {
            assert!(!super::public_or_loopback(bad), "{bad}");
        }
    }
}
