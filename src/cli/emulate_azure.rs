//! `drawbridge emulate-azure`: the Azure JIT emulator on its own, for trying
//! a real `drawbridge run` (or another client) against it.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::LogFormat;

/// Runs the emulator; an empty identity header is generated and printed.
pub(super) async fn execute(
    listen: SocketAddr,
    mut options: crate::sandbox::StandaloneOptions,
) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(LogFormat::Pretty, "info", std::io::stderr);
    if options.identity_header.is_empty() {
        let generated = uuid::Uuid::new_v4().simple().to_string();
        eprintln!("identity header (IDENTITY_HEADER): {generated}");
        options.identity_header = generated;
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    crate::sandbox::run_standalone_with(listener, options, crate::app::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
