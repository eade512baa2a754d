//! `/jit-admin enable`: puts a VM under JIT with the configured defaults and
//! tells the admin what Azure's policy shows for it afterwards.

use super::{notice, required};
use crate::chat::{ChatMessage, Tone};
use crate::interactions::{Invocation, SlashCommand};
use crate::service::Service;
use crate::service::admin::AdminError;

pub(super) async fn run(
    s: &Service,
    who: &Invocation,
    command: &SlashCommand,
) -> Result<ChatMessage, AdminError> {
    let enabled = s.enable(who, required(command, "vm")?).await?;
    let ports: Vec<String> = enabled.ports.iter().map(u16::to_string).collect();
    Ok(notice(
        "JIT enabled",
        Tone::Success,
        format!(
            "{} is now under JIT: Azure's policy {} shows ports {} for it. They stay closed until someone asks.",
            enabled.vm,
            enabled.policy,
            ports.join(", ")
        ),
    ))
}
