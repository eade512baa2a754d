//! `/jit-admin unmap`: removes a mapping.

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
    let removed = s.unmap(who, required(command, "name")?).await?;
    Ok(notice(
        "Mapping removed",
        Tone::Success,
        format!("{} no longer grants access.", removed.name),
    ))
}
