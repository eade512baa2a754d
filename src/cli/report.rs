//! `drawbridge report`: the weekly picture from the shell. Reads the
//! database (read-only), writes the PNG (and the CSV beside it if asked)
//! and prints the short summary the audit channel would get.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::usage;
use crate::config::Sources;
use crate::domain::duration::parse_span_seconds;

/// The longest period a report covers: one column per day.
const MAX_DAYS: u64 = 31;

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// How far back, in whole days, such as 7d (at most 31d).
    #[arg(long, default_value = "7d")]
    pub since: String,
    /// The report's last day, such as 2026-11-29 (UTC; today when not
    /// given): the period ends at that day's end.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub until: Option<String>,
    /// Where to write the PNG.
    #[arg(long, value_name = "FILE", default_value = "report.png")]
    pub out: PathBuf,
    /// Also write the numbers as CSV here.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// A database file (a backup, say) instead of database.url.
    #[arg(value_name = "DATABASE")]
    pub database: Option<PathBuf>,
}

pub(super) async fn execute(sources: &Sources, args: ReportArgs) -> anyhow::Result<ExitCode> {
    let days = days_of(&args.since)?;
    let now = report_end(args.until.as_deref(), Utc::now())?;
    let store = match &args.database {
        Some(path) => super::open_file_read_only(path).await?,
        None => super::open_read_only(&super::load(sources)?).await?,
    };
    let week = write(&store, days, now, &args.out, args.csv.as_deref()).await;
    store.close().await;
    println!("{}", week?);
    println!("Wrote {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

async fn write(
    store: &crate::store::Store,
    days: u32,
    now: DateTime<Utc>,
    out: &Path,
    csv: Option<&Path>,
) -> anyhow::Result<String> {
    let first_day = (now - chrono::Duration::days(i64::from(days) - 1)).date_naive();
    let week = crate::report::gather(store, first_day, days, now).await?;
    let png = crate::report::render_png(&week)?;
    std::fs::write(out, png).with_context(|| format!("writing {}", out.display()))?;
    if let Some(csv) = csv {
        let text = crate::report::render_csv(&week)?;
        std::fs::write(csv, text).with_context(|| format!("writing {}", csv.display()))?;
    }
    Ok(week.text())
}

/// When the report ends: `now`, or the end of the day `until` names if
/// that is earlier. A day after today is refused.
fn report_end(until: Option<&str>, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    let Some(text) = until else {
        return Ok(now);
    };
    let day = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        usage(format!(
            "--until: `{text}` is not a day: use the form 2026-11-29"
        ))
    })?;
    if day > now.date_naive() {
        return Err(usage(format!("--until: {day} is after today")));
    }
    let end = day.succ_opt().map_or(DateTime::<Utc>::MAX_UTC, |next| {
        next.and_time(chrono::NaiveTime::MIN).and_utc()
    }) - chrono::Duration::microseconds(1);
    Ok(end.min(now))
}

/// `7d` as 7; whole days from 1 to [`MAX_DAYS`].
fn days_of(text: &str) -> anyhow::Result<u32> {
    let secs = parse_span_seconds(text).unwrap_or(0);
    if secs == 0 || !secs.is_multiple_of(86_400) || secs / 86_400 > MAX_DAYS {
        return Err(usage(format!(
            "--since: `{text}` is not a number of days: use forms like 7d (1d to {MAX_DAYS}d)"
        )));
    }
    Ok((secs / 86_400) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_ends_the_report_at_that_days_end_and_never_after_now() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T00:05:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(report_end(None, now).unwrap(), now);
        assert_eq!(
            report_end(Some("2026-11-30"), now).unwrap().to_rfc3339(),
            "2026-11-30T23:59:59.999999+00:00"
        );
        assert_eq!(report_end(Some("2026-12-01"), now).unwrap(), now);
        for bad in ["2026-12-02", "yesterday", "2026-13-01", ""] {
            assert!(report_end(Some(bad), now).is_err(), "{bad}");
        }
    }

    #[test]
    fn since_takes_whole_days() {
        assert_eq!(days_of("7d").unwrap(), 7);
        assert_eq!(days_of("1d").unwrap(), 1);
        for bad in ["", "36h", "0d", "32d", "soon"] {
            assert!(days_of(bad).is_err(), "{bad}");
        }
    }
}
