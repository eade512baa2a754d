//! Reconciliation: Azure's JIT request history compared with our grants, every
//! `azure.reconcile_interval`.
//!
//! Two things can happen in Azure without Drawbridge knowing:
//!
//! 1. **A port opened outside Drawbridge** (portal, PowerShell, another tool).
//!    Each such request becomes ONE audit event
//!    [`AuditAction::OpenedOutsideDrawbridge`], flagged, with VM, ports,
//!    source, requestor and end time. Azure gives requests no id, so a request
//!    is keyed by a hash of what identifies it (policy, start time, requestor,
//!    VMs, ports and end times) and remembered in the same transaction as its
//!    audit event (table `azure_requests_seen`): a restart or a second replica
//!    never reports it again.
//! 2. **A grant Azure no longer shows as open** before its end (a newer
//!    request for the same VM and port superseded it, or it was revoked). The
//!    grant is closed in our records (`WindowEnded`, so `expired`), audited
//!    with what Azure shows, its timers are cancelled and the engineer is told.
//!
//! Our requests are recognised by their justification, `Drawbridge request
//! <id> …` ([`super::request::justification`]), and only when that id is a
//! grant in our store for one of the request's VMs: anyone can type that text
//! in the portal, so the text alone proves nothing.
//!
//! # ARM traffic
//!
//! One paged list of JIT policies per configured subscription per interval
//! (`GET …/providers/Microsoft.Security/jitNetworkAccessPolicies`, the call
//! the VM index already makes), whatever the number of grants. A GET of each
//! policy our open grants use would cost one call per such policy and could
//! never see a port opened on a VM without an open grant, which is the case
//! that matters most. At the default 5 minutes this is 12 reads per hour per
//! subscription, against ARM's per-principal bucket of 250 reads refilled at
//! 25 per second.
//!
//! # What is deliberately left alone
//!
//! - A grant whose own end is less than [`END_SLACK`] away: the scheduler's
//!   expiry handles it (with the usual notice), so the two never race.
//! - A grant whose latest change is not older than the list: Azure's answer
//!   may predate it.
//! - A grant whose request is not in the history at all (history trimmed, a
//!   policy deleted): nothing proves it closed.
//! - A grant with one port closed and another still open: Azure still shows
//!   it open.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::jit_port::JitError;
use super::{Service, actor, delivery, messages};
use crate::domain::audit::format_time;
use crate::domain::{
    AuditAction, AuditEvent, GrantEvent, GrantState, JitRequestRecord, Outcome, RequestId,
    RequestedPort,
};
use crate::store::{Grant, ScheduleKind, StoreError};

/// How far back a closed request made outside Drawbridge is still reported
/// (Azure's longest window is one day; a little more covers a missed tick).
pub const LOOKBACK: chrono::TimeDelta = chrono::TimeDelta::hours(25);
/// How long reported requests are remembered.
const FORGET_AFTER: chrono::TimeDelta = chrono::TimeDelta::days(7);
/// A grant this close to its own end is left to the scheduler's expiry.
pub const END_SLACK: chrono::TimeDelta = chrono::TimeDelta::minutes(2);
/// What precedes our request id in the justification.
const MARKER: &str = "Drawbridge request ";

/// Why a reconciliation round failed (it is retried on the next interval).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Azure could not be listed.
    #[error(transparent)]
    Azure(#[from] JitError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one [`Reconciler::tick`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileOutcome {
    /// Requests read (Azure's history included).
    pub requests: usize,
    /// Requests made outside Drawbridge, reported now.
    pub opened_outside: usize,
    /// Grants closed because Azure no longer shows them open.
    pub closed: usize,
}

/// The reconciliation worker.
pub struct Reconciler {
    service: Service,
}

impl Reconciler {
    /// A reconciler reading Azure's requests through the service's port.
    pub fn new(service: Service) -> Self {
        Self { service }
    }

    /// Lists the policies once and reconciles them with the store at `now`.
    ///
    /// # Errors
    /// [`ReconcileError`]; what was written before the failure stays (each
    /// event is its own transaction).
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<ReconcileOutcome, ReconcileError> {
        let requests = self.service.jit().requests().await?;
        let mut outcome = ReconcileOutcome {
            requests: requests.len(),
            ..ReconcileOutcome::default()
        };
        let mut ours: HashMap<RequestId, &JitRequestRecord> = HashMap::new();
        let mut grants = HashMap::new();
        for request in &requests {
            match self.ours(request, &mut grants).await? {
                // The newest request per grant counts.
                Some(id) => {
                    let newer = ours.get(&id).is_none_or(|o| request.start >= o.start);
                    if newer {
                        ours.insert(id, request);
                    }
                }
                None => {
                    if self.report_outside(request, now).await? {
                        outcome.opened_outside += 1;
                    }
                }
            }
        }
        let store = self.service.store();
        for grant in store.open_grants().await? {
            let Some(found) = ours.get(&grant.request_id) else {
                continue;
            };
            if self.close_if_ended(&grant, found, now).await? {
                outcome.closed += 1;
            }
        }
        let mut tx = store.begin().await?;
        tx.forget_azure_requests(now - FORGET_AFTER).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// The grant `request` belongs to: the one its justification names, if
    /// that grant is for one of the request's VMs. `grants` keeps what was
    /// read this round (one grant has several requests in Azure's history).
    async fn ours(
        &self,
        request: &JitRequestRecord,
        grants: &mut HashMap<RequestId, Option<Grant>>,
    ) -> Result<Option<RequestId>, StoreError> {
        let Some(id) = drawbridge_id(request) else {
            return Ok(None);
        };
        if !grants.contains_key(&id) {
            let grant = self.service.store().grant(&id).await?;
            grants.insert(id.clone(), grant);
        }
        Ok(grants[&id]
            .as_ref()
            .filter(|g| {
                request
                    .vms
                    .iter()
                    .any(|vm| vm.vm_id.eq_ignore_ascii_case(&g.vm_id))
            })
            .map(|g| g.request_id.clone()))
    }

    /// Reports a request made outside Drawbridge, once. Returns whether it
    /// was reported now.
    async fn report_outside(
        &self,
        request: &JitRequestRecord,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let open = ports_of(request).any(|p| p.is_open_at(now));
        let recent = request.start.is_some_and(|s| s >= now - LOOKBACK);
        if !open && !recent {
            return Ok(false);
        }
        let key = request_key(request);
        let store = self.service.store();
        if store.azure_request_seen(&key).await? {
            return Ok(false);
        }
        let event = outside_event(request, open, now);
        let mut tx = store.begin().await?;
        let record = tx.append_audit(&event).await?;
        if !tx
            .remember_azure_request(&key, &request.policy_id, request.start, record.seq, now)
            .await?
        {
            // Another replica reported it meanwhile.
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        let requestor = request.requestor.as_deref().unwrap_or_default();
        tracing::warn!(vm = %event.target, requestor, "JIT request made outside Drawbridge");
        Ok(true)
    }

    /// Closes `grant` in our records if Azure shows none of its ports open
    /// any more (see the module docs for what is left alone).
    async fn close_if_ended(
        &self,
        grant: &Grant,
        request: &JitRequestRecord,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        if !matches!(grant.state, GrantState::Active | GrantState::Extended)
            || grant.state_changed_at >= now
            || grant.end_time.is_none_or(|end| end <= now + END_SLACK)
        {
            return Ok(false);
        }
        let numbers = grant.ports.numbers();
        let azure: Vec<&RequestedPort> = request
            .vms
            .iter()
            .filter(|vm| vm.vm_id.eq_ignore_ascii_case(&grant.vm_id))
            .flat_map(|vm| vm.ports.iter())
            .filter(|p| numbers.contains(&p.number))
            .collect();
        if azure.is_empty() || azure.iter().any(|p| p.is_open_at(now)) {
            return Ok(false);
        }
        self.close_in_records(grant, &azure, now).await
    }

    /// Closes `grant` (`WindowEnded`), cancels its timers, tells its owner
    /// and audits what Azure shows, in one transaction; unless the grant
    /// changed since it was read.
    async fn close_in_records(
        &self,
        grant: &Grant,
        azure: &[&RequestedPort],
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let reason = azure
            .iter()
            .find_map(|p| p.status_reason.clone())
            .unwrap_or_else(|| azure[0].status.clone());
        let mut tx = self.service.store().begin().await?;
        let current = tx.grant(&grant.request_id).await?;
        if current.as_ref().is_none_or(|g| {
            g.state != grant.state
                || g.end_time != grant.end_time
                || g.state_changed_at != grant.state_changed_at
        }) {
            // Extended, closed or expired since we looked: next round.
            tx.rollback().await?;
            return Ok(false);
        }
        let closed = tx
            .transition_grant(&grant.request_id, &GrantEvent::WindowEnded, now)
            .await?;
        tx.cancel_schedule(
            &grant.request_id,
            &[ScheduleKind::Reminder, ScheduleKind::Expiry],
            now,
        )
        .await?;
        let aliases = &self.service.config().aliases;
        tx.enqueue(delivery::dm_to_owner(
            &closed,
            &messages::ended_by_azure(&closed, &reason, aliases),
            notice_key(&grant.request_id),
            now,
        ))
        .await?;
        tx.append_audit(&ended_event(grant, azure, &reason, now))
            .await?;
        tx.commit().await?;
        tracing::info!(request_id = %grant.request_id, %reason, "grant closed: Azure no longer shows it open");
        Ok(true)
    }

    /// Reconciles now and then every `every` until cancelled. Time between
    /// rounds is real time; "now" comes from the service's clock.
    pub async fn run(self, every: Duration, cancel: CancellationToken) {
        loop {
            match self.tick(self.service.clock().now()).await {
                Ok(o) if o.opened_outside + o.closed > 0 => self.service.wake_after(()),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error.message = %e, "reconciliation with Azure failed; retrying next interval");
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

fn ports_of(request: &JitRequestRecord) -> impl Iterator<Item = &RequestedPort> {
    request.vms.iter().flat_map(|vm| vm.ports.iter())
}

/// The flagged audit event of a request made outside Drawbridge.
fn outside_event(request: &JitRequestRecord, open: bool, now: DateTime<Utc>) -> AuditEvent {
    let vms: Vec<&str> = request
        .vms
        .iter()
        .map(|vm| vm.display_name.as_str())
        .collect();
    let mut numbers: Vec<u16> = ports_of(request).map(|p| p.number).collect();
    numbers.sort_unstable();
    numbers.dedup();
    let mut sources: Vec<&str> = ports_of(request)
        .flat_map(|p| p.sources.iter().map(String::as_str))
        .collect();
    sources.sort_unstable();
    sources.dedup();
    let end = ports_of(request).map(|p| p.end).max();
    let actor = match request.requestor.as_deref() {
        None | Some("") => "azure".to_string(),
        Some(requestor) => format!("azure:{requestor}"),
    };
    AuditEvent::new(
        now,
        actor,
        AuditAction::OpenedOutsideDrawbridge,
        vms.join(", "),
        Outcome::Info,
    )
    .with_detail(json!({
        "flagged": true,
        "requestor": request.requestor,
        "ports": numbers.iter().map(u16::to_string).collect::<Vec<_>>().join(", "),
        "source": sources.join(", "),
        "start": request.start.map(format_time),
        "end": end.map(format_time),
        "open": open,
        "justification": request.justification,
        "policy": request.policy_id,
        "vm_ids": request.vms.iter().map(|vm| vm.vm_id.as_str()).collect::<Vec<_>>(),
    }))
}

/// The audit event of a grant Azure ended before its time.
fn ended_event(
    grant: &Grant,
    azure: &[&RequestedPort],
    reason: &str,
    now: DateTime<Utc>,
) -> AuditEvent {
    let ports: Vec<_> = azure
        .iter()
        .map(|p| {
            json!({
                "port": p.number,
                "status": p.status,
                "status_reason": p.status_reason,
                "end": format_time(p.end),
            })
        })
        .collect();
    AuditEvent::new(
        now,
        "system",
        AuditAction::AccessExpired,
        &grant.vm_name,
        Outcome::Info,
    )
    .with_detail(json!({
        "request_id": grant.request_id.as_str(),
        "user": actor(grant.user_id),
        "ended": format_time(now),
        "scheduled_end": grant.end_time.map(format_time),
        "reason": format!("Azure no longer shows the request as open ({reason})"),
        "azure": ports,
        "note": "established sessions are not cut when the port closes",
    }))
}

/// The request id a justification names, if it looks like one of ours.
pub fn drawbridge_id(request: &JitRequestRecord) -> Option<RequestId> {
    let text = request.justification.as_deref()?;
    let rest = &text[text.find(MARKER)? + MARKER.len()..];
    let id: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    RequestId::parse(&id).ok()
}

/// A stable key for an Azure request (Azure gives none): SHA-256 over the
/// policy, start time, requestor and each VM's ports with their end times.
/// Keys are stored: the recipe must not change.
pub fn request_key(request: &JitRequestRecord) -> String {
    let mut h = Sha256::new();
    h.update(request.policy_id.to_ascii_lowercase());
    h.update("|");
    h.update(request.start.map(format_time).unwrap_or_default());
    h.update("|");
    h.update(request.requestor.as_deref().unwrap_or_default());
    for vm in &request.vms {
        h.update("|");
        h.update(vm.vm_id.to_ascii_lowercase());
        for p in &vm.ports {
            h.update(format!(",{}@{}", p.number, format_time(p.end)));
        }
    }
    hex::encode(h.finalize())
}

/// The outbox key of the "Azure closed it" notice: one per grant.
fn notice_key(id: &RequestId) -> String {
    let digest = hex::encode(Sha256::digest(id.as_str()));
    format!("az-{}", &digest[..20])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RequestedVm;

    fn request(justification: Option<&str>) -> JitRequestRecord {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        JitRequestRecord {
            policy_id: "/p".into(),
            start: Some(at("2026-01-01T10:00:00.1234567Z")),
            requestor: Some("barbara@contoso.com".into()),
            justification: justification.map(Into::into),
            vms: vec![RequestedVm {
                vm_id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1".into(),
                display_name: "rg/vm1".into(),
                ports: vec![RequestedPort {
                    number: 22,
                    status: "Initiated".into(),
                    status_reason: Some("UserRequested".into()),
                    end: at("2026-01-01T12:00:00Z"),
                    sources: vec!["203.0.113.7".into()],
                }],
            }],
        }
    }

    #[test]
    fn our_justification_names_the_request_id() {
        let r = request(Some(
            "Drawbridge request 1234567890123 by Discord user ana (42): patching",
        ));
        assert_eq!(drawbridge_id(&r).unwrap().as_str(), "1234567890123");
        assert!(drawbridge_id(&request(Some("opened from the portal"))).is_none());
        assert!(drawbridge_id(&request(None)).is_none());
        assert!(drawbridge_id(&request(Some("Drawbridge request "))).is_none());
    }

    #[test]
    fn request_keys_are_stable_and_tell_requests_apart() {
        let a = request(None);
        // Stored keys: the recipe (policy|start|requestor|vm,port@end…) is fixed.
        assert_eq!(
            request_key(&a),
            "409319c0294bf363fc5e83af50f0b19920e9426914f5ecea8ffd9075211a27e0"
        );
        let mut upper = a.clone();
        upper.policy_id = "/P".into();
        assert_eq!(request_key(&a), request_key(&upper));
        let mut b = a.clone();
        b.vms[0].ports[0].end += chrono::TimeDelta::minutes(1);
        assert_ne!(request_key(&a), request_key(&b));
        // The status changes over time; the key must not.
        let mut c = a.clone();
        c.vms[0].ports[0].status = "Revoked".into();
        assert_eq!(request_key(&a), request_key(&c));
        assert!(notice_key(&RequestId::generate()).len() <= 25);
    }
}
