//! Azure JIT as the use cases see it: the VMs under a JIT policy with their
//! port rules (what the VM index holds), the rules `/jit-admin enable`
//! writes, and what Azure shows of the requests made on a policy.
//!
//! These are plain values. The ARM adapter builds them from Azure's answers
//! and the use cases decide on them; neither side sees the other's types.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use ipnet::IpNet;

use super::duration::AccessDuration;
use super::ids::RequestId;
use super::source::SourcePrefix;
use super::vm::{ResourceGroupName, SubscriptionId, VmIdentity, VmName};

/// Azure's limit on a JIT policy's name and the name of a VM it covers,
/// together, in characters: "The policy name, together with the targeted
/// VM name, must not exceed a total of 56 characters" (Microsoft's JIT
/// usage docs).
pub const JIT_NAMES_LIMIT: usize = 56;

/// Whether policy `policy` may cover the VM named `vm` under
/// [`JIT_NAMES_LIMIT`].
#[must_use]
pub fn names_fit(policy: &str, vm: &str) -> bool {
    policy.chars().count() + vm.chars().count() <= JIT_NAMES_LIMIT
}

/// Why a string is not a JIT policy resource id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid JIT policy resource id: {0:?}")]
pub struct InvalidPolicyId(pub String);

/// `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Security/locations/{loc}/jitNetworkAccessPolicies/{name}`
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyId {
    /// Subscription id (a GUID).
    pub subscription: String,
    /// Resource group holding the policy (may differ from its VMs').
    pub resource_group: String,
    /// The `ascLocation` of the policy.
    pub location: String,
    /// Policy name (the portal uses `default`).
    pub name: String,
}

const POLICY_SHAPE: [&str; 10] = [
    "subscriptions",
    "{}",
    "resourceGroups",
    "{}",
    "providers",
    "Microsoft.Security",
    "locations",
    "{}",
    "jitNetworkAccessPolicies",
    "{}",
];

impl PolicyId {
    /// Builds a policy id from its parts, checking each.
    ///
    /// # Errors
    /// [`InvalidPolicyId`] when a part is malformed.
    pub fn new(
        subscription: &str,
        resource_group: &str,
        location: &str,
        name: &str,
    ) -> Result<Self, InvalidPolicyId> {
        Self::parse(&format!(
            "/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.Security/locations/{location}/jitNetworkAccessPolicies/{name}"
        ))
    }

    /// Parses a JIT policy resource id as Azure returns it.
    ///
    /// # Errors
    /// [`InvalidPolicyId`] when `id` is not a well-formed JIT policy id.
    pub fn parse(id: &str) -> Result<Self, InvalidPolicyId> {
        let err = || InvalidPolicyId(id.to_owned());
        let v = match_shape(id, &POLICY_SHAPE).ok_or_else(err)?;
        let (sub, rg, loc, name) = (v[0], v[1], v[2], v[3]);
        if SubscriptionId::parse(sub).is_err()
            || ResourceGroupName::parse(rg).is_err()
            || !is_location(loc)
            || !is_resource_name(name)
        {
            return Err(err());
        }
        Ok(Self {
            subscription: sub.to_owned(),
            resource_group: rg.to_owned(),
            location: loc.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The resource id's path segments, one by one (the variable ones are
    /// checked, so none can contain a `/`).
    pub fn segments(&self) -> [&str; 10] {
        let mut out = POLICY_SHAPE;
        out[1] = &self.subscription;
        out[3] = &self.resource_group;
        out[7] = &self.location;
        out[9] = &self.name;
        out
    }
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("/")?;
        f.write_str(&self.segments().join("/"))
    }
}

/// Splits `id` into segments, matching the literal ones case-insensitively and
/// returning the variable ones (written `{}` in `shape`).
pub(crate) fn match_shape<'a>(id: &'a str, shape: &[&str]) -> Option<Vec<&'a str>> {
    let rest = id.strip_prefix('/')?;
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.len() != shape.len() {
        return None;
    }
    let mut vars = Vec::new();
    for (seg, want) in segs.into_iter().zip(shape) {
        if *want == "{}" {
            vars.push(seg);
        } else if !seg.eq_ignore_ascii_case(want) {
            return None;
        }
    }
    Some(vars)
}

/// Location: a short lowercase-ish region name such as `westeurope`.
fn is_location(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A resource name: 1-80 of ASCII letters, digits and `. _ -`, not `.` or `..`.
/// A superset of every revision of the VM naming rules.
pub(crate) fn is_resource_name(s: &str) -> bool {
    (1..=80).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Which sources a policy port accepts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AllowedSources {
    /// `*`: any source.
    Any,
    /// Only sources inside one of these prefixes.
    Prefixes(Vec<IpNet>),
}

/// One port rule of a VM's JIT policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyPort {
    pub number: u16,
    /// `TCP`, `UDP` or `*`.
    pub protocol: String,
    /// `maxRequestAccessDuration`.
    pub max_duration: TimeDelta,
    /// `allowedSourceAddressPrefix(es)`.
    pub allowed_sources: AllowedSources,
}

/// A VM with a JIT policy, as the VM index holds it.
///
/// What many VMs share is shared, not copied: the subscription, resource
/// group and location are interned strings, the policy and the port rules
/// (identical for most VMs of a policy) are one allocation each. A VM costs
/// its id, its name and this struct. A new field goes here and into
/// `azure::index`'s builder, which decides what to share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedVm {
    /// VM resource id, as Azure spells it.
    pub vm_id: String,
    pub subscription: Arc<str>,
    pub resource_group: Arc<str>,
    pub name: String,
    /// Region (the policy's location).
    pub location: Arc<str>,
    /// The policy that covers the VM; its resource group may differ from the VM's.
    pub policy: Arc<PolicyId>,
    pub ports: Arc<[PolicyPort]>,
}

/// A short, stable handle on an indexed VM: `#` and 16 hex digits of the
/// SHA-256 of its lowercase resource id.
///
/// Why: autocomplete values are limited to 100 characters, and `rg/name`
/// reaches 155 (a 90-character resource group and a 64-character name), so
/// a choice's value cannot be the VM's name. A key is always short, never
/// ambiguous across subscriptions, and the same after every index refresh
/// (it depends on the resource id only). `#` cannot start a VM reference, so
/// a key is never mistaken for a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VmKey(String);

impl VmKey {
    const HEX_DIGITS: usize = 16;

    /// The key of the VM with resource id `vm_id` (case-insensitive, as Azure ids are).
    pub fn of(vm_id: &str) -> Self {
        use sha2::{Digest as _, Sha256};
        let digest = hex::encode(Sha256::digest(vm_id.to_ascii_lowercase().as_bytes()));
        Self(format!("#{}", &digest[..Self::HEX_DIGITS]))
    }

    /// `text` as a key, when it has a key's shape (`#` and 16 hex digits).
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.trim().strip_prefix('#')?;
        (hex.len() == Self::HEX_DIGITS && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(format!("#{}", hex.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key's 64 bits (its 16 hex digits), for compact tables.
    pub fn bits(&self) -> u64 {
        u64::from_str_radix(&self.0[1..], 16).unwrap_or_default()
    }
}

impl fmt::Display for VmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl IndexedVm {
    /// The VM's [`VmKey`].
    pub fn key(&self) -> VmKey {
        VmKey::of(&self.vm_id)
    }

    /// `rg/name`.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.resource_group, self.name)
    }

    /// `subscription/rg/name`.
    pub fn fully_qualified_name(&self) -> String {
        format!(
            "{}/{}/{}",
            self.subscription, self.resource_group, self.name
        )
    }

    /// The rule for `port`, if the policy has one.
    pub fn port(&self, port: u16) -> Option<&PolicyPort> {
        self.ports.iter().find(|p| p.number == port)
    }

    /// The longest window the policy allows for all of `ports` that it has
    /// a rule for (zero when it has none of them).
    pub fn max_duration_for(&self, ports: &[u16]) -> TimeDelta {
        ports
            .iter()
            .filter_map(|n| self.port(*n).map(|r| r.max_duration))
            .min()
            .unwrap_or(TimeDelta::zero())
    }

    /// The VM's validated names (`None` if Azure's names fall outside our
    /// validation, which then cannot serve it).
    pub fn identity(&self) -> Option<VmIdentity> {
        Some(VmIdentity {
            subscription: SubscriptionId::parse(&self.subscription).ok()?,
            resource_group: ResourceGroupName::parse(&self.resource_group).ok()?,
            name: VmName::parse(&self.name).ok()?,
        })
    }
}

/// The port rules `/jit-admin enable` writes into a VM's JIT policy
/// (`[azure.enable]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDefaults {
    /// Ports put under JIT.
    pub ports: Vec<u16>,
    /// Their `maxRequestAccessDuration`.
    pub max_duration: AccessDuration,
    /// Their allowed source (`*` or an address/CIDR).
    pub source: SourcePrefix,
}

impl Default for PolicyDefaults {
    /// SSH, RDP and WinRM for up to 3 hours from any source, as the portal.
    fn default() -> Self {
        Self {
            ports: vec![22, 3389, 5985, 5986],
            max_duration: AccessDuration::from_minutes(180).unwrap_or_else(AccessDuration::max),
            source: SourcePrefix::Any,
        }
    }
}

/// One JIT request as Azure's policy shows it (Azure keeps a history of
/// them per policy; it gives them no id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JitRequestRecord {
    /// The policy's resource id, as Azure spells it.
    pub policy_id: String,
    /// `startTimeUtc`.
    pub start: Option<DateTime<Utc>>,
    /// Who asked (Azure's `requestor`).
    pub requestor: Option<String>,
    /// The justification given.
    pub justification: Option<String>,
    /// The VMs of the request with their ports.
    pub vms: Vec<RequestedVm>,
}

/// What precedes a Drawbridge request id in the justification it sends.
pub const JUSTIFICATION_MARKER: &str = "Drawbridge request ";

impl JitRequestRecord {
    /// The Drawbridge request id the justification names, if any. Anyone
    /// can type it (request ids are public), so it only finds a grant; it
    /// never proves a request is Drawbridge's.
    pub fn drawbridge_id(&self) -> Option<RequestId> {
        let text = self.justification.as_deref()?;
        let marker = JUSTIFICATION_MARKER;
        let rest = &text[text.find(marker)? + marker.len()..];
        let id: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        RequestId::parse(&id).ok()
    }
}

/// One VM of a [`JitRequestRecord`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedVm {
    /// VM resource id, as Azure spells it.
    pub vm_id: String,
    /// `rg/name` when the id reads as a VM id, otherwise the id itself.
    pub display_name: String,
    /// Its ports.
    pub ports: Vec<RequestedPort>,
}

/// One port of a [`RequestedVm`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedPort {
    /// The port.
    pub number: u16,
    /// Azure's status (`Initiated`, `Revoked`, ...).
    pub status: String,
    /// Azure's reason for the status (`UserRequested`, `NewerRequestInitiated`, ...).
    pub status_reason: Option<String>,
    /// When Azure closes (or closed) the port.
    pub end: DateTime<Utc>,
    /// The allowed source prefixes, as Azure spells them.
    pub sources: Vec<String>,
}

impl RequestedPort {
    /// Open at `now`: `Initiated` (or `Initiating`, a fresh request) and
    /// not past its end.
    pub fn is_open_at(&self, now: DateTime<Utc>) -> bool {
        (self.status.eq_ignore_ascii_case("Initiated")
            || self.status.eq_ignore_ascii_case("Initiating"))
            && self.end > now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

    #[test]
    fn vm_keys_are_short_case_insensitive_and_never_names() {
        let id = format!(
            "/subscriptions/{SUB}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
            "r".repeat(90),
            "v".repeat(64)
        );
        let key = VmKey::of(&id);
        assert_eq!(key.as_str().len(), 17);
        assert_eq!(key, VmKey::of(&id.to_uppercase()));
        assert_ne!(key, VmKey::of(&id.replace("vvv", "vvw")));
        assert_eq!(
            VmKey::parse(&key.as_str().to_uppercase()),
            Some(key.clone())
        );
        assert_eq!(VmKey::parse(key.as_str()), Some(key));
        for not_a_key in ["web-01", "rg/web-01", "#12", "#0123456789abcdeg", ""] {
            assert_eq!(VmKey::parse(not_a_key), None, "{not_a_key}");
        }
        assert!(crate::domain::VmRef::parse("#0123456789abcdef").is_err());
    }

    #[test]
    fn policy_ids_parse_case_insensitively_and_round_trip() {
        let id = format!(
            "/subscriptions/{SUB}/resourcegroups/myRg1/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default"
        );
        let p = PolicyId::parse(&id).unwrap();
        assert_eq!(
            (
                p.resource_group.as_str(),
                p.location.as_str(),
                p.name.as_str()
            ),
            ("myRg1", "westeurope", "default")
        );
        assert_eq!(PolicyId::parse(&p.to_string()).unwrap(), p);
        assert!(PolicyId::new(SUB, "rg", "west europe", "default").is_err());
        assert!(PolicyId::new(SUB, "rg.", "westeurope", "default").is_err());
        assert!(PolicyId::new(SUB, "rg", "westeurope", "..").is_err());
        assert!(PolicyId::new("not-a-guid", "rg", "westeurope", "default").is_err());
    }

    #[test]
    fn the_policy_maximum_is_that_of_the_strictest_port() {
        let port = |number, hours| PolicyPort {
            number,
            protocol: "*".into(),
            max_duration: TimeDelta::hours(hours),
            allowed_sources: AllowedSources::Any,
        };
        let vm = IndexedVm {
            vm_id: "x".into(),
            subscription: SUB.into(),
            resource_group: "rg".into(),
            name: "web".into(),
            location: "westeurope".into(),
            policy: PolicyId::new(SUB, "rg", "westeurope", "default")
                .unwrap()
                .into(),
            ports: vec![port(22, 3), port(3389, 1)].into(),
        };
        assert_eq!(vm.max_duration_for(&[22]), TimeDelta::hours(3));
        assert_eq!(vm.max_duration_for(&[22, 3389]), TimeDelta::hours(1));
        assert_eq!(vm.max_duration_for(&[22, 443]), TimeDelta::hours(3));
        assert_eq!(vm.max_duration_for(&[443]), TimeDelta::zero());
        assert_eq!(vm.identity().unwrap().qualified(), "rg/web");
    }
}
