//! Durable timers: reminders before a grant ends and the expiry notice when
//! it does, driven by the schedule table so a restart loses none.
//!
//! Only the next due time is held in memory: [`Scheduler::run`] asks the
//! store for the earliest pending item (and the oldest live claim), sleeps
//! until then, and is woken early through [`super::Wakers::scheduler`] when a
//! use case writes timers (or a test moves its clock). Time comes from the
//! service's [`crate::clock::Clock`].
//!
//! Each due item is claimed in a transaction (with a lease, so a crashed
//! worker's claims come back after at most [`LEASE`]; the loop wakes for
//! that), then handled in ONE transaction that first marks the item done
//! (refusing if it was done or cancelled meanwhile), then writes the grant's
//! new state, the audit event and the outbox message: either all of it
//! happens or none, so nothing fires twice. The claim only keeps workers from
//! doing the same work at once; the conditional "done" is what makes firing
//! happen once. The outbox then delivers with the item's idempotency key
//! (`rem-<id>`, `exp-<id>`; see [`super::delivery`]).
//!
//! After a restart, items that fell due while the bot was down are handled
//! once, in due order: a reminder whose grant has already ended is skipped,
//! and an expiry handled more than a minute after its due time says it is
//! late.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Service, actor, delivery, messages};
use crate::domain::audit::format_time;
use crate::domain::{AuditAction, AuditEvent, GrantEvent, GrantState, Outcome};
use crate::store::{Grant, ScheduleKind, ScheduledItem, StoreError, StoreTx};

/// How long a claim holds before another worker may take the item. Handling
/// one item is one short local transaction, so this is generous; it bounds
/// how long an item claimed by a worker that then crashed waits.
pub const LEASE: Duration = Duration::from_secs(10);
/// An expiry handled later than this after its due time is marked late.
const LATE_AFTER_SECS: i64 = 60;
/// How long Extend's or Close early's claim on a grant holds off its
/// expiry: longer than one Azure call with its retries. A claim older than
/// this is taken to be a crashed process's, and the expiry goes ahead.
pub const CLAIM_LEASE: chrono::TimeDelta = chrono::TimeDelta::minutes(5);
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
                .claim_due(now, &self.worker, lease(), BATCH)
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
        let mut tx = self.service.store().begin().await?;
        // Done first, in the transaction of the effects: a second worker (or
        // a cancel by Extend / Close early) that got there first wins.
        if !tx.complete_schedule(item.id, now).await? {
            tx.rollback().await?;
            return Ok(Handled::Skipped);
        }
        // Read in the write transaction, so the state cannot move under us.
        let grant = tx.grant(&item.request_id).await?;
        let handled = match (item.kind, grant) {
            (ScheduleKind::Reminder, Some(grant))
                if matches!(grant.state, GrantState::Active | GrantState::Extended) =>
            {
                match grant.end_time.filter(|end| *end > now) {
                    Some(end) => {
                        self.remind(&mut tx, item, &grant, end, now).await?;
                        Handled::Reminder
                    }
                    None => Handled::Skipped,
                }
            }
            // Extend or Close early holds the grant: its outcome moves the
            // timers. Expiry looks again once the claim could be stale.
            (ScheduleKind::Expiry, Some(grant))
                if grant.state.is_claimed() && now < grant.state_changed_at + CLAIM_LEASE =>
            {
                let again = grant.state_changed_at + CLAIM_LEASE;
                tx.schedule(&grant.request_id, ScheduleKind::Expiry, again)
                    .await?;
                Handled::Skipped
            }
            (ScheduleKind::Expiry, Some(grant)) if grant.state.is_open() => {
                self.expire(&mut tx, item, &grant, now).await?;
                Handled::Expiry
            }
            // Nobody decided in time: the request expires (Approve, Deny or
            // Cancel cancel this timer in the transaction that decides).
            (ScheduleKind::ApprovalTimeout, Some(grant))
                if grant.state == GrantState::PendingApproval =>
            {
                self.service.expire_pending(&mut tx, &grant, now).await?;
                Handled::Expiry
            }
            // Nobody answered the question: it is cancelled (an answer
            // cancels this timer in the transaction that claims the grant).
            (ScheduleKind::QuestionTimeout, Some(grant))
                if grant.state == GrantState::Confirming =>
            {
                self.service.expire_question(&mut tx, &grant, now).await?;
                Handled::Expiry
            }
            _ => Handled::Skipped,
        };
        tx.commit().await?;
        Ok(handled)
    }

    /// Queues the reminder DM for `grant`, ending at `end`, and audits it.
    async fn remind(
        &self,
        tx: &mut StoreTx,
        item: &ScheduledItem,
        grant: &Grant,
        end: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let connection = self.service.cached_connection(grant);
        let message = messages::reminder(
            grant,
            end,
            &self.service.config().aliases,
            connection.as_deref(),
        );
        let key = format!("rem-{}", item.id);
        tx.enqueue(delivery::dm_to_owner(grant, &message, key, now))
            .await?;
        let event = AuditEvent::new(
            now,
            "system",
            AuditAction::ReminderSent,
            &grant.vm_name,
            Outcome::Info,
        );
        tx.append_audit(&event.with_detail(json!({
            "request_id": grant.request_id.as_str(),
            "user": actor(grant.user_id),
            "ends": format_time(end),
        })))
        .await?;
        Ok(())
    }

    /// Ends `grant` (`WindowEnded`), queues the expiry notice and audits it.
    async fn expire(
        &self,
        tx: &mut StoreTx,
        item: &ScheduledItem,
        grant: &Grant,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let late = (now - item.due_at).num_seconds() > LATE_AFTER_SECS;
        let id = &grant.request_id;
        let grant = tx
            .transition_grant(id, &GrantEvent::WindowEnded, now)
            .await?;
        // Any reminder still pending (a restart long after the end) no
        // longer applies.
        tx.cancel_schedule(id, &[ScheduleKind::Reminder], now)
            .await?;
        let message = messages::expired(&grant, late, &self.service.config().aliases);
        let key = format!("exp-{}", item.id);
        tx.enqueue(delivery::dm_to_owner(&grant, &message, key, now))
            .await?;
        let event = AuditEvent::new(
            now,
            "system",
            AuditAction::AccessExpired,
            &grant.vm_name,
            Outcome::Info,
        );
        tx.append_audit(&event.with_detail(json!({
            "request_id": id.as_str(),
            "user": actor(grant.user_id),
            "ended": format_time(item.due_at),
            "late": late,
            "note": "established sessions are not cut when the port closes",
        })))
        .await?;
        Ok(())
    }

    /// When the loop should look next: the earliest pending item, or the
    /// moment the oldest live claim (of a worker that may have crashed)
    /// runs out, whichever is first. `None` when nothing is pending.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn next_wake(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let store = self.service.store();
        let due = store.next_due(1).await?.first().map(|i| i.due_at);
        let lease_end = store.oldest_claim().await?.map(|at| at + lease());
        let weekly = self
            .service
            .config()
            .weekly_report
            .map(|w| w.next_after(self.service.clock().now()));
        Ok([due, lease_end, weekly].into_iter().flatten().min())
    }

    /// [`Self::tick`], waking the outbox when it queued messages and
    /// logging a failure.
    async fn tick_logged(&self, now: DateTime<Utc>, outbox: &Notify) {
        match self.tick(now).await {
            Ok(o) if o.reminders + o.expiries > 0 => outbox.notify_one(),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error.message = %e, error.cause_chain = ?e, "scheduler tick failed")
            }
        }
    }

    /// Runs until cancelled: sleeps until the earliest pending item (or a
    /// wake-up when a sooner one is scheduled, or the clock is moved), then
    /// ticks when something is due.
    pub async fn run(self, wake: Arc<Notify>, outbox: Arc<Notify>, cancel: CancellationToken) {
        // A clock that jumps (tests, the demo) wakes the loop when it moves:
        // nothing else would, and the sleep was computed on the old time.
        let mut moves = self.service.clock().moves();
        loop {
            let now = self.service.clock().now();
            // Before the timers: a pass that queued a reminder has also
            // looked at the weekly report.
            if let Err(e) = self.service.post_weekly_report(now).await {
                tracing::error!(error.message = %e, error.cause_chain = ?e, "posting the weekly report failed");
            }
            // Most wake-ups are a use case that wrote timers due later (a
            // grant's reminder and expiry): the reads of `next_wake` say so,
            // and the claim's write transaction is skipped.
            let next = match self.next_wake().await {
                Ok(next) if next.is_none_or(|at| at > now) => Ok(next),
                _ => {
                    self.tick_logged(now, &outbox).await;
                    self.next_wake().await
                }
            };
            match self.service.flush_refusal_summaries(now).await {
                Ok(0) => {}
                Ok(_) => outbox.notify_one(),
                Err(e) => {
                    tracing::error!(error.message = %e, error.cause_chain = ?e, "posting refusal summaries failed")
                }
            }
            let sleep = match next {
                Ok(Some(at)) => (at - self.service.clock().now())
                    .to_std()
                    .unwrap_or_default()
                    .min(MAX_SLEEP),
                Ok(None) => MAX_SLEEP,
                Err(e) => {
                    tracing::warn!(error.message = %e, "could not read the next timer");
                    MAX_SLEEP
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = wake.notified() => {}
                _ = clock_moved(moves.as_mut()) => {}
                _ = tokio::time::sleep(sleep.max(Duration::from_millis(10))) => {}
            }
        }
    }
}

/// Resolves when a jumping clock moves; never for one that only flows (or
/// whose sender is gone).
async fn clock_moved(moves: Option<&mut tokio::sync::watch::Receiver<()>>) {
    let Some(rx) = moves else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn lease() -> chrono::Duration {
    chrono::Duration::from_std(LEASE).expect("the lease fits")
}

enum Handled {
    Reminder,
    Expiry,
    Skipped,
}
