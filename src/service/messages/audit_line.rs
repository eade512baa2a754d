//! Audit events as one line a person reads: "<@1001> asked for ssh (22) on
//! rg-web/web-01 for 2h", "changed mapping sre-web: max duration 3h → 4h".
//! The audit channel, the demo and `/jit-admin audit` all show this line;
//! the JSON detail stays in the database and in `audit export`. Pure: times
//! are Discord timestamp tokens, which each transport renders.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::chat::{escape_markdown, time_full};
use crate::domain::mapping::MappingSpec;
use crate::domain::{AuditAction, AuditEvent, PortAliases};

/// The event's actor as a mention (`discord:<id>`, `admin:<id>`) or as is.
pub fn actor(actor: &str) -> String {
    match actor
        .strip_prefix("discord:")
        .or_else(|| actor.strip_prefix("admin:"))
    {
        Some(id) => format!("<@{id}>"),
        None => actor.to_owned(),
    }
}

/// One line for `event`: what happened, without the JSON.
pub fn audit_line(event: &AuditEvent) -> String {
    let d = Detail(&event.detail);
    // Targets and detail values are data, often typed by a member (a VM
    // name, a reason, a display name): shown as typed, never as markdown.
    let target = if event.target.is_empty() {
        "-".to_owned()
    } else {
        escape_markdown(&event.target)
    };
    let target = target.as_str();
    match event.action {
        AuditAction::RequestReceived => format!(
            "{} asked for {} on {target} for {}{}{}",
            d.typed("user").unwrap_or_else(|| actor(&event.actor)),
            d.or("ports", "ports"),
            d.or("duration", "?"),
            d.text("source")
                .map(|s| format!(" from {s}"))
                .unwrap_or_default(),
            d.typed("reason")
                .map(|r| format!(" — reason: {r}"))
                .unwrap_or_default(),
        ),
        AuditAction::AccessAllowed => format!(
            "allowed {} on {target} by mapping {}",
            d.or("ports", "ports"),
            d.or("mapping", "?")
        ),
        AuditAction::AccessDenied => format!(
            "denied {} on {target}: {}",
            d.or("ports", "ports"),
            d.typed_or("reason", "no reason recorded")
        ),
        AuditAction::AccessInitiated => format!(
            "Azure opened {} on {target} for {}{}",
            d.or("ports", "ports"),
            d.or("source", "?"),
            d.time("end")
                .map(|t| format!(" until {t}"))
                .unwrap_or_default()
        ),
        AuditAction::AccessFailed => format!(
            "Azure did not open {target}: {}",
            d.typed_or("error", "no error recorded")
        ),
        AuditAction::AccessExtended => format!(
            "extended {target}{}{}",
            d.text("window")
                .map(|w| format!(" by {w}"))
                .unwrap_or_default(),
            d.time("end")
                .map(|t| format!(" until {t}"))
                .unwrap_or_default()
        ),
        AuditAction::AccessClosedEarly => format!(
            "closed {target} early{}",
            d.time("port_closes_at")
                .map(|t| format!("; the port closes {t}"))
                .unwrap_or_default()
        ),
        AuditAction::ReminderSent => format!(
            "reminded {} that {target} closes{}",
            d.text("user")
                .map(|u| actor(&u))
                .unwrap_or_else(|| "the owner".into()),
            d.time("ends").map(|t| format!(" {t}")).unwrap_or_default()
        ),
        AuditAction::AccessExpired => expired(&d, target),
        AuditAction::AccessEndedInAzure => format!(
            "Azure shows {}'s access to {target} ended ({}){}",
            d.text("owner")
                .map(|o| format!("<@{o}>"))
                .unwrap_or_else(|| "the owner".into()),
            d.or("reason", "?"),
            d.text("by_source")
                .map(|s| format!(", replaced by a request from {s}"))
                .unwrap_or_default(),
        ),
        AuditAction::AccessCancelled
            if event.detail.get("unanswered") == Some(&Value::Bool(true)) =>
        {
            format!(
                "cancelled the request for {target}: nobody answered whether to end {}'s access; nothing was sent to Azure",
                d.text("holder")
                    .map(|o| format!("<@{o}>"))
                    .unwrap_or_else(|| "another member".into()),
            )
        }
        AuditAction::AccessCancelled => format!(
            "cancelled the request for {target} instead of ending {}'s access",
            d.text("holder")
                .map(|o| format!("<@{o}>"))
                .unwrap_or_else(|| "another member".into()),
        ),
        AuditAction::AccessReopened => format!(
            "Azure shows {}'s access to {target} open{}: back under Drawbridge's care",
            d.text("owner")
                .map(|o| format!("<@{o}>"))
                .unwrap_or_else(|| "the owner".into()),
            d.time("end")
                .map(|t| format!(" until {t}"))
                .unwrap_or_default(),
        ),
        AuditAction::OpenedOutsideDrawbridge => format!(
            "{} opened port {} on {target} from {} outside Drawbridge{}",
            d.typed_or("requestor", "someone"),
            d.or("ports", "?"),
            d.or("source", "?"),
            d.time("end")
                .map(|t| format!(", until {t}"))
                .unwrap_or_default()
        ),
        AuditAction::MappingAdded => mapping_added(&event.detail, target),
        AuditAction::MappingRemoved => match event.detail.get("mapping") {
            Some(spec) => format!("removed mapping {target}: {}", describe_spec(spec)),
            None => format!("removed mapping {target}"),
        },
        AuditAction::MappingsImported => imported(&d),
        AuditAction::PolicyEnabled => format!("enabled JIT on {}", d.or("vm", target)),
        AuditAction::SourceSaved => format!("saved the source address {}", d.or("source", "?")),
        AuditAction::ActionRefused => format!(
            "refused {}{}: {}",
            d.or("action", "an action"),
            if target == "-" {
                String::new()
            } else {
                format!(" on {target}")
            },
            d.typed_or("reason", "no reason recorded")
        ),
        AuditAction::RefusalsFolded => format!(
            "{} more refusals of {}{}, each in the audit log",
            d.or("refusals", "?"),
            actor(&event.actor),
            d.time("since")
                .map(|t| format!(" since {t}"))
                .unwrap_or_default()
        ),
        AuditAction::BotStarted => format!("Drawbridge {} started", d.or("version", "")),
        AuditAction::BotStopped => "Drawbridge stopped".to_owned(),
        AuditAction::AuditChainBroken => format!(
            "the audit chain is broken at row {}: {} ({} rows intact before it)",
            d.or("first_broken_row", "?"),
            d.or("problem", "no detail recorded"),
            d.or("rows_intact", "?")
        ),
        AuditAction::ApprovalRequested => format!(
            "{target} waits for {} approval(s) from {}",
            d.or("needed", "?"),
            d.or("approvers", "the approvers")
        ),
        AuditAction::RequestApproved => format!(
            "{} approved {}'s request for {target} ({} of {})",
            actor(&event.actor),
            d.text("requester")
                .map(|u| actor(&u))
                .unwrap_or_else(|| "a member".into()),
            d.or("count", "?"),
            d.or("needed", "?")
        ),
        AuditAction::RequestDenied => format!(
            "{} denied {}'s request for {target}: {}",
            actor(&event.actor),
            d.text("requester")
                .map(|u| actor(&u))
                .unwrap_or_else(|| "a member".into()),
            d.typed_or("reason", "no reason recorded")
        ),
        AuditAction::RequestCancelled => {
            format!(
                "{} cancelled their request for {target}",
                actor(&event.actor)
            )
        }
        AuditAction::ApprovalExpired => format!(
            "{}'s request for {target} expired without a decision",
            d.text("requester")
                .map(|u| actor(&u))
                .unwrap_or_else(|| "a member".into()),
        ),
        AuditAction::BreakGlassUsed => format!(
            "BREAK-GLASS: {} opened {target} without approval — reason: {}",
            actor(&event.actor),
            d.typed_or("reason", "none")
        ),
        AuditAction::BreakGlassAcknowledged => format!(
            "{} acknowledged {}'s break-glass access to {target}",
            actor(&event.actor),
            d.text("requester")
                .map(|u| actor(&u))
                .unwrap_or_else(|| "a member".into()),
        ),
        AuditAction::AskedAfterApproval => {
            let requester = d
                .text("requester")
                .map(|u| actor(&u))
                .unwrap_or_else(|| "a member".into());
            format!(
                "{} approved {requester}'s request for {target}, but {} holds the port from another address: {requester} is asked whether to open it anyway",
                actor(&event.actor),
                d.text("holder")
                    .map(|u| actor(&u))
                    .unwrap_or_else(|| "another member".into()),
            )
        }
    }
}

/// Read access to a detail object that may lack any key.
struct Detail<'a>(&'a Value);

impl Detail<'_> {
    fn text(&self, key: &str) -> Option<String> {
        match self.0.get(key)? {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(s.clone()),
            other => Some(plain(other)),
        }
    }

    fn or(&self, key: &str, fallback: &str) -> String {
        self.text(key).unwrap_or_else(|| fallback.to_owned())
    }

    /// Text that someone typed or another service wrote (a reason, a
    /// display name, Azure's requestor or error), escaped so that it shows
    /// as typed and never as a link, a mention or formatting.
    fn typed(&self, key: &str) -> Option<String> {
        self.text(key).map(|t| escape_markdown(&t))
    }

    fn typed_or(&self, key: &str, fallback: &str) -> String {
        self.typed(key).unwrap_or_else(|| fallback.to_owned())
    }

    /// An RFC 3339 time as a Discord timestamp token.
    fn time(&self, key: &str) -> Option<String> {
        let text = self.text(key)?;
        Some(match DateTime::parse_from_rfc3339(&text) {
            Ok(at) => time_full(at.with_timezone(&Utc)),
            Err(_) => text,
        })
    }
}

fn expired(d: &Detail<'_>, target: &str) -> String {
    let mut line = format!("{target} closed");
    if let Some(user) = d.text("user") {
        line.push_str(&format!(" for {}", actor(&user)));
    }
    if let Some(at) = d.time("ended") {
        line.push_str(&format!(" at {at}"));
    }
    if let Some(reason) = d.text("reason") {
        line.push_str(&format!(": {reason}"));
    }
    if let Some(note) = d.text("note") {
        line.push_str(&format!("; {note}"));
    }
    if d.0.get("late") == Some(&Value::Bool(true)) {
        line.push_str(" (late: Drawbridge was not running when the window ended)");
    }
    line
}

fn imported(d: &Detail<'_>) -> String {
    let names = |key: &str| -> Vec<String> {
        d.0.get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().map(plain).collect())
            .unwrap_or_default()
    };
    let mut parts = Vec::new();
    for (key, verb) in [
        ("added", "added"),
        ("changed", "changed"),
        ("removed", "removed"),
    ] {
        let list = names(key);
        if !list.is_empty() {
            parts.push(format!("{verb} {}", list.join(", ")));
        }
    }
    let unchanged = names("unchanged").len();
    parts.push(format!("{unchanged} unchanged"));
    format!("imported the mappings: {}", parts.join("; "))
}

fn mapping_added(detail: &Value, name: &str) -> String {
    let Some(spec) = detail.get("mapping") else {
        return format!("added mapping {name}");
    };
    match detail.get("before") {
        Some(before) if detail.get("change").and_then(Value::as_str) == Some("changed") => {
            format!("changed mapping {name}: {}", diff(before, spec))
        }
        _ => format!("added mapping {name}: {}", describe_spec(spec)),
    }
}

/// A stored mapping spec as the bot describes mappings elsewhere: "<@&100>
/// → VMs web-*, ports 22, up to 3h, from any single address".
pub fn describe_spec(spec: &Value) -> String {
    let Ok(parsed) = serde_json::from_value::<MappingSpec>(spec.clone()) else {
        return fields(spec);
    };
    let roles = mention_roles(&serde_json::to_value(&parsed.roles).unwrap_or_default());
    match parsed.validate(&PortAliases::default()) {
        Ok(mapping) => format!("{roles} → {}", mapping.describe()),
        // A port alias of this deployment, or a spec from an older version.
        Err(_) => fields(spec),
    }
}

/// Every field of a spec, `key value`, in a stable order.
fn fields(spec: &Value) -> String {
    let Some(map) = spec.as_object() else {
        return plain(spec);
    };
    map.iter()
        .filter(|(k, _)| k.as_str() != "name")
        .map(|(k, v)| format!("{} {}", k.replace('_', " "), field_value(k, v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The fields that differ, `key before → after`.
fn diff(before: &Value, after: &Value) -> String {
    let empty = Map::new();
    let b = before.as_object().unwrap_or(&empty);
    let a = after.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    let changes: Vec<String> = keys
        .into_iter()
        .filter(|k| b.get(*k) != a.get(*k))
        .map(|k| {
            let show = |v: Option<&Value>| v.map_or("-".to_owned(), |v| field_value(k, v));
            format!(
                "{} {} → {}",
                k.replace('_', " "),
                show(b.get(k)),
                show(a.get(k))
            )
        })
        .collect();
    if changes.is_empty() {
        "no field changed".to_owned()
    } else {
        changes.join("; ")
    }
}

fn field_value(key: &str, value: &Value) -> String {
    match key {
        "roles" | "approvers" | "break_glass" => mention_roles(value),
        "approver_role" => match value {
            Value::Null => "-".to_owned(),
            v => format!("<@&{}>", plain(v)),
        },
        _ => plain(value),
    }
}

fn mention_roles(value: &Value) -> String {
    match value.as_array() {
        Some(roles) if !roles.is_empty() => roles
            .iter()
            .map(|r| format!("<@&{}>", plain(r)))
            .collect::<Vec<_>>()
            .join(" "),
        _ => "no roles".to_owned(),
    }
}

/// A JSON value without quotes: lists comma-separated, booleans yes/no.
fn plain(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::Bool(true) => "yes".to_owned(),
        Value::Bool(false) => "no".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "none".to_owned(),
        Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::domain::Outcome;

    fn event(action: AuditAction, target: &str, detail: Value) -> AuditEvent {
        let at = Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap();
        AuditEvent::new(at, "discord:1001", action, target, Outcome::Success).with_detail(detail)
    }

    fn spec(max: &str) -> Value {
        json!({"name": "sre-web", "roles": ["100"], "vms": "web-*", "ports": ["ssh"], "max_duration": max, "require_reason": false})
    }

    #[test]
    fn an_added_mapping_reads_as_its_description() {
        let line = audit_line(&event(
            AuditAction::MappingAdded,
            "sre-web",
            json!({"change": "added", "mapping": spec("3h")}),
        ));
        assert!(
            line.starts_with("added mapping sre-web: <@&100> → VMs web-*, ports 22, up to 3h"),
            "{line}"
        );
        assert!(!line.contains('{'), "{line}");
    }

    #[test]
    fn a_changed_mapping_shows_only_the_changed_fields_before_and_after() {
        let line = audit_line(&event(
            AuditAction::MappingAdded,
            "sre-web",
            json!({"change": "changed", "mapping": spec("4h"), "before": spec("3h")}),
        ));
        assert_eq!(line, "changed mapping sre-web: max duration 3h → 4h");
    }

    #[test]
    fn a_removed_mapping_and_an_import_read_as_sentences() {
        let removed = audit_line(&event(
            AuditAction::MappingRemoved,
            "sre-web",
            json!({"mapping": spec("3h")}),
        ));
        assert!(
            removed.starts_with("removed mapping sre-web: <@&100> → VMs web-*"),
            "{removed}"
        );
        let imported = audit_line(&event(
            AuditAction::MappingsImported,
            "mappings",
            json!({"added": ["a"], "removed": [], "changed": ["b", "c"], "unchanged": ["d"]}),
        ));
        assert_eq!(
            imported,
            "imported the mappings: added a; changed b, c; 1 unchanged"
        );
    }

    #[test]
    fn asking_after_approval_names_the_approver_the_requester_and_the_holder() {
        let line = audit_line(&event(
            AuditAction::AskedAfterApproval,
            "rg-prod/ops-01",
            json!({"requester": "discord:1002", "holder": "discord:1003"}),
        ));
        assert_eq!(
            line,
            "<@1001> approved <@1002>'s request for rg-prod/ops-01, but <@1003> holds the port from another address: <@1002> is asked whether to open it anyway"
        );
    }

    #[test]
    fn every_kind_renders_without_json_even_with_no_detail() {
        for action in AuditAction::ALL {
            let line = audit_line(&event(action, "rg-web/web-01", json!({})));
            assert!(!line.is_empty(), "{action}");
            assert!(
                !line.contains('{') && !line.contains('"'),
                "{action}: {line}"
            );
        }
    }

    #[test]
    fn a_request_names_who_what_where_and_why() {
        let line = audit_line(&event(
            AuditAction::RequestReceived,
            "rg-prod/win-07",
            json!({"user": "Sam", "ports": "rdp (3389)", "duration": "45m", "source": "203.0.113.10", "reason": "patching"}),
        ));
        assert_eq!(
            line,
            "Sam asked for rdp (3389) on rg-prod/win-07 for 45m from 203.0.113.10 — reason: patching"
        );
    }
}
