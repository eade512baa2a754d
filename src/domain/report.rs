//! The weekly picture as numbers: grants per day by VM group, hours held
//! open per member and weekday, refusals, and coverage. Pure: the grants,
//! the names and the counts come in, the [`WeekSummary`] goes out; drawing
//! it is [`crate::report`]'s.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc, Weekday};

use super::GrantState;

pub mod weekly;

/// One grant as the report sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportGrant {
    /// Who held it (display name, or the user id when no name is known).
    pub member: String,
    /// The VM's group: its resource group.
    pub group: String,
    pub state: GrantState,
    pub requested_at: DateTime<Utc>,
    /// When the port closes per Azure (none if it never opened).
    pub end_time: Option<DateTime<Utc>>,
    /// When its state last changed (the early close, for a closed grant).
    pub state_changed_at: DateTime<Utc>,
}

impl ReportGrant {
    /// How long the port was (or is, up to `now`) open: from the request
    /// to the end Azure gave, cut short by an early close or an end Azure
    /// reported; nothing for a grant that never opened.
    pub fn held(&self, now: DateTime<Utc>) -> Duration {
        let Some(end) = self.end_time else {
            return Duration::zero();
        };
        let until = match self.state {
            GrantState::Requested | GrantState::Failed | GrantState::PendingAzure => {
                return Duration::zero();
            }
            GrantState::ClosedEarly | GrantState::Ended | GrantState::Superseded => {
                end.min(self.state_changed_at)
            }
            _ => end,
        };
        (until.min(now) - self.requested_at).max(Duration::zero())
    }

    fn opened(&self) -> bool {
        self.end_time.is_some() && !matches!(self.state, GrantState::Failed)
    }
}

/// The week in numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct WeekSummary {
    /// The first day shown (UTC).
    pub first_day: NaiveDate,
    /// Days shown, from `first_day`.
    pub days: u32,
    /// Group to grants opened per day (index 0 = `first_day`).
    pub grants_per_day: BTreeMap<String, Vec<u32>>,
    /// Member to hours held open per weekday (index 0 = Monday).
    pub hours_by_weekday: BTreeMap<String, [f64; 7]>,
    /// Requests refused.
    pub denials: u32,
    /// Break-glass uses: requests that skipped approval (the
    /// `break_glass_used` audit events).
    pub break_glass: u32,
    /// VMs without a JIT policy, when known.
    pub without_jit: Option<Vec<String>>,
    /// VMs under JIT, when known.
    pub with_jit: Option<usize>,
}

impl WeekSummary {
    /// Grants opened in all.
    pub fn total_grants(&self) -> u32 {
        self.grants_per_day.values().flatten().sum()
    }

    /// Hours held open in all.
    pub fn total_hours(&self) -> f64 {
        self.hours_by_weekday.values().flatten().sum()
    }

    /// The member who held ports open longest, with the hours.
    pub fn busiest_member(&self) -> Option<(&str, f64)> {
        self.hours_by_weekday
            .iter()
            .map(|(m, h)| (m.as_str(), h.iter().sum::<f64>()))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// A few lines for the audit channel and the shell.
    pub fn text(&self) -> String {
        let mut lines = vec![format!(
            "Access from {} for {} days: {} grants, {:.1} hours held open, {} denials, {} break-glass uses.",
            self.first_day,
            self.days,
            self.total_grants(),
            self.total_hours(),
            self.denials,
            self.break_glass
        )];
        if let Some((member, hours)) = self.busiest_member() {
            lines.push(format!("Longest held: {member} ({hours:.1} h)."));
        }
        lines.push(match (&self.without_jit, self.with_jit) {
            (Some(without), Some(with)) if without.is_empty() => {
                format!("Coverage: all {with} VMs are under JIT.")
            }
            (Some(without), with) => format!(
                "Coverage: {} VMs without JIT ({}){}.",
                without.len(),
                without.join(", "),
                with.map(|n| format!(", {n} under JIT")).unwrap_or_default()
            ),
            (None, _) => "Coverage: not checked (Azure was not asked).".to_string(),
        });
        lines.join("\n")
    }
}

/// Sums `grants` over the `days` days from `first_day`, as of `now`.
pub fn summarize(
    grants: &[ReportGrant],
    first_day: NaiveDate,
    days: u32,
    now: DateTime<Utc>,
) -> WeekSummary {
    let mut per_day: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut hours: BTreeMap<String, [f64; 7]> = BTreeMap::new();
    for grant in grants {
        let day = grant.requested_at.date_naive();
        let Ok(index) = usize::try_from((day - first_day).num_days()) else {
            continue;
        };
        if index >= days as usize {
            continue;
        }
        if grant.opened() {
            per_day
                .entry(grant.group.clone())
                .or_insert_with(|| vec![0; days as usize])[index] += 1;
        }
        let held = grant.held(now).num_seconds() as f64 / 3600.0;
        if held > 0.0 {
            let weekday = weekday_index(grant.requested_at.weekday());
            hours.entry(grant.member.clone()).or_insert([0.0; 7])[weekday] += held;
        }
    }
    WeekSummary {
        first_day,
        days,
        grants_per_day: per_day,
        hours_by_weekday: hours,
        denials: 0,
        break_glass: 0,
        without_jit: None,
        with_jit: None,
    }
}

fn weekday_index(day: Weekday) -> usize {
    day.num_days_from_monday() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RFC 3339 time (also for [`weekly`]'s tests).
    pub(super) fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn grant(member: &str, group: &str, state: GrantState, from: &str, hours: i64) -> ReportGrant {
        let requested_at = at(from);
        ReportGrant {
            member: member.into(),
            group: group.into(),
            state,
            requested_at,
            end_time: Some(requested_at + Duration::hours(hours)),
            state_changed_at: requested_at,
        }
    }

    #[test]
    fn grants_are_counted_per_day_and_hours_per_weekday() {
        let monday = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let mut closed = grant(
            "sam",
            "rg-web",
            GrantState::ClosedEarly,
            "2026-11-24T09:00:00Z",
            2,
        );
        closed.state_changed_at = at("2026-11-24T09:30:00Z");
        let mut failed = grant(
            "dana",
            "rg-web",
            GrantState::Failed,
            "2026-11-24T10:00:00Z",
            1,
        );
        failed.end_time = None;
        let grants = [
            grant(
                "sam",
                "rg-web",
                GrantState::Expired,
                "2026-11-23T09:00:00Z",
                2,
            ),
            closed,
            failed,
            grant(
                "dana",
                "rg-db",
                GrantState::Expired,
                "2026-11-29T22:00:00Z",
                1,
            ),
            grant(
                "dana",
                "rg-db",
                GrantState::Expired,
                "2026-11-30T09:00:00Z",
                1,
            ),
        ];
        let week = summarize(&grants, monday, 7, at("2026-12-01T00:00:00Z"));
        assert_eq!(week.grants_per_day["rg-web"], vec![1, 1, 0, 0, 0, 0, 0]);
        assert_eq!(week.grants_per_day["rg-db"], vec![0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(
            week.hours_by_weekday["sam"],
            [2.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(week.hours_by_weekday["dana"][6], 1.0);
        assert_eq!(week.total_grants(), 3);
        assert_eq!(week.busiest_member(), Some(("sam", 2.5)));
    }

    #[test]
    fn an_open_grant_counts_up_to_now() {
        let g = grant(
            "sam",
            "rg-web",
            GrantState::Active,
            "2026-11-24T09:00:00Z",
            3,
        );
        assert_eq!(g.held(at("2026-11-24T10:00:00Z")), Duration::hours(1));
    }
}
