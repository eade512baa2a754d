//! The Azure adapter: endpoints per cloud, ARM tokens from `azure_identity`,
//! the ARM client for the Defender for Cloud JIT API (api-version
//! `2020-01-01`), the in-memory VM index, and [`ArmJit`], which implements
//! the use cases' [`JitPort`](crate::service::jit_port::JitPort) with them.
//!
//! # Layout
//!
//! * [`arm_jit`]: [`ArmJit`], the port over ARM: ARM's errors and wire types
//!   become domain values there (reconciliation's list of requests too).
//! * [`cloud`]: `public`/`usgov`/`china`/`custom` → ARM endpoint, authority
//!   host, ARM scope; overrides win.
//! * [`credential`]: the [`TokenSource`] seam and its azure_identity
//!   implementation (managed identity, workload identity, client secret, CLI).
//! * [`client`]: [`ArmClient`]: list/get/put policies, enable a VM, initiate;
//!   retries on 429/5xx/timeouts with backoff and `Retry-After`.
//! * [`index`]: [`VmIndex`] / [`SharedVmIndex`]: name → VM and policy, from
//!   one paged list per subscription; autocomplete search. The entries are
//!   the domain's [`IndexedVm`](crate::domain::IndexedVm); checking a request
//!   against them is the domain's too ([`crate::domain::policy_check`]).
//! * [`coalesce`]: read-backs of one policy share one read that began after
//!   they asked.
//! * [`wire`]: serde types of the API; [`ids`]: ARM id parsing; [`retry`]:
//!   the retry policy; [`error`]: [`ArmError`] and request counts.
//!
//! # Honest about Azure
//!
//! Azure has no revoke for a JIT grant. Close early (in the service) re-initiates
//! the same ports with a shorter window and reads the policy back
//! ([`JitPort::policy_requests`](crate::service::JitPort::policy_requests)), so
//! the caller can say what really happened: "closes at HH:MM; established
//! connections are not cut". Azure restores the NSG when the window ends;
//! connections already established survive that.
//!
//! Tokens never appear in logs, errors or `Debug` output; every ARM call is
//! logged at debug level with operation, status, latency and attempt only.

pub mod arm_jit;
pub mod client;
pub mod cloud;
pub mod coalesce;
pub mod credential;
pub mod error;
pub mod ids;
pub mod index;
pub mod pacing;
pub mod retry;
pub mod wire;

pub use arm_jit::ArmJit;
pub use client::{ArmClient, ArmClientOptions};
pub use cloud::{AzureCloud, Endpoints, resolve_endpoints};
pub use credential::{
    AzureTokenSource, Bearer, CredentialKind, CredentialOptions, TokenError, TokenSource,
    UserAssigned,
};
pub use error::{ArmError, ArmStats, Operation};
pub use ids::VmId;
pub use index::{ResolveError, SharedVmIndex, VmIndex};
pub use retry::RetryPolicy;
