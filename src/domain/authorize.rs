//! The authorization decision: a pure function of the member's roles, the
//! resolved VM, the ports, the duration, the source and the reason, against
//! the role mappings. Deny by default.

use std::fmt;

use serde::Serialize;

use super::duration::AccessDuration;
use super::ids::RoleId;
use super::mapping::{MappingName, RoleMapping, SourcePolicy};
use super::port::{Port, PortSpec};
use super::request::Reason;
use super::source::SourcePrefix;
use super::vm::VmIdentity;

/// What is being asked.
#[derive(Debug, Clone, Copy)]
pub struct AccessQuery<'a> {
    /// The member's role ids, from the interaction.
    pub roles: &'a [RoleId],
    /// The VM, resolved through the index.
    pub vm: &'a VmIdentity,
    /// The ports.
    pub ports: &'a PortSpec,
    /// The window.
    pub duration: AccessDuration,
    /// Where from; `None` skips the source check (`explain` without
    /// `--from`). Requests always carry one.
    pub source: Option<&'a SourcePrefix>,
    /// Why, if given.
    pub reason: Option<&'a Reason>,
}

/// An allowed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// The mapping that allowed it.
    pub mapping: MappingName,
    /// The longest window that mapping allows (for Extend and autocomplete).
    pub max_duration: AccessDuration,
}

/// Why a request is denied; the first check that no mapping passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// None of the member's roles is in any mapping.
    NoMappingForRoles,
    /// Mappings exist for the roles, but none covers the VM.
    NoMappingForVm {
        /// `rg/name` of the VM.
        vm: String,
    },
    /// Some ports are allowed by no mapping that covers the VM.
    PortNotAllowed {
        /// The ports no mapping allows.
        ports: Vec<Port>,
    },
    /// Every port is allowed somewhere, but no single mapping allows all.
    PortsNotTogether,
    /// The window is longer than any fitting mapping allows.
    DurationOverMax {
        /// The longest window a fitting mapping allows.
        max: AccessDuration,
    },
    /// The source is outside every fitting mapping's ranges.
    SourceNotAllowed {
        /// What was asked for.
        source: SourcePrefix,
        /// What the fitting mappings allow, in words, never naming `*` or a
        /// broad network.
        allowed: Vec<String>,
    },
    /// A fitting mapping needs a reason and none was given.
    ReasonRequired,
}

impl Denial {
    /// A short machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoMappingForRoles => "no_mapping_for_roles",
            Self::NoMappingForVm { .. } => "no_mapping_for_vm",
            Self::PortNotAllowed { .. } => "port_not_allowed",
            Self::PortsNotTogether => "ports_not_together",
            Self::DurationOverMax { .. } => "duration_over_max",
            Self::SourceNotAllowed { .. } => "source_not_allowed",
            Self::ReasonRequired => "reason_required",
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoMappingForRoles => {
                f.write_str("none of your roles is mapped to any VM: ask an admin for access")
            }
            Self::NoMappingForVm { vm } => {
                write!(f, "none of your roles is mapped to {vm}")
            }
            Self::PortNotAllowed { ports } => {
                let list = ports.iter().map(ToString::to_string).collect::<Vec<_>>();
                let noun = if ports.len() == 1 { "port" } else { "ports" };
                write!(
                    f,
                    "{noun} {} not allowed for your roles on this VM",
                    list.join(", ")
                )
            }
            Self::PortsNotTogether => f.write_str(
                "no single mapping allows all these ports together: request them separately",
            ),
            Self::DurationOverMax { max } => {
                write!(f, "the duration is over your maximum of {max} for this VM")
            }
            Self::SourceNotAllowed { source, allowed } if allowed.is_empty() => {
                write!(
                    f,
                    "source {source} is not allowed for your roles on this VM"
                )
            }
            Self::SourceNotAllowed { source, allowed } => write!(
                f,
                "source {source} is not allowed for your roles on this VM: give {}",
                allowed.join(", or ")
            ),
            Self::ReasonRequired => {
                f.write_str("a reason is required for this VM: add reason:\"…\"")
            }
        }
    }
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow(Allowed),
    /// Refused, with why.
    Deny(Denial),
}

impl Decision {
    /// Whether it is an allow.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow(_))
    }

    /// The JSON form `drawbridge explain --json` prints.
    pub fn to_json(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct Out<'a> {
            decision: &'a str,
            reason: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            code: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            mapping: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            max_duration: Option<String>,
        }
        let out = match self {
            Self::Allow(a) => Out {
                decision: "allow",
                reason: format!("allowed by mapping {}", a.mapping),
                code: None,
                mapping: Some(a.mapping.to_string()),
                max_duration: Some(a.max_duration.to_iso8601()),
            },
            Self::Deny(d) => Out {
                decision: "deny",
                reason: d.to_string(),
                code: Some(d.code()),
                mapping: None,
                max_duration: None,
            },
        };
        serde_json::to_value(out).unwrap_or_default()
    }
}

/// Decides a request. A mapping allows it when it covers one of the member's
/// roles, the VM, every port, the duration, the source and the reason rule;
/// of several, the one with the longest maximum wins (then the first by
/// name). When none allows it, the denial names the furthest check reached.
pub fn authorize(mappings: &[RoleMapping], query: &AccessQuery<'_>) -> Decision {
    let mut fitting: Vec<&RoleMapping> = mappings
        .iter()
        .filter(|m| m.applies_to(query.roles))
        .collect();
    if fitting.is_empty() {
        return Decision::Deny(Denial::NoMappingForRoles);
    }
    fitting.retain(|m| m.vms.matches(query.vm));
    if fitting.is_empty() {
        return Decision::Deny(Denial::NoMappingForVm {
            vm: query.vm.qualified(),
        });
    }
    let port_ok: Vec<&RoleMapping> = fitting
        .iter()
        .copied()
        .filter(|m| m.ports.covers(query.ports))
        .collect();
    if port_ok.is_empty() {
        let ports: Vec<Port> = query
            .ports
            .ports()
            .filter(|p| {
                let single = PortSpec::from_numbers([p.number()]).expect("non-zero port");
                !fitting.iter().any(|m| m.ports.covers(&single))
            })
            .collect();
        return Decision::Deny(if ports.is_empty() {
            Denial::PortsNotTogether
        } else {
            Denial::PortNotAllowed { ports }
        });
    }
    let duration_ok: Vec<&RoleMapping> = port_ok
        .iter()
        .copied()
        .filter(|m| m.max_duration >= query.duration)
        .collect();
    if duration_ok.is_empty() {
        let max = port_ok
            .iter()
            .map(|m| m.max_duration)
            .max()
            .expect("non-empty");
        return Decision::Deny(Denial::DurationOverMax { max });
    }
    let source_ok: Vec<&RoleMapping> = duration_ok
        .iter()
        .copied()
        .filter(|m| query.source.is_none_or(|s| m.sources().allows(s)))
        .collect();
    if let (true, Some(source)) = (source_ok.is_empty(), query.source) {
        let mut allowed: Vec<String> = duration_ok
            .iter()
            .filter_map(|m| m.sources().hint())
            .collect();
        allowed.sort();
        allowed.dedup();
        return Decision::Deny(Denial::SourceNotAllowed {
            source: *source,
            allowed,
        });
    }
    let best = source_ok
        .iter()
        .copied()
        .filter(|m| !m.require_reason || query.reason.is_some())
        .min_by(|a, b| {
            b.max_duration
                .cmp(&a.max_duration)
                .then(a.name.cmp(&b.name))
        });
    match best {
        None => Decision::Deny(Denial::ReasonRequired),
        Some(m) => Decision::Allow(Allowed {
            mapping: m.name.clone(),
            max_duration: m.max_duration,
        }),
    }
}

/// Whether any mapping applies to `roles` at all: a member for whom none
/// does is refused before any VM is looked up.
pub fn has_any_mapping(mappings: &[RoleMapping], roles: &[RoleId]) -> bool {
    mappings.iter().any(|m| m.applies_to(roles))
}

/// Whether any mapping of `roles` covers `vm` (for autocomplete and listings).
pub fn may_request_vm(mappings: &[RoleMapping], roles: &[RoleId], vm: &VmIdentity) -> bool {
    mappings
        .iter()
        .any(|m| m.applies_to(roles) && m.vms.matches(vm))
}

/// Whether a member may save `source` as the one their requests use by
/// default: a single address, or a network inside one a mapping of theirs
/// writes out; never `*` or a broad network, whatever the mappings allow.
pub fn may_save_source(mappings: &[RoleMapping], roles: &[RoleId], source: &SourcePrefix) -> bool {
    if source.is_broad() {
        return false;
    }
    source.is_single_address()
        || mappings.iter().any(|m| {
            m.applies_to(roles)
                && matches!(m.sources(), SourcePolicy::Within(_))
                && m.sources().allows(source)
        })
}

/// The mappings of `roles` that cover `vm`.
pub fn mappings_for<'a>(
    mappings: &'a [RoleMapping],
    roles: &'a [RoleId],
    vm: &'a VmIdentity,
) -> impl Iterator<Item = &'a RoleMapping> {
    mappings
        .iter()
        .filter(move |m| m.applies_to(roles) && m.vms.matches(vm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::mapping::MappingFile;
    use crate::domain::port::PortAliases;
    use crate::domain::vm::{ResourceGroupName, SubscriptionId, VmName};

    const MAPPINGS: &str = r#"
[[mapping]]
name = "sre-web"
roles = ["100"]
vms = "web-*"
ports = ["ssh"]
max_duration = "4h"
sources = ["203.0.113.0/24"]

[[mapping]]
name = "sre-web-panel"
roles = ["100"]
vms = "web-*"
ports = ["8443"]
max_duration = "1h"

[[mapping]]
name = "db-audited"
roles = ["200"]
vms = "rg:rg-data"
ports = ["ssh"]
max_duration = "2h"
require_reason = true

[[mapping]]
name = "ops-any"
roles = ["300"]
vms = "*"
ports = ["*"]
max_duration = "8h"
sources = ["any"]
allow_broad_sources = true
"#;

    fn vm(rg: &str, name: &str) -> VmIdentity {
        VmIdentity {
            subscription: SubscriptionId::parse("00000000-0000-0000-0000-000000000001").unwrap(),
            resource_group: ResourceGroupName::parse(rg).unwrap(),
            name: VmName::parse(name).unwrap(),
        }
    }

    fn decide(
        roles: &[u64],
        vm: &VmIdentity,
        ports: &str,
        dur: &str,
        src: &str,
        reason: Option<&str>,
    ) -> Decision {
        let aliases = PortAliases::default();
        let mappings = MappingFile::parse(MAPPINGS, &aliases).unwrap();
        let roles: Vec<RoleId> = roles
            .iter()
            .map(|r| RoleId::parse(&r.to_string()).unwrap())
            .collect();
        let ports = PortSpec::parse(ports, &aliases).unwrap();
        let source = SourcePrefix::parse(src).unwrap();
        let reason = reason.map(|r| Reason::parse(r).unwrap());
        authorize(
            &mappings,
            &AccessQuery {
                roles: &roles,
                vm,
                ports: &ports,
                duration: AccessDuration::parse(dur).unwrap(),
                source: Some(&source),
                reason: reason.as_ref(),
            },
        )
    }

    fn allowed_by(name: &str, max: &str) -> Decision {
        Decision::Allow(Allowed {
            mapping: MappingName::parse(name).unwrap(),
            max_duration: AccessDuration::parse(max).unwrap(),
        })
    }

    #[test]
    fn the_decision_table_holds() {
        let web = vm("rg-prod", "web-01");
        let db = vm("rg-data", "db-01");
        let ip = "203.0.113.7";
        let cases: Vec<(&str, Decision)> = vec![
            ("sre ssh web", decide(&[100], &web, "ssh", "2h", ip, None)),
            (
                "sre panel web",
                decide(&[100], &web, "8443", "1h", "198.51.100.1", None),
            ),
            (
                "ops anything from anywhere",
                decide(&[300], &db, "ssh,rdp", "8h", "*", None),
            ),
            (
                "db with reason",
                decide(&[200], &db, "ssh", "2h", ip, Some("incident 42")),
            ),
            (
                "two roles, best mapping",
                decide(&[100, 300], &web, "ssh", "2h", ip, None),
            ),
        ];
        let want = [
            allowed_by("sre-web", "4h"),
            allowed_by("sre-web-panel", "1h"),
            allowed_by("ops-any", "8h"),
            allowed_by("db-audited", "2h"),
            allowed_by("ops-any", "8h"),
        ];
        for ((label, got), want) in cases.into_iter().zip(want) {
            assert_eq!(got, want, "{label}");
        }
    }

    #[test]
    fn every_deny_reason_is_reachable_and_specific() {
        let web = vm("rg-prod", "web-01");
        let db = vm("rg-data", "db-01");
        let ip = "203.0.113.7";
        let cases: Vec<(Decision, Denial, &str)> = vec![
            (
                decide(&[999], &web, "ssh", "1h", ip, None),
                Denial::NoMappingForRoles,
                "none of your roles is mapped to any VM",
            ),
            (
                decide(&[], &web, "ssh", "1h", ip, None),
                Denial::NoMappingForRoles,
                "ask an admin",
            ),
            (
                decide(&[100], &db, "ssh", "1h", ip, None),
                Denial::NoMappingForVm {
                    vm: "rg-data/db-01".into(),
                },
                "none of your roles is mapped to rg-data/db-01",
            ),
            (
                decide(&[100], &web, "rdp", "1h", ip, None),
                Denial::PortNotAllowed {
                    ports: vec![Port::new(3389).unwrap()],
                },
                "port 3389 not allowed",
            ),
            (
                decide(&[100], &web, "ssh,8443", "1h", ip, None),
                Denial::PortsNotTogether,
                "request them separately",
            ),
            (
                decide(&[100], &web, "ssh", "5h", ip, None),
                Denial::DurationOverMax {
                    max: AccessDuration::parse("4h").unwrap(),
                },
                "over your maximum of 4h",
            ),
            (
                decide(&[100], &web, "ssh", "1h", "198.51.100.1", None),
                Denial::SourceNotAllowed {
                    source: SourcePrefix::parse("198.51.100.1").unwrap(),
                    allowed: vec!["a source within 203.0.113.0/24".into()],
                },
                "not allowed for your roles on this VM: give a source within 203.0.113.0/24",
            ),
            (
                decide(&[100], &web, "8443", "1h", "*", None),
                Denial::SourceNotAllowed {
                    source: SourcePrefix::Any,
                    allowed: vec!["a single address such as 203.0.113.7".into()],
                },
                "source * is not allowed for your roles on this VM: give a single address",
            ),
            (
                decide(&[100], &web, "8443", "1h", "0.0.0.0/0", None),
                Denial::SourceNotAllowed {
                    source: SourcePrefix::parse("0.0.0.0/0").unwrap(),
                    allowed: vec!["a single address such as 203.0.113.7".into()],
                },
                "source 0.0.0.0/0 is not allowed",
            ),
            (
                decide(&[100], &web, "8443", "1h", "198.51.100.0/24", None),
                Denial::SourceNotAllowed {
                    source: SourcePrefix::parse("198.51.100.0/24").unwrap(),
                    allowed: vec!["a single address such as 203.0.113.7".into()],
                },
                "give a single address",
            ),
            (
                decide(&[200], &db, "ssh", "1h", ip, None),
                Denial::ReasonRequired,
                "a reason is required",
            ),
        ];
        for (got, want, text) in cases {
            assert_eq!(got, Decision::Deny(want.clone()));
            assert!(
                want.to_string().contains(text),
                "{want} should contain {text}"
            );
        }
    }

    #[test]
    fn only_single_addresses_and_written_out_networks_may_be_saved() {
        let mappings = MappingFile::parse(MAPPINGS, &PortAliases::default()).unwrap();
        let may = |roles: &[u64], src: &str| {
            let roles: Vec<RoleId> = roles
                .iter()
                .map(|r| RoleId::parse(&r.to_string()).unwrap())
                .collect();
            may_save_source(&mappings, &roles, &SourcePrefix::parse(src).unwrap())
        };
        assert!(may(&[], "198.51.100.1"));
        assert!(may(&[100], "203.0.113.0/25"));
        assert!(!may(&[200], "203.0.113.0/25"));
        // ops-any allows `*` on requests, yet nothing broad is ever saved.
        for broad in ["*", "0.0.0.0/0", "::/0", "10.0.0.0/8"] {
            assert!(!may(&[100, 300], broad), "{broad}");
        }
    }

    #[test]
    fn explain_json_has_the_documented_keys() {
        let web = vm("rg-prod", "web-01");
        let allow = decide(&[100], &web, "ssh", "2h", "203.0.113.7", None).to_json();
        assert_eq!(allow["decision"], "allow");
        assert_eq!(allow["mapping"], "sre-web");
        assert_eq!(allow["max_duration"], "PT4H");
        assert!(allow["reason"].as_str().unwrap().contains("sre-web"));
        let deny = decide(&[1], &web, "ssh", "2h", "203.0.113.7", None).to_json();
        assert_eq!(deny["decision"], "deny");
        assert_eq!(deny["code"], "no_mapping_for_roles");
        assert!(deny.get("mapping").is_none());
    }
}
