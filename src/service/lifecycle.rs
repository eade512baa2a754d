//! Extend, Close early, `/jit-status` and `/jit-ip`.

use serde_json::json;

use super::request::{RequestError, justification};
use super::{Service, actor, identity_of};
use crate::azure::{CloseOutcome, check_request};
use crate::domain::authorize::{self, AccessQuery, Decision};
use crate::domain::{
    AccessDuration, AuditAction, AuditEvent, GrantEvent, GrantState, Outcome, RequestId,
    SourcePrefix, VmRef,
};
use crate::interactions::Invocation;
use crate::store::{Grant, ScheduleKind, StoreError};

/// Why a button did nothing.
#[derive(Debug, thiserror::Error)]
pub enum GrantActionError {
    /// No such grant.
    #[error("this grant no longer exists")]
    NotFound,
    /// Someone else's grant.
    #[error("only the engineer who asked for this grant can change it")]
    NotOwner,
    /// The grant is not open any more.
    #[error("this grant is {0}: there is nothing to change")]
    NotOpen(GrantState),
    /// The request failed (as for a new request).
    #[error(transparent)]
    Request(#[from] RequestError),
}

impl From<StoreError> for GrantActionError {
    fn from(e: StoreError) -> Self {
        Self::Request(e.into())
    }
}

/// What Close early did.
#[derive(Debug, Clone)]
pub struct Closed {
    /// The grant as now stored.
    pub grant: Grant,
    /// What Azure shows.
    pub outcome: CloseOutcome,
}

impl Service {
    async fn owned_open_grant(
        &self,
        who: &Invocation,
        request_id: &str,
    ) -> Result<Grant, GrantActionError> {
        let id = RequestId::parse(request_id).map_err(|_| GrantActionError::NotFound)?;
        let grant = self
            .store()
            .grant(&id)
            .await?
            .ok_or(GrantActionError::NotFound)?;
        if grant.user_id != who.member.user_id {
            return Err(GrantActionError::NotOwner);
        }
        if !matches!(grant.state, GrantState::Active | GrantState::Extended) {
            return Err(GrantActionError::NotOpen(grant.state));
        }
        Ok(grant)
    }

    /// Extends an open grant: a new window from now, as long as the grant's
    /// own duration plus what remains, capped by the member's mappings (as
    /// they are now) and the VM's policy. Reminders move with the new end.
    ///
    /// # Errors
    /// [`GrantActionError`].
    #[tracing::instrument(skip_all, fields(request_id = %request_id, user = %who.member.user_id))]
    pub async fn extend(
        &self,
        who: &Invocation,
        request_id: &str,
    ) -> Result<Grant, GrantActionError> {
        let grant = self.owned_open_grant(who, request_id).await?;
        let now = self.clock().now();
        let vm_ref = VmRef::parse(&grant.vm_name)
            .map_err(|e| RequestError::Unexpected(anyhow::anyhow!("stored VM name: {e}")))?;
        let vm = self.jit().resolve(&vm_ref).await.map_err(|e| match e {
            super::LookupError::Azure(e) => RequestError::Azure {
                message: e.user_message(),
            },
            _ => RequestError::VmNotFound {
                name: grant.vm_name.clone(),
                exists_without_jit: false,
            },
        })?;
        let identity = identity_of(&vm)
            .ok_or_else(|| RequestError::Unexpected(anyhow::anyhow!("indexed VM names invalid")))?;
        let remaining = grant
            .end_time
            .map(|end| (end - now).num_minutes().max(0))
            .unwrap_or(0);
        let wanted = (remaining + i64::from(grant.duration.minutes())).min(i64::from(u32::MAX));
        let mappings = self.mappings();
        let max_allowed = authorize::mappings_for(&mappings, &who.member.roles, &identity)
            .filter(|m| m.ports.covers(&grant.ports) && m.sources.allows(&grant.source))
            .map(|m| m.max_duration)
            .max()
            .ok_or(RequestError::Denied(
                crate::domain::Denial::NoMappingForVm {
                    vm: identity.qualified(),
                },
            ))?;
        let policy_max = grant
            .ports
            .numbers()
            .iter()
            .filter_map(|p| vm.port(*p).map(|r| r.max_duration.num_minutes()))
            .min()
            .unwrap_or(0);
        let minutes = wanted
            .min(i64::from(max_allowed.minutes()))
            .min(policy_max)
            .max(0) as u32;
        let Some(window) = AccessDuration::from_minutes(minutes) else {
            return Err(RequestError::Invalid(
                "the grant cannot be extended: the limits leave less than 5 minutes".into(),
            )
            .into());
        };
        // The window must still pass the member's mappings and the policy.
        let decision = authorize::authorize(
            &mappings,
            &AccessQuery {
                roles: &who.member.roles,
                vm: &identity,
                ports: &grant.ports,
                duration: window,
                source: Some(&grant.source),
                reason: grant.reason.as_ref(),
            },
        );
        if let Decision::Deny(denial) = decision {
            return Err(RequestError::Denied(denial).into());
        }
        let net = match grant.source {
            SourcePrefix::Any => None,
            SourcePrefix::Net(n) => Some(n),
        };
        check_request(&vm, &grant.ports.numbers(), window.to_chrono(), net)
            .map_err(RequestError::Policy)?;
        let end = now + window.to_chrono();
        let why = justification(who, &grant.request_id, Some("extend"));
        let initiated = self
            .jit()
            .initiate(
                &vm,
                &grant.ports.numbers(),
                end,
                &grant.source.to_string(),
                &why,
            )
            .await
            .map_err(|e| {
                tracing::warn!(error.message = %e, "extend failed");
                RequestError::Azure {
                    message: e.user_message(),
                }
            })?;
        let mut tx = self.store().begin().await?;
        let updated = tx
            .transition_grant(
                &grant.request_id,
                &GrantEvent::Extended { end: initiated.end },
                now,
            )
            .await?;
        tx.cancel_schedule(
            &grant.request_id,
            &[ScheduleKind::Reminder, ScheduleKind::Expiry],
            now,
        )
        .await?;
        self.schedule_timers(&mut tx, &grant.request_id, initiated.end, now)
            .await?;
        tx.append_audit(
            &AuditEvent::new(
                now,
                actor(who.member.user_id),
                AuditAction::AccessExtended,
                &grant.vm_name,
                Outcome::Success,
            )
            .with_detail(json!({
                "request_id": grant.request_id.as_str(),
                "window": window.to_string(),
                "end": crate::domain::audit::format_time(initiated.end),
            })),
        )
        .await?;
        tx.commit().await?;
        Ok(updated)
    }

    /// Closes an open grant early. Azure has no revoke: the ports are
    /// re-initiated with the shortest window and the policy is read back;
    /// the grant records when the port really closes.
    ///
    /// # Errors
    /// [`GrantActionError`]; on an Azure failure the grant is as before.
    #[tracing::instrument(skip_all, fields(request_id = %request_id, user = %who.member.user_id))]
    pub async fn close_early(
        &self,
        who: &Invocation,
        request_id: &str,
    ) -> Result<Closed, GrantActionError> {
        let grant = self.owned_open_grant(who, request_id).await?;
        let now = self.clock().now();
        let was_extended = grant.state == GrantState::Extended;
        let mut tx = self.store().begin().await?;
        tx.transition_grant(&grant.request_id, &GrantEvent::CloseRequested, now)
            .await?;
        tx.commit().await?;
        let vm_ref = VmRef::parse(&grant.vm_name).ok();
        let vm = match vm_ref {
            Some(r) => self.jit().resolve(&r).await.ok(),
            None => None,
        };
        let why = justification(who, &grant.request_id, Some("close early"));
        let outcome = match vm {
            Some(vm) => self
                .jit()
                .close_early(
                    &vm,
                    &grant.ports.numbers(),
                    &grant.source.to_string(),
                    &why,
                    now,
                )
                .await
                .map_err(|e| e.user_message()),
            None => Err("the VM is no longer under JIT, so Azure cannot be asked".to_string()),
        };
        let mut tx = self.store().begin().await?;
        match outcome {
            Ok(outcome) => {
                let closes_at = outcome.closes_at();
                let updated = tx
                    .transition_grant(
                        &grant.request_id,
                        &GrantEvent::Closed { end: closes_at },
                        now,
                    )
                    .await?;
                tx.cancel_schedule(
                    &grant.request_id,
                    &[ScheduleKind::Reminder, ScheduleKind::Expiry],
                    now,
                )
                .await?;
                tx.append_audit(
                    &AuditEvent::new(now, actor(who.member.user_id), AuditAction::AccessClosedEarly, &grant.vm_name, Outcome::Success)
                        .with_detail(json!({
                            "request_id": grant.request_id.as_str(),
                            "port_closes_at": crate::domain::audit::format_time(closes_at),
                            "azure_status": outcome.ports.iter().map(|p| json!({"port": p.number, "status": p.status})).collect::<Vec<_>>(),
                        })),
                )
                .await?;
                tx.commit().await?;
                Ok(Closed {
                    grant: updated,
                    outcome,
                })
            }
            Err(message) => {
                tx.transition_grant(
                    &grant.request_id,
                    &GrantEvent::CloseFailed {
                        back_to_extended: was_extended,
                    },
                    now,
                )
                .await?;
                tx.commit().await?;
                Err(RequestError::Azure { message }.into())
            }
        }
    }

    /// The member's open and recent grants.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn status(&self, who: &Invocation) -> Result<Vec<Grant>, StoreError> {
        self.store().grants_for_user(who.member.user_id, 10).await
    }

    /// Saves the member's source address.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn save_source(
        &self,
        who: &Invocation,
        source: SourcePrefix,
    ) -> Result<(), StoreError> {
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        tx.save_source(who.member.user_id, &source, now).await?;
        tx.append_audit(
            &AuditEvent::new(
                now,
                actor(who.member.user_id),
                AuditAction::SourceSaved,
                who.member.user_id.to_string(),
                Outcome::Info,
            )
            .with_detail(json!({"source": source.to_string()})),
        )
        .await?;
        tx.commit().await
    }
}
