//! `drawbridge audit …`: the audit log, for auditors and for tamper checks
//! outside the bot.

use std::io::Write;
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
    },
    /// Recompute the hash chain; exits non-zero at the first broken link.
    Verify,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header.
    Csv,
}

pub(super) async fn execute(sources: &Sources, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let settings = super::load(sources)?;
    let now = Utc::now();
    let mut out = std::io::stdout().lock();
    let store = super::open_store(&settings).await?;
    let code = match command {
        AuditCommand::Export { format, since } => {
            export(&store, format, since.as_deref(), now, &mut out).await
        }
        AuditCommand::Verify => verify(&store, &mut out).await,
    };
    store.close().await;
    code
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

async fn verify(store: &Store, out: &mut impl Write) -> anyhow::Result<ExitCode> {
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
