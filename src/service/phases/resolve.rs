//! Phase 1: the VM a member (or an admin, or the CLI) names, resolved
//! through the [`JitPort`]'s index. Every caller gets the same
//! [`ResolveVmError`] and turns it into its own words.

use std::sync::Arc;

use crate::domain::authorize;
use crate::domain::{IndexedVm, RoleId, RoleMapping, VmIdentity, VmRef};
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
        azure @ (JitError::Refused { .. }
        | JitError::NoAnswer { .. }
        | JitError::AlreadyCovered { .. }
        | JitError::NamesTooLong { .. }) => {
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

/// Resolves `vm` among the VMs the mappings of `roles` cover, so that a
/// member learns nothing of the others: a VM outside them is "not found",
/// exactly as a VM that does not exist; an ambiguous name lists only the
/// VMs they may request (and one such VM is simply the answer); "exists
/// without JIT" is said only of a name their mappings could cover.
///
/// # Errors
/// [`ResolveVmError`], as [`resolve_vm`].
pub async fn resolve_vm_within(
    jit: &dyn JitPort,
    mappings: &[RoleMapping],
    roles: &[RoleId],
    vm: &VmRef,
) -> Result<ResolvedVm, ResolveVmError> {
    let reachable = |identity: &VmIdentity| authorize::may_request_vm(mappings, roles, identity);
    let hidden = |exists_without_jit: bool| ResolveVmError::NotFound {
        name: vm.to_string(),
        exists_without_jit: exists_without_jit
            && mappings
                .iter()
                .any(|m| m.applies_to(roles) && m.vms.may_match_name(vm.name.as_str())),
    };
    match resolve_vm(jit, vm).await {
        Ok(found) if reachable(&found.identity) => Ok(found),
        Ok(_) => Err(hidden(false)),
        Err(ResolveVmError::NotFound {
            exists_without_jit, ..
        }) => Err(hidden(exists_without_jit)),
        Err(ResolveVmError::Ambiguous { candidates }) => {
            let mut mine: Vec<(String, ResolvedVm)> = candidates
                .into_iter()
                .filter_map(|name| {
                    let found = jit.resolve_cached(&VmRef::parse(&name).ok()?)?;
                    let identity = found.identity()?;
                    reachable(&identity).then_some((
                        name,
                        ResolvedVm {
                            vm: found,
                            identity,
                        },
                    ))
                })
                .collect();
            match mine.len() {
                0 => Err(hidden(false)),
                1 => Ok(mine.remove(0).1),
                _ => Err(ResolveVmError::Ambiguous {
                    candidates: mine.into_iter().map(|(name, _)| name).collect(),
                }),
            }
        }
        Err(e) => Err(e),
    }
}

impl Service {
    /// Resolves `vm` among the VMs `roles` may request (see
    /// [`resolve_vm_within`]).
    ///
    /// # Errors
    /// [`ResolveVmError`].
    pub async fn resolve_vm_for(
        &self,
        mappings: &[RoleMapping],
        roles: &[RoleId],
        vm: &VmRef,
    ) -> Result<ResolvedVm, ResolveVmError> {
        resolve_vm_within(self.jit(), mappings, roles, vm).await
    }

    /// Resolves `vm` through the index (see [`resolve_vm`]).
    ///
    /// # Errors
    /// [`ResolveVmError`].
    pub async fn resolve_vm(&self, vm: &VmRef) -> Result<ResolvedVm, ResolveVmError> {
        resolve_vm(self.jit(), vm).await
    }
}
