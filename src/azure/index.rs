//! The VM index: every VM of every configured subscription's JIT policies,
//! in memory, for name resolution and autocomplete.
//!
//! Building it costs one paged `JitNetworkAccessPolicies_List` per
//! subscription, the only ARM traffic name resolution ever causes; the
//! reconciler's listing of the same policies rebuilds it too
//! ([`SharedVmIndex::refresh_with`]), so the two share one read. A request
//! then resolves its VM from memory: it costs no ARM call before the
//! initiate.
//!
//! # Memory
//!
//! A 50,000-VM estate must fit in a few tens of MiB, so:
//! - pages are streamed: each policy is turned into index entries as it is
//!   parsed and dropped ([`ArmClient::each_policy`]);
//! - a VM is stored once ([`IndexedVm`]: its id and name, with the
//!   subscription, resource group, location, policy and port rules shared
//!   by the VMs that have the same ones);
//! - the one search key is a single string of every lowercase name, and
//!   autocomplete values ([`VmKey`]) are kept as their 64 bits;
//! - a refresh reuses every VM that did not change from the snapshot it
//!   replaces, so building the new index while the old one serves costs
//!   the new tables, not a second copy of the estate.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::{Arc, Mutex, RwLock},
};

use chrono::{DateTime, TimeDelta, Utc};
use ipnet::IpNet;

use super::{
    client::ArmClient,
    error::ArmError,
    ids::VmId,
    wire::{Policy, PortRule},
};
use crate::clock::SharedClock;
use crate::domain::connect::Connection;
use crate::domain::{AllowedSources, IndexedVm, PolicyId, PolicyPort, VmKey};
pub use crate::service::jit_port::IndexState;

/// Why a name did not resolve to exactly one VM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No VM with a JIT policy has this name (in the given scope).
    #[error("no VM named {name} has a JIT policy; an admin can enable it with /jit-admin enable")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// Several VMs have this name.
    #[error("{} VMs are named like that: {}; say which one", candidates.len(), candidates.join(", "))]
    Ambiguous {
        /// Qualified names (`rg/name`, or `sub/rg/name` across subscriptions), sorted.
        candidates: Vec<String>,
    },
}

/// An immutable snapshot of the VMs of all indexed JIT policies.
#[derive(Debug, Default)]
pub struct VmIndex {
    /// Sorted by (lowercase name, lowercase rg, subscription).
    vms: Vec<Arc<IndexedVm>>,
    /// Every lowercase name followed by `\n`, in the order of `vms`: the
    /// one search key, for binary search by name and one-pass substring
    /// search.
    blob: String,
    /// Start of each name in `blob`.
    starts: Vec<u32>,
    /// Each VM's [`VmKey`] bits with its place in `vms`, sorted by key.
    keys: Vec<(u64, u32)>,
}

/// Lowercase, as the index compares names (no allocation).
fn lower(s: &str) -> impl Iterator<Item = char> + '_ {
    s.chars().flat_map(char::to_lowercase)
}

impl VmIndex {
    /// Builds an index from policies. Entries Azure could not have meant (bad
    /// ids, unreadable durations) are skipped with a warning; a VM listed twice
    /// is indexed once.
    pub fn from_policies<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> Self {
        let empty = VmIndex::default();
        let mut builder = IndexBuilder::new(&empty);
        for policy in policies {
            builder.add_policy(policy);
        }
        builder.finish()
    }

    /// Builds an index from ready entries.
    pub fn from_vms(vms: Vec<IndexedVm>) -> Self {
        Self::from_shared(vms.into_iter().map(Arc::new).collect())
    }

    fn from_shared(mut vms: Vec<Arc<IndexedVm>>) -> Self {
        vms.sort_unstable_by(|a, b| {
            lower(&a.name)
                .cmp(lower(&b.name))
                .then_with(|| lower(&a.resource_group).cmp(lower(&b.resource_group)))
                .then_with(|| a.subscription.cmp(&b.subscription))
        });
        vms.shrink_to_fit();
        let mut blob = String::with_capacity(vms.iter().map(|v| v.name.len() + 1).sum());
        let mut starts = Vec::with_capacity(vms.len());
        for vm in &vms {
            starts.push(u32::try_from(blob.len()).unwrap_or(u32::MAX));
            blob.extend(lower(&vm.name));
            blob.push('\n');
        }
        blob.shrink_to_fit();
        let mut keys: Vec<(u64, u32)> = vms
            .iter()
            .enumerate()
            .map(|(i, v)| (v.key().bits(), u32::try_from(i).unwrap_or(u32::MAX)))
            .collect();
        keys.sort_unstable();
        Self {
            vms,
            blob,
            starts,
            keys,
        }
    }

    pub fn len(&self) -> usize {
        self.vms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vms.is_empty()
    }

    /// All VMs, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<IndexedVm>> {
        self.vms.iter()
    }

    /// The lowercase name of the `i`th VM.
    fn name_at(&self, i: usize) -> &str {
        let start = self.starts[i] as usize;
        let end = self
            .starts
            .get(i + 1)
            .map_or(self.blob.len(), |&s| s as usize);
        &self.blob[start..end - 1]
    }

    /// The first place in `lo..` whose name does not satisfy `before`
    /// (names are sorted, so `before` holds for a prefix of them).
    fn partition(&self, lo: usize, before: impl Fn(&str) -> bool) -> usize {
        let (mut lo, mut hi) = (lo, self.vms.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if before(self.name_at(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Indices of the VMs whose lowercase name starts with `prefix`.
    fn prefix_range(&self, prefix: &str) -> std::ops::Range<usize> {
        let lo = self.partition(0, |n| n < prefix);
        lo..self.partition(lo, |n| n.starts_with(prefix))
    }

    /// Finds the one VM called `name` (case-insensitive), optionally within a
    /// subscription and resource group.
    ///
    /// # Errors
    /// [`ResolveError::NotFound`] or [`ResolveError::Ambiguous`] with qualified names.
    pub fn resolve(
        &self,
        subscription: Option<&str>,
        resource_group: Option<&str>,
        name: &str,
    ) -> Result<Arc<IndexedVm>, ResolveError> {
        let lower_name = name.to_lowercase();
        let lo = self.partition(0, |n| n < lower_name.as_str());
        let hi = self.partition(lo, |n| n == lower_name);
        let found: Vec<&Arc<IndexedVm>> = self.vms[lo..hi]
            .iter()
            .filter(|v| subscription.is_none_or(|s| v.subscription.eq_ignore_ascii_case(s)))
            .filter(|v| resource_group.is_none_or(|rg| lower(&v.resource_group).eq(lower(rg))))
            .collect();
        match found.as_slice() {
            [] => Err(ResolveError::NotFound {
                name: name.to_owned(),
            }),
            [one] => Ok(Arc::clone(one)),
            many => {
                let one_sub = many
                    .iter()
                    .all(|v| v.subscription.eq_ignore_ascii_case(&many[0].subscription));
                let mut candidates: Vec<String> = many
                    .iter()
                    .map(|v| {
                        if one_sub {
                            v.qualified_name()
                        } else {
                            v.fully_qualified_name()
                        }
                    })
                    .collect();
                candidates.sort();
                Err(ResolveError::Ambiguous { candidates })
            }
        }
    }

    /// The VM an autocomplete value names.
    pub fn by_key(&self, key: &VmKey) -> Option<Arc<IndexedVm>> {
        let bits = key.bits();
        let at = self.keys.partition_point(|(k, _)| *k < bits);
        self.keys[at..]
            .iter()
            .take_while(|(k, _)| *k == bits)
            .map(|&(_, i)| &self.vms[i as usize])
            .find(|v| v.key() == *key)
            .map(Arc::clone)
    }

    /// Whether the VM with resource id `vm_id` is indexed (case-insensitive).
    pub fn contains_id(&self, vm_id: &str) -> bool {
        self.by_key(&VmKey::of(vm_id))
            .is_some_and(|v| v.vm_id.eq_ignore_ascii_case(vm_id))
    }

    /// Autocomplete: VMs whose name starts with `query` (case-insensitive),
    /// then VMs whose name merely contains it, each group by name, at most
    /// `limit`, keeping only those `filter` accepts.
    pub fn search(
        &self,
        query: &str,
        limit: usize,
        filter: impl Fn(&IndexedVm) -> bool,
    ) -> Vec<Arc<IndexedVm>> {
        self.search_where(query, limit, |i| filter(&self.vms[i]))
    }

    /// [`VmIndex::search`] with a filter on places in the index (see
    /// [`VmIndex::places`]), so a precomputed set can answer it.
    pub fn search_where(
        &self,
        query: &str,
        limit: usize,
        filter: impl Fn(usize) -> bool,
    ) -> Vec<Arc<IndexedVm>> {
        let q = query.to_lowercase();
        let mut out = Vec::new();
        if limit == 0 {
            return out;
        }
        for i in self.prefix_range(&q) {
            if filter(i) {
                out.push(Arc::clone(&self.vms[i]));
                if out.len() == limit {
                    return out;
                }
            }
        }
        if q.is_empty() || q.contains('\n') {
            return out;
        }
        let mut last = None;
        for (offset, _) in self.blob.match_indices(q.as_str()) {
            let i = self.starts.partition_point(|&s| s as usize <= offset) - 1;
            if last == Some(i) || self.name_at(i).starts_with(q.as_str()) {
                continue; // a second hit in one name, or a prefix match (already listed)
            }
            last = Some(i);
            if filter(i) {
                out.push(Arc::clone(&self.vms[i]));
                if out.len() == limit {
                    break;
                }
            }
        }
        out
    }

    /// Each VM with its place in the index (what [`VmIndex::search_where`]
    /// filters on).
    pub fn places(&self) -> impl Iterator<Item = (usize, &Arc<IndexedVm>)> {
        self.vms.iter().enumerate()
    }
}

/// Builds a [`VmIndex`] policy by policy, sharing what VMs have in common
/// and reusing the VMs of `previous` that did not change.
pub struct IndexBuilder<'a> {
    previous: &'a VmIndex,
    vms: Vec<Arc<IndexedVm>>,
    /// [`VmKey`] bits of the VMs taken (a VM listed twice is indexed once).
    seen: HashSet<u64>,
    strings: HashSet<Arc<str>>,
    policies: HashMap<PolicyId, Arc<PolicyId>>,
    port_sets: HashSet<Arc<[PolicyPort]>>,
    /// Policies read.
    pub policy_count: usize,
}

impl<'a> IndexBuilder<'a> {
    /// A builder reusing unchanged VMs of `previous`.
    pub fn new(previous: &'a VmIndex) -> Self {
        Self {
            previous,
            vms: Vec::with_capacity(previous.len()),
            seen: HashSet::with_capacity(previous.len()),
            strings: HashSet::new(),
            policies: HashMap::new(),
            port_sets: HashSet::new(),
            policy_count: 0,
        }
    }

    /// Adds the VMs of one policy.
    pub fn add_policy(&mut self, policy: &Policy) {
        self.policy_count += 1;
        let policy_id = match PolicyId::parse(&policy.id) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(error = %e, "skipping a JIT policy with an unexpected id");
                return;
            }
        };
        let location = self.intern(policy.location.as_deref().unwrap_or(&policy_id.location));
        let shared_policy = match self.policies.get(&policy_id) {
            Some(p) => Arc::clone(p),
            None => {
                let p = Arc::new(policy_id.clone());
                self.policies.insert(policy_id, Arc::clone(&p));
                p
            }
        };
        for vm in &policy.properties.virtual_machines {
            let vm_id = match VmId::parse(&vm.id) {
                Ok(id) => id,
                Err(e) => {
                    tracing::warn!(error = %e, policy = %policy.id, "skipping a VM with an unexpected id");
                    continue;
                }
            };
            let key = VmKey::of(&vm.id);
            if !self.seen.insert(key.bits()) {
                continue;
            }
            let ports: Vec<PolicyPort> = vm
                .ports
                .iter()
                .filter_map(|rule| policy_port(rule, &vm.id))
                .collect();
            let candidate = IndexedVm {
                vm_id: vm.id.clone(),
                subscription: self.intern(&vm_id.subscription),
                resource_group: self.intern(&vm_id.resource_group),
                name: vm_id.name,
                location: Arc::clone(&location),
                policy: Arc::clone(&shared_policy),
                ports: self.port_set(ports),
            };
            let vm = match self.previous.by_key(&key) {
                Some(old) if *old == candidate => old,
                _ => Arc::new(candidate),
            };
            self.vms.push(vm);
        }
    }

    /// The index of every VM added.
    pub fn finish(self) -> VmIndex {
        VmIndex::from_shared(self.vms)
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(Arc::clone(&shared));
        shared
    }

    fn port_set(&mut self, ports: Vec<PolicyPort>) -> Arc<[PolicyPort]> {
        if let Some(shared) = self.port_sets.get(ports.as_slice()) {
            return Arc::clone(shared);
        }
        let shared: Arc<[PolicyPort]> = Arc::from(ports);
        self.port_sets.insert(Arc::clone(&shared));
        shared
    }
}

fn policy_port(rule: &PortRule, vm_id: &str) -> Option<PolicyPort> {
    if rule.number == 0 {
        // The schema allows it; no request can name it, so it is never offered.
        tracing::warn!(
            vm = vm_id,
            "the JIT policy has a rule for port 0, which no request can name"
        );
    }
    let Some(max_duration) = parse_iso_duration(&rule.max_request_access_duration) else {
        tracing::warn!(vm = vm_id, port = rule.number, value = %rule.max_request_access_duration,
            "skipping a port rule with an unreadable maxRequestAccessDuration");
        return None;
    };
    let raw: Vec<&str> = match (
        &rule.allowed_source_address_prefix,
        &rule.allowed_source_address_prefixes,
    ) {
        (Some(one), _) => vec![one.as_str()],
        (None, Some(many)) => many.iter().map(String::as_str).collect(),
        // Neither given: Azure's portal writes `*` for "Any"; treat absence the same.
        (None, None) => vec!["*"],
    };
    let allowed_sources = if raw.iter().any(|p| p.trim() == "*") {
        AllowedSources::Any
    } else {
        AllowedSources::Prefixes(
            raw.iter()
                .filter_map(|p| {
                    let parsed = parse_prefix(p);
                    if parsed.is_none() {
                        tracing::warn!(vm = vm_id, port = rule.number, prefix = %p, "ignoring an unreadable allowed source");
                    }
                    parsed
                })
                .collect(),
        )
    };
    Some(PolicyPort {
        number: rule.number,
        protocol: rule.protocol.clone(),
        max_duration,
        allowed_sources,
    })
}

/// An IP address (as a host prefix) or a CIDR.
pub fn parse_prefix(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

/// Parses an ISO 8601 duration of days, hours, minutes and seconds
/// (`PT5M`, `PT1H30M`, `P1D`, `P1DT2H`, `PT90S`, `PT0.5S`, `P1W`). Years and
/// months (not fixed lengths) and anything malformed give `None`.
pub fn parse_iso_duration(s: &str) -> Option<TimeDelta> {
    let rest = s.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return None,
        None => (rest, None),
    };
    if date.is_empty() && time.is_none() {
        return None;
    }
    // Components in order; each unit at most once.
    fn components(part: &str, units: &[(char, i64)]) -> Option<TimeDelta> {
        let mut total = TimeDelta::zero();
        let mut next_unit = 0;
        let mut number = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
                continue;
            }
            let pos = units[next_unit..].iter().position(|(u, _)| *u == c)? + next_unit;
            next_unit = pos + 1;
            let secs = units[pos].1;
            if number.is_empty() || (number.contains('.') && secs != 1) {
                return None;
            }
            let value: f64 = number.parse().ok()?;
            if value > 1e7 {
                return None;
            }
            total += TimeDelta::milliseconds((value * secs as f64 * 1000.0).round() as i64);
            number.clear();
        }
        number.is_empty().then_some(total)
    }
    let mut total = components(date, &[('W', 7 * 86_400), ('D', 86_400)])?;
    if let Some(t) = time {
        total += components(t, &[('H', 3_600), ('M', 60), ('S', 1)])?;
    }
    Some(total)
}

/// The current [`VmIndex`], replaced atomically on refresh.
pub struct SharedVmIndex {
    current: RwLock<Arc<VmIndex>>,
    clock: SharedClock,
    miss_floor: TimeDelta,
    last_refresh: Mutex<Option<DateTime<Utc>>>,
    /// When a listing last succeeded (`None`: never; the index is loading).
    last_success: Mutex<Option<DateTime<Utc>>>,
    /// Why the last refresh failed, if it did: a miss inside the floor then
    /// reports that, not "no such VM", which the index could not know.
    last_failure: Mutex<Option<ArmError>>,
    refreshing: tokio::sync::Mutex<()>,
    /// Each VM's connection address (lowercase VM id → when read, what),
    /// read from Azure on first need and kept for [`CONNECTION_MAX_AGE`].
    connections: Mutex<std::collections::HashMap<String, CachedConnection>>,
    /// One lock per VM whose address is being read, so a burst of grants on
    /// one VM reads it from Azure once and the rest wait for the cache.
    connection_gates: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Bumped after every attempt, for [`SharedVmIndex::settled`].
    attempts: tokio::sync::watch::Sender<u64>,
    /// Bumped whenever a new snapshot is swapped in.
    generation: std::sync::atomic::AtomicU64,
}

/// A connection address and when it was read.
type CachedConnection = (DateTime<Utc>, Arc<Connection>);

/// How long a VM's connection address is trusted before it is read again
/// (a public IP can be re-assigned).
pub const CONNECTION_MAX_AGE: TimeDelta = TimeDelta::hours(1);

impl fmt::Debug for SharedVmIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedVmIndex")
            .field("vms", &self.snapshot().len())
            .field("miss_floor", &self.miss_floor)
            .finish_non_exhaustive()
    }
}

/// Default floor between refreshes caused by misses: one index for the
/// whole bot, so however many members type unknown names, Azure is re-listed
/// at most once a minute.
pub const DEFAULT_MISS_FLOOR: TimeDelta = TimeDelta::seconds(60);

impl SharedVmIndex {
    /// An empty index; misses refresh at most once per `miss_floor`.
    pub fn new(clock: SharedClock, miss_floor: TimeDelta) -> Self {
        Self {
            current: RwLock::new(Arc::new(VmIndex::default())),
            clock,
            miss_floor,
            last_refresh: Mutex::new(None),
            last_success: Mutex::new(None),
            last_failure: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            connections: Mutex::default(),
            connection_gates: Mutex::default(),
            attempts: tokio::sync::watch::channel(0).0,
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The cached connection address of `vm_id`, if read less than
    /// [`CONNECTION_MAX_AGE`] ago.
    pub fn connection(&self, vm_id: &str) -> Option<Arc<Connection>> {
        let now = self.clock.now();
        let cache = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(&vm_id.to_ascii_lowercase())
            .filter(|(at, _)| now - *at < CONNECTION_MAX_AGE)
            .map(|(_, c)| Arc::clone(c))
    }

    /// The lock to hold while reading `vm_id`'s address from Azure.
    pub fn connection_gate(&self, vm_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self
            .connection_gates
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Arc::clone(gates.entry(vm_id.to_ascii_lowercase()).or_default())
    }

    /// The cached connection address of `vm_id`, however old.
    pub fn connection_any_age(&self, vm_id: &str) -> Option<Arc<Connection>> {
        let cache = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(&vm_id.to_ascii_lowercase())
            .map(|(_, c)| Arc::clone(c))
    }

    /// Remembers what Azure said about `vm_id`'s addresses.
    pub fn remember_connection(&self, vm_id: &str, connection: Connection) -> Arc<Connection> {
        let connection = Arc::new(connection);
        let now = self.clock.now();
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vm_id.to_ascii_lowercase(), (now, Arc::clone(&connection)));
        connection
    }

    /// The current snapshot (cheap).
    pub fn snapshot(&self) -> Arc<VmIndex> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Loading, failed, or ready with its size.
    pub fn state(&self) -> IndexState {
        if self
            .last_success
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return IndexState::Ready {
                vms: self.snapshot().len(),
            };
        }
        let failed = self
            .last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if failed {
            IndexState::Failed
        } else {
            IndexState::Loading
        }
    }

    /// Changes whenever a new snapshot is swapped in.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The clock the index keeps time by.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// When a listing last succeeded.
    pub fn refreshed_at(&self) -> Option<DateTime<Utc>> {
        *self.last_success.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves once the index is no longer [`IndexState::Loading`]: after
    /// the first attempt, successful or not.
    pub async fn settled(&self) {
        let mut attempts = self.attempts.subscribe();
        let _ = attempts
            .wait_for(|_| self.state() != IndexState::Loading)
            .await;
    }

    /// Rebuilds the index from every subscription's policies and swaps it in.
    /// On any error the old snapshot stays.
    ///
    /// # Errors
    /// The first [`ArmError`] of a list call.
    pub async fn refresh(
        &self,
        arm: &ArmClient,
        subscriptions: &[String],
    ) -> Result<Arc<VmIndex>, ArmError> {
        self.refresh_with(arm, subscriptions, &mut |_| {}).await
    }

    /// [`SharedVmIndex::refresh`], also handing every listed policy to
    /// `also` (the reconciler reads Azure's requests from the same listing).
    ///
    /// # Errors
    /// The first [`ArmError`] of a list call.
    pub async fn refresh_with(
        &self,
        arm: &ArmClient,
        subscriptions: &[String],
        also: &mut (dyn FnMut(&Policy) + Send),
    ) -> Result<Arc<VmIndex>, ArmError> {
        let _one_at_a_time = self.refreshing.lock().await;
        self.refresh_locked(arm, subscriptions, also).await
    }

    async fn refresh_locked(
        &self,
        arm: &ArmClient,
        subscriptions: &[String],
        also: &mut (dyn FnMut(&Policy) + Send),
    ) -> Result<Arc<VmIndex>, ArmError> {
        *self.last_refresh.lock().unwrap_or_else(|e| e.into_inner()) = Some(self.clock.now());
        let result = self.build(arm, subscriptions, also).await;
        let mut failure = self.last_failure.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Ok(index) => {
                *failure = None;
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(index);
                self.generation
                    .fetch_add(1, std::sync::atomic::Ordering::Release);
                *self.last_success.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(self.clock.now());
            }
            Err(e) => *failure = Some(e.replay()),
        }
        drop(failure);
        self.attempts.send_modify(|n| *n += 1);
        result
    }

    /// Streams every subscription's policies into a new index that reuses
    /// the current one's unchanged VMs.
    async fn build(
        &self,
        arm: &ArmClient,
        subscriptions: &[String],
        also: &mut (dyn FnMut(&Policy) + Send),
    ) -> Result<Arc<VmIndex>, ArmError> {
        let previous = self.snapshot();
        let mut builder = IndexBuilder::new(&previous);
        for sub in subscriptions {
            arm.each_policy(sub, &mut |policy| {
                also(&policy);
                builder.add_policy(&policy);
            })
            .await?;
        }
        let policies = builder.policy_count;
        let index = Arc::new(builder.finish());
        tracing::info!(vms = index.len(), policies, "VM index refreshed");
        Ok(index)
    }

    /// After a failed lookup: refreshes unless the last refresh (or attempt)
    /// was less than the floor ago, so a typo cannot hammer ARM. Returns the
    /// new snapshot, or `None` when it did not refresh.
    ///
    /// # Errors
    /// The [`ArmError`] of the refresh; inside the floor, that of the last
    /// attempt if it failed.
    pub async fn refresh_on_miss(
        &self,
        arm: &ArmClient,
        subscriptions: &[String],
    ) -> Result<Option<Arc<VmIndex>>, ArmError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let last = *self.last_refresh.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| self.clock.now() < t + self.miss_floor) {
            let failure = self.last_failure.lock().unwrap_or_else(|e| e.into_inner());
            return match failure.as_ref() {
                Some(e) => Err(e.replay()),
                None => Ok(None),
            };
        }
        self.refresh_locked(arm, subscriptions, &mut |_| {})
            .await
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::wire::List;

    const SUB_A: &str = "00000000-0000-0000-0000-00000000000a";
    const SUB_B: &str = "00000000-0000-0000-0000-00000000000b";

    fn vm(sub: &str, rg: &str, name: &str) -> IndexedVm {
        IndexedVm {
            vm_id: format!(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"
            ),
            subscription: sub.into(),
            resource_group: rg.into(),
            name: name.into(),
            location: "westeurope".into(),
            policy: PolicyId::new(sub, rg, "westeurope", "default")
                .unwrap()
                .into(),
            ports: Vec::new().into(),
        }
    }

    #[test]
    fn iso_durations_parse() {
        let m = TimeDelta::minutes;
        for (s, want) in [
            ("PT5M", m(5)),
            ("PT3H", m(180)),
            ("PT1H30M", m(90)),
            ("P1D", m(1440)),
            ("P1DT2H", m(1560)),
            ("PT90S", TimeDelta::seconds(90)),
            ("PT0.5S", TimeDelta::milliseconds(500)),
            ("P1W", m(7 * 1440)),
            ("PT24H", m(1440)),
        ] {
            assert_eq!(parse_iso_duration(s), Some(want), "{s}");
        }
        for bad in [
            "", "P", "PT", "3H", "PT3", "PTH", "P1Y", "P1M", "PT1M1H", "PT1H1H", "P1.5D", "PT-1H",
            "pt3h", "P1DT",
        ] {
            assert_eq!(parse_iso_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn builds_from_the_spec_example_with_policy_rg_and_location() {
        let text = std::fs::read_to_string(
            crate::azure::wire::spec_dir()
                .join("examples/JitNetworkAccessPolicies/GetJitNetworkAccessPoliciesSubscription_example.json"),
        )
        .unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let list: List<Policy> =
            serde_json::from_value(doc["responses"]["200"]["body"].clone()).unwrap();
        let index = VmIndex::from_policies(&list.value);
        let vm1 = index.resolve(None, None, "VM1").unwrap();
        assert_eq!(vm1.policy.name, "default");
        assert_eq!(&*vm1.location, "westeurope");
        assert_eq!(vm1.port(22).unwrap().max_duration, TimeDelta::hours(3));
        assert_eq!(vm1.port(22).unwrap().allowed_sources, AllowedSources::Any);
    }

    #[test]
    fn resolves_case_insensitively_and_reports_ambiguity() {
        let index = VmIndex::from_vms(vec![
            vm(SUB_A, "rg1", "web-01"),
            vm(SUB_A, "rg2", "Web-01"),
            vm(SUB_B, "rg1", "db-01"),
            vm(SUB_A, "rg1", "db-01"),
        ]);
        assert_eq!(
            index
                .resolve(None, Some("RG2"), "WEB-01")
                .unwrap()
                .resource_group,
            "rg2".into()
        );
        assert_eq!(
            index.resolve(None, None, "web-01").unwrap_err(),
            ResolveError::Ambiguous {
                candidates: vec!["rg1/web-01".into(), "rg2/Web-01".into()]
            }
        );
        let err = index.resolve(None, None, "db-01").unwrap_err();
        assert_eq!(
            err,
            ResolveError::Ambiguous {
                candidates: vec![format!("{SUB_A}/rg1/db-01"), format!("{SUB_B}/rg1/db-01")]
            }
        );
        assert!(err.to_string().contains("say which one"));
        assert_eq!(
            index
                .resolve(Some(SUB_B), None, "DB-01")
                .unwrap()
                .subscription,
            SUB_B.into()
        );
        assert!(matches!(
            index.resolve(None, None, "web-0"),
            Err(ResolveError::NotFound { .. })
        ));
    }

    #[test]
    fn search_lists_prefixes_first_then_substrings_within_the_limit() {
        let index = VmIndex::from_vms(
            [
                "app-web",
                "web-02",
                "Web-01",
                "db",
                "legacyweb",
                "webwebweb",
            ]
            .iter()
            .map(|n| vm(SUB_A, "rg", n))
            .collect(),
        );
        let names = |v: Vec<Arc<IndexedVm>>| v.iter().map(|v| v.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(index.search("WEB", 10, |_| true)),
            ["Web-01", "web-02", "webwebweb", "app-web", "legacyweb"]
        );
        assert_eq!(
            names(index.search("web", 2, |_| true)),
            ["Web-01", "web-02"]
        );
        assert_eq!(
            names(index.search("web", 10, |v| v.name != "web-02")),
            ["Web-01", "webwebweb", "app-web", "legacyweb"]
        );
        assert_eq!(index.search("", 3, |_| true).len(), 3);
        assert!(index.search("zzz", 3, |_| true).is_empty());
    }

    #[test]
    fn search_is_correct_over_50000_vms() {
        let vms: Vec<IndexedVm> = (0..50_000)
            .map(|i| vm(SUB_A, &format!("rg{}", i % 7), &format!("vm-{i:05}-x")))
            .collect();
        let index = VmIndex::from_vms(vms);
        assert_eq!(index.len(), 50_000);
        // Prefix: vm-1234x = 10 VMs, all listed, in order.
        let hits = index.search("VM-1234", 25, |_| true);
        assert_eq!(hits.len(), 10);
        assert!(hits.windows(2).all(|w| w[0].name < w[1].name));
        assert!(hits.iter().all(|v| v.name.starts_with("vm-1234")));
        // Substring only: "4999" is in vm-04999-x and vm-4999?-x: 11 names.
        let hits = index.search("4999", 100, |_| true);
        let expected: Vec<String> = (0..50_000)
            .map(|i| format!("vm-{i:05}-x"))
            .filter(|n| n.contains("4999"))
            .collect();
        assert_eq!(
            hits.iter().map(|v| v.name.clone()).collect::<Vec<_>>(),
            expected
        );
        // A filter and the limit apply together.
        let hits = index.search("-x", 25, |v| &*v.resource_group == "rg3");
        assert_eq!(hits.len(), 25);
        assert!(hits.iter().all(|v| &*v.resource_group == "rg3"));
        assert_eq!(
            index.resolve(None, None, "VM-49999-X").unwrap().name,
            "vm-49999-x"
        );
    }

    #[test]
    fn port_rules_read_sources_and_skip_bad_durations() {
        let rule = |prefix: Option<&str>, prefixes: Option<Vec<&str>>, dur: &str| PortRule {
            number: 22,
            protocol: "TCP".into(),
            allowed_source_address_prefix: prefix.map(Into::into),
            allowed_source_address_prefixes: prefixes
                .map(|v| v.into_iter().map(Into::into).collect()),
            max_request_access_duration: dur.into(),
            extra: Default::default(),
        };
        assert_eq!(
            policy_port(&rule(Some("*"), None, "PT1H"), "vm")
                .unwrap()
                .allowed_sources,
            AllowedSources::Any
        );
        assert_eq!(
            policy_port(
                &rule(
                    None,
                    Some(vec!["10.0.0.0/8", "203.0.113.7", "Internet"]),
                    "PT1H"
                ),
                "vm"
            )
            .unwrap()
            .allowed_sources,
            AllowedSources::Prefixes(vec![
                "10.0.0.0/8".parse().unwrap(),
                "203.0.113.7/32".parse().unwrap()
            ])
        );
        assert!(policy_port(&rule(Some("*"), None, "soon"), "vm").is_none());
    }
}
