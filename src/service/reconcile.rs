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
//!    request for the same VM and port superseded it, or it was revoked). It
//!    is settled as after every write of the bot ([`super::truth`]):
//!    `superseded` or `ended`, audited, timers cancelled, the engineer told.
//!
//! 3. **A grant whose initiate had no clear answer** (`pending_azure`) is
//!    settled from the listing, first, so that its request is not taken
//!    for one made outside Drawbridge ([`super::phases::unclear`]).
//!    A grant still `requested` when the process started was interrupted
//!    (the process died while asking Azure): it is marked `pending_azure`
//!    first and settled the same way ([`Service::pend_interrupted`]), by
//!    the holder of the reconcile lease only; with several replicas, only
//!    once it is older than an initiate can take ([`in_flight_for`]), as another live replica may
//!    still be asking Azure ([`Reconciler::settle_interrupted`]).
//! 4. **A grant we had failed or closed that Azure shows open** (our own
//!    request, by identity) is put back under Drawbridge's care: `active`,
//!    timers, audit, the owner told ([`super::truth`]).
//!
//! Our requests are recognised by identity ([`made_for`]): the justification,
//! `Drawbridge request <id> …` ([`super::request::justification`]), only
//! finds the grant; the request counts as ours when Azure's `requestor` is
//! our own identity and it matches the grant's VM, ports, source and time.
//! Anyone can type that text in the portal, and request ids are public.
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
//! What is deliberately left alone is listed in [`super::truth`].

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::Service;
use super::jit_port::JitError;
use super::replica::{self, LeaseGate};
use crate::domain::audit::format_time;
use crate::domain::{AuditAction, AuditEvent, JitRequestRecord, Outcome, RequestId, RequestedPort};
use crate::store::{Grant, StoreError};

/// How far back a closed request made outside Drawbridge is still reported
/// (Azure's longest window is one day; a little more covers a missed tick).
pub const LOOKBACK: chrono::TimeDelta = chrono::TimeDelta::hours(25);
/// How long reported requests are remembered.
const FORGET_AFTER: chrono::TimeDelta = chrono::TimeDelta::days(7);
/// How long an initiate may still be under way at another live replica,
/// unless the app knows better ([`in_flight_for`]): with several replicas,
/// a grant `requested` longer than this was interrupted.
pub const IN_FLIGHT: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// The longest an initiate can still be under way at a live replica, from
/// the ARM client's bounds: the initiate's own call, its retries of what
/// Azure refused before applying (at most `retry_total` in all), and the
/// read-back. A member whose replica died waits this long, not minutes.
pub fn in_flight_for(
    request_timeout: std::time::Duration,
    retry_total: std::time::Duration,
) -> chrono::TimeDelta {
    let bound = request_timeout
        .saturating_mul(2)
        .saturating_add(retry_total);
    chrono::TimeDelta::from_std(bound).map_or(IN_FLIGHT, |b| b.min(IN_FLIGHT))
}

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
    /// Grants whose initiate had an unclear outcome, settled from Azure.
    pub settled_pending: usize,
    /// Failed or closed grants Azure shows open, back under our care.
    pub reopened: usize,
}

/// The reconciliation worker.
pub struct Reconciler {
    service: Service,
    in_flight: chrono::TimeDelta,
}

impl Reconciler {
    /// A reconciler reading Azure's requests through the service's port.
    pub fn new(service: Service) -> Self {
        Self {
            service,
            in_flight: IN_FLIGHT,
        }
    }

    /// Takes a `requested` grant as interrupted once older than
    /// `in_flight` (with several replicas; see [`in_flight_for`]).
    #[must_use]
    pub fn with_in_flight(self, in_flight: chrono::TimeDelta) -> Self {
        Self { in_flight, ..self }
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
            settled_pending: self.service.settle_all_pending(&requests, now).await?,
            reopened: self.service.reopen_from_azure(&requests, now).await?,
            ..ReconcileOutcome::default()
        };
        let mut grants = HashMap::new();
        for request in &requests {
            if self.ours(request, &mut grants).await?.is_none()
                && self.report_outside(request, now).await?
            {
                outcome.opened_outside += 1;
            }
        }
        let store = self.service.store();
        let open = store.open_grants().await?;
        outcome.closed = self
            .service
            .settle_from_azure(&requests, &open, now, None)
            .await?;
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
        let Some(id) = request.drawbridge_id() else {
            return Ok(None);
        };
        if !grants.contains_key(&id) {
            let grant = self.service.store().grant(&id).await?;
            grants.insert(id.clone(), grant);
        }
        Ok(grants[&id]
            .as_ref()
            .filter(|g| made_for(request, g))
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

    /// Marks the requests a dead process interrupted `pending_azure` for
    /// the next round to settle ([`Service::pend_interrupted`]), if this
    /// replica holds `lease` (the reconcile lease) at `now`: `None` if it
    /// does not. One replica (SQLite) takes every request made before it
    /// `started`; with several, another live replica's request may be under
    /// way, so those older than the in-flight bound are taken, whoever made
    /// them.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn settle_interrupted(
        &self,
        lease: &LeaseGate,
        started: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<usize>, StoreError> {
        if !lease.hold(now).await {
            return Ok(None);
        }
        let store = self.service.store();
        let before = if store.single_replica() {
            started
        } else {
            now - self.in_flight
        };
        self.service.pend_interrupted(before, now).await.map(Some)
    }

    /// Reconciles now and then every `every` until cancelled. Time between
    /// rounds is real time; "now" comes from the service's clock.
    pub async fn run(self, every: Duration, cancel: CancellationToken) {
        let started = self.service.clock().now();
        let lease = LeaseGate::new(
            self.service.store().clone(),
            replica::RECONCILE,
            replica::replica_id(),
            replica::ttl_for(every),
        );
        loop {
            let now = self.service.clock().now();
            match self.settle_interrupted(&lease, started, now).await {
                Ok(Some(_)) => self.round(now).await,
                Ok(None) => tracing::debug!("another replica reconciles"),
                Err(e) => {
                    tracing::warn!(error.message = %e, "requests interrupted by a restart could not be marked for settling");
                    self.round(now).await;
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
        lease.release(self.service.clock().now()).await;
    }

    async fn round(&self, now: DateTime<Utc>) {
        match self.tick(now).await {
            Ok(o) if o.opened_outside + o.closed + o.settled_pending + o.reopened > 0 => {
                self.service.wake_after(())
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error.message = %e, "reconciliation with Azure failed; retrying next interval");
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

/// How much earlier than the grant a request of it may start by Azure's
/// clock (the two clocks differ a little).
const CLOCK_SLACK: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// Whether `request` is one Drawbridge made for `grant`: by our own
/// identity (the `requestor` Azure recorded on the grant's initiate), for
/// the grant's VM, only its ports, from its source, and not before it was
/// asked for. The justification only found the grant: request ids are
/// public (grant cards, the audit channel), so its text proves nothing.
pub fn made_for(request: &JitRequestRecord, grant: &Grant) -> bool {
    let ours = grant
        .azure_detail
        .as_ref()
        .and_then(|d| d.get("requestor"))
        .and_then(|r| r.as_str());
    let by_us = matches!((ours, request.requestor.as_deref()),
        (Some(a), Some(b)) if a.eq_ignore_ascii_case(b));
    by_us && in_time_and_window(request, grant)
}

/// Whether Azure's `requestor` of `request` is one of `identity` (ours).
pub fn is_ours(request: &JitRequestRecord, identity: &[String]) -> bool {
    request
        .requestor
        .as_deref()
        .is_some_and(|r| identity.iter().any(|me| me.eq_ignore_ascii_case(r)))
}

/// The end Azure shows for a grant whose initiate had an unclear outcome,
/// if `request` is that initiate: its justification names the grant, it
/// was made by `identity` (our own: what our token names, and what Azure
/// recorded on an earlier initiate; never unchecked), after the grant was
/// asked for, for its VM, ports and source.
pub fn pending_settled_by(
    request: &JitRequestRecord,
    grant: &Grant,
    identity: &[String],
) -> Option<DateTime<Utc>> {
    let names_it = request
        .drawbridge_id()
        .is_some_and(|id| id == grant.request_id);
    let by_us = is_ours(request, identity);
    if !(names_it && by_us && in_time_and_window(request, grant)) {
        return None;
    }
    request
        .vms
        .iter()
        .filter(|vm| vm.vm_id.eq_ignore_ascii_case(&grant.vm_id))
        .flat_map(|vm| vm.ports.iter().map(|p| p.end))
        .min()
}

/// For the grant's VM, only its ports, from its source, and not before it
/// was asked for.
fn in_time_and_window(request: &JitRequestRecord, grant: &Grant) -> bool {
    let in_time = request
        .start
        .is_some_and(|s| s >= grant.requested_at - CLOCK_SLACK);
    let numbers = grant.ports.numbers();
    let source = grant.source.to_string();
    let same_window = request.vms.iter().any(|vm| {
        vm.vm_id.eq_ignore_ascii_case(&grant.vm_id)
            && !vm.ports.is_empty()
            && vm.ports.iter().all(|p| {
                numbers.contains(&p.number)
                    && p.sources.len() == 1
                    && p.sources[0].eq_ignore_ascii_case(&source)
            })
    });
    in_time && same_window
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
