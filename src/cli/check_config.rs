//! `drawbridge check-config`: every problem at once, sorted by key, so a
//! deployment can be checked before it starts.

use std::process::ExitCode;

use crate::config::{ConfigErrors, Settings, Sources};

pub(super) fn execute(sources: &Sources) -> ExitCode {
    let mut problems = match Settings::load(sources) {
        Ok(settings) => settings.problems_for_run(),
        Err(errors) => errors.0,
    };
    problems.sort_by(|a, b| a.key.cmp(&b.key));
    if problems.is_empty() {
        println!("configuration OK");
        ExitCode::SUCCESS
    } else {
        eprintln!("{}", ConfigErrors(problems));
        ExitCode::FAILURE
    }
}
