//! The weekly report's posts: one row per slot. [`StoreTx::claim_weekly_report`]
//! inserts it in the transaction that queues the post, so a slot is posted
//! once whatever restarts or how many replicas look.

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::backend::{with_read, with_tx};
use super::{Store, StoreError, StoreTx, ts};

impl Store {
    /// Whether the report of `slot` has been posted (queued) already.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn weekly_report_posted(&self, slot: DateTime<Utc>) -> Result<bool, StoreError> {
        let found: Option<String> = with_read!(&self.db, |c| {
            sqlx::query_scalar("SELECT slot FROM weekly_reports WHERE slot = $1")
                .bind(ts(slot))
                .fetch_optional(c)
                .await
        })
        .context("reading the weekly report posts")?;
        Ok(found.is_some())
    }
}

impl StoreTx {
    /// Claims the post of `slot` at `now`: `true` for the first claim,
    /// `false` when it was claimed before (then roll back: another worker
    /// posts it, or did).
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn claim_weekly_report(
        &mut self,
        slot: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let inserted = with_tx!(&mut self.tx, |c| {
            sqlx::query(
                "INSERT INTO weekly_reports (slot, posted_at) VALUES ($1, $2)
                 ON CONFLICT (slot) DO NOTHING",
            )
            .bind(ts(slot))
            .bind(ts(now))
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .context("claiming the weekly report")?;
        Ok(inserted == 1)
    }
}
