//! How the commands print: tables that fit 100 columns (kubectl's look: no borders, upper-case
//! headers), `-o wide` without that limit, JSON and YAML for scripts; times as kubectl shows
//! them (`3m`, `in 29d`).

use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;

use super::CliError;

/// The terminal width the tables are made for; `-o wide` is not limited.
pub const WIDTH: u16 = 100;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A table that fits 100 columns (the default).
    #[default]
    Table,
    /// A table with every column.
    Wide,
    Json,
    Yaml,
}

impl OutputFormat {
    pub fn is_wide(self) -> bool {
        self == Self::Wide
    }
}

/// A table with `headers`: at most [`WIDTH`] columns wide unless `wide` (long cells wrap).
pub fn table(headers: &[&str], wide: bool) -> Table {
    table_within(headers, (!wide).then_some(WIDTH))
}

/// A table with `headers`, at most `width` columns wide if given (long cells wrap).
pub fn table_within(headers: &[&str], width: Option<u16>) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    match width {
        None => t.set_content_arrangement(ContentArrangement::Disabled),
        Some(w) => t.set_content_arrangement(ContentArrangement::Dynamic).set_width(w),
    };
    t.set_header(headers.to_vec());
    // Flush left, as kubectl prints: no padding before the first column.
    if let Some(first) = t.column_mut(0) {
        first.set_padding((0, 1));
    }
    t
}

/// Adds a row of one line per cell: a line break in a value from a cluster object (a condition
/// message, a provider's answer) would otherwise print as a line of its own, one that can read
/// like another row of the table.
pub fn add_row<S: AsRef<str>>(t: &mut Table, cells: impl IntoIterator<Item = S>) {
    t.add_row(cells.into_iter().map(|c| one_line(c.as_ref())).collect::<Vec<_>>());
}

/// `text` with every line break (and tab) as a space.
pub fn one_line(text: &str) -> String {
    let breaks = ['\n', '\r', '\t', '\u{b}', '\u{c}', '\u{85}', '\u{2028}', '\u{2029}'];
    text.split(breaks).collect::<Vec<_>>().join(" ")
}

/// Prints a table without trailing blanks.
pub fn print_table(t: &Table) {
    println!("{}", printable(&t.trim_fmt()));
}

/// `text` safe for a terminal: what comes from cluster objects or provider messages may hold
/// escape sequences (clearing the screen, rewriting earlier lines, a hyperlink), carriage
/// returns or bidirectional overrides that make a line read as something else. Each becomes
/// U+FFFD; line breaks and tabs stay.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(text.chars().map(|c| if unsafe_char(c) { '\u{fffd}' } else { c }).collect())
}

/// `println!` for text that may hold what cluster objects or providers said: see [`printable`].
macro_rules! say {
    () => { println!() };
    ($($arg:tt)*) => { println!("{}", $crate::cli::output::printable(&format!($($arg)*))) };
}

/// `eprintln!` likewise.
macro_rules! warn_user {
    ($($arg:tt)*) => { eprintln!("{}", $crate::cli::output::printable(&format!($($arg)*))) };
}

pub(crate) use {say, warn_user};

/// Prints `value` as JSON or YAML.
pub fn print_structured<T: Serialize>(value: &T, format: OutputFormat) -> Result<(), CliError> {
    let text = match format {
        OutputFormat::Yaml => serde_norway::to_string(value).map_err(|e| CliError::Output(e.to_string()))?,
        _ => serde_json::to_string_pretty(value).map_err(|e| CliError::Output(e.to_string()))? + "\n",
    };
    // JSON escapes only C0 controls, and YAML keeps some others: DEL, C1 controls and
    // bidirectional overrides from cluster objects would reach the terminal as they are.
    print!("{}", printable(&text));
    Ok(())
}

/// A duration as kubectl shows ages: `45s`, `12m`, `5h`, `3d`, `2y`.
pub fn short_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7_200 => format!("{}m", s / 60),
        7_200..172_800 => format!("{}h", s / 3_600),
        172_800..63_072_000 => format!("{}d", s / 86_400),
        _ => format!("{}y", s / 31_536_000),
    }
}

/// How long ago `t` was: `3m`.
pub fn age(t: jiff::Timestamp, now: jiff::Timestamp) -> String {
    short_duration(now.as_second() - t.as_second())
}

/// When `t` comes, seen from `now`: `in 29d`, or `5m ago` once it has passed.
pub fn when(t: jiff::Timestamp, now: jiff::Timestamp) -> String {
    let d = t.as_second() - now.as_second();
    match d {
        0 => "now".to_string(),
        1.. => format!("in {}", short_duration(d)),
        _ => format!("{} ago", short_duration(-d)),
    }
}

/// `t` as RFC 3339 and relative to `now`: `2026-12-01T10:00:00Z (in 3d)`.
pub fn at(t: jiff::Timestamp, now: jiff::Timestamp) -> String {
    format!("{} ({})", t.strftime("%Y-%m-%dT%H:%M:%SZ"), when(t, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(short_duration(-3), "0s");
        assert_eq!(short_duration(119), "119s");
        assert_eq!(short_duration(600), "10m");
        assert_eq!(short_duration(7_200), "2h");
        assert_eq!(short_duration(30 * 86_400), "30d");
        assert_eq!(short_duration(3 * 31_536_000), "3y");
        let now = jiff::Timestamp::from_second(1_000_000).expect("time");
        assert_eq!(when(jiff::Timestamp::from_second(1_000_000 + 86_400 * 3).expect("time"), now), "in 3d");
        assert_eq!(when(jiff::Timestamp::from_second(1_000_000 - 300).expect("time"), now), "5m ago");
    }

    #[test]
    fn tables_fit_100_columns_unless_wide() {
        let long = "x".repeat(150);
        let mut t = table(&["NAME", "MESSAGE"], false);
        t.add_row(vec!["a", long.as_str()]);
        assert!(t.trim_fmt().lines().all(|l| l.chars().count() <= usize::from(WIDTH)));
        assert!(t.trim_fmt().starts_with("NAME"), "flush left: {:?}", t.trim_fmt());
        let mut t = table(&["NAME", "MESSAGE"], true);
        t.add_row(vec!["a", long.as_str()]);
        assert!(t.trim_fmt().lines().any(|l| l.contains(long.as_str())));
    }
}

#[cfg(test)]
mod printable_tests {
    use super::printable;

    #[test]
    fn a_line_break_in_a_cell_cannot_forge_a_row() {
        let mut t = super::table(&["NAME", "READY"], false);
        super::add_row(&mut t, ["real", "False\nforged          True"]);
        super::add_row(&mut t, ["next\r\u{2028}line", "True"]);
        let shown = t.trim_fmt();
        assert_eq!(shown.lines().count(), 3, "{shown}");
        assert!(shown.lines().nth(1).is_some_and(|l| l.starts_with("real") && l.contains("forged")), "{shown}");
    }

    #[test]
    fn escape_sequences_and_overrides_never_reach_the_terminal() {
        let hostile = "ok\x1b[2J\x1b]8;;http://x\x07link\rFAKE\u{202e}txt.exe\u{9b}31m";
        let shown = printable(hostile);
        assert!(!shown.chars().any(|c| c.is_control() || c == '\u{202e}'), "{shown:?}");
        assert!(shown.contains("link") && shown.contains("FAKE"), "{shown:?}");
        assert_eq!(printable("two\nlines\tand a tab"), "two\nlines\tand a tab");
        assert!(matches!(printable("plain"), std::borrow::Cow::Borrowed(_)));
    }
}
