//! VM references as users type them (`myVM`, `rg/myVM`, `sub/rg/myVM`),
//! checked against Azure's naming rules so no input can become a path
//! segment it was not meant to be. VM ids for Azure calls come from the VM
//! index, never from these strings.

use std::fmt;

/// Why a VM reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmRefError {
    /// Nothing was given.
    #[error(
        "no VM given: name one as myVM, resourceGroup/myVM or subscriptionId/resourceGroup/myVM"
    )]
    Empty,
    /// Too many `/` parts.
    #[error(
        "`{0}` has too many parts: use myVM, resourceGroup/myVM or subscriptionId/resourceGroup/myVM"
    )]
    TooManyParts(String),
    /// A VM name outside Azure's rules.
    #[error(
        "`{0}` is not a valid VM name: 1 to 64 letters, digits, `.`, `_` or `-`, starting with a letter or digit and not ending with `.` or `-`"
    )]
    BadName(String),
    /// A resource group name outside Azure's rules.
    #[error(
        "`{0}` is not a valid resource group name: 1 to 90 letters, digits, `_`, `-`, `.`, `(` or `)`, not ending with `.`"
    )]
    BadResourceGroup(String),
    /// Not a subscription id.
    #[error(
        "`{0}` is not a subscription id: subscription ids are GUIDs such as 00000000-0000-0000-0000-000000000000"
    )]
    BadSubscription(String),
}

fn shown(s: &str) -> String {
    s.chars().take(100).collect()
}

/// A VM name: 1-64 of `[A-Za-z0-9._-]`, first alphanumeric, not ending with
/// `.` or `-` (a superset of every revision of Azure's rules).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmName(String);

impl VmName {
    /// Validates a VM name.
    pub fn parse(input: &str) -> Result<Self, VmRefError> {
        if Self::is_valid(input) {
            Ok(Self(input.to_string()))
        } else {
            Err(VmRefError::BadName(shown(input)))
        }
    }

    /// Whether [`VmName::parse`] accepts `input` (without copying it).
    pub fn is_valid(input: &str) -> bool {
        (1..=64).contains(&input.len())
            && input.starts_with(|c: char| c.is_ascii_alphanumeric())
            && !input.ends_with(['.', '-'])
            && input
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares case-insensitively, as Azure does.
    pub fn matches(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }
}

impl fmt::Display for VmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A resource group name: 1-90 of Unicode letters and digits, `_`, `-`, `.`,
/// `(`, `)`, not ending with `.`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceGroupName(String);

impl ResourceGroupName {
    /// Validates a resource group name.
    pub fn parse(input: &str) -> Result<Self, VmRefError> {
        let count = input.chars().count();
        let ok = (1..=90).contains(&count)
            && !input.ends_with('.')
            && input
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '(' | ')'));
        if ok {
            Ok(Self(input.to_string()))
        } else {
            Err(VmRefError::BadResourceGroup(shown(input)))
        }
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares case-insensitively, as Azure does.
    pub fn matches(&self, other: &str) -> bool {
        if self.0.is_ascii() && other.is_ascii() {
            return self.0.eq_ignore_ascii_case(other);
        }
        self.0.to_lowercase() == other.to_lowercase()
    }
}

impl fmt::Display for ResourceGroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A subscription id: a GUID, kept lowercase.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriptionId(String);

impl SubscriptionId {
    /// Validates a subscription id (`8-4-4-4-12` hex digits).
    pub fn parse(input: &str) -> Result<Self, VmRefError> {
        let groups: Vec<&str> = input.split('-').collect();
        let ok = groups.len() == 5
            && groups
                .iter()
                .zip([8, 4, 4, 4, 12])
                .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
        if ok {
            Ok(Self(input.to_ascii_lowercase()))
        } else {
            Err(VmRefError::BadSubscription(shown(input)))
        }
    }

    /// The id, lowercase.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A VM as a user names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VmRef {
    /// Narrows the lookup to one subscription.
    pub subscription: Option<SubscriptionId>,
    /// Narrows the lookup to one resource group.
    pub resource_group: Option<ResourceGroupName>,
    /// The VM's name.
    pub name: VmName,
}

impl VmRef {
    /// Parses `name`, `resourceGroup/name` or `subscriptionId/resourceGroup/name`.
    pub fn parse(input: &str) -> Result<Self, VmRefError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(VmRefError::Empty);
        }
        let parts: Vec<&str> = input.split('/').collect();
        match parts.as_slice() {
            [name] => Ok(Self {
                subscription: None,
                resource_group: None,
                name: VmName::parse(name)?,
            }),
            [rg, name] => Ok(Self {
                subscription: None,
                resource_group: Some(ResourceGroupName::parse(rg)?),
                name: VmName::parse(name)?,
            }),
            [sub, rg, name] => Ok(Self {
                subscription: Some(SubscriptionId::parse(sub)?),
                resource_group: Some(ResourceGroupName::parse(rg)?),
                name: VmName::parse(name)?,
            }),
            _ => Err(VmRefError::TooManyParts(shown(input))),
        }
    }

    /// Whether this reference designates `vm` (case-insensitive).
    pub fn designates(&self, vm: &VmIdentity) -> bool {
        self.is_in(&vm.subscription, vm.resource_group.as_str())
            && self.name.matches(vm.name.as_str())
    }

    /// Whether the VMs of this subscription and resource group may be the
    /// one this reference designates (by their place alone, not their name).
    pub fn is_in(&self, subscription: &SubscriptionId, resource_group: &str) -> bool {
        self.resource_group
            .as_ref()
            .is_none_or(|rg| rg.matches(resource_group))
            && self.subscription.as_ref().is_none_or(|s| s == subscription)
    }
}

/// The canonical form; it parses back to the same value.
impl fmt::Display for VmRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(sub) = &self.subscription {
            write!(f, "{sub}/")?;
        }
        if let Some(rg) = &self.resource_group {
            write!(f, "{rg}/")?;
        }
        write!(f, "{}", self.name)
    }
}

/// A VM that exists: where it lives, as resolved through the VM index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VmIdentity {
    /// Its subscription.
    pub subscription: SubscriptionId,
    /// Its resource group.
    pub resource_group: ResourceGroupName,
    /// Its name.
    pub name: VmName,
}

impl VmIdentity {
    /// `resourceGroup/name`, the form shown to users.
    pub fn qualified(&self) -> String {
        format!("{}/{}", self.resource_group, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "0f3c1e2a-4b5d-6e7f-8091-a2b3c4d5e6f7";

    #[test]
    fn references_of_one_two_and_three_parts_parse() {
        let r = VmRef::parse("myVM").unwrap();
        assert_eq!((r.subscription, r.resource_group), (None, None));
        assert_eq!(r.name.as_str(), "myVM");
        let r = VmRef::parse("rg-prod/win-07").unwrap();
        assert_eq!(r.resource_group.unwrap().as_str(), "rg-prod");
        let r = VmRef::parse(&format!("{}/rg(1)/vm_1", SUB.to_uppercase())).unwrap();
        assert_eq!(r.subscription.unwrap().as_str(), SUB);
    }

    #[test]
    fn path_like_and_invalid_names_are_refused() {
        let bad = [
            ("", VmRefError::Empty),
            ("a/b/c/d", VmRefError::TooManyParts("a/b/c/d".into())),
            ("..", VmRefError::BadName("..".into())),
            ("vm?x=1", VmRefError::BadName("vm?x=1".into())),
            ("vm%2F", VmRefError::BadName("vm%2F".into())),
            ("vm-", VmRefError::BadName("vm-".into())),
            ("_vm", VmRefError::BadName("_vm".into())),
            ("my vm", VmRefError::BadName("my vm".into())),
            ("rg./vm", VmRefError::BadResourceGroup("rg.".into())),
            ("/vm", VmRefError::BadResourceGroup("".into())),
            (
                "not-a-guid/rg/vm",
                VmRefError::BadSubscription("not-a-guid".into()),
            ),
        ];
        for (input, want) in bad {
            assert_eq!(VmRef::parse(input), Err(want), "{input}");
        }
        assert!(VmName::parse(&"a".repeat(65)).is_err());
        assert!(VmName::parse(&"a".repeat(64)).is_ok());
        assert!(ResourceGroupName::parse("rg-ünïcode").is_ok());
    }

    #[test]
    fn designation_is_case_insensitive_and_respects_qualifiers() {
        let vm = VmIdentity {
            subscription: SubscriptionId::parse(SUB).unwrap(),
            resource_group: ResourceGroupName::parse("RG-Prod").unwrap(),
            name: VmName::parse("Web-01").unwrap(),
        };
        assert!(VmRef::parse("web-01").unwrap().designates(&vm));
        assert!(VmRef::parse("rg-prod/WEB-01").unwrap().designates(&vm));
        assert!(!VmRef::parse("rg-staging/web-01").unwrap().designates(&vm));
        assert_eq!(vm.qualified(), "RG-Prod/Web-01");
    }
}
