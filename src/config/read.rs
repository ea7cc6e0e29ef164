//! Reading one configuration section so that `check-config` reports **every** problem in it,
//! in the operator's words: a wrong type, a negative number, an unknown key ("did you mean
//! `model`?") and a missing key are all listed, each under its own key (`products[0].price_fen`).
//!
//! serde stops at the first error. So a section is read again and again: each round reports
//! the error it stops at, then takes the offending value out (so the default applies) or, for a
//! required key, puts a stand-in in, until the section reads. Array elements are never removed,
//! so every index reported matches the operator's file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{self, DeserializeOwned, Visitor};

/// One thing wrong with the configuration, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key (`llm.models[0].credits`), or `(file)` for the file itself.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// A [`Problem`] with `key` and `message`.
pub fn problem(key: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        key: key.into(),
        message: message.into(),
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// At most this many rounds per section (each round fixes one thing).
const MAX_ROUNDS: usize = 200;

/// One step of a path into the TOML document.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seg {
    Key(String),
    Index(usize),
}

/// `llm.models[0].credits`
fn render(segs: &[Seg]) -> String {
    let mut out = String::new();
    for s in segs {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The same path without indices, to look up which struct lives there.
fn shape(segs: &[Seg]) -> String {
    let keys: Vec<&str> = segs
        .iter()
        .filter_map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
        .collect();
    keys.join(".")
}

fn from_error_path(name: &str, path: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    let mut segs = vec![Seg::Key(name.to_owned())];
    for s in path.iter() {
        match s {
            Segment::Seq { index } => segs.push(Seg::Index(*index)),
            Segment::Map { key } => segs.push(Seg::Key(key.clone())),
            Segment::Enum { variant } => segs.push(Seg::Key(variant.clone())),
            Segment::Unknown => {}
        }
    }
    segs
}

fn from_ignored_path(name: &str, path: &serde_ignored::Path<'_>) -> Vec<Seg> {
    fn walk(p: &serde_ignored::Path<'_>, out: &mut Vec<Seg>) {
        use serde_ignored::Path as P;
        match p {
            P::Root => {}
            P::Seq { parent, index } => {
                walk(parent, out);
                out.push(Seg::Index(*index));
            }
            P::Map { parent, key } => {
                walk(parent, out);
                out.push(Seg::Key(key.clone()));
            }
            P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
                walk(parent, out);
            }
        }
    }
    let mut segs = vec![Seg::Key(name.to_owned())];
    walk(path, &mut segs);
    segs
}

/// The value at `segs` (which start with the section's name, not part of `value`).
fn get_mut<'a>(value: &'a mut toml::Value, segs: &[Seg]) -> Option<&'a mut toml::Value> {
    let mut v = value;
    for s in segs.iter().skip(1) {
        v = match (s, v) {
            (Seg::Key(k), toml::Value::Table(t)) => t.get_mut(k)?,
            (Seg::Index(i), toml::Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Takes the key at `segs` out of its table. Array elements are not removed (that would shift
/// the indices of the ones after it).
fn remove(value: &mut toml::Value, segs: &[Seg]) -> bool {
    let Some((Seg::Key(last), parent)) = segs.split_last() else {
        return false;
    };
    if parent.is_empty() {
        return false;
    }
    match get_mut(value, parent) {
        Some(toml::Value::Table(t)) => t.remove(last).is_some(),
        _ => false,
    }
}

/// Stand-ins tried in turn for a required key that is missing or had to be taken out.
fn stand_in(n: usize) -> Option<toml::Value> {
    Some(match n {
        0 => toml::Value::String(String::new()),
        1 => toml::Value::Integer(0),
        2 => toml::Value::Boolean(false),
        3 => toml::Value::Array(Vec::new()),
        4 => toml::Value::Table(toml::Table::new()),
        _ => return None,
    })
}

/// Puts stand-in number `n` at `segs` and counts it; false when none is left to try.
fn next_stand_in(value: &mut toml::Value, segs: &[Seg], n: &mut usize) -> bool {
    let Some(v) = stand_in(*n) else {
        return false;
    };
    *n += 1;
    set(value, segs, v)
}

fn set(value: &mut toml::Value, segs: &[Seg], v: toml::Value) -> bool {
    let Some((Seg::Key(last), parent)) = segs.split_last() else {
        return false;
    };
    match get_mut(value, parent) {
        Some(toml::Value::Table(t)) => {
            t.insert(last.clone(), v);
            true
        }
        _ => false,
    }
}

/// The text between the first pair of backticks after `after`.
fn ticked<'a>(msg: &'a str, after: &str) -> Option<&'a str> {
    let rest = &msg[msg.find(after)? + after.len()..];
    let start = rest.find('`')? + 1;
    let len = rest[start..].find('`')?;
    Some(&rest[start..start + len])
}

/// Every backticked word of serde's "expected `a`", "expected `a` or `b`", "expected one of
/// `a`, `b`, `c`".
fn one_of(msg: &str) -> Vec<String> {
    let Some(at) = msg.find("expected") else {
        return Vec::new();
    };
    msg[at..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// serde's name of an expected type, in the operator's words.
fn kind_words(expected: &str) -> String {
    let e = expected.trim();
    match e {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, 0 or more".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a string" | "a borrowed string" | "string" => "text in quotes".to_owned(),
        "a boolean" | "bool" => "true or false".to_owned(),
        "a sequence" => "a list [ ... ]".to_owned(),
        "a map" => "a table".to_owned(),
        "a character" | "char" => "one character".to_owned(),
        _ if e.starts_with("struct ") || e.starts_with("a map") => "a table".to_owned(),
        _ if e.starts_with("a sequence") || e.starts_with("tuple") => "a list [ ... ]".to_owned(),
        _ => e.to_owned(),
    }
}

/// What the operator wrote, from serde's "invalid type: string \"x\"".
fn found_words(found: &str) -> String {
    let f = found.trim();
    if let Some(s) = f.strip_prefix("string ") {
        return format!("the text {s}");
    }
    for (serde, ours) in [("integer ", ""), ("floating point ", ""), ("boolean ", "")] {
        if let Some(v) = f.strip_prefix(serde) {
            return format!("{ours}{}", v.trim_matches('`'));
        }
    }
    match f {
        "sequence" => "a list".to_owned(),
        "map" => "a table".to_owned(),
        other => other.to_owned(),
    }
}

/// A type or value error in the operator's words: "must be a whole number, 0 or more (found -5)".
fn type_words(msg: &str) -> String {
    let (head, expected) = match msg.rsplit_once(", expected ") {
        Some((h, e)) => (h, e),
        None => return msg.to_owned(),
    };
    let found = head
        .strip_prefix("invalid type: ")
        .or_else(|| head.strip_prefix("invalid value: "))
        .or_else(|| head.strip_prefix("invalid length "));
    match found {
        Some(f) => format!(
            "must be {} (found {})",
            kind_words(expected),
            found_words(f)
        ),
        None => msg.to_owned(),
    }
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// The closest of `known` to `word`, when it is close enough to be a typo.
fn closest<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word_l = word.to_ascii_lowercase();
    known
        .into_iter()
        .map(|k| (distance(&word_l, &k.to_ascii_lowercase()), k))
        .filter(|(d, k)| *d <= (k.len().max(word.len()).div_ceil(3)).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// The closest of `known` to `word`, when it looks like a typo of it.
#[must_use]
pub fn closest_known<'a>(word: &str, known: &'a [String]) -> Option<&'a str> {
    closest(word, known.iter().map(String::as_str))
}

fn unknown_message(word: &str, known: &[String]) -> String {
    match closest_known(word, known) {
        Some(k) => format!("unknown key; did you mean `{k}`?"),
        None => "unknown key".to_owned(),
    }
}

/// Collects the field names a type's derived `Deserialize` asks for, without any input: it
/// answers `deserialize_struct` by recording the names (and looks through `Option` and lists).
struct FieldNames<'a>(&'a mut Vec<String>);

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field names collected")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> de::Deserializer<'de> for FieldNames<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        self.0.extend(fields.iter().map(|f| (*f).to_owned()));
        Err(Stop)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_some(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_seq(OneElement(Some(self)))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct tuple tuple_struct map enum identifier ignored_any
    }
}

struct OneElement<'a>(Option<FieldNames<'a>>);

impl<'de> de::SeqAccess<'de> for OneElement<'_> {
    type Error = Stop;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Stop> {
        match self.0.take() {
            Some(d) => seed.deserialize(d).map(Some),
            None => Ok(None),
        }
    }
}

/// The keys a struct (or a list or option of one) accepts.
#[must_use]
pub fn field_names<T: DeserializeOwned>() -> Vec<String> {
    let mut names = Vec::new();
    let _ = T::deserialize(FieldNames(&mut names));
    names
}

/// Which keys are known at a table: by the path's shape (`llm.models`), from the types.
pub type KnownKeys = fn(&str) -> Vec<String>;

/// Reads section `name` from `root`, reporting every problem in it; what cannot be read
/// takes its default. `known` gives the keys of the table at a path, for "did you mean".
pub fn read<T: DeserializeOwned + Default>(
    root: &mut toml::Table,
    name: &str,
    problems: &mut Vec<Problem>,
    known: KnownKeys,
) -> T {
    let Some(value) = root.remove(name) else {
        return T::default();
    };
    let mut r = Reader {
        name,
        value,
        problems,
        reported: BTreeSet::new(),
        stand_ins: BTreeMap::new(),
    };
    let mut unknown: BTreeMap<String, Vec<Seg>> = BTreeMap::new();
    for _ in 0..MAX_ROUNDS {
        let mut ignored = Vec::new();
        let mut record = |p: serde_ignored::Path<'_>| ignored.push(from_ignored_path(name, &p));
        let de = serde_ignored::Deserializer::new(r.value.clone(), &mut record);
        let result: Result<T, _> = serde_path_to_error::deserialize(de);
        for segs in ignored {
            unknown.entry(render(&segs)).or_insert(segs);
        }
        match result {
            Ok(v) => {
                for (key, segs) in unknown {
                    let (parent, word) = match segs.split_last() {
                        Some((Seg::Key(w), p)) => (shape(p), w.clone()),
                        _ => (String::new(), String::new()),
                    };
                    r.report(key, unknown_message(&word, &known(&parent)));
                }
                return v;
            }
            Err(e) => {
                let at = from_error_path(name, e.path());
                if !r.mend(at, e.into_inner().message().trim()) {
                    break;
                }
            }
        }
    }
    T::default()
}

/// One section being read: its TOML, what was reported, the stand-ins put in.
struct Reader<'a> {
    name: &'a str,
    value: toml::Value,
    problems: &'a mut Vec<Problem>,
    /// Keys already reported: a value taken out for being wrong is not reported again as
    /// missing.
    reported: BTreeSet<String>,
    stand_ins: BTreeMap<Vec<Seg>, usize>,
}

impl Reader<'_> {
    fn report(&mut self, key: String, message: String) {
        if self.reported.insert(key.clone()) {
            self.problems.push(Problem { key, message });
        }
    }

    /// Reports serde's error `msg` at `at` and changes the section so that the next round
    /// gets past it; false when it cannot (the section then takes its defaults).
    fn mend(&mut self, at: Vec<Seg>, msg: &str) -> bool {
        debug_assert_eq!(at.first(), Some(&Seg::Key(self.name.to_owned())));
        if let Some(field) = ticked(msg, "missing field") {
            // A required key is absent (or was taken out for being wrong): say so once, then
            // put a stand-in in, so that the rest of its table is still read.
            let mut segs = at;
            segs.push(Seg::Key(field.to_owned()));
            self.report(render(&segs), "is required".to_owned());
            let n = self.stand_ins.entry(segs.clone()).or_insert(0);
            return next_stand_in(&mut self.value, &segs, n);
        }
        if let Some(field) = ticked(msg, "unknown field") {
            // A table that denies unknown keys names them in the error itself; the path
            // may or may not already end with the key.
            let mut segs = at;
            if segs.last() != Some(&Seg::Key(field.to_owned())) {
                segs.push(Seg::Key(field.to_owned()));
            }
            self.report(render(&segs), unknown_message(field, &one_of(msg)));
            return remove(&mut self.value, &segs);
        }
        if let Some(n) = self.stand_ins.get_mut(&at) {
            // Our stand-in had the wrong type: try the next one.
            return next_stand_in(&mut self.value, &at, n);
        }
        let words = match ticked(msg, "unknown variant") {
            Some(variant) => format!(
                "must be one of {} (found \"{variant}\")",
                one_of(msg).join(", ")
            ),
            None => type_words(msg),
        };
        self.report(render(&at), words);
        remove(&mut self.value, &at)
    }
}

/// Drops the problems validation found under keys that reading already reported (their values
/// were replaced by defaults or stand-ins, so what validation says of them is noise).
pub fn drop_echoes(read_problems: usize, problems: &mut Vec<Problem>) {
    let reported: Vec<String> = problems
        .iter()
        .take(read_problems)
        .map(|p| p.key.clone())
        .collect();
    let mut i = 0;
    problems.retain(|p| {
        i += 1;
        if i <= read_problems {
            return true;
        }
        !reported.iter().any(|r| {
            p.key == *r
                || p.key
                    .strip_prefix(r.as_str())
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    struct Loose {
        timeout_secs: u64,
        max_retries: u32,
        model: String,
        items: Vec<Item>,
    }

    #[derive(Debug, Default, Deserialize)]
    struct Item {
        id: String,
        price_fen: i64,
        #[serde(default)]
        credits: u64,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Strict {
        #[serde(default)]
        name: String,
        #[serde(default)]
        words: Vec<String>,
    }

    fn known(shape: &str) -> Vec<String> {
        match shape {
            "s" => field_names::<Loose>(),
            "s.items" => field_names::<Vec<Item>>(),
            _ => Vec::new(),
        }
    }

    fn read_str<T: DeserializeOwned + Default>(text: &str) -> (T, Vec<Problem>) {
        let mut root: toml::Table = text.parse().unwrap();
        let mut problems = Vec::new();
        let v = read::<T>(&mut root, "s", &mut problems, known);
        (v, problems)
    }

    #[test]
    fn every_problem_of_a_section_is_reported_in_plain_words() {
        let (v, problems): (Loose, _) = read_str(
            r#"
            [s]
            timeout_secs = -5
            modle = "x"
            max_retries = "three"
            [[s.items]]
            id = "a"
            price_fen = "ten"
            credit = 1
            [[s.items]]
            price_fen = 3
            credits = 1.5
            "#,
        );
        let by_key: BTreeMap<_, _> = problems
            .iter()
            .map(|p| (p.key.as_str(), p.message.as_str()))
            .collect();
        assert_eq!(
            by_key.get("s.timeout_secs"),
            Some(&"must be a whole number, 0 or more (found -5)")
        );
        assert_eq!(
            by_key.get("s.max_retries"),
            Some(&"must be a whole number, 0 or more (found the text \"three\")")
        );
        assert_eq!(
            by_key.get("s.modle"),
            Some(&"unknown key; did you mean `model`?")
        );
        assert_eq!(
            by_key.get("s.items[0].price_fen"),
            Some(&"must be a whole number (found the text \"ten\")")
        );
        assert_eq!(
            by_key.get("s.items[0].credit"),
            Some(&"unknown key; did you mean `credits`?")
        );
        assert_eq!(by_key.get("s.items[1].id"), Some(&"is required"));
        assert_eq!(
            by_key.get("s.items[1].credits"),
            Some(&"must be a whole number, 0 or more (found 1.5)")
        );
        assert_eq!(problems.len(), 7, "{problems:?}");
        // What could be read was read; the good element keeps its place.
        assert_eq!(v.items.len(), 2);
        assert_eq!(v.items[1].price_fen, 3);
        assert_eq!((v.items[0].id.as_str(), v.items[0].credits), ("a", 0));
        assert_eq!(v.model, "");
    }

    #[test]
    fn strict_tables_name_their_unknown_keys_with_a_suggestion() {
        let (v, problems): (Strict, _) = read_str("[s]\nnmae = \"x\"\nwords = [\"a\"]\nzzz = 1\n");
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["s.nmae", "s.zzz"], "{problems:?}");
        assert_eq!(problems[0].message, "unknown key; did you mean `name`?");
        assert_eq!(problems[1].message, "unknown key");
        assert_eq!(v.words, ["a"]);
        assert_eq!(v.name, "");
    }

    #[test]
    fn field_names_look_through_lists_and_options() {
        assert_eq!(field_names::<Item>(), ["id", "price_fen", "credits"]);
        assert_eq!(field_names::<Vec<Item>>(), ["id", "price_fen", "credits"]);
        assert_eq!(field_names::<Option<Strict>>(), ["name", "words"]);
    }

    #[test]
    fn echoes_of_reported_keys_are_dropped() {
        let mut problems = vec![
            Problem {
                key: "products[0].price_fen".into(),
                message: "x".into(),
            },
            Problem {
                key: "products[0].price_fen".into(),
                message: "must be more than 0".into(),
            },
            Problem {
                key: "products[0].price_fen_x".into(),
                message: "kept".into(),
            },
            Problem {
                key: "products[1].price_fen".into(),
                message: "kept".into(),
            },
        ];
        drop_echoes(1, &mut problems);
        assert_eq!(problems.len(), 3);
    }

    #[test]
    fn distance_and_closest() {
        assert_eq!(distance("modle", "model"), 2);
        assert_eq!(closest("modle", ["model", "max_retries"]), Some("model"));
        assert_eq!(closest("zzz", ["model"]), None);
        assert_eq!(closest("Credit", ["credits"]), Some("credits"));
    }
}
