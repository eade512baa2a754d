//! Azure's word on our grants. After every write to Azure (initiate, extend,
//! close) the VM's policy is read back, and every open grant Drawbridge
//! holds on that VM is settled from Azure's own status of its request
//! ([`crate::domain::port_truth`]); the reconciler does the same for changes
//! made outside the bot. A grant Azure shows ended becomes `superseded` (a
//! newer request replaced it) or `ended` (Azure's reason): its owner gets a
//! DM, it is audited, and its reminder and expiry are cancelled, in one
//! transaction.
//!
//! # Left alone
//! - A grant whose latest change is not older than the read: Azure's answer
//!   may predate it.
//! - A grant Azure shows open on any of its ports, or whose request Azure
//!   does not show at all (history trimmed): nothing proves it closed.
//! - A grant that merely expired less than [`END_SLACK`] from its end: the
//!   scheduler's expiry handles it, with the usual notice.

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};

use super::{Service, actor, delivery, messages};
use crate::domain::port_truth::{self, HeldWindow, PortTruth, PortView};
use crate::domain::{GrantState, IndexedVm, JitRequestRecord, RequestId, UserId};
use crate::store::{Grant, StoreError};

/// The grant whose write to Azure is being read back: a grant it
/// supersedes was ended by this grant's member.
#[derive(Debug, Clone)]
pub struct Acting {
    pub request_id: RequestId,
    pub user_id: UserId,
    pub source: String,
}

impl Acting {
    pub fn of(grant: &Grant) -> Self {
        Self {
            request_id: grant.request_id.clone(),
            user_id: grant.user_id,
            source: grant.source.to_string(),
        }
    }
}

/// A grant this close to its own end is left to the scheduler's expiry.
pub const END_SLACK: chrono::TimeDelta = chrono::TimeDelta::minutes(2);

impl Service {
    /// Reads `vm`'s policy back after a write and settles the other open
    /// grants on it. Returns what was read (`None` if Azure could not be
    /// read: the reconciler settles it later).
    pub(crate) async fn read_back(
        &self,
        vm: &IndexedVm,
        acting: &Acting,
    ) -> Option<Vec<JitRequestRecord>> {
        let read_at = self.clock().now();
        let records = self.read_requests(vm).await.ok()?;
        let others: Vec<Grant> = match self.store().open_grants().await {
            Ok(open) => open
                .into_iter()
                .filter(|g| {
                    g.request_id != acting.request_id && g.vm_id.eq_ignore_ascii_case(&vm.vm_id)
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error.message = %e, "listing open grants for the read-back failed");
                return Some(records);
            }
        };
        match self
            .settle_from_azure(&records, &others, read_at, Some(acting))
            .await
        {
            Ok(n) if n > 0 => self.wake_after(()),
            Ok(_) => {}
            Err(e) => tracing::warn!(error.message = %e, "settling grants from Azure failed"),
        }
        Some(records)
    }

    /// Settles each of `grants` from `records` read at `read_at`, after
    /// `acting`'s write if the bot made one. Returns how many Azure showed
    /// ended.
    ///
    /// # Errors
    /// If the store fails (what was settled before stays).
    pub(crate) async fn settle_from_azure(
        &self,
        records: &[JitRequestRecord],
        grants: &[Grant],
        read_at: DateTime<Utc>,
        acting: Option<&Acting>,
    ) -> Result<usize, StoreError> {
        let mut ended = 0;
        for grant in grants {
            if let Some(truth) = ended_in_azure(records, grant, read_at)
                && self.end_from_azure(grant, &truth, read_at, acting).await?
            {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Ends `grant` as Azure shows (`truth`), tells its owner and audits it,
    /// in one transaction; unless the grant changed since it was read.
    async fn end_from_azure(
        &self,
        grant: &Grant,
        truth: &[PortTruth],
        now: DateTime<Utc>,
        acting: Option<&Acting>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.store().begin().await?;
        let current = tx.grant(&grant.request_id).await?;
        if current.as_ref().is_none_or(|g| {
            g.state != grant.state
                || g.end_time != grant.end_time
                || g.state_changed_at != grant.state_changed_at
        }) {
            tx.rollback().await?;
            return Ok(false);
        }
        let by = acting.filter(|a| displaced(truth, grant, a));
        let actor_text = by.map_or_else(|| "system".to_owned(), |a| actor(a.user_id));
        let ended = self
            .record_ended_in_azure(&mut tx, grant, truth, &actor_text, now)
            .await?;
        let aliases = &self.config().aliases;
        let message = match by {
            Some(a) => messages::displaced(&ended, a.user_id, now, aliases),
            None => messages::ended_by_azure(&ended, aliases),
        };
        tx.enqueue(delivery::dm_to_owner(
            &ended,
            &message,
            notice_key(&grant.request_id),
            now,
        ))
        .await?;
        tx.commit().await?;
        tracing::info!(request_id = %grant.request_id, state = %ended.state, "grant ended: Azure shows it closed");
        Ok(true)
    }
}

/// What Azure shows for `grant`'s ports, if it shows the grant ended and
/// the grant is Drawbridge's to settle now.
fn ended_in_azure(
    records: &[JitRequestRecord],
    grant: &Grant,
    read_at: DateTime<Utc>,
) -> Option<Vec<PortTruth>> {
    if !matches!(grant.state, GrantState::Active | GrantState::Extended)
        || grant.state_changed_at >= read_at
    {
        return None;
    }
    let source = grant.source.to_string();
    let held = HeldWindow {
        vm_id: &grant.vm_id,
        source: &source,
        end: grant.end_time?,
    };
    let truth = port_truth::grant_ports(records, held, &grant.ports.numbers(), read_at);
    let open = truth
        .iter()
        .any(|p| matches!(p.view, PortView::Open { .. }));
    let superseded = truth
        .iter()
        .any(|p| matches!(p.view, PortView::Superseded { .. }));
    let ended = truth
        .iter()
        .any(|p| matches!(p.view, PortView::Ended { .. }));
    let near_end = grant.end_time? <= read_at + END_SLACK;
    (!open && (superseded || (ended && !near_end))).then_some(truth)
}

/// Whether `acting`'s request (another member's) is the newer one that
/// superseded `grant`.
fn displaced(truth: &[PortTruth], grant: &Grant, acting: &Acting) -> bool {
    acting.user_id != grant.user_id
        && truth.iter().any(|p| {
            matches!(&p.view, PortView::Superseded { by: Some(h) }
                if h.source.eq_ignore_ascii_case(&acting.source))
        })
}

/// The outbox key of the "Azure ended it" notice: one per grant.
fn notice_key(id: &RequestId) -> String {
    let digest = hex::encode(Sha256::digest(id.as_str()));
    format!("az-{}", &digest[..20])
}
