//! Leases: work one replica at a time must do (table `leases`).
//!
//! With several replicas on one PostgreSQL database, reconciliation with
//! Azure, the VM index refresh and the audit channel's ordered stream each
//! run on whichever replica holds their lease. [`Store::try_lease`] takes a
//! lease that is free or expired, or renews one the caller holds; it is one
//! `INSERT … ON CONFLICT DO UPDATE … WHERE`, atomic on both backends (on
//! PostgreSQL the conflicting row is locked and the `WHERE` re-checked
//! against its latest version). A holder renews well before expiry; one that
//! dies loses the lease when it expires and another replica takes over.
//!
//! Each change of holder raises the lease's fence: a number the holder can
//! stamp its work with, so work of a holder that lost the lease (paused
//! past its expiry) can be told from the current one's.

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::backend::{with_read, with_write};
use super::{Store, StoreError, parse_ts, ts};

/// A lease as held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// What it is for.
    pub name: String,
    /// Who holds it.
    pub holder: String,
    /// Grows by one each time the lease changes hands.
    pub fence: i64,
    /// When the holder took it.
    pub acquired_at: DateTime<Utc>,
    /// When it lapses unless renewed.
    pub expires_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct LeaseRow {
    name: String,
    holder: String,
    fence: i64,
    acquired_at: String,
    expires_at: String,
}

impl TryFrom<LeaseRow> for Lease {
    type Error = StoreError;

    fn try_from(row: LeaseRow) -> Result<Self, StoreError> {
        Ok(Lease {
            acquired_at: parse_ts("leases", &row.name, &row.acquired_at)?,
            expires_at: parse_ts("leases", &row.name, &row.expires_at)?,
            name: row.name,
            holder: row.holder,
            fence: row.fence,
        })
    }
}

const LEASE_COLUMNS: &str = "name, holder, fence, acquired_at, expires_at";

impl Store {
    /// Takes the lease `name` for `holder` until `now + ttl` if it is free,
    /// expired, or already `holder`'s (then it is renewed, same fence).
    /// Returns the lease when `holder` has it, `None` when another holder's
    /// lease is still running.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<Option<Lease>, StoreError> {
        // `leases.*` are the stored values, `excluded.*` the proposed ones.
        // A live lease of the same holder is renewed; any other take
        // starts a new tenure with the next fence.
        let sql = format!(
            "INSERT INTO leases (name, holder, fence, acquired_at, expires_at)
             VALUES ($1, $2, 1, $3, $4)
             ON CONFLICT (name) DO UPDATE SET
                 fence = CASE WHEN leases.holder = excluded.holder
                              AND leases.expires_at > excluded.acquired_at
                         THEN leases.fence ELSE leases.fence + 1 END,
                 acquired_at = CASE WHEN leases.holder = excluded.holder
                                    AND leases.expires_at > excluded.acquired_at
                               THEN leases.acquired_at ELSE excluded.acquired_at END,
                 holder = excluded.holder,
                 expires_at = excluded.expires_at
             WHERE leases.holder = excluded.holder OR leases.expires_at <= excluded.acquired_at
             RETURNING {LEASE_COLUMNS}"
        );
        let row: Option<LeaseRow> = with_write!(&self.db, |c| {
            sqlx::query_as(&sql)
                .bind(name)
                .bind(holder)
                .bind(ts(now))
                .bind(ts(now + ttl))
                .fetch_optional(c)
                .await
        })
        .with_context(|| format!("taking the lease {name}"))?;
        row.map(Lease::try_from).transpose()
    }

    /// Gives the lease `name` up at `now` if `holder` has it, so another
    /// replica takes it at once (on a clean shutdown).
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn release_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        with_write!(&self.db, |c| {
            sqlx::query(
                "UPDATE leases SET expires_at = $3
                 WHERE name = $1 AND holder = $2 AND expires_at > $3",
            )
            .bind(name)
            .bind(holder)
            .bind(ts(now))
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .with_context(|| format!("releasing the lease {name}"))?;
        Ok(())
    }

    /// The lease `name` if someone holds it at `now`.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn lease(&self, name: &str, now: DateTime<Utc>) -> Result<Option<Lease>, StoreError> {
        let sql = format!("SELECT {LEASE_COLUMNS} FROM leases WHERE name = $1 AND expires_at > $2");
        let row: Option<LeaseRow> = with_read!(&self.db, |c| {
            sqlx::query_as(&sql)
                .bind(name)
                .bind(ts(now))
                .fetch_optional(c)
                .await
        })
        .with_context(|| format!("reading the lease {name}"))?;
        row.map(Lease::try_from).transpose()
    }
}
