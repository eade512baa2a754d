//! Per-user settings: the source prefix saved with `/jit-ip`.

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::backend::{with_read, with_tx};
use super::{Store, StoreError, StoreTx, ts};
use crate::domain::{SourcePrefix, UserId};

impl StoreTx {
    /// Saves `source` as `user`'s default source, replacing any before.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn save_source(
        &mut self,
        user: UserId,
        source: &SourcePrefix,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        with_tx!(&mut self.tx, |c| {
            sqlx::query(
                "INSERT INTO user_settings (user_id, source_prefix, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (user_id) DO UPDATE
                 SET source_prefix = excluded.source_prefix, updated_at = excluded.updated_at",
            )
            .bind(user.to_string())
            .bind(source.to_string())
            .bind(ts(now))
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .with_context(|| format!("saving the source of user {user}"))?;
        Ok(())
    }
}

impl Store {
    /// `user`'s saved source, if any.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] if the stored prefix no longer parses;
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn saved_source(&self, user: UserId) -> Result<Option<SourcePrefix>, StoreError> {
        let text: Option<String> = with_read!(&self.db, |c| {
            sqlx::query_scalar("SELECT source_prefix FROM user_settings WHERE user_id = $1")
                .bind(user.to_string())
                .fetch_optional(c)
                .await
        })
        .with_context(|| format!("reading the source of user {user}"))?;
        text.map(|t| {
            SourcePrefix::parse(&t)
                .map_err(|e| StoreError::corrupt("user_settings", user.to_string(), e.to_string()))
        })
        .transpose()
    }

    /// Saves one source in its own transaction; see
    /// [`StoreTx::save_source`].
    ///
    /// # Errors
    /// As [`StoreTx::save_source`].
    pub async fn save_source(
        &self,
        user: UserId,
        source: &SourcePrefix,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        tx.save_source(user, source, now).await?;
        tx.commit().await
    }
}
