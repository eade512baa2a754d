//! `drawbridge demo`: the whole bot against the emulator, in this terminal.

use std::process::ExitCode;

use crate::config::LogFormat;
use crate::demo::DemoOptions;

pub(super) async fn execute(speed: Option<f64>) -> anyhow::Result<ExitCode> {
    if speed.is_some_and(|s| !(0.0..=100_000.0).contains(&s)) {
        return Err(super::usage("--speed: give a number from 0 to 100000"));
    }
    crate::telemetry::init(LogFormat::Pretty, "warn", std::io::stderr);
    crate::demo::run(DemoOptions { speed }).await?;
    Ok(ExitCode::SUCCESS)
}
