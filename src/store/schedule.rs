//! Durable timers: reminders and expiries that survive a restart and fire
//! once.
//!
//! The scheduler sleeps until the earliest [`Store::next_due`], then claims
//! due items with [`Store::claim_due`] under a lease, acts on each, and in the
//! transaction that records what it did calls [`StoreTx::complete_schedule`];
//! if that returns `false` the item was completed or cancelled meanwhile and
//! the transaction should be rolled back, so nothing is sent twice. An item
//! whose claim is older than the lease (its worker crashed) is claimed again;
//! [`Store::oldest_claim`] tells when the next such claim runs out.

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::backend::{with_read, with_tx};
use super::{Store, StoreError, StoreTx, limit_i64, parse_opt_ts, parse_ts, ts};
use crate::domain::RequestId;

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScheduleKind {
    /// Remind the engineer before the window ends.
    Reminder,
    /// The window ends: notify and mark the grant expired.
    Expiry,
    /// A request pending approval expires unless decided first.
    ApprovalTimeout,
    /// A question nobody answered (a `confirming` grant) is cancelled.
    QuestionTimeout,
}

impl ScheduleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reminder => "reminder",
            Self::Expiry => "expiry",
            Self::ApprovalTimeout => "approval_timeout",
            Self::QuestionTimeout => "question_timeout",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reminder" => Some(Self::Reminder),
            "expiry" => Some(Self::Expiry),
            "approval_timeout" => Some(Self::ApprovalTimeout),
            "question_timeout" => Some(Self::QuestionTimeout),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledItem {
    pub id: i64,
    /// The grant it belongs to.
    pub request_id: RequestId,
    /// What it is for.
    pub kind: ScheduleKind,
    pub due_at: DateTime<Utc>,
    /// When it was claimed, if it is.
    pub claimed_at: Option<DateTime<Utc>>,
    /// Which worker claimed it.
    pub claimed_by: Option<String>,
}

#[derive(sqlx::FromRow)]
struct ScheduleRow {
    id: i64,
    request_id: String,
    kind: String,
    due_at: String,
    claimed_at: Option<String>,
    claimed_by: Option<String>,
}

impl TryFrom<ScheduleRow> for ScheduledItem {
    type Error = StoreError;

    fn try_from(row: ScheduleRow) -> Result<Self, StoreError> {
        const T: &str = "schedule";
        let key = row.id.to_string();
        Ok(ScheduledItem {
            id: row.id,
            request_id: RequestId::parse(&row.request_id)
                .map_err(|e| StoreError::corrupt(T, &key, e.to_string()))?,
            kind: ScheduleKind::parse(&row.kind)
                .ok_or_else(|| StoreError::corrupt(T, &key, format!("kind `{}`", row.kind)))?,
            due_at: parse_ts(T, &key, &row.due_at)?,
            claimed_at: parse_opt_ts(T, &key, row.claimed_at.as_deref())?,
            claimed_by: row.claimed_by,
        })
    }
}

const SCHEDULE_COLUMNS: &str = "id, request_id, kind, due_at, claimed_at, claimed_by";

/// The statement of [`Store::claim_due`]: `$1` now, `$2` the worker, `$3`
/// the oldest claim still held (now minus the lease), `$4` the limit. `lock`
/// is the backend's clause for the sub-select (`FOR UPDATE SKIP LOCKED` on
/// PostgreSQL, empty on SQLite).
///
/// Its sub-select repeats the condition of the partial index
/// `schedule_due` (`done_at IS NULL AND cancelled_at IS NULL`) so that the
/// claim searches that index instead of scanning every timer ever
/// scheduled; public so that a test can `EXPLAIN` exactly this statement.
#[doc(hidden)]
pub fn claim_due_sql(lock: &str) -> String {
    format!(
        "UPDATE schedule SET claimed_at = $1, claimed_by = $2
         WHERE id IN (
             SELECT id FROM schedule
             WHERE done_at IS NULL AND cancelled_at IS NULL AND due_at <= $1
               AND (claimed_at IS NULL OR claimed_at <= $3)
             ORDER BY due_at, id LIMIT $4{lock})
         RETURNING {SCHEDULE_COLUMNS}"
    )
}

impl StoreTx {
    /// Schedules a `kind` timer for the grant at `due_at` and returns its id.
    /// Scheduling the same timer again returns the same id (and makes it
    /// pending again if it was cancelled; a fired one stays fired).
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails, including when no
    /// grant has that request id.
    pub async fn schedule(
        &mut self,
        request_id: &RequestId,
        kind: ScheduleKind,
        due_at: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let due = ts(due_at);
        let id: i64 = with_tx!(&mut self.tx, |c| {
            sqlx::query_scalar(
                "INSERT INTO schedule (request_id, kind, due_at) VALUES ($1, $2, $3)
                 ON CONFLICT (request_id, kind, due_at) DO UPDATE SET cancelled_at = NULL
                 RETURNING id",
            )
            .bind(request_id.as_str())
            .bind(kind.as_str())
            .bind(&due)
            .fetch_one(c)
            .await
        })
        .with_context(|| format!("scheduling the {} of grant {request_id}", kind.as_str()))?;
        Ok(id)
    }

    /// Schedules each of `timers` for the grant, as [`StoreTx::schedule`]
    /// does one, in one statement.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails, including when no
    /// grant has that request id.
    pub async fn schedule_all(
        &mut self,
        request_id: &RequestId,
        timers: &[(ScheduleKind, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        let mut timers: Vec<(&str, String)> = timers
            .iter()
            .map(|(kind, due)| (kind.as_str(), ts(*due)))
            .collect();
        // One row per timer: PostgreSQL refuses a statement that would
        // update one row twice.
        timers.sort_unstable();
        timers.dedup();
        if timers.is_empty() {
            return Ok(());
        }
        let rows: Vec<String> = (0..timers.len())
            .map(|i| format!("($1, ${}, ${})", 2 * i + 2, 2 * i + 3))
            .collect();
        let sql = format!(
            "INSERT INTO schedule (request_id, kind, due_at) VALUES {}
             ON CONFLICT (request_id, kind, due_at) DO UPDATE SET cancelled_at = NULL",
            rows.join(", ")
        );
        with_tx!(&mut self.tx, |c| {
            timers
                .iter()
                .fold(
                    sqlx::query(&sql).bind(request_id.as_str()),
                    |q, (kind, due)| q.bind(*kind).bind(due),
                )
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .with_context(|| format!("scheduling {} timers of grant {request_id}", timers.len()))?;
        Ok(())
    }

    /// Cancels the grant's pending timers of these kinds (for example the
    /// reminder and expiry when it is extended or closed) and returns how
    /// many were cancelled.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn cancel_schedule(
        &mut self,
        request_id: &RequestId,
        kinds: &[ScheduleKind],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut cancelled = 0;
        for kind in kinds {
            cancelled += with_tx!(&mut self.tx, |c| {
                sqlx::query(
                    "UPDATE schedule SET cancelled_at = $1
                     WHERE request_id = $2 AND kind = $3 AND done_at IS NULL AND cancelled_at IS NULL",
                )
                .bind(ts(now))
                .bind(request_id.as_str())
                .bind(kind.as_str())
                .execute(c)
                .await
                .map(|r| r.rows_affected())
            })
            .with_context(|| format!("cancelling the {} of grant {request_id}", kind.as_str()))?;
        }
        Ok(cancelled)
    }

    /// Marks the timer done, in the transaction that records what firing it
    /// did. Returns `false` if it was done or cancelled already: roll back
    /// then, so its effect happens once.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if there is no such timer;
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn complete_schedule(
        &mut self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        const COMPLETE: &str = "UPDATE schedule SET done_at = $1
            WHERE id = $2 AND done_at IS NULL AND cancelled_at IS NULL";
        let updated = with_tx!(&mut self.tx, |c| {
            sqlx::query(COMPLETE)
                .bind(ts(now))
                .bind(id)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .with_context(|| format!("completing timer {id}"))?;
        if updated == 1 {
            return Ok(true);
        }
        let exists: Option<i64> = with_tx!(&mut self.tx, |c| {
            sqlx::query_scalar("SELECT id FROM schedule WHERE id = $1")
                .bind(id)
                .fetch_optional(c)
                .await
        })
        .with_context(|| format!("looking up timer {id}"))?;
        match exists {
            Some(_) => Ok(false),
            None => Err(StoreError::not_found("timer", id.to_string())),
        }
    }
}

impl Store {
    /// Up to `limit` pending, unclaimed timers, earliest first: what the
    /// scheduler sleeps until.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn next_due(&self, limit: u32) -> Result<Vec<ScheduledItem>, StoreError> {
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedule
             WHERE done_at IS NULL AND cancelled_at IS NULL AND claimed_at IS NULL
             ORDER BY due_at, id LIMIT $1"
        );
        let rows: Vec<ScheduleRow> = with_read!(&self.db, |c| {
            sqlx::query_as(&sql)
                .bind(limit_i64(limit))
                .fetch_all(c)
                .await
        })
        .context("listing the next timers")?;
        rows.into_iter().map(ScheduledItem::try_from).collect()
    }

    /// When the oldest claim on a pending timer was taken, if any timer is
    /// claimed and not yet done: a worker that crashed holding it leaves it
    /// for others once the lease runs out, so the scheduler wakes then
    /// ([`Store::next_due`] lists unclaimed timers only).
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn oldest_claim(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let at: Option<String> = with_read!(&self.db, |c| {
            sqlx::query_scalar(
                "SELECT MIN(claimed_at) FROM schedule
                 WHERE done_at IS NULL AND cancelled_at IS NULL AND claimed_at IS NOT NULL",
            )
            .fetch_one(c)
            .await
        })
        .context("reading the oldest timer claim")?;
        parse_opt_ts("schedule", "oldest claim", at.as_deref())
    }

    /// When each timer that has neither fired nor been cancelled is due,
    /// claimed or not, earliest first: the demo stops its clock at each.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn pending_due_times(&self) -> Result<Vec<DateTime<Utc>>, StoreError> {
        let due: Vec<String> = with_read!(&self.db, |c| {
            sqlx::query_scalar(
                "SELECT due_at FROM schedule
                 WHERE done_at IS NULL AND cancelled_at IS NULL ORDER BY due_at, id",
            )
            .fetch_all(c)
            .await
        })
        .context("listing pending timers")?;
        due.iter()
            .map(|t| parse_ts("schedule", "pending", t))
            .collect()
    }

    /// Atomically claims up to `limit` pending timers due at `now` for
    /// `worker`, earliest first: unclaimed ones and ones whose claim is
    /// older than `lease`. Two workers never get the same timer from one
    /// round of claims.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn claim_due(
        &self,
        now: DateTime<Utc>,
        worker: &str,
        lease: chrono::Duration,
        limit: u32,
    ) -> Result<Vec<ScheduledItem>, StoreError> {
        let mut tx = self.begin().await?;
        let sql = claim_due_sql(tx.tx.skip_locked());
        let rows: Vec<ScheduleRow> = with_tx!(&mut tx.tx, |c| {
            sqlx::query_as(&sql)
                .bind(ts(now))
                .bind(worker)
                .bind(ts(now - lease))
                .bind(limit_i64(limit))
                .fetch_all(c)
                .await
        })
        .with_context(|| format!("claiming due timers for {worker}"))?;
        tx.commit().await?;
        let mut items = rows
            .into_iter()
            .map(ScheduledItem::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        items.sort_by_key(|a| (a.due_at, a.id));
        Ok(items)
    }

    /// Marks one timer done in its own transaction; see
    /// [`StoreTx::complete_schedule`].
    ///
    /// # Errors
    /// As [`StoreTx::complete_schedule`].
    pub async fn complete_schedule(&self, id: i64, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = tx.complete_schedule(id, now).await?;
        tx.commit().await?;
        Ok(done)
    }
}
