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
//!
//! An Extend without a clear answer is settled the same way: `extending`
//! goes to `pending_azure` (the grant keeps its old end meanwhile), and our
//! extension in the policy (it names the grant, is ours, and ends later
//! than the grant did) settles it `extended` with the new end and timers;
//! none puts it back as it was (`active` or `extended`).

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::domain::{GrantEvent, GrantState, IndexedVm, JitRequestRecord, RequestId};
use crate::service::jit_port::Initiated;
use crate::service::reconcile::pending_settled_by;
use crate::service::request::RequestError;
use crate::service::{Service, delivery, messages};
use crate::store::{Grant, StoreError};

/// What a member whose extension Azure's policy does not show is told.
pub const NOT_EXTENDED: &str = "Azure gave no clear answer, and its policy shows no extension of ours: your grant is as it was. Please try again.";

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
        self.tell_if_approved(&mut tx, &pending, "u").await?;
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
        let identity = self.our_identity().await?;
        let found = records
            .iter()
            .find_map(|r| pending_settled_by(r, grant, &identity).map(|end| (r, end)));
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

    /// Marks `grant` (claimed `extending`) `pending_azure` after an unclear
    /// answer to its extension, reads `vm`'s policy and settles it. Returns
    /// the grant still `pending_azure` when the policy cannot be read.
    ///
    /// # Errors
    /// [`RequestError::Azure`] when Azure shows no extension.
    pub(crate) async fn settle_unclear_extend(
        &self,
        by: &str,
        vm: &IndexedVm,
        grant: &Grant,
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
                tracing::warn!(error.message = %error, error.cause_chain = ?error, "policy read failed; the reconciler settles the extension");
                return Ok(pending);
            }
        };
        let settled = self
            .settle_pending_extend(by, &pending, &records, now)
            .await?;
        if settled.state == GrantState::Extended && settled.end_time != grant.end_time {
            Ok(settled)
        } else {
            Err(RequestError::Azure {
                message: NOT_EXTENDED.to_owned(),
            })
        }
    }

    /// Settles a `pending_azure` extension of `grant` from `records` read
    /// at `read_at`: `extended` with Azure's end and timers when our
    /// extension is there, else back as it was; audited as by `by`.
    ///
    /// # Errors
    /// If the store fails.
    pub(crate) async fn settle_pending_extend(
        &self,
        by: &str,
        grant: &Grant,
        records: &[JitRequestRecord],
        read_at: DateTime<Utc>,
    ) -> Result<Grant, StoreError> {
        let identity = self.our_identity().await?;
        let old_end = grant.end_time.unwrap_or(read_at);
        let found = records
            .iter()
            .filter_map(|r| pending_settled_by(r, grant, &identity).map(|end| (r, end)))
            .filter(|(_, end)| *end > old_end + TimeDelta::seconds(1))
            .max_by_key(|(_, end)| *end);
        if let Some((request, end)) = found {
            let initiated = Initiated {
                end,
                detail: json!({
                    "requestor": request.requestor,
                    "settled_from": "policy read back after an unclear answer",
                }),
            };
            return self
                .settle_extended(by, grant, grant.duration, &initiated, read_at)
                .await;
        }
        let back_to_extended = self
            .store()
            .grant_transitions(&grant.request_id)
            .await?
            .iter()
            .rev()
            .find(|t| t.to == GrantState::Extending)
            .is_some_and(|t| t.from == GrantState::Extended);
        let mut tx = self.store().begin().await?;
        let back = tx
            .transition_grant(
                &grant.request_id,
                &GrantEvent::ExtendFailed { back_to_extended },
                read_at,
            )
            .await?;
        tx.commit().await?;
        Ok(back)
    }

    /// After a restart: every grant still `requested` since before
    /// `before` may have had its initiate sent by a process that died, so it
    /// is `pending_azure` now (at `now`) and the reconciler settles it from
    /// Azure's listing (active with its timers, or failed), never initiating
    /// again. Only the holder of the reconcile lease calls it
    /// ([`crate::service::reconcile::Reconciler::settle_interrupted`]).
    /// Returns how many.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn pend_interrupted(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let mut pended = 0;
        for grant in self.store().requested_grants().await? {
            if grant.requested_at >= before {
                continue;
            }
            let mut tx = self.store().begin().await?;
            match tx
                .transition_grant(&grant.request_id, &GrantEvent::Unclear, now)
                .await
            {
                Ok(pending) => {
                    self.tell_if_approved(&mut tx, &pending, "u").await?;
                    tx.commit().await?;
                    pended += 1;
                    tracing::warn!(request_id = %grant.request_id, "a request interrupted by a restart is settled from Azure");
                }
                Err(StoreError::InvalidTransition(_)) => tx.rollback().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(pended)
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
            let settling = if grant.end_time.is_some() {
                self.settle_pending_extend("system", grant, records, read_at)
                    .await
            } else {
                self.settle_pending("system", grant, records, read_at).await
            };
            let settled = match settling {
                Ok(settled) => settled,
                Err(error) => {
                    // Most likely settled meanwhile by the request itself.
                    tracing::warn!(request_id = %grant.request_id, error.message = %error, "pending grant not settled");
                    continue;
                }
            };
            settled_count += 1;
            if grant.end_time.is_none() && self.told_in_reply(grant).await? {
                // Its reply edit, written with the settled state, told them.
                continue;
            }
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
