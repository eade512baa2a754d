//! `drawbridge migrate-store --from URL --to URL`: copies a database into a
//! new one (a SQLite deployment onto PostgreSQL) and verifies the copy's
//! audit chain; see [`crate::store::copy`].

use std::io::Write;
use std::process::ExitCode;

use crate::config::Sources;
use crate::store::{Store, StoreError, display_url};

pub(super) async fn execute(sources: &Sources, from: &str, to: &str) -> anyhow::Result<ExitCode> {
    // The pool size comes from the configuration, when it loads.
    let options = crate::config::Settings::load(sources)
        .map(|s| s.database.store_options())
        .unwrap_or_default();
    let user_error = |what: &str, url: &str, e: StoreError| match e {
        StoreError::InvalidInput(message) => {
            super::usage(format!("{what} {}: {message}", display_url(url)))
        }
        other => anyhow::Error::new(other).context(format!("{what} {}", display_url(url))),
    };
    if from == to {
        return Err(super::usage("--from and --to name the same database"));
    }
    let source = Store::open_read_only(from)
        .await
        .map_err(|e| user_error("opening", from, e))?;
    let target = Store::open_with(to, &options)
        .await
        .map_err(|e| user_error("opening", to, e))?;
    let report = source
        .copy_into(&target)
        .await
        .map_err(|e| user_error("copying into", to, e))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "copied {} into {}", display_url(from), display_url(to))?;
    for (table, rows) in &report.tables {
        writeln!(out, "  {table}: {rows} rows")?;
    }
    writeln!(
        out,
        "audit chain verified in the copy: {} events, head {} {}",
        report.audit_verified, report.head.0, report.head.1
    )?;
    source.close().await;
    target.close().await;
    Ok(ExitCode::SUCCESS)
}
