//! Interactions the HTTP endpoint has taken (table `interactions_seen`):
//! the store as [`InteractionLedger`], so a replayed delivery never runs
//! twice, on any replica.

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

use super::backend::{with_read, with_tx};
use super::{Store, ts};
use crate::interactions::{Claim, InteractionLedger};

/// How long an id is remembered: well past the 5 minutes a signed
/// timestamp is accepted, so no replay can outlive its row.
const REMEMBERED: Duration = Duration::hours(1);

#[async_trait]
impl InteractionLedger for Store {
    async fn claim(&self, id: &str, now: DateTime<Utc>) -> anyhow::Result<Claim> {
        let mut tx = self.begin().await?;
        with_tx!(&mut tx.tx, |c| {
            sqlx::query("DELETE FROM interactions_seen WHERE received_at < $1")
                .bind(ts(now - REMEMBERED))
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .context("forgetting old interactions")?;
        let inserted = with_tx!(&mut tx.tx, |c| {
            sqlx::query(
                "INSERT INTO interactions_seen (id, received_at) VALUES ($1, $2)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(ts(now))
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .with_context(|| format!("claiming interaction {id}"))?;
        let claim = if inserted == 1 {
            Claim::First
        } else {
            let response: Option<Option<String>> = with_tx!(&mut tx.tx, |c| {
                sqlx::query_scalar("SELECT response FROM interactions_seen WHERE id = $1")
                    .bind(id)
                    .fetch_optional(c)
                    .await
            })
            .with_context(|| format!("reading interaction {id}"))?;
            Claim::Repeat(response.flatten())
        };
        tx.commit().await?;
        Ok(claim)
    }

    async fn record(&self, id: &str, response: &str) -> anyhow::Result<()> {
        let mut tx = self.begin().await?;
        with_tx!(&mut tx.tx, |c| {
            sqlx::query("UPDATE interactions_seen SET response = $2 WHERE id = $1")
                .bind(id)
                .bind(response)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .with_context(|| format!("recording the response of interaction {id}"))?;
        tx.commit().await?;
        Ok(())
    }

    async fn first_response(&self, id: &str) -> anyhow::Result<Option<String>> {
        let response: Option<Option<String>> = with_read!(&self.db, |c| {
            sqlx::query_scalar("SELECT response FROM interactions_seen WHERE id = $1")
                .bind(id)
                .fetch_optional(c)
                .await
        })
        .with_context(|| format!("reading interaction {id}"))?;
        Ok(response.flatten())
    }
}
