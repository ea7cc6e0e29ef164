//! Exact conversion between Alipay's decimal yuan strings and integer fen.
//!
//! Alipay sends and expects amounts as decimal strings in yuan (`"2.00"`).
//! Floating point cannot represent most of them exactly, and a rounding slip
//! in a payment check is a real loss, so amounts are parsed by hand into
//! `i64` fen (1 yuan = 100 fen) and formatted back the same way.

use crate::AlipayError;

/// Parses a yuan amount such as `"12.34"` into fen (`1234`).
///
/// Accepted: ASCII digits, optionally followed by `.` and one or two more
/// digits (`"2"`, `"2.0"`, `"2.00"`). Rejected: signs, exponents,
/// whitespace, empty strings, a lone or leading/trailing `.`, more than two
/// decimals (even `"2.000"`: Alipay never sends them and accepting would hide
/// a sub-fen amount), and anything that overflows `i64` fen.
pub fn parse_yuan(s: &str) -> Result<i64, AlipayError> {
    let bad = |why: &str| AlipayError::InvalidAmount(format!("{why}: {:?}", truncated(s)));
    let (int_part, frac_part) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    if int_part.is_empty() {
        return Err(bad("no digits before the decimal point"));
    }
    let mut fen: i64 = 0;
    for b in int_part.bytes() {
        let d = digit(b).ok_or_else(|| bad("not a plain decimal"))?;
        fen = fen
            .checked_mul(10)
            .and_then(|v| v.checked_add(d))
            .ok_or_else(|| bad("too large"))?;
    }
    // Scale the yuan to fen, then add the (zero-padded) decimals.
    fen = fen.checked_mul(100).ok_or_else(|| bad("too large"))?;
    if let Some(frac) = frac_part {
        let cents = match frac.as_bytes() {
            [a] => digit(*a).map(|a| a * 10),
            [a, b] => digit(*a).zip(digit(*b)).map(|(a, b)| a * 10 + b),
            [] => return Err(bad("no digits after the decimal point")),
            _ => return Err(bad("more than two decimals")),
        }
        .ok_or_else(|| bad("not a plain decimal"))?;
        fen = fen.checked_add(cents).ok_or_else(|| bad("too large"))?;
    }
    Ok(fen)
}

/// Formats fen as a yuan string with exactly two decimals: `1234` →
/// `"12.34"`, `5` → `"0.05"`.
///
/// Negative amounts never reach Alipay (callers validate first) but are
/// formatted with a leading `-` rather than panicking, `i64::MIN` included.
#[must_use]
pub fn format_yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let abs = fen.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// The value of an ASCII decimal digit; `None` for anything else (including
/// non-ASCII digits, which `char::is_numeric` would accept).
fn digit(b: u8) -> Option<i64> {
    b.is_ascii_digit().then(|| i64::from(b - b'0'))
}

/// Keeps error messages short when the input is attacker-sized.
fn truncated(s: &str) -> &str {
    crate::error::truncate(s, 40)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_amounts() {
        let table: &[(&str, i64)] = &[
            ("2", 200),
            ("2.0", 200),
            ("2.00", 200),
            ("0.01", 1),
            ("0.1", 10),
            ("0", 0),
            ("0.00", 0),
            ("12.34", 1234),
            ("88.88", 8888),
            ("007.50", 750),
            ("100000000.00", 10_000_000_000),
            // i64::MAX fen exactly.
            ("92233720368547758.07", i64::MAX),
        ];
        for (s, want) in table {
            assert_eq!(parse_yuan(s), Ok(*want), "{s}");
        }
    }

    #[test]
    fn invalid_amounts() {
        let table = [
            "",
            ".",
            "2.",
            ".5",
            "2.001",
            "2.000",
            "-1",
            "+1",
            "1e2",
            "1E2",
            " 1",
            "1 ",
            "1,00",
            "1.2.3",
            "0x10",
            "１",
            "٣",
            "1.-1",
            "1._",
            "NaN",
            "inf",
            "1.5\n",
            // i64::MAX fen + 1, and far beyond.
            "92233720368547758.08",
            "92233720368547759",
            "99999999999999999999999999",
        ];
        for s in table {
            assert!(
                matches!(parse_yuan(s), Err(AlipayError::InvalidAmount(_))),
                "{s:?} should be rejected"
            );
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(format_yuan(1234), "12.34");
        assert_eq!(format_yuan(5), "0.05");
        assert_eq!(format_yuan(0), "0.00");
        assert_eq!(format_yuan(100), "1.00");
        assert_eq!(format_yuan(-1234), "-12.34");
        assert_eq!(format_yuan(i64::MAX), "92233720368547758.07");
        assert_eq!(format_yuan(i64::MIN), "-92233720368547758.08");
    }

    #[test]
    fn round_trip() {
        for fen in [
            0,
            1,
            9,
            10,
            99,
            100,
            101,
            1234,
            999_999,
            10_000_000_000,
            i64::MAX,
        ] {
            assert_eq!(parse_yuan(&format_yuan(fen)), Ok(fen), "{fen}");
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let fen = i64::try_from(x >> 1).unwrap();
            assert_eq!(parse_yuan(&format_yuan(fen)), Ok(fen));
        }
    }
}
