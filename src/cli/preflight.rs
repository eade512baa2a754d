//! `drawbridge preflight`: checks the deployment the configuration
//! describes against the real services and prints a checklist; exits 1 when
//! any check fails, so a rollout can gate on it.

use std::process::ExitCode;
use std::sync::Arc;

use crate::clock::SharedClock;
use crate::config::{Sources, unknown_keys};
use crate::preflight::{CheckLine, Checklist, check_azure, check_discord};

pub(super) async fn execute(sources: &Sources) -> anyhow::Result<ExitCode> {
    let mut unknown = unknown_keys(sources);
    unknown.sort_by(|a, b| a.key.cmp(&b.key));
    for key in &unknown {
        println!("! warning: {key}");
    }
    let settings = super::load(sources)?;
    let mut list = Checklist::default();
    let mut problems = settings.problems_for_run();
    problems.extend(settings.problems_for_environment(|var| std::env::var(var).ok()));
    for p in problems {
        list.0.push(CheckLine {
            ok: false,
            what: format!("configuration: {} {}", p.key, p.message),
            fix: Some("run drawbridge check-config for every configuration problem".into()),
        });
    }
    match crate::discord::discord_http(&settings.discord) {
        Ok(http) => list.0.extend(check_discord(&http, &settings.discord).await),
        Err(e) => list.0.push(CheckLine {
            ok: false,
            what: format!("Discord: {e}"),
            fix: Some("set discord.token".into()),
        }),
    }
    let clock: SharedClock = Arc::new(crate::clock::SystemClock);
    let (azure, _) = crate::app::build_azure(&settings, &clock)?;
    let subscriptions: Vec<String> = settings
        .azure
        .subscriptions
        .iter()
        .map(ToString::to_string)
        .collect();
    list.0
        .extend(check_azure(azure.arm(), &subscriptions).await);
    print!("{list}");
    Ok(if list.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
