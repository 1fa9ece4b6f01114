//! Rotation windows: the recurring stretches of time in which a scheduled rotation (and the
//! consumer restarts it brings) may begin. Pure arithmetic on a clock passed in.
//!
//! A window opens at each time its cron schedule names, read in its IANA time zone, and stays
//! open for its duration, counted in real time (a 2h window that opens just before clocks go
//! back stays open 2 hours, not until the wall clock says so). Across a change of the clocks the
//! schedule behaves as cron does: a start that falls into the hour skipped in spring moves to the
//! end of the gap; one that falls into the hour repeated in autumn opens once, the first time.
//!
//! The time-zone data is the IANA database built into the binary: the operator's image has no
//! `/usr/share/zoneinfo`, and a window must not move with the node it runs on.

use std::sync::LazyLock;

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use jiff::tz::{TimeZone, TimeZoneDatabase};
use jiff::{SignedDuration, Timestamp};

use crate::api::validation::InvalidSpec;
use crate::api::RotationWindow;

/// The shortest window: a reconcile must have time to see it open.
pub const MIN_DURATION: std::time::Duration = std::time::Duration::from_secs(60);

/// The built-in copy of the IANA time-zone database (never the node's).
static TZDB: LazyLock<TimeZoneDatabase> = LazyLock::new(TimeZoneDatabase::bundled);

/// One window, parsed.
#[derive(Debug, Clone)]
struct Window {
    schedule: String,
    cron: Cron,
    duration: SignedDuration,
    zone: TimeZone,
}

impl Window {
    /// The last time this window opened at or before `t`, if it is still open at `t`.
    fn open_at(&self, t: Timestamp) -> Option<Timestamp> {
        let start = self.cron.find_previous_occurrence(&t.to_zoned(self.zone.clone()), true).ok()?.timestamp();
        (t < start.checked_add(self.duration).unwrap_or(Timestamp::MAX)).then_some(start)
    }

    /// The first time this window opens after `t`.
    fn next_start(&self, t: Timestamp) -> Option<Timestamp> {
        Some(self.cron.find_next_occurrence(&t.to_zoned(self.zone.clone()), false).ok()?.timestamp())
    }
}

/// The windows an AccessKey rotates in. None at all: it may rotate at any time.
#[derive(Debug, Clone, Default)]
pub struct Windows(Vec<Window>);

/// Two sets of windows are the same when they were written the same.
impl PartialEq for Windows {
    fn eq(&self, other: &Self) -> bool {
        let key = |w: &Window| (w.schedule.clone(), w.duration, w.zone.iana_name().map(str::to_string));
        self.0.len() == other.0.len() && self.0.iter().zip(&other.0).all(|(a, b)| key(a) == key(b))
    }
}

impl Eq for Windows {}

/// When a replacement that must happen by a deadline (a key that expires) takes place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planned {
    /// At this time, in a window (or at any time: no windows).
    InWindow(Timestamp),
    /// No window opens before the deadline: at the due time, outside the windows.
    NoWindow(Timestamp),
}

impl Planned {
    pub fn at(self) -> Timestamp {
        match self {
            Self::InWindow(t) | Self::NoWindow(t) => t,
        }
    }
}

impl Windows {
    /// Parses `windows`; `field` names where they were written, for the message of an invalid
    /// one (`rotation.windows`).
    pub fn parse(windows: &[RotationWindow], field: &str) -> Result<Self, InvalidSpec> {
        let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build();
        let mut parsed = Vec::with_capacity(windows.len());
        for (i, w) in windows.iter().enumerate() {
            let at = |name: &str| format!("{field}[{i}].{name}");
            let cron = parser.parse(&w.schedule).map_err(|e| {
                InvalidSpec::new(
                    at("schedule"),
                    format!("{:?} is not a cron expression of five fields such as \"0 2 * * 1-5\": {e}", w.schedule),
                )
            })?;
            if let Some(year) = a_year_without_an_opening(&cron) {
                return Err(InvalidSpec::new(
                    at("schedule"),
                    format!(
                        "{:?} opens on no day of {year}: a rotation window must open at least once a year",
                        w.schedule
                    ),
                ));
            }
            let duration = w.duration.get().map_err(|e| InvalidSpec::new(at("duration"), e))?;
            if duration < MIN_DURATION {
                return Err(InvalidSpec::new(
                    at("duration"),
                    format!("{:?} is shorter than the minimum of 1m", w.duration.as_str()),
                ));
            }
            let zone_name = w.time_zone.as_deref().unwrap_or("UTC");
            let zone = TZDB.get(zone_name).map_err(|_| {
                InvalidSpec::new(
                    at("timeZone"),
                    format!("{zone_name:?} is not an IANA time zone such as \"Europe/Zurich\" or \"UTC\""),
                )
            })?;
            let duration = SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX);
            parsed.push(Window { schedule: w.schedule.clone(), cron, duration, zone });
        }
        Ok(Self(parsed))
    }

    /// No windows: rotations may happen at any time.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The window open at `t`: when it opened and when it closes (the earliest-opened one, if
    /// several are). `None` when none is, and always with no windows.
    pub fn open_at(&self, t: Timestamp) -> Option<(Timestamp, Timestamp)> {
        self.0
            .iter()
            .filter_map(|w| w.open_at(t).map(|start| (start, start.checked_add(w.duration).unwrap_or(Timestamp::MAX))))
            .min()
    }

    /// The first time after `t` that a window opens.
    pub fn next_start(&self, t: Timestamp) -> Option<Timestamp> {
        self.0.iter().filter_map(|w| w.next_start(t)).min()
    }

    /// When a replacement due at `due` may begin, seen at `now`: `due` itself if it falls in a
    /// window (or there are no windows), else the first window start after it. Once `due` has
    /// passed, the same answer while the window that lets it begin stays open, and the next
    /// window's start once that one closed with nothing done (a missed window): the answer
    /// changes only at window boundaries, so that what status records of it does not change
    /// with every look. `None`: no window ever opens.
    pub fn plan(&self, due: Timestamp, now: Timestamp) -> Option<Timestamp> {
        if self.is_empty() {
            return Some(due);
        }
        let from = due.max(whole_seconds(now));
        match self.open_at(from) {
            Some((start, _)) => Some(start.max(due)),
            None => self.next_start(from),
        }
    }

    /// When a replacement due at `due` and needed before `deadline` takes place: in the first
    /// window from `due` that opens before the deadline, or at `due` itself if none does.
    pub fn plan_before(&self, due: Timestamp, deadline: Timestamp, now: Timestamp) -> Planned {
        match self.plan(due, now) {
            Some(t) if t < deadline => Planned::InWindow(t),
            _ => Planned::NoWindow(due),
        }
    }

    /// Whether a replacement may begin at `now`.
    pub fn allow(&self, now: Timestamp) -> bool {
        self.is_empty() || self.open_at(whole_seconds(now)).is_some()
    }
}

/// The years whose calendars a schedule is checked against: 28 years hold every combination of
/// leap year and weekday the Gregorian calendar has until 2100.
const CHECKED_YEARS: std::ops::Range<i16> = 2001..2029;

/// The first year of [`CHECKED_YEARS`] in which `cron` never fires, if any. croner looks for an
/// occurrence as far as the year 5000 before it gives up, so a schedule that fires on no day at
/// all (`0 0 30 2 *`) or once in decades costs tens of milliseconds at every look, and a
/// decision looks many times: a window that opens every year keeps each search within a year.
fn a_year_without_an_opening(cron: &Cron) -> Option<i16> {
    let p = &cron.pattern;
    let any_time =
        (0..24).any(|h| p.hour_match(h).unwrap_or(false)) && (0..60).any(|m| p.minute_match(m).unwrap_or(false));
    if !any_time {
        return Some(CHECKED_YEARS.start);
    }
    let opens_in = |year: i16| {
        (1..=12i8).filter(|&month| p.month_match(month as u32).unwrap_or(false)).any(|month| {
            let first = jiff::civil::date(year, month, 1);
            let first_weekday = first.weekday().to_sunday_zero_offset() as u32;
            (1..=first.days_in_month() as u32).any(|day| {
                let weekday = croner::Weekday::from_days_from_sunday(first_weekday + day - 1);
                p.day_match(i32::from(year), month as u32, day, weekday).unwrap_or(false)
            })
        })
    };
    CHECKED_YEARS.clone().find(|&year| !opens_in(year))
}

/// Cron counts whole seconds, and so does status.
fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// A key that expires at `expires` and is renewed from `renewal` on must be replaced by then:
/// half-way between the two, so that the consumers have time to roll out and the replaced key
/// a grace period before it expires.
pub fn renewal_deadline(renewal: Timestamp, expires: Timestamp) -> Timestamp {
    let margin = expires.duration_since(renewal) / 2;
    renewal.checked_add(margin.max(SignedDuration::ZERO)).unwrap_or(expires)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn window(schedule: &str, duration: &str, zone: Option<&str>) -> RotationWindow {
        RotationWindow { schedule: schedule.into(), duration: duration.into(), time_zone: zone.map(Into::into) }
    }

    fn windows(list: &[RotationWindow]) -> Windows {
        Windows::parse(list, "rotation.windows").expect("valid windows")
    }

    /// Weekdays 02:00 to 04:00 in Zurich.
    fn zurich_nights() -> Windows {
        windows(&[window("0 2 * * 1-5", "2h", Some("Europe/Zurich"))])
    }

    #[test]
    fn a_due_time_inside_an_open_window_rotates_at_once() {
        let w = zurich_nights();
        // Tuesday 2026-12-08, 02:30 in Zurich (CET, UTC+1) is 01:30Z.
        let due = t("2026-12-08T01:30:00Z");
        assert_eq!(w.open_at(due), Some((t("2026-12-08T01:00:00Z"), t("2026-12-08T03:00:00Z"))));
        assert!(w.allow(due));
        assert_eq!(w.plan(due, due), Some(due));
        // Later in the same window: still the due time, whenever it is looked at.
        assert_eq!(w.plan(due, t("2026-12-08T02:59:59Z")), Some(due));
    }

    #[test]
    fn a_due_time_outside_the_windows_waits_for_the_next_one_and_keeps_its_answer_until_then() {
        let w = zurich_nights();
        // Friday 15:00 in Zurich: the next window is Monday 02:00 (01:00Z).
        let due = t("2026-12-11T14:00:00Z");
        assert!(!w.allow(due));
        let monday = t("2026-12-14T01:00:00Z");
        for now in [due, t("2026-12-12T10:00:00Z"), monday, t("2026-12-14T02:59:59Z")] {
            assert_eq!(w.plan(due, now), Some(monday), "seen at {now}");
        }
        // That window went by with nothing done (the operator was down): the next one.
        assert_eq!(w.plan(due, t("2026-12-14T03:00:00Z")), Some(t("2026-12-15T01:00:00Z")));
    }

    #[test]
    fn no_windows_rotate_at_the_due_time() {
        let w = Windows::default();
        let due = t("2026-12-11T14:00:00Z");
        assert!(w.allow(due) && w.open_at(due).is_none());
        assert_eq!(w.plan(due, due), Some(due));
        assert_eq!(w.plan_before(due, due, due), Planned::NoWindow(due), "the deadline is the due time itself");
    }

    #[test]
    fn a_window_crossing_midnight_is_open_on_both_sides_of_it() {
        // 23:00 to 01:00 UTC every day.
        let w = windows(&[window("0 23 * * *", "2h", None)]);
        assert_eq!(w.open_at(t("2026-12-08T23:30:00Z")), Some((t("2026-12-08T23:00:00Z"), t("2026-12-09T01:00:00Z"))));
        assert_eq!(w.open_at(t("2026-12-09T00:59:59Z")), Some((t("2026-12-08T23:00:00Z"), t("2026-12-09T01:00:00Z"))));
        assert_eq!(w.open_at(t("2026-12-09T01:00:00Z")), None, "closed at its end");
        assert_eq!(w.plan(t("2026-12-09T00:30:00Z"), t("2026-12-09T00:30:00Z")), Some(t("2026-12-09T00:30:00Z")));
        assert_eq!(w.plan(t("2026-12-09T01:00:00Z"), t("2026-12-09T01:00:00Z")), Some(t("2026-12-09T23:00:00Z")));
        // On weekdays only: Friday night's window runs into Saturday.
        let w = windows(&[window("30 22 * * 5", "3h", Some("Europe/Zurich"))]);
        let saturday = t("2026-12-12T00:15:00Z"); // 01:15 Saturday in Zurich
        assert_eq!(w.open_at(saturday), Some((t("2026-12-11T21:30:00Z"), t("2026-12-12T00:30:00Z"))));
    }

    #[test]
    fn a_start_in_the_hour_skipped_in_spring_opens_at_the_end_of_the_gap() {
        // 2026-03-29: Zurich goes from 02:00 CET straight to 03:00 CEST (01:00Z).
        let w = windows(&[window("30 2 * * *", "1h", Some("Europe/Zurich"))]);
        let before = t("2026-03-28T23:00:00Z");
        let start = w.next_start(before).expect("a start");
        assert_eq!(start, t("2026-03-29T01:00:00Z"), "03:00 CEST, the first time after the gap");
        assert_eq!(w.open_at(t("2026-03-29T01:59:59Z")), Some((start, t("2026-03-29T02:00:00Z"))));
        assert_eq!(w.open_at(t("2026-03-29T02:00:00Z")), None, "an hour of real time");
        // The day after, 02:30 CEST again.
        assert_eq!(w.next_start(t("2026-03-29T02:00:00Z")), Some(t("2026-03-30T00:30:00Z")));
    }

    #[test]
    fn a_start_in_the_hour_repeated_in_autumn_opens_once_and_lasts_its_duration_in_real_time() {
        // 2026-10-25: Zurich goes from 03:00 CEST back to 02:00 CET (01:00Z); 02:30 comes twice.
        let w = windows(&[window("30 2 * * *", "1h", Some("Europe/Zurich"))]);
        let first = w.next_start(t("2026-10-24T22:00:00Z")).expect("a start");
        assert_eq!(first, t("2026-10-25T00:30:00Z"), "02:30 CEST, the first of the two");
        assert_eq!(w.next_start(first), Some(t("2026-10-26T01:30:00Z")), "not again at 02:30 CET");
        // Open for an hour of real time, though the wall clock reads 02:30 again at its end.
        assert!(w.allow(t("2026-10-25T01:29:59Z")));
        assert!(!w.allow(t("2026-10-25T01:30:00Z")));
        // A window of the same local time in summer and winter: an hour apart in UTC.
        assert_eq!(w.next_start(t("2026-07-01T00:00:00Z")), Some(t("2026-07-01T00:30:00Z")));
        assert_eq!(w.next_start(t("2026-12-01T00:00:00Z")), Some(t("2026-12-01T01:30:00Z")));
    }

    #[test]
    fn an_expiring_key_rotates_in_a_window_before_its_deadline_or_anyway() {
        let w = zurich_nights();
        // Renewal due Friday 15:00 Zurich; the key must be replaced by Saturday noon: no
        // weekday window opens before then.
        let due = t("2026-12-11T14:00:00Z");
        let deadline = t("2026-12-12T11:00:00Z");
        assert_eq!(w.plan_before(due, deadline, due), Planned::NoWindow(due));
        // With until Monday 06:00, Monday's window does.
        let deadline = t("2026-12-14T05:00:00Z");
        assert_eq!(w.plan_before(due, deadline, due), Planned::InWindow(t("2026-12-14T01:00:00Z")));
        // Half-way between renewal and expiry.
        assert_eq!(renewal_deadline(t("2026-12-01T00:00:00Z"), t("2026-12-03T00:00:00Z")), t("2026-12-02T00:00:00Z"));
    }

    #[test]
    fn the_earliest_of_several_windows_wins() {
        let w = windows(&[window("0 2 * * *", "1h", None), window("0 14 * * *", "1h", None)]);
        assert_eq!(w.plan(t("2026-12-08T03:00:00Z"), t("2026-12-08T03:00:00Z")), Some(t("2026-12-08T14:00:00Z")));
        assert_eq!(w.plan(t("2026-12-08T15:00:00Z"), t("2026-12-08T15:00:00Z")), Some(t("2026-12-09T02:00:00Z")));
    }

    #[test]
    fn a_schedule_that_does_not_open_every_year_is_refused_and_one_that_does_is_planned() {
        // Days that never come, come only in leap years, or name a weekday croner reads as none.
        for (schedule, zone, year) in [
            ("0 0 30 2 *", None, 2001),
            ("0 0 31 2 +1", None, 2001),
            ("0 0 31W 2 *", None, 2001),
            ("0 0 31 4,6,9,11 *", Some("Australia/Lord_Howe"), 2001),
            ("0 0 29 2 *", None, 2001),
            ("0 0 29 2 +1", None, 2001),
        ] {
            let e =
                Windows::parse(&[window("0 2 * * *", "1h", None), window(schedule, "1h", zone)], "rotation.windows")
                    .expect_err(schedule);
            assert_eq!(e.field, "rotation.windows[1].schedule", "{schedule}");
            let text = e.to_string();
            assert!(text.contains(&format!("{schedule:?} opens on no day of {year}")), "{text}");
            assert!(text.contains("must open at least once a year"), "{text}");
        }
        for schedule in ["0 0 * * L", "0 0 * * +"] {
            let e = Windows::parse(&[window(schedule, "1h", None)], "rotation.windows").expect_err(schedule);
            assert_eq!(e.field, "rotation.windows[0].schedule", "{schedule}");
        }
        // Once a year, on the last day of December, and the last Friday of February or the 29th.
        let w = windows(&[window("0 0 31 12 *", "1h", None)]);
        assert_eq!(w.plan(t("2027-01-01T00:00:00Z"), t("2027-01-01T00:00:00Z")), Some(t("2027-12-31T00:00:00Z")));
        let w = windows(&[window("0 0 29 2 5", "1h", None)]);
        assert_eq!(w.plan(t("2027-02-27T00:00:00Z"), t("2027-02-27T00:00:00Z")), Some(t("2028-02-04T00:00:00Z")));
    }

    #[test]
    fn an_invalid_schedule_duration_or_time_zone_is_named() {
        let error = |w: RotationWindow| Windows::parse(&[window("0 2 * * *", "1h", None), w], "rotation.windows");
        let e = error(window("0 25 * * *", "1h", None)).expect_err("hour 25");
        assert_eq!(e.field, "rotation.windows[1].schedule");
        assert!(e.to_string().contains("\"0 25 * * *\" is not a cron expression"), "{e}");
        let e = error(window("0 2 * * * *", "1h", None)).expect_err("six fields");
        assert_eq!(e.field, "rotation.windows[1].schedule");
        let e = error(window("0 2 * * *", "30s", None)).expect_err("too short");
        assert_eq!((e.field.as_str(), e.message.contains("minimum of 1m")), ("rotation.windows[1].duration", true));
        let e = error(window("0 2 * * *", "1h", Some("Europe/Zurch"))).expect_err("no such zone");
        assert_eq!(e.field, "rotation.windows[1].timeZone");
        assert!(e.to_string().contains("\"Europe/Zurch\" is not an IANA time zone"), "{e}");
        assert!(Windows::parse(&[window("@daily", "1h", Some("utc"))], "w").is_ok(), "nicknames and any case");
    }

    #[test]
    fn time_zones_come_from_the_built_in_database() {
        // Found without any zoneinfo directory: the database in the binary answers.
        assert!(TZDB.get("Europe/Zurich").is_ok() && TZDB.get("America/Argentina/Ushuaia").is_ok());
        assert!(!TZDB.is_definitively_empty());
    }
}
