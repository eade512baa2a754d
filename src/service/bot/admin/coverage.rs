//! `/jit-admin coverage`: the VMs no JIT policy protects.

use super::notice;
use crate::chat::{ChatMessage, Tone};
use crate::interactions::Invocation;
use crate::service::Service;
use crate::service::admin::AdminError;

pub(super) async fn run(s: &Service, who: &Invocation) -> Result<ChatMessage, AdminError> {
    let vms = s.coverage(who).await?;
    Ok(if vms.is_empty() {
        notice(
            "Every VM is under JIT",
            Tone::Success,
            "No VM in the configured subscriptions lacks a JIT policy.",
        )
    } else {
        notice(
            &format!("{} VMs without JIT", vms.len()),
            Tone::Warning,
            format!(
                "{}\nPut one under JIT with /jit-admin enable.",
                vms.join("\n")
            ),
        )
    })
}
