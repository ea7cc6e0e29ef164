//! The sensitive-word filter: `[[filters]]` configuration, [`ContentFilter`]
//! for whole texts and [`StreamCheck`] for answers that arrive in pieces.
//!
//! All words of all rules share one leftmost-longest Aho-Corasick automaton
//! over their normal forms, so a check costs one normalisation plus one
//! scan whatever the number of words.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aho_corasick::{AhoCorasick, Input, MatchKind};
use serde::{Deserialize, Serialize};

use crate::normalize::{EXCERPT_CONTEXT_CHARS, excerpt, floor_boundary, normalize, normalize_each};
use crate::{RuleError, check_ids, check_scopes, scopes_cover};

/// The refusal shown when a rule sets none.
pub const DEFAULT_REFUSAL: &str = "抱歉，这个问题我无法回答。";

/// The longest word, in normalised characters. Bounds the overlap a
/// [`StreamCheck`] rescans, and so its cost per piece.
pub const MAX_WORD_CHARS: usize = 64;

/// Bytes of already-checked answer text a [`StreamCheck`] lets pile up
/// before dropping them, so trimming stays amortised linear.
const STREAM_TRIM_BYTES: usize = 4096;

/// Which side of a conversation a filter rule checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyTo {
    /// Only the user's messages.
    Input,
    /// Only the LLM's answers.
    Output,
    /// Both (the default).
    #[default]
    Both,
}

impl ApplyTo {
    /// Whether a rule with this setting checks text going in `dir`.
    #[must_use]
    pub fn covers(self, dir: Direction) -> bool {
        matches!(
            (self, dir),
            (Self::Both, _) | (Self::Input, Direction::Input) | (Self::Output, Direction::Output)
        )
    }
}

/// The direction of a checked text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A user's message, before it reaches the LLM.
    Input,
    /// An LLM's answer, before it reaches the user.
    Output,
}

/// One `[[filters]]` table: a set of words and what to do when one is hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterRuleConfig {
    /// Names the rule in logs and errors; `[A-Za-z0-9_-]+`, unique.
    pub id: String,
    /// Words given inline.
    #[serde(default)]
    pub words: Vec<String>,
    /// Files of words: UTF-8, one word per line, blank lines and lines
    /// starting with `#` ignored. Relative paths are resolved against the
    /// directory given to [`ContentFilter::build`] (the config file's).
    #[serde(default)]
    pub word_files: Vec<PathBuf>,
    /// What the user sees instead of the question's answer, or instead of
    /// the rest of an answer, when this rule hits.
    #[serde(default = "default_refusal")]
    pub refusal: String,
    /// Which texts the rule checks; `both` by default.
    #[serde(default)]
    pub apply_to: ApplyTo,
    /// Where the rule applies (see [`crate::scope_matches`]); empty means
    /// everywhere.
    #[serde(default)]
    pub scopes: Vec<String>,
}

fn default_refusal() -> String {
    DEFAULT_REFUSAL.to_owned()
}

impl FilterRuleConfig {
    /// A rule named `id` with no words and every other field at its
    /// default.
    #[must_use]
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            words: Vec::new(),
            word_files: Vec::new(),
            refusal: default_refusal(),
            apply_to: ApplyTo::default(),
            scopes: Vec::new(),
        }
    }
}

/// A filter hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The id of the rule that hit.
    pub rule: String,
    /// The word as configured (before normalisation).
    pub word: String,
    /// The rule's refusal text.
    pub refusal: String,
    /// The matched part of the original text with up to 10 characters of
    /// context either side (at most about 80 characters, line breaks turned
    /// into spaces), for logs and moderation.
    pub excerpt: String,
}

/// What the filter keeps of a rule.
#[derive(Debug)]
struct Rule {
    id: String,
    refusal: String,
    apply_to: ApplyTo,
    scopes: Vec<String>,
}

impl Rule {
    fn applies(&self, dir: Direction, scope: &str) -> bool {
        self.apply_to.covers(dir) && scopes_cover(&self.scopes, scope)
    }
}

/// A (rule, word) that a match of the automaton may stand for.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// Index into `ContentFilter::rules`.
    rule: usize,
    /// Index into `ContentFilter::words`.
    word: usize,
    /// Length of the word's normal form, in bytes.
    len: usize,
}

/// A match in normalised text, and the rule and word it stands for.
#[derive(Debug, Clone, Copy)]
struct Found {
    start: usize,
    end: usize,
    candidate: Candidate,
}

/// The compiled sensitive-word filter of all `[[filters]]` rules.
///
/// Cheap to share: keep it in an `Arc`, check from any thread, and swap in
/// a rebuilt one on reload (running [`StreamCheck`]s keep the one they
/// started with).
#[derive(Default)]
pub struct ContentFilter {
    rules: Vec<Rule>,
    /// `None` when there are no words.
    automaton: Option<AhoCorasick>,
    /// Per automaton pattern: the (rule, word) pairs it stands for, then
    /// those of the shorter patterns that are its prefixes, longest first.
    /// Leftmost-longest search reports only the longest word at a position;
    /// when its rules do not apply (direction, scope) a shorter word
    /// starting there may still belong to a rule that does.
    candidates: Vec<Box<[Candidate]>>,
    /// The configured words, indexed by `Candidate::word`.
    words: Vec<String>,
    /// Normalised chars a [`StreamCheck`] must rescan: longest word − 1.
    overlap_chars: usize,
}

impl fmt::Debug for ContentFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The automaton and word list can be huge: show a summary.
        f.debug_struct("ContentFilter")
            .field(
                "rules",
                &self.rules.iter().map(|r| &r.id).collect::<Vec<_>>(),
            )
            .field("words", &self.word_count())
            .finish_non_exhaustive()
    }
}

/// Collects the words of one rule while the filter is built.
struct Collector<'a> {
    errors: &'a mut Vec<RuleError>,
    /// Normal form → pattern id.
    by_norm: HashMap<String, usize>,
    /// Normal forms, by pattern id.
    patterns: Vec<String>,
    /// Per pattern id: (rule, word) pairs.
    owners: Vec<Vec<(usize, usize)>>,
    /// Configured words.
    words: Vec<String>,
}

impl Collector<'_> {
    /// Adds `word` to rule `rule`; returns whether it is a valid word.
    fn add(&mut self, rule: usize, word: &str, key: &str, line: Option<usize>) -> bool {
        let norm = normalize(word);
        let chars = norm.chars().count();
        let problem = if norm.is_empty() {
            Some(format!(
                "word {word:?} is empty once spaces, punctuation and invisible characters are dropped"
            ))
        } else if chars > MAX_WORD_CHARS {
            Some(format!(
                "word {word:?} has {chars} characters once normalised; the limit is {MAX_WORD_CHARS}"
            ))
        } else {
            None
        };
        if let Some(message) = problem {
            self.errors.push(RuleError {
                key: key.to_owned(),
                line,
                message,
            });
            return false;
        }
        let pattern = match self.by_norm.get(&norm) {
            Some(&p) => p,
            None => {
                let p = self.patterns.len();
                self.by_norm.insert(norm.clone(), p);
                self.patterns.push(norm);
                self.owners.push(Vec::new());
                p
            }
        };
        let Some(owners) = self.owners.get_mut(pattern) else {
            return false;
        };
        // Rules are collected one after the other, so a word this rule
        // already has is the last owner: the same word twice in a rule (or
        // `ABC` and `abc`) is kept once.
        if owners.last().is_none_or(|&(r, _)| r != rule) {
            owners.push((rule, self.words.len()));
            self.words.push(word.to_owned());
        }
        true
    }

    /// Reads one word file into rule `rule`; returns how many valid words
    /// it held, or `None` when it could not be read.
    fn add_file(&mut self, rule: usize, path: &Path, key: &str) -> Option<usize> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                self.errors.push(RuleError::new(
                    key,
                    format!("cannot read {}: {e}", path.display()),
                ));
                return None;
            }
        };
        let mut count = 0;
        // Split by hand rather than with `lines()` on a `String`, so that a
        // bad byte is reported with its line instead of failing the file.
        for (n, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line_no = n + 1;
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let text = match std::str::from_utf8(raw) {
                Ok(t) => t,
                Err(e) => {
                    self.errors.push(RuleError {
                        key: key.to_owned(),
                        line: Some(line_no),
                        message: format!("line is not valid UTF-8 ({e}) in {}", path.display()),
                    });
                    continue;
                }
            };
            let text = if n == 0 {
                text.strip_prefix('\u{FEFF}').unwrap_or(text)
            } else {
                text
            };
            let text = text.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            if self.add(rule, text, key, Some(line_no)) {
                count += 1;
            }
        }
        Some(count)
    }
}

impl ContentFilter {
    /// Compiles `rules`, reading their word files (relative paths resolved
    /// against `base_dir`).
    ///
    /// # Errors
    /// Every problem found, not just the first: a missing, invalid or
    /// duplicate id, an empty refusal or scope, an unreadable word file, a
    /// word-file line that is not UTF-8, a word that normalises to nothing
    /// or to more than [`MAX_WORD_CHARS`] characters, a rule with no words.
    pub fn build(rules: &[FilterRuleConfig], base_dir: &Path) -> Result<Self, Vec<RuleError>> {
        let mut errors = Vec::new();
        check_ids("filters", rules.iter().map(|r| r.id.as_str()), &mut errors);
        let mut c = Collector {
            errors: &mut errors,
            by_norm: HashMap::new(),
            patterns: Vec::new(),
            owners: Vec::new(),
            words: Vec::new(),
        };
        for (i, rule) in rules.iter().enumerate() {
            let prefix = format!("filters[{i}]");
            check_scopes(&prefix, &rule.scopes, c.errors);
            if rule.refusal.trim().is_empty() {
                c.errors.push(RuleError::new(
                    format!("{prefix}.refusal"),
                    "refusal must not be empty",
                ));
            }
            let errors_before = c.errors.len();
            let mut count = 0;
            for (j, word) in rule.words.iter().enumerate() {
                if c.add(i, word, &format!("{prefix}.words[{j}]"), None) {
                    count += 1;
                }
            }
            for (k, path) in rule.word_files.iter().enumerate() {
                let key = format!("{prefix}.word_files[{k}]");
                count += c.add_file(i, &base_dir.join(path), &key).unwrap_or(0);
            }
            if rule.words.is_empty() && rule.word_files.is_empty() {
                c.errors.push(RuleError::new(
                    format!("{prefix}.words"),
                    "the rule has no words: set `words` or `word_files`",
                ));
            } else if count == 0 && c.errors.len() == errors_before {
                c.errors.push(RuleError::new(
                    format!("{prefix}.words"),
                    "the rule has no words: its word files hold only comments and blank lines",
                ));
            }
        }
        let Collector {
            patterns,
            owners,
            words,
            by_norm,
            ..
        } = c;
        if !errors.is_empty() {
            return Err(errors);
        }

        let automaton = if patterns.is_empty() {
            None
        } else {
            let built = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .map_err(|e| {
                    vec![RuleError::new(
                        "filters",
                        format!("cannot compile the word list: {e}"),
                    )]
                })?;
            Some(built)
        };

        let candidates = patterns
            .iter()
            .zip(&owners)
            .map(|(pattern, own)| {
                let mut list: Vec<Candidate> = own
                    .iter()
                    .map(|&(rule, word)| Candidate {
                        rule,
                        word,
                        len: pattern.len(),
                    })
                    .collect();
                let ends: Vec<usize> = pattern.char_indices().skip(1).map(|(b, _)| b).collect();
                for &end in ends.iter().rev() {
                    let prefix_owners = pattern
                        .get(..end)
                        .and_then(|p| by_norm.get(p))
                        .and_then(|&q| owners.get(q));
                    for &(rule, word) in prefix_owners.into_iter().flatten() {
                        list.push(Candidate {
                            rule,
                            word,
                            len: end,
                        });
                    }
                }
                list.into_boxed_slice()
            })
            .collect();
        let longest = patterns
            .iter()
            .map(|p| p.chars().count())
            .max()
            .unwrap_or(0);

        Ok(Self {
            rules: rules
                .iter()
                .map(|r| Rule {
                    id: r.id.clone(),
                    refusal: r.refusal.clone(),
                    apply_to: r.apply_to,
                    scopes: r.scopes.clone(),
                })
                .collect(),
            automaton,
            candidates,
            words,
            overlap_chars: longest.saturating_sub(1),
        })
    }

    /// Whether the filter has no words (and so never hits).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.automaton.is_none()
    }

    /// The number of distinct words, once normalised, over all rules.
    #[must_use]
    pub fn word_count(&self) -> usize {
        self.candidates.len()
    }

    /// The number of rules.
    #[must_use]
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The first hit in `text` of a rule that applies to `dir` in `scope`:
    /// the leftmost word, the longest one when several start there, the
    /// first-listed rule when several rules have it.
    #[must_use]
    pub fn check(&self, text: &str, dir: Direction, scope: &str) -> Option<Hit> {
        let automaton = self.automaton.as_ref()?;
        if !self.rules.iter().any(|r| r.applies(dir, scope)) {
            return None;
        }
        let norm = normalize(text);
        let found = self.find(automaton, &norm, 0, |rule| {
            self.rules.get(rule).is_some_and(|r| r.applies(dir, scope))
        })?;
        // Normalise again, this time tracking offsets: only hits pay for it.
        let (mut start, mut end) = (None, None);
        let mut at = 0;
        normalize_each(text, 0, |c, s, e| {
            if at == found.start && start.is_none() {
                start = Some(s);
            }
            at += c.len_utf8();
            if at == found.end {
                end = Some(e);
            }
        });
        let start = start.unwrap_or(0);
        let end = end.unwrap_or(text.len());
        self.hit(found.candidate, excerpt(text, start, end))
    }

    /// A checker for an answer that arrives in pieces, applying the rules
    /// for [`Direction::Output`] in `scope`. Same as [`StreamCheck::new`].
    #[must_use]
    pub fn stream(self: &Arc<Self>, scope: &str) -> StreamCheck {
        StreamCheck::new(Arc::clone(self), scope)
    }

    /// The first match in `hay` (normalised text) ending after `min_end`
    /// whose rule passes `applies`.
    fn find(
        &self,
        automaton: &AhoCorasick,
        hay: &str,
        min_end: usize,
        applies: impl Fn(usize) -> bool,
    ) -> Option<Found> {
        let mut at = 0;
        while at < hay.len() {
            let m = automaton
                .try_find(Input::new(hay).span(at..hay.len()))
                .ok()
                .flatten()?;
            let start = m.start();
            let candidates = self.candidates.get(m.pattern().as_usize())?;
            if let Some(&candidate) = candidates
                .iter()
                .find(|c| start + c.len > min_end && applies(c.rule))
            {
                return Some(Found {
                    start,
                    end: start + candidate.len,
                    candidate,
                });
            }
            // Every word starting at `start` was a candidate: go on from the
            // next char, not from the match's end, as a word of an applying
            // rule may start inside this match.
            let step = hay
                .get(start..)
                .and_then(|s| s.chars().next())
                .map_or(1, char::len_utf8);
            at = start + step;
        }
        None
    }

    fn hit(&self, candidate: Candidate, excerpt: String) -> Option<Hit> {
        let rule = self.rules.get(candidate.rule)?;
        Some(Hit {
            rule: rule.id.clone(),
            word: self.words.get(candidate.word)?.clone(),
            refusal: rule.refusal.clone(),
            excerpt,
        })
    }
}

/// One normalised char of a [`StreamCheck`]'s window.
#[derive(Debug, Clone, Copy)]
struct Span {
    /// Byte offset in the window.
    norm: usize,
    /// Byte range of its original char in the whole answer.
    start: usize,
    end: usize,
}

/// Checks an answer as it streams, piece by piece, against the
/// [`Direction::Output`] rules of one scope.
///
/// Each [`push`](Self::push) scans only the new piece plus the last
/// (longest word − 1) normalised characters before it, so a word split
/// across pieces is caught and the total cost stays linear in the answer's
/// length. Only a bounded tail of the answer is kept (for excerpts).
///
/// Owns an `Arc` of its filter: a reload that swaps the daemon's filter
/// does not disturb answers already streaming.
pub struct StreamCheck {
    filter: Arc<ContentFilter>,
    /// Per rule: whether it applies to output in this scope.
    applies: Vec<bool>,
    /// Whether any rule applies at all; if not, pushes are free.
    active: bool,
    /// The normalised tail still needed plus the newest piece.
    window: String,
    /// One per char of `window`.
    spans: Vec<Span>,
    /// The end of the original answer, for excerpts.
    tail: String,
    /// Offset of `tail` in the whole answer.
    tail_base: usize,
    /// Bytes pushed so far.
    total: usize,
}

impl fmt::Debug for StreamCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamCheck")
            .field("active", &self.active)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl StreamCheck {
    /// A checker of the output rules of `filter` that apply in `scope`.
    #[must_use]
    pub fn new(filter: Arc<ContentFilter>, scope: &str) -> Self {
        let applies: Vec<bool> = filter
            .rules
            .iter()
            .map(|r| r.applies(Direction::Output, scope))
            .collect();
        let active = !filter.is_empty() && applies.iter().any(|&a| a);
        Self {
            filter,
            applies,
            active,
            window: String::new(),
            spans: Vec::new(),
            tail: String::new(),
            tail_base: 0,
            total: 0,
        }
    }

    /// Appends `piece` to the answer and returns the first hit that it
    /// completes. Each occurrence of a word is reported once, by the push
    /// whose piece holds its last character; the caller usually stops the
    /// answer at the first hit.
    pub fn push(&mut self, piece: &str) -> Option<Hit> {
        let base = self.total;
        self.total += piece.len();
        if !self.active || piece.is_empty() {
            return None;
        }
        self.tail.push_str(piece);
        let checked = self.window.len();
        let (window, spans) = (&mut self.window, &mut self.spans);
        normalize_each(piece, base, |c, start, end| {
            spans.push(Span {
                norm: window.len(),
                start,
                end,
            });
            window.push(c);
        });
        let hit = if self.window.len() > checked {
            self.find_hit(checked)
        } else {
            None
        };
        self.trim();
        hit
    }

    /// Total bytes pushed so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether nothing has been pushed yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The first hit in the window that ends after `checked` (the part
    /// scanned by earlier pushes).
    fn find_hit(&self, checked: usize) -> Option<Hit> {
        let automaton = self.filter.automaton.as_ref()?;
        let found = self.filter.find(automaton, &self.window, checked, |rule| {
            self.applies.get(rule).copied().unwrap_or(false)
        })?;
        let first = self.spans.partition_point(|s| s.norm < found.start);
        let last = self
            .spans
            .partition_point(|s| s.norm < found.end)
            .saturating_sub(1);
        let start = self.spans.get(first).map_or(0, |s| s.start);
        let end = self.spans.get(last).map_or(self.total, |s| s.end);
        let excerpt = excerpt(
            &self.tail,
            start.saturating_sub(self.tail_base),
            end.saturating_sub(self.tail_base),
        );
        self.filter.hit(found.candidate, excerpt)
    }

    /// Drops what later pushes no longer need: normalised chars beyond the
    /// overlap, and original text before their context.
    fn trim(&mut self) {
        let keep = self.filter.overlap_chars;
        if self.spans.len() > keep {
            let cut = self.spans.len() - keep;
            let cut_byte = self.spans.get(cut).map_or(self.window.len(), |s| s.norm);
            self.spans.drain(..cut);
            self.window.drain(..cut_byte);
            for s in &mut self.spans {
                s.norm -= cut_byte;
            }
        }
        let oldest = self.spans.first().map_or(self.total, |s| s.start);
        let rel = floor_boundary(&self.tail, oldest.saturating_sub(self.tail_base));
        let keep_from = self.tail.get(..rel).map_or(0, |before| {
            before
                .char_indices()
                .rev()
                .nth(EXCERPT_CONTEXT_CHARS - 1)
                .map_or(0, |(i, _)| i)
        });
        // Drop in big chunks only, so the copying stays amortised linear.
        if keep_from >= STREAM_TRIM_BYTES && keep_from * 2 >= self.tail.len() {
            self.tail.drain(..keep_from);
            self.tail_base += keep_from;
        }
    }
}

#[cfg(test)]
mod tests;
