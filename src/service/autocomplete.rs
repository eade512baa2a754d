//! Autocomplete for `/jit`: answered from memory (the VM index and the
//! mappings), never by calling Azure. It shows only what the member's
//! mappings reach: a VM outside them gets the same answer as a VM that does
//! not exist, so autocomplete cannot be used to find out which VMs exist.

//!
//! A VM choice's value is the VM's [`VmKey`], not its name: Discord limits
//! values to 100 characters and `rg/name` reaches 155. Every command handler
//! turns a key back into the VM's full name with [`Service::vm_option`]
//! before parsing it; names are cut for display only.

use std::borrow::Cow;

use super::Service;
use crate::domain::authorize;
use crate::domain::{AccessDuration, IndexedVm, PortSpec, RoleId, RoleMapping, VmKey, VmRef};
use crate::interactions::Choice;

/// Discord shows at most 25 choices.
pub const MAX_CHOICES: usize = 25;
/// A choice's name (what the member sees), at most.
pub const CHOICE_NAME_MAX: usize = 100;

/// A VM choice whose VM has left the index since it was offered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the VM you picked is no longer under JIT (it left the list after it was offered); pick it again or type its name as resourceGroup/name"
)]
pub struct StaleVmChoice;

/// `name (rg)`, the resource group cut (never the name) to fit Discord's
/// 100 characters.
fn vm_choice_name(vm: &IndexedVm) -> String {
    let room = CHOICE_NAME_MAX.saturating_sub(vm.name.chars().count() + 3);
    let rg: String = if vm.resource_group.chars().count() <= room {
        vm.resource_group.clone()
    } else {
        let mut cut: String = vm
            .resource_group
            .chars()
            .take(room.saturating_sub(1))
            .collect();
        cut.push('…');
        cut
    };
    format!("{} ({rg})", vm.name)
}

const DURATION_STEPS: &[u32] = &[15, 30, 45, 60, 90, 120, 180, 240, 360, 480, 720, 1440];

impl Service {
    /// VMs the member's roles may request, best matches first; values are
    /// `rg/name`, so names that exist in several resource groups stay apart.
    pub fn complete_vm(&self, roles: &[RoleId], partial: &str) -> Vec<Choice> {
        let mappings = self.mappings();
        self.vm_choices(partial, &|vm: &IndexedVm| {
            vm.identity()
                .is_some_and(|id| authorize::may_request_vm(&mappings, roles, &id))
        })
    }

    /// Every indexed VM matching `partial` (admin autocomplete).
    pub fn complete_vm_any(&self, partial: &str) -> Vec<Choice> {
        self.vm_choices(partial, &|_| true)
    }

    /// What a `vm` option names: the text as typed, or for a picked
    /// choice (a [`VmKey`]) the VM's `subscription/rg/name`, which resolves
    /// to exactly that VM.
    ///
    /// # Errors
    /// [`StaleVmChoice`] when the key's VM is no longer indexed.
    pub fn vm_option<'a>(&self, text: &'a str) -> Result<Cow<'a, str>, StaleVmChoice> {
        match VmKey::parse(text) {
            None => Ok(Cow::Borrowed(text)),
            Some(key) => self
                .jit()
                .by_key(&key)
                .map(|vm| Cow::Owned(vm.fully_qualified_name()))
                .ok_or(StaleVmChoice),
        }
    }

    /// The indexed VM of a choice's key.
    pub fn vm_by_key(&self, key: &VmKey) -> Option<std::sync::Arc<IndexedVm>> {
        self.jit().by_key(key)
    }

    fn vm_choices(&self, partial: &str, keep: &(dyn Fn(&IndexedVm) -> bool + Sync)) -> Vec<Choice> {
        self.jit()
            .search(partial.trim(), MAX_CHOICES, keep)
            .iter()
            .map(|vm| Choice {
                name: vm_choice_name(vm),
                value: vm.key().to_string(),
            })
            .collect()
    }

    fn fitting<'a>(
        &self,
        mappings: &'a [RoleMapping],
        roles: &'a [RoleId],
        vm_text: &str,
    ) -> Option<(std::sync::Arc<IndexedVm>, Vec<&'a RoleMapping>)> {
        let vm_ref = VmRef::parse(&self.vm_option(vm_text).ok()?).ok()?;
        let vm = self.jit().resolve_cached(&vm_ref)?;
        let identity = vm.identity()?;
        let fitting: Vec<&RoleMapping> = mappings
            .iter()
            .filter(|m| m.applies_to(roles) && m.vms.matches(&identity))
            .collect();
        (!fitting.is_empty()).then_some((vm, fitting))
    }

    /// Ports of the chosen VM's policy that the member's mappings allow, by
    /// name where one exists.
    pub fn complete_port(&self, roles: &[RoleId], vm_text: &str, partial: &str) -> Vec<Choice> {
        let mappings = self.mappings();
        let aliases = &self.config().aliases;
        let Some((vm, fitting)) = self.fitting(&mappings, roles, vm_text) else {
            if !authorize::has_any_mapping(&mappings, roles) {
                return Vec::new();
            }
            return ["ssh", "rdp", "winrm"]
                .iter()
                .filter(|n| n.starts_with(&partial.trim().to_ascii_lowercase()))
                .map(|n| Choice {
                    name: (*n).into(),
                    value: (*n).into(),
                })
                .collect();
        };
        // Azure's schema allows port 0 and repeats a port per protocol: only
        // ports a member can ask for, once each.
        let mut allowed: Vec<u16> = Vec::new();
        for n in vm.ports.iter().map(|p| p.number) {
            let Some(one) = PortSpec::from_numbers([n]) else {
                continue;
            };
            if !allowed.contains(&n) && fitting.iter().any(|m| m.ports.covers(&one)) {
                allowed.push(n);
            }
        }
        let mut choices = Vec::new();
        for (name, ports) in aliases.iter() {
            let nums: Vec<u16> = ports.iter().map(|p| p.number()).collect();
            if !nums.is_empty() && nums.iter().all(|n| allowed.contains(n)) {
                choices.push(Choice {
                    name: format!(
                        "{name} ({})",
                        nums.iter()
                            .map(u16::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    value: name.to_string(),
                });
            }
        }
        for n in &allowed {
            choices.push(Choice {
                name: n.to_string(),
                value: n.to_string(),
            });
        }
        let partial = partial.trim().to_ascii_lowercase();
        choices.retain(|c| c.value.starts_with(&partial) || c.name.contains(&partial));
        choices.truncate(MAX_CHOICES);
        choices
    }

    /// Durations up to the member's maximum for the chosen VM and ports.
    pub fn complete_duration(
        &self,
        roles: &[RoleId],
        vm_text: &str,
        port_text: &str,
        partial: &str,
    ) -> Vec<Choice> {
        let mappings = self.mappings();
        let max_minutes = match self.fitting(&mappings, roles, vm_text) {
            Some((vm, fitting)) => {
                let ports = PortSpec::parse(port_text, &self.config().aliases).ok();
                let mapping_max = fitting
                    .iter()
                    .filter(|m| ports.as_ref().is_none_or(|p| m.ports.covers(p)))
                    .map(|m| m.max_duration.minutes())
                    .max()
                    .unwrap_or(0);
                let policy_max = match &ports {
                    Some(p) => vm.max_duration_for(&p.numbers()).num_minutes(),
                    None => vm
                        .ports
                        .iter()
                        .map(|r| r.max_duration.num_minutes())
                        .max()
                        .unwrap_or(0),
                };
                mapping_max.min(u32::try_from(policy_max).unwrap_or(u32::MAX))
            }
            None => mappings
                .iter()
                .filter(|m| m.applies_to(roles))
                .map(|m| m.max_duration.minutes())
                .max()
                .unwrap_or(0),
        };
        let partial = partial.trim().to_ascii_lowercase();
        let mut steps: Vec<u32> = DURATION_STEPS
            .iter()
            .copied()
            .filter(|m| *m <= max_minutes)
            .collect();
        if max_minutes >= 5 && !steps.contains(&max_minutes) {
            steps.push(max_minutes);
        }
        steps
            .into_iter()
            .filter_map(AccessDuration::from_minutes)
            .map(|d| d.to_string())
            .filter(|s| s.starts_with(&partial))
            .map(|s| Choice {
                name: s.clone(),
                value: s,
            })
            .take(MAX_CHOICES)
            .collect()
    }
}
