//! Phase 3: the grant, `requested`, and its audit events (request received,
//! access allowed) in one transaction, before Azure is asked anything. A
//! request id already stored is returned as it is, so one interaction never
//! initiates twice. A grant whose member is first asked whether to end
//! another member's window is stored `confirming` in the same transaction:
//! the question lives in the database, so its buttons outlive a restart,
//! with the timer that cancels it if nobody answers.

use serde_json::json;

use super::{Admitted, Asking};
use crate::domain::{AuditAction, AuditEvent, GrantEvent, Outcome, Snowflake};
use crate::service::question::QUESTION_TIMEOUT;
use crate::service::{Service, actor};
use crate::store::{InsertOutcome, NewGrant, ScheduleKind, StoreError, StoreTx};

impl Service {
    /// Writes the admitted request as a `requested` grant inside `tx`, so
    /// the caller can write more in the same transaction (a request held
    /// for approval, a break-glass record) before it commits; `confirming`
    /// instead when `ask_first` (another member holds the port).
    ///
    /// # Errors
    /// If the store fails.
    pub(crate) async fn persist_in(
        &self,
        tx: &mut StoreTx,
        asking: &Asking<'_>,
        admitted: &Admitted,
        ask_first: bool,
    ) -> Result<InsertOutcome, StoreError> {
        let (who, request) = (asking.who, asking.request);
        let target = admitted.target.identity.qualified();
        let outcome = tx
            .insert_grant(NewGrant {
                request_id: asking.id.clone(),
                user_id: who.member.user_id,
                guild_id: who.guild_id.and_then(Snowflake::from_u64),
                channel_id: who.channel_id.and_then(Snowflake::from_u64),
                vm_id: admitted.target.vm.vm_id.clone(),
                vm_name: target.clone(),
                policy_id: admitted.target.vm.policy.to_string(),
                ports: request.ports.clone(),
                source: admitted.source,
                duration: request.duration,
                reason: request.reason.clone(),
                mapping: admitted.mapping.clone(),
                requested_at: asking.now,
                interaction_token: who.token.clone(),
            })
            .await?;
        let outcome = match outcome {
            InsertOutcome::Inserted(grant) if ask_first => {
                let asked = tx
                    .transition_grant(&grant.request_id, &GrantEvent::AskedFirst, asking.now)
                    .await?;
                let due = asking.now + QUESTION_TIMEOUT;
                tx.schedule(&asked.request_id, ScheduleKind::QuestionTimeout, due)
                    .await?;
                InsertOutcome::Inserted(asked)
            }
            other => other,
        };
        if matches!(outcome, InsertOutcome::Inserted(_)) {
            let detail = request_detail(asking, Some(&admitted.source));
            let mut allowed = detail.clone();
            allowed["mapping"] = json!(admitted.mapping.as_str());
            let by = actor(who.member.user_id);
            let received = AuditEvent::new(
                asking.now,
                by.clone(),
                AuditAction::RequestReceived,
                &target,
                Outcome::Info,
            );
            tx.append_audit(&received.with_detail(detail)).await?;
            let allow = AuditEvent::new(
                asking.now,
                by,
                AuditAction::AccessAllowed,
                &target,
                Outcome::Success,
            );
            tx.append_audit(&allow.with_detail(allowed)).await?;
        }
        Ok(outcome)
    }
}

/// The audit detail of a request: who, what, for how long, from where, why.
pub(crate) fn request_detail(
    asking: &Asking<'_>,
    source: Option<&crate::domain::SourcePrefix>,
) -> serde_json::Value {
    let request = asking.request;
    json!({
        "request_id": asking.id.as_str(),
        "user": asking.who.member.name,
        "ports": request.ports.to_string(),
        "duration": request.duration.to_string(),
        "source": source.map(ToString::to_string),
        "reason": request.reason.as_ref().map(|r| r.as_str()),
    })
}
