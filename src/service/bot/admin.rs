//! `/jit-admin`: one file per subcommand. Each parses its options, calls
//! one use case (which checks the admin role) and words the outcome.

mod audit;
mod coverage;
mod enable;
mod explain;
mod map;
mod mappings;
mod report;
mod unmap;

use super::notice;
use crate::chat::{Card, ChatMessage, Tone};
use crate::domain::RoleMapping;
use crate::interactions::{Invocation, SlashCommand};
use crate::service::Service;
use crate::service::admin::AdminError;
use crate::service::refusals::Refused;

/// Runs subcommand `sub`; every outcome, failures included, is a message.
pub(super) async fn run(
    s: &Service,
    who: &Invocation,
    sub: &str,
    command: &SlashCommand,
) -> ChatMessage {
    let result = match sub {
        "map" => map::run(s, who, command).await,
        "unmap" => unmap::run(s, who, command).await,
        "mappings" => mappings::run(s, who),
        "explain" => explain::run(s, who, command).await,
        "audit" => audit::run(s, who, command).await,
        "coverage" => coverage::run(s, who).await,
        "enable" => enable::run(s, who, command).await,
        "pending" => pending(s, who).await,
        "report" => report::run(s, who).await,
        other => Err(AdminError::Invalid(format!("unknown subcommand {other}"))),
    };
    let message = match result {
        Ok(message) => message,
        Err(e) => {
            let action = format!("jit-admin {sub}");
            let reason = e.to_string();
            let refused = Refused::new(&action, "", e.audit_code(), &reason);
            s.audit_refusal(who, refused).await;
            admin_error(&e, &who.id)
        }
    };
    s.wake_after(message)
}

/// `/jit-admin pending`: every request waiting for approval, for approvers
/// (of any mapping) and admins.
async fn pending(s: &Service, who: &Invocation) -> Result<ChatMessage, AdminError> {
    use crate::service::approval::ApprovalError;
    match s.pending_requests(who).await {
        Ok(views) => Ok(super::approvals::pending_list(s, views)),
        Err(ApprovalError::NotApprover { .. }) => Err(AdminError::Invalid(
            "/jit-admin pending is for approvers and admins".into(),
        )),
        Err(e) => Err(AdminError::Unexpected(anyhow::anyhow!("{e}"))),
    }
}

/// A required option's value.
fn required<'a>(command: &'a SlashCommand, name: &str) -> Result<&'a str, AdminError> {
    command
        .option(name)
        .ok_or_else(|| AdminError::Invalid(format!("the option {name} is required")))
}

fn admin_error(error: &AdminError, reference: &str) -> ChatMessage {
    match error {
        AdminError::NotAdmin => notice("Not allowed", Tone::Denied, error.to_string()),
        AdminError::Invalid(m) => notice("That did not work", Tone::Denied, m.clone()),
        AdminError::Azure(m) => notice("Azure did not do it", Tone::Error, m.clone()),
        AdminError::Unexpected(e) => {
            tracing::error!(reference, error.message = %e, error.cause_chain = ?e, "admin action failed");
            notice(
                "Something went wrong",
                Tone::Error,
                format!(
                    "An operator can find the details in the logs under reference {reference}."
                ),
            )
        }
    }
}

fn mapping_summary(m: &RoleMapping) -> String {
    let roles = m
        .roles
        .iter()
        .map(|r| format!("<@&{r}>"))
        .collect::<Vec<_>>()
        .join(" ");
    format!("{roles} → {}", m.describe())
}

fn mapping_card(title: &str, m: &RoleMapping) -> Card {
    Card::new(title, Tone::Success).field(m.name.to_string(), mapping_summary(m), false)
}
