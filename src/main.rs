//! The `drawbridge` binary: parse the command line, run it, map the result to
//! an exit code. Everything else lives in the library.
//!
//! # Allocator
//!
//! jemalloc instead of glibc's malloc. An index refresh at 50,000 VMs reads
//! a page of tens of MiB and frees as much: glibc kept the freed memory as
//! fragmented free chunks (RSS grew by 12 MiB over 10 refreshes), jemalloc
//! hands it back. BENCHMARKS.md ("Scale", issue 19) has the figures.

use std::process::ExitCode;

use clap::Parser;
use drawbridge::cli::{Cli, UsageError, run};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` runs (`_rjem_` is the crate's
/// symbol prefix): a background thread returns freed pages to the system
/// one second after they were freed, even while the bot is idle, instead
/// of ten seconds later and only when it next allocates.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

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
