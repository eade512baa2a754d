//! `/jit-admin`: mappings, explain, audit, coverage, enable. Authorized on
//! the server from `discord.admin_role_ids`; every change is audited.

use serde_json::json;

use super::request::RequestError;
use super::{LookupError, Service, actor, identity_of};
use crate::domain::authorize::{self, AccessQuery, Decision};
use crate::domain::mapping::MappingSpec;
use crate::domain::{
    AccessDuration, AuditAction, AuditEvent, MappingName, Outcome, PortSpec, Reason, RoleId,
    RoleMapping, SourcePrefix, VmIdentity, VmRef,
};
use crate::interactions::Invocation;
use crate::store::{MappingChange, StoreError};

/// Why an admin action failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Not an admin.
    #[error("you need one of the admin roles to use /jit-admin")]
    NotAdmin,
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// Azure refused or failed.
    #[error("{0}")]
    Azure(String),
    /// Internal; logged, never shown.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        Self::Unexpected(e.into())
    }
}

impl Service {
    /// Whether any of `roles` is an admin role.
    pub fn is_admin(&self, roles: &[RoleId]) -> bool {
        roles.iter().any(|r| self.config().admin_roles.contains(r))
    }

    fn require_admin(&self, who: &Invocation) -> Result<(), AdminError> {
        if self.is_admin(&who.member.roles) {
            Ok(())
        } else {
            tracing::warn!(user = %who.member.user_id, "non-admin used /jit-admin");
            Err(AdminError::NotAdmin)
        }
    }

    /// Adds or replaces a mapping (audited) and reloads the set.
    ///
    /// # Errors
    /// [`AdminError`].
    pub async fn map(
        &self,
        who: &Invocation,
        spec: MappingSpec,
    ) -> Result<(RoleMapping, MappingChange), AdminError> {
        self.require_admin(who)?;
        let mapping = spec
            .validate(&self.config().aliases)
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
        let change = self
            .store()
            .add_mapping(&mapping, &actor(who.member.user_id), self.clock().now())
            .await?;
        self.reload_mappings().await?;
        Ok((mapping, change))
    }

    /// Removes a mapping (audited) and reloads the set.
    ///
    /// # Errors
    /// [`AdminError`]; an unknown name is `Invalid`.
    pub async fn unmap(&self, who: &Invocation, name: &str) -> Result<MappingSpec, AdminError> {
        self.require_admin(who)?;
        let name = MappingName::parse(name).map_err(|e| AdminError::Invalid(e.to_string()))?;
        let removed = self
            .store()
            .remove_mapping(&name, &actor(who.member.user_id), self.clock().now())
            .await?
            .ok_or_else(|| AdminError::Invalid(format!("there is no mapping named {name}")))?;
        self.reload_mappings().await?;
        Ok(removed)
    }

    /// The mappings, for an admin.
    ///
    /// # Errors
    /// [`AdminError::NotAdmin`].
    pub fn list_mappings_for(
        &self,
        who: &Invocation,
    ) -> Result<std::sync::Arc<Vec<RoleMapping>>, AdminError> {
        self.require_admin(who)?;
        Ok(self.mappings())
    }

    /// Explains the decision for `roles` (resolving the VM through the index).
    ///
    /// # Errors
    /// [`AdminError`]; lookups and bad input are `Invalid`.
    #[allow(clippy::too_many_arguments)]
    pub async fn explain(
        &self,
        who: &Invocation,
        roles: &[RoleId],
        vm: &str,
        ports: &str,
        duration: &str,
        from: Option<&str>,
        reason: Option<&str>,
    ) -> Result<(VmIdentity, Decision), AdminError> {
        self.require_admin(who)?;
        let invalid = |e: &dyn std::fmt::Display| AdminError::Invalid(e.to_string());
        let vm_ref = VmRef::parse(vm).map_err(|e| invalid(&e))?;
        let ports = PortSpec::parse(ports, &self.config().aliases).map_err(|e| invalid(&e))?;
        let duration = AccessDuration::parse(duration).map_err(|e| invalid(&e))?;
        let source = from
            .map(SourcePrefix::parse)
            .transpose()
            .map_err(|e| invalid(&e))?;
        let reason = reason
            .map(Reason::parse)
            .transpose()
            .map_err(|e| invalid(&e))?;
        let indexed = self.jit().resolve(&vm_ref).await.map_err(|e| match e {
            LookupError::Azure(e) => AdminError::Azure(e.user_message()),
            LookupError::NotFound { name, .. } => {
                AdminError::Invalid(format!("no VM named {name} is under JIT"))
            }
            LookupError::Ambiguous { candidates } => AdminError::Invalid(format!(
                "several VMs are named like that: {}",
                candidates.join(", ")
            )),
        })?;
        let identity = identity_of(&indexed)
            .ok_or_else(|| AdminError::Unexpected(anyhow::anyhow!("indexed VM names invalid")))?;
        let mappings = self.mappings();
        let decision = authorize::authorize(
            &mappings,
            &AccessQuery {
                roles,
                vm: &identity,
                ports: &ports,
                duration,
                source: source.as_ref(),
                reason: reason.as_ref(),
            },
        );
        Ok((identity, decision))
    }

    /// Puts a VM under JIT with the configured defaults (audited).
    ///
    /// # Errors
    /// [`AdminError`].
    pub async fn enable(&self, who: &Invocation, vm: &str) -> Result<String, AdminError> {
        self.require_admin(who)?;
        let vm_ref = VmRef::parse(vm).map_err(|e| AdminError::Invalid(e.to_string()))?;
        let qualified = self.jit().enable(&vm_ref).await.map_err(|e| match e {
            super::EnableError::NotFound(name) => AdminError::Invalid(format!(
                "no VM named {name} in the configured subscriptions"
            )),
            super::EnableError::Ambiguous(c) => {
                AdminError::Invalid(format!("several VMs are named like that: {}", c.join(", ")))
            }
            super::EnableError::Azure(e) => {
                tracing::warn!(error.message = %e, "enable failed");
                AdminError::Azure(e.user_message())
            }
        })?;
        let now = self.clock().now();
        self.store()
            .append_audit(
                &AuditEvent::new(
                    now,
                    actor(who.member.user_id),
                    AuditAction::PolicyEnabled,
                    &qualified,
                    Outcome::Success,
                )
                .with_detail(json!({"vm": qualified})),
            )
            .await?;
        Ok(qualified)
    }

    /// VMs no JIT policy protects.
    ///
    /// # Errors
    /// [`AdminError`].
    pub async fn coverage(&self, who: &Invocation) -> Result<Vec<String>, AdminError> {
        self.require_admin(who)?;
        self.jit()
            .unprotected_vms()
            .await
            .map_err(|e| AdminError::Azure(e.user_message()))
    }
}

impl From<RequestError> for AdminError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Unexpected(e) => Self::Unexpected(e),
            other => Self::Invalid(other.to_string()),
        }
    }
}
