//! Audit events and the hash chain that makes the log tamper-evident.
//!
//! Each stored event carries `hash = SHA-256(prev_hash || canonical(event))`,
//! where `canonical` is JSON with sorted keys and a fixed timestamp format, so
//! the chain can be recomputed from the rows alone.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The hash before the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// A `/jit` request arrived.
    RequestReceived,
    /// It was allowed.
    AccessAllowed,
    /// It was denied.
    AccessDenied,
    /// Azure accepted the initiate.
    AccessInitiated,
    /// Azure refused or failed.
    AccessFailed,
    /// The window was extended.
    AccessExtended,
    /// The grant was closed early.
    AccessClosedEarly,
    /// A reminder was sent.
    ReminderSent,
    /// The window ended.
    AccessExpired,
    /// Azure shows the window ended before its time (a newer request
    /// replaced it, or Azure's own reason).
    AccessEndedInAzure,
    /// A JIT request made outside Drawbridge was seen.
    OpenedOutsideDrawbridge,
    /// The member answered Cancel when asked whether to end another
    /// member's access; nothing reached Azure.
    AccessCancelled,
    /// Azure shows our own request of a grant Drawbridge had as failed or
    /// closed still open: the grant is back under Drawbridge's care.
    AccessReopened,
    /// A mapping was added or changed.
    MappingAdded,
    /// A mapping was removed.
    MappingRemoved,
    /// The mapping set was replaced from a file.
    MappingsImported,
    /// JIT was enabled on a VM.
    PolicyEnabled,
    /// A member saved a source IP.
    SourceSaved,
    /// Something a member tried was refused before it reached a request:
    /// invalid input, a source that may not be saved, another member's
    /// button, an admin command without the admin role, another guild.
    ActionRefused,
    /// A member's refusals of the last minute, posted as one message (each
    /// is in the log on its own).
    RefusalsFolded,
    /// The bot started.
    BotStarted,
    /// The bot stopped.
    BotStopped,
    /// Recomputing the hash chain found a row edited, missing or out of
    /// place.
    AuditChainBroken,
    /// A request waits for approvers.
    ApprovalRequested,
    /// One approver approved (the actor).
    RequestApproved,
    /// An approver denied the request (the actor), with a reason.
    RequestDenied,
    /// The requester cancelled a pending request.
    RequestCancelled,
    /// Nobody decided a pending request in time.
    ApprovalExpired,
    /// A break-glass request skipped approval.
    BreakGlassUsed,
    /// An approver acknowledged a break-glass request (the actor).
    BreakGlassAcknowledged,
    /// The last approval (the actor) found the port held by another member,
    /// so the requester is asked whether to open it anyway.
    AskedAfterApproval,
}

impl AuditAction {
    /// Every kind, in the order above.
    pub const ALL: [AuditAction; 26] = [
        Self::RequestReceived,
        Self::AccessAllowed,
        Self::AccessDenied,
        Self::AccessInitiated,
        Self::AccessFailed,
        Self::AccessExtended,
        Self::AccessClosedEarly,
        Self::ReminderSent,
        Self::AccessExpired,
        Self::OpenedOutsideDrawbridge,
        Self::MappingAdded,
        Self::MappingRemoved,
        Self::MappingsImported,
        Self::PolicyEnabled,
        Self::SourceSaved,
        Self::BotStarted,
        Self::BotStopped,
        Self::AuditChainBroken,
        Self::ApprovalRequested,
        Self::RequestApproved,
        Self::RequestDenied,
        Self::RequestCancelled,
        Self::ApprovalExpired,
        Self::BreakGlassUsed,
        Self::BreakGlassAcknowledged,
        Self::AskedAfterApproval,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestReceived => "request_received",
            Self::AccessAllowed => "access_allowed",
            Self::AccessDenied => "access_denied",
            Self::AccessInitiated => "access_initiated",
            Self::AccessFailed => "access_failed",
            Self::AccessExtended => "access_extended",
            Self::AccessClosedEarly => "access_closed_early",
            Self::ReminderSent => "reminder_sent",
            Self::AccessExpired => "access_expired",
            Self::AccessEndedInAzure => "access_ended_in_azure",
            Self::OpenedOutsideDrawbridge => "opened_outside_drawbridge",
            Self::AccessCancelled => "access_cancelled",
            Self::AccessReopened => "access_reopened",
            Self::MappingAdded => "mapping_added",
            Self::MappingRemoved => "mapping_removed",
            Self::MappingsImported => "mappings_imported",
            Self::PolicyEnabled => "policy_enabled",
            Self::SourceSaved => "source_saved",
            Self::ActionRefused => "action_refused",
            Self::RefusalsFolded => "refusals_folded",
            Self::BotStarted => "bot_started",
            Self::BotStopped => "bot_stopped",
            Self::AuditChainBroken => "audit_chain_broken",
            Self::ApprovalRequested => "approval_requested",
            Self::RequestApproved => "request_approved",
            Self::RequestDenied => "request_denied",
            Self::RequestCancelled => "request_cancelled",
            Self::ApprovalExpired => "approval_expired",
            Self::BreakGlassUsed => "break_glass_used",
            Self::BreakGlassAcknowledged => "break_glass_acknowledged",
            Self::AskedAfterApproval => "asked_after_approval",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It worked.
    Success,
    /// Policy said no.
    Denied,
    /// Something failed.
    Failed,
    /// A plain record.
    Info,
}

impl Outcome {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denied => "denied",
            Self::Failed => "failed",
            Self::Info => "info",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
}

/// One audit event, before it is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When (stored with microsecond precision).
    pub at: DateTime<Utc>,
    /// Who: `discord:<user id>`, `cli`, `admin:<user id>` or `system`.
    pub actor: String,
    /// What.
    pub action: AuditAction,
    /// On what: a VM, a mapping, a request id.
    pub target: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Anything else, as JSON.
    pub detail: serde_json::Value,
}

impl AuditEvent {
    /// An event at `at` with an empty detail.
    pub fn new(
        at: DateTime<Utc>,
        actor: impl Into<String>,
        action: AuditAction,
        target: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        Self {
            at: truncate_to_micros(at),
            actor: actor.into(),
            action,
            target: target.into(),
            outcome,
            detail: serde_json::Value::Object(Default::default()),
        }
    }

    /// Adds detail.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// The timestamp as stored and hashed.
    pub fn at_text(&self) -> String {
        format_time(self.at)
    }

    /// The canonical bytes hashed for sequence number `seq`.
    pub fn canonical(&self, seq: i64) -> String {
        let value = serde_json::json!({
            "seq": seq,
            "at": self.at_text(),
            "actor": self.actor,
            "action": self.action.as_str(),
            "target": self.target,
            "outcome": self.outcome.as_str(),
            "detail": self.detail,
        });
        let mut out = String::new();
        write_canonical(&value, &mut out);
        out
    }

    /// The chained hash of this event as number `seq` after `prev_hash`.
    pub fn chain_hash(&self, seq: i64, prev_hash: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(prev_hash.as_bytes());
        hasher.update(self.canonical(seq).as_bytes());
        hex::encode(hasher.finalize())
    }
}

/// RFC 3339 with microseconds and `Z`: the one timestamp format of the log.
pub fn format_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn truncate_to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    let micros = at.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or(at)
}

/// JSON with object keys sorted at every level, independent of how
/// serde_json was built.
fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> AuditEvent {
        let at = DateTime::parse_from_rfc3339("2026-11-22T10:00:00.1234567Z")
            .unwrap()
            .with_timezone(&Utc);
        AuditEvent::new(
            at,
            "discord:42",
            AuditAction::AccessInitiated,
            "rg/web-01",
            Outcome::Success,
        )
        .with_detail(serde_json::json!({"z": 1, "a": {"y": [2, {"c": 3, "b": 4}]}}))
    }

    #[test]
    fn canonical_form_sorts_keys_and_fixes_the_time_format() {
        let c = event().canonical(7);
        assert_eq!(
            c,
            r#"{"action":"access_initiated","actor":"discord:42","at":"2026-11-22T10:00:00.123456Z","detail":{"a":{"y":[2,{"b":4,"c":3}]},"z":1},"outcome":"success","seq":7,"target":"rg/web-01"}"#
        );
    }

    #[test]
    fn the_hash_depends_on_every_field_and_the_previous_hash() {
        let base = event().chain_hash(1, GENESIS_HASH);
        assert_eq!(base.len(), 64);
        assert_eq!(base, event().chain_hash(1, GENESIS_HASH));
        assert_ne!(base, event().chain_hash(2, GENESIS_HASH));
        assert_ne!(base, event().chain_hash(1, &base));
        let mut changed = event();
        changed.target = "rg/web-02".into();
        assert_ne!(base, changed.chain_hash(1, GENESIS_HASH));
        let mut changed = event();
        changed.outcome = Outcome::Failed;
        assert_ne!(base, changed.chain_hash(1, GENESIS_HASH));
    }

    #[test]
    fn action_names_round_trip() {
        for a in AuditAction::ALL {
            assert_eq!(AuditAction::parse(a.as_str()), Some(a));
        }
        assert_eq!(AuditAction::parse("nope"), None);
    }
}
