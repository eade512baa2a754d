//! `drawbridge emulate-azure`: the Azure JIT emulator on its own, for trying
//! a real `drawbridge run` (or another client) against it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::LogFormat;

pub(super) async fn execute(
    listen: SocketAddr,
    seed: Option<PathBuf>,
    identity_header: Option<String>,
    arm_audience: Option<String>,
) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(LogFormat::Pretty, "info", std::io::stderr);
    let header = identity_header.unwrap_or_else(|| {
        let generated = uuid::Uuid::new_v4().simple().to_string();
        eprintln!("identity header (IDENTITY_HEADER): {generated}");
        generated
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let options = crate::sandbox::StandaloneOptions {
        seed,
        identity_header: header,
        arm_audience,
    };
    crate::sandbox::run_standalone_with(listener, options, crate::app::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
