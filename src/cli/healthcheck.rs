//! `drawbridge healthcheck`: for container health checks, which run the
//! image's own binary rather than curl.

use std::process::ExitCode;

use crate::config::Sources;

pub(super) async fn execute(sources: &Sources, url: Option<String>) -> anyhow::Result<ExitCode> {
    let url = match url {
        Some(url) => url,
        None => crate::ops::healthz_url(&super::load(sources)?),
    };
    match crate::ops::probe(&url).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("unhealthy: {e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}
