//! Access durations: `2h`, `90m`, `1h30m`, `1d`, ISO 8601 `PT2H`, `PT1H30M`,
//! within Azure's bounds of 5 minutes to 24 hours.

use std::fmt;

/// The shortest window Azure accepts, in minutes.
pub const MIN_MINUTES: u32 = 5;
/// The longest window Azure accepts, in minutes (one day).
pub const MAX_MINUTES: u32 = 24 * 60;

const ACCEPTED: &str = "use forms like 45m, 2h, 1h30m or PT2H";

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing was given.
    #[error("no duration given: {ACCEPTED}")]
    Empty,
    /// Not in any accepted form.
    #[error("`{0}` is not a duration: {ACCEPTED}")]
    Malformed(String),
    /// A number without a unit.
    #[error("`{0}` has no unit: add m for minutes or h for hours, as in {0}m or {0}h")]
    MissingUnit(String),
    /// Seconds that do not make whole minutes.
    #[error("`{0}` is not a whole number of minutes: JIT windows are counted in minutes")]
    NotWholeMinutes(String),
    /// Below Azure's minimum.
    #[error("`{0}` is too short: the shortest window is 5m")]
    TooShort(String),
    /// Above Azure's maximum.
    #[error("`{0}` is too long: the longest window is 24h")]
    TooLong(String),
}

/// A requested access window: whole minutes from 5 minutes to 24 hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccessDuration {
    minutes: u32,
}

impl AccessDuration {
    /// Parses a duration in the human or ISO 8601 form, within Azure's bounds.
    pub fn parse(input: &str) -> Result<Self, DurationError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(DurationError::Empty);
        }
        let shown: String = trimmed.chars().take(40).collect();
        let seconds = parse_seconds(trimmed).map_err(|e| match e {
            Shape::Malformed => DurationError::Malformed(shown.clone()),
            Shape::MissingUnit => DurationError::MissingUnit(shown.clone()),
        })?;
        if seconds % 60 != 0 {
            return Err(DurationError::NotWholeMinutes(shown));
        }
        Self::from_minutes_checked(seconds / 60, &shown)
    }

    /// A duration of `minutes`, if within bounds.
    pub fn from_minutes(minutes: u32) -> Option<Self> {
        (MIN_MINUTES..=MAX_MINUTES)
            .contains(&minutes)
            .then_some(Self { minutes })
    }

    fn from_minutes_checked(minutes: u64, shown: &str) -> Result<Self, DurationError> {
        if minutes < u64::from(MIN_MINUTES) {
            Err(DurationError::TooShort(shown.to_string()))
        } else if minutes > u64::from(MAX_MINUTES) {
            Err(DurationError::TooLong(shown.to_string()))
        } else {
            // In range, so it fits in u32.
            Ok(Self {
                minutes: minutes as u32,
            })
        }
    }

    /// The shortest window.
    pub fn min() -> Self {
        Self {
            minutes: MIN_MINUTES,
        }
    }

    /// The longest window.
    pub fn max() -> Self {
        Self {
            minutes: MAX_MINUTES,
        }
    }

    /// Whole minutes.
    pub fn minutes(self) -> u32 {
        self.minutes
    }

    /// As a chrono duration.
    pub fn to_chrono(self) -> chrono::Duration {
        chrono::Duration::minutes(i64::from(self.minutes))
    }

    /// The ISO 8601 form Azure uses, such as `PT2H` or `PT1H30M`.
    pub fn to_iso8601(self) -> String {
        let (h, m) = (self.minutes / 60, self.minutes % 60);
        match (h, m) {
            (0, m) => format!("PT{m}M"),
            (h, 0) => format!("PT{h}H"),
            (h, m) => format!("PT{h}H{m}M"),
        }
    }
}

/// The short human form, such as `2h`, `45m` or `1h30m`; it parses back.
impl fmt::Display for AccessDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (h, m) = (self.minutes / 60, self.minutes % 60);
        match (h, m) {
            (0, m) => write!(f, "{m}m"),
            (h, 0) => write!(f, "{h}h"),
            (h, m) => write!(f, "{h}h{m}m"),
        }
    }
}

/// A short human form of any span: `3h`, `1h30m`, `1d`, `45s`.
pub fn format_duration(d: chrono::TimeDelta) -> String {
    let mut secs = d.num_seconds().max(0);
    if secs == 0 {
        return "0m".to_owned();
    }
    let mut out = String::new();
    for (unit, len) in [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    out
}

/// Parses a span such as `30s`, `10m`, `1h30m` or `PT5M` into seconds, with
/// no bounds: for configuration intervals and `--since`.
pub fn parse_span_seconds(input: &str) -> Option<u64> {
    let input = input.trim();
    if input.is_empty() {
        return None;
    }
    parse_seconds(input).ok()
}

enum Shape {
    Malformed,
    MissingUnit,
}

/// Parses any ISO 8601 duration of days, hours, minutes and seconds
/// (`P1D`, `PT3H`, `PT1H30M`, `PT300S`) into seconds, without bounds. Used for
/// Azure's `maxRequestAccessDuration` as well as for requests.
pub fn parse_iso8601_seconds(input: &str) -> Option<u64> {
    let upper = input.trim().to_ascii_uppercase();
    let rest = upper.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => {
            if t.is_empty() {
                return None;
            }
            (d, Some(t))
        }
        None => (rest, None),
    };
    if date.is_empty() && time.is_none() {
        return None;
    }
    let mut total = components(date, &[('D', 86_400)])?;
    if let Some(t) = time {
        total = total.checked_add(components(t, &[('H', 3600), ('M', 60), ('S', 1)])?)?;
    }
    Some(total)
}

/// Sums `<number><unit>` components whose units appear in order in `units`.
fn components(text: &str, units: &[(char, u64)]) -> Option<u64> {
    let mut total: u64 = 0;
    let mut next_unit = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            if digits.len() >= 9 {
                return None;
            }
            digits.push(c);
            continue;
        }
        let pos = units[next_unit..].iter().position(|(u, _)| *u == c)? + next_unit;
        if digits.is_empty() {
            return None;
        }
        let n: u64 = digits.parse().ok()?;
        total = total.checked_add(n.checked_mul(units[pos].1)?)?;
        digits.clear();
        next_unit = pos + 1;
    }
    digits.is_empty().then_some(total)
}

fn parse_seconds(input: &str) -> Result<u64, Shape> {
    if input.starts_with(['P', 'p']) {
        return parse_iso8601_seconds(input).ok_or(Shape::Malformed);
    }
    if input.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Shape::MissingUnit);
    }
    // Human form: one or more <number><unit>, largest unit first.
    let lower = input.to_ascii_lowercase();
    let mut total: u64 = 0;
    let mut rank = 0; // 0 none yet, then 1 d, 2 h, 3 m, 4 s
    let mut rest = lower.as_str();
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or(Shape::Malformed)?;
        if digits_end == 0 || digits_end > 9 {
            return Err(Shape::Malformed);
        }
        let n: u64 = rest[..digits_end].parse().map_err(|_| Shape::Malformed)?;
        rest = &rest[digits_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (unit, tail) = rest.split_at(unit_end);
        let (unit_rank, scale) = match unit {
            "d" | "day" | "days" => (1, 86_400),
            "h" | "hr" | "hrs" | "hour" | "hours" => (2, 3600),
            "m" | "min" | "mins" | "minute" | "minutes" => (3, 60),
            "s" | "sec" | "secs" | "second" | "seconds" => (4, 1),
            _ => return Err(Shape::Malformed),
        };
        if unit_rank <= rank {
            return Err(Shape::Malformed);
        }
        rank = unit_rank;
        total = total
            .checked_add(n.checked_mul(scale).ok_or(Shape::Malformed)?)
            .ok_or(Shape::Malformed)?;
        rest = tail;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_format_shortly() {
        assert_eq!(format_duration(chrono::TimeDelta::minutes(90)), "1h30m");
        assert_eq!(format_duration(chrono::TimeDelta::hours(24)), "1d");
        assert_eq!(format_duration(chrono::TimeDelta::minutes(5)), "5m");
        assert_eq!(format_duration(chrono::TimeDelta::seconds(45)), "45s");
    }

    #[test]
    fn accepted_forms_parse_to_minutes() {
        let cases = [
            ("2h", 120),
            ("90m", 90),
            ("1h30m", 90),
            ("45m", 45),
            ("5m", 5),
            ("24h", 1440),
            ("1d", 1440),
            ("2H", 120),
            ("1hr", 60),
            ("2hours", 120),
            ("30min", 30),
            ("PT2H", 120),
            ("PT1H30M", 90),
            ("pt45m", 45),
            ("P1D", 1440),
            ("PT300S", 5),
            ("600s", 10),
        ];
        for (input, minutes) in cases {
            assert_eq!(
                AccessDuration::parse(input).map(|d| d.minutes()),
                Ok(minutes),
                "{input}"
            );
        }
    }

    #[test]
    fn refusals_say_what_was_wrong() {
        use DurationError::*;
        type Check = fn(&DurationError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, Empty)),
            ("2", |e| matches!(e, MissingUnit(_))),
            ("2x", |e| matches!(e, Malformed(_))),
            ("h2", |e| matches!(e, Malformed(_))),
            ("30m1h", |e| matches!(e, Malformed(_))),
            ("1h1h", |e| matches!(e, Malformed(_))),
            ("PT", |e| matches!(e, Malformed(_))),
            ("P", |e| matches!(e, Malformed(_))),
            ("PTH", |e| matches!(e, Malformed(_))),
            ("PT1M1H", |e| matches!(e, Malformed(_))),
            ("-5m", |e| matches!(e, Malformed(_))),
            ("4m", |e| matches!(e, TooShort(_))),
            ("0h", |e| matches!(e, TooShort(_))),
            ("25h", |e| matches!(e, TooLong(_))),
            ("PT24H1M", |e| matches!(e, TooLong(_))),
            ("99999999999h", |e| matches!(e, Malformed(_))),
            ("301s", |e| matches!(e, NotWholeMinutes(_))),
        ];
        for (input, check) in cases {
            let err = AccessDuration::parse(input).unwrap_err();
            assert!(check(&err), "{input}: {err:?}");
        }
        assert_eq!(
            AccessDuration::parse("4m").unwrap_err().to_string(),
            "`4m` is too short: the shortest window is 5m"
        );
        assert!(
            AccessDuration::parse("2x")
                .unwrap_err()
                .to_string()
                .contains("use forms like 45m, 2h, 1h30m or PT2H")
        );
    }

    #[test]
    fn display_and_iso_round_trip() {
        for minutes in [5, 45, 60, 90, 120, 1439, 1440] {
            let d = AccessDuration::from_minutes(minutes).unwrap();
            assert_eq!(AccessDuration::parse(&d.to_string()), Ok(d));
            assert_eq!(AccessDuration::parse(&d.to_iso8601()), Ok(d));
        }
        assert_eq!(
            AccessDuration::from_minutes(90).unwrap().to_iso8601(),
            "PT1H30M"
        );
        assert_eq!(
            AccessDuration::from_minutes(90).unwrap().to_string(),
            "1h30m"
        );
        assert!(AccessDuration::from_minutes(4).is_none());
    }

    #[test]
    fn iso8601_without_bounds_reads_policy_maxima() {
        assert_eq!(parse_iso8601_seconds("PT3H"), Some(10_800));
        assert_eq!(parse_iso8601_seconds("P1DT1H"), Some(90_000));
        assert_eq!(parse_iso8601_seconds("PT5M"), Some(300));
        assert_eq!(parse_iso8601_seconds("3H"), None);
        assert_eq!(parse_iso8601_seconds("P1H"), None);
    }
}
