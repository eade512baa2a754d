//! `drawbridge backup FILE`: a consistent copy of the live database
//! (`VACUUM INTO`, safe while the bot writes), then its audit chain checked
//! in the copy, so a backup that cannot prove its log is never taken for a
//! good one.

use std::path::Path;
use std::process::ExitCode;

use super::usage;
use crate::config::Sources;

pub(super) async fn execute(sources: &Sources, file: &Path) -> anyhow::Result<ExitCode> {
    if file.exists() {
        return Err(usage(format!(
            "{} already exists: give a new file name",
            file.display()
        )));
    }
    let settings = super::load(sources)?;
    let live = super::open_read_only(&settings).await?;
    let copied = live.backup_to(file).await;
    live.close().await;
    copied?;
    let copy = super::open_file_read_only(file).await?;
    let mut out = std::io::stdout().lock();
    let code = super::audit::verify(&copy, &mut out).await;
    copy.close().await;
    let code = code?;
    if code == ExitCode::SUCCESS {
        println!("backup written to {}", file.display());
    }
    Ok(code)
}
