//! The seed of the emulator: subscriptions, their VMs and their JIT policies,
//! read from TOML whose keys mirror the ARM JSON names (camelCase).
//!
//! ```toml
//! [[subscriptions]]
//! id = "00000000-0000-0000-0000-000000000001"
//!
//! [[subscriptions.vms]]
//! name = "web-01"
//! resourceGroup = "rg-web"
//! location = "westeurope"
//! os = "linux"
//! privateIp = "10.0.1.4"
//!
//! [[subscriptions.policies]]
//! resourceGroup = "rg-web"      # name defaults to "default", kind to "Basic"
//! location = "westeurope"
//!
//! [[subscriptions.policies.virtualMachines]]
//! name = "web-01"               # resourceGroup defaults to the policy's
//! ports = [{ number = 22, protocol = "*", allowedSourceAddressPrefix = "*", maxRequestAccessDuration = "PT3H" }]
//! ```

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::jit::{PortRule, validate_port_rules};

/// The sample estate used by `drawbridge demo` (see `sample_estate.toml`).
const SAMPLE: &str = include_str!("sample_estate.toml");

/// Everything the emulated Azure knows about at start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Estate {
    /// The subscriptions, each with its VMs and JIT policies.
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
}

/// One Azure subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subscription {
    /// The subscription id, a GUID.
    pub id: String,
    /// A human name, only for people reading the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The virtual machines of the subscription.
    #[serde(default)]
    pub vms: Vec<VirtualMachine>,
    /// The JIT network access policies of the subscription.
    #[serde(default)]
    pub policies: Vec<PolicySeed>,
}

/// A virtual machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachine {
    /// The VM name, unique within its resource group.
    pub name: String,
    /// The resource group holding the VM.
    pub resource_group: String,
    /// The Azure region, e.g. `westeurope`.
    pub location: String,
    /// The operating system.
    pub os: Os,
    /// The private IP address, the destination of the JIT NSG rules.
    pub private_ip: IpAddr,
    /// The public IP address of its NIC, if it has one (a
    /// `Microsoft.Network/publicIPAddresses` resource `{name}-ip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<IpAddr>,
    /// The public IP's DNS label (`{label}.{location}.cloudapp.azure.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_label: Option<String>,
    /// The VM's Azure tags (`drawbridge-ssh-user` names the SSH user).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
}

impl VirtualMachine {
    /// The ARM resource id of this VM's network interface.
    pub fn nic_id(&self, subscription: &str) -> String {
        format!(
            "/subscriptions/{subscription}/resourceGroups/{}/providers/Microsoft.Network/networkInterfaces/{}-nic",
            self.resource_group, self.name
        )
    }

    /// The ARM resource id of this VM's public IP address resource.
    pub fn public_ip_id(&self, subscription: &str) -> String {
        format!(
            "/subscriptions/{subscription}/resourceGroups/{}/providers/Microsoft.Network/publicIPAddresses/{}-ip",
            self.resource_group, self.name
        )
    }

    /// The ARM resource id of this VM in `subscription`.
    pub fn id(&self, subscription: &str) -> String {
        format!(
            "/subscriptions/{subscription}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
            self.resource_group, self.name
        )
    }
}

/// A VM's operating system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Os {
    /// Linux.
    Linux,
    /// Windows.
    Windows,
}

impl Os {
    /// The name Azure uses in `storageProfile.osDisk.osType`.
    pub fn arm_name(self) -> &'static str {
        match self {
            Os::Linux => "Linux",
            Os::Windows => "Windows",
        }
    }
}

/// A JIT network access policy as seeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySeed {
    /// The resource group of the policy.
    pub resource_group: String,
    /// The ASC location of the policy (the VMs' region).
    pub location: String,
    /// The policy name; the portal uses `default`.
    #[serde(default = "default_policy_name")]
    pub name: String,
    /// The policy kind; Azure uses `Basic`.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// The VMs the policy covers, with their port rules.
    #[serde(default)]
    pub virtual_machines: Vec<PolicyVmSeed>,
}

/// A VM in a seeded policy, referenced by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyVmSeed {
    /// The VM name.
    pub name: String,
    /// The VM's resource group; defaults to the policy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    /// The JIT port rules for this VM.
    pub ports: Vec<PortRule>,
}

fn default_policy_name() -> String {
    "default".to_owned()
}

fn default_kind() -> String {
    "Basic".to_owned()
}

/// Why a seed could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum EstateError {
    /// The seed file could not be read.
    #[error("cannot read estate seed {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The seed is not valid TOML or has unknown or mistyped keys.
    #[error("estate seed is not valid: {0}")]
    Toml(#[from] toml::de::Error),
    /// The seed parses but describes an impossible estate.
    #[error("estate seed is not valid: {0}")]
    Invalid(String),
}

impl Estate {
    /// Parses and validates a TOML seed.
    ///
    /// # Errors
    /// [`EstateError::Toml`] for syntax or unknown keys, [`EstateError::Invalid`]
    /// for an inconsistent estate (bad ids, duplicate VMs, policies naming
    /// unknown VMs, invalid port rules).
    pub fn from_toml_str(text: &str) -> Result<Estate, EstateError> {
        let mut estate: Estate = toml::from_str(text)?;
        estate.validate().map_err(EstateError::Invalid)?;
        Ok(estate)
    }

    /// Reads, parses and validates a TOML seed file.
    ///
    /// # Errors
    /// As [`Estate::from_toml_str`], plus [`EstateError::Io`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Estate, EstateError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| EstateError::Io {
            path: path.to_owned(),
            source,
        })?;
        Estate::from_toml_str(&text)
    }

    /// The checked-in sample estate of the demo: two subscriptions, about a
    /// dozen VMs, one VM without a JIT policy (`legacy-01`) and one VM name in
    /// two resource groups (`ops-01`).
    pub fn sample() -> Estate {
        // The sample is checked in and covered by a unit test.
        Estate::from_toml_str(SAMPLE).expect("the checked-in sample estate is valid")
    }

    /// Every VM with its subscription id.
    pub fn vms(&self) -> impl Iterator<Item = (&str, &VirtualMachine)> {
        self.subscriptions
            .iter()
            .flat_map(|s| s.vms.iter().map(move |vm| (s.id.as_str(), vm)))
    }

    /// Checks the estate and normalizes port protocols.
    fn validate(&mut self) -> Result<(), String> {
        let mut subscription_ids = HashSet::new();
        for sub in &mut self.subscriptions {
            if !is_guid(&sub.id) {
                return Err(format!("subscription id '{}' is not a GUID", sub.id));
            }
            if !subscription_ids.insert(sub.id.to_ascii_lowercase()) {
                return Err(format!("subscription '{}' appears twice", sub.id));
            }
            let ctx = |what: String| format!("subscription '{}': {what}", sub.id);
            // (rg, name) lowercase → the VM: a policy names thousands of VMs.
            let mut vm_keys = HashMap::new();
            for (i, vm) in sub.vms.iter().enumerate() {
                check_vm(vm).map_err(|e| ctx(format!("vm '{}': {e}", vm.name)))?;
                let key = (vm.resource_group.to_lowercase(), vm.name.to_lowercase());
                if vm_keys.insert(key, i).is_some() {
                    return Err(ctx(format!(
                        "vm '{}' appears twice in resource group '{}'",
                        vm.name, vm.resource_group
                    )));
                }
            }
            let mut policy_keys = HashSet::new();
            for policy in &mut sub.policies {
                let label = format!(
                    "policy '{}' in {}/{}",
                    policy.name, policy.resource_group, policy.location
                );
                check_resource_group(&policy.resource_group)
                    .map_err(|e| ctx(format!("{label}: {e}")))?;
                check_location(&policy.location).map_err(|e| ctx(format!("{label}: {e}")))?;
                if policy.name.is_empty() {
                    return Err(ctx("a policy has an empty name".to_owned()));
                }
                let key = (
                    policy.resource_group.to_lowercase(),
                    policy.location.to_lowercase(),
                    policy.name.to_lowercase(),
                );
                if !policy_keys.insert(key) {
                    return Err(ctx(format!("{label} appears twice")));
                }
                for pvm in &mut policy.virtual_machines {
                    let rg = pvm
                        .resource_group
                        .as_deref()
                        .unwrap_or(&policy.resource_group);
                    let vm = vm_keys
                        .get(&(rg.to_lowercase(), pvm.name.to_lowercase()))
                        .map(|&i| &sub.vms[i])
                        .ok_or_else(|| {
                            ctx(format!(
                                "{label}: no vm '{}' in resource group '{rg}'",
                                pvm.name
                            ))
                        })?;
                    if !vm.location.eq_ignore_ascii_case(&policy.location) {
                        return Err(ctx(format!(
                            "{label}: vm '{}' is in '{}', not in the policy's location",
                            vm.name, vm.location
                        )));
                    }
                    validate_port_rules(&mut pvm.ports)
                        .map_err(|e| ctx(format!("{label}: vm '{}': {e}", pvm.name)))?;
                }
            }
        }
        Ok(())
    }
}

fn check_vm(vm: &VirtualMachine) -> Result<(), String> {
    let name_ok = (1..=64).contains(&vm.name.len())
        && vm.name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && vm
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !name_ok {
        return Err("the name must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit".to_owned());
    }
    check_resource_group(&vm.resource_group)?;
    check_location(&vm.location)
}

fn check_resource_group(rg: &str) -> Result<(), String> {
    let ok = (1..=90).contains(&rg.chars().count())
        && !rg.ends_with('.')
        && rg
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '(' | ')'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "resource group '{rg}' is not a valid resource group name"
        ))
    }
}

fn check_location(location: &str) -> Result<(), String> {
    if !location.is_empty() && location.chars().all(|c| c.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(format!(
            "location '{location}' is not a region name like 'westeurope'"
        ))
    }
}

/// Whether `s` has the shape of a subscription id (a GUID).
pub(crate) fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_estate_has_what_the_demo_needs() {
        let estate = Estate::sample();
        assert_eq!(estate.subscriptions.len(), 2);
        let names: Vec<&str> = estate.vms().map(|(_, vm)| vm.name.as_str()).collect();
        for name in ["web-01", "web-04", "db-01", "win-07", "legacy-01"] {
            assert!(names.contains(&name), "{name} missing");
        }
        assert_eq!(names.iter().filter(|n| **n == "ops-01").count(), 2);
        let covered = estate
            .subscriptions
            .iter()
            .flat_map(|s| &s.policies)
            .flat_map(|p| &p.virtual_machines)
            .any(|v| v.name == "legacy-01");
        assert!(!covered, "legacy-01 must have no JIT policy");
    }

    #[test]
    fn a_policy_naming_an_unknown_vm_is_refused() {
        let seed = r#"
            [[subscriptions]]
            id = "00000000-0000-0000-0000-000000000001"
            [[subscriptions.policies]]
            resourceGroup = "rg"
            location = "westeurope"
            [[subscriptions.policies.virtualMachines]]
            name = "ghost"
            ports = [{ number = 22, protocol = "*", allowedSourceAddressPrefix = "*", maxRequestAccessDuration = "PT3H" }]
        "#;
        let err = Estate::from_toml_str(seed).unwrap_err().to_string();
        assert!(err.contains("no vm 'ghost'"), "{err}");
    }

    #[test]
    fn bad_ids_ips_and_durations_are_refused_with_the_culprit_named() {
        let base = |sub: &str, ip: &str, max: &str| {
            format!(
                r#"
                [[subscriptions]]
                id = "{sub}"
                [[subscriptions.vms]]
                name = "vm1"
                resourceGroup = "rg"
                location = "westeurope"
                os = "linux"
                privateIp = "{ip}"
                [[subscriptions.policies]]
                resourceGroup = "rg"
                location = "westeurope"
                [[subscriptions.policies.virtualMachines]]
                name = "vm1"
                ports = [{{ number = 22, protocol = "TCP", allowedSourceAddressPrefix = "*", maxRequestAccessDuration = "{max}" }}]
                "#
            )
        };
        let good = "00000000-0000-0000-0000-000000000001";
        assert!(Estate::from_toml_str(&base(good, "10.0.0.4", "PT3H")).is_ok());
        let err = Estate::from_toml_str(&base("sub-a", "10.0.0.4", "PT3H")).unwrap_err();
        assert!(err.to_string().contains("'sub-a' is not a GUID"), "{err}");
        let err = Estate::from_toml_str(&base(good, "10.0.0", "PT3H")).unwrap_err();
        assert!(err.to_string().contains("privateIp"), "{err}");
        let err = Estate::from_toml_str(&base(good, "10.0.0.4", "P2D")).unwrap_err();
        assert!(err.to_string().contains("P2D"), "{err}");
    }
}
