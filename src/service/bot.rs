//! The bot as a chat transport sees it: slash commands, autocomplete and
//! buttons routed to the use cases, every outcome rendered as a message.

use async_trait::async_trait;

use super::admin::AdminError;
use super::request::RequestError;
use super::{Service, render};
use crate::chat::{ButtonAction, Card, ChatMessage, Tone, time_full};
use crate::domain::mapping::MappingSpec;
use crate::domain::{AccessRequest, RoleId, SourcePrefix};
use crate::interactions::{
    AutocompleteQuery, Choice, InteractionHandler, Invocation, SlashCommand,
};
use crate::store::{AuditFilter, MappingChange};

/// Implements [`InteractionHandler`] over the [`Service`].
#[derive(Debug, Clone)]
pub struct Bot {
    service: Service,
}

impl Bot {
    /// Wraps the service.
    pub fn new(service: Service) -> Self {
        Self { service }
    }

    /// The service.
    pub fn service(&self) -> &Service {
        &self.service
    }
}

fn notice(title: &str, tone: Tone, text: impl Into<String>) -> ChatMessage {
    ChatMessage::card(Card::new(title, tone).description(text))
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

fn log_unexpected(error: &RequestError, reference: &str) {
    if let RequestError::Unexpected(e) = error {
        tracing::error!(reference, error.message = %e, error.cause_chain = ?e, "request failed");
    }
}

#[async_trait]
impl InteractionHandler for Bot {
    async fn command(&self, who: &Invocation, command: &SlashCommand) -> ChatMessage {
        let s = &self.service;
        let aliases = &s.config().aliases;
        match (command.name.as_str(), command.subcommand.as_deref()) {
            ("jit", _) => {
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
                        return render::request_error(
                            &RequestError::Invalid(e.to_string()),
                            &who.id,
                        );
                    }
                };
                s.wake_after(match s.request_access(who, request).await {
                    Ok(grant) => render::grant(&grant, aliases),
                    Err(e) => {
                        log_unexpected(&e, &who.id);
                        render::request_error(&e, &who.id)
                    }
                })
            }
            ("jit-status", _) => match s.status(who).await {
                Ok(grants) => render::status(&grants, aliases),
                Err(e) => render::request_error(&RequestError::from(e), &who.id),
            },
            ("jit-ip", _) => match command.option("address") {
                None => match s.store().saved_source(who.member.user_id).await {
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
                    Err(e) => render::request_error(&RequestError::from(e), &who.id),
                },
                Some(text) => match SourcePrefix::parse(text) {
                    Err(e) => notice("That is not an address", Tone::Denied, e.to_string()),
                    Ok(SourcePrefix::Any) => notice(
                        "Not saved",
                        Tone::Denied,
                        "Save the address you connect from, not `*`: opening a port to every address needs an explicit from:* on a request a mapping allows.",
                    ),
                    Ok(src) => match s.save_source(who, src).await {
                        Ok(()) => s.wake_after(notice(
                            "Saved",
                            Tone::Success,
                            format!("Requests without from: now open ports for {src}."),
                        )),
                        Err(e) => render::request_error(&RequestError::from(e), &who.id),
                    },
                },
            },
            ("jit-admin", Some(sub)) => {
                let result = self.admin(who, sub, command).await;
                s.wake_after(result.unwrap_or_else(|e| admin_error(&e, &who.id)))
            }
            _ => notice(
                "Unknown command",
                Tone::Denied,
                "Drawbridge does not know that command.",
            ),
        }
    }

    async fn autocomplete(&self, who: &Invocation, query: &AutocompleteQuery) -> Vec<Choice> {
        let s = &self.service;
        let roles = &who.member.roles;
        let opt = |n: &str| query.options.get(n).map(String::as_str).unwrap_or_default();
        match (query.command.as_str(), query.focused.as_str()) {
            ("jit", "vm") => s.complete_vm(roles, &query.partial),
            ("jit", "port") => s.complete_port(roles, opt("vm"), &query.partial),
            ("jit", "duration") => {
                s.complete_duration(roles, opt("vm"), opt("port"), &query.partial)
            }
            ("jit-admin", "vm") if s.is_admin(roles) => s.complete_vm_any(&query.partial),
            _ => Vec::new(),
        }
    }

    async fn button(&self, who: &Invocation, action: &ButtonAction) -> ChatMessage {
        let s = &self.service;
        let aliases = &s.config().aliases;
        let message = match action {
            ButtonAction::Extend(id) => match s.extend(who, id).await {
                Ok(grant) => render::grant(&grant, aliases),
                Err(e) => render::action_error(&e, &who.id),
            },
            ButtonAction::CloseEarly(id) => match s.close_early(who, id).await {
                Ok(closed) => render::closed(&closed, aliases),
                Err(e) => render::action_error(&e, &who.id),
            },
        };
        s.wake_after(message)
    }
}

impl Bot {
    async fn admin(
        &self,
        who: &Invocation,
        sub: &str,
        command: &SlashCommand,
    ) -> Result<ChatMessage, AdminError> {
        let s = &self.service;
        let opt = |n: &str| command.option(n);
        let req = |n: &str| {
            opt(n).ok_or_else(|| AdminError::Invalid(format!("the option {n} is required")))
        };
        match sub {
            "map" => {
                let spec = MappingSpec {
                    name: req("name")?.to_string(),
                    roles: vec![
                        RoleId::parse(req("role")?)
                            .map_err(|e| AdminError::Invalid(e.to_string()))?,
                    ],
                    vms: req("vms")?.to_string(),
                    ports: vec![req("ports")?.to_string()],
                    max_duration: req("max_duration")?.to_string(),
                    sources: opt("sources")
                        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect()),
                    default_source: opt("default_source").map(str::to_string),
                    require_reason: opt("require_reason") == Some("true"),
                    approver_role: None,
                };
                let (mapping, change) = s.map(who, spec).await?;
                let verb = match change {
                    MappingChange::Added => "Mapping added",
                    MappingChange::Changed { .. } => "Mapping changed",
                    MappingChange::Unchanged => "Mapping unchanged",
                };
                Ok(ChatMessage::card(mapping_card(verb, &mapping)))
            }
            "unmap" => {
                let removed = s.unmap(who, req("name")?).await?;
                Ok(notice(
                    "Mapping removed",
                    Tone::Success,
                    format!("{} no longer grants access.", removed.name),
                ))
            }
            "mappings" => {
                let mappings = s.list_mappings_for(who)?;
                if mappings.is_empty() {
                    return Ok(notice(
                        "No mappings",
                        Tone::Info,
                        "Nobody can request access yet. Add a mapping with /jit-admin map.",
                    ));
                }
                let mut card = Card::new(format!("{} mappings", mappings.len()), Tone::Info);
                for m in mappings.iter().take(25) {
                    card = card.field(m.name.to_string(), mapping_summary(m), false);
                }
                Ok(ChatMessage::card(card))
            }
            "explain" => {
                let roles: Vec<RoleId> = if let Some(list) = opt("roles") {
                    list.split(',')
                        .filter(|r| !r.trim().is_empty())
                        .map(|r| RoleId::parse(r).map_err(|e| AdminError::Invalid(e.to_string())))
                        .collect::<Result<_, _>>()?
                } else if opt("user").is_some() {
                    // Keyed by option name, as the transports fill it.
                    command
                        .resolved_roles
                        .get("user")
                        .cloned()
                        .unwrap_or_default()
                } else {
                    who.member.roles.clone()
                };
                let (vm, decision) = s
                    .explain(
                        who,
                        &roles,
                        req("vm")?,
                        req("port")?,
                        req("duration")?,
                        opt("from"),
                        opt("reason"),
                    )
                    .await?;
                let card = match &decision {
                    crate::domain::Decision::Allow(a) => {
                        Card::new("Would be allowed", Tone::Success).description(format!(
                            "Mapping {} allows it on {} (maximum {}).",
                            a.mapping,
                            vm.qualified(),
                            a.max_duration
                        ))
                    }
                    crate::domain::Decision::Deny(d) => {
                        Card::new("Would be denied", Tone::Denied).description(d.to_string())
                    }
                };
                let roles_text = roles
                    .iter()
                    .map(|r| format!("<@&{r}>"))
                    .collect::<Vec<_>>()
                    .join(" ");
                Ok(ChatMessage::card(card.field(
                    "Roles",
                    if roles_text.is_empty() {
                        "none".into()
                    } else {
                        roles_text
                    },
                    false,
                )))
            }
            "audit" => {
                if !s.is_admin(&who.member.roles) {
                    return Err(AdminError::NotAdmin);
                }
                let since = match opt("since") {
                    Some(text) => {
                        let secs =
                            crate::domain::duration::parse_span_seconds(text).ok_or_else(|| {
                                AdminError::Invalid(format!(
                                    "`{text}` is not a duration: use forms like 2h or 7d"
                                ))
                            })?;
                        Some(
                            s.clock().now()
                                - chrono::Duration::seconds(secs.min(10 * 365 * 86_400) as i64),
                        )
                    }
                    None => None,
                };
                let limit = opt("limit")
                    .and_then(|l| l.parse::<u32>().ok())
                    .unwrap_or(10)
                    .clamp(1, 50);
                let records = s
                    .store()
                    .audit_events(&AuditFilter {
                        since,
                        actor: opt("user").map(|u| format!("discord:{u}")),
                        limit: Some(limit),
                        ..AuditFilter::default()
                    })
                    .await?;
                if records.is_empty() {
                    return Ok(notice("No audit events", Tone::Info, "Nothing matches."));
                }
                let mut card = Card::new(format!("{} audit events", records.len()), Tone::Info);
                for r in records.iter().rev().take(25) {
                    card = card.field(
                        format!("#{} {}", r.seq, r.event.action),
                        format!(
                            "{} · {} · {} · {}",
                            time_full(r.event.at),
                            r.event.actor,
                            r.event.target,
                            r.event.outcome.as_str()
                        ),
                        false,
                    );
                }
                Ok(ChatMessage::card(card))
            }
            "coverage" => {
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
            "enable" => {
                let vm = s.enable(who, req("vm")?).await?;
                Ok(notice(
                    "JIT enabled",
                    Tone::Success,
                    format!(
                        "{vm} is now under JIT with the default ports; its management ports stay closed until someone asks."
                    ),
                ))
            }
            other => Err(AdminError::Invalid(format!("unknown subcommand {other}"))),
        }
    }
}

fn mapping_summary(m: &crate::domain::RoleMapping) -> String {
    let roles = m
        .roles
        .iter()
        .map(|r| format!("<@&{r}>"))
        .collect::<Vec<_>>()
        .join(" ");
    format!("{roles} → {}", m.describe())
}

fn mapping_card(title: &str, m: &crate::domain::RoleMapping) -> Card {
    Card::new(title, Tone::Success).field(m.name.to_string(), mapping_summary(m), false)
}
