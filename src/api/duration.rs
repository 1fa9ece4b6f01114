//! Durations as the API spells them (`2160h`, `90m`, `1h30m`, `0s`): parsed in one place, for
//! key lifetimes and rotation settings alike.

use std::time::Duration;

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
}
