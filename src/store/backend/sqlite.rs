//! The SQLite backend: one file, in WAL mode, with a single writer.
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
//! The schema is `migrations/sqlite/`, embedded in the binary.

use std::collections::BTreeSet;
use std::str::FromStr as _;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::migrate::{Migrate as _, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use super::applied_since;
use crate::store::{AppliedMigration, StoreError};

/// How long a writer from another process is waited for before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const READ_CONNECTIONS: u32 = 4;
/// Each connection's page cache, in KiB (SQLite's negative `cache_size`).
/// SQLite's default is 2,000 KiB per connection, and every connection fills
/// its own over time: with 10,000 mappings the four read connections held
/// about 13 MiB, and the writer's may grow to its full 2 MiB as it walks
/// an import's 10,000 outbox rows (issue 17). The file's pages stay in the
/// OS cache, so a small one costs a copy, not a disk read.
const CACHE_KIB: &str = "-256";

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

pub(in crate::store) type SqliteTx = Transaction<'static, Sqlite>;

#[derive(Debug, Clone)]
pub(in crate::store) struct SqliteDb {
    /// One connection: every write transaction goes through it.
    write: SqlitePool,
    /// Read-only (`query_only`) connections for everything else.
    read: SqlitePool,
}

/// The pools' options. No ping before each checkout (sqlx's default): a
/// connection to a local file does not go stale the way a server's does,
/// and the ping is a round trip to the connection's worker thread, so with
/// it every statement run on the pool cost two hand-offs instead of one
/// (issue 17: the hand-offs are most of the store's CPU). All the ping can
/// catch here is a connection whose worker thread died (a panic in the
/// driver); its statements then fail with an error instead.
fn pool_options() -> SqlitePoolOptions {
    SqlitePoolOptions::new().test_before_acquire(false)
}

impl SqliteDb {
    /// Opens (creating if missing) the file `url` names.
    ///
    /// # Errors
    /// [`StoreError::InvalidInput`] for an in-memory URL (`sqlite::memory:`):
    /// the read and write pools would each see a different, short-lived
    /// database; [`StoreError::Unexpected`] if the URL is malformed or the
    /// file cannot be opened.
    pub(in crate::store) async fn connect(url: &str) -> Result<SqliteDb, StoreError> {
        if url.contains(":memory:") || url.contains("mode=memory") {
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
            .busy_timeout(BUSY_TIMEOUT)
            .pragma("cache_size", CACHE_KIB);
        let write = pool_options()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .with_context(|| format!("opening the database `{url}`"))?;
        let read = pool_options()
            .max_connections(READ_CONNECTIONS)
            .connect_with(options.pragma("query_only", "ON"))
            .await
            .with_context(|| format!("opening read connections to `{url}`"))?;
        Ok(SqliteDb { write, read })
    }

    /// Opens the existing file `url` names for reading only: nothing is
    /// created, migrated or written (audit tools on a live database or a
    /// backup).
    ///
    /// # Errors
    /// [`StoreError::InvalidInput`] when there is no such file;
    /// [`StoreError::Unexpected`] if the URL is malformed or the file cannot
    /// be opened.
    pub(in crate::store) async fn connect_read_only(url: &str) -> Result<SqliteDb, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("parsing the database URL `{url}`"))?;
        let path = options.get_filename();
        if url.contains(":memory:") || !path.is_file() {
            return Err(StoreError::InvalidInput(format!(
                "there is no database file at {}",
                path.display()
            )));
        }
        let options = options
            .create_if_missing(false)
            .read_only(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = pool_options()
            .max_connections(1)
            .connect_with(options)
            .await
            .with_context(|| format!("opening the database `{url}` read-only"))?;
        Ok(SqliteDb {
            write: pool.clone(),
            read: pool,
        })
    }

    /// Writes a consistent copy of the database to the new file `path`
    /// (`VACUUM INTO`: one read transaction, so concurrent writers neither
    /// block it nor tear it).
    pub(in crate::store) async fn backup_into(
        &self,
        path: &std::path::Path,
    ) -> Result<(), StoreError> {
        let target = path.to_str().ok_or_else(|| {
            StoreError::InvalidInput(format!("{} is not a UTF-8 path", path.display()))
        })?;
        sqlx::query("VACUUM INTO ?")
            .bind(target)
            .execute(&self.read)
            .await
            .with_context(|| format!("copying the database to {}", path.display()))?;
        Ok(())
    }

    pub(in crate::store) fn read(&self) -> &SqlitePool {
        &self.read
    }

    pub(in crate::store) fn write(&self) -> &SqlitePool {
        &self.write
    }

    /// `BEGIN IMMEDIATE` on the writer: the write lock is taken now, not at
    /// the first write.
    pub(in crate::store) async fn begin(&self) -> Result<SqliteTx, StoreError> {
        Ok(self
            .write
            .begin_with("BEGIN IMMEDIATE")
            .await
            .context("starting a write transaction")?)
    }

    /// A deferred `BEGIN` on a reader: in WAL mode its first read fixes the
    /// snapshot every later read sees.
    pub(in crate::store) async fn snapshot(&self) -> Result<SqliteTx, StoreError> {
        Ok(self
            .read
            .begin()
            .await
            .context("starting a read transaction")?)
    }

    pub(in crate::store) async fn migrate(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        let mut conn = self
            .write
            .acquire()
            .await
            .context("connecting to migrate")?;
        conn.ensure_migrations_table()
            .await
            .context("creating the migrations table")?;
        let before: BTreeSet<i64> = conn
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
        Ok(applied_since(&MIGRATOR, &before))
    }

    pub(in crate::store) async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}
