//! The store: Drawbridge's durable state in SQLite through sqlx.
//!
//! | table | holds |
//! |---|---|
//! | `audit_log`, `audit_head` | the hash-chained, append-only audit log ([`audit`]) |
//! | `mappings` | role mappings ([`mappings`]) |
//! | `grants`, `grant_transitions` | the request lifecycle ([`grants`]) |
//! | `outbox` | messages to deliver to Discord, retried until delivered ([`outbox`]) |
//! | `schedule` | durable timers: reminders and expiries ([`schedule`]) |
//! | `user_settings` | saved source prefixes ([`settings`]) |
//! | `azure_requests_seen` | JIT requests made outside Drawbridge, reported once ([`reconcile`]) |
//!
//! The schema lives in `migrations/`, embedded with `sqlx::migrate!()` and
//! applied by [`Store::open`] and [`Store::migrate`].
//!
//! # Writes go through one transaction the caller composes
//!
//! "Write to the database before you send": the service opens a
//! [`StoreTx`] with [`Store::begin`], writes the grant, its audit event and
//! its outbox rows, and commits once. Nothing is sent from inside a
//! transaction; the outbox worker sends after the commit. Keep transactions
//! short: never hold one across a call to Azure or Discord.
//!
//! # Writers are serialized
//!
//! The audit chain reads the head and appends after it, and a read-then-write
//! transaction must not fail half-way with `SQLITE_BUSY`. So:
//!
//! - writes use a pool of **one** connection, so writers in this process queue
//!   on the pool rather than on SQLite's lock;
//! - every write transaction starts with `BEGIN IMMEDIATE`, taking SQLite's
//!   write lock up front (a second process waits up to the busy timeout
//!   instead of failing on the upgrade from read to write);
//! - reads use a separate pool whose connections are `query_only`; with WAL
//!   they never block the writer nor wait for it.
//!
//! # PostgreSQL later
//!
//! Nothing here assumes one process. On PostgreSQL the two pools become one
//! pool with several connections, and the serialization moves into the rows:
//! the chain append takes `SELECT … FROM audit_head WHERE id = 1 FOR UPDATE`
//! (the head row is the lock), schedule claims use
//! `FOR UPDATE SKIP LOCKED` in the claiming sub-select, grant transitions
//! already update `WHERE state = <the state read>` and the idempotent inserts
//! (`ON CONFLICT … DO NOTHING`) are portable as written. A duplicate grant
//! insert there would abort the transaction, so it would become
//! `ON CONFLICT (request_id) DO NOTHING` followed by a read. The outbox is
//! delivered by one worker per database today; several workers would claim
//! rows the way the schedule does.
//!
//! # Time
//!
//! Timestamps are stored as text in the audit log's format
//! ([`crate::domain::audit::format_time`]): fixed width, so text order is time
//! order. Rows the store cannot read back (bad time, unknown state, invalid
//! id) are [`StoreError::CorruptRow`], never a panic.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::migrate::Migrate as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use crate::domain::audit::format_time;

pub mod audit;
mod error;
pub mod export;
pub mod grants;
pub mod mappings;
pub mod outbox;
pub mod reconcile;
pub mod schedule;
pub mod settings;

pub use audit::{AuditFilter, AuditRecord, AuditVerification, BrokenLink};
pub use error::StoreError;
pub use grants::{Grant, GrantTransition, InsertOutcome, InteractionToken, NewGrant};
pub use mappings::{MappingChange, MappingDiff};
pub use outbox::{OutboxKind, OutboxMessage, OutboxRow, OutboxStats};
pub use schedule::{ScheduleKind, ScheduledItem};

/// How long a writer from another process is waited for before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections for reads.
const READ_CONNECTIONS: u32 = 4;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// The database: cheap to clone (two connection pools behind `Arc`s).
#[derive(Debug, Clone)]
pub struct Store {
    /// One connection: every write transaction goes through it.
    write: SqlitePool,
    /// Read-only (`query_only`) connections for everything else.
    read: SqlitePool,
}

/// A migration applied by [`Store::migrate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    /// Its number, e.g. 3 for `0003_grants.sql`.
    pub version: i64,
    /// Its description, e.g. `grants`.
    pub description: String,
}

impl Store {
    /// Opens (creating if missing) the database at `url`, such as
    /// `sqlite://drawbridge.db` or `sqlite:///var/lib/drawbridge/db.sqlite`,
    /// and applies pending migrations.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the URL is malformed, the file cannot be
    /// opened, or a migration fails (an applied migration that was edited is
    /// such a failure).
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let store = Self::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens (creating if missing) the database at `url` without migrating:
    /// for `drawbridge migrate`, which then calls [`Store::migrate`] and
    /// reports what it applied.
    ///
    /// # Errors
    /// [`StoreError::InvalidInput`] for an in-memory URL (`sqlite::memory:`):
    /// the read and write pools would each see a different, short-lived
    /// database; [`StoreError::Unexpected`] if the URL is malformed or the
    /// file cannot be opened.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            // Each pool would get its own, vanishing database.
            return Err(StoreError::InvalidInput(format!(
                "`{url}` is an in-memory database: use a file (a temporary one in tests)"
            )));
        }
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("parsing the database URL `{url}`"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .with_context(|| format!("opening the database `{url}`"))?;
        let read = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .connect_with(options.pragma("query_only", "ON"))
            .await
            .with_context(|| format!("opening read connections to `{url}`"))?;
        Ok(Store { write, read })
    }

    /// Applies pending migrations and returns those it applied, in order
    /// (none when the schema is current).
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if a migration fails or an applied one was
    /// edited.
    pub async fn migrate(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        let mut conn = self
            .write
            .acquire()
            .await
            .context("connecting to migrate")?;
        conn.ensure_migrations_table()
            .await
            .context("creating the migrations table")?;
        let before: std::collections::BTreeSet<i64> = conn
            .list_applied_migrations()
            .await
            .context("listing applied migrations")?
            .into_iter()
            .map(|m| m.version)
            .collect();
        MIGRATOR
            .run(&mut *conn)
            .await
            .context("applying migrations")?;
        let applied = MIGRATOR
            .iter()
            .filter(|m| m.migration_type.is_up_migration() && !before.contains(&m.version))
            .map(|m| AppliedMigration {
                version: m.version,
                description: m.description.to_string(),
            })
            .collect::<Vec<_>>();
        for m in &applied {
            tracing::info!(version = m.version, description = %m.description, "applied migration");
        }
        Ok(applied)
    }

    /// Checks that the database answers (for `/readyz`).
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if it does not.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.read)
            .await
            .context("pinging the database")?;
        Ok(())
    }

    /// Closes every connection, waiting for work in progress.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }

    /// Starts a write transaction (`BEGIN IMMEDIATE`). Dropping it without
    /// [`StoreTx::commit`] rolls it back.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database cannot be reached or stays
    /// locked by another process past the busy timeout.
    pub async fn begin(&self) -> Result<StoreTx, StoreError> {
        let tx = self
            .write
            .begin_with("BEGIN IMMEDIATE")
            .await
            .context("starting a write transaction")?;
        Ok(StoreTx { tx })
    }
}

/// A write transaction: every write of the store is a method here, so a
/// caller can put a grant, its audit event and its outbox rows in one commit.
#[derive(Debug)]
pub struct StoreTx {
    tx: Transaction<'static, Sqlite>,
}

impl StoreTx {
    /// Makes every write of this transaction durable.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the commit fails (nothing was written).
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await.context("committing a transaction")?;
        Ok(())
    }

    /// Discards every write of this transaction (dropping it does the same).
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the rollback fails.
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.tx
            .rollback()
            .await
            .context("rolling back a transaction")?;
        Ok(())
    }
}

/// A time as stored.
fn ts(at: DateTime<Utc>) -> String {
    format_time(at)
}

/// Reads a stored time back; `table` and `key` name the row for the error.
fn parse_ts(table: &'static str, key: &str, text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::corrupt(table, key, format!("bad time `{text}`: {e}")))
}

/// Reads an optional stored time back.
fn parse_opt_ts(
    table: &'static str,
    key: &str,
    text: Option<&str>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    text.map(|t| parse_ts(table, key, t)).transpose()
}

/// A count as SQLite stores it.
fn limit_i64(limit: u32) -> i64 {
    i64::from(limit)
}
