//! Keyword replies: `[[keywords]]` rules answering matching messages with a
//! fixed text, before and instead of an LLM call (the Official Account
//! auto-reply use case).
//!
//! Among all rules that match, the highest `priority` wins and, at equal
//! priority, the rule listed first. Exact rules are a hash lookup and
//! contains rules one Aho-Corasick scan, whatever their number; regex
//! rules are tried one by one, in priority order, only while they could
//! still beat the best match found so far.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use aho_corasick::AhoCorasick;
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use crate::normalize::fold_width;
use crate::{RuleError, check_ids, check_scopes, scopes_cover};

/// Compiled size limit of one regex pattern, so a config cannot make the
/// daemon build a huge automaton.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// How a keyword rule's patterns are compared with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeywordMatch {
    /// The whole message, trimmed, equals a pattern (trimmed).
    Exact,
    /// The message contains a pattern.
    Contains,
    /// A pattern (regex syntax of the `regex` crate) matches somewhere in
    /// the message; anchor it with `^...$` to match the whole message.
    Regex,
}

/// One `[[keywords]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeywordRuleConfig {
    /// Names the rule in logs and errors; `[A-Za-z0-9_-]+`, unique.
    pub id: String,
    /// How patterns are compared: `exact`, `contains` or `regex`.
    #[serde(rename = "match")]
    pub kind: KeywordMatch,
    /// The patterns; any one matching is enough.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// The answer. For `regex` rules, `$1`, `${1}` and `${name}` are
    /// replaced by the captures of the matching pattern (`$$` is a literal
    /// `$`; write `${1}x` rather than `$1x`, which names a group `1x`).
    /// Other rules' replies are sent verbatim.
    pub reply: String,
    /// Higher wins; 0 by default. At equal priority the rule listed first
    /// wins.
    #[serde(default)]
    pub priority: i32,
    /// Where the rule applies (see [`crate::scope_matches`]); empty means
    /// everywhere.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Compare case-sensitively; `false` by default. Full-width letters
    /// and digits always match their ASCII forms in `exact` and `contains`
    /// rules.
    #[serde(default)]
    pub case_sensitive: bool,
}

/// The reply chosen for a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeywordReply<'a> {
    /// The id of the rule that matched.
    pub id: &'a str,
    /// The reply text, with captures expanded for regex rules.
    pub reply: Cow<'a, str>,
}

/// What is kept of a rule.
#[derive(Debug)]
struct Rule {
    id: String,
    reply: String,
    scopes: Vec<String>,
    /// A regex rule whose reply refers to captures.
    expands: bool,
}

/// Contains patterns of one case mode, in one automaton.
#[derive(Debug)]
struct Substrings {
    automaton: AhoCorasick,
    /// Per pattern: the rules that have it.
    rules: Vec<Vec<usize>>,
}

impl Substrings {
    fn build(by_pattern: HashMap<String, Vec<usize>>) -> Result<Option<Self>, RuleError> {
        if by_pattern.is_empty() {
            return Ok(None);
        }
        let (patterns, rules): (Vec<String>, Vec<Vec<usize>>) = by_pattern.into_iter().unzip();
        // Standard semantics: overlapping search must see every pattern
        // present, not just the leftmost-longest one, to pick by priority.
        let automaton = AhoCorasick::new(&patterns).map_err(|e| {
            RuleError::new(
                "keywords",
                format!("cannot compile the contains patterns: {e}"),
            )
        })?;
        Ok(Some(Self { automaton, rules }))
    }

    /// Calls `f` for each rule with a pattern in `text`.
    fn each_match(&self, text: &str, mut f: impl FnMut(usize)) {
        let Ok(iter) = self.automaton.try_find_overlapping_iter(text) else {
            return;
        };
        for m in iter {
            for &rule in self.rules.get(m.pattern().as_usize()).into_iter().flatten() {
                f(rule);
            }
        }
    }
}

/// The compiled keyword rules.
#[derive(Default)]
pub struct KeywordReplies {
    rules: Vec<Rule>,
    /// Rule indices, best first: priority descending, then listing order.
    order: Vec<usize>,
    /// Per rule: its position in `order`.
    rank: Vec<usize>,
    /// Exact patterns, trimmed, width-folded and lower-cased.
    exact_folded: HashMap<String, Vec<usize>>,
    /// Exact patterns of case-sensitive rules, trimmed and width-folded.
    exact_cased: HashMap<String, Vec<usize>>,
    contains_folded: Option<Substrings>,
    contains_cased: Option<Substrings>,
    /// Regex rules and their patterns, best first.
    regexes: Vec<(usize, Vec<Regex>)>,
}

impl fmt::Debug for KeywordReplies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeywordReplies")
            .field(
                "rules",
                &self.rules.iter().map(|r| &r.id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// `text` with full-width ASCII forms as ASCII and, when `lower`, in lower
/// case.
fn fold(text: &str, lower: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().map(fold_width) {
        if lower {
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

impl KeywordReplies {
    /// Compiles `rules`.
    ///
    /// # Errors
    /// Every problem found: a missing, invalid or duplicate id, an empty
    /// reply or scope, no patterns, an empty pattern, an invalid regex
    /// (keyed `keywords[i].patterns[j]`, with the regex crate's message,
    /// which shows where in the pattern the error is).
    pub fn build(rules: &[KeywordRuleConfig]) -> Result<Self, Vec<RuleError>> {
        let mut errors = Vec::new();
        check_ids("keywords", rules.iter().map(|r| r.id.as_str()), &mut errors);

        let mut order: Vec<usize> = (0..rules.len()).collect();
        // Stable sort: equal priorities keep their listing order.
        order.sort_by_key(|&i| std::cmp::Reverse(rules.get(i).map_or(0, |r| r.priority)));
        let mut rank = vec![0; rules.len()];
        for (position, &rule) in order.iter().enumerate() {
            if let Some(slot) = rank.get_mut(rule) {
                *slot = position;
            }
        }

        let mut exact_folded: HashMap<String, Vec<usize>> = HashMap::new();
        let mut exact_cased: HashMap<String, Vec<usize>> = HashMap::new();
        let mut contains_folded: HashMap<String, Vec<usize>> = HashMap::new();
        let mut contains_cased: HashMap<String, Vec<usize>> = HashMap::new();
        let mut regexes: Vec<(usize, Vec<Regex>)> = Vec::new();

        for (i, rule) in rules.iter().enumerate() {
            let prefix = format!("keywords[{i}]");
            check_scopes(&prefix, &rule.scopes, &mut errors);
            if rule.reply.trim().is_empty() {
                errors.push(RuleError::new(
                    format!("{prefix}.reply"),
                    "reply must not be empty",
                ));
            }
            if rule.patterns.is_empty() {
                errors.push(RuleError::new(
                    format!("{prefix}.patterns"),
                    "the rule has no patterns",
                ));
            }
            let lower = !rule.case_sensitive;
            let mut compiled = Vec::new();
            for (j, pattern) in rule.patterns.iter().enumerate() {
                let key = format!("{prefix}.patterns[{j}]");
                if pattern.trim().is_empty() {
                    errors.push(RuleError::new(key, "pattern must not be empty"));
                    continue;
                }
                let add = |map: &mut HashMap<String, Vec<usize>>, p: String| {
                    let owners = map.entry(p).or_default();
                    if owners.last() != Some(&i) {
                        owners.push(i);
                    }
                };
                match rule.kind {
                    KeywordMatch::Exact => {
                        let folded = fold(pattern, lower);
                        let map = if lower {
                            &mut exact_folded
                        } else {
                            &mut exact_cased
                        };
                        add(map, folded.trim().to_owned());
                    }
                    KeywordMatch::Contains => {
                        let map = if lower {
                            &mut contains_folded
                        } else {
                            &mut contains_cased
                        };
                        add(map, fold(pattern, lower));
                    }
                    KeywordMatch::Regex => {
                        match RegexBuilder::new(pattern)
                            .size_limit(REGEX_SIZE_LIMIT)
                            .case_insensitive(lower)
                            .build()
                        {
                            Ok(re) => compiled.push(re),
                            Err(e) => errors.push(RuleError::new(key, e.to_string())),
                        }
                    }
                }
            }
            if rule.kind == KeywordMatch::Regex {
                regexes.push((i, compiled));
            }
        }

        let contains_folded = Substrings::build(contains_folded).map_err(|e| vec![e]);
        let contains_cased = Substrings::build(contains_cased).map_err(|e| vec![e]);
        if !errors.is_empty() {
            return Err(errors);
        }
        regexes.sort_by_key(|&(rule, _)| rank.get(rule).copied().unwrap_or(usize::MAX));

        Ok(Self {
            rules: rules
                .iter()
                .map(|r| Rule {
                    id: r.id.clone(),
                    reply: r.reply.clone(),
                    scopes: r.scopes.clone(),
                    expands: r.kind == KeywordMatch::Regex && r.reply.contains('$'),
                })
                .collect(),
            order,
            rank,
            exact_folded,
            exact_cased,
            contains_folded: contains_folded?,
            contains_cased: contains_cased?,
            regexes,
        })
    }

    /// The reply to `text` in `scope`, if a rule matches.
    ///
    /// `exact` and `contains` rules compare width-folded text (and
    /// lower-cased unless case-sensitive); `regex` rules see the message as
    /// received.
    #[must_use]
    pub fn find(&self, text: &str, scope: &str) -> Option<KeywordReply<'_>> {
        // Best rank found so far among exact and contains rules.
        let mut best: Option<usize> = None;
        let mut consider = |rule: usize| {
            if let (Some(&rank), Some(r)) = (self.rank.get(rule), self.rules.get(rule))
                && best.is_none_or(|b| rank < b)
                && scopes_cover(&r.scopes, scope)
            {
                best = Some(rank);
            }
        };
        if !self.exact_folded.is_empty() || self.contains_folded.is_some() {
            let folded = fold(text, true);
            for &rule in self.exact_folded.get(folded.trim()).into_iter().flatten() {
                consider(rule);
            }
            if let Some(s) = &self.contains_folded {
                s.each_match(&folded, &mut consider);
            }
        }
        if !self.exact_cased.is_empty() || self.contains_cased.is_some() {
            let cased = fold(text, false);
            for &rule in self.exact_cased.get(cased.trim()).into_iter().flatten() {
                consider(rule);
            }
            if let Some(s) = &self.contains_cased {
                s.each_match(&cased, &mut consider);
            }
        }

        for (rule_index, patterns) in &self.regexes {
            let Some(&rank) = self.rank.get(*rule_index) else {
                continue;
            };
            if best.is_some_and(|b| b <= rank) {
                break;
            }
            let Some(rule) = self.rules.get(*rule_index) else {
                continue;
            };
            if !scopes_cover(&rule.scopes, scope) {
                continue;
            }
            for re in patterns {
                if rule.expands {
                    if let Some(caps) = re.captures(text) {
                        let mut reply = String::with_capacity(rule.reply.len() + 16);
                        caps.expand(&rule.reply, &mut reply);
                        return Some(KeywordReply {
                            id: &rule.id,
                            reply: Cow::Owned(reply),
                        });
                    }
                } else if re.is_match(text) {
                    return Some(KeywordReply {
                        id: &rule.id,
                        reply: Cow::Borrowed(&rule.reply),
                    });
                }
            }
        }

        let rule = self.rules.get(*self.order.get(best?)?)?;
        Some(KeywordReply {
            id: &rule.id,
            reply: Cow::Borrowed(&rule.reply),
        })
    }

    /// The number of rules.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, kind: KeywordMatch, patterns: &[&str], reply: &str) -> KeywordRuleConfig {
        KeywordRuleConfig {
            id: id.to_owned(),
            kind,
            patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
            reply: reply.to_owned(),
            priority: 0,
            scopes: Vec::new(),
            case_sensitive: false,
        }
    }

    #[test]
    fn exact_is_trimmed_and_folded() {
        let k = KeywordReplies::build(&[rule("price", KeywordMatch::Exact, &[" Price "], "10元")])
            .unwrap();
        assert_eq!(k.find("price", "web").unwrap().reply, "10元");
        assert_eq!(k.find("\u{3000}ＰＲＩＣＥ\n", "web").unwrap().id, "price");
        assert!(k.find("the price", "web").is_none());
    }

    #[test]
    fn duplicate_patterns_across_rules() {
        let mut high = rule("high", KeywordMatch::Contains, &["价格"], "high");
        high.priority = 1;
        let k = KeywordReplies::build(&[
            rule("low", KeywordMatch::Contains, &["价格", "价格"], "low"),
            high,
        ])
        .unwrap();
        assert_eq!(k.find("价格多少", "web").unwrap().id, "high");
    }

    #[test]
    fn regex_without_captures_is_borrowed() {
        let k =
            KeywordReplies::build(&[rule("r", KeywordMatch::Regex, &["^hi$"], "hello")]).unwrap();
        assert!(matches!(
            k.find("HI", "web").unwrap().reply,
            Cow::Borrowed("hello")
        ));
        assert!(k.find("hi there", "web").is_none());
    }
}
