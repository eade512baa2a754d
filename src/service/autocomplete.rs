//! Autocomplete for `/jit`: answered from memory (the VM index and the
//! mappings), never by calling Azure. It shows only what the member's
//! mappings reach: a VM outside them gets the same answer as a VM that does
//! not exist, so autocomplete cannot be used to find out which VMs exist.

//!
//! A VM choice's value is the VM's [`VmKey`], not its name: Discord limits
//! values to 100 characters and `rg/name` reaches 155. Every command handler
//! turns a key back into the VM's full name with [`Service::vm_option`]
//! before parsing it; names are cut for display only.
//!
//! # Speed at 50,000 VMs and 1,000 mappings
//!
//! Which VMs a member may see depends only on which mappings apply to their
//! roles, so that set is computed once per set of applying mappings and
//! kept ([`AllowedVms`]) until the index or the mappings are replaced. A
//! keystroke then searches the member's own VMs only (1 % of the fleet is
//! 500 names), or, for a member who sees most of the fleet, the index's
//! search key with a membership test: never a mapping scan per VM.
//!
//! While the index is still loading, the one choice says so, and picking
//! it sends what was typed (a `/jit` for a VM not yet indexed is looked up
//! directly).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::Service;
use super::jit_port::IndexState;
use crate::domain::authorize;
use crate::domain::{AccessDuration, IndexedVm, PortSpec, RoleId, RoleMapping, VmKey, VmRef};
use crate::interactions::Choice;

/// The one choice while the index loads.
pub const STILL_LOADING: &str = "Still loading the VM list: type the VM as resourceGroup/name";
/// The one choice when the index could not be built yet.
pub const NOT_LOADED: &str =
    "The VM list could not be read from Azure yet: type the VM as resourceGroup/name";
/// Role sets whose VM sets are kept at most (cleared when full).
const MAX_CACHED_SETS: usize = 256;
/// Below this many allowed VMs, a search scans them instead of the index.
const SCAN_OWN_BELOW: usize = 5_000;

/// The VMs the members with one set of applying mappings may see, sorted
/// by name as the index is, for one index generation.
#[derive(Debug)]
struct AllowedVms {
    vms: Vec<Arc<IndexedVm>>,
    /// Their addresses, for a membership test when the set is large.
    members: HashSet<usize>,
}

/// The [`AllowedVms`] of each set of applying mappings (by their places in
/// the mappings list), for one index generation and one mappings list.
#[derive(Debug, Default)]
pub(crate) struct AllowedCache {
    generation: u64,
    mappings: Option<Arc<Vec<RoleMapping>>>,
    sets: HashMap<Vec<u32>, Arc<AllowedVms>>,
}

fn address(vm: &Arc<IndexedVm>) -> usize {
    Arc::as_ptr(vm) as usize
}

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
        vm.resource_group.to_string()
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

fn vm_choice(vm: &IndexedVm) -> Choice {
    Choice {
        name: vm_choice_name(vm),
        value: vm.key().to_string(),
    }
}

/// The index's search over a member's own VMs (sorted by name): names
/// starting with `query` (case-insensitive), then names containing it.
fn search_own(vms: &[Arc<IndexedVm>], query: &str, limit: usize) -> Vec<Arc<IndexedVm>> {
    let q = query.to_lowercase();
    let names: Vec<String> = vms.iter().map(|v| v.name.to_lowercase()).collect();
    let starts = names.iter().map(|n| n.starts_with(&q));
    let mut out: Vec<Arc<IndexedVm>> = vms
        .iter()
        .zip(starts.clone())
        .filter(|(_, s)| *s)
        .map(|(v, _)| Arc::clone(v))
        .take(limit)
        .collect();
    if q.is_empty() {
        return out;
    }
    let room = limit - out.len();
    out.extend(
        vms.iter()
            .zip(names.iter().zip(starts))
            .filter(|(_, (n, s))| !s && n.contains(&q))
            .map(|(v, _)| Arc::clone(v))
            .take(room),
    );
    out
}

const DURATION_STEPS: &[u32] = &[15, 30, 45, 60, 90, 120, 180, 240, 360, 480, 720, 1440];

impl Service {
    /// VMs the member's roles may request, best matches first; values are
    /// `rg/name`, so names that exist in several resource groups stay apart.
    pub fn complete_vm(&self, roles: &[RoleId], partial: &str) -> Vec<Choice> {
        if let Some(waiting) = self.index_not_ready(partial) {
            return waiting;
        }
        let mappings = self.mappings();
        let applying: Vec<u32> = mappings
            .iter()
            .enumerate()
            .filter(|(_, m)| m.applies_to(roles))
            .map(|(i, _)| u32::try_from(i).unwrap_or(u32::MAX))
            .collect();
        if applying.is_empty() {
            return Vec::new();
        }
        let allowed = self.allowed_vms(&mappings, applying);
        let query = partial.trim();
        let found = if allowed.vms.len() < SCAN_OWN_BELOW {
            search_own(&allowed.vms, query, MAX_CHOICES)
        } else {
            self.jit().search(query, MAX_CHOICES, &|vm: &IndexedVm| {
                allowed.members.contains(&(vm as *const IndexedVm as usize))
            })
        };
        found.iter().map(|vm| vm_choice(vm)).collect()
    }

    /// Every indexed VM matching `partial` (admin autocomplete).
    pub fn complete_vm_any(&self, partial: &str) -> Vec<Choice> {
        if let Some(waiting) = self.index_not_ready(partial) {
            return waiting;
        }
        self.vm_choices(partial, &|_| true)
    }

    /// The one choice saying the index is not there yet, if it is not;
    /// picking it sends what was typed.
    fn index_not_ready(&self, partial: &str) -> Option<Vec<Choice>> {
        let name = match self.jit().index_state() {
            IndexState::Ready { .. } => return None,
            IndexState::Loading => STILL_LOADING,
            IndexState::Failed => NOT_LOADED,
        };
        let typed: String = partial.trim().chars().take(CHOICE_NAME_MAX).collect();
        Some(vec![Choice {
            name: name.to_owned(),
            value: if typed.is_empty() {
                "?".to_owned()
            } else {
                typed
            },
        }])
    }

    /// The VMs the mappings at `applying` cover, computed once per index
    /// generation and mappings list.
    fn allowed_vms(&self, mappings: &Arc<Vec<RoleMapping>>, applying: Vec<u32>) -> Arc<AllowedVms> {
        let generation = self.jit().index_generation();
        {
            let mut cache = self
                .allowed_cache()
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let current = cache.generation == generation
                && cache
                    .mappings
                    .as_ref()
                    .is_some_and(|m| Arc::ptr_eq(m, mappings));
            if !current || cache.sets.len() >= MAX_CACHED_SETS {
                *cache = AllowedCache {
                    generation,
                    mappings: Some(Arc::clone(mappings)),
                    sets: HashMap::new(),
                };
            }
            if let Some(found) = cache.sets.get(&applying) {
                return Arc::clone(found);
            }
        }
        let chosen: Vec<&RoleMapping> = applying
            .iter()
            .filter_map(|&i| mappings.get(i as usize))
            .collect();
        let vms: Vec<Arc<IndexedVm>> = self
            .jit()
            .indexed_vms()
            .into_iter()
            .filter(|vm| {
                vm.identity()
                    .is_some_and(|id| chosen.iter().any(|m| m.vms.matches(&id)))
            })
            .collect();
        let members = if vms.len() < SCAN_OWN_BELOW {
            HashSet::new()
        } else {
            vms.iter().map(address).collect()
        };
        let allowed = Arc::new(AllowedVms { vms, members });
        let mut cache = self
            .allowed_cache()
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if cache.generation == generation {
            cache.sets.insert(applying, Arc::clone(&allowed));
        }
        allowed
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
            .map(|vm| vm_choice(vm))
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
