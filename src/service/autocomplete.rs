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
//! kept ([`AllowedVms`]) until the index or the mappings are replaced. The
//! mappings that apply are found through a role → mappings table built
//! once per mappings list, and a set is computed judging each place
//! (subscription and resource group) once, not each VM's parsed identity:
//! a resource-group or subscription mapping costs a pointer lookup per VM.
//! A keystroke then searches the member's own VMs only (1 % of the fleet is
//! 500 names, their lowercase names kept with the set), or, for a member
//! who sees most of the fleet, the index's search key with a membership
//! test: never a mapping scan per VM.
//!
//! The work runs on tokio's blocking pool ([`Service::complete_vm`] is
//! async), so the dispatcher's 2 s budget can give up on a slow first
//! query of a huge estate instead of waiting for it on a runtime thread.
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
use crate::domain::mapping::any_covers_place;
use crate::domain::{
    AccessDuration, IndexedVm, PortSpec, ResourceGroupName, RoleId, RoleMapping, SubscriptionId,
    VmKey, VmName, VmRef,
};
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
    /// Their lowercase names, when the set is small enough to scan.
    names: Vec<Box<str>>,
    /// Their addresses, for a membership test when the set is large.
    members: HashSet<usize>,
}

/// The [`AllowedVms`] of each set of applying mappings (by their places in
/// the mappings list), for one index generation and one mappings list.
#[derive(Debug, Default)]
pub(crate) struct AllowedCache {
    generation: u64,
    mappings: Option<Arc<Vec<RoleMapping>>>,
    /// Each role's mappings (places in the list, ascending).
    by_role: HashMap<RoleId, Vec<u32>>,
    sets: HashMap<Vec<u32>, Arc<AllowedVms>>,
}

impl AllowedCache {
    /// Empty, for `mappings` at `generation`.
    fn new(generation: u64, mappings: &Arc<Vec<RoleMapping>>) -> Self {
        let mut by_role: HashMap<RoleId, Vec<u32>> = HashMap::new();
        for (i, m) in mappings.iter().enumerate() {
            let place = u32::try_from(i).unwrap_or(u32::MAX);
            for role in &m.roles {
                by_role.entry(*role).or_default().push(place);
            }
        }
        Self {
            generation,
            mappings: Some(Arc::clone(mappings)),
            by_role,
            sets: HashMap::new(),
        }
    }

    fn is_for(&self, generation: u64, mappings: &Arc<Vec<RoleMapping>>) -> bool {
        self.generation == generation
            && self
                .mappings
                .as_ref()
                .is_some_and(|m| Arc::ptr_eq(m, mappings))
    }

    /// The places of the mappings that apply to `roles`, ascending.
    fn applying(&self, roles: &[RoleId]) -> Vec<u32> {
        let mut out: Vec<u32> = roles
            .iter()
            .filter_map(|r| self.by_role.get(r))
            .flatten()
            .copied()
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// What the chosen mappings say about the VMs of one place (subscription
/// and resource group).
enum PlaceVerdict {
    /// The place's names fail validation: no VM there can be served.
    Unusable,
    /// No chosen mapping reaches the place.
    Nothing,
    /// Every VM there with a valid name.
    Every,
    /// Those whose names a mapping matches.
    ByName(SubscriptionId),
}

fn judge_place(vm: &IndexedVm, chosen: &[&RoleMapping]) -> PlaceVerdict {
    let (Ok(sub), Ok(rg)) = (
        SubscriptionId::parse(&vm.subscription),
        ResourceGroupName::parse(&vm.resource_group),
    ) else {
        return PlaceVerdict::Unusable;
    };
    let verdicts = chosen.iter().map(|m| m.vms.covers_place(&sub, rg.as_str()));
    match any_covers_place(verdicts) {
        Some(true) => PlaceVerdict::Every,
        Some(false) => PlaceVerdict::Nothing,
        None => PlaceVerdict::ByName(sub),
    }
}

/// The VMs of `vms` that `chosen` cover, each place judged once (VMs of a
/// place share its strings, so a place is known by their addresses).
fn covered(vms: Vec<Arc<IndexedVm>>, chosen: &[&RoleMapping]) -> Vec<Arc<IndexedVm>> {
    let mut places: HashMap<(usize, usize), PlaceVerdict> = HashMap::new();
    vms.into_iter()
        .filter(|vm| {
            let place = (
                vm.subscription.as_ptr() as usize,
                vm.resource_group.as_ptr() as usize,
            );
            let verdict = places
                .entry(place)
                .or_insert_with(|| judge_place(vm, chosen));
            VmName::is_valid(&vm.name)
                && match verdict {
                    PlaceVerdict::Unusable | PlaceVerdict::Nothing => false,
                    PlaceVerdict::Every => true,
                    PlaceVerdict::ByName(sub) => chosen
                        .iter()
                        .any(|m| m.vms.matches_at(sub, &vm.resource_group, &vm.name)),
                }
        })
        .collect()
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
fn search_own(allowed: &AllowedVms, query: &str, limit: usize) -> Vec<Arc<IndexedVm>> {
    let (vms, names) = (&allowed.vms, &allowed.names);
    let q = query.to_lowercase();
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
    ///
    /// Runs on the blocking pool: a caller's timeout (the dispatcher's
    /// budget) then holds even while a first query computes the member's
    /// VM set, which then finishes for the next keystroke.
    pub async fn complete_vm(&self, roles: &[RoleId], partial: &str) -> Vec<Choice> {
        let (service, roles, partial) = (self.clone(), roles.to_vec(), partial.to_owned());
        match tokio::task::spawn_blocking(move || service.complete_vm_now(&roles, &partial)).await {
            Ok(choices) => choices,
            Err(e) => {
                tracing::error!(error.message = %e, "the VM search failed; no suggestions");
                Vec::new()
            }
        }
    }

    /// [`Service::complete_vm`] on the calling thread.
    fn complete_vm_now(&self, roles: &[RoleId], partial: &str) -> Vec<Choice> {
        if let Some(waiting) = self.index_not_ready(partial) {
            return waiting;
        }
        let mappings = self.mappings();
        let Some(allowed) = self.allowed_vms(&mappings, roles) else {
            return Vec::new();
        };
        let query = partial.trim();
        let found = if allowed.vms.len() < SCAN_OWN_BELOW {
            search_own(&allowed, query, MAX_CHOICES)
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

    /// The VMs the mappings that apply to `roles` cover (`None` when none
    /// applies), computed once per set of applying mappings, index
    /// generation and mappings list.
    fn allowed_vms(
        &self,
        mappings: &Arc<Vec<RoleMapping>>,
        roles: &[RoleId],
    ) -> Option<Arc<AllowedVms>> {
        let generation = self.jit().index_generation();
        let applying = {
            let mut cache = self
                .allowed_cache()
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !cache.is_for(generation, mappings) || cache.sets.len() >= MAX_CACHED_SETS {
                *cache = AllowedCache::new(generation, mappings);
            }
            let applying = cache.applying(roles);
            if applying.is_empty() {
                return None;
            }
            if let Some(found) = cache.sets.get(&applying) {
                return Some(Arc::clone(found));
            }
            applying
        };
        let chosen: Vec<&RoleMapping> = applying
            .iter()
            .filter_map(|&i| mappings.get(i as usize))
            .collect();
        let vms = covered(self.jit().indexed_vms(), &chosen);
        let small = vms.len() < SCAN_OWN_BELOW;
        let allowed = Arc::new(AllowedVms {
            names: if small {
                vms.iter().map(|v| v.name.to_lowercase().into()).collect()
            } else {
                Vec::new()
            },
            members: if small {
                HashSet::new()
            } else {
                vms.iter().map(address).collect()
            },
            vms,
        });
        let mut cache = self
            .allowed_cache()
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if cache.is_for(generation, mappings) {
            cache.sets.insert(applying, Arc::clone(&allowed));
        }
        Some(allowed)
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc::{self, Receiver, Sender};
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::clock::{SharedClock, SystemClock};
    use crate::domain::mapping::MappingFile;
    use crate::domain::{JitRequestRecord, PolicyId, PortAliases};
    use crate::service::ServiceConfig;
    use crate::service::jit_port::{Enabled, Initiated, JitError, JitPort, OpenRequest};
    use crate::store::Store;

    const SUB: &str = "00000000-0000-0000-0000-00000000000a";

    /// An index of two VMs (`web-01` in `rg-web`, `db-01` in `rg-data`)
    /// whose listing waits until the test drops the gate's sender: a first
    /// query over a huge estate, made as slow as the test wants.
    struct HeldIndex {
        gate: Mutex<Receiver<()>>,
        /// How often the VMs were listed (a VM set computed).
        listings: AtomicUsize,
    }

    fn vm(rg: &str, name: &str) -> Arc<IndexedVm> {
        Arc::new(IndexedVm {
            vm_id: format!(
                "/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"
            ),
            subscription: SUB.into(),
            resource_group: rg.into(),
            name: name.into(),
            location: "westeurope".into(),
            policy: PolicyId::new(SUB, rg, "westeurope", "default")
                .expect("policy id")
                .into(),
            ports: Vec::new().into(),
        })
    }

    fn unreachable_azure() -> JitError {
        JitError::NoAnswer {
            message: "not in this test".into(),
            detail: "not in this test".into(),
            cause: anyhow::anyhow!("not in this test"),
        }
    }

    #[async_trait]
    impl JitPort for HeldIndex {
        async fn resolve(&self, _: &VmRef) -> Result<Arc<IndexedVm>, JitError> {
            Err(unreachable_azure())
        }
        fn resolve_cached(&self, _: &VmRef) -> Option<Arc<IndexedVm>> {
            None
        }
        fn by_key(&self, _: &VmKey) -> Option<Arc<IndexedVm>> {
            None
        }
        fn search(
            &self,
            _: &str,
            _: usize,
            _: &(dyn Fn(&IndexedVm) -> bool + Sync),
        ) -> Vec<Arc<IndexedVm>> {
            Vec::new()
        }
        fn index_state(&self) -> IndexState {
            IndexState::Ready { vms: 2 }
        }
        fn index_generation(&self) -> u64 {
            1
        }
        fn indexed_vms(&self) -> Vec<Arc<IndexedVm>> {
            // Waits until the sender is dropped; the bound only ends a run
            // of broken code, which then fails the test instead of hanging.
            self.listings.fetch_add(1, Ordering::SeqCst);
            let gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            let _ = gate.recv_timeout(Duration::from_secs(10));
            vec![vm("rg-data", "db-01"), vm("rg-web", "web-01")]
        }
        async fn initiate(&self, _: &IndexedVm, _: &OpenRequest) -> Result<Initiated, JitError> {
            Err(unreachable_azure())
        }
        async fn policy_requests(&self, _: &IndexedVm) -> Result<Vec<JitRequestRecord>, JitError> {
            Err(unreachable_azure())
        }
        async fn enable(&self, _: &VmRef) -> Result<Enabled, JitError> {
            Err(unreachable_azure())
        }
        async fn unprotected_vms(&self) -> Result<Vec<String>, JitError> {
            Err(unreachable_azure())
        }
        async fn requests(&self) -> Result<Vec<JitRequestRecord>, JitError> {
            Err(unreachable_azure())
        }
        async fn identity(&self) -> Result<Vec<String>, JitError> {
            Err(unreachable_azure())
        }
    }

    /// A service over [`HeldIndex`] whose one mapping gives role 100
    /// resource group `rg-web`; the gate's sender opens the listing.
    async fn service() -> (Service, Arc<HeldIndex>, Sender<()>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = format!("sqlite://{}", dir.path().join("ac.db").display());
        let store = Store::open(&db).await.expect("database opens");
        let mappings = MappingFile::parse(
            r#"
[[mapping]]
name = "web"
roles = ["100"]
vms = "rg:rg-web"
ports = ["ssh"]
max_duration = "3h"
"#,
            &PortAliases::default(),
        )
        .expect("mappings");
        store
            .import_mappings(&mappings, "test", chrono::Utc::now())
            .await
            .expect("mappings import");
        let (release, gate) = mpsc::channel();
        let jit = Arc::new(HeldIndex {
            gate: Mutex::new(gate),
            listings: AtomicUsize::new(0),
        });
        let clock: SharedClock = Arc::new(SystemClock);
        let config = ServiceConfig::default();
        let service = Service::new(store, Arc::clone(&jit) as _, clock, config)
            .await
            .expect("service");
        (service, jit, release, dir)
    }

    fn names(choices: &[Choice]) -> Vec<&str> {
        choices.iter().map(|c| c.name.as_str()).collect()
    }

    // See: issue 17 (the 2 s autocomplete budget could not interrupt a
    // search that ran on the runtime's thread).
    #[tokio::test]
    async fn a_slow_vm_search_leaves_the_answer_to_the_callers_budget() {
        // Arrange
        let (service, _, release, _dir) = service().await;
        let roles = [RoleId::parse("100").expect("role")];

        // Act: poll the search once, then take the other branch as the
        // dispatcher's timeout would when its budget runs out.
        let answered = tokio::select! {
            biased;
            choices = service.complete_vm(&roles, "") => Some(choices),
            () = std::future::ready(()) => None,
        };
        drop(release);
        let next = service.complete_vm(&roles, "").await;

        // Assert
        assert_eq!(
            answered, None,
            "the search held the caller until it finished, so no timeout could fire"
        );
        assert_eq!(
            names(&next),
            ["web-01 (rg-web)"],
            "once the listing is there, the member sees their VMs only"
        );
    }

    #[tokio::test]
    async fn reloading_unchanged_mappings_keeps_the_members_vm_set() {
        // Arrange
        let (service, index, release, _dir) = service().await;
        drop(release);
        let roles = [RoleId::parse("100").expect("role")];
        let before = service.complete_vm(&roles, "web").await;

        // Act
        service.reload_mappings().await.expect("reload");
        let after = service.complete_vm(&roles, "web").await;

        // Assert
        assert_eq!(names(&after), names(&before));
        assert_eq!(
            index.listings.load(Ordering::SeqCst),
            1,
            "the periodic reload threw the member's VM set away"
        );
    }
}
