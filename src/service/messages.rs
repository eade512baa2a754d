//! What Drawbridge says: grants, refusals, reminders, notices and audit
//! cards as transport-neutral [`ChatMessage`]s (pure). Each chat transport
//! turns them into its own format (Discord: [`crate::discord::builders`]).

pub mod approval;
mod audit_line;

pub use audit_line::{audit_line, describe_spec};
use chrono::{DateTime, Utc};

use super::lifecycle::{CloseOutcome, Closed, GrantActionError};
use super::question::{PortHolder, question_text};
use super::request::RequestError;
use crate::chat::{
    Attachment, Button, ButtonAction, ButtonStyle, Card, ChatMessage, Tone, escape_markdown,
    time_full, time_relative,
};
use crate::domain::connect::{Connection, RDP_PORT, rdp_file_name};
use crate::domain::{AuditAction, GrantState, Outcome, PortAliases, SourcePrefix, UserId};
use crate::store::{AuditRecord, Grant};

const CONNECTIONS_NOTE: &str = "Connections already established are not cut when the port closes.";

fn grant_buttons(grant: &Grant) -> Vec<Button> {
    if !matches!(grant.state, GrantState::Active | GrantState::Extended) {
        return Vec::new();
    }
    let id = grant.request_id.to_string();
    vec![
        Button {
            action: ButtonAction::Extend(id.clone()),
            label: "Extend".into(),
            style: ButtonStyle::Primary,
        },
        Button {
            action: ButtonAction::CloseEarly(id),
            label: "Close early".into(),
            style: ButtonStyle::Danger,
        },
    ]
}

fn window(grant: &Grant) -> String {
    match grant.end_time {
        Some(end) => format!(
            "{} → {} ({})",
            time_full(grant.requested_at),
            time_full(end),
            time_relative(end)
        ),
        None => format!("{} requested", grant.duration),
    }
}

/// The card for a grant, with Extend and Close early while it is open.
/// What a member whose initiate had no clear answer is told.
const PENDING_NOTE: &str = "Azure gave no clear answer, so Drawbridge is checking with Azure whether the port opened. You will get a message as soon as it knows.";

/// What a member who answered Cancel is told.
const CANCELLED_NOTE: &str =
    "Nothing was sent to Azure: the port stays as it was, and the other member keeps their access.";

pub fn grant(grant: &Grant, aliases: &PortAliases) -> ChatMessage {
    grant_with(grant, aliases, None)
}

/// How to connect to an open grant's VM: a ready command for its first
/// port (`ssh azureuser@20.1.2.3`), or where a private-only VM is reached.
fn connect_line(grant: &Grant, connection: Option<&Connection>) -> Option<String> {
    if !grant.state.is_open() {
        return None;
    }
    let port = *grant.ports.numbers().first()?;
    let line = connection?.how_to_connect(port)?;
    Some(if line.contains(' ') && !line.starts_with("This VM") {
        format!("`{line}`")
    } else {
        line
    })
}

/// [`grant`] with the VM's connection address, when known.
pub fn grant_with(
    grant: &Grant,
    aliases: &PortAliases,
    connection: Option<&Connection>,
) -> ChatMessage {
    let ports = grant.ports.describe(aliases);
    let (title, tone) = match grant.state {
        GrantState::Active => (
            format!("Access granted: {ports} on {}", grant.vm_name),
            Tone::Success,
        ),
        GrantState::Extended => (
            format!("Access extended: {ports} on {}", grant.vm_name),
            Tone::Success,
        ),
        GrantState::Requested => (
            format!("Access requested: {ports} on {}", grant.vm_name),
            Tone::Info,
        ),
        GrantState::Closing => (
            format!("Closing: {ports} on {}", grant.vm_name),
            Tone::Warning,
        ),
        GrantState::Extending => (
            format!("Extending: {ports} on {}", grant.vm_name),
            Tone::Info,
        ),
        GrantState::ClosedEarly => (
            format!("Closed early: {ports} on {}", grant.vm_name),
            Tone::Info,
        ),
        GrantState::Expired => (format!("Expired: {ports} on {}", grant.vm_name), Tone::Info),
        GrantState::Failed => (
            format!("Access failed: {ports} on {}", grant.vm_name),
            Tone::Error,
        ),
        GrantState::PendingAzure => (
            format!("Checking with Azure…: {ports} on {}", grant.vm_name),
            Tone::Info,
        ),
        GrantState::Superseded => (
            format!("Superseded: {ports} on {}", grant.vm_name),
            Tone::Warning,
        ),
        GrantState::Ended => (
            format!("Ended in Azure: {ports} on {}", grant.vm_name),
            Tone::Info,
        ),
        GrantState::Confirming => (
            format!("Another member holds {ports} on {}", grant.vm_name),
            Tone::Warning,
        ),
        GrantState::Cancelled => (
            format!("Cancelled: {ports} on {}", grant.vm_name),
            Tone::Info,
        ),
        GrantState::PendingApproval => (
            format!("Waiting for approval: {ports} on {}", grant.vm_name),
            Tone::Info,
        ),
        GrantState::Denied => (
            format!("Request denied: {ports} on {}", grant.vm_name),
            Tone::Denied,
        ),
        GrantState::ApprovalExpired => (
            format!("Request expired unapproved: {ports} on {}", grant.vm_name),
            Tone::Warning,
        ),
    };
    let mut card = Card::new(title, tone)
        .field("VM", &grant.vm_name, true)
        .field("Ports", ports, true)
        .field("Source", grant.source.to_string(), true)
        .field("Window", window(grant), false);
    if let Some(reason) = &grant.reason {
        card = card.field("Reason", escape_markdown(reason.as_str()), false);
    }
    if let Some(line) = connect_line(grant, connection) {
        card = card.field("Connect", line, false);
    }
    if let Some(failure) = &grant.failure {
        card = card.description(failure.clone());
    } else if grant.state == GrantState::PendingAzure {
        card = card.description(PENDING_NOTE);
    } else if grant.state == GrantState::Cancelled {
        card = card.description(CANCELLED_NOTE);
    } else if grant.state.is_open() {
        card = card.description(CONNECTIONS_NOTE);
    }
    let message = ChatMessage::card(card.footer(format!("Request {}", grant.request_id)))
        .with_buttons(grant_buttons(grant));
    match rdp_attachment(grant, connection) {
        Some(file) => message.with_attachment(file),
        None => message,
    }
}

/// An open RDP grant's `.rdp` file, when the VM's address is known.
fn rdp_attachment(grant: &Grant, connection: Option<&Connection>) -> Option<Attachment> {
    if !grant.state.is_open() || !grant.ports.numbers().contains(&RDP_PORT) {
        return None;
    }
    let text = connection?.rdp_file(RDP_PORT)?;
    Attachment::new(&rdp_file_name(&grant.vm_name), text.into_bytes()).ok()
}

/// A one-time IP link: open it from the machine you connect from.
/// `waiting` says a request goes on once it is opened.
pub fn ip_link(
    offer: &crate::service::ip_link::LinkOffer,
    waiting: bool,
    saved: Option<SourcePrefix>,
) -> ChatMessage {
    let mut text = format!(
        "Open {} from the machine you will connect from: Drawbridge saves the address it sees. The link works once, until {}.",
        offer.url,
        crate::chat::time_full(offer.expires_at)
    );
    if waiting {
        text.push_str(" Your request goes on as soon as the address is saved; this message then shows the outcome.");
    }
    if let Some(saved) = saved {
        text.push_str(&format!(
            " Your saved address now is {saved}. You can also give one with /jit-ip <address>."
        ));
    } else {
        text.push_str(" You can also give it with from:<your IP> or /jit-ip <your IP>.");
    }
    ChatMessage::card(Card::new("From which address?", Tone::Info).description(text))
}

/// The question before a request ends another member's window, with
/// Open anyway and Cancel (their ids carry only the request id). `holder`
/// is who holds the port now (`None` if they no longer do).
pub fn question(grant: &Grant, holder: Option<&PortHolder>, aliases: &PortAliases) -> ChatMessage {
    let text = match holder {
        Some(holder) => question_text(holder, &grant.vm_name, aliases),
        None => format!(
            "When you asked, another member held {} {} from another address; Azure keeps one window per port, so opening it for you ends theirs if they still hold it.",
            grant.vm_name,
            grant.ports.describe(aliases)
        ),
    };
    let id = grant.request_id.to_string();
    let card = Card::new(
        format!(
            "Open {} on {} anyway?",
            grant.ports.describe(aliases),
            grant.vm_name
        ),
        Tone::Warning,
    )
    .description(text)
    .field("Source", grant.source.to_string(), true)
    .field("Window", grant.duration.to_string(), true)
    .footer(format!("Request {}", grant.request_id));
    ChatMessage::card(card).with_buttons(vec![
        Button {
            action: ButtonAction::OpenAnyway(id.clone()),
            label: "Open anyway".into(),
            style: ButtonStyle::Danger,
        },
        Button {
            action: ButtonAction::Cancel(id),
            label: "Cancel".into(),
            style: ButtonStyle::Secondary,
        },
    ])
}

/// The reply to a question nobody answered in time
/// ([`super::question::QUESTION_TIMEOUT`]).
pub fn unanswered(grant: &Grant, aliases: &PortAliases) -> ChatMessage {
    let minutes = super::question::QUESTION_TIMEOUT.num_minutes();
    let card = Card::new(
        format!(
            "No answer: {} on {}",
            grant.ports.describe(aliases),
            grant.vm_name
        ),
        Tone::Info,
    )
    .description(format!(
        "No answer within {minutes} minutes, so Drawbridge cancelled this request: nothing changed in Azure, and the other member keeps their access. Ask again with /jit if you still need it."
    ))
    .footer(format!("Request {}", grant.request_id));
    ChatMessage::card(card)
}

/// A refusal or failure of a request, for the member.
pub fn request_error(error: &RequestError, reference: &str) -> ChatMessage {
    let card = match error {
        RequestError::Invalid(message) => Card::new("That request is not valid", Tone::Denied).description(message.clone()),
        RequestError::VmNotFound { name, exists_without_jit: true } => Card::new("VM not under JIT", Tone::Denied).description(format!(
            "{name} exists but has no JIT policy, so its ports cannot be opened. An admin can enable it with /jit-admin enable."
        )),
        RequestError::VmNotFound { name, .. } => Card::new("VM not found", Tone::Denied).description(format!(
            "No VM named {name} that your roles may request is under JIT. Check the name (autocomplete lists the VMs you may request), or ask an admin."
        )),
        RequestError::VmAmbiguous { candidates } => Card::new("Which VM?", Tone::Denied).description(format!(
            "Several VMs have that name: {}. Give the resource group, as in {}.",
            candidates.join(", "),
            candidates.first().map(String::as_str).unwrap_or("rg/name")
        )),
        RequestError::NoSource => Card::new("From which address?", Tone::Denied).description(
            "Drawbridge needs your public IP to open the port for. Add from:<your IP> to the request, or save it once with /jit-ip <your IP>.",
        ),
        RequestError::Denied(denial) => Card::new("Access denied", Tone::Denied).description(denial.to_string()),
        RequestError::Policy(violation) => Card::new("Not allowed by the VM's JIT policy", Tone::Denied).description(violation.to_string()),
        RequestError::PortHeld { message } => Card::new("Another member holds the port", Tone::Denied).description(message.clone()),
        RequestError::BreakGlass(message) => Card::new("Break-glass refused", Tone::Denied).description(message.clone()),
        RequestError::Azure { message } => Card::new("Azure did not open the port", Tone::Error).description(message.clone()),
        RequestError::Unexpected(_) => Card::new("Something went wrong", Tone::Error).description(format!(
            "Drawbridge could not finish this request. An operator can find the details in the logs under reference {reference}."
        )),
    };
    ChatMessage::card(card)
}

/// A refused button.
pub fn action_error(error: &GrantActionError, reference: &str) -> ChatMessage {
    match error {
        GrantActionError::Request(e) => request_error(e, reference),
        other => ChatMessage::card(
            Card::new("Nothing changed", Tone::Denied).description(other.to_string()),
        ),
    }
}

/// The result of Close early: when the port really closes, per Azure.
pub fn closed(closed: &Closed, aliases: &PortAliases) -> ChatMessage {
    let grant = &closed.grant;
    let what = format!("{} on {}", grant.ports.describe(aliases), grant.vm_name);
    let card = match (&closed.outcome, closed.outcome.closes_at()) {
        (CloseOutcome::NotOpen { .. }, _) => Card::new(format!("Already ended: {what}"), Tone::Info)
            .description(format!(
                "{} Nothing was changed in Azure.",
                grant.failure.as_deref().unwrap_or("Azure shows this access already ended.")
            )),
        (CloseOutcome::AlreadySooner { .. }, Some(at)) => Card::new(format!("Closing: {what}"), Tone::Info)
            .description(format!(
                "The port already closes {} ({}), sooner than closing early could make it, so nothing was changed in Azure. {CONNECTIONS_NOTE}",
                time_full(at),
                time_relative(at)
            )),
        (CloseOutcome::Shortened { ports, .. }, at) => {
            let text = match at {
                Some(at) => format!(
                    "Azure has no revoke, so Drawbridge asked for the shortest window it allows. Azure shows the port closes {} ({}). {CONNECTIONS_NOTE}",
                    time_full(at),
                    time_relative(at)
                ),
                None => format!("Azure shows the port closed. {CONNECTIONS_NOTE}"),
            };
            let azure: Vec<String> = ports
                .iter()
                .map(|(n, until)| match until {
                    Some(u) => format!("{n}: open until {}", time_full(*u)),
                    None => format!("{n}: closed"),
                })
                .collect();
            let card = Card::new(format!("Closing early: {what}"), Tone::Info).description(text);
            if azure.is_empty() {
                card
            } else {
                card.field("Azure shows", azure.join("\n"), false)
            }
        }
        (CloseOutcome::AlreadySooner { .. }, None) => Card::new(format!("Closing: {what}"), Tone::Info),
    };
    ChatMessage::card(card.footer(format!("Request {}", grant.request_id)))
}

/// `/jit-status`.
pub fn status(grants: &[Grant], aliases: &PortAliases) -> ChatMessage {
    if grants.is_empty() {
        return ChatMessage::card(Card::new("No grants", Tone::Info).description(
            "You have no open or recent grants. Ask with /jit <port> <vm> <duration>.",
        ));
    }
    let mut card = Card::new("Your grants", Tone::Info);
    for g in grants.iter().take(10) {
        card = card.field(
            format!(
                "{} · {} · {}",
                g.vm_name,
                g.ports.describe(aliases),
                match g.state {
                    GrantState::PendingApproval => "waiting for approval".to_owned(),
                    state => state.to_string(),
                }
            ),
            format!("{}\nRequest {}", window(g), g.request_id),
            false,
        );
    }
    ChatMessage::card(card)
}

/// `/jit-who`: the open grants, member, ports and until when; the
/// source only for admins.
pub fn holders(answer: &crate::service::who::Holders, aliases: &PortAliases) -> ChatMessage {
    let place = answer.vm.as_deref().unwrap_or("the VMs you may request");
    if answer.holders.is_empty() {
        return ChatMessage::card(
            Card::new("Nobody holds a port open", Tone::Info)
                .description(format!("No open grants on {place}.")),
        );
    }
    let mut card = Card::new(format!("Open on {place}"), Tone::Info);
    for h in answer.holders.iter().take(20) {
        let g = &h.grant;
        let until = g
            .end_time
            .map(|end| format!("until {} ({})", time_full(end), time_relative(end)))
            .unwrap_or_else(|| "opening".into());
        let mut value = format!("@{} · {until}", escape_markdown(&h.member));
        if answer.show_sources {
            value.push_str(&format!("\nfrom {}", g.source));
        }
        card = card.field(
            format!("{} · {}", g.vm_name, g.ports.describe(aliases)),
            value,
            false,
        );
    }
    if answer.holders.len() > 20 {
        card = card.footer(format!("and {} more", answer.holders.len() - 20));
    }
    ChatMessage::card(card)
}

/// The reminder DM before a grant ends.
pub fn reminder(
    grant: &Grant,
    end: DateTime<Utc>,
    aliases: &PortAliases,
    connection: Option<&Connection>,
) -> ChatMessage {
    let connect = connect_line(grant, connection)
        .map(|line| format!(" Connect: {line}"))
        .unwrap_or_default();
    ChatMessage {
        content: Some(format!("<@{}>", grant.user_id)),
        card: Some(
            Card::new(
                format!("Closing {}: {} on {}", time_relative(end), grant.ports.describe(aliases), grant.vm_name),
                Tone::Warning,
            )
            .description(format!(
                "Your access ends {}. Extend it, or close it now if you are done. {CONNECTIONS_NOTE}{connect}",
                time_full(end)
            ))
            .footer(format!("Request {}", grant.request_id)),
        ),
        buttons: grant_buttons(grant),
        ping_roles: Vec::new(),
        attachments: Vec::new(),
    }
}

/// The notice when a grant's window has ended.
pub fn expired(grant: &Grant, late: bool, aliases: &PortAliases) -> ChatMessage {
    let mut text = format!("The port is closed for new connections. {CONNECTIONS_NOTE}");
    if late {
        text.push_str(" (This notice is late: Drawbridge was not running when the window ended.)");
    }
    ChatMessage {
        content: Some(format!("<@{}>", grant.user_id)),
        card: Some(
            Card::new(
                format!(
                    "Expired: {} on {}",
                    grant.ports.describe(aliases),
                    grant.vm_name
                ),
                Tone::Info,
            )
            .description(text)
            .footer(format!("Request {}", grant.request_id)),
        ),
        buttons: Vec::new(),
        ping_roles: Vec::new(),
        attachments: Vec::new(),
    }
}

/// The DM to a member whose grant another member's request ended (Azure
/// keeps one window per port).
pub fn displaced(
    grant: &Grant,
    by: UserId,
    at: DateTime<Utc>,
    aliases: &PortAliases,
) -> ChatMessage {
    let what = format!("{} {}", grant.vm_name, grant.ports.describe(aliases));
    ChatMessage {
        content: Some(format!("<@{}>", grant.user_id)),
        card: Some(
            Card::new(format!("Superseded: {what}"), Tone::Warning)
                .description(format!(
                    "Your access to {what} was ended by <@{by}>'s request at {}: Azure keeps one window per port. Ask again with /jit if you still need it. {CONNECTIONS_NOTE}",
                    time_full(at)
                ))
                .footer(format!("Request {}", grant.request_id)),
        ),
        buttons: Vec::new(),
        ping_roles: Vec::new(),
        attachments: Vec::new(),
    }
}

/// The DM when Azure shows a grant ended before its end (read back after a
/// write, or reconciliation); the grant's failure text says why.
pub fn ended_by_azure(grant: &Grant, aliases: &PortAliases) -> ChatMessage {
    let why = grant
        .failure
        .as_deref()
        .unwrap_or("Azure no longer shows your access as open.");
    let title = match grant.state {
        GrantState::Superseded => "Superseded",
        _ => "Ended early",
    };
    ChatMessage {
        content: Some(format!("<@{}>", grant.user_id)),
        card: Some(
            Card::new(
                format!(
                    "{title}: {} on {}",
                    grant.ports.describe(aliases),
                    grant.vm_name
                ),
                Tone::Warning,
            )
            .description(format!(
                "{why} The port is closed for your address; ask again with /jit if you still need it. {CONNECTIONS_NOTE}"
            ))
            .footer(format!("Request {}", grant.request_id)),
        ),
        buttons: Vec::new(),
        ping_roles: Vec::new(),
        attachments: Vec::new(),
    }
}

/// The title of an audit event's kind, such as "Port opened".
pub fn action_title(action: AuditAction) -> &'static str {
    match action {
        AuditAction::RequestReceived => "Request received",
        AuditAction::AccessAllowed => "Access allowed",
        AuditAction::AccessDenied => "Access denied",
        AuditAction::AccessInitiated => "Port opened",
        AuditAction::AccessFailed => "Access failed",
        AuditAction::AccessExtended => "Access extended",
        AuditAction::AccessClosedEarly => "Closed early",
        AuditAction::ReminderSent => "Reminder sent",
        AuditAction::AccessExpired => "Access expired",
        AuditAction::AccessEndedInAzure => "Access ended in Azure",
        AuditAction::OpenedOutsideDrawbridge => "Opened outside Drawbridge",
        AuditAction::AccessCancelled => "Request cancelled",
        AuditAction::AccessReopened => "Open in Azure again",
        AuditAction::MappingAdded => "Mapping added",
        AuditAction::MappingRemoved => "Mapping removed",
        AuditAction::MappingsImported => "Mappings imported",
        AuditAction::PolicyEnabled => "JIT enabled on a VM",
        AuditAction::SourceSaved => "Source IP saved",
        AuditAction::ActionRefused => "Action refused",
        AuditAction::RefusalsFolded => "More refusals",
        AuditAction::BotStarted => "Drawbridge started",
        AuditAction::BotStopped => "Drawbridge stopped",
        AuditAction::AuditChainBroken => "Audit chain broken",
        AuditAction::ApprovalRequested => "Approval requested",
        AuditAction::RequestApproved => "Request approved",
        AuditAction::RequestDenied => "Request denied",
        AuditAction::RequestCancelled => "Request cancelled",
        AuditAction::ApprovalExpired => "Approval timed out",
        AuditAction::BreakGlassUsed => "⚠ Break-glass access",
        AuditAction::BreakGlassAcknowledged => "Break-glass acknowledged",
        AuditAction::AskedAfterApproval => "Approved, requester asked first",
    }
}

/// One audit event as the audit channel shows it: the kind as title, the
/// one-line human form as description (never the JSON detail).
pub fn audit(record: &AuditRecord) -> ChatMessage {
    let e = &record.event;
    let tone = match (e.action, e.outcome) {
        (AuditAction::OpenedOutsideDrawbridge, _) => Tone::Warning,
        (_, Outcome::Success) => Tone::Success,
        (_, Outcome::Denied) => Tone::Denied,
        (_, Outcome::Failed) => Tone::Error,
        (_, Outcome::Info) => Tone::Info,
    };
    let mut card = Card::new(action_title(e.action), tone)
        .description(audit_line(e))
        .field("Who", audit_line::actor(&e.actor), true)
        .field(
            "Target",
            if e.target.is_empty() {
                "-".into()
            } else {
                escape_markdown(&e.target)
            },
            true,
        )
        .field("When", time_full(e.at), true);
    if let Some(id) = e.detail.get("request_id").and_then(|v| v.as_str()) {
        card = card.field("Request", id, true);
    }
    // The whole hash: the channel, outside the database, witnesses the chain.
    ChatMessage::card(card.footer(format!("#{} · {}", record.seq, record.hash)))
}
