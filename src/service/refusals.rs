//! Refusals that happen before a request exists (invalid input, a source
//! that may not be saved, another member's button, an admin command
//! without the admin role, an interaction from outside the guild): each is
//! one `action_refused` audit event, so the audit log shows every attempt,
//! not only those that reached the mappings.

use serde_json::json;

use super::{Service, actor};
use crate::domain::place::{Interaction, PlaceRefusal, check_place};
use crate::domain::{AuditAction, AuditEvent, Outcome};
use crate::interactions::Invocation;

/// The code of a failure inside Drawbridge, whose cause is never posted.
pub const INTERNAL: &str = "internal";

/// One refused action, as the audit log records it.
#[derive(Debug, Clone, Copy)]
pub struct Refused<'a> {
    /// What was tried: `jit`, `jit-ip`, `extend`, `jit-admin map`, …
    pub action: &'a str,
    /// On what: a VM, a request id, a member; empty if nothing.
    pub target: &'a str,
    /// A short machine-readable code, such as `invalid_input`.
    pub code: &'a str,
    /// What the member was told (never an internal cause).
    pub reason: &'a str,
    /// `denied` for a refusal, `failed` when Azure or Drawbridge failed.
    pub outcome: Outcome,
}

impl<'a> Refused<'a> {
    /// A refusal of `action` on `target`: `code`, and what the member was told.
    pub fn denied(action: &'a str, target: &'a str, code: &'a str, reason: &'a str) -> Self {
        Self {
            action,
            target,
            code,
            reason,
            outcome: Outcome::Denied,
        }
    }

    /// A refusal, or with `failed` a failure (Azure's or Drawbridge's).
    pub fn new(
        action: &'a str,
        target: &'a str,
        (code, failed): (&'a str, bool),
        reason: &'a str,
    ) -> Self {
        Self {
            outcome: if failed {
                Outcome::Failed
            } else {
                Outcome::Denied
            },
            ..Self::denied(action, target, code, reason)
        }
    }
}

impl Service {
    /// Whether `who` may use `kind` (`action`, for the audit log) from
    /// where they are; a refusal is audited.
    ///
    /// # Errors
    /// The [`PlaceRefusal`].
    pub async fn check_place(
        &self,
        who: &Invocation,
        kind: Interaction,
        action: &str,
    ) -> Result<(), PlaceRefusal> {
        let refusal = match check_place(self.config().home_guild, who.guild_id, kind) {
            Ok(()) => return Ok(()),
            Err(refusal) => refusal,
        };
        let target = who
            .guild_id
            .map_or_else(|| "direct message".to_owned(), |g| format!("guild {g}"));
        let reason = refusal.to_string();
        self.audit_refusal(
            who,
            Refused::denied(action, &target, refusal.code(), &reason),
        )
        .await;
        Err(refusal)
    }

    /// Audits `refused` as done by `who`. A store failure is logged: the
    /// member still gets their answer.
    pub async fn audit_refusal(&self, who: &Invocation, refused: Refused<'_>) {
        // An internal cause is logged where it happened, never posted.
        let reason = if refused.code == INTERNAL {
            "internal error: see the logs"
        } else {
            refused.reason
        };
        let event = AuditEvent::new(
            self.clock().now(),
            actor(who.member.user_id),
            AuditAction::ActionRefused,
            refused.target,
            refused.outcome,
        )
        .with_detail(json!({
            "action": refused.action,
            "code": refused.code,
            "reason": reason,
            "interaction_id": who.id,
            "guild_id": who.guild_id.map(|g| g.to_string()),
        }));
        if let Err(e) = self.store().append_audit(&event).await {
            tracing::error!(error.message = %e, error.cause_chain = ?e, code = refused.code, "auditing a refusal failed");
        }
    }
}
