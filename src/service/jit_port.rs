//! Azure, as the use cases need it: a port that takes and returns domain
//! values and fails with one [`JitError`]. The ARM adapter (`ArmJit`, in the
//! Azure adapter) implements it; nothing of ARM (its errors, wire types or ids)
//! crosses it.
//!
//! Resolving a VM never costs ARM traffic in steady state (the adapter
//! keeps an index), so a request costs two ARM calls: the initiate and the
//! read-back of its policy ([`JitPort::policy_requests`]).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::connect::Connection;
use crate::domain::{IndexedVm, JitRequestRecord, PortSpec, SourcePrefix, VmKey, VmRef};

/// Why Azure did not do what the port was asked.
#[derive(Debug, thiserror::Error)]
pub enum JitError {
    /// No VM with a JIT policy matches the reference.
    #[error("no VM named {name} is under JIT")]
    NotUnderJit {
        /// The reference, as given.
        name: String,
        /// The VM exists in a configured subscription but has no JIT policy.
        exists_without_jit: bool,
    },
    /// No VM of that name in the configured subscriptions at all.
    #[error("no VM named {name} in the configured subscriptions")]
    NoSuchVm {
        /// The reference, as given.
        name: String,
    },
    /// Several VMs match.
    #[error("several VMs are named like that: {}", candidates.join(", "))]
    Ambiguous {
        /// Their qualified names.
        candidates: Vec<String>,
    },
    /// The VM is already in another JIT policy; enabling it in ours would
    /// give it two policies that overwrite each other's rules.
    #[error("{vm} is already under JIT in policy {policy}: change its ports there")]
    AlreadyCovered {
        /// The VM, `resource-group/name`.
        vm: String,
        /// The covering policy, `resource-group/name`.
        policy: String,
    },
    /// Azure does not let the policy cover a VM of so long a name
    /// ([`crate::domain::jit_policy::JIT_NAMES_LIMIT`]); nothing was written.
    #[error(
        "{vm} cannot be put under JIT by /jit-admin enable: Azure allows at most {limit} characters for the policy's name ({policy}) and the VM's name together, and they have {total}. Enable it in a policy with a shorter name in the Azure portal"
    )]
    NamesTooLong {
        /// The VM, `resource-group/name`.
        vm: String,
        /// The policy's name.
        policy: String,
        /// The limit.
        limit: usize,
        /// Both names' characters.
        total: usize,
    },
    /// Azure answered and did not do it: nothing changed in Azure.
    #[error("Azure refused: {cause}")]
    Refused {
        /// One sentence for the member.
        message: String,
        /// The sentence for an operator (see [`JitError::operator_message`]).
        detail: String,
        /// What Azure said; logged, never shown.
        #[source]
        cause: anyhow::Error,
    },
    /// Azure could not be reached or gave no usable answer: whether a write
    /// took effect is unknown until the policy is read back.
    #[error("no usable answer from Azure: {cause}")]
    NoAnswer {
        /// One sentence for the member.
        message: String,
        /// The sentence for an operator (see [`JitError::operator_message`]).
        detail: String,
        /// What went wrong; logged, never shown.
        #[source]
        cause: anyhow::Error,
    },
}

impl JitError {
    /// One clear sentence for a member or an admin: no ids, tokens or
    /// internals beyond Azure's own explanation of a refusal.
    pub fn user_message(&self) -> String {
        match self {
            Self::NotUnderJit { .. }
            | Self::NoSuchVm { .. }
            | Self::Ambiguous { .. }
            | Self::AlreadyCovered { .. }
            | Self::NamesTooLong { .. } => self.to_string(),
            Self::Refused { message, .. } | Self::NoAnswer { message, .. } => message.clone(),
        }
    }

    /// One sentence for the operator running the CLI: where the fix is
    /// theirs (Drawbridge's credential or token audience), what Azure said
    /// and the setting to change; otherwise the member's sentence. Never a
    /// secret or a token.
    pub fn operator_message(&self) -> String {
        match self {
            Self::Refused { detail, .. } | Self::NoAnswer { detail, .. } => detail.clone(),
            _ => self.user_message(),
        }
    }
}

/// A window to open: `ports` of a VM for `source` until `end`.
#[derive(Debug, Clone)]
pub struct OpenRequest {
    pub ports: PortSpec,
    pub source: SourcePrefix,
    /// When Azure should close them again.
    pub end: DateTime<Utc>,
    /// What Azure records: who, why, which request (see
    /// [`super::request::justification`]).
    pub justification: String,
}

/// What Azure answered to an initiate.
#[derive(Debug, Clone)]
pub struct Initiated {
    /// When Azure closes the port (its `endTimeUtc`).
    pub end: DateTime<Utc>,
    /// Azure's answer, for the record.
    pub detail: serde_json::Value,
}

/// What Azure's policy shows for a VM after `/jit-admin enable`, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enabled {
    /// The VM, `resource-group/name`.
    pub vm: String,
    /// The policy that holds it, `resource-group/name`.
    pub policy: String,
    /// The ports the policy shows for the VM.
    pub ports: Vec<u16>,
}

/// Where the VM index stands: the bot answers while it loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexState {
    /// No listing has finished yet (the first one may be under way).
    Loading,
    /// Never built: the last attempt failed; it is retried.
    Failed,
    /// Built, with this many VMs (a later refresh may have failed: the old
    /// snapshot keeps serving).
    Ready { vms: usize },
}

/// Azure's JIT API, as the use cases need it.
#[async_trait]
pub trait JitPort: Send + Sync + 'static {
    /// Resolves a VM through the index, refreshing it on a miss (with a
    /// floor, so a typo cannot hammer ARM).
    ///
    /// # Errors
    /// `NotUnderJit`, `Ambiguous`, or Azure's failure to list.
    async fn resolve(&self, vm: &VmRef) -> Result<Arc<IndexedVm>, JitError>;
    /// Resolves from memory only (autocomplete never calls Azure).
    fn resolve_cached(&self, vm: &VmRef) -> Option<Arc<IndexedVm>>;
    /// The indexed VM an autocomplete value ([`VmKey`]) names, from memory.
    fn by_key(&self, key: &VmKey) -> Option<Arc<IndexedVm>>;
    /// Searches the index in memory: prefix matches first, then substrings.
    fn search(
        &self,
        query: &str,
        limit: usize,
        keep: &(dyn Fn(&IndexedVm) -> bool + Sync),
    ) -> Vec<Arc<IndexedVm>>;
    /// Where the index stands.
    fn index_state(&self) -> IndexState;
    /// A number that changes whenever the index is replaced, so what is
    /// computed from it can be cached until then.
    fn index_generation(&self) -> u64;
    /// Every indexed VM, sorted by name (for sets computed once per
    /// [`JitPort::index_generation`]).
    fn indexed_vms(&self) -> Vec<Arc<IndexedVm>>;
    /// Opens the window and reports the end Azure shows.
    ///
    /// # Errors
    /// `Refused` (nothing opened) or `NoAnswer` (unknown).
    async fn initiate(&self, vm: &IndexedVm, open: &OpenRequest) -> Result<Initiated, JitError>;
    /// The requests Azure's policy for `vm` shows now (one GET of that
    /// policy): how every write is read back.
    ///
    /// # Errors
    /// `NoAnswer` (or `Refused`) when the policy cannot be read.
    async fn policy_requests(&self, vm: &IndexedVm) -> Result<Vec<JitRequestRecord>, JitError>;
    /// Puts a VM under JIT with the configured defaults, one enable per
    /// policy at a time, and returns what Azure's policy shows once read back.
    ///
    /// # Errors
    /// `NoSuchVm`, `Ambiguous`, `AlreadyCovered`, Azure's refusal, or
    /// `NoAnswer` when the read-back never shows the VM.
    async fn enable(&self, vm: &VmRef) -> Result<Enabled, JitError>;
    /// VMs of the configured subscriptions that no JIT policy protects.
    ///
    /// # Errors
    /// Azure's failure to list.
    async fn unprotected_vms(&self) -> Result<Vec<String>, JitError>;
    /// Every JIT request Azure's policies of the configured subscriptions
    /// show (their history included), for reconciliation.
    ///
    /// # Errors
    /// Azure's failure to list.
    async fn requests(&self) -> Result<Vec<JitRequestRecord>, JitError>;
    /// How to reach `vm` (its public address or DNS name, else its private
    /// one, and the SSH user), cached; `None` when Azure cannot say (the
    /// grant card then goes without it).
    async fn connection(&self, vm: &IndexedVm) -> Option<Arc<Connection>> {
        let _ = vm;
        None
    }
    /// What [`JitPort::connection`] last read for `vm_id`, however old,
    /// without asking Azure (for reminders, written inside a transaction).
    fn cached_connection(&self, vm_id: &str) -> Option<Arc<Connection>> {
        let _ = vm_id;
        None
    }
    /// Drawbridge's own identity as its credential names it (the token's
    /// `oid`, `appid`): what Azure records as `requestor` on our requests.
    ///
    /// # Errors
    /// When no token can be had.
    async fn identity(&self) -> Result<Vec<String>, JitError>;
}
