//! The [`JitPort`] over ARM: names resolve through the [`SharedVmIndex`]
//! (one paged list per subscription, refreshed on an interval and on a miss
//! with a floor), so a granted access in steady state costs two ARM requests:
//! the initiate and the GET of its policy that reads it back. ARM's errors and wire types are turned into the port's
//! domain values here, and go no further.
//!
//! # ARM reads
//!
//! - The reconciler's listing of the policies ([`JitPort::requests`]) also
//!   rebuilds the index, and the periodic index refresh is skipped while
//!   that listing is recent enough ([`ArmJit::refresh_if_older`]).
//! - The list of all VMs (only needed to tell "exists, but has no JIT
//!   policy") is read at start-up, on a miss the floor lets through, and at
//!   most every [`VM_LIST_MAX_AGE`] with a refresh; `/jit-admin enable`
//!   reads it once.
//! - While the index is still loading, a `/jit` naming its resource group
//!   is looked up directly (one list of that group's policies) instead of
//!   waiting for the whole estate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};

use async_trait::async_trait;
use serde_json::json;

use super::client::ENABLE_POLICY_NAME;
use super::coalesce::Coalescer;
use super::ids::VmId;
use super::wire::{JitRequest, Policy, RequestPort};
use super::{ArmClient, ArmError, ResolveError, SharedVmIndex, VmIndex};
use crate::domain::connect::Connection;
use crate::domain::jit_policy;
use crate::domain::{
    IndexedVm, JitRequestRecord, PolicyDefaults, PolicyId, RequestedPort, RequestedVm, VmKey, VmRef,
};
use crate::service::jit_port::{Enabled, IndexState, Initiated, JitError, JitPort, OpenRequest};

/// How old the list of all VMs may get before a refresh reads it again.
pub const VM_LIST_MAX_AGE: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Azure's JIT API over ARM, with the VM index.
pub struct ArmJit {
    arm: ArmClient,
    index: SharedVmIndex,
    subscriptions: Vec<String>,
    enable: PolicyDefaults,
    /// The VMs of the subscriptions that were not indexed when last listed
    /// (for "exists but has no JIT policy"); only those, to keep it small.
    unindexed: RwLock<Arc<Vec<VmId>>>,
    /// When all VMs were last listed.
    vms_listed_at: Mutex<Option<DateTime<Utc>>>,
    /// One lock per policy id (lowercase) that enable writes.
    enable_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Read-backs of one policy share a read that began after they asked.
    read_backs: Coalescer<Vec<JitRequestRecord>>,
    /// VM address reads in flight: beyond these, a card goes without.
    address_reads: tokio::sync::Semaphore,
}

/// How many VMs' addresses are read at once (three reads each). A burst of
/// grants on many new VMs would otherwise spend ARM's read bucket on
/// addresses before the read-backs get it.
const ADDRESS_READS: usize = 4;

impl std::fmt::Debug for ArmJit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmJit")
            .field("subscriptions", &self.subscriptions)
            .finish_non_exhaustive()
    }
}

impl ArmJit {
    /// Wraps a client and an index; `enable` is what `/jit-admin enable`
    /// writes.
    pub fn new(
        arm: ArmClient,
        index: SharedVmIndex,
        subscriptions: Vec<String>,
        enable: PolicyDefaults,
    ) -> Self {
        Self {
            arm,
            index,
            subscriptions,
            enable,
            unindexed: RwLock::new(Arc::new(Vec::new())),
            vms_listed_at: Mutex::new(None),
            enable_locks: Mutex::default(),
            read_backs: Coalescer::default(),
            address_reads: tokio::sync::Semaphore::new(ADDRESS_READS),
        }
    }

    pub fn arm(&self) -> &ArmClient {
        &self.arm
    }

    pub fn subscriptions(&self) -> &[String] {
        &self.subscriptions
    }

    pub fn index(&self) -> &SharedVmIndex {
        &self.index
    }

    /// Rebuilds the index (one list per subscription) and, when it is
    /// older than [`VM_LIST_MAX_AGE`], the list of all VMs; returns the
    /// index's size.
    ///
    /// # Errors
    /// The first ARM failure of the index; the old index stays. A failed VM
    /// list only keeps the old list.
    pub async fn refresh(&self) -> Result<usize, ArmError> {
        let size = self
            .index
            .refresh(&self.arm, &self.subscriptions)
            .await?
            .len();
        // Without it, a VM without JIT reads as unknown until a miss may
        // refresh (the miss floor), so the member is not told to enable it.
        let listed = *self.vms_listed_at.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.index.clock().now();
        if listed.is_none_or(|t| now >= t + VM_LIST_MAX_AGE)
            && let Err(e) = self.list_all_vms(&mut |_, _| {}).await
        {
            tracing::warn!(error.message = %e, "listing all VMs failed; keeping the old list");
        }
        Ok(size)
    }

    /// [`ArmJit::refresh`] unless a listing (the reconciler's, say)
    /// rebuilt the index less than `max_age` ago. Returns whether it
    /// refreshed.
    ///
    /// # Errors
    /// As [`ArmJit::refresh`].
    pub async fn refresh_if_older(&self, max_age: chrono::TimeDelta) -> Result<bool, ArmError> {
        let now = self.index.clock().now();
        // A little slack: a listing that ran a moment before this tick
        // counts, or a refresh interval equal to the reconciler's would
        // read twice.
        let slack = max_age / 20;
        if self
            .index
            .refreshed_at()
            .is_some_and(|t| now + slack < t + max_age)
        {
            return Ok(false);
        }
        self.refresh().await.map(|_| true)
    }

    /// Streams every VM of the subscriptions (page by page, nothing of the
    /// estate kept whole), handing each with its location to `also`; keeps
    /// the ones not indexed for [`JitPort::resolve`] and returns them.
    async fn list_all_vms(
        &self,
        also: &mut (dyn FnMut(&VmId, &str) + Send),
    ) -> Result<Arc<Vec<VmId>>, ArmError> {
        let index = self.index.snapshot();
        let mut unindexed = Vec::new();
        for sub in &self.subscriptions {
            self.arm
                .each_vm(sub, &mut |vm| match VmId::parse(&vm.id) {
                    Ok(id) => {
                        also(&id, &vm.location);
                        if !index.contains_id(&id.to_string()) {
                            unindexed.push(id);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "skipping a VM with an unreadable id"),
                })
                .await?;
        }
        unindexed.shrink_to_fit();
        let unindexed = Arc::new(unindexed);
        *self.unindexed.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&unindexed);
        *self.vms_listed_at.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(self.index.clock().now());
        Ok(unindexed)
    }

    fn lookup(index: &VmIndex, vm: &VmRef) -> Result<Arc<IndexedVm>, ResolveError> {
        index.resolve(
            vm.subscription.as_ref().map(|s| s.as_str()),
            vm.resource_group.as_ref().map(|r| r.as_str()),
            vm.name.as_str(),
        )
    }

    /// While the index loads: the VM looked up in the policies of its
    /// resource group only (one small list per subscription). `None` when
    /// that does not find it (its policy may sit in another group) or ARM
    /// fails: the caller then waits for the index.
    async fn lookup_direct(&self, vm: &VmRef) -> Option<Result<Arc<IndexedVm>, JitError>> {
        let rg = vm.resource_group.as_ref()?;
        let subscriptions: Vec<&str> = match &vm.subscription {
            Some(s) => vec![s.as_str()],
            None => self.subscriptions.iter().map(String::as_str).collect(),
        };
        let mut policies = Vec::new();
        for sub in subscriptions {
            match self.arm.list_policies_in_group(sub, rg.as_str()).await {
                Ok(found) => policies.extend(found),
                Err(e) => {
                    tracing::debug!(error.message = %e, "direct look-up failed; waiting for the index");
                    return None;
                }
            }
        }
        match Self::lookup(&VmIndex::from_policies(&policies), vm) {
            Ok(found) => Some(Ok(found)),
            Err(ResolveError::Ambiguous { candidates }) => {
                Some(Err(JitError::Ambiguous { candidates }))
            }
            Err(ResolveError::NotFound { .. }) => None,
        }
    }

    fn matching(all: &[VmId], vm: &VmRef) -> Vec<VmId> {
        all.iter()
            .filter(|id| Self::is_named(id, vm))
            .cloned()
            .collect()
    }

    /// Whether `vm` names the VM `id`.
    fn is_named(id: &VmId, vm: &VmRef) -> bool {
        vm.name.matches(&id.name)
            && vm
                .resource_group
                .as_ref()
                .is_none_or(|rg| rg.matches(&id.resource_group))
            && vm
                .subscription
                .as_ref()
                .is_none_or(|s| s.as_str().eq_ignore_ascii_case(&id.subscription))
    }
}

impl From<ArmError> for JitError {
    /// `Unavailable` and `Unexpected` leave a write's outcome unknown; every
    /// other ARM error is an answer that nothing was done.
    fn from(e: ArmError) -> Self {
        let message = e.user_message();
        let detail = e.operator_message();
        let unknown = matches!(e, ArmError::Unavailable { .. } | ArmError::Unexpected(_));
        let cause = anyhow::Error::from(e);
        if unknown {
            Self::NoAnswer {
                message,
                detail,
                cause,
            }
        } else {
            Self::Refused {
                message,
                detail,
                cause,
            }
        }
    }
}

#[async_trait]
impl JitPort for ArmJit {
    async fn resolve(&self, vm: &VmRef) -> Result<Arc<IndexedVm>, JitError> {
        let missed = self.index.snapshot();
        match Self::lookup(&missed, vm) {
            Ok(found) => return Ok(found),
            Err(ResolveError::Ambiguous { candidates }) => {
                return Err(JitError::Ambiguous { candidates });
            }
            Err(ResolveError::NotFound { .. }) => {}
        }
        if !matches!(self.index.state(), IndexState::Ready { .. })
            && let Some(found) = self.lookup_direct(vm).await
        {
            return found;
        }
        // Waits for a refresh under way (the start-up load) before deciding.
        let refreshed = self
            .index
            .refresh_on_miss(&self.arm, &self.subscriptions)
            .await?;
        let latest = refreshed.clone().unwrap_or_else(|| self.index.snapshot());
        if !Arc::ptr_eq(&latest, &missed) {
            match Self::lookup(&latest, vm) {
                Ok(found) => return Ok(found),
                Err(ResolveError::Ambiguous { candidates }) => {
                    return Err(JitError::Ambiguous { candidates });
                }
                Err(ResolveError::NotFound { .. }) => {}
            }
        }
        // Only list the VMs again when the floor let us refresh.
        let exists_without_jit = match refreshed {
            // An indexed VM would have resolved: the unindexed ones tell.
            Some(_) => !Self::matching(&self.list_all_vms(&mut |_, _| {}).await?, vm).is_empty(),
            None => !Self::matching(
                &self.unindexed.read().unwrap_or_else(|e| e.into_inner()),
                vm,
            )
            .is_empty(),
        };
        Err(JitError::NotUnderJit {
            name: vm.to_string(),
            exists_without_jit,
        })
    }

    fn resolve_cached(&self, vm: &VmRef) -> Option<Arc<IndexedVm>> {
        Self::lookup(&self.index.snapshot(), vm).ok()
    }

    fn by_key(&self, key: &VmKey) -> Option<Arc<IndexedVm>> {
        self.index.snapshot().by_key(key)
    }

    fn search(
        &self,
        query: &str,
        limit: usize,
        keep: &(dyn Fn(&IndexedVm) -> bool + Sync),
    ) -> Vec<Arc<IndexedVm>> {
        self.index.snapshot().search(query, limit, keep)
    }

    fn index_state(&self) -> IndexState {
        self.index.state()
    }

    fn index_generation(&self) -> u64 {
        self.index.generation()
    }

    fn indexed_vms(&self) -> Vec<Arc<IndexedVm>> {
        self.index.snapshot().iter().cloned().collect()
    }

    async fn initiate(&self, vm: &IndexedVm, open: &OpenRequest) -> Result<Initiated, JitError> {
        let request = self
            .arm
            .initiate(
                &vm.policy,
                &vm.vm_id,
                &open.ports.numbers(),
                open.end,
                &open.source.to_string(),
                &open.justification,
            )
            .await?;
        let azure_ports: Vec<_> = request
            .virtual_machines
            .iter()
            .flat_map(|v| v.ports.iter())
            .collect();
        let azure_end = azure_ports
            .iter()
            .map(|p| p.end_time_utc)
            .max()
            .unwrap_or(open.end);
        Ok(Initiated {
            end: azure_end,
            detail: json!({
                "start": request.start_time_utc,
                "requestor": request.requestor,
                "ports": azure_ports.iter().map(|p| json!({
                    "number": p.number,
                    "status": p.status,
                    "end": p.end_time_utc,
                    "source": p.allowed_source_address_prefix,
                })).collect::<Vec<_>>(),
            }),
        })
    }

    async fn identity(&self) -> Result<Vec<String>, JitError> {
        Ok(self.arm.identity().await?)
    }

    async fn policy_requests(&self, vm: &IndexedVm) -> Result<Vec<JitRequestRecord>, JitError> {
        let key = vm.policy.to_string().to_ascii_lowercase();
        self.read_backs
            .read(&key, || async {
                let policy = self.arm.get_policy(&vm.policy).await?;
                Ok(records_of(&policy).collect())
            })
            .await
    }

    async fn enable(&self, vm: &VmRef) -> Result<Enabled, JitError> {
        let (target, location) = self.enable_target(vm).await?;
        if !jit_policy::names_fit(ENABLE_POLICY_NAME, &target.name) {
            return Err(JitError::NamesTooLong {
                vm: short_name(&target),
                policy: ENABLE_POLICY_NAME.to_owned(),
                limit: jit_policy::JIT_NAMES_LIMIT,
                total: ENABLE_POLICY_NAME.chars().count() + target.name.chars().count(),
            });
        }
        let policy = PolicyId::new(
            &target.subscription,
            &target.resource_group,
            &location,
            ENABLE_POLICY_NAME,
        )
        .map_err(|e| ArmError::InvalidInput(e.to_string()))?;
        let lock = self.enable_lock(&policy);
        let _one_at_a_time = lock.lock().await;
        self.refuse_if_covered(&target, &policy).await?;
        let enabled = self.write_until_shown(&target, &location, &policy).await?;
        // The index only: the VM list was read a moment ago.
        self.index.refresh(&self.arm, &self.subscriptions).await?;
        Ok(enabled)
    }

    async fn unprotected_vms(&self) -> Result<Vec<String>, JitError> {
        let unindexed = self.list_all_vms(&mut |_, _| {}).await?;
        let mut out: Vec<String> = unindexed
            .iter()
            .map(|id| format!("{}/{}", id.resource_group, id.name))
            .collect();
        out.sort();
        Ok(out)
    }

    fn cached_connection(&self, vm_id: &str) -> Option<Arc<Connection>> {
        self.index.connection_any_age(vm_id)
    }

    async fn connection(&self, vm: &IndexedVm) -> Option<Arc<Connection>> {
        if let Some(known) = self.index.connection(&vm.vm_id) {
            return Some(known);
        }
        let gate = self.index.connection_gate(&vm.vm_id);
        let _reading = gate.lock().await;
        if let Some(known) = self.index.connection(&vm.vm_id) {
            return Some(known);
        }
        // The address can be done without; the read-backs cannot.
        let Ok(_slot) = self.address_reads.try_acquire() else {
            tracing::debug!(vm = %vm.vm_id, "address reads busy: the card goes without the address");
            return None;
        };
        if !self.arm.reads_plenty() {
            tracing::debug!(vm = %vm.vm_id, "ARM read bucket under half: the card goes without the address");
            return None;
        }
        match self.arm.connection(&vm.vm_id).await {
            Ok(found) => Some(self.index.remember_connection(&vm.vm_id, found)),
            Err(e) => {
                tracing::warn!(vm = %vm.vm_id, error.message = %e, "the VM's address could not be read");
                None
            }
        }
    }

    /// One paged list of JIT policies per configured subscription, which
    /// also rebuilds the VM index: the index and the reconciler share it.
    async fn requests(&self) -> Result<Vec<JitRequestRecord>, JitError> {
        let mut all = Vec::new();
        self.index
            .refresh_with(&self.arm, &self.subscriptions, &mut |policy| {
                all.extend(records_of(policy));
            })
            .await?;
        Ok(all)
    }
}

/// How many times enable writes the policy when the read-back does not show
/// the VM (another writer overwrote it between our GET and PUT).
const ENABLE_ATTEMPTS: u32 = 3;

impl ArmJit {
    /// The one VM of the subscriptions `vm` names, with its location, from
    /// one list of the VMs.
    async fn enable_target(&self, vm: &VmRef) -> Result<(VmId, String), JitError> {
        let mut found: Vec<(VmId, String)> = Vec::new();
        self.list_all_vms(&mut |id, location| {
            if Self::is_named(id, vm) {
                found.push((id.clone(), location.to_owned()));
            }
        })
        .await?;
        match found.as_slice() {
            [] => Err(JitError::NoSuchVm {
                name: vm.to_string(),
            }),
            [_] => Ok(found.swap_remove(0)),
            many => Err(JitError::Ambiguous {
                candidates: many.iter().map(|(id, _)| short_name(id)).collect(),
            }),
        }
    }

    /// The lock serializing enables of one policy: each is a read-modify-write
    /// of the whole policy, so two at once would lose one. In-process only.
    fn enable_lock(&self, policy: &PolicyId) -> Arc<tokio::sync::Mutex<()>> {
        let key = policy.to_string().to_ascii_lowercase();
        let mut locks = self
            .enable_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(key).or_default().clone()
    }

    /// `AlreadyCovered` when another policy of the subscription holds the VM.
    async fn refuse_if_covered(&self, target: &VmId, ours: &PolicyId) -> Result<(), JitError> {
        let vm_id = target.to_string();
        let ours = ours.to_string();
        let policies = self.arm.list_policies(&target.subscription).await?;
        let covering = policies
            .iter()
            .find(|p| !p.id.eq_ignore_ascii_case(&ours) && ports_shown(p, &vm_id).is_some());
        match covering {
            Some(other) => Err(JitError::AlreadyCovered {
                vm: short_name(target),
                policy: policy_name(&other.id),
            }),
            None => Ok(()),
        }
    }

    /// Writes the VM into `policy` and reads the policy back, writing again
    /// (at most [`ENABLE_ATTEMPTS`] times) while Azure does not show the VM
    /// with every default port.
    async fn write_until_shown(
        &self,
        target: &VmId,
        location: &str,
        policy: &PolicyId,
    ) -> Result<Enabled, JitError> {
        let vm_id = target.to_string();
        for attempt in 1..=ENABLE_ATTEMPTS {
            self.arm
                .enable_vm(
                    &target.subscription,
                    &target.resource_group,
                    location,
                    &vm_id,
                    &self.enable,
                )
                .await?;
            let shown = self.arm.get_policy(policy).await?;
            match ports_shown(&shown, &vm_id) {
                Some(ports) if self.enable.ports.iter().all(|p| ports.contains(p)) => {
                    return Ok(Enabled {
                        vm: short_name(target),
                        policy: policy_name(&shown.id),
                        ports,
                    });
                }
                _ => tracing::warn!(
                    policy = %policy,
                    attempt,
                    "the policy read back without the enabled VM: another writer overwrote it"
                ),
            }
        }
        let message = format!(
            "Azure's policy still did not show {} after {ENABLE_ATTEMPTS} writes: someone else keeps changing it; try again",
            short_name(target)
        );
        Err(JitError::NoAnswer {
            detail: message.clone(),
            cause: anyhow::anyhow!("enable of {vm_id} overwritten {ENABLE_ATTEMPTS} times"),
            message,
        })
    }
}

/// `resource-group/name` of a VM.
fn short_name(vm: &VmId) -> String {
    format!("{}/{}", vm.resource_group, vm.name)
}

/// `resource-group/name` of a policy id as Azure shows it.
fn policy_name(id: &str) -> String {
    PolicyId::parse(id)
        .map(|p| format!("{}/{}", p.resource_group, p.name))
        .unwrap_or_else(|_| id.to_owned())
}

/// The ports `policy` shows for the VM `vm_id`, if it holds the VM.
fn ports_shown(policy: &Policy, vm_id: &str) -> Option<Vec<u16>> {
    policy
        .properties
        .virtual_machines
        .iter()
        .find(|v| v.id.eq_ignore_ascii_case(vm_id))
        .map(|v| v.ports.iter().map(|p| p.number).collect())
}

/// The requests a policy shows, as domain records.
fn records_of(policy: &Policy) -> impl Iterator<Item = JitRequestRecord> + '_ {
    policy
        .properties
        .requests
        .iter()
        .map(|request: &JitRequest| JitRequestRecord {
            policy_id: policy.id.clone(),
            start: request.start_time_utc,
            requestor: request.requestor.clone(),
            justification: request.justification.clone(),
            vms: request
                .virtual_machines
                .iter()
                .map(|vm| RequestedVm {
                    vm_id: vm.id.clone(),
                    display_name: match VmId::parse(&vm.id) {
                        Ok(id) => format!("{}/{}", id.resource_group, id.name),
                        Err(_) => vm.id.clone(),
                    },
                    ports: vm.ports.iter().map(requested_port).collect(),
                })
                .collect(),
        })
}

fn requested_port(port: &RequestPort) -> RequestedPort {
    let sources = match (
        &port.allowed_source_address_prefix,
        &port.allowed_source_address_prefixes,
    ) {
        (Some(one), _) => vec![one.clone()],
        (None, Some(many)) => many.clone(),
        (None, None) => Vec::new(),
    };
    RequestedPort {
        number: port.number,
        status: port.status.clone(),
        status_reason: port.status_reason.clone(),
        end: port.end_time_utc,
        sources,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm_errors_become_refusals_or_unknown_outcomes_with_the_same_sentence() {
        let refused = ArmError::BadRequest {
            code: "InvalidPort".into(),
            message: "port 23 is not in the policy".into(),
        };
        let sentence = refused.user_message();
        let e = JitError::from(refused);
        assert!(matches!(e, JitError::Refused { .. }));
        assert_eq!(e.user_message(), sentence);
        for unknown in [
            ArmError::Unavailable {
                attempts: 3,
                last: "timeout".into(),
            },
            ArmError::Unexpected(anyhow::anyhow!("HTTP 200 with an unreadable body")),
        ] {
            assert!(matches!(JitError::from(unknown), JitError::NoAnswer { .. }));
        }
        assert!(matches!(
            JitError::from(ArmError::Throttled { attempts: 3 }),
            JitError::Refused { .. }
        ));
    }

    #[test]
    fn a_sign_in_problem_is_told_in_full_to_the_operator_only() {
        let e = JitError::from(ArmError::Unauthorized {
            message: "azure.arm_audience: the token service does not know the audience `https://arm-proxy.example`".into(),
        });
        assert!(
            e.operator_message().contains("https://arm-proxy.example"),
            "{}",
            e.operator_message()
        );
        assert!(
            !e.user_message().contains("arm-proxy"),
            "{}",
            e.user_message()
        );

        let refused = ArmError::BadRequest {
            code: "InvalidPort".into(),
            message: "port 23 is not in the policy".into(),
        };
        let sentence = refused.user_message();
        assert_eq!(JitError::from(refused).operator_message(), sentence);
    }
}
