//! The `drawbridge` binary: parse the command line, run it, map the result to
//! an exit code. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use drawbridge::cli::{Cli, UsageError, run};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            match err.downcast_ref::<UsageError>() {
                Some(usage) => eprintln!("error: {usage}"),
                None => eprintln!("error: {err:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
