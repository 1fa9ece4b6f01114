//! Durations as the API spells them (`2160h`, `90m`, `1h30m`, `0s`): parsed in one place, for
//! key lifetimes and rotation settings alike.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration field of the API (`rotation.every`, `outscale.expiresAfter`, …): serialized as the
/// user wrote it, parsed once when read. A text that does not parse (the schema's pattern lets
/// through a number of hours past any date) still reads, so that the object does and its
/// reconcile can name the field; [`ApiDuration::get`] says what is wrong.
#[derive(Clone, Debug)]
pub struct ApiDuration {
    text: String,
    parsed: Result<Duration, String>,
}

impl ApiDuration {
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let parsed = parse_duration(&text);
        Self { text, parsed }
    }

    /// As written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The duration, or why the text is not one.
    pub fn get(&self) -> Result<Duration, String> {
        self.parsed.clone()
    }
}

impl PartialEq for ApiDuration {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for ApiDuration {}

impl std::fmt::Display for ApiDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<&str> for ApiDuration {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl From<String> for ApiDuration {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

impl Serialize for ApiDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ApiDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

/// Parses a sequence of `<digits><h|m|s>` parts (the schema's `DURATION_PATTERN`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration such as 2160h, 90m or 1h30m");
    let too_long = || format!("{text:?} is too long");
    if text.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        let unit = match c {
            '0'..='9' => {
                let digit = u64::from(c as u8 - b'0');
                let n = number.unwrap_or(0).checked_mul(10).and_then(|n| n.checked_add(digit)).ok_or_else(too_long)?;
                number = Some(n);
                continue;
            }
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(invalid()),
        };
        let n = number.take().ok_or_else(invalid)?;
        total = n.checked_mul(unit).and_then(|s| total.checked_add(s)).ok_or_else(too_long)?;
    }
    if number.is_some() {
        // Trailing digits without a unit.
        return Err(invalid());
    }
    // Past what a timestamp can be added to: refused here rather than saturating somewhere later.
    if total > 100 * 365 * 24 * 3600 {
        return Err(too_long());
    }
    Ok(Duration::from_secs(total))
}

/// A duration as the API spells it, in its largest exact units (`10m`, `1h30m`, `0s`).
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, 'h'), (m, 'm'), (s, 's')] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit_and_combination() {
        for (text, secs) in
            [("0s", 0), ("90m", 5400), ("2160h", 7_776_000), ("1h30m", 5400), ("1m30s", 90), ("45s", 45)]
        {
            assert_eq!(parse_duration(text), Ok(Duration::from_secs(secs)), "{text}");
            assert_eq!(parse_duration(&format_duration(Duration::from_secs(secs))), Ok(Duration::from_secs(secs)));
        }
        for bad in ["", "10", "h", "1d", "1.5h", "-1h", "1h 30m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration("9999999999999999h").is_err());
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }

    #[test]
    fn api_durations_read_as_written_and_parse_once() {
        let d: ApiDuration = serde_json::from_str(r#""1h30m""#).expect("reads");
        assert_eq!(d.get(), Ok(Duration::from_secs(5400)));
        assert_eq!(serde_json::to_string(&d).expect("writes"), r#""1h30m""#);
        // Past what the schema's pattern can catch: the object still reads, the field says why.
        let d: ApiDuration = serde_json::from_str(r#""9999999999999999h""#).expect("reads");
        assert!(d.get().expect_err("too long").contains("too long"));
        assert_eq!(d.to_string(), "9999999999999999h");
    }
}
