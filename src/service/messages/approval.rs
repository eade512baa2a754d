//! What approvals say (issue 13): the approval card in the approvals
//! channel, the requester's reply at each stage, the approver's own reply,
//! and break-glass's alert and review card. Pure.

use crate::chat::{
    Button, ButtonAction, ButtonStyle, Card, ChatMessage, Tone, escape_markdown, time_full,
    time_relative,
};
use crate::domain::connect::Connection;
use crate::domain::mapping::role_mentions;
use crate::domain::{GrantState, PortAliases};
use crate::service::question::PortHolder;
use crate::store::{Approval, ApprovalRequest, Grant};

/// Why an approved request was not opened at once.
const HELD_NOW: &str = "Approved, but another member now holds the port from another address, and Azure keeps one window per port.";

/// `1 approval from <@&1>`.
fn needs(pending: &ApprovalRequest) -> String {
    format!(
        "{} approval{} from {}",
        pending.needed,
        if pending.needed == 1 { "" } else { "s" },
        role_mentions(&pending.approver_roles)
    )
}

/// `<@1>, <@2>`, or `nobody yet`.
fn approvers(approvals: &[Approval]) -> String {
    if approvals.is_empty() {
        return "nobody yet".to_owned();
    }
    let names: Vec<String> = approvals
        .iter()
        .map(|a| format!("<@{}>", a.approver))
        .collect();
    names.join(", ")
}

fn button(action: ButtonAction, label: &str, style: ButtonStyle) -> Button {
    Button {
        action,
        label: label.to_owned(),
        style,
    }
}

/// The request as the approvers read it: who, the VM, ports, source,
/// duration and reason.
fn request_card(title: String, tone: Tone, grant: &Grant, aliases: &PortAliases) -> Card {
    let mut card = Card::new(title, tone)
        .field("Who", format!("<@{}>", grant.user_id), true)
        .field("VM", &grant.vm_name, true)
        .field("Ports", grant.ports.describe(aliases), true)
        .field("Source", grant.source.to_string(), true)
        .field("Duration", grant.duration.to_string(), true);
    if let Some(reason) = &grant.reason {
        card = card.field("Reason", escape_markdown(reason.as_str()), false);
    }
    card.footer(format!("Request {}", grant.request_id))
}

/// The card in the approvals channel. While the request waits: Approve and
/// Deny, and a ping of the approver roles (only them, through
/// `allowed_mentions`). Once decided: its final state, without buttons.
pub fn approval_card(
    grant: &Grant,
    pending: &ApprovalRequest,
    approvals: &[Approval],
    aliases: &PortAliases,
) -> ChatMessage {
    let what = format!(
        "{} on {}",
        grant.ports.describe(aliases),
        escape_markdown(&grant.vm_name)
    );
    let (title, tone, status) = match grant.state {
        GrantState::PendingApproval => (
            format!("Approval needed: {what}"),
            Tone::Warning,
            format!(
                "Waiting for {}; expires {}",
                needs(pending),
                time_relative(pending.expires_at)
            ),
        ),
        GrantState::Denied => (
            format!("Denied: {what}"),
            Tone::Denied,
            format!(
                "Denied by {}: {}",
                pending
                    .decided_by
                    .as_deref()
                    .map(super::audit_line::actor)
                    .unwrap_or_else(|| "an approver".into()),
                pending
                    .decision_reason
                    .as_deref()
                    .map(escape_markdown)
                    .or_else(|| grant.failure.clone())
                    .unwrap_or_else(|| "no reason given".into())
            ),
        ),
        GrantState::Cancelled => (
            format!("Cancelled: {what}"),
            Tone::Info,
            "Cancelled by the requester.".to_owned(),
        ),
        GrantState::ApprovalExpired => (
            format!("Expired: {what}"),
            Tone::Info,
            format!("Nobody decided by {}.", time_full(pending.expires_at)),
        ),
        GrantState::Failed => (
            format!("Approved, not opened: {what}"),
            Tone::Error,
            grant
                .failure
                .clone()
                .unwrap_or_else(|| "Azure did not open the port.".into()),
        ),
        GrantState::Confirming => (
            format!("Approved, requester asked first: {what}"),
            Tone::Warning,
            format!(
                "{HELD_NOW} <@{}> is asked whether to open it anyway, which ends the other member's window.",
                grant.user_id
            ),
        ),
        GrantState::Requested => (
            format!("Approved, opening: {what}"),
            Tone::Info,
            "Approved; Azure is asked to open the port.".to_owned(),
        ),
        GrantState::PendingAzure => (
            format!("Approved, checking with Azure: {what}"),
            Tone::Info,
            "Approved; Azure gave no clear answer, so Drawbridge is checking whether the port opened. This card shows the outcome.".to_owned(),
        ),
        _ => (
            format!("Approved: {what}"),
            Tone::Success,
            match grant.end_time {
                Some(end) => format!("Open until {} ({})", time_full(end), time_relative(end)),
                None => "Approved; opening the port.".to_owned(),
            },
        ),
    };
    let card = request_card(title, tone, grant, aliases)
        .description(status)
        .field("Approved by", approvers(approvals), false);
    let waiting = grant.state == GrantState::PendingApproval;
    let id = grant.request_id.to_string();
    ChatMessage {
        // The requester is named in the card, never in the content, where
        // a mention would ping them.
        content: waiting.then(|| {
            format!(
                "{} — approval needed",
                role_mentions(&pending.approver_roles)
            )
        }),
        card: Some(card),
        buttons: if waiting {
            vec![
                button(
                    ButtonAction::Approve(id.clone()),
                    "Approve",
                    ButtonStyle::Primary,
                ),
                button(ButtonAction::Deny(id), "Deny", ButtonStyle::Danger),
            ]
        } else {
            Vec::new()
        },
        // Ping the approver roles, and nobody else: not the requester.
        ping_roles: if waiting {
            pending.approver_roles.iter().map(|r| r.get()).collect()
        } else {
            Vec::new()
        },
        attachments: Vec::new(),
    }
}

/// The requester's reply at each stage: waiting (with Cancel), approved by
/// whom so far, then the grant itself (when it closes) or why not.
pub fn requester_view(
    grant: &Grant,
    pending: &ApprovalRequest,
    approvals: &[Approval],
    aliases: &PortAliases,
) -> ChatMessage {
    requester_view_with(grant, pending, approvals, aliases, None)
}

/// [`requester_view`] with the VM's connection address, when known: an
/// opened grant then says how to connect (and carries the `.rdp` file) as
/// a self-service one does.
pub fn requester_view_with(
    grant: &Grant,
    pending: &ApprovalRequest,
    approvals: &[Approval],
    aliases: &PortAliases,
    connection: Option<&Connection>,
) -> ChatMessage {
    let what = format!(
        "{} on {}",
        grant.ports.describe(aliases),
        escape_markdown(&grant.vm_name)
    );
    let footer = format!("Request {}", grant.request_id);
    let (title, tone, text) = match grant.state {
        GrantState::PendingApproval => {
            let mut text = format!("Waiting for {}.", needs(pending));
            if !approvals.is_empty() {
                text.push_str(&format!(" Approved so far by {}.", approvers(approvals)));
            }
            text.push_str(&format!(
                " The request expires {} if nobody decides.",
                time_relative(pending.expires_at)
            ));
            let card = Card::new(format!("Waiting for approval: {what}"), Tone::Info)
                .description(text)
                .footer(footer);
            return ChatMessage::card(card).with_buttons(vec![button(
                ButtonAction::Withdraw(grant.request_id.to_string()),
                "Cancel",
                ButtonStyle::Secondary,
            )]);
        }
        GrantState::Denied => (
            format!("Request denied: {what}"),
            Tone::Denied,
            match &pending.decision_reason {
                Some(reason) => format!(
                    "{} denied it: {}",
                    pending
                        .decided_by
                        .as_deref()
                        .map(super::audit_line::actor)
                        .unwrap_or_else(|| "An approver".into()),
                    escape_markdown(reason)
                ),
                None => grant
                    .failure
                    .clone()
                    .unwrap_or_else(|| "It is no longer allowed.".into()),
            },
        ),
        GrantState::Cancelled => (
            format!("Request cancelled: {what}"),
            Tone::Info,
            "You cancelled it; nothing was opened.".to_owned(),
        ),
        GrantState::ApprovalExpired => (
            format!("Request expired: {what}"),
            Tone::Warning,
            format!(
                "Nobody approved it by {}; nothing was opened. Ask again with /jit if you still need it.",
                time_full(pending.expires_at)
            ),
        ),
        _ => {
            let mut message = super::grant_with(grant, aliases, connection);
            if let Some(card) = message.card.as_mut() {
                card.fields.push(crate::chat::Field {
                    name: "Approved by".into(),
                    value: approvers(approvals),
                    inline: false,
                });
            }
            return message;
        }
    };
    ChatMessage::card(Card::new(title, tone).description(text).footer(footer))
}

/// The requester's reply once approved while another member holds the
/// port: the question of [`super::question`] (Open anyway or Cancel), with
/// who approved.
pub fn asked_after_approval(
    grant: &Grant,
    holder: &PortHolder,
    approvals: &[Approval],
    aliases: &PortAliases,
) -> ChatMessage {
    let mut message = super::question(grant, Some(holder), aliases);
    if let Some(card) = message.card.as_mut() {
        card.description = card
            .description
            .take()
            .map(|text| format!("Your request was approved. {text}"));
        card.fields.push(crate::chat::Field {
            name: "Approved by".into(),
            value: approvers(approvals),
            inline: false,
        });
    }
    message
}

/// What an approver sees after Approve or Deny.
pub fn approver_reply(
    grant: &Grant,
    pending: &ApprovalRequest,
    approvals: &[Approval],
    counted_now: bool,
    aliases: &PortAliases,
) -> ChatMessage {
    let who = format!("<@{}>", grant.user_id);
    let what = format!(
        "{} on {}",
        grant.ports.describe(aliases),
        escape_markdown(&grant.vm_name)
    );
    let (title, tone, text) = match grant.state {
        GrantState::PendingApproval if counted_now => (
            format!("Approved ({} of {})", approvals.len(), pending.needed),
            Tone::Success,
            format!("Your approval of {who}'s request for {what} is counted; it still needs more."),
        ),
        GrantState::PendingApproval => (
            "Already approved by you".to_owned(),
            Tone::Info,
            format!(
                "Your approval of {who}'s request is counted once ({} of {}); another approver is needed.",
                approvals.len(),
                pending.needed
            ),
        ),
        GrantState::Denied => (
            format!("Denied: {what}"),
            Tone::Denied,
            format!("{who} is told your reason; nothing was opened."),
        ),
        GrantState::Failed => (
            format!("Approved, not opened: {what}"),
            Tone::Error,
            grant
                .failure
                .clone()
                .unwrap_or_else(|| "Azure did not open the port.".into()),
        ),
        GrantState::Confirming => (
            format!("Approved, requester asked first: {what}"),
            Tone::Warning,
            format!(
                "{HELD_NOW} {who} is asked whether to open it anyway, which ends the other member's window; the card shows the outcome."
            ),
        ),
        _ => (
            format!("Approved: {what}"),
            Tone::Success,
            match grant.end_time {
                Some(end) => format!(
                    "Open for {who} until {} ({}).",
                    time_full(end),
                    time_relative(end)
                ),
                None => format!("Opening the port for {who}."),
            },
        ),
    };
    ChatMessage::card(
        Card::new(title, tone)
            .description(text)
            .footer(format!("Request {}", grant.request_id)),
    )
}

/// The alert in the audit channel when break-glass is used: pings
/// `alert_role` (only it).
pub fn break_glass_alert(
    grant: &Grant,
    alert_role: Option<u64>,
    aliases: &PortAliases,
) -> ChatMessage {
    let reason = grant
        .reason
        .as_ref()
        .map(|r| escape_markdown(r.as_str()))
        .unwrap_or_default();
    ChatMessage {
        content: Some(format!(
            "{}⚠ BREAK-GLASS: <@{}> opened {} on {} without approval — reason: {reason}",
            alert_role.map(|r| format!("<@&{r}> ")).unwrap_or_default(),
            grant.user_id,
            grant.ports.describe(aliases),
            escape_markdown(&grant.vm_name),
        )),
        card: None,
        buttons: Vec::new(),
        ping_roles: alert_role.into_iter().collect(),
        attachments: Vec::new(),
    }
}

/// The review card of a break-glass request: Acknowledge until an approver
/// does, then who did.
pub fn review_card(grant: &Grant, pending: &ApprovalRequest, aliases: &PortAliases) -> ChatMessage {
    let title = format!(
        "Break-glass review: {} on {}",
        grant.ports.describe(aliases),
        escape_markdown(&grant.vm_name)
    );
    let card = request_card(title, Tone::Warning, grant, aliases);
    match &pending.decided_by {
        Some(by) => ChatMessage::card(card.description(format!(
            "Opened without approval; acknowledged by {}.",
            super::audit_line::actor(by)
        ))),
        None => ChatMessage::card(card.description(
            "Opened without approval (break-glass). An approver should review it and acknowledge.",
        ))
        .with_buttons(vec![button(
            ButtonAction::Acknowledge(grant.request_id.to_string()),
            "Acknowledge",
            ButtonStyle::Primary,
        )]),
    }
}

/// `/jit-admin pending`: every request waiting for approval.
pub fn pending_list(
    pending: &[(Grant, ApprovalRequest, Vec<Approval>)],
    aliases: &PortAliases,
) -> ChatMessage {
    if pending.is_empty() {
        return ChatMessage::card(
            Card::new("No pending requests", Tone::Info).description("Nothing waits for approval."),
        );
    }
    let mut card = Card::new(format!("{} pending requests", pending.len()), Tone::Info);
    for (grant, request, approvals) in pending.iter().take(25) {
        card = card.field(
            format!("Request {}", grant.request_id),
            format!(
                "<@{}>: {} on {} for {}; {} of {} approvals ({}); expires {}",
                grant.user_id,
                grant.ports.describe(aliases),
                escape_markdown(&grant.vm_name),
                grant.duration,
                approvals.len(),
                request.needed,
                approvers(approvals),
                time_relative(request.expires_at)
            ),
            false,
        );
    }
    ChatMessage::card(card)
}
