//! `/jit-admin enable`: puts a VM under JIT with the configured defaults.

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
    let vm = s.enable(who, required(command, "vm")?).await?;
    Ok(notice(
        "JIT enabled",
        Tone::Success,
        format!(
            "{vm} is now under JIT with the default ports; its management ports stay closed until someone asks."
        ),
    ))
}
