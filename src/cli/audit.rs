//! `drawbridge audit …`: the audit log, for auditors and for tamper checks
//! outside the bot. Both open the database read-only: a mistyped path is an
//! error rather than a new empty log that "verifies", and a backup under
//! inspection is never migrated or written.
//!
//! The chain alone proves that no row was changed *unless* someone with
//! write access rebuilt it (recomputed every hash after an edit, or cut the
//! tail and moved the head back). An export kept elsewhere (`audit export`)
//! pins the hashes as they were: `audit verify --against FILE` checks that
//! every row of it is still in the database with the same hash.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Subcommand, ValueEnum};

use super::usage;
use crate::config::Sources;
use crate::domain::duration::parse_span_seconds;
use crate::store::export::{Format, write_audit};
use crate::store::{AuditFilter, Store};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Write the audit log to stdout.
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        /// Only events newer than this, such as 24h or 7d.
        #[arg(long)]
        since: Option<String>,
        /// A database file (a backup, say) instead of database.url.
        #[arg(value_name = "DATABASE")]
        database: Option<PathBuf>,
    },
    /// Recompute the hash chain; exits non-zero at the first broken link.
    Verify {
        /// Also check an earlier export (`audit export --format jsonl`):
        /// every row in it must be in the database with the same hash.
        #[arg(long, value_name = "FILE")]
        against: Option<PathBuf>,
        /// A database file (a backup, say) instead of database.url.
        #[arg(value_name = "DATABASE")]
        database: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header.
    Csv,
}

pub(super) async fn execute(sources: &Sources, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let now = Utc::now();
    let mut out = std::io::stdout().lock();
    let database = match &command {
        AuditCommand::Export { database, .. } | AuditCommand::Verify { database, .. } => {
            database.as_deref()
        }
    };
    let store = open(sources, database).await?;
    let code = match command {
        AuditCommand::Export { format, since, .. } => {
            export(&store, format, since.as_deref(), now, &mut out).await
        }
        AuditCommand::Verify { against, .. } => match verify(&store, &mut out).await {
            Ok(code) if code == ExitCode::SUCCESS => match against {
                Some(file) => verify_against(&store, &file, &mut out).await,
                None => Ok(code),
            },
            other => other,
        },
    };
    store.close().await;
    code
}

/// The database named on the command line, else the configured one;
/// read-only either way.
async fn open(sources: &Sources, database: Option<&Path>) -> anyhow::Result<Store> {
    match database {
        Some(path) => super::open_file_read_only(path).await,
        None => super::open_read_only(&super::load(sources)?).await,
    }
}

async fn export(
    store: &Store,
    format: ExportFormat,
    since: Option<&str>,
    now: DateTime<Utc>,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let since = since.map(|text| parse_since(text, now)).transpose()?;
    let records = store
        .audit_events(&AuditFilter {
            since,
            ..AuditFilter::default()
        })
        .await?;
    let format = match format {
        ExportFormat::Jsonl => Format::Jsonl,
        ExportFormat::Csv => Format::Csv,
    };
    write_audit(&records, format, out)?;
    Ok(ExitCode::SUCCESS)
}

/// `--since 7d` as the instant that long before `now` (at most a century).
fn parse_since(text: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    let secs = parse_span_seconds(text).ok_or_else(|| {
        usage(format!(
            "--since: `{text}` is not a duration: use forms like 24h or 7d"
        ))
    })?;
    let secs = i64::try_from(secs)
        .unwrap_or(i64::MAX)
        .min(100 * 365 * 86_400);
    Ok(now - chrono::Duration::seconds(secs))
}

/// Checks the chain of `store`; exits 3 when it is broken.
pub(super) async fn verify(store: &Store, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let report = store.verify_audit().await?;
    match report.first_broken {
        None => {
            writeln!(out, "audit log intact: {} events verified", report.checked)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(broken) => {
            eprintln!(
                "audit log BROKEN at row {}: {} ({} rows checked)",
                broken.seq, broken.problem, report.checked
            );
            Ok(ExitCode::from(3))
        }
    }
}

/// Checks every row of the export `file` against the database.
async fn verify_against(
    store: &Store,
    file: &Path,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        usage(format!(
            "--against: cannot read {}: {}",
            file.display(),
            e.kind()
        ))
    })?;
    let exported = parse_export(&text).map_err(|line| {
        usage(format!(
            "--against: line {line} of {} is not a row of `audit export --format jsonl`",
            file.display()
        ))
    })?;
    let stored: BTreeMap<i64, String> = store
        .audit_events(&AuditFilter::default())
        .await?
        .into_iter()
        .map(|r| (r.seq, r.hash))
        .collect();
    match first_difference(&exported, &stored) {
        None => {
            writeln!(out, "{} exported rows match the database", exported.len())?;
            Ok(ExitCode::SUCCESS)
        }
        Some((seq, problem)) => {
            eprintln!(
                "audit log differs from {} at row {seq}: {problem}",
                file.display()
            );
            Ok(ExitCode::from(3))
        }
    }
}

/// `(seq, hash)` of each row of a JSONL export; `Err(line number)` for a
/// line that is not one (the line itself is not shown).
fn parse_export(text: &str) -> Result<Vec<(i64, String)>, usize> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let row: serde_json::Value = serde_json::from_str(line).map_err(|_| i + 1)?;
            match (row["seq"].as_i64(), row["hash"].as_str()) {
                (Some(seq), Some(hash)) => Ok((seq, hash.to_owned())),
                _ => Err(i + 1),
            }
        })
        .collect()
}

/// The first exported row the database lacks or holds with another hash.
fn first_difference(
    exported: &[(i64, String)],
    stored: &BTreeMap<i64, String>,
) -> Option<(i64, &'static str)> {
    exported
        .iter()
        .find_map(|(seq, hash)| match stored.get(seq) {
            None => Some((*seq, "the row is missing from the database")),
            Some(h) if h != hash => Some((*seq, "the database holds a different hash")),
            Some(_) => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_is_compared_row_by_row() {
        let export =
            parse_export("{\"seq\":1,\"hash\":\"aa\"}\n\n{\"seq\":2,\"hash\":\"bb\"}\n").unwrap();
        let stored = |rows: &[(i64, &str)]| -> BTreeMap<i64, String> {
            rows.iter().map(|(s, h)| (*s, h.to_string())).collect()
        };

        assert_eq!(
            first_difference(&export, &stored(&[(1, "aa"), (2, "bb"), (3, "cc")])),
            None
        );
        assert_eq!(
            first_difference(&export, &stored(&[(1, "aa")])),
            Some((2, "the row is missing from the database"))
        );
        assert_eq!(
            first_difference(&export, &stored(&[(1, "xx"), (2, "bb")])),
            Some((1, "the database holds a different hash"))
        );
        assert_eq!(parse_export("{\"seq\":1}\nsecret"), Err(1));
        assert_eq!(parse_export("{\"seq\":1,\"hash\":\"a\"}\nsecret"), Err(2));
    }
}
