//! Azure's word on our grants. After every write to Azure (initiate, extend,
//! close) the VM's policy is read back, and every open grant Drawbridge
//! holds on that VM is settled from Azure's own status of its request
//! ([`crate::domain::port_truth`]); the reconciler does the same for changes
//! made outside the bot. A grant Azure shows ended becomes `superseded` (a
//! newer request replaced it) or `ended` (Azure's reason): its owner gets a
//! DM (unless their own newer request from the same address replaced it:
//! the port stays open for them, and that request's reply says until
//! when), it is audited, and its reminder and expiry are cancelled, in one
//! transaction.
//!
//! # Left alone
//! - A grant whose latest change is not older than the read: Azure's answer
//!   may predate it.
//! - A grant Azure shows open on any of its ports, or whose request Azure
//!   does not show at all (history trimmed): nothing proves it closed.
//! - A grant that merely expired less than [`END_SLACK`] from its end: the
//!   scheduler's expiry handles it, with the usual notice.
//!
//! # Back under Drawbridge's care
//! The other way round, the reconciler looks for a grant Drawbridge has as
//! `failed`, `closed_early`, `expired` or `ended` whose own request Azure
//! still shows open, later than the grant's recorded end ([`reopened_end`]:
//! the justification names the grant, `requestor` is our identity, it
//! started after the grant was asked for, for its VM, ports and source). An
//! unclear initiate that Azure applied late, say. Such a grant becomes
//! `active` again until Azure's end, with its reminder and expiry, audited
//! (`access_reopened`), and its owner is told.

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};

use serde_json::json;

use super::{Service, actor, delivery, messages, reconcile};
use crate::domain::audit::format_time;
use crate::domain::port_truth::{self, HeldWindow, PortTruth, PortView};
use crate::domain::{
    AuditAction, AuditEvent, GrantEvent, GrantState, IndexedVm, JitRequestRecord, Outcome,
    RequestId, UserId,
};
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

impl Service {
    /// Drawbridge's own identity: what its credential's token names (known
    /// before the first initiate), the configured `azure.requestor_names`,
    /// and the `requestor` Azure recorded on an earlier initiate of ours. A
    /// request is ours only if Azure's `requestor` is one of these: where
    /// Azure writes a name the token does not carry and none is configured
    /// or learned yet, our request is flagged as made outside Drawbridge
    /// (never taken for ours by its text) until a clear initiate teaches the
    /// name; the reconciler then takes it back.
    ///
    /// # Errors
    /// If neither is known (no token can be had and Azure never answered an
    /// initiate): then nothing may be taken for ours.
    pub(crate) async fn our_identity(&self) -> Result<Vec<String>, StoreError> {
        let mut ids = match self.jit().identity().await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error.message = %e, "our own identity could not be read from the token");
                Vec::new()
            }
        };
        let recorded = self.store().our_requestor().await?;
        for name in self
            .config()
            .requestor_names
            .iter()
            .cloned()
            .chain(recorded)
        {
            if !ids.iter().any(|i| i.eq_ignore_ascii_case(&name)) {
                ids.push(name);
            }
        }
        if ids.is_empty() {
            return Err(anyhow::anyhow!(
                "Drawbridge's own identity is unknown: no token names it and Azure never recorded it"
            )
            .into());
        }
        Ok(ids)
    }
}

impl Service {
    /// Puts back under Drawbridge's care every grant it had failed or
    /// closed whose own request `records` (read at `now`) show open.
    /// Returns how many.
    ///
    /// # Errors
    /// If the store fails, or our identity is unknown.
    pub(crate) async fn reopen_from_azure(
        &self,
        records: &[JitRequestRecord],
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let mut identity = None;
        let mut reopened = 0;
        for request in records {
            let Some(id) = request.drawbridge_id() else {
                continue;
            };
            if !request
                .vms
                .iter()
                .flat_map(|vm| &vm.ports)
                .any(|p| p.is_open_at(now))
            {
                continue;
            }
            let Some(grant) = self.store().grant(&id).await? else {
                continue;
            };
            if !REOPENABLE.contains(&grant.state) {
                continue;
            }
            if identity.is_none() {
                identity = Some(self.our_identity().await?);
            }
            let ours = identity.as_deref().unwrap_or_default();
            if let Some(end) = reopened_end(request, &grant, ours, now)
                && self.reopen(&grant, request, end, now).await?
            {
                reopened += 1;
            }
        }
        Ok(reopened)
    }

    /// `grant` is `active` again until `end`, with its timers, audited, and
    /// its owner told; unless it changed since it was read.
    async fn reopen(
        &self,
        grant: &Grant,
        request: &JitRequestRecord,
        end: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let id = &grant.request_id;
        let mut tx = self.store().begin().await?;
        if tx.grant(id).await?.is_none_or(|g| g.state != grant.state) {
            tx.rollback().await?;
            return Ok(false);
        }
        let reopened = tx
            .transition_grant(id, &GrantEvent::ReopenedInAzure { end }, now)
            .await?;
        tx.clear_grant_failure(id).await?;
        tx.set_azure_detail(
            id,
            &json!({
                "requestor": request.requestor,
                "start": request.start.map(format_time),
                "settled_from": "reconciliation: Azure shows our request open",
            }),
        )
        .await?;
        self.schedule_timers(&mut tx, id, end, now).await?;
        let audit = AuditEvent::new(
            now,
            "system",
            AuditAction::AccessReopened,
            &grant.vm_name,
            Outcome::Info,
        );
        tx.append_audit(&audit.with_detail(json!({
            "request_id": id.as_str(),
            "owner": grant.user_id.to_string(),
            "was": grant.state.as_str(),
            "end": format_time(end),
            "requestor": request.requestor,
        })))
        .await?;
        let reopened = Grant {
            failure: None,
            ..reopened
        };
        let message = messages::grant(&reopened, &self.config().aliases);
        tx.enqueue(delivery::dm_to_owner(
            &reopened,
            &message,
            reopen_key(id, end),
            now,
        ))
        .await?;
        tx.commit().await?;
        tracing::warn!(request_id = %id, was = %grant.state, "Azure shows a grant we had closed open: back under Drawbridge's care");
        Ok(true)
    }
}

/// The states a grant may be taken back from: Drawbridge thinks the port
/// closed, or never opened.
const REOPENABLE: [GrantState; 4] = [
    GrantState::Failed,
    GrantState::ClosedEarly,
    GrantState::Expired,
    GrantState::Ended,
];

/// Azure's end of `request` if it is `grant`'s own ([`reconcile::pending_settled_by`])
/// and open at `now` on every port of the grant's VM, later than the grant
/// was recorded to end.
pub fn reopened_end(
    request: &JitRequestRecord,
    grant: &Grant,
    identity: &[String],
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let end = reconcile::pending_settled_by(request, grant, identity)?;
    let open = request
        .vms
        .iter()
        .filter(|vm| vm.vm_id.eq_ignore_ascii_case(&grant.vm_id))
        .flat_map(|vm| &vm.ports)
        .all(|p| p.is_open_at(now));
    let later = grant
        .end_time
        .is_none_or(|recorded| end > recorded + chrono::TimeDelta::seconds(1));
    (open && later).then_some(end)
}

/// The outbox key of the "open after all" notice: one per grant and end.
fn reopen_key(id: &RequestId, end: DateTime<Utc>) -> String {
    let digest = hex::encode(Sha256::digest(format!("{id}|{}", format_time(end))));
    format!("ro-{}", &digest[..20])
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
        let others: Vec<Grant> = match self.store().open_grants_on(&vm.vm_id).await {
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
        // The member's own newer request from the same address replaced it:
        // the port stays open for them, and their newer reply says until
        // when; "closed for your address" would be false.
        if !acting.is_some_and(|a| replaces_own(grant, a)) {
            tx.enqueue(delivery::dm_to_owner(
                &ended,
                &message,
                notice_key(&grant.request_id),
                now,
            ))
            .await?;
        }
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
        request_id: &grant.request_id,
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

/// Whether `acting` is `grant`'s member asking again from the same source.
fn replaces_own(grant: &Grant, acting: &Acting) -> bool {
    acting.user_id == grant.user_id
        && acting
            .source
            .eq_ignore_ascii_case(&grant.source.to_string())
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
