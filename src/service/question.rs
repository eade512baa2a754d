//! The question before one member's request ends another member's window.
//!
//! Azure keeps one window per VM and port: a newer request replaces the
//! older one (under either supersede model the emulator offers). So before
//! Drawbridge initiates for member B on a VM and port where member A holds
//! an open grant from another address, B is asked: "web-01 ssh is open for
//! @A until 15:00 from another address; Azure keeps one window per port, so
//! opening it for you ends theirs." with **Open anyway** and **Cancel**.
//!
//! - The question is B's grant, stored `confirming` before B sees it,
//!   with the edit of B's reply that asks it in the outbox (shown in line,
//!   delivered from the outbox when that fails); the buttons carry only
//!   the request id, so they work after a restart.
//! - Only B may answer. Each answer claims the grant out of `confirming` in
//!   one transaction, so Open anyway and Cancel pressed at once cannot both
//!   win; the loser is told.
//! - Open anyway initiates as `/jit` would have; the read-back then ends A's
//!   grant with B as the actor, and A gets a DM at once ([`super::truth`]).
//! - Cancel sends nothing to Azure. A question older than
//!   [`QUESTION_LIFETIME`] is cancelled when answered: the port may have
//!   changed hands since.
//! - A question nobody answers is cancelled after [`QUESTION_TIMEOUT`] by a
//!   durable timer (it outlives a restart): nothing reaches Azure, the reply
//!   says so (the interaction token, 15 minutes, still works), and the
//!   audit records it.
//! - The same member asking again is not asked: their new window replaces
//!   their own. A mapping with `on_conflict = "refuse"` refuses instead,
//!   naming who holds the port until when.
//! - A request that waited for approvers meets the same rule when it is
//!   approved ([`super::approval`]): the requester is asked then (on their
//!   reply, or by DM once its token has expired), and Open anyway names the
//!   approvers in Azure's justification; a Cancel edits the approval card.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;

use super::lifecycle::GrantActionError;
use super::request::RequestError;
use super::{Service, actor};
use crate::chat::time_full;
use crate::domain::{
    AuditAction, AuditEvent, GrantEvent, GrantState, MappingName, Outcome, PortAliases, PortSpec,
    RequestId, SourcePrefix, UserId,
};
use crate::interactions::Invocation;
use crate::store::{Grant, OutboxKind, OutboxMessage, ScheduleKind, StoreError, StoreTx};

/// How long a question can be answered; after that the port may have
/// changed hands, and the member asks again.
pub const QUESTION_LIFETIME: TimeDelta = TimeDelta::minutes(15);

/// How long a question waits for an answer before the scheduler cancels
/// it: under the 15 minutes an interaction token lives, so the reply can
/// still be edited to say so.
pub const QUESTION_TIMEOUT: TimeDelta = TimeDelta::minutes(10);

/// Another member's open window on the ports a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHolder {
    /// Their grant.
    pub request_id: RequestId,
    pub user_id: UserId,
    /// The ports both ask for.
    pub ports: PortSpec,
    /// When their window ends.
    pub end: DateTime<Utc>,
}

/// The member (not `user`) whose open grant on `vm_id` from another source
/// than `source` shares a port with `ports` at `now`; the one open longest
/// if several. Pure.
pub fn holder_of(
    open: &[Grant],
    vm_id: &str,
    ports: &PortSpec,
    source: &SourcePrefix,
    user: UserId,
    now: DateTime<Utc>,
) -> Option<PortHolder> {
    let wanted = ports.numbers();
    open.iter()
        .filter(|g| g.user_id != user && g.state.is_open() && g.source != *source)
        .filter(|g| g.vm_id.eq_ignore_ascii_case(vm_id))
        .filter_map(|g| {
            let end = g.end_time.filter(|end| *end > now)?;
            let shared = g.ports.numbers().into_iter().filter(|n| wanted.contains(n));
            let ports = PortSpec::from_numbers(shared)?;
            Some(PortHolder {
                request_id: g.request_id.clone(),
                user_id: g.user_id,
                ports,
                end,
            })
        })
        .max_by_key(|h| h.end)
}

/// "rg-web/web-01 ssh is open for <@A> until …  from another address".
fn held(holder: &PortHolder, vm: &str, aliases: &PortAliases) -> String {
    format!(
        "{vm} {} is open for <@{}> until {} from another address",
        holder.ports.describe(aliases),
        holder.user_id,
        time_full(holder.end)
    )
}

/// The question a member is asked.
pub fn question_text(holder: &PortHolder, vm: &str, aliases: &PortAliases) -> String {
    format!(
        "{}; Azure keeps one window per port, so opening it for you ends theirs.",
        held(holder, vm, aliases)
    )
}

/// The refusal under `on_conflict = "refuse"`.
pub fn refusal(
    holder: &PortHolder,
    vm: &str,
    mapping: &MappingName,
    aliases: &PortAliases,
) -> String {
    format!(
        "{}. Azure keeps one window per port, and mapping {mapping} does not end another member's access (on_conflict = \"refuse\"): ask them to close it early, or ask again after it closes.",
        held(holder, vm, aliases)
    )
}

impl Service {
    /// Who holds the port `grant` (a question) asks about, as now stored.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn holder_for(&self, grant: &Grant) -> Result<Option<PortHolder>, StoreError> {
        let open = self.store().open_grants_on(&grant.vm_id).await?;
        Ok(holder_of(
            &open,
            &grant.vm_id,
            &grant.ports,
            &grant.source,
            grant.user_id,
            self.clock().now(),
        ))
    }

    /// Open anyway: initiates the asked grant, ending the other member's
    /// window; they are told at once by the read-back.
    ///
    /// # Errors
    /// [`GrantActionError`]: not theirs, already answered, lapsed, refused
    /// by the mappings as they are now, or Azure's failure.
    #[tracing::instrument(skip_all, fields(request_id = %request_id, user = %who.member.user_id))]
    pub async fn open_anyway(
        &self,
        who: &Invocation,
        request_id: &str,
    ) -> Result<crate::store::Grant, GrantActionError> {
        let grant = self.asked_grant(who, request_id).await?;
        let target = self
            .resolve_grant_vm(&grant)
            .await
            .map_err(RequestError::from)?;
        let ask = super::phases::Ask {
            roles: &who.member.roles,
            ports: &grant.ports,
            duration: grant.duration,
            source: &grant.source,
            reason: grant.reason.as_ref(),
        };
        super::phases::decide(&self.mappings(), &target, &ask).map_err(RequestError::from)?;
        let now = self.clock().now();
        // An approved request's justification names its approvers too.
        let approvals = self.store().approvals(&grant.request_id).await?;
        let requested = self
            .answer(&grant, &GrantEvent::Confirmed, None, now)
            .await?;
        let why = (!approvals.is_empty())
            .then(|| super::approval::approved_justification(&requested, &approvals));
        Ok(self
            .open_requested_as(who, &target.vm, requested, now, why)
            .await?)
    }

    /// Cancel: the asked grant is `cancelled`, audited; nothing reaches
    /// Azure.
    ///
    /// # Errors
    /// [`GrantActionError`]: not theirs, or already answered.
    #[tracing::instrument(skip_all, fields(request_id = %request_id, user = %who.member.user_id))]
    pub async fn cancel_question(
        &self,
        who: &Invocation,
        request_id: &str,
    ) -> Result<Grant, GrantActionError> {
        let grant = self.asked_grant(who, request_id).await?;
        let holder = self.holder_for(&grant).await?;
        let now = self.clock().now();
        let audit = AuditEvent::new(
            now,
            actor(who.member.user_id),
            AuditAction::AccessCancelled,
            &grant.vm_name,
            Outcome::Info,
        )
        .with_detail(json!({
            "request_id": grant.request_id.as_str(),
            "holder": holder.as_ref().map(|h| h.user_id.to_string()),
            "holder_request_id": holder.as_ref().map(|h| h.request_id.as_str().to_owned()),
        }));
        self.answer(&grant, &GrantEvent::Cancelled, Some(audit), now)
            .await
    }

    /// The member's grant in `confirming`, still answerable; a lapsed one is
    /// cancelled and refused.
    async fn asked_grant(
        &self,
        who: &Invocation,
        request_id: &str,
    ) -> Result<Grant, GrantActionError> {
        let grant = self.owned_grant(who, request_id).await?;
        if grant.state != GrantState::Confirming {
            return Err(GrantActionError::Answered(grant.state));
        }
        let now = self.clock().now();
        if now - grant.state_changed_at > QUESTION_LIFETIME {
            self.answer(&grant, &GrantEvent::Cancelled, None, now)
                .await?;
            return Err(GrantActionError::Lapsed);
        }
        Ok(grant)
    }

    /// Claims `grant` out of `confirming` with `event` (and writes `audit`)
    /// in one transaction: of two answers at once, one wins; the other
    /// learns what the grant is now.
    async fn answer(
        &self,
        grant: &Grant,
        event: &GrantEvent,
        audit: Option<AuditEvent>,
        now: DateTime<Utc>,
    ) -> Result<Grant, GrantActionError> {
        let mut tx = self.store().begin().await?;
        let moved = tx.transition_grant(&grant.request_id, event, now).await;
        let moved = match moved {
            Ok(moved) => moved,
            Err(e) => {
                tx.rollback().await?;
                return Err(self.lost_answer(grant, e).await);
            }
        };
        tx.cancel_schedule(&grant.request_id, &[ScheduleKind::QuestionTimeout], now)
            .await?;
        if let Some(audit) = audit {
            tx.append_audit(&audit).await?;
        }
        if moved.state == GrantState::Cancelled {
            // An approved request's card and reply say it ended here.
            self.tell_if_approved(&mut tx, &moved, "n").await?;
        }
        match tx.commit().await {
            Ok(()) => Ok(moved),
            Err(e) => Err(self.lost_answer(grant, e).await),
        }
    }

    /// The question timer, nobody having answered: `grant` (still
    /// `confirming`) is cancelled, audited, and the member's reply edited to
    /// say so, in `tx`. Nothing reaches Azure.
    ///
    /// # Errors
    /// If the store fails (an answer that won meanwhile fails the
    /// transition, and the caller's transaction is rolled back).
    pub(crate) async fn expire_question(
        &self,
        tx: &mut StoreTx,
        grant: &Grant,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let id = &grant.request_id;
        let cancelled = tx.transition_grant(id, &GrantEvent::Cancelled, now).await?;
        let holder = self.holder_for(grant).await?;
        let audit = AuditEvent::new(
            now,
            "system",
            AuditAction::AccessCancelled,
            &grant.vm_name,
            Outcome::Info,
        )
        .with_detail(json!({
            "request_id": id.as_str(),
            "unanswered": true,
            "asked_at": crate::domain::audit::format_time(grant.state_changed_at),
            "holder": holder.as_ref().map(|h| h.user_id.to_string()),
            "holder_request_id": holder.as_ref().map(|h| h.request_id.as_str().to_owned()),
        }));
        tx.append_audit(&audit).await?;
        let reply = super::messages::unanswered(&cancelled, &self.config().aliases);
        if self
            .tell_approved_unanswered(tx, &cancelled, reply.clone())
            .await?
        {
            return Ok(());
        }
        tx.enqueue(OutboxMessage {
            kind: OutboxKind::InteractionEdit,
            target: Some(id.to_string()),
            payload: json!({ "message": reply }),
            idempotency_key: Some(format!("qt-{id}")),
            created_at: now,
        })
        .await?;
        Ok(())
    }

    /// What an answer that lost the claim says: the grant as it is now.
    async fn lost_answer(&self, grant: &Grant, error: StoreError) -> GrantActionError {
        match self.store().grant(&grant.request_id).await {
            Ok(Some(now)) if now.state != GrantState::Confirming => {
                GrantActionError::Answered(now.state)
            }
            _ => error.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AccessDuration;

    fn grant(user: u64, source: &str, ports: &[u16], state: GrantState) -> Grant {
        let now = Utc::now();
        Grant {
            request_id: RequestId::parse(&format!("r{user}{}", ports.len())).unwrap(),
            user_id: UserId::parse(&user.to_string()).unwrap(),
            guild_id: None,
            channel_id: None,
            vm_id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/web-01".into(),
            vm_name: "rg/web-01".into(),
            policy_id: "p".into(),
            ports: PortSpec::from_numbers(ports.iter().copied()).unwrap(),
            source: SourcePrefix::parse(source).unwrap(),
            duration: AccessDuration::from_minutes(60).unwrap(),
            reason: None,
            mapping: MappingName::parse("sre-web").unwrap(),
            state,
            requested_at: now,
            end_time: Some(now + TimeDelta::hours(1)),
            state_changed_at: now,
            failure: None,
            azure_detail: None,
            interaction_token: None,
        }
    }

    fn holder(open: &[Grant], user: u64, source: &str, ports: &[u16]) -> Option<PortHolder> {
        holder_of(
            open,
            &open[0].vm_id.to_uppercase(),
            &PortSpec::from_numbers(ports.iter().copied()).unwrap(),
            &SourcePrefix::parse(source).unwrap(),
            UserId::parse(&user.to_string()).unwrap(),
            Utc::now(),
        )
    }

    #[test]
    fn another_members_open_window_from_another_address_is_a_holder() {
        let open = [grant(1, "203.0.113.7", &[22, 443], GrantState::Active)];
        let found = holder(&open, 2, "198.51.100.20", &[22]).unwrap();
        assert_eq!(found.ports.numbers(), [22]);
        assert_eq!(found.user_id.to_string(), "1");
    }

    #[test]
    fn own_windows_same_addresses_other_ports_and_closed_grants_are_not() {
        let open = [grant(1, "203.0.113.7", &[22], GrantState::Active)];
        assert_eq!(holder(&open, 1, "198.51.100.20", &[22]), None, "own");
        assert_eq!(holder(&open, 2, "203.0.113.7", &[22]), None, "same source");
        assert_eq!(holder(&open, 2, "198.51.100.20", &[3389]), None, "port");
        let closed = [grant(1, "203.0.113.7", &[22], GrantState::Expired)];
        assert_eq!(holder(&closed, 2, "198.51.100.20", &[22]), None, "closed");
    }
}
