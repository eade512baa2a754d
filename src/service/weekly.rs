//! The weekly report in the audit channel: the picture (PNG), its numbers
//! (CSV) and a short summary, posted on the configured slot
//! (`report.weekly`, e.g. Monday 09:00 UTC) and on `/jit-admin report`.
//!
//! The scheduler asks [`Service::post_weekly_report`] on every pass. The
//! post goes through the outbox, queued in the transaction that claims the
//! slot's row ([`crate::store::StoreTx::claim_weekly_report`]), so a slot is
//! posted exactly once across restarts and replicas, and a slot missed
//! while the bot was down is posted late, within
//! [`weekly::LATE_GRACE`].

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::json;

use super::Service;
use crate::chat::{Attachment, ChatMessage};
use crate::domain::report::WeekSummary;
use crate::domain::report::weekly::{self, WEEK_DAYS};
use crate::store::{OutboxKind, OutboxMessage, StoreError};

/// Why a report could not be posted. Internal causes are logged, never
/// shown.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// No audit channel is configured.
    #[error(
        "no audit channel is configured (discord.audit_channel_id), so there is nowhere to post the report"
    )]
    NoAuditChannel,
    /// The store failed.
    #[error("the database could not be read or written")]
    Store(#[from] StoreError),
    /// Drawing or encoding failed.
    #[error("the report could not be drawn")]
    Render(#[source] anyhow::Error),
}

/// What was queued.
#[derive(Debug, Clone)]
pub struct PostedReport {
    /// The numbers.
    pub week: WeekSummary,
    /// The audit channel it goes to.
    pub channel: u64,
}

impl Service {
    /// Queues the weekly report of the slot due at `now`, once. `Ok(None)`
    /// when no weekly post is configured, none is due, or it was queued
    /// before (by this or another replica).
    ///
    /// # Errors
    /// [`ReportError`]; a missing audit channel is not one (nothing to do).
    pub async fn post_weekly_report(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<PostedReport>, ReportError> {
        let Some(slot) = self.config().weekly_report.and_then(|w| w.due(now)) else {
            return Ok(None);
        };
        let Some(channel) = self.config().audit_channel else {
            return Ok(None);
        };
        if self.store().weekly_report_posted(slot).await? {
            return Ok(None);
        }
        let first_day = weekly::first_day(slot);
        let (week, message) = self.report_message(first_day, now).await?;
        let mut tx = self.store().begin().await?;
        if !tx.claim_weekly_report(slot, now).await? {
            tx.rollback().await?;
            return Ok(None);
        }
        tx.enqueue(post(
            channel,
            &message,
            format!("weekly-{}", slot.date_naive()),
            now,
        ))
        .await?;
        tx.commit().await?;
        self.wakers().outbox.notify_one();
        tracing::info!(slot = %slot, "weekly report queued");
        Ok(Some(PostedReport { week, channel }))
    }

    /// `/jit-admin report`: queues the report of the last seven days (up to
    /// today) for the audit channel, once per interaction `interaction_id`.
    ///
    /// # Errors
    /// [`ReportError`].
    pub async fn post_report_now(
        &self,
        interaction_id: &str,
        now: DateTime<Utc>,
    ) -> Result<PostedReport, ReportError> {
        let channel = self
            .config()
            .audit_channel
            .ok_or(ReportError::NoAuditChannel)?;
        let first_day = (now - Duration::days(i64::from(WEEK_DAYS) - 1)).date_naive();
        let (week, message) = self.report_message(first_day, now).await?;
        let id: String = interaction_id.chars().take(20).collect();
        self.store()
            .enqueue(post(channel, &message, format!("rpt-{id}"), now))
            .await?;
        self.wakers().outbox.notify_one();
        Ok(PostedReport { week, channel })
    }

    /// The [`WEEK_DAYS`] days from `first_day` as of `now`: the numbers, and
    /// the message with the summary, the PNG and the CSV. Coverage is asked
    /// of Azure; when it does not answer the report says "not checked".
    async fn report_message(
        &self,
        first_day: NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<(WeekSummary, ChatMessage), ReportError> {
        let mut week = crate::report::gather(self.store(), first_day, WEEK_DAYS, now).await?;
        match self.unprotected_vms().await {
            Ok(without) => week.without_jit = Some(without),
            Err(e) => tracing::warn!(error.message = %e, "coverage not checked for the report"),
        }
        let drawn = week.clone();
        let (png, csv) = tokio::task::spawn_blocking(move || {
            let png = crate::report::render_png(&drawn).map_err(anyhow::Error::from)?;
            let csv = crate::report::render_csv(&drawn)?;
            anyhow::Ok((png, csv))
        })
        .await
        .map_err(|e| ReportError::Render(e.into()))?
        .map_err(ReportError::Render)?;
        let name = format!("drawbridge-week-{first_day}");
        let file = |ext: &str, data: Vec<u8>| {
            Attachment::new(&format!("{name}.{ext}"), data)
                .map_err(|e| ReportError::Render(e.into()))
        };
        let message = ChatMessage::text(format!("**Weekly access report**\n{}", week.text()))
            .with_attachment(file("png", png)?)
            .with_attachment(file("csv", csv.into_bytes())?);
        Ok((week, message))
    }
}

/// The outbox row posting `message` to `channel` with `key`.
fn post(channel: u64, message: &ChatMessage, key: String, now: DateTime<Utc>) -> OutboxMessage {
    OutboxMessage {
        kind: OutboxKind::ChannelMessage,
        target: Some(channel.to_string()),
        payload: json!({ "message": message }),
        idempotency_key: Some(key),
        created_at: now,
    }
}
