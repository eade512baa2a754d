//! The pure domain: validated values, role mappings, the authorization
//! decision, the grant state machine, audit events, and Azure JIT policies
//! as values with the pre-check of a request against them. Nothing here does I/O;
//! every function is a function of its arguments (time is passed in).
//!
//! The request grammar lives in [`request`]: `/jit ssh myVM 2h` parses into one
//! [`AccessRequest`], and the Discord layer fills the same type from
//! slash-command options through the same value parsers.

pub mod audit;
pub mod authorize;
pub mod connect;
pub mod duration;
pub mod grant;
pub mod ids;
pub mod ip_link;
pub mod jit_policy;
pub mod mapping;
pub mod place;
pub mod policy_check;
pub mod port;
pub mod port_truth;
pub mod preflight;
pub mod rate;
pub mod report;
pub mod request;
pub mod source;
pub mod vm;

pub use audit::{AuditAction, AuditEvent, Outcome};
pub use authorize::{AccessQuery, Allowed, Decision, Denial, authorize};
pub use duration::{AccessDuration, DurationError};
pub use grant::{GrantEvent, GrantState, InvalidTransition};
pub use ids::{IdError, RequestId, RoleId, Snowflake, UserId};
pub use jit_policy::{
    AllowedSources, IndexedVm, InvalidPolicyId, JitRequestRecord, PolicyDefaults, PolicyId,
    PolicyPort, RequestedPort, RequestedVm, VmKey,
};
pub use mapping::{
    MappingError, MappingName, OnConflict, PortSelector, RoleMapping, RoleSet, SourcePolicy,
    VmSelector,
};
pub use policy_check::{PolicyViolation, check_request};
pub use port::{Port, PortAliases, PortSpec, PortSpecError};
pub use port_truth::{HeldWindow, Holder, PortTruth, PortView};
pub use request::{AccessRequest, Reason, ReasonError, RequestParseError};
pub use source::{SourceError, SourcePrefix};
pub use vm::{ResourceGroupName, SubscriptionId, VmIdentity, VmName, VmRef, VmRefError};
