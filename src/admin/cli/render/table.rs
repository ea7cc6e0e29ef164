//! The admin CLI's table toolkit: plain text of JSON values, times, yuan, terminal widths,
//! tables with padded columns, and the cells a table's columns are made of.

use serde_json::Value;

/// The API's JSON, indented.
pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// A JSON value as plain text (strings without quotes, null as empty).
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Milliseconds since the epoch as local-free `YYYY-MM-DD HH:MM` (UTC+8, the product's
/// users' time; the JSON keeps the exact value).
pub(super) fn time(v: &Value) -> String {
    v.as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .zip(chrono::FixedOffset::east_opt(8 * 3600))
        .map(|(t, tz)| t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

/// Fen as yuan.
pub(super) fn yuan(v: &Value) -> String {
    crate::util::yuan(v.as_i64().unwrap_or(0))
}

/// Columns a terminal gives a character: two for CJK and other wide characters.
pub(super) fn width(s: &str) -> usize {
    s.chars()
        .map(|c| {
            let u = u32::from(c);
            let wide = matches!(u,
                0x1100..=0x115F | 0x2E80..=0x303E | 0x3041..=0x33FF | 0x3400..=0x4DBF
                | 0x4E00..=0x9FFF | 0xA000..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF
                | 0xFE30..=0xFE4F | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6 | 0x1F300..=0x1F64F
                | 0x1F900..=0x1F9FF | 0x20000..=0x3FFFD);
            if wide { 2 } else { 1 }
        })
        .sum()
}

/// Cuts `s` to at most `max` columns, with an ellipsis when cut.
pub(super) fn fit(s: &str, max: usize) -> String {
    let one_line = s.replace(['\n', '\r', '\t'], " ");
    if width(&one_line) <= max {
        return one_line;
    }
    let mut out = String::new();
    let mut w = 0;
    for c in one_line.chars() {
        let cw = width(c.encode_utf8(&mut [0; 4]));
        if w + cw + 1 > max {
            break;
        }
        out.push(c);
        w += cw;
    }
    out.push('…');
    out
}

/// A table with a header row, columns padded to their widest cell.
pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return "(none)".to_owned();
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| width(h)).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(width(cell));
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(width(cell));
            out.push_str(cell);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

pub(super) fn rows_of(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// How a table cell is made from a row (a JSON object).
#[derive(Clone, Copy)]
pub enum Cell<'a> {
    /// A field as text.
    Text(&'a str),
    /// A field as text, cut to this many columns.
    Fit(&'a str, usize),
    /// A field in milliseconds as a time.
    Time(&'a str),
    /// A field in fen as yuan.
    Yuan(&'a str),
    /// The sum of the numbers in a field's object, or in a member of it.
    Sum(&'a str, Option<&'a str>),
    /// Made from the whole row.
    With(fn(&Value) -> String),
}

pub(super) use Cell::{Fit, Sum, Text, Time, With, Yuan};

impl Cell<'_> {
    fn of(self, row: &Value) -> String {
        match self {
            Text(f) => text(&row[f]),
            Fit(f, max) => fit(&text(&row[f]), max),
            Time(f) => time(&row[f]),
            Yuan(f) => yuan(&row[f]),
            Sum(f, member) => {
                let v = member.map_or(&row[f], |m| &row[f][m]);
                let sum: u64 = v
                    .as_object()
                    .map_or(0, |o| o.values().filter_map(Value::as_u64).sum());
                sum.to_string()
            }
            With(make) => make(row),
        }
    }
}

/// A table's columns: a header and a cell each.
pub type Table = &'static [(&'static str, Cell<'static>)];

/// A table with a row per element of `rows` and a column per `(header, cell)`.
pub(super) fn table_of<H: AsRef<str>>(rows: &[Value], columns: &[(H, Cell)]) -> String {
    let headers: Vec<&str> = columns.iter().map(|(h, _)| h.as_ref()).collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|(_, c)| c.of(row)).collect())
        .collect();
    table(&headers, &cells)
}

/// `yes` when the row's `field` is true, else `no`.
pub(super) fn flag(row: &Value, field: &str, yes: &str, no: &str) -> String {
    if row[field].as_bool() == Some(true) {
        yes
    } else {
        no
    }
    .to_owned()
}

/// `template` with each `{field}` replaced by the row's field as text, `{field:time}` as a
/// time, `{field:yuan}` as yuan.
pub(super) fn fields(row: &Value, template: &str) -> String {
    crate::admin::paths::substitute(template, |spec| {
        let (field, how) = spec.split_once(':').unwrap_or((spec, ""));
        match how {
            "time" => time(&row[field]),
            "yuan" => yuan(&row[field]),
            _ => text(&row[field]),
        }
    })
}

/// A list of strings as `a, b`, or `(none)`.
pub(super) fn list(v: &Value) -> String {
    let items: Vec<String> = rows_of(v).iter().map(text).collect();
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items.join(", ")
    }
}
