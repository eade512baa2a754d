//! The store: Drawbridge's durable state, through sqlx, on the database that
//! `database.url` names: a SQLite file (`sqlite://…`, the embedded default)
//! or a PostgreSQL server (`postgres://…`) that several replicas share.
//!
//! | table | holds |
//! |---|---|
//! | `audit_log`, `audit_head` | the hash-chained, append-only audit log ([`audit`]) |
//! | `mappings` | role mappings ([`mappings`]) |
//! | `grants`, `grant_transitions`, `grant_states` | the request lifecycle ([`grants`]) |
//! | `outbox` | messages to deliver to Discord, retried until delivered ([`outbox`]) |
//! | `schedule`, `schedule_kinds` | durable timers: reminders and expiries ([`schedule`]) |
//! | `user_settings` | saved source prefixes ([`settings`]) |
//! | `ip_links` | one-time IP capture links ([`ip_links`]) |
//! | `azure_requests_seen` | JIT requests made outside Drawbridge, reported once ([`reconcile`]) |
//! | `interactions_seen` | interactions the HTTP endpoint took, so a replay never runs twice ([`interactions`]) |
//! | `leases` | work one replica at a time does: reconciliation, the index refresh, the audit channel ([`leases`]) |
//!
//! The schema lives in `migrations/<backend>/`, embedded with
//! `sqlx::migrate!()` and applied by [`Store::open`] and [`Store::migrate`].
//!
//! # One façade, one SQL, several backends
//!
//! [`Store`] and [`StoreTx`] are the only types callers see, whatever the
//! backend. The URL's scheme picks the backend inside (`backend`, private);
//! the table modules write each query once and run it on whichever backend
//! is open. That works because every query keeps to what SQLite and
//! PostgreSQL both accept:
//!
//! - `$1`, `$2`, … placeholders (a repeated `$1` is one value on both);
//! - `INSERT … ON CONFLICT (…) DO NOTHING` or `DO UPDATE`, then a read when
//!   the caller needs the row that won. A failed statement aborts the whole
//!   transaction on PostgreSQL, so no code path expects a constraint error
//!   and carries on;
//! - `RETURNING`, `COALESCE`, `CASE`, sub-selects; no SQLite-only functions
//!   (`json_*`, `datetime`) and no `LIMIT -1`.
//!
//! # Types both backends decode alike
//!
//! | what | column | Rust |
//! |---|---|---|
//! | times | `TEXT`, the audit log's format ([`crate::domain::audit::format_time`]): RFC 3339, UTC, microseconds, `Z` | `String`, parsed to `DateTime<Utc>` |
//! | row ids, seqs, counts, minutes | `INTEGER` (SQLite) / `BIGINT` (PostgreSQL) | `i64` |
//! | request ids, Discord snowflakes | `TEXT` (a snowflake is a `u64`, which neither stores natively) | `String` |
//! | JSON (specs, payloads, details) | `TEXT`, as written | `String`, parsed with serde |
//!
//! Times are text, not `timestamptz`, because the audit chain hashes the
//! formatted time: the stored text *is* what was hashed, on every backend.
//! The format is fixed width, so text order is time order and `<=` compares
//! times; on PostgreSQL those columns are `TEXT COLLATE "C"` so the order is
//! byte order whatever the server's locale. Integers are 64-bit everywhere
//! because sqlx's PostgreSQL driver decodes `i64` only from `BIGINT`. Rows
//! the store cannot read back (bad time, unknown state, invalid id) are
//! [`StoreError::CorruptRow`], never a panic.
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
//! The audit chain reads its head and appends after it; a grant transition
//! reads the state and moves it; a timer claim picks due rows and marks
//! them. Each must see the row it changes unchanged until it commits.
//!
//! - On SQLite, [`Store::begin`] takes the database's write lock up front
//!   (`BEGIN IMMEDIATE` on a single writer connection: see
//!   `backend/sqlite.rs`), so every write transaction runs alone.
//! - On PostgreSQL, `begin` is a plain `BEGIN` (read committed) on a pool
//!   of several connections, and the serialization moves into the rows:
//!   the reads that precede a write lock what they read. The audit append
//!   reads `audit_head … FOR UPDATE` (the head row is the chain's lock, so
//!   two replicas never fork it), `transition_grant` reads the grant
//!   `FOR UPDATE` (its `UPDATE … WHERE state = <the state read>` already
//!   refuses a lost race), and the timer claim's sub-select takes
//!   `FOR UPDATE SKIP LOCKED`; outbox rows will be claimed the same way.
//!   SQLite has no `FOR UPDATE`, so those clauses will come from the
//!   backend, empty on SQLite, where the transaction already holds the lock;
//!   each such read is marked `PostgreSQL:` in the code.

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use crate::domain::audit::format_time;

pub mod approvals;
pub mod audit;
mod backend;
pub mod copy;
mod error;
pub mod export;
pub mod grants;
pub mod interactions;
pub mod ip_links;
pub mod leases;
pub mod mappings;
pub mod outbox;
pub mod reconcile;
pub mod schedule;
pub mod settings;
mod weekly;

pub use approvals::{Approval, ApprovalRequest};
pub use audit::{AuditFilter, AuditRecord, AuditVerification, BrokenLink};
pub use error::StoreError;
pub use grants::{Grant, GrantTransition, InsertOutcome, InteractionToken, NewGrant};
pub use ip_links::{IpLink, LinkClaim};
pub use leases::Lease;
pub use mappings::{MappingChange, MappingDiff};
pub use outbox::{OutboxKind, OutboxMessage, OutboxRow, OutboxStats};
pub use schedule::{ScheduleKind, ScheduledItem};

/// How to connect, beyond the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// The most connections a PostgreSQL pool opens (`database.max_connections`).
    /// SQLite ignores it: it has one writer and a few readers.
    pub max_connections: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
        }
    }
}

use backend::{Db, Tx, with_read};

/// The database: cheap to clone (connection pools behind `Arc`s).
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
    /// The audit head this process last wrote, where appends may start
    /// from it (see [`audit::HeadGuess`]).
    head_guess: audit::HeadGuess,
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
    /// As [`Store::connect`], and [`StoreError::Unexpected`] if a migration
    /// fails (an applied migration that was edited is such a failure).
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        Self::open_with(url, &StoreOptions::default()).await
    }

    /// [`Store::open`] with a PostgreSQL URL such as
    /// `postgres://drawbridge@db.example.com/drawbridge?sslmode=verify-full`
    /// too, its pool sized by `options`.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub async fn open_with(url: &str, options: &StoreOptions) -> Result<Store, StoreError> {
        let store = Self::connect_with(url, options).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens (creating if missing) the database at `url` without migrating:
    /// for `drawbridge migrate`, which then calls [`Store::migrate`] and
    /// reports what it applied.
    ///
    /// # Errors
    /// [`StoreError::InvalidInput`] for a URL whose scheme is not a backend,
    /// or an in-memory SQLite URL (`sqlite::memory:`: the read and write
    /// pools would each see a different, short-lived database);
    /// [`StoreError::Unexpected`] if the URL is malformed or the database
    /// cannot be opened.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Self::connect_with(url, &StoreOptions::default()).await
    }

    /// [`Store::connect`] with `options`.
    ///
    /// # Errors
    /// As [`Store::connect`]; a PostgreSQL server that cannot be reached, or
    /// a database on it that does not exist, is [`StoreError::Unexpected`].
    pub async fn connect_with(url: &str, options: &StoreOptions) -> Result<Store, StoreError> {
        Ok(Store {
            db: Db::connect(url, options).await?,
            head_guess: audit::HeadGuess::default(),
        })
    }

    /// Opens the existing database at `url` for reading only: a missing
    /// file is an error, nothing is created or migrated, and every write
    /// fails (`drawbridge audit`, `drawbridge backup`).
    ///
    /// # Errors
    /// [`StoreError::InvalidInput`] when there is no such database or the
    /// scheme is not a backend; [`StoreError::Unexpected`] if it cannot be
    /// opened.
    pub async fn open_read_only(url: &str) -> Result<Store, StoreError> {
        Ok(Store {
            db: Db::connect_read_only(url).await?,
            head_guess: audit::HeadGuess::default(),
        })
    }

    /// Writes a consistent copy of the database, taken while it is in use,
    /// to the new file `path`.
    ///
    /// # Errors
    /// [`StoreError::InvalidInput`] for a path that is not UTF-8;
    /// [`StoreError::Unexpected`] if the copy fails (for one, because `path`
    /// exists and is not empty).
    pub async fn backup_to(&self, path: &std::path::Path) -> Result<(), StoreError> {
        self.db.backup_into(path).await
    }

    /// Applies pending migrations and returns those it applied, in order
    /// (none when the schema is current).
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if a migration fails or an applied one was
    /// edited.
    pub async fn migrate(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        let applied = self.db.migrate().await?;
        // The schema now refuses an audit row that does not follow the head
        // (migration 0100), so a guessed head is safe to append after.
        self.head_guess.enable(self.db.single_replica());
        Ok(applied)
    }

    /// Whether this store is shared by several replicas at most one at a
    /// time: SQLite is one process's file (one replica, docs/operations.md),
    /// so the replicas' leases have no one to exclude there, and a restart
    /// must not wait for the lease its previous life left behind.
    #[must_use]
    pub fn single_replica(&self) -> bool {
        self.db.single_replica()
    }

    /// Checks that the database answers (for `/readyz`).
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if it does not.
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_read!(&self.db, |c| sqlx::query("SELECT 1")
            .execute(c)
            .await
            .map(|_| ()))
        .context("pinging the database")?;
        Ok(())
    }

    /// Closes every connection, waiting for work in progress.
    pub async fn close(&self) {
        self.db.close().await;
    }

    /// Starts a write transaction, serialized with every other writer (see
    /// the module docs). Dropping it without [`StoreTx::commit`] rolls it
    /// back.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database cannot be reached or stays
    /// locked by another process past the busy timeout.
    pub async fn begin(&self) -> Result<StoreTx, StoreError> {
        Ok(StoreTx {
            tx: self.db.begin().await?,
            audit_head: None,
            head_guess: self.head_guess.clone(),
        })
    }
}

/// A write transaction: every write of the store is a method here, so a
/// caller can put a grant, its audit event and its outbox rows in one commit.
#[derive(Debug)]
pub struct StoreTx {
    tx: Tx,
    /// The audit chain's head as this transaction left it, once read: the
    /// head row is read (and on PostgreSQL locked) once per transaction,
    /// however many events it appends.
    audit_head: Option<(i64, String)>,
    /// Where the head this transaction leaves is kept for the next one.
    head_guess: audit::HeadGuess,
}

impl StoreTx {
    /// Makes every write of this transaction durable.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the commit fails (nothing was written).
    pub async fn commit(self) -> Result<(), StoreError> {
        // Kept before the commit is known to succeed: the next transaction
        // may begin as soon as this one ends, and a head that was not
        // written is only a guess the database refuses.
        if let Some(head) = self.audit_head {
            self.head_guess.keep(head);
        }
        self.tx.commit().await
    }

    /// Discards every write of this transaction (dropping it does the same).
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the rollback fails.
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await
    }
}

/// `url` as it may be shown in a message or a log: any password replaced by
/// `***`.
pub fn display_url(url: &str) -> String {
    backend::redacted(url)
}

/// A time as stored.
fn ts(at: DateTime<Utc>) -> String {
    format_time(at)
}

/// `at` as reading it back after [`ts`] gives it (to the microsecond), for
/// rows returned without a read-back.
fn as_stored(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

/// Reads a stored time back; `table` and `key` name the row for the error.
fn parse_ts(table: &'static str, key: &str, text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::corrupt(table, key, format!("bad time `{text}`: {e}")))
}

fn parse_opt_ts(
    table: &'static str,
    key: &str,
    text: Option<&str>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    text.map(|t| parse_ts(table, key, t)).transpose()
}

/// A row count as both backends take it.
fn limit_i64(limit: u32) -> i64 {
    i64::from(limit)
}
