//! `drawbridge migrate`: applies the migrations and says which. It connects
//! without migrating first, unlike every other command.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::Sources;
use crate::store::Store;

pub(super) async fn execute(sources: &Sources) -> anyhow::Result<ExitCode> {
    let settings = super::load(sources)?;
    let url = &settings.database.url;
    let mut out = std::io::stdout().lock();
    let store = Store::connect_with(url, &settings.database.store_options())
        .await
        .with_context(|| format!("opening {}", crate::store::display_url(url)))?;
    let applied = store.migrate().await?;
    if applied.is_empty() {
        writeln!(out, "database is up to date")?;
    }
    for m in applied {
        writeln!(out, "applied migration {} {}", m.version, m.description)?;
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
