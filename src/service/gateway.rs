//! The Azure side of the use cases, as a port: VM lookup from the index,
//! initiate, close early, enable and coverage. [`crate::azure::gateway`]
//! implements it over ARM; tests may fake it.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::azure::{ArmError, CloseOutcome, IndexedVm};
use crate::domain::VmRef;

/// Why a VM reference did not resolve.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// No VM with a JIT policy has that name.
    #[error("no VM named {name} is under JIT")]
    NotFound {
        /// The name asked for.
        name: String,
        /// The VM exists in a configured subscription but has no JIT policy.
        exists_without_jit: bool,
    },
    /// Several VMs match.
    #[error("several VMs match")]
    Ambiguous {
        /// Their qualified names.
        candidates: Vec<String>,
    },
    /// Azure could not be asked.
    #[error(transparent)]
    Azure(#[from] ArmError),
}

/// What Azure answered to an initiate.
#[derive(Debug, Clone)]
pub struct Initiated {
    /// When Azure closes the port (its `endTimeUtc`).
    pub end: DateTime<Utc>,
    /// Azure's answer, for the record.
    pub detail: serde_json::Value,
}

/// Why enabling JIT on a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum EnableError {
    /// No VM of that name in the configured subscriptions.
    #[error("no VM named {0} in the configured subscriptions")]
    NotFound(String),
    /// Several VMs match.
    #[error("several VMs match")]
    Ambiguous(Vec<String>),
    /// Azure refused or failed.
    #[error(transparent)]
    Azure(#[from] ArmError),
}

/// Azure, as the use cases need it.
#[async_trait]
pub trait JitGateway: Send + Sync + 'static {
    /// Resolves a VM through the index, refreshing it on a miss (with a
    /// floor, so a typo cannot hammer ARM).
    async fn resolve(&self, vm: &VmRef) -> Result<Arc<IndexedVm>, LookupError>;
    /// Resolves from memory only (autocomplete never calls Azure).
    fn resolve_cached(&self, vm: &VmRef) -> Option<Arc<IndexedVm>>;
    /// Searches the index in memory: prefix matches first, then substrings.
    fn search(
        &self,
        query: &str,
        limit: usize,
        keep: &(dyn Fn(&IndexedVm) -> bool + Sync),
    ) -> Vec<Arc<IndexedVm>>;
    /// Opens `ports` of `vm` for `source` until `end`.
    async fn initiate(
        &self,
        vm: &IndexedVm,
        ports: &[u16],
        end: DateTime<Utc>,
        source: &str,
        justification: &str,
    ) -> Result<Initiated, ArmError>;
    /// Closes as early as Azure allows and reports what Azure then shows.
    async fn close_early(
        &self,
        vm: &IndexedVm,
        ports: &[u16],
        source: &str,
        justification: &str,
        now: DateTime<Utc>,
    ) -> Result<CloseOutcome, ArmError>;
    /// Puts a VM under JIT with the configured defaults; returns its
    /// qualified name.
    async fn enable(&self, vm: &VmRef) -> Result<String, EnableError>;
    /// VMs of the configured subscriptions that no JIT policy protects.
    async fn unprotected_vms(&self) -> Result<Vec<String>, ArmError>;
}
