//! ARM resource ids: parsed, checked, and turned back into URL path segments.
//!
//! Request URLs are built only from ids that pass these checks, one
//! percent-encoded path segment at a time, so nothing in an id can change the
//! host, the path structure or the query.

use std::fmt;

use crate::domain::ResourceGroupName;
use crate::domain::jit_policy::{is_resource_name, match_shape};

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
        if check_subscription(sub).is_err()
            || ResourceGroupName::parse(rg).is_err()
            || !is_resource_name(name)
        {
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

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

    #[test]
    fn parses_azure_ids_case_insensitively_and_round_trips() {
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
    }

    #[test]
    fn subscriptions_are_guids() {
        assert!(check_subscription(SUB).is_ok());
        assert!(check_subscription("20FF7FC3-E762-44DD-BD96-B71116DCDC23").is_ok());
        assert!(check_subscription("20ff7fc3e76244ddbd96b71116dcdc23").is_err());
        assert!(check_subscription("20ff7fc3-e762-44dd-bd96-b71116dcdc2g").is_err());
    }
}
