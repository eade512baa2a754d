//! `drawbridge check-config`: every problem at once, sorted by key, so a
//! deployment can be checked before it starts; keys nobody reads (typos)
//! are warnings naming the key they most likely meant. With `--mappings
//! FILE` it checks a mappings file too, and flags loudly every mapping that
//! may open ports to `*` or a broad network.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{ConfigErrors, ConfigProblem, Settings, Sources, unknown_keys};
use crate::domain::PortAliases;
use crate::domain::mapping::MappingFile;

pub(super) fn execute(sources: &Sources, mappings: Option<&Path>) -> ExitCode {
    let mut unknown = unknown_keys(sources);
    unknown.sort_by(|a, b| a.key.cmp(&b.key));
    for key in &unknown {
        eprintln!("warning: {key}");
    }
    let (mut problems, aliases) = match Settings::load(sources) {
        Ok(settings) => {
            let mut all = settings.problems_for_run();
            all.extend(settings.problems_for_environment(|var| std::env::var(var).ok()));
            (all, settings.ports)
        }
        Err(errors) => (errors.0, PortAliases::default()),
    };
    if let Some(path) = mappings {
        problems.extend(check_mappings(path, &aliases));
    }
    problems.sort_by(|a, b| a.key.cmp(&b.key));
    if problems.is_empty() {
        println!("configuration OK");
        ExitCode::SUCCESS
    } else {
        eprintln!("{}", ConfigErrors(problems));
        ExitCode::FAILURE
    }
}

/// The file's problems; its broad mappings are printed as warnings.
fn check_mappings(path: &Path, aliases: &PortAliases) -> Vec<ConfigProblem> {
    let problem = |message: String| ConfigProblem {
        key: "mappings".into(),
        source: path.display().to_string(),
        message,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return vec![problem(format!("cannot be read: {e}"))],
    };
    match MappingFile::parse(&text, aliases) {
        Ok(mappings) => {
            for m in &mappings {
                if let Some(warning) = m.broad_warning() {
                    eprintln!(
                        "WARNING: mapping `{}` {warning}: it may open ports to far more than one address",
                        m.name
                    );
                }
            }
            Vec::new()
        }
        Err(message) => vec![problem(message)],
    }
}
