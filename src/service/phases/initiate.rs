//! Phase 4: the one ARM call that opens a window, for a new grant or an
//! extension, through the [`JitPort`](crate::service::JitPort).

use chrono::{DateTime, Utc};

use crate::domain::IndexedVm;
use crate::service::Service;
use crate::service::jit_port::{Initiated, JitError, OpenRequest};
use crate::store::Grant;

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
        let open = OpenRequest {
            ports: grant.ports.clone(),
            source: grant.source,
            end,
            justification,
        };
        let outcome = self.jit().initiate(vm, &open).await;
        if let Err(error) = &outcome {
            tracing::warn!(error.message = %error, error.cause_chain = ?error, "initiate failed");
        }
        outcome
    }
}
