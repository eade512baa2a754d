//! Phase 5: what Azure answered, written down. Each outcome is one
//! transaction: the grant's new state, its audit event and its timers (the
//! reminders still ahead and the expiry), so a crash leaves either all of it
//! or none.
//!
//! The end recorded is Azure's `endTimeUtc`, never the one asked for.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::domain::audit::format_time;
use crate::domain::port_truth::{self, PortTruth};
use crate::domain::{
    AccessDuration, AuditAction, AuditEvent, GrantEvent, IndexedVm, Outcome, RequestId,
};
use crate::interactions::Invocation;
use crate::service::jit_port::{Initiated, JitError};
use crate::service::lifecycle::{CloseOutcome, Closed, GrantActionError};
use crate::service::request::RequestError;
use crate::service::{Service, actor, messages};
use crate::store::{Grant, ScheduleKind, StoreError, StoreTx};

const TIMERS: &[ScheduleKind] = &[ScheduleKind::Reminder, ScheduleKind::Expiry];

impl Service {
    /// Settles a new grant: `active` until Azure's end, or `failed` with
    /// Azure's reason; `pending_azure` when Azure gave no usable answer, then
    /// settled from `vm`'s policy read back ([`super::unclear`]).
    ///
    /// # Errors
    /// [`RequestError::Azure`] when Azure did not open it.
    pub(crate) async fn settle_opened(
        &self,
        who: &Invocation,
        vm: &IndexedVm,
        grant: Grant,
        outcome: Result<Initiated, JitError>,
    ) -> Result<Grant, RequestError> {
        self.settle_opened_by(&actor(who.member.user_id), vm, grant, outcome)
            .await
    }

    /// [`Service::settle_opened`], audited as `by` (an approved request is
    /// opened by its last approver's click).
    ///
    /// # Errors
    /// [`RequestError::Azure`] when Azure did not open it.
    pub(crate) async fn settle_opened_by(
        &self,
        by: &str,
        vm: &IndexedVm,
        grant: Grant,
        outcome: Result<Initiated, JitError>,
    ) -> Result<Grant, RequestError> {
        let by = by.to_owned();
        match outcome {
            Ok(initiated) => Ok(self.record_opened(&by, &grant, &initiated).await?),
            Err(error @ JitError::NoAnswer { .. }) => {
                tracing::info!(error.message = %error, "initiate outcome unclear; reading the policy back");
                self.settle_unclear(&by, vm, grant).await
            }
            Err(error) => {
                let message = error.user_message();
                self.record_failed(&by, &grant, &message).await?;
                Err(RequestError::Azure { message })
            }
        }
    }

    /// Records Azure's end for `grant` (`active`), its audit event (by
    /// `by`) and its timers, in one transaction.
    pub(crate) async fn record_opened(
        &self,
        by: &str,
        grant: &Grant,
        initiated: &Initiated,
    ) -> Result<Grant, StoreError> {
        let id = &grant.request_id;
        // An approved requester is told in the transaction below how to
        // connect; the address may be read from Azure, so before it begins.
        let connection = if self.told_in_reply(grant).await? {
            self.connection_of(grant).await
        } else {
            None
        };
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        let event = GrantEvent::Initiated { end: initiated.end };
        let grant = tx
            .transition_seen_grant(grant, &event, Some(&initiated.detail), now)
            .await?;
        let audit = AuditEvent::new(
            now,
            by,
            AuditAction::AccessInitiated,
            &grant.vm_name,
            Outcome::Success,
        );
        tx.append_audit(&audit.with_detail(json!({
            "request_id": id.as_str(),
            "ports": grant.ports.to_string(),
            "source": grant.source.to_string(),
            "end": format_time(initiated.end),
        })))
        .await?;
        self.schedule_timers(&mut tx, id, initiated.end, now)
            .await?;
        // Read once: it says both who tells the requester and what.
        let approval = tx.approval_request(id).await?;
        let approvers_tell = approval.as_ref().is_some_and(|r| !r.break_glass);
        self.tell_if_approved_by(&mut tx, &grant, approval, "g", connection.as_deref())
            .await?;
        if !approvers_tell {
            let reply = messages::grant_with(&grant, &self.config().aliases, connection.as_deref());
            self.queue_own_reply(&mut tx, &grant, &reply).await?;
        }
        tx.commit().await?;
        Ok(grant)
    }

    /// Records `grant` as `failed` with `message` and its audit event.
    pub(crate) async fn record_failed(
        &self,
        by: &str,
        grant: &Grant,
        message: &str,
    ) -> Result<Grant, StoreError> {
        let now = self.clock().now();
        let id = &grant.request_id;
        let mut tx = self.store().begin().await?;
        let mut failed = tx.transition_grant(id, &GrantEvent::Failed, now).await?;
        tx.set_grant_failure(id, message).await?;
        failed.failure = Some(message.to_owned());
        let audit = AuditEvent::new(
            now,
            by,
            AuditAction::AccessFailed,
            &grant.vm_name,
            Outcome::Failed,
        );
        tx.append_audit(&audit.with_detail(json!({"request_id": id.as_str(), "error": message})))
            .await?;
        self.tell_if_approved(&mut tx, &failed, "f").await?;
        let error = RequestError::Azure {
            message: message.to_owned(),
        };
        let reply = messages::request_error(&error, id.as_str());
        self.tell_own_reply(&mut tx, &failed, &reply).await?;
        tx.commit().await?;
        Ok(failed)
    }

    /// Settles an extension: `extended` until Azure's new end, with the
    /// timers moved to it.
    ///
    /// # Errors
    /// If the store fails.
    pub(crate) async fn settle_extended(
        &self,
        by: &str,
        grant: &Grant,
        window: AccessDuration,
        initiated: &Initiated,
        now: DateTime<Utc>,
    ) -> Result<Grant, StoreError> {
        let id = &grant.request_id;
        let mut tx = self.store().begin().await?;
        let event = GrantEvent::Extended { end: initiated.end };
        let updated = tx.transition_grant(id, &event, now).await?;
        tx.cancel_schedule(id, TIMERS, now).await?;
        self.schedule_timers(&mut tx, id, initiated.end, now)
            .await?;
        let audit = AuditEvent::new(
            now,
            by,
            AuditAction::AccessExtended,
            &grant.vm_name,
            Outcome::Success,
        );
        let mut detail = json!({
            "request_id": id.as_str(),
            "window": window.to_string(),
            "end": format_time(initiated.end),
        });
        if let Some(from) = initiated.detail.get("settled_from") {
            detail["settled_from"] = from.clone();
        }
        tx.append_audit(&audit.with_detail(detail)).await?;
        tx.commit().await?;
        Ok(updated)
    }

    /// Settles Close early: `closed_early` at the time Azure shows;
    /// `superseded` or `ended` when Azure had already ended it; back to open
    /// when Azure could not be asked (`Err` holds the member's sentence).
    ///
    /// # Errors
    /// [`GrantActionError`] with Azure's reason when it did not close.
    pub(crate) async fn settle_closed(
        &self,
        who: &Invocation,
        grant: &Grant,
        was_extended: bool,
        outcome: Result<CloseOutcome, String>,
        now: DateTime<Utc>,
    ) -> Result<Closed, GrantActionError> {
        let id = &grant.request_id;
        let mut tx = self.store().begin().await?;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(message) => {
                let back = GrantEvent::CloseFailed {
                    back_to_extended: was_extended,
                };
                tx.transition_grant(id, &back, now).await?;
                tx.commit().await?;
                return Err(RequestError::Azure { message }.into());
            }
        };
        let by = actor(who.member.user_id);
        let updated = match &outcome {
            CloseOutcome::NotOpen { ports } => {
                self.record_ended_in_azure(&mut tx, grant, ports, &by, now)
                    .await?
            }
            _ => record_closed(&mut tx, grant, &outcome, &by, now).await?,
        };
        tx.commit().await?;
        Ok(Closed {
            grant: updated,
            outcome,
        })
    }

    /// Records that Azure shows `grant` ended (`ports` say how): its state,
    /// its reason, its timers cancelled and the audit event, in `tx`.
    pub(crate) async fn record_ended_in_azure(
        &self,
        tx: &mut StoreTx,
        grant: &Grant,
        ports: &[PortTruth],
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Grant, StoreError> {
        let id = &grant.request_id;
        let ended = port_truth::ended(ports, grant.end_time.unwrap_or(now).min(now));
        let event = GrantEvent::EndedInAzure {
            superseded: ended.superseded,
            at: ended.at,
        };
        let mut updated = tx.transition_grant(id, &event, now).await?;
        tx.set_grant_failure(id, &ended.sentence).await?;
        updated.failure = Some(ended.sentence.clone());
        tx.cancel_schedule(id, TIMERS, now).await?;
        let audit = AuditEvent::new(
            now,
            by,
            AuditAction::AccessEndedInAzure,
            &grant.vm_name,
            Outcome::Info,
        );
        tx.append_audit(&audit.with_detail(json!({
            "request_id": id.as_str(),
            "owner": grant.user_id.to_string(),
            "superseded": ended.superseded,
            "reason": ended.reason,
            "ended_at": format_time(ended.at),
            "by_requestor": ended.by.as_ref().and_then(|b| b.requestor.clone()),
            "by_source": ended.by.as_ref().map(|b| b.source.clone()),
        })))
        .await?;
        Ok(updated)
    }

    /// Schedules the reminders that are still ahead and the expiry at `end`.
    pub(crate) async fn schedule_timers(
        &self,
        tx: &mut StoreTx,
        id: &RequestId,
        end: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let reminders = self
            .config()
            .reminders_before
            .iter()
            .filter_map(|before| chrono::Duration::from_std(*before).ok())
            .map(|before| end - before)
            .filter(|due| *due > now)
            .map(|due| (ScheduleKind::Reminder, due));
        let timers: Vec<_> = reminders.chain([(ScheduleKind::Expiry, end)]).collect();
        tx.schedule_all(id, &timers).await
    }
}

/// Records Close early as Azure read back: `closed_early` when the port
/// closes, the timers cancelled and the audit event, in `tx`.
async fn record_closed(
    tx: &mut StoreTx,
    grant: &Grant,
    outcome: &CloseOutcome,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Grant, StoreError> {
    let id = &grant.request_id;
    let closes_at = outcome.closes_at().unwrap_or(now);
    let updated = tx
        .transition_grant(id, &GrantEvent::Closed { end: closes_at }, now)
        .await?;
    tx.cancel_schedule(id, TIMERS, now).await?;
    let (requested_end, azure) = match outcome {
        CloseOutcome::Shortened {
            requested_end,
            ports,
        } => {
            let azure: Vec<_> = ports
                .iter()
                .map(|(n, until)| json!({"port": n, "open_until": until.map(format_time)}))
                .collect();
            (Some(format_time(*requested_end)), azure)
        }
        _ => (None, Vec::new()),
    };
    let audit = AuditEvent::new(
        now,
        by,
        AuditAction::AccessClosedEarly,
        &grant.vm_name,
        Outcome::Success,
    );
    tx.append_audit(&audit.with_detail(json!({
        "request_id": id.as_str(),
        "port_closes_at": format_time(closes_at),
        "requested_end": requested_end,
        "azure": azure,
    })))
    .await?;
    Ok(updated)
}
