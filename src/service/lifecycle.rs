//! Extend, Close early, `/jit-status` and `/jit-ip`.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::phases::{Ask, ResolveVmError, ResolvedVm, decide};
use super::request::{RequestError, justification};
use super::{Service, actor};
use crate::domain::authorize;
use crate::domain::{
    AccessDuration, AuditAction, AuditEvent, CloseOutcome, Denial, GrantEvent, GrantState, Outcome,
    RequestId, RoleMapping, SourcePrefix, VmRef,
};
use crate::interactions::Invocation;
use crate::store::{Grant, StoreError};

/// What Close early says when the VM cannot be found any more.
const VM_GONE: &str = "the VM is no longer under JIT, so Azure cannot be asked";

/// Why a button did nothing.
#[derive(Debug, thiserror::Error)]
pub enum GrantActionError {
    #[error("this grant no longer exists")]
    NotFound,
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

    /// Resolves the VM of a stored grant.
    async fn resolve_grant_vm(&self, grant: &Grant) -> Result<ResolvedVm, ResolveVmError> {
        let vm_ref = VmRef::parse(&grant.vm_name).map_err(|e| {
            ResolveVmError::Unexpected(anyhow::anyhow!("stored VM name {}: {e}", grant.vm_name))
        })?;
        self.resolve_vm(&vm_ref).await
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
        let target = self
            .resolve_grant_vm(&grant)
            .await
            .map_err(RequestError::from)?;
        let mappings = self.mappings();
        let window = extension_window(&mappings, who, &grant, &target, now)?;
        let ask = Ask {
            roles: &who.member.roles,
            ports: &grant.ports,
            duration: window,
            source: &grant.source,
            reason: grant.reason.as_ref(),
        };
        decide(&mappings, &target, &ask).map_err(RequestError::from)?;
        let end = now + window.to_chrono();
        let why = justification(who, &grant.request_id, Some("extend"));
        let initiated = self
            .initiate(&target.vm, &grant, end, why)
            .await
            .map_err(|e| RequestError::Azure {
                message: e.user_message(),
            })?;
        Ok(self
            .settle_extended(who, &grant, window, &initiated, now)
            .await?)
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
        let outcome = match self.resolve_grant_vm(&grant).await {
            Ok(target) => {
                let why = justification(who, &grant.request_id, Some("close early"));
                self.jit()
                    .close_early(&target.vm, &grant.ports, &grant.source, &why, now)
                    .await
                    .map_err(|e| {
                        tracing::warn!(error.message = %e, error.cause_chain = ?e, "close early failed");
                        e.user_message()
                    })
            }
            Err(ResolveVmError::Azure { message, .. }) => Err(message),
            Err(_) => Err(VM_GONE.to_string()),
        };
        self.settle_closed(who, &grant, was_extended, outcome, now)
            .await
    }

    /// The member's open and recent grants.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn status(&self, who: &Invocation) -> Result<Vec<Grant>, StoreError> {
        self.store().grants_for_user(who.member.user_id, 10).await
    }

    /// The member's saved source address, if any.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn saved_source(&self, who: &Invocation) -> Result<Option<SourcePrefix>, StoreError> {
        self.store().saved_source(who.member.user_id).await
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

/// The window an extension asks for: what remains plus the grant's own
/// duration, capped by the longest the member's mappings allow for its
/// ports and source, and by the VM's policy.
fn extension_window(
    mappings: &[RoleMapping],
    who: &Invocation,
    grant: &Grant,
    target: &ResolvedVm,
    now: DateTime<Utc>,
) -> Result<AccessDuration, RequestError> {
    let remaining = grant
        .end_time
        .map(|end| (end - now).num_minutes().max(0))
        .unwrap_or(0);
    let wanted = (remaining + i64::from(grant.duration.minutes())).min(i64::from(u32::MAX));
    let max_allowed = authorize::mappings_for(mappings, &who.member.roles, &target.identity)
        .filter(|m| m.ports.covers(&grant.ports) && m.sources.allows(&grant.source))
        .map(|m| m.max_duration)
        .max()
        .ok_or_else(|| {
            RequestError::Denied(Denial::NoMappingForVm {
                vm: target.identity.qualified(),
            })
        })?;
    let policy_max = target
        .vm
        .max_duration_for(&grant.ports.numbers())
        .num_minutes();
    let minutes = wanted
        .min(i64::from(max_allowed.minutes()))
        .min(policy_max)
        .max(0) as u32;
    AccessDuration::from_minutes(minutes).ok_or_else(|| {
        RequestError::Invalid(
            "the grant cannot be extended: the limits leave less than 5 minutes".into(),
        )
    })
}
