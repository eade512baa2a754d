//! Phase 5: what Azure answered, written down. Each outcome is one
//! transaction: the grant's new state, its audit event and its timers (the
//! reminders still ahead and the expiry), so a crash leaves either all of it
//! or none.
//!
//! The end recorded is Azure's `endTimeUtc`, never the one asked for.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::domain::audit::format_time;
use crate::domain::{
    AccessDuration, AuditAction, AuditEvent, CloseOutcome, GrantEvent, Outcome, RequestId,
};
use crate::interactions::Invocation;
use crate::service::jit_port::{Initiated, JitError};
use crate::service::lifecycle::{Closed, GrantActionError};
use crate::service::request::RequestError;
use crate::service::{Service, actor};
use crate::store::{Grant, ScheduleKind, StoreError, StoreTx};

const TIMERS: &[ScheduleKind] = &[ScheduleKind::Reminder, ScheduleKind::Expiry];

impl Service {
    /// Settles a new grant: `active` until Azure's end, or `failed` with
    /// Azure's reason.
    ///
    /// # Errors
    /// [`RequestError::Azure`] when Azure did not open it.
    pub(crate) async fn settle_opened(
        &self,
        who: &Invocation,
        grant: Grant,
        outcome: Result<Initiated, JitError>,
    ) -> Result<Grant, RequestError> {
        match outcome {
            Ok(initiated) => Ok(self.record_opened(who, &grant, &initiated).await?),
            Err(error) => {
                let message = error.user_message();
                self.record_failed(who, &grant, &message).await?;
                Err(RequestError::Azure { message })
            }
        }
    }

    async fn record_opened(
        &self,
        who: &Invocation,
        grant: &Grant,
        initiated: &Initiated,
    ) -> Result<Grant, StoreError> {
        let now = self.clock().now();
        let id = &grant.request_id;
        let mut tx = self.store().begin().await?;
        let event = GrantEvent::Initiated { end: initiated.end };
        let grant = tx.transition_grant(id, &event, now).await?;
        tx.set_azure_detail(id, &initiated.detail).await?;
        let audit = AuditEvent::new(
            now,
            actor(who.member.user_id),
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
        tx.commit().await?;
        Ok(grant)
    }

    async fn record_failed(
        &self,
        who: &Invocation,
        grant: &Grant,
        message: &str,
    ) -> Result<(), StoreError> {
        let now = self.clock().now();
        let id = &grant.request_id;
        let mut tx = self.store().begin().await?;
        tx.transition_grant(id, &GrantEvent::Failed, now).await?;
        tx.set_grant_failure(id, message).await?;
        let audit = AuditEvent::new(
            now,
            actor(who.member.user_id),
            AuditAction::AccessFailed,
            &grant.vm_name,
            Outcome::Failed,
        );
        tx.append_audit(&audit.with_detail(json!({"request_id": id.as_str(), "error": message})))
            .await?;
        tx.commit().await
    }

    /// Settles an extension: `extended` until Azure's new end, with the
    /// timers moved to it.
    ///
    /// # Errors
    /// If the store fails.
    pub(crate) async fn settle_extended(
        &self,
        who: &Invocation,
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
            actor(who.member.user_id),
            AuditAction::AccessExtended,
            &grant.vm_name,
            Outcome::Success,
        );
        tx.append_audit(&audit.with_detail(json!({
            "request_id": id.as_str(),
            "window": window.to_string(),
            "end": format_time(initiated.end),
        })))
        .await?;
        tx.commit().await?;
        Ok(updated)
    }

    /// Settles Close early: `closed_early` at the time Azure shows, or
    /// back to open when Azure could not be asked (`Err` holds the
    /// member's sentence).
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
        let closes_at = outcome.closes_at();
        let event = GrantEvent::Closed { end: closes_at };
        let updated = tx.transition_grant(id, &event, now).await?;
        tx.cancel_schedule(id, TIMERS, now).await?;
        let azure_status: Vec<_> = outcome
            .ports
            .iter()
            .map(|p| json!({"port": p.number, "status": p.status}))
            .collect();
        let audit = AuditEvent::new(
            now,
            actor(who.member.user_id),
            AuditAction::AccessClosedEarly,
            &grant.vm_name,
            Outcome::Success,
        );
        tx.append_audit(&audit.with_detail(json!({
            "request_id": id.as_str(),
            "port_closes_at": format_time(closes_at),
            "azure_status": azure_status,
        })))
        .await?;
        tx.commit().await?;
        Ok(Closed {
            grant: updated,
            outcome,
        })
    }

    /// Schedules the reminders that are still ahead and the expiry at `end`.
    pub(crate) async fn schedule_timers(
        &self,
        tx: &mut StoreTx,
        id: &RequestId,
        end: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        for before in &self.config().reminders_before {
            let Ok(before) = chrono::Duration::from_std(*before) else {
                continue;
            };
            let due = end - before;
            if due > now {
                tx.schedule(id, ScheduleKind::Reminder, due).await?;
            }
        }
        tx.schedule(id, ScheduleKind::Expiry, end).await?;
        Ok(())
    }
}
