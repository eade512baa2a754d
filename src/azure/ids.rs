//! ARM resource ids: parsed, checked, and turned back into URL path segments.
//!
//! Request URLs are built only from ids that pass these checks, one
//! percent-encoded path segment at a time, so nothing in an id can change the
//! host, the path structure or the query.

use std::fmt;

/// Why a string is not the ARM id we expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid {kind} resource id: {id:?}")]
pub struct IdError {
    /// What we expected ("subscription", "VM", "JIT policy").
    pub kind: &'static str,
    /// The rejected text.
    pub id: String,
}

/// `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}`
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VmId {
    /// Subscription id (a GUID).
    pub subscription: String,
    /// Resource group of the VM.
    pub resource_group: String,
    /// VM name.
    pub name: String,
}

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

/// Checks a subscription id: a GUID, as the API's path parameter requires.
///
/// # Errors
/// [`IdError`] when `s` is not a GUID.
pub fn check_subscription(s: &str) -> Result<(), IdError> {
    crate::domain::SubscriptionId::parse(s)
        .map(|_| ())
        .map_err(|_| IdError {
            kind: "subscription",
            id: s.to_owned(),
        })
}

/// Resource group: 1-90 of letters/digits (Unicode), `_ - . ( )`, no trailing period.
fn is_resource_group(s: &str) -> bool {
    (1..=90).contains(&s.chars().count())
        && !s.ends_with('.')
        && s.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '(' | ')'))
}

/// Location: a short lowercase-ish region name such as `westeurope`.
fn is_location(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A resource name: 1-80 of ASCII letters, digits and `. _ -`, not `.` or `..`.
/// A superset of every revision of the VM naming rules (notes §4).
fn is_name(s: &str) -> bool {
    (1..=80).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Splits `id` into segments, matching the literal ones case-insensitively and
/// returning the variable ones (written `{}` in `shape`).
fn match_shape<'a>(id: &'a str, shape: &[&str]) -> Option<Vec<&'a str>> {
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

impl VmId {
    /// Parses a VM resource id as Azure returns it.
    ///
    /// # Errors
    /// [`IdError`] when `id` is not a well-formed VM id.
    pub fn parse(id: &str) -> Result<Self, IdError> {
        const SHAPE: [&str; 8] = [
            "subscriptions",
            "{}",
            "resourceGroups",
            "{}",
            "providers",
            "Microsoft.Compute",
            "virtualMachines",
            "{}",
        ];
        let err = || IdError {
            kind: "VM",
            id: id.to_owned(),
        };
        let v = match_shape(id, &SHAPE).ok_or_else(err)?;
        let (sub, rg, name) = (v[0], v[1], v[2]);
        if check_subscription(sub).is_err() || !is_resource_group(rg) || !is_name(name) {
            return Err(err());
        }
        Ok(Self {
            subscription: sub.to_owned(),
            resource_group: rg.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
            self.subscription, self.resource_group, self.name
        )
    }
}

impl PolicyId {
    /// Builds a policy id from its parts, checking each.
    ///
    /// # Errors
    /// [`IdError`] when a part is malformed.
    pub fn new(
        subscription: &str,
        resource_group: &str,
        location: &str,
        name: &str,
    ) -> Result<Self, IdError> {
        Self::parse(&format!(
            "/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.Security/locations/{location}/jitNetworkAccessPolicies/{name}"
        ))
    }

    /// Parses a JIT policy resource id as Azure returns it.
    ///
    /// # Errors
    /// [`IdError`] when `id` is not a well-formed JIT policy id.
    pub fn parse(id: &str) -> Result<Self, IdError> {
        const SHAPE: [&str; 10] = [
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
        let err = || IdError {
            kind: "JIT policy",
            id: id.to_owned(),
        };
        let v = match_shape(id, &SHAPE).ok_or_else(err)?;
        let (sub, rg, loc, name) = (v[0], v[1], v[2], v[3]);
        if check_subscription(sub).is_err()
            || !is_resource_group(rg)
            || !is_location(loc)
            || !is_name(name)
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

    /// The URL path segments of this policy, to be pushed one by one.
    pub(crate) fn segments(&self) -> [&str; 10] {
        [
            "subscriptions",
            &self.subscription,
            "resourceGroups",
            &self.resource_group,
            "providers",
            "Microsoft.Security",
            "locations",
            &self.location,
            "jitNetworkAccessPolicies",
            &self.name,
        ]
    }
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("/")?;
        f.write_str(&self.segments().join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

    #[test]
    fn parses_azure_ids_case_insensitively_and_round_trips() {
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

        let vm = VmId::parse(&format!("/subscriptions/{SUB}/resourceGroups/rg(1).x/providers/microsoft.compute/virtualMachines/vm-1.a")).unwrap();
        assert_eq!(vm.name, "vm-1.a");
        assert_eq!(VmId::parse(&vm.to_string()).unwrap(), vm);
    }

    #[test]
    fn rejects_ids_that_could_escape_the_path() {
        for bad in [
            format!(
                "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/.."
            ),
            format!(
                "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/a?b"
            ),
            format!(
                "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/a%2F"
            ),
            format!(
                "/subscriptions/{SUB}/resourceGroups/r g/providers/Microsoft.Compute/virtualMachines/a"
            ),
            format!(
                "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/a/extra"
            ),
            "/subscriptions/not-a-guid/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/a".to_owned(),
            format!(
                "subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/a"
            ),
            format!(
                "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/virtualMachines/a"
            ),
        ] {
            assert!(VmId::parse(&bad).is_err(), "{bad}");
        }
        assert!(PolicyId::new(SUB, "rg", "west europe", "default").is_err());
        assert!(PolicyId::new(SUB, "rg.", "westeurope", "default").is_err());
    }

    #[test]
    fn subscriptions_are_guids() {
        assert!(check_subscription(SUB).is_ok());
        assert!(check_subscription("20FF7FC3-E762-44DD-BD96-B71116DCDC23").is_ok());
        assert!(check_subscription("20ff7fc3e76244ddbd96b71116dcdc23").is_err());
        assert!(check_subscription("20ff7fc3-e762-44dd-bd96-b71116dcdc2g").is_err());
    }
}
