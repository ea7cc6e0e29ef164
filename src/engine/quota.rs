//! Quota arithmetic: the day boundary in the configured timezone, token estimates, and what
//! an answer costs. Pure functions; the store does the bookkeeping.

use chatrelay_core::Usage;

use crate::config::ModelConfig;

/// A cheap, conservative token estimate: about 4 ASCII characters per token, one token per
/// other character (CJK text is close to that with common tokenizers), plus a small overhead
/// per message. Only used to trim history and to reserve; charges use the upstream's usage.
#[must_use]
pub fn estimate_tokens(text: &str) -> u64 {
    let mut ascii = 0u64;
    let mut other = 0u64;
    for c in text.chars() {
        if c.is_ascii() {
            ascii += 1;
        } else {
            other += 1;
        }
    }
    ascii.div_ceil(4) + other + 4
}

/// Answer length assumed when reserving, if the request does not cap it.
pub const ASSUMED_COMPLETION_TOKENS: u64 = 1000;

/// An unlimited request to a per-token-priced model gets the affordable answer length as its
/// upstream limit when it is below this; every chat model writes at least this many tokens, so
/// such a limit is never refused as too large.
pub const UNCAPPED_CEILING: u64 = 4096;

/// [`estimate_tokens`] of a text that arrives in pieces, without re-reading it (no per-message
/// overhead: this counts answer text only).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenCount {
    ascii: u64,
    other: u64,
}

impl TokenCount {
    /// Counts one more piece.
    pub fn push(&mut self, piece: &str) {
        for c in piece.chars() {
            if c.is_ascii() {
                self.ascii += 1;
            } else {
                self.other += 1;
            }
        }
    }

    /// The estimate so far.
    #[must_use]
    pub fn tokens(&self) -> u64 {
        self.ascii.div_ceil(4).saturating_add(self.other)
    }
}

/// Credits to reserve before the call: the flat price plus the per-token price of the prompt
/// and the longest expected answer.
#[must_use]
pub fn estimate_cost(model: &ModelConfig, prompt_tokens: u64, max_completion: Option<u64>) -> u64 {
    let usage = Usage {
        prompt_tokens,
        completion_tokens: max_completion.unwrap_or(ASSUMED_COMPLETION_TOKENS),
    };
    actual_cost(model, &usage)
}

/// The longest answer (in tokens) that `available` credits pay for, after the flat price,
/// `surcharge` (pictures) and `prompt_tokens`: `None` for a flat-priced model, whose price
/// does not grow with the answer. The engine sends this as the upstream's completion limit, so
/// an answer never costs more than its payer has.
#[must_use]
pub fn affordable_completion(
    model: &ModelConfig,
    prompt_tokens: u64,
    surcharge: u64,
    available: u64,
) -> Option<u64> {
    let per_1k = model.credits_per_1k_tokens;
    if per_1k == 0 {
        return None;
    }
    // cost = fixed + ceil(per_1k * (prompt + c) / 1000) <= available
    //   <=> prompt + c <= floor(1000 * (available - fixed) / per_1k)
    let Some(left) = available.checked_sub(model.credits.saturating_add(surcharge)) else {
        return Some(0);
    };
    let tokens = left.saturating_mul(1000) / per_1k;
    Some(tokens.saturating_sub(prompt_tokens))
}

/// Credits an answer costs: the flat price plus `credits_per_1k_tokens` per started 1,000
/// tokens of prompt and answer (rounded up, so a cheap answer is never free by rounding).
#[must_use]
pub fn actual_cost(model: &ModelConfig, usage: &Usage) -> u64 {
    let per_token = model
        .credits_per_1k_tokens
        .saturating_mul(usage.total())
        .div_ceil(1000);
    model.credits.saturating_add(per_token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(credits: u64, per_1k: u64) -> ModelConfig {
        ModelConfig {
            name: "m".into(),
            credits,
            credits_per_1k_tokens: per_1k,
            ..ModelConfig::default()
        }
    }

    #[test]
    fn costs() {
        let usage = Usage {
            prompt_tokens: 14,
            completion_tokens: 30,
        };
        assert_eq!(actual_cost(&model(1, 0), &usage), 1);
        assert_eq!(actual_cost(&model(1, 2), &usage), 2); // 88/1000 rounds up to 1
        assert_eq!(
            actual_cost(
                &model(0, 10),
                &Usage {
                    prompt_tokens: 1500,
                    completion_tokens: 500
                }
            ),
            20
        );
        assert_eq!(estimate_cost(&model(2, 1), 0, Some(1000)), 3);
        assert!(estimate_cost(&model(1, 1), 100, None) >= actual_cost(&model(1, 1), &usage));
    }

    #[test]
    fn the_affordable_answer_never_costs_more_than_the_balance() {
        assert_eq!(affordable_completion(&model(1, 0), 10, 0, 5), None);
        // 2 credits, 1 flat, 1 per 1k: one started thousand of prompt + answer.
        assert_eq!(affordable_completion(&model(1, 1), 100, 0, 2), Some(900));
        assert_eq!(affordable_completion(&model(3, 1), 100, 0, 2), Some(0));
        assert_eq!(affordable_completion(&model(1, 1), 100, 5, 2), Some(0));
        assert_eq!(affordable_completion(&model(0, 10), 2000, 0, 1), Some(0));
        for (flat, per_1k, prompt, surcharge, available) in [
            (1, 1, 100, 0, 2),
            (0, 7, 33, 0, 50),
            (2, 13, 999, 1, 1000),
            (5, 1000, 1, 0, 9),
        ] {
            let m = model(flat, per_1k);
            let c = affordable_completion(&m, prompt, surcharge, available).unwrap();
            let cost = |c| {
                actual_cost(
                    &m,
                    &Usage {
                        prompt_tokens: prompt,
                        completion_tokens: c,
                    },
                ) + surcharge
            };
            assert!(cost(c) <= available, "{flat} {per_1k} {prompt}: {c}");
            assert!(
                cost(c + 1) > available,
                "{flat} {per_1k} {prompt}: {c} is the most"
            );
        }
    }

    #[test]
    fn token_estimate_counts_cjk_per_char() {
        assert_eq!(estimate_tokens(""), 4);
        assert_eq!(estimate_tokens("abcd"), 5);
        assert_eq!(estimate_tokens("你好"), 6);
    }
}
