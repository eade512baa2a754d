//! The member's commands: `/jit`, `/jit-status`, `/jit-ip` and `/jit-who`.

use super::notice;
use crate::chat::{ChatMessage, Tone};
use crate::domain::{AccessRequest, GrantState, SourcePrefix, VmKey, VmRef};
use crate::interactions::Choice;
use crate::interactions::{Invocation, SlashCommand};
use crate::service::autocomplete::CHOICE_NAME_MAX;
use crate::service::lifecycle::SaveSourceError;
use crate::service::refusals::Refused;
use crate::service::request::RequestError;
use crate::service::who::open_note;
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
        match s
            .request_access_with(who, request.clone(), break_glass)
            .await
        {
            Ok(grant) if grant.state == GrantState::PendingApproval => {
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
            Ok(grant) if grant.state == GrantState::Confirming => {
                match s.holder_for(&grant).await {
                    Ok(holder) => messages::question(&grant, holder.as_ref(), aliases),
                    Err(e) => messages::request_error(&RequestError::from(e), &who.id),
                }
            }
            Ok(grant) => {
                let grant = s.as_settled_since(grant).await;
                let connection = s.connection_of(&grant).await;
                messages::grant_with(&grant, aliases, connection.as_deref())
            }
            Err(RequestError::NoSource) if s.ip_links_enabled() => {
                link_reply(s, who, Some(&request), None).await
            }
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
        if s.ip_links_enabled() {
            return match s.saved_source(who).await {
                Ok(saved) => link_reply(s, who, None, saved).await,
                Err(e) => messages::request_error(&RequestError::from(e), &who.id),
            };
        }
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

/// A one-time IP link for `who`, finishing `pending` when opened; `saved`
/// is shown beside it for `/jit-ip`.
async fn link_reply(
    s: &Service,
    who: &Invocation,
    pending: Option<&AccessRequest>,
    saved: Option<SourcePrefix>,
) -> ChatMessage {
    match s.offer_ip_link(who, pending).await {
        Ok(Some(offer)) => messages::ip_link(&offer, pending.is_some(), saved),
        Ok(None) => messages::request_error(&RequestError::NoSource, &who.id),
        Err(e) => {
            let error = RequestError::from(e);
            log_unexpected(&error, &who.id);
            messages::request_error(&error, &who.id)
        }
    }
}

/// `/jit-who [vm]`.
pub(super) async fn who(s: &Service, who: &Invocation, command: &SlashCommand) -> ChatMessage {
    let vm = match command.option("vm").map(VmRef::parse).transpose() {
        Ok(vm) => vm,
        Err(e) => return notice("That is not a VM", Tone::Denied, e.to_string()),
    };
    match s.who_holds(who, vm.as_ref()).await {
        Ok(holders) => messages::holders(&holders, &s.config().aliases),
        Err(e) => {
            log_unexpected(&e, &who.id);
            messages::request_error(&e, &who.id)
        }
    }
}

/// VM choices with a note on those someone holds open
/// (`web-01 (rg-web) · open for @sam until 14:30 UTC`).
pub(super) async fn mark_open(s: &Service, mut choices: Vec<Choice>) -> Vec<Choice> {
    let open = match s.open_holders().await {
        Ok(open) if !open.is_empty() => open,
        Ok(_) => return choices,
        Err(e) => {
            tracing::warn!(error.message = %e, "open grants unreadable for autocomplete");
            return choices;
        }
    };
    for choice in &mut choices {
        let Some(vm) = VmKey::parse(&choice.value).and_then(|k| s.vm_by_key(&k)) else {
            continue;
        };
        if let Some(note) = open_note(&vm, &open) {
            let name = format!("{} · {note}", choice.name);
            choice.name = name.chars().take(CHOICE_NAME_MAX).collect();
        }
    }
    choices
}
