//! The pure domain: validated values, role mappings, the authorization
//! decision, the grant state machine and audit events. Nothing here does I/O;
//! every function is a function of its arguments (time is passed in).
//!
//! The request grammar lives in [`request`]: `/jit ssh myVM 2h` parses into one
//! [`AccessRequest`], and the Discord layer fills the same type from
//! slash-command options through the same value parsers.

pub mod audit;
pub mod authorize;
pub mod duration;
pub mod grant;
pub mod ids;
pub mod mapping;
pub mod port;
pub mod request;
pub mod source;
pub mod vm;

pub use audit::{AuditAction, AuditEvent, Outcome};
pub use authorize::{AccessQuery, Allowed, Decision, Denial, authorize};
pub use duration::{AccessDuration, DurationError};
pub use grant::{GrantEvent, GrantState, InvalidTransition};
pub use ids::{IdError, RequestId, RoleId, Snowflake, UserId};
pub use mapping::{MappingError, MappingName, PortSelector, RoleMapping, SourcePolicy, VmSelector};
pub use port::{Port, PortAliases, PortSpec, PortSpecError};
pub use request::{AccessRequest, Reason, ReasonError, RequestParseError};
pub use source::{SourceError, SourcePrefix};
pub use vm::{ResourceGroupName, SubscriptionId, VmIdentity, VmName, VmRef, VmRefError};
