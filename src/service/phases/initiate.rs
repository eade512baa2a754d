//! Phase 4: the one ARM call that opens a window, for a new grant or an
//! extension, through the [`JitPort`](crate::service::JitPort).

use chrono::{DateTime, TimeDelta, Utc};

use crate::domain::IndexedVm;
use crate::service::Service;
use crate::service::jit_port::{Initiated, JitError, OpenRequest};
use crate::store::Grant;

/// How far under the policy's maximum a window ends at most: Azure checks
/// `endTimeUtc` against its own clock, which may be behind ours. A request
/// for exactly the maximum then still works with our clock up to 2 minutes
/// ahead of Azure's; it ends 2.5 minutes early, and the grant shows the end
/// Azure recorded.
pub const CLOCK_SKEW_MARGIN: TimeDelta = TimeDelta::seconds(150);

impl Service {
    /// Asks Azure to open `grant`'s ports on `vm` for its source until
    /// `end`, with `justification` on Azure's record. Failures are logged
    /// here; the caller settles them.
    ///
    /// # Errors
    /// The port's [`JitError`].
    pub(crate) async fn initiate(
        &self,
        vm: &IndexedVm,
        grant: &Grant,
        end: DateTime<Utc>,
        justification: String,
    ) -> Result<Initiated, JitError> {
        let latest =
            self.clock().now() + vm.max_duration_for(&grant.ports.numbers()) - CLOCK_SKEW_MARGIN;
        if end > latest {
            tracing::info!(asked = %end, sent = %latest, "end capped under the policy maximum for clock skew");
        }
        let open = OpenRequest {
            ports: grant.ports.clone(),
            source: grant.source,
            end: end.min(latest),
            justification,
        };
        let outcome = self.jit().initiate(vm, &open).await;
        if let Err(error) = &outcome {
            tracing::warn!(error.message = %error, error.cause_chain = ?error, "initiate failed");
        }
        outcome
    }
}
