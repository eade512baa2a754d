//! `drawbridge check-config`: every problem at once, sorted by key, so a
//! deployment can be checked before it starts; keys nobody reads (typos)
//! are warnings naming the key they most likely meant.

use std::process::ExitCode;

use crate::config::{ConfigErrors, Settings, Sources, unknown_keys};

pub(super) fn execute(sources: &Sources) -> ExitCode {
    let mut unknown = unknown_keys(sources);
    unknown.sort_by(|a, b| a.key.cmp(&b.key));
    for key in &unknown {
        eprintln!("warning: {key}");
    }
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
