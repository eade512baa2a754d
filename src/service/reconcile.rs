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
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{Service, actor, delivery, render};
use crate::azure::gateway::AzureJit;
use crate::azure::wire::{JitRequest, Policy, RequestPort};
use crate::azure::{ArmError, VmId};
use crate::domain::audit::format_time;
use crate::domain::{AuditAction, AuditEvent, GrantEvent, GrantState, Outcome, RequestId};
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

/// Where the JIT policies (with their request history) come from.
#[async_trait]
pub trait PolicySource: Send + Sync + 'static {
    /// Every JIT policy of the configured subscriptions.
    async fn list_policies(&self) -> Result<Vec<Policy>, ArmError>;
}

#[async_trait]
impl PolicySource for AzureJit {
    async fn list_policies(&self) -> Result<Vec<Policy>, ArmError> {
        let mut all = Vec::new();
        for subscription in self.subscriptions() {
            all.extend(self.arm().list_policies(subscription).await?);
        }
        Ok(all)
    }
}

/// Why a reconciliation round failed (it is retried on the next interval).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Azure could not be listed.
    #[error(transparent)]
    Azure(#[from] ArmError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one [`Reconciler::tick`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileOutcome {
    /// Policies read.
    pub policies: usize,
    /// Requests made outside Drawbridge, reported now.
    pub opened_outside: usize,
    /// Grants closed because Azure no longer shows them open.
    pub closed: usize,
}

/// The reconciliation worker.
pub struct Reconciler {
    service: Service,
    azure: Arc<dyn PolicySource>,
}

/// One of our requests as Azure shows it: the newest one per grant.
struct Ours<'a> {
    start: Option<DateTime<Utc>>,
    request: &'a JitRequest,
}

impl Reconciler {
    /// A reconciler reading policies from `azure`.
    pub fn new(service: Service, azure: Arc<dyn PolicySource>) -> Self {
        Self { service, azure }
    }

    /// Lists the policies once and reconciles them with the store at `now`.
    ///
    /// # Errors
    /// [`ReconcileError`]; what was written before the failure stays (each
    /// event is its own transaction).
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<ReconcileOutcome, ReconcileError> {
        let policies = self.azure.list_policies().await?;
        let mut outcome = ReconcileOutcome {
            policies: policies.len(),
            ..ReconcileOutcome::default()
        };
        let store = self.service.store();
        // Our grants' newest requests, by request id.
        let mut ours: HashMap<RequestId, Ours<'_>> = HashMap::new();
        let mut grants: HashMap<RequestId, Option<Grant>> = HashMap::new();
        for policy in &policies {
            for request in &policy.properties.requests {
                let grant = match drawbridge_id(request) {
                    Some(id) => {
                        if !grants.contains_key(&id) {
                            grants.insert(id.clone(), store.grant(&id).await?);
                        }
                        grants[&id]
                            .as_ref()
                            .filter(|g| {
                                request
                                    .virtual_machines
                                    .iter()
                                    .any(|vm| vm.id.eq_ignore_ascii_case(&g.vm_id))
                            })
                            .map(|g| g.request_id.clone())
                    }
                    None => None,
                };
                match grant {
                    Some(id) => {
                        let newer = ours
                            .get(&id)
                            .is_none_or(|o| request.start_time_utc >= o.start);
                        if newer {
                            ours.insert(
                                id,
                                Ours {
                                    start: request.start_time_utc,
                                    request,
                                },
                            );
                        }
                    }
                    None => {
                        if self.report_outside(policy, request, now).await? {
                            outcome.opened_outside += 1;
                        }
                    }
                }
            }
        }
        for grant in store.open_grants().await? {
            let Some(found) = ours.get(&grant.request_id) else {
                continue;
            };
            if self.close_if_ended(&grant, found.request, now).await? {
                outcome.closed += 1;
            }
        }
        let mut tx = store.begin().await?;
        tx.forget_azure_requests(now - FORGET_AFTER).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Reports a request made outside Drawbridge, once. Returns whether it
    /// was reported now.
    async fn report_outside(
        &self,
        policy: &Policy,
        request: &JitRequest,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let ports: Vec<&RequestPort> = request
            .virtual_machines
            .iter()
            .flat_map(|vm| vm.ports.iter())
            .collect();
        let open = ports
            .iter()
            .any(|p| is_open_status(&p.status) && p.end_time_utc > now);
        let recent = request.start_time_utc.is_some_and(|s| s >= now - LOOKBACK);
        if !open && !recent {
            return Ok(false);
        }
        let key = request_key(&policy.id, request);
        let store = self.service.store();
        if store.azure_request_seen(&key).await? {
            return Ok(false);
        }
        let vms: Vec<String> = request
            .virtual_machines
            .iter()
            .map(|vm| match VmId::parse(&vm.id) {
                Ok(id) => format!("{}/{}", id.resource_group, id.name),
                Err(_) => vm.id.clone(),
            })
            .collect();
        let mut numbers: Vec<u16> = ports.iter().map(|p| p.number).collect();
        numbers.sort_unstable();
        numbers.dedup();
        let mut sources: Vec<String> = ports.iter().flat_map(|p| sources_of(p)).collect();
        sources.sort();
        sources.dedup();
        let end = ports.iter().map(|p| p.end_time_utc).max();
        let requestor = request.requestor.clone().unwrap_or_default();
        let event = AuditEvent::new(
            now,
            if requestor.is_empty() {
                "azure".to_string()
            } else {
                format!("azure:{requestor}")
            },
            AuditAction::OpenedOutsideDrawbridge,
            vms.join(", "),
            Outcome::Info,
        )
        .with_detail(json!({
            "flagged": true,
            "requestor": request.requestor,
            "ports": numbers.iter().map(u16::to_string).collect::<Vec<_>>().join(", "),
            "source": sources.join(", "),
            "start": request.start_time_utc.map(format_time),
            "end": end.map(format_time),
            "open": open,
            "justification": request.justification,
            "policy": policy.id,
            "vm_ids": request.virtual_machines.iter().map(|vm| vm.id.as_str()).collect::<Vec<_>>(),
        }));
        let mut tx = store.begin().await?;
        let record = tx.append_audit(&event).await?;
        if !tx
            .remember_azure_request(&key, &policy.id, request.start_time_utc, record.seq, now)
            .await?
        {
            // Another replica reported it meanwhile.
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        tracing::warn!(vm = %event.target, requestor, "JIT request made outside Drawbridge");
        Ok(true)
    }

    /// Closes `grant` in our records if Azure shows none of its ports open
    /// any more (see the module docs for what is left alone).
    async fn close_if_ended(
        &self,
        grant: &Grant,
        request: &JitRequest,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        if !matches!(grant.state, GrantState::Active | GrantState::Extended)
            || grant.state_changed_at >= now
            || grant.end_time.is_none_or(|end| end <= now + END_SLACK)
        {
            return Ok(false);
        }
        let numbers = grant.ports.numbers();
        let azure: Vec<&RequestPort> = request
            .virtual_machines
            .iter()
            .filter(|vm| vm.id.eq_ignore_ascii_case(&grant.vm_id))
            .flat_map(|vm| vm.ports.iter())
            .filter(|p| numbers.contains(&p.number))
            .collect();
        if azure.is_empty()
            || azure
                .iter()
                .any(|p| is_open_status(&p.status) && p.end_time_utc > now)
        {
            return Ok(false);
        }
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
            &render::ended_by_azure(&closed, &reason, aliases),
            notice_key(&grant.request_id),
            now,
        ))
        .await?;
        tx.append_audit(
            &AuditEvent::new(
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
                "azure": azure.iter().map(|p| json!({
                    "port": p.number,
                    "status": p.status,
                    "status_reason": p.status_reason,
                    "end": format_time(p.end_time_utc),
                })).collect::<Vec<_>>(),
                "note": "established sessions are not cut when the port closes",
            })),
        )
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

/// `Initiated`, or the `Initiating` of a fresh request.
fn is_open_status(status: &str) -> bool {
    status.eq_ignore_ascii_case("Initiated") || status.eq_ignore_ascii_case("Initiating")
}

fn sources_of(port: &RequestPort) -> Vec<String> {
    match (
        &port.allowed_source_address_prefix,
        &port.allowed_source_address_prefixes,
    ) {
        (Some(one), _) => vec![one.clone()],
        (None, Some(many)) => many.clone(),
        (None, None) => Vec::new(),
    }
}

/// The request id a justification names, if it looks like one of ours.
pub fn drawbridge_id(request: &JitRequest) -> Option<RequestId> {
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
pub fn request_key(policy_id: &str, request: &JitRequest) -> String {
    let mut h = Sha256::new();
    h.update(policy_id.to_ascii_lowercase());
    h.update("|");
    h.update(request.start_time_utc.map(format_time).unwrap_or_default());
    h.update("|");
    h.update(request.requestor.as_deref().unwrap_or_default());
    for vm in &request.virtual_machines {
        h.update("|");
        h.update(vm.id.to_ascii_lowercase());
        for p in &vm.ports {
            h.update(format!(",{}@{}", p.number, format_time(p.end_time_utc)));
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

    fn request(justification: Option<&str>) -> JitRequest {
        serde_json::from_value(json!({
            "virtualMachines": [{"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1",
                "ports": [{"number": 22, "endTimeUtc": "2026-01-01T12:00:00Z", "status": "Initiated", "statusReason": "UserRequested"}]}],
            "startTimeUtc": "2026-01-01T10:00:00.1234567Z",
            "requestor": "barbara@contoso.com",
            "justification": justification,
        }))
        .unwrap()
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
        assert_eq!(request_key("/P", &a), request_key("/p", &a));
        let mut b = a.clone();
        b.virtual_machines[0].ports[0].end_time_utc += chrono::TimeDelta::minutes(1);
        assert_ne!(request_key("/p", &a), request_key("/p", &b));
        // The status changes over time; the key must not.
        let mut c = a.clone();
        c.virtual_machines[0].ports[0].status = "Revoked".into();
        assert_eq!(request_key("/p", &a), request_key("/p", &c));
        assert!(notice_key(&RequestId::generate()).len() <= 25);
    }
}
