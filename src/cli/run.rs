//! `drawbridge run`: the bot, until SIGINT or SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use crate::app::{App, shutdown_signal};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{ConfigErrors, Sources};

pub(super) async fn execute(sources: &Sources) -> anyhow::Result<ExitCode> {
    let settings = super::load(sources)?;
    crate::telemetry::init(
        settings.logging.format,
        &settings.logging.filter,
        std::io::stderr,
    );
    let problems = settings.problems_for_run();
    if !problems.is_empty() {
        return Err(super::usage(ConfigErrors(problems).to_string()));
    }
    let clock: SharedClock = Arc::new(SystemClock);
    let app = App::build(settings, clock).await?;
    app.bind().await?.run(shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
