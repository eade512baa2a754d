//! The phases of putting a window on a VM, named so that `/jit`, Extend,
//! `/jit-admin explain` and approvals ([`super::approval`]) are built from
//! the same parts rather than each from its own copy:
//!
//! 1. [`resolve`]: the VM a member names, through the index, with one error
//!    type for every caller.
//! 2. [`decide`](mod@decide): the member's mappings, then the VM's Azure JIT policy
//!    (ports, window, source). Pure.
//! 3. [`persist`]: the grant, `requested`, with its audit events, in one
//!    transaction, before Azure is asked anything.
//! 4. [`initiate`]: the one write to ARM, through the [`JitPort`](super::JitPort).
//! 5. [`settle`]: what Azure answered, written with its audit event and the
//!    timers in one transaction; then the policy is read back and every
//!    other grant on the VM settled from it ([`super::truth`]). An answer
//!    that is no answer (timeout, 5xx, a body that does not parse) is
//!    settled from the policy instead ([`unclear`]).
//!
//! An approval is `decide` then `persist` in a waiting state
//! (`pending_approval`), and `decide` again, `initiate` and `settle` when
//! approved.

pub mod decide;
pub mod initiate;
pub mod persist;
pub mod resolve;
pub mod settle;
pub mod unclear;

use chrono::{DateTime, Utc};

use crate::domain::{AccessRequest, MappingName, RequestId, SourcePrefix};
use crate::interactions::Invocation;

pub use decide::{Ask, Refusal, decide};
pub use resolve::{ResolveVmError, ResolvedVm};

/// One `/jit` request on its way through the phases.
#[derive(Debug, Clone, Copy)]
pub struct Asking<'a> {
    /// Who asks, and through which interaction.
    pub who: &'a Invocation,
    /// The interaction id, which is the request id.
    pub id: &'a RequestId,
    pub request: &'a AccessRequest,
    pub now: DateTime<Utc>,
}

/// What `resolve` and `decide` let through.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub target: ResolvedVm,
    /// The source the window opens for.
    pub source: SourcePrefix,
    /// The mapping that allows it.
    pub mapping: MappingName,
}
