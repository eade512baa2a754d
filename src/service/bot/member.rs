//! The member's commands: `/jit`, `/jit-status` and `/jit-ip`.

use super::notice;
use crate::chat::{ChatMessage, Tone};
use crate::domain::{AccessRequest, SourcePrefix};
use crate::interactions::{Invocation, SlashCommand};
use crate::service::lifecycle::SaveSourceError;
use crate::service::refusals::Refused;
use crate::service::request::RequestError;
use crate::service::{Service, messages};

fn log_unexpected(error: &RequestError, reference: &str) {
    if let RequestError::Unexpected(e) = error {
        tracing::error!(reference, error.message = %e, error.cause_chain = ?e, "request failed");
    }
}

/// `/jit <port> <vm> <duration> [reason] [from]`.
pub(super) async fn jit(s: &Service, who: &Invocation, command: &SlashCommand) -> ChatMessage {
    let aliases = &s.config().aliases;
    let get = |n: &str| command.option(n).unwrap_or_default();
    let request = match AccessRequest::from_options(
        get("port"),
        get("vm"),
        get("duration"),
        command.option("reason"),
        command.option("from"),
        aliases,
    ) {
        Ok(r) => r,
        Err(e) => {
            let error = RequestError::Invalid(e.to_string());
            let reason = error.to_string();
            let refused = Refused::new("jit", get("vm"), error.code(), &reason);
            s.audit_refusal(who, refused).await;
            return messages::request_error(&error, &who.id);
        }
    };
    let break_glass = command.option("break_glass") == Some("true");
    s.wake_after(
        match s.request_access_with(who, request, break_glass).await {
            Ok(grant) if grant.state == crate::domain::GrantState::PendingApproval => {
                match s.approval_view(&grant.request_id).await {
                    Ok(view) => messages::approval::requester_view(
                        &view.grant,
                        &view.request,
                        &view.approvals,
                        aliases,
                    ),
                    Err(_) => messages::grant(&grant, aliases),
                }
            }
            Ok(grant) => messages::grant(&grant, aliases),
            Err(e) => {
                log_unexpected(&e, &who.id);
                messages::request_error(&e, &who.id)
            }
        },
    )
}

/// `/jit-status`.
pub(super) async fn status(s: &Service, who: &Invocation) -> ChatMessage {
    match s.status(who).await {
        Ok(grants) => messages::status(&grants, &s.config().aliases),
        Err(e) => messages::request_error(&RequestError::from(e), &who.id),
    }
}

/// `/jit-ip [address]`: shows the saved source, or saves a new one.
pub(super) async fn ip(s: &Service, who: &Invocation, command: &SlashCommand) -> ChatMessage {
    let Some(text) = command.option("address") else {
        return match s.saved_source(who).await {
            Ok(Some(src)) => notice(
                "Your saved source",
                Tone::Info,
                format!(
                    "Drawbridge opens ports for {src} when you give no from:. Change it with /jit-ip <address>."
                ),
            ),
            Ok(None) => notice(
                "No saved source",
                Tone::Info,
                "Save the address you connect from with /jit-ip <address>; requests then use it when you give no from:.",
            ),
            Err(e) => messages::request_error(&RequestError::from(e), &who.id),
        };
    };
    match SourcePrefix::parse(text) {
        Err(e) => notice("That is not an address", Tone::Denied, e.to_string()),
        Ok(src) => match s.save_source(who, src).await {
            Ok(()) => s.wake_after(notice(
                "Saved",
                Tone::Success,
                format!("Requests without from: now open ports for {src}."),
            )),
            Err(e @ SaveSourceError::NotAllowed(_)) => {
                s.wake_after(notice("Not saved", Tone::Denied, e.to_string()))
            }
            Err(SaveSourceError::Store(e)) => {
                messages::request_error(&RequestError::from(e), &who.id)
            }
        },
    }
}
