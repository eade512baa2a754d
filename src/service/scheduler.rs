//! Durable timers: reminders before a grant ends and the expiry notice when
//! it does, driven by the schedule table so a restart loses none.
//!
//! Each due item is claimed in a transaction (with a lease, so a crashed
//! worker's claims come back), and handled in ONE transaction that writes
//! the grant's new state, the audit event, the outbox message and marks the
//! item done: either all of it happens or none, so nothing fires twice. The
//! outbox then delivers with the item's idempotency key.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Service, actor, delivery, render};
use crate::domain::{AuditAction, AuditEvent, GrantEvent, Outcome};
use crate::store::{ScheduleKind, ScheduledItem, StoreError};

/// How long a claim holds before another worker may take the item.
const LEASE_SECS: i64 = 60;
/// An expiry handled later than this after its due time is marked late.
const LATE_AFTER_SECS: i64 = 60;
const BATCH: u32 = 100;
/// The longest the loop sleeps without looking (also bounds clock skew).
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// What one [`Scheduler::tick`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickOutcome {
    /// Reminders queued.
    pub reminders: usize,
    /// Expiry notices queued.
    pub expiries: usize,
    /// Items that no longer applied (grant closed or already ended).
    pub skipped: usize,
}

/// The timer worker.
pub struct Scheduler {
    service: Service,
    worker: String,
}

impl Scheduler {
    /// A worker named `worker` (unique per process).
    pub fn new(service: Service, worker: impl Into<String>) -> Self {
        Self {
            service,
            worker: worker.into(),
        }
    }

    /// Handles every item due at `now`, once.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<TickOutcome, StoreError> {
        let mut outcome = TickOutcome::default();
        loop {
            let items = self
                .service
                .store()
                .claim_due(
                    now,
                    &self.worker,
                    chrono::Duration::seconds(LEASE_SECS),
                    BATCH,
                )
                .await?;
            if items.is_empty() {
                return Ok(outcome);
            }
            for item in items {
                match self.handle(&item, now).await? {
                    Handled::Reminder => outcome.reminders += 1,
                    Handled::Expiry => outcome.expiries += 1,
                    Handled::Skipped => outcome.skipped += 1,
                }
            }
        }
    }

    async fn handle(
        &self,
        item: &ScheduledItem,
        now: DateTime<Utc>,
    ) -> Result<Handled, StoreError> {
        let store = self.service.store();
        let aliases = &self.service.config().aliases;
        let grant = store.grant(&item.request_id).await?;
        let mut tx = store.begin().await?;
        let handled = match (item.kind, grant) {
            (ScheduleKind::Reminder, Some(grant))
                if grant.state.is_open() && grant.end_time.is_some_and(|end| end > now) =>
            {
                let end = grant.end_time.expect("checked above");
                let message = render::reminder(&grant, end, aliases);
                tx.enqueue(delivery::dm(
                    grant.user_id.get(),
                    &message,
                    grant.channel_id.map(|c| c.get()),
                    format!("rem-{}", item.id),
                    now,
                ))
                .await?;
                tx.append_audit(
                    &AuditEvent::new(
                        now,
                        "system",
                        AuditAction::ReminderSent,
                        &grant.vm_name,
                        Outcome::Info,
                    )
                    .with_detail(json!({
                        "request_id": grant.request_id.as_str(),
                        "user": actor(grant.user_id),
                        "ends": crate::domain::audit::format_time(end),
                    })),
                )
                .await?;
                Handled::Reminder
            }
            (ScheduleKind::Expiry, Some(grant)) if grant.state.is_open() => {
                let late = (now - item.due_at).num_seconds() > LATE_AFTER_SECS;
                let grant = tx
                    .transition_grant(&grant.request_id, &GrantEvent::WindowEnded, now)
                    .await?;
                let message = render::expired(&grant, late, aliases);
                tx.enqueue(delivery::dm(
                    grant.user_id.get(),
                    &message,
                    grant.channel_id.map(|c| c.get()),
                    format!("exp-{}", item.id),
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
                        "ended": crate::domain::audit::format_time(item.due_at),
                        "late": late,
                    })),
                )
                .await?;
                Handled::Expiry
            }
            _ => Handled::Skipped,
        };
        if !tx.complete_schedule(item.id, now).await? {
            // Another worker finished or cancelled it meanwhile: send nothing.
            tx.rollback().await?;
            return Ok(Handled::Skipped);
        }
        tx.commit().await?;
        Ok(handled)
    }

    /// Runs until cancelled: sleeps until the earliest pending item (or a
    /// wake-up when a sooner one is scheduled, or the clock is moved), then
    /// ticks.
    pub async fn run(self, wake: Arc<Notify>, outbox: Arc<Notify>, cancel: CancellationToken) {
        loop {
            let now = self.service.clock().now();
            match self.tick(now).await {
                Ok(o) if o.reminders + o.expiries > 0 => outbox.notify_one(),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error.message = %e, error.cause_chain = ?e, "scheduler tick failed")
                }
            }
            let sleep = match self.service.store().next_due(1).await {
                Ok(items) => items
                    .first()
                    .map(|i| {
                        (i.due_at - self.service.clock().now())
                            .to_std()
                            .unwrap_or_default()
                    })
                    .unwrap_or(MAX_SLEEP)
                    .min(MAX_SLEEP),
                Err(_) => MAX_SLEEP,
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(sleep.max(Duration::from_millis(10))) => {}
            }
        }
    }
}

enum Handled {
    Reminder,
    Expiry,
    Skipped,
}
