//! Phase 5, when Azure gave no usable answer to an initiate (a timeout, a
//! 5xx, a 2xx body that does not parse): the request may or may not have
//! opened the port, so failure is never recorded on that alone. The grant
//! goes to `pending_azure` (the member sees "checking with Azure…") and the
//! policy is read: our request there (its justification names the grant,
//! Azure's `requestor` is our identity, it started after we asked, for the
//! grant's VM, ports and source) settles it `active` with its timers;
//! none settles it `failed`. When the read fails too, the grant stays
//! `pending_azure` in the store and the reconciler settles it from its next
//! listing ([`Service::settle_pending`]), after a restart as well.

use chrono::{DateTime, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::domain::{GrantEvent, IndexedVm, JitRequestRecord, RequestId};
use crate::service::jit_port::Initiated;
use crate::service::reconcile::pending_settled_by;
use crate::service::request::RequestError;
use crate::service::{Service, delivery, messages};
use crate::store::{Grant, StoreError};

/// What a member whose request Azure's policy does not show is told.
pub const NOT_OPENED: &str = "Azure gave no clear answer, and its policy shows no request of ours for this access: the port was not opened. Please try again.";

impl Service {
    /// Marks `grant` `pending_azure`, reads `vm`'s policy and settles it.
    /// Returns the grant still `pending_azure` when the policy cannot be
    /// read either.
    ///
    /// # Errors
    /// [`RequestError::Azure`] when Azure shows it did not open the port.
    pub(crate) async fn settle_unclear(
        &self,
        by: &str,
        vm: &IndexedVm,
        grant: Grant,
    ) -> Result<Grant, RequestError> {
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        let pending = tx
            .transition_grant(&grant.request_id, &GrantEvent::Unclear, now)
            .await?;
        tx.commit().await?;
        let records = match self.jit().policy_requests(vm).await {
            Ok(records) => records,
            Err(error) => {
                tracing::warn!(error.message = %error, error.cause_chain = ?error, "policy read failed; the reconciler settles the grant");
                return Ok(pending);
            }
        };
        let settled = self.settle_pending(by, &pending, &records, now).await?;
        match &settled.failure {
            Some(message) if settled.state.is_final() => Err(RequestError::Azure {
                message: message.clone(),
            }),
            _ => Ok(settled),
        }
    }

    /// Settles a `pending_azure` grant from Azure's `records` read at
    /// `read_at`: `active` with timers when our request is there, else
    /// `failed`; audited as by `by`.
    ///
    /// # Errors
    /// If the store fails.
    pub(crate) async fn settle_pending(
        &self,
        by: &str,
        grant: &Grant,
        records: &[JitRequestRecord],
        read_at: DateTime<Utc>,
    ) -> Result<Grant, StoreError> {
        let identity = self.store().our_requestor().await?;
        let found = records
            .iter()
            .find_map(|r| pending_settled_by(r, grant, identity.as_deref()).map(|end| (r, end)));
        match found {
            Some((request, end)) => {
                let initiated = Initiated {
                    end,
                    detail: json!({
                        "requestor": request.requestor,
                        "justification": request.justification,
                        "settled_from": "policy read back after an unclear answer",
                        "read_at": read_at.to_rfc3339(),
                    }),
                };
                self.record_opened(by, grant, &initiated).await
            }
            None => self.record_failed(by, grant, NOT_OPENED).await,
        }
    }

    /// Settles every `pending_azure` grant from the reconciler's `records`
    /// and tells each owner the outcome. Returns how many were settled.
    ///
    /// # Errors
    /// If the store fails.
    pub(crate) async fn settle_all_pending(
        &self,
        records: &[JitRequestRecord],
        read_at: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let pending = self.store().pending_azure_grants().await?;
        let mut settled_count = 0;
        for grant in &pending {
            let settled = match self.settle_pending("system", grant, records, read_at).await {
                Ok(settled) => settled,
                Err(error) => {
                    // Most likely settled meanwhile by the request itself.
                    tracing::warn!(request_id = %grant.request_id, error.message = %error, "pending grant not settled");
                    continue;
                }
            };
            settled_count += 1;
            let message = messages::grant(&settled, &self.config().aliases);
            let key = notice_key(&grant.request_id);
            let mut tx = self.store().begin().await?;
            tx.enqueue(delivery::dm_to_owner(&settled, &message, key, read_at))
                .await?;
            tx.commit().await?;
            tracing::info!(request_id = %grant.request_id, state = %settled.state, "grant pending in Azure settled");
        }
        Ok(settled_count)
    }
}

/// The outbox key of the settled notice: within Discord's 25-character
/// nonce, one per grant.
fn notice_key(id: &RequestId) -> String {
    let digest = hex::encode(Sha256::digest(id.as_str()));
    format!("pa-{}", &digest[..20])
}
