//! Phase 2: whether a member may have a window, decided before anything is
//! written or asked of Azure. First the role mappings
//! ([`crate::domain::authorize`]), then the VM's Azure JIT policy
//! ([`crate::domain::check_request`]): Azure would refuse the rest, and our
//! message is better than Azure's. Pure.

use super::resolve::ResolvedVm;
use crate::domain::authorize::{self, AccessQuery, Allowed, Decision, Denial};
use crate::domain::{
    AccessDuration, PolicyViolation, PortSpec, Reason, RoleId, RoleMapping, SourcePrefix,
    check_request,
};

/// What a member asks of a resolved VM.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The member's roles.
    pub roles: &'a [RoleId],
    /// The ports.
    pub ports: &'a PortSpec,
    /// The window.
    pub duration: AccessDuration,
    /// Where from.
    pub source: &'a SourcePrefix,
    /// Why, if given.
    pub reason: Option<&'a Reason>,
}

/// Why a window was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The member's mappings do not allow it.
    #[error("{0}")]
    Denied(Denial),
    /// The VM's Azure JIT policy does not allow it.
    #[error("{0}")]
    Policy(PolicyViolation),
}

impl Refusal {
    /// The audit log's code for it.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Denied(denial) => denial.code(),
            Self::Policy(_) => "policy",
        }
    }
}

/// Decides `ask` on `target`: the mapping that allows it, or why not.
///
/// # Errors
/// The first [`Refusal`]: the mappings are asked before the policy.
pub fn decide(
    mappings: &[RoleMapping],
    target: &ResolvedVm,
    ask: &Ask<'_>,
) -> Result<Allowed, Refusal> {
    let query = AccessQuery {
        roles: ask.roles,
        vm: &target.identity,
        ports: ask.ports,
        duration: ask.duration,
        source: Some(ask.source),
        reason: ask.reason,
    };
    let allowed = match authorize::authorize(mappings, &query) {
        Decision::Allow(allowed) => allowed,
        Decision::Deny(denial) => return Err(Refusal::Denied(denial)),
    };
    check_request(&target.vm, ask.ports, ask.duration, ask.source).map_err(Refusal::Policy)?;
    Ok(allowed)
}
