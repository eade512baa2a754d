//! Phase 2: whether a member may have a window, decided before anything is
//! written or asked of Azure. First the role mappings
//! ([`crate::domain::authorize`](mod@crate::domain::authorize)), then the VM's Azure JIT policy
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
    pub roles: &'a [RoleId],
    pub ports: &'a PortSpec,
    pub duration: AccessDuration,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeDelta;

    use super::*;
    use crate::domain::mapping::MappingFile;
    use crate::domain::{AllowedSources, IndexedVm, PolicyId, PolicyPort, PortAliases};

    const SUB: &str = "00000000-0000-0000-0000-00000000000a";

    fn target(max_hours: i64, sources: AllowedSources) -> ResolvedVm {
        let vm = IndexedVm {
            vm_id: "x".into(),
            subscription: SUB.into(),
            resource_group: "rg".into(),
            name: "web-01".into(),
            location: "westeurope".into(),
            policy: PolicyId::new(SUB, "rg", "westeurope", "default")
                .unwrap()
                .into(),
            ports: vec![PolicyPort {
                number: 22,
                protocol: "*".into(),
                max_duration: TimeDelta::hours(max_hours),
                allowed_sources: sources,
            }]
            .into(),
        };
        let identity = vm.identity().unwrap();
        ResolvedVm {
            vm: Arc::new(vm),
            identity,
        }
    }

    fn mappings() -> Vec<RoleMapping> {
        MappingFile::parse(
            r#"
[[mapping]]
name = "sre-web"
roles = ["100"]
vms = "web-*"
ports = ["ssh"]
max_duration = "3h"
"#,
            &PortAliases::default(),
        )
        .unwrap()
    }

    fn decide_for(role: u64, minutes: u32, target: &ResolvedVm) -> Result<Allowed, Refusal> {
        let roles = [RoleId::parse(&role.to_string()).unwrap()];
        let ports = PortSpec::from_numbers([22]).unwrap();
        let source = SourcePrefix::parse("203.0.113.7").unwrap();
        let ask = Ask {
            roles: &roles,
            ports: &ports,
            duration: AccessDuration::from_minutes(minutes).unwrap(),
            source: &source,
            reason: None,
        };
        decide(&mappings(), target, &ask)
    }

    #[test]
    fn a_request_both_allow_names_its_mapping() {
        let allowed = decide_for(100, 60, &target(3, AllowedSources::Any)).unwrap();
        assert_eq!(allowed.mapping.as_str(), "sre-web");
    }

    #[test]
    fn the_mappings_are_asked_before_the_policy() {
        // The policy would refuse too (1h max), but a member without a
        // mapping learns only that.
        let refusal = decide_for(200, 120, &target(1, AllowedSources::Any)).unwrap_err();
        assert_eq!(refusal, Refusal::Denied(Denial::NoMappingForRoles));
        assert_eq!(refusal.code(), "no_mapping_for_roles");
    }

    #[test]
    fn the_policy_refuses_what_the_mappings_allow_beyond_it() {
        let refusal = decide_for(100, 120, &target(1, AllowedSources::Any)).unwrap_err();
        assert!(matches!(
            refusal,
            Refusal::Policy(PolicyViolation::DurationOverPolicyMax { .. })
        ));
        assert_eq!(refusal.code(), "policy");
        let narrow = AllowedSources::Prefixes(vec!["10.0.0.0/8".parse().unwrap()]);
        let refusal = decide_for(100, 60, &target(3, narrow)).unwrap_err();
        assert!(matches!(
            refusal,
            Refusal::Policy(PolicyViolation::SourceNotAllowed { .. })
        ));
    }
}
