//! What reconciliation with Azure remembers: the JIT requests made outside
//! Drawbridge that it has already reported (table `azure_requests_seen`).

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::backend::{with_read, with_tx};
use super::{Store, StoreError, StoreTx, ts};

impl StoreTx {
    /// Remembers the Azure request `key` as reported by audit event
    /// `audit_seq`. Returns `false`, writing nothing, if it was remembered
    /// before: roll back then, so the event is reported once.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn remember_azure_request(
        &mut self,
        key: &str,
        policy_id: &str,
        started_at: Option<DateTime<Utc>>,
        audit_seq: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let inserted = with_tx!(&mut self.tx, |c| {
            sqlx::query(
                "INSERT INTO azure_requests_seen (key, policy_id, started_at, seen_at, audit_seq)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(policy_id)
            .bind(started_at.map(ts))
            .bind(ts(now))
            .bind(audit_seq)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .with_context(|| format!("remembering Azure request {key}"))?;
        Ok(inserted == 1)
    }

    /// Forgets requests that started before `before` (Azure can no longer
    /// show them as open, and reconciliation no longer looks at them).
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn forget_azure_requests(
        &mut self,
        before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        Ok(with_tx!(&mut self.tx, |c| {
            sqlx::query("DELETE FROM azure_requests_seen WHERE started_at < $1")
                .bind(ts(before))
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .context("forgetting old Azure requests")?)
    }
}

impl Store {
    /// Whether the Azure request `key` was reported already.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn azure_request_seen(&self, key: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = with_read!(&self.db, |c| {
            sqlx::query_scalar("SELECT audit_seq FROM azure_requests_seen WHERE key = $1")
                .bind(key)
                .fetch_optional(c)
                .await
        })
        .with_context(|| format!("looking up Azure request {key}"))?;
        Ok(found.is_some())
    }
}
