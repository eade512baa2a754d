//! `/jit-admin`: mappings, explain, audit, coverage, enable. Authorized on
//! the server from `discord.admin_role_ids`; every change is audited.

use serde_json::json;

use super::jit_port::{Enabled, JitError};
use super::phases::ResolveVmError;
use super::request::RequestError;
use super::{Service, actor};
use crate::domain::authorize::{self, AccessQuery, Decision};
use crate::domain::duration::parse_span_seconds;
use crate::domain::mapping::MappingSpec;
use crate::domain::{
    AccessDuration, AuditAction, AuditEvent, MappingName, Outcome, PortSpec, Reason, RoleId,
    RoleMapping, SourcePrefix, VmIdentity, VmRef,
};
use crate::interactions::{Choice, Invocation};
use crate::store::{AuditFilter, AuditRecord, MappingChange, StoreError};

/// The most audit events `/jit-admin audit` lists.
pub const AUDIT_LIMIT_MAX: u32 = 50;
/// What it lists when no limit is given.
const AUDIT_LIMIT_DEFAULT: u32 = 10;
/// How far back `since:` reaches at most, in seconds (ten years).
const AUDIT_SINCE_MAX_SECS: u64 = 10 * 365 * 86_400;

/// Why an admin action failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
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

impl AdminError {
    /// The audit log's code, and whether it is a failure rather than a refusal.
    pub fn audit_code(&self) -> (&'static str, bool) {
        match self {
            Self::NotAdmin => ("not_admin", false),
            Self::Invalid(_) => ("invalid_input", false),
            Self::Azure(_) => ("azure_failed", true),
            Self::Unexpected(_) => (super::refusals::INTERNAL, true),
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        Self::Unexpected(e.into())
    }
}

impl From<ResolveVmError> for AdminError {
    fn from(e: ResolveVmError) -> Self {
        match e {
            ResolveVmError::Azure { message, .. } => Self::Azure(message),
            ResolveVmError::Unexpected(e) => Self::Unexpected(e),
            lookup => Self::Invalid(lookup.to_string()),
        }
    }
}

impl From<JitError> for AdminError {
    fn from(e: JitError) -> Self {
        match e {
            JitError::Refused { .. } | JitError::NoAnswer { .. } => {
                tracing::warn!(error.message = %e, error.cause_chain = ?e, "Azure failed an admin action");
                Self::Azure(e.user_message())
            }
            lookup => Self::Invalid(lookup.user_message()),
        }
    }
}

impl Service {
    /// Whether any of `roles` is an admin role.
    pub(super) fn is_admin(&self, roles: &[RoleId]) -> bool {
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
        if let Some(existing) = self.mappings().iter().find(|m| m.name == mapping.name) {
            let dropped: Vec<String> = existing
                .roles
                .difference(&mapping.roles)
                .map(|r| format!("<@&{r}>"))
                .collect();
            if !dropped.is_empty() {
                return Err(AdminError::Invalid(format!(
                    "mapping {} also covers {}: list every role it should cover (role and more_roles), or unmap it first",
                    mapping.name,
                    dropped.join(" ")
                )));
            }
        }
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
        let target = self.resolve_vm(&vm_ref).await?;
        let mappings = self.mappings();
        let decision = authorize::authorize(
            &mappings,
            &AccessQuery {
                roles,
                vm: &target.identity,
                ports: &ports,
                duration,
                source: source.as_ref(),
                reason: reason.as_ref(),
            },
        );
        Ok((target.identity, decision))
    }

    /// Puts a VM under JIT with the configured defaults (audited) and
    /// returns what Azure's policy shows for it, read back.
    ///
    /// # Errors
    /// [`AdminError`]; a VM another policy already holds is `Invalid`.
    pub async fn enable(&self, who: &Invocation, vm: &str) -> Result<Enabled, AdminError> {
        self.require_admin(who)?;
        let vm_ref = VmRef::parse(vm).map_err(|e| AdminError::Invalid(e.to_string()))?;
        let enabled = self.jit().enable(&vm_ref).await?;
        let now = self.clock().now();
        self.store()
            .append_audit(
                &AuditEvent::new(
                    now,
                    actor(who.member.user_id),
                    AuditAction::PolicyEnabled,
                    &enabled.vm,
                    Outcome::Success,
                )
                .with_detail(json!({
                    "vm": enabled.vm,
                    "policy": enabled.policy,
                    "ports": enabled.ports,
                })),
            )
            .await?;
        Ok(enabled)
    }

    /// VMs no JIT policy protects.
    ///
    /// # Errors
    /// [`AdminError`].
    pub async fn coverage(&self, who: &Invocation) -> Result<Vec<String>, AdminError> {
        self.require_admin(who)?;
        Ok(self.jit().unprotected_vms().await?)
    }

    /// `/jit-admin report`: queues the last seven days' report for the
    /// audit channel (once per interaction).
    ///
    /// # Errors
    /// [`AdminError::NotAdmin`]; `Invalid` without an audit channel;
    /// `Unexpected` when the store or the drawing fails.
    pub async fn report_now(
        &self,
        who: &Invocation,
    ) -> Result<super::weekly::PostedReport, AdminError> {
        use super::weekly::ReportError;
        self.require_admin(who)?;
        self.post_report_now(&who.id, self.clock().now())
            .await
            .map_err(|e| match e {
                ReportError::NoAuditChannel => AdminError::Invalid(e.to_string()),
                other => AdminError::Unexpected(other.into()),
            })
    }

    /// The latest audit events, oldest first: at most `limit` (1 to
    /// [`AUDIT_LIMIT_MAX`], default 10), no older than `since` (a span such
    /// as `2h` or `7d`) ago, by the Discord user `user` if given.
    ///
    /// # Errors
    /// [`AdminError`]; a `since` that is not a span is `Invalid`.
    pub async fn recent_audit(
        &self,
        who: &Invocation,
        since: Option<&str>,
        user: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<AuditRecord>, AdminError> {
        self.require_admin(who)?;
        let since = match since {
            Some(text) => {
                let secs = parse_span_seconds(text).ok_or_else(|| {
                    AdminError::Invalid(format!(
                        "`{text}` is not a duration: use forms like 2h or 7d"
                    ))
                })?;
                let ago = chrono::Duration::seconds(secs.min(AUDIT_SINCE_MAX_SECS) as i64);
                Some(self.clock().now() - ago)
            }
            None => None,
        };
        let filter = AuditFilter {
            since,
            actor: user.map(|u| format!("discord:{u}")),
            limit: Some(
                limit
                    .unwrap_or(AUDIT_LIMIT_DEFAULT)
                    .clamp(1, AUDIT_LIMIT_MAX),
            ),
            ..AuditFilter::default()
        };
        Ok(self.store().audit_events(&filter).await?)
    }

    /// Admin autocomplete: every indexed VM matching `partial`, and nothing
    /// for a member who is not an admin.
    pub fn complete_admin_vm(&self, roles: &[RoleId], partial: &str) -> Vec<Choice> {
        if self.is_admin(roles) {
            self.complete_vm_any(partial)
        } else {
            Vec::new()
        }
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
