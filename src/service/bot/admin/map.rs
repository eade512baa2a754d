//! `/jit-admin map`: adds or replaces a mapping.

use super::{mapping_card, required};
use crate::chat::ChatMessage;
use crate::domain::mapping::MappingSpec;
use crate::domain::{OnConflict, RoleId};
use crate::interactions::{Invocation, SlashCommand};
use crate::service::Service;
use crate::service::admin::AdminError;
use crate::store::MappingChange;

pub(super) async fn run(
    s: &Service,
    who: &Invocation,
    command: &SlashCommand,
) -> Result<ChatMessage, AdminError> {
    let opt = |n: &str| command.option(n);
    let name = required(command, "name")?.to_string();
    let mut roles = vec![role_id(required(command, "role")?)?];
    for more in opt("more_roles").unwrap_or_default().split(',') {
        if !more.trim().is_empty() {
            let role = role_id(more)?;
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
    }
    let spec = MappingSpec {
        name,
        roles,
        vms: required(command, "vms")?.to_string(),
        ports: vec![required(command, "ports")?.to_string()],
        max_duration: required(command, "max_duration")?.to_string(),
        sources: opt("sources").map(|s| s.split(',').map(|x| x.trim().to_string()).collect()),
        allow_broad_sources: opt("allow_broad_sources") == Some("true"),
        default_source: opt("default_source").map(str::to_string),
        ssh_user: opt("ssh_user").map(str::to_string),
        require_reason: opt("require_reason") == Some("true"),
        on_conflict: opt("on_conflict")
            .map(OnConflict::parse)
            .transpose()
            .map_err(AdminError::Invalid)?,
        approvers: role_list(opt("approvers"))?,
        approvals: match opt("approvals") {
            None => 0,
            Some(n) => n.trim().parse().map_err(|_| {
                AdminError::Invalid(format!(
                    "approvals: `{n}` is not a whole number from 0 to 10"
                ))
            })?,
        },
        approval_timeout: opt("approval_timeout").map(str::to_string),
        break_glass: role_list(opt("break_glass"))?,
        ..MappingSpec::default()
    };
    let (mapping, change) = s.map(who, spec).await?;
    let verb = match change {
        MappingChange::Added => "Mapping added",
        MappingChange::Changed { .. } => "Mapping changed",
        MappingChange::Unchanged => "Mapping unchanged",
    };
    Ok(ChatMessage::card(mapping_card(verb, &mapping)))
}

/// Roles given as `1, <@&2>`, each once.
fn role_list(text: Option<&str>) -> Result<Vec<RoleId>, AdminError> {
    let mut roles = Vec::new();
    for item in text.unwrap_or_default().split([',', ' ']) {
        if !item.trim().is_empty() {
            let role = role_id(item)?;
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
    }
    Ok(roles)
}

/// A role id, or a role mention `<@&id>`.
fn role_id(text: &str) -> Result<RoleId, AdminError> {
    let text = text.trim();
    let id = text
        .strip_prefix("<@&")
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(text);
    RoleId::parse(id).map_err(|e| AdminError::Invalid(format!("`{text}`: {e}")))
}
