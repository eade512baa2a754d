//! The approval buttons: Approve, Deny (its form), Cancel and Acknowledge,
//! to [`Service`]'s approval use cases ([`crate::service::approval`]); and
//! `/jit-pending`, the list of pending requests for approvers, who are often
//! not admins and so cannot see `/jit-admin pending`.

use crate::chat::{ButtonAction, Card, ChatMessage, Tone};
use crate::interactions::Invocation;
use crate::service::approval::{ApprovalError, ApprovalView};
use crate::service::messages::approval as say;
use crate::service::refusals::Refused;
use crate::service::request::RequestError;
use crate::service::{Service, messages};

/// What an approval button does, as the member who pressed it sees it.
pub(super) async fn button(s: &Service, who: &Invocation, action: &ButtonAction) -> ChatMessage {
    let aliases = &s.config().aliases;
    let outcome = match action {
        ButtonAction::Approve(id) => s.approve(who, id).await.map(|(view, new)| {
            say::approver_reply(&view.grant, &view.request, &view.approvals, new, aliases)
        }),
        ButtonAction::DenyWithReason { id, reason } => s.deny(who, id, reason).await.map(|view| {
            say::approver_reply(&view.grant, &view.request, &view.approvals, true, aliases)
        }),
        // Without the form (a client that sent the button itself): ask for it.
        ButtonAction::Deny(_) => Err(ApprovalError::ReasonRequired),
        ButtonAction::Withdraw(id) => s.cancel(who, id).await.map(|view| requester(&view, s)),
        ButtonAction::Acknowledge(id) => s
            .acknowledge(who, id)
            .await
            .map(|view| say::review_card(&view.grant, &view.request, aliases)),
        ButtonAction::Extend(_)
        | ButtonAction::CloseEarly(_)
        | ButtonAction::OpenAnyway(_)
        | ButtonAction::Cancel(_) => Err(ApprovalError::NotFound),
    };
    match outcome {
        Ok(message) => message,
        Err(e) => refused(s, who, action, &e).await,
    }
}

/// `/jit-pending`: every request waiting for approval, for approvers (a
/// role listed in any mapping's `approvers`) and admins; anyone else is
/// refused, and the refusal audited.
pub(super) async fn pending(s: &Service, who: &Invocation) -> ChatMessage {
    match s.pending_requests(who).await {
        Ok(views) => pending_list(s, views),
        Err(e) => {
            if let ApprovalError::Unexpected(cause) = &e {
                tracing::error!(reference = %who.id, error.message = %cause, error.cause_chain = ?cause, "listing pending requests failed");
            }
            let reason = match &e {
                ApprovalError::Unexpected(_) => "internal error".to_owned(),
                _ => NOT_APPROVER.to_owned(),
            };
            let failed = matches!(e, ApprovalError::Unexpected(_));
            let refused = Refused::new("jit-pending", "", (e.audit_code(), failed), &reason);
            s.audit_refusal(who, refused).await;
            match e {
                ApprovalError::Unexpected(_) => messages::request_error(
                    &RequestError::Unexpected(anyhow::anyhow!("logged")),
                    &who.id,
                ),
                _ => ChatMessage::card(
                    Card::new("Not allowed", Tone::Denied).description(NOT_APPROVER),
                ),
            }
        }
    }
}

/// Why `/jit-pending` refuses a member.
const NOT_APPROVER: &str = "/jit-pending lists the requests waiting for approval, for approvers (a role listed in any mapping's approvers) and admins. You hold neither kind of role.";

/// The list of `views`, as `/jit-pending` and `/jit-admin pending` show it.
pub(super) fn pending_list(s: &Service, views: Vec<ApprovalView>) -> ChatMessage {
    let rows: Vec<_> = views
        .into_iter()
        .map(|v| (v.grant, v.request, v.approvals))
        .collect();
    say::pending_list(&rows, &s.config().aliases)
}

fn requester(view: &ApprovalView, s: &Service) -> ChatMessage {
    say::requester_view(
        &view.grant,
        &view.request,
        &view.approvals,
        &s.config().aliases,
    )
}

/// Audits the refusal, unless the use case did (internal errors are
/// logged, never shown), and says why.
async fn refused(
    s: &Service,
    who: &Invocation,
    action: &ButtonAction,
    e: &ApprovalError,
) -> ChatMessage {
    match e {
        ApprovalError::Unexpected(cause) => {
            tracing::error!(reference = %who.id, error.message = %cause, error.cause_chain = ?cause, "approval action failed");
        }
        ApprovalError::Request(RequestError::Unexpected(cause)) => {
            tracing::error!(reference = %who.id, error.message = %cause, error.cause_chain = ?cause, "approved request failed");
        }
        _ => {}
    }
    let reason = match e {
        ApprovalError::Unexpected(_) | ApprovalError::Request(RequestError::Unexpected(_)) => {
            "internal error".to_owned()
        }
        other => other.to_string(),
    };
    let failed = matches!(
        e,
        ApprovalError::Unexpected(_)
            | ApprovalError::Request(RequestError::Unexpected(_) | RequestError::Azure { .. })
    );
    if !e.is_audited() {
        let refused = Refused::new(
            action.verb(),
            action.request_id(),
            (e.audit_code(), failed),
            &reason,
        );
        s.audit_refusal(who, refused).await;
    }
    match e {
        ApprovalError::Request(error) => messages::request_error(error, &who.id),
        ApprovalError::Unexpected(_) => messages::request_error(
            &RequestError::Unexpected(anyhow::anyhow!("logged")),
            &who.id,
        ),
        other => ChatMessage::card(
            Card::new("Not done", Tone::Denied)
                .description(other.to_string())
                .footer(format!("Request {}", action.request_id())),
        ),
    }
}
