//! Checks a request against the VM's Azure JIT policy before asking Azure,
//! so the user gets our clear message instead of Azure's.

use std::fmt;

use chrono::TimeDelta;
use ipnet::IpNet;

use super::duration::{AccessDuration, format_duration};
use super::jit_policy::{AllowedSources, IndexedVm};
use super::port::PortSpec;
use super::source::SourcePrefix;

/// How a request breaks the VM's JIT policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyViolation {
    /// The policy has no rule for this port.
    #[error(
        "port {port} is not in this VM's JIT policy (it allows {})",
        list(policy_ports)
    )]
    PortNotInPolicy {
        /// The port asked for.
        port: u16,
        /// The ports the policy has.
        policy_ports: Vec<u16>,
    },
    /// Longer than the policy's `maxRequestAccessDuration` for a requested port.
    #[error("this VM's JIT policy allows at most {}; ask for {} or less", format_duration(*max), format_duration(*max))]
    DurationOverPolicyMax {
        /// The policy's maximum.
        max: TimeDelta,
    },
    /// The source is not within the policy's allowed prefixes.
    #[error(
        "{} is not allowed by this VM's JIT policy, which accepts only {}",
        source_text(requested),
        list(allowed)
    )]
    SourceNotAllowed {
        /// The source asked for (`None` = any).
        requested: Option<IpNet>,
        /// The prefixes the policy accepts.
        allowed: Vec<IpNet>,
    },
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "nothing".to_owned();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn source_text(source: &Option<IpNet>) -> String {
    match source {
        Some(net) => format!("source {net}"),
        None => "access from any address".to_owned(),
    }
}

/// Checks `ports`, `duration` and `source` against the VM's policy. The
/// first problem found is reported.
///
/// # Errors
/// The [`PolicyViolation`].
pub fn check_request(
    vm: &IndexedVm,
    ports: &PortSpec,
    duration: AccessDuration,
    source: &SourcePrefix,
) -> Result<(), PolicyViolation> {
    let duration = duration.to_chrono();
    let source = match source {
        SourcePrefix::Any => None,
        SourcePrefix::Net(net) => Some(*net),
    };
    for port in ports.numbers() {
        let Some(rule) = vm.port(port) else {
            let mut policy_ports: Vec<u16> = vm.ports.iter().map(|p| p.number).collect();
            policy_ports.sort_unstable();
            policy_ports.dedup();
            return Err(PolicyViolation::PortNotInPolicy { port, policy_ports });
        };
        if duration > rule.max_duration {
            return Err(PolicyViolation::DurationOverPolicyMax {
                max: rule.max_duration,
            });
        }
        if let AllowedSources::Prefixes(allowed) = &rule.allowed_sources {
            let inside = source.is_some_and(|s| allowed.iter().any(|a| a.contains(&s)));
            if !inside {
                return Err(PolicyViolation::SourceNotAllowed {
                    requested: source,
                    allowed: allowed.clone(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::jit_policy::{PolicyId, PolicyPort};

    fn vm() -> IndexedVm {
        let sub = "00000000-0000-0000-0000-00000000000a";
        IndexedVm {
            vm_id: "x".into(),
            subscription: sub.into(),
            resource_group: "rg".into(),
            name: "web".into(),
            location: "westeurope".into(),
            policy: PolicyId::new(sub, "rg", "westeurope", "default")
                .unwrap()
                .into(),
            ports: vec![
                PolicyPort {
                    number: 3389,
                    protocol: "*".into(),
                    max_duration: TimeDelta::hours(1),
                    allowed_sources: AllowedSources::Any,
                },
                PolicyPort {
                    number: 22,
                    protocol: "*".into(),
                    max_duration: TimeDelta::hours(3),
                    allowed_sources: AllowedSources::Prefixes(vec!["10.0.0.0/8".parse().unwrap()]),
                },
            ]
            .into(),
        }
    }

    fn net(s: &str) -> SourcePrefix {
        SourcePrefix::parse(s).unwrap()
    }

    fn ports(numbers: &[u16]) -> PortSpec {
        PortSpec::from_numbers(numbers.iter().copied()).unwrap()
    }

    fn minutes(m: u32) -> AccessDuration {
        AccessDuration::from_minutes(m).unwrap()
    }

    #[test]
    fn a_request_within_the_policy_passes() {
        check_request(&vm(), &ports(&[22]), minutes(180), &net("10.1.2.3/32")).unwrap();
        check_request(&vm(), &ports(&[3389]), minutes(30), &SourcePrefix::Any).unwrap();
    }

    #[test]
    fn unknown_ports_are_named_with_the_policy_ports() {
        let e =
            check_request(&vm(), &ports(&[22, 23]), minutes(60), &net("10.0.0.1/32")).unwrap_err();
        assert_eq!(
            e,
            PolicyViolation::PortNotInPolicy {
                port: 23,
                policy_ports: vec![22, 3389]
            }
        );
        assert_eq!(
            e.to_string(),
            "port 23 is not in this VM's JIT policy (it allows 22, 3389)"
        );
    }

    #[test]
    fn durations_over_the_port_max_are_refused() {
        let e = check_request(&vm(), &ports(&[3389]), minutes(90), &SourcePrefix::Any).unwrap_err();
        assert_eq!(
            e.to_string(),
            "this VM's JIT policy allows at most 1h; ask for 1h or less"
        );
    }

    #[test]
    fn sources_must_sit_inside_an_allowed_prefix() {
        let e = check_request(&vm(), &ports(&[22]), minutes(60), &net("192.0.2.1/32")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "source 192.0.2.1/32 is not allowed by this VM's JIT policy, which accepts only 10.0.0.0/8"
        );
        let e = check_request(&vm(), &ports(&[22]), minutes(60), &SourcePrefix::Any).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("access from any address is not allowed")
        );
        assert!(check_request(&vm(), &ports(&[22]), minutes(60), &net("10.0.0.0/7")).is_err());
    }
}
