//! Phase 1: the VM a member (or an admin, or the CLI) names, resolved
//! through the [`JitPort`]'s index. Every caller gets the same
//! [`ResolveVmError`] and turns it into its own words.

use std::sync::Arc;

use crate::domain::{IndexedVm, VmIdentity, VmRef};
use crate::service::Service;
use crate::service::jit_port::{JitError, JitPort};

/// A VM under JIT with its validated names.
#[derive(Debug, Clone)]
pub struct ResolvedVm {
    /// The index entry: ids and the policy's port rules.
    pub vm: Arc<IndexedVm>,
    /// Its names, as authorization and the audit log use them.
    pub identity: VmIdentity,
}

/// Why a VM reference did not resolve to one VM under JIT.
#[derive(Debug, thiserror::Error)]
pub enum ResolveVmError {
    /// No VM with a JIT policy has that name.
    #[error("no VM named {name} is under JIT")]
    NotFound {
        /// The name asked for.
        name: String,
        /// The VM exists in a configured subscription but has no JIT policy.
        exists_without_jit: bool,
    },
    /// Several VMs match.
    #[error("several VMs are named like that: {}", candidates.join(", "))]
    Ambiguous {
        /// Their qualified names.
        candidates: Vec<String>,
    },
    /// Azure could not be asked (logged where it happened).
    #[error("{message}")]
    Azure {
        /// One sentence for a member or an admin in Discord.
        message: String,
        /// One sentence for the operator running the CLI, who can fix a
        /// credential or audience problem (see [`JitError::operator_message`]).
        detail: String,
    },
    /// Azure's names for the VM fall outside its own rules.
    #[error(transparent)]
    Unexpected(anyhow::Error),
}

/// Resolves `vm` through `jit`: the one place the port's `resolve` is
/// called.
///
/// # Errors
/// [`ResolveVmError`]; Azure failures are logged here.
pub async fn resolve_vm(jit: &dyn JitPort, vm: &VmRef) -> Result<ResolvedVm, ResolveVmError> {
    let found = jit.resolve(vm).await.map_err(|e| match e {
        JitError::NotUnderJit {
            name,
            exists_without_jit,
        } => ResolveVmError::NotFound {
            name,
            exists_without_jit,
        },
        JitError::NoSuchVm { name } => ResolveVmError::NotFound {
            name,
            exists_without_jit: false,
        },
        JitError::Ambiguous { candidates } => ResolveVmError::Ambiguous { candidates },
        azure @ (JitError::Refused { .. } | JitError::NoAnswer { .. }) => {
            tracing::error!(error.message = %azure, error.cause_chain = ?azure, "VM lookup failed");
            ResolveVmError::Azure {
                message: azure.user_message(),
                detail: azure.operator_message(),
            }
        }
    })?;
    let identity = found.identity().ok_or_else(|| {
        ResolveVmError::Unexpected(anyhow::anyhow!(
            "indexed VM {} has names outside Azure's rules",
            found.vm_id
        ))
    })?;
    Ok(ResolvedVm {
        vm: found,
        identity,
    })
}

impl Service {
    /// Resolves `vm` through the index (see [`resolve_vm`]).
    ///
    /// # Errors
    /// [`ResolveVmError`].
    pub async fn resolve_vm(&self, vm: &VmRef) -> Result<ResolvedVm, ResolveVmError> {
        resolve_vm(self.jit(), vm).await
    }
}
