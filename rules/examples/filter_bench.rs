//! Measures the content filter on realistic messages against a same-run
//! baseline (`str::to_lowercase` of the same messages), so the figures can
//! be compared across machines.
//!
//! Run: `cargo run --release -p chatrelay-rules --example filter_bench`

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatrelay_rules::{ContentFilter, Direction, FilterRuleConfig};

const WORDS: usize = 20_000;
const MESSAGES: usize = 10_000;
const MESSAGE_CHARS: usize = 200;
/// One message in this many contains a word.
const HIT_EVERY: usize = 10;
const PIECE_CHARS: usize = 5;
const ROUNDS: usize = 5;

/// Frequent Chinese characters, the bulk of real messages.
const COMMON: &str = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处府研";
const LATIN: &[&str] = &[
    "the", "api", "model", "token", "GPT", "python", "rust", "error", "please", "help", "OK",
    "http", "json", "server", "2024", "v1",
];
const PUNCT: &[&str] = &["，", "。", "？", "！", " ", "、", "：", "\n", ", ", ". "];

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }
}

fn words(rng: &mut Rng) -> Vec<String> {
    let mut set = std::collections::HashSet::new();
    while set.len() < WORDS {
        let word: String = if rng.below(4) == 0 {
            // Latin: 6 to 10 letters.
            (0..6 + rng.below(5))
                .map(|_| char::from(b'a' + u8::try_from(rng.below(26)).unwrap_or(0)))
                .collect()
        } else {
            // CJK: 2 to 4 chars over the whole unified block, so a word is
            // usually made of rarer characters than the message filler.
            (0..2 + rng.below(3))
                .filter_map(|_| {
                    char::from_u32(0x4E00 + u32::try_from(rng.below(0x51A5)).unwrap_or(0))
                })
                .collect()
        };
        set.insert(word);
    }
    let mut words: Vec<String> = set.into_iter().collect();
    words.sort();
    words
}

fn message(rng: &mut Rng, common: &[char], words: &[String], hit: bool) -> String {
    let mut s = String::new();
    let mut chars = 0;
    let insert_at = rng.below(MESSAGE_CHARS);
    let mut inserted = !hit;
    while chars < MESSAGE_CHARS {
        if !inserted && chars >= insert_at {
            let w = &words[rng.below(words.len())];
            s.push_str(w);
            chars += w.chars().count();
            inserted = true;
        }
        match rng.below(20) {
            0 => {
                let w = LATIN[rng.below(LATIN.len())];
                s.push_str(w);
                s.push(' ');
                chars += w.len() + 1;
            }
            1..=2 => {
                s.push_str(PUNCT[rng.below(PUNCT.len())]);
                chars += 1;
            }
            _ => {
                s.push(common[rng.below(common.len())]);
                chars += 1;
            }
        }
    }
    s
}

/// Best of `ROUNDS` runs of `f` over all messages, in ns per message.
fn time(messages: &[String], mut f: impl FnMut(&str) -> usize) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut sink = 0;
        for m in messages {
            sink += f(black_box(m));
        }
        black_box(sink);
        best = best.min(start.elapsed());
    }
    best.as_nanos() as f64 / messages.len() as f64
}

fn pieces(text: &str) -> Vec<&str> {
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .step_by(PIECE_CHARS)
        .chain(std::iter::once(text.len()))
        .collect();
    bounds
        .windows(2)
        .filter_map(|w| text.get(w[0]..w[1]))
        .collect()
}

fn main() {
    let mut rng = Rng(0x0BAD_5EED);
    let words = words(&mut rng);
    let common: Vec<char> = COMMON.chars().collect();

    let start = Instant::now();
    let mut cfg = FilterRuleConfig::new("bench");
    cfg.words = words.clone();
    let filter = match ContentFilter::build(&[cfg], Path::new(".")) {
        Ok(f) => Arc::new(f),
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            std::process::exit(1);
        }
    };
    let build_ms = start.elapsed().as_secs_f64() * 1e3;

    let messages: Vec<String> = (0..MESSAGES)
        .map(|i| message(&mut rng, &common, &words, i % HIT_EVERY == 0))
        .collect();
    let split: Vec<Vec<&str>> = messages.iter().map(|m| pieces(m)).collect();
    let hits = messages
        .iter()
        .filter(|m| filter.check(m, Direction::Output, "web").is_some())
        .count();
    let avg_bytes = messages.iter().map(String::len).sum::<usize>() / messages.len();

    let baseline = time(&messages, |m| m.to_lowercase().len());
    let check = time(&messages, |m| {
        usize::from(filter.check(m, Direction::Output, "web").is_some())
    });
    let mut index = 0;
    let stream = time(&messages, |_| {
        let mut s = filter.stream("web");
        let mut n = 0;
        for p in split.get(index % MESSAGES).into_iter().flatten() {
            n += usize::from(s.push(p).is_some());
        }
        index += 1;
        n
    });

    println!("filter_words={}", filter.word_count());
    println!("filter_build_ms={build_ms:.1}");
    println!(
        "messages={MESSAGES} avg_chars={MESSAGE_CHARS} avg_bytes={avg_bytes} messages_with_hit={hits}"
    );
    println!("baseline_to_lowercase_ns_per_msg={baseline:.0}");
    println!("filter_check_ns_per_msg={check:.0}");
    println!("filter_stream_{PIECE_CHARS}char_pieces_ns_per_msg={stream:.0}");
    println!("ratio_check_over_baseline={:.2}", check / baseline);
    println!("ratio_stream_over_baseline={:.2}", stream / baseline);
}
