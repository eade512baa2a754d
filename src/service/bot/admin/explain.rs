//! `/jit-admin explain`: why given roles would be allowed or denied.

use super::required;
use crate::chat::{Card, ChatMessage, Tone};
use crate::domain::{Decision, MappingName, OnConflict, RoleId};
use crate::interactions::{Invocation, SlashCommand};
use crate::service::Service;
use crate::service::admin::AdminError;

pub(super) async fn run(
    s: &Service,
    who: &Invocation,
    command: &SlashCommand,
) -> Result<ChatMessage, AdminError> {
    let opt = |n: &str| command.option(n);
    let roles = roles_to_explain(who, command)?;
    let (vm, decision) = s
        .explain(
            who,
            &roles,
            required(command, "vm")?,
            required(command, "port")?,
            required(command, "duration")?,
            opt("from"),
            opt("reason"),
        )
        .await?;
    let card = match &decision {
        Decision::Allow(a) => Card::new("Would be allowed", Tone::Success).description(format!(
            "Mapping {} allows it on {} (maximum {}). {}{}",
            a.mapping,
            vm.qualified(),
            a.max_duration,
            on_conflict(s, &a.mapping),
            login_user(s, &a.mapping)
        )),
        Decision::Deny(d) => Card::new("Would be denied", Tone::Denied).description(d.to_string()),
    };
    let roles_text = roles
        .iter()
        .map(|r| format!("<@&{r}>"))
        .collect::<Vec<_>>()
        .join(" ");
    let roles_text = if roles_text.is_empty() {
        "none".into()
    } else {
        roles_text
    };
    Ok(ChatMessage::card(card.field("Roles", roles_text, false)))
}

/// ` The grant card shows ssh as deploy.` when the mapping names a login user.
fn login_user(s: &Service, mapping: &MappingName) -> String {
    s.mappings()
        .iter()
        .find(|m| m.name == *mapping)
        .and_then(|m| m.ssh_user())
        .map(|u| format!(" The grant card shows ssh as {u}."))
        .unwrap_or_default()
}

/// What the mapping does when another member holds the port.
fn on_conflict(s: &Service, mapping: &MappingName) -> &'static str {
    let rule = s
        .mappings()
        .iter()
        .find(|m| m.name == *mapping)
        .map(|m| m.on_conflict)
        .unwrap_or_default();
    match rule {
        OnConflict::Ask => {
            "If another member holds the port, the member is asked before their window is ended (on_conflict = \"ask\")."
        }
        OnConflict::Refuse => {
            "If another member holds the port, the request is refused (on_conflict = \"refuse\")."
        }
    }
}

/// The roles to explain for: listed, a chosen member's, or the admin's own.
fn roles_to_explain(who: &Invocation, command: &SlashCommand) -> Result<Vec<RoleId>, AdminError> {
    if let Some(list) = command.option("roles") {
        list.split(',')
            .filter(|r| !r.trim().is_empty())
            .map(|r| RoleId::parse(r).map_err(|e| AdminError::Invalid(e.to_string())))
            .collect()
    } else if command.option("user").is_some() {
        // Keyed by option name, as the transports fill it.
        Ok(command
            .resolved_roles
            .get("user")
            .cloned()
            .unwrap_or_default())
    } else {
        Ok(who.member.roles.clone())
    }
}
