//! When the weekly report is posted: a weekday and a time of day in UTC
//! (`report.weekly = "Mon 09:00"`), and which days a post covers.
//!
//! A slot missed while the bot was down is posted late once it runs again,
//! within [`LATE_GRACE`]; an older one is left out, so a bot started on a
//! Thursday does not post Monday's report then.

use std::fmt;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, Utc, Weekday};

/// How late a missed slot is still posted.
pub const LATE_GRACE: Duration = Duration::hours(24);
/// Days a weekly post covers: the seven before the slot's day.
pub const WEEK_DAYS: u32 = 7;

/// A weekday and a UTC time, such as Monday 09:00.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeeklySlot {
    weekday: Weekday,
    time: NaiveTime,
}

impl WeeklySlot {
    /// Parses `Mon 09:00` (a weekday's first three letters or full name,
    /// any case, then `HH:MM` in UTC); `off` means no weekly post.
    ///
    /// # Errors
    /// Says what the value should look like.
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let wrong = || {
            format!(
                "`{text}` is not a weekly time: write a weekday and a UTC time such as \"Mon 09:00\", or \"off\""
            )
        };
        let (day, time) = text.split_once(' ').ok_or_else(wrong)?;
        let weekday = day.trim().parse::<Weekday>().map_err(|_| wrong())?;
        let time = NaiveTime::parse_from_str(time.trim(), "%H:%M").map_err(|_| wrong())?;
        Ok(Some(Self { weekday, time }))
    }

    /// The latest slot at or before `now`.
    pub fn latest(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let back =
            (7 + now.weekday().num_days_from_monday() - self.weekday.num_days_from_monday()) % 7;
        let candidate = (now.date_naive() - Duration::days(i64::from(back)))
            .and_time(self.time)
            .and_utc();
        if candidate > now {
            candidate - Duration::days(7)
        } else {
            candidate
        }
    }

    /// The next slot after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.latest(now) + Duration::days(7)
    }

    /// The slot to post at `now`: the latest one, unless it was missed by
    /// more than [`LATE_GRACE`].
    pub fn due(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let latest = self.latest(now);
        (now - latest < LATE_GRACE).then_some(latest)
    }
}

/// The first of the [`WEEK_DAYS`] days the post of `slot` covers: the
/// week that ended the day before the slot's day.
pub fn first_day(slot: DateTime<Utc>) -> NaiveDate {
    slot.date_naive() - Duration::days(i64::from(WEEK_DAYS))
}

impl fmt::Display for WeeklySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.weekday, self.time.format("%H:%M"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::report::tests::at;

    #[test]
    fn the_setting_reads_a_weekday_and_a_utc_time_or_off() {
        let slot = WeeklySlot::parse("Mon 09:00").unwrap().unwrap();
        assert_eq!(slot.to_string(), "Mon 09:00");
        assert_eq!(
            WeeklySlot::parse(" friday 17:30 ")
                .unwrap()
                .unwrap()
                .to_string(),
            "Fri 17:30"
        );
        assert_eq!(WeeklySlot::parse("off").unwrap(), None);
        assert_eq!(WeeklySlot::parse("OFF").unwrap(), None);
        for bad in [
            "Mon",
            "09:00",
            "Mon 9",
            "Mon 25:00",
            "Someday 09:00",
            "Mon 09:00 UTC+1",
        ] {
            let err = WeeklySlot::parse(bad).unwrap_err();
            assert!(err.contains("Mon 09:00"), "{bad}: {err}");
        }
    }

    #[test]
    fn slots_fall_on_the_weekday_and_missed_ones_are_posted_within_a_day() {
        let slot = WeeklySlot::parse("Mon 09:00").unwrap().unwrap();
        // Monday 2026-11-30.
        assert_eq!(
            slot.latest(at("2026-11-30T09:00:00Z")),
            at("2026-11-30T09:00:00Z")
        );
        assert_eq!(
            slot.latest(at("2026-11-30T08:59:59Z")),
            at("2026-11-23T09:00:00Z")
        );
        assert_eq!(
            slot.latest(at("2026-12-03T12:00:00Z")),
            at("2026-11-30T09:00:00Z")
        );
        assert_eq!(
            slot.next_after(at("2026-11-30T09:00:00Z")),
            at("2026-12-07T09:00:00Z")
        );
        assert_eq!(
            slot.next_after(at("2026-11-29T10:00:00Z")),
            at("2026-11-30T09:00:00Z")
        );
        assert_eq!(
            slot.due(at("2026-12-01T08:59:00Z")),
            Some(at("2026-11-30T09:00:00Z"))
        );
        assert_eq!(slot.due(at("2026-12-01T09:00:00Z")), None);
        assert_eq!(
            first_day(at("2026-11-30T09:00:00Z")).to_string(),
            "2026-11-23"
        );
    }
}
