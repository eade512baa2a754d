//! The SQLite backend: one file, in WAL mode, with a single writer.
//!
//! The audit chain reads the head and appends after it, and a read-then-write
//! transaction must not fail half-way with `SQLITE_BUSY`. So:
//!
//! - writes use **one** connection, so writers in this process queue for it
//!   rather than on SQLite's lock;
//! - every write transaction starts with `BEGIN IMMEDIATE`, taking SQLite's
//!   write lock up front (a second process waits up to the busy timeout
//!   instead of failing on the upgrade from read to write);
//! - reads use separate connections that are `query_only`; with WAL they
//!   never block the writer nor wait for it.
//!
//! # Connections without sqlx's pool
//!
//! Each sqlx SQLite connection runs its statements on a thread of its own,
//! and every command to it is a hand-off between threads: the cost that
//! most of the store's CPU went to (issue 17). sqlx's pool added hand-offs
//! of its own to each use: a ping of the connection, from a task spawned
//! for it, every time it went back to the pool; and, for `BEGIN IMMEDIATE`
//! and `COMMIT`, commands the connection's thread waits on until the caller
//! has taken the answer, plus a hand-over of the connection's lock to check
//! that the transaction began. [`Conns`] holds the connections itself
//! instead: a connection is taken and given back with a lock, and a
//! transaction is its three plain statements (`BEGIN IMMEDIATE`, `COMMIT`
//! or `ROLLBACK`). A transaction dropped before it ended is rolled back at
//! once by a task that takes its connection back, before anything else runs
//! on it, as sqlx's own transaction does on drop.
//!
//! The schema is `migrations/sqlite/`, embedded in the binary.

use std::collections::BTreeSet;
use std::ops::{Deref, DerefMut};
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::migrate::{Migrate as _, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions as _, Connection as _};
use tokio::sync::{Mutex, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

use super::applied_since;
use crate::store::{AppliedMigration, StoreError};

/// How long a writer from another process is waited for before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const READ_CONNECTIONS: usize = 4;
/// How long a caller waits for a connection before giving up (sqlx's
/// pool waited as long).
const TAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Each connection's page cache, in KiB (SQLite's negative `cache_size`).
/// SQLite's default is 2,000 KiB per connection, and every connection fills
/// its own over time: with 10,000 mappings the four read connections held
/// about 13 MiB, and the writer's may grow to its full 2 MiB as it walks
/// an import's 10,000 outbox rows (issue 17). The file's pages stay in the
/// OS cache, so a small one costs a copy, not a disk read.
const CACHE_KIB: &str = "-256";

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// A connection taken from [`Conns`], given back when dropped.
#[derive(Debug)]
pub(in crate::store) struct SqliteConn {
    index: usize,
    slot: OwnedMutexGuard<Slot>,
    _permit: OwnedSemaphorePermit,
}

/// One connection's place in [`Conns`]: opened on first use.
#[derive(Debug, Default)]
struct Slot {
    conn: Option<SqliteConnection>,
    /// A transaction on it was dropped before it ended: roll it back
    /// before the next use.
    roll_back: bool,
}

/// Up to `slots.len()` connections to one file, each used by one caller at
/// a time, the first free one first (its thread is the likeliest to be
/// awake). See the module docs for why not sqlx's pool.
#[derive(Debug, Clone)]
struct Conns {
    options: Arc<SqliteConnectOptions>,
    slots: Arc<[Arc<Mutex<Slot>>]>,
    /// One permit per free slot; closed when the database is closed.
    free: Arc<Semaphore>,
}

impl Conns {
    fn new(options: SqliteConnectOptions, size: usize) -> Conns {
        Conns {
            options: Arc::new(options),
            slots: (0..size).map(|_| Arc::default()).collect(),
            free: Arc::new(Semaphore::new(size)),
        }
    }

    /// A free connection, opened if it was not yet, with any transaction
    /// left on it rolled back (see [`Conns::ready`]).
    async fn take(&self) -> Result<SqliteConn, sqlx::Error> {
        let permit = self.permit().await?;
        // A permit is held for each slot locked, so one is free now.
        let (index, slot) = self
            .slots
            .iter()
            .enumerate()
            .find_map(|(i, s)| Some((i, Arc::clone(s).try_lock_owned().ok()?)))
            .ok_or(sqlx::Error::PoolTimedOut)?;
        self.ready(index, slot, permit).await
    }

    /// The connection in slot `index`, once its user gives it back.
    async fn take_at(&self, index: usize) -> Result<SqliteConn, sqlx::Error> {
        let permit = self.permit().await?;
        let slot = self.slots.get(index).ok_or(sqlx::Error::PoolClosed)?;
        let slot = Arc::clone(slot).lock_owned().await;
        self.ready(index, slot, permit).await
    }

    async fn permit(&self) -> Result<OwnedSemaphorePermit, sqlx::Error> {
        tokio::time::timeout(TAKE_TIMEOUT, Arc::clone(&self.free).acquire_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)
    }

    /// Hands out `slot`, its connection opened if it was not yet and any
    /// transaction left on it rolled back.
    async fn ready(
        &self,
        index: usize,
        mut slot: OwnedMutexGuard<Slot>,
        permit: OwnedSemaphorePermit,
    ) -> Result<SqliteConn, sqlx::Error> {
        let Slot { conn, roll_back } = &mut *slot;
        let conn = match conn {
            Some(conn) => conn,
            None => conn.insert(self.options.connect().await?),
        };
        if *roll_back {
            // Fails only when SQLite ended the transaction itself already.
            if let Err(e) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
                tracing::debug!(error.message = %e, "rolling back a dropped transaction");
            }
            *roll_back = false;
        }
        Ok(SqliteConn {
            index,
            slot,
            _permit: permit,
        })
    }

    /// Refuses new callers, waits for the current ones, and closes every
    /// connection.
    async fn close(&self) {
        self.free.close();
        for slot in self.slots.iter() {
            let Some(conn) = slot.lock().await.conn.take() else {
                continue;
            };
            if let Err(e) = conn.close().await {
                tracing::warn!(error.message = %e, "closing a database connection");
            }
        }
    }
}

impl SqliteConn {
    /// Passes `result` on, after closing the connection if its thread is
    /// gone (sqlx's `WorkerCrashed`): the next caller then opens a new one
    /// instead of failing the same way. (sqlx's pool found such a
    /// connection with the ping it ran on every release.)
    pub(in crate::store) fn checked<T>(
        &mut self,
        result: Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        if matches!(result, Err(sqlx::Error::WorkerCrashed)) {
            tracing::error!("a database connection's thread is gone; opening a new one");
            self.slot.conn = None;
        }
        result
    }
}

impl Deref for SqliteConn {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        // `take` fills the slot before handing it out; only `close`, which
        // waits for the slot, and `checked`, after which the taken
        // connection is dropped unused, empty it.
        self.slot
            .conn
            .as_ref()
            .expect("a taken slot holds a connection")
    }
}

impl DerefMut for SqliteConn {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.slot
            .conn
            .as_mut()
            .expect("a taken slot holds a connection")
    }
}

/// A transaction on a connection of its own until it ends: `BEGIN` (or
/// `BEGIN IMMEDIATE`) was run, and `COMMIT` or `ROLLBACK` ends it. Dropped
/// open, it is rolled back at once, and always before its connection's
/// next use.
#[derive(Debug)]
pub(in crate::store) struct SqliteTx {
    conn: SqliteConn,
    open: bool,
    /// Where `conn` came from, to roll back from when dropped open.
    from: Conns,
}

impl SqliteTx {
    async fn begin(from: &Conns, statement: &'static str) -> Result<SqliteTx, sqlx::Error> {
        let mut conn = from.take().await?;
        let begun = sqlx::query(statement).execute(&mut *conn).await;
        conn.checked(begun)?;
        Ok(SqliteTx {
            conn,
            open: true,
            from: from.clone(),
        })
    }

    pub(in crate::store) async fn commit(mut self) -> Result<(), sqlx::Error> {
        self.end("COMMIT").await
    }

    pub(in crate::store) async fn rollback(mut self) -> Result<(), sqlx::Error> {
        self.end("ROLLBACK").await
    }

    async fn end(&mut self, statement: &'static str) -> Result<(), sqlx::Error> {
        let ended = sqlx::query(statement).execute(&mut *self.conn).await;
        self.conn.checked(ended)?;
        self.open = false;
        Ok(())
    }
}

impl Drop for SqliteTx {
    /// Marks the connection for a rollback and, within a runtime, takes a
    /// connection at once to run it: the writer's transaction holds
    /// SQLite's write lock, which other processes wait for, until then.
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        self.conn.slot.roll_back = true;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (from, index) = (self.from.clone(), self.conn.index);
            runtime.spawn(async move { from.take_at(index).await.map(drop) });
        }
    }
}

impl Deref for SqliteTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl DerefMut for SqliteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

#[derive(Debug, Clone)]
pub(in crate::store) struct SqliteDb {
    /// One connection: every write goes through it.
    write: Conns,
    /// Read-only (`query_only`) connections for everything else.
    read: Conns,
}

impl SqliteDb {
    /// Opens (creating if missing) the file `url` names.
    ///
    /// # Errors
    /// [`StoreError::InvalidInput`] for an in-memory URL (`sqlite::memory:`):
    /// the read and write connections would each see a different,
    /// short-lived database; [`StoreError::Unexpected`] if the URL is
    /// malformed or the file cannot be opened.
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
        let db = SqliteDb {
            write: Conns::new(options.clone(), 1),
            read: Conns::new(options.pragma("query_only", "ON"), READ_CONNECTIONS),
        };
        // Opened now (the file created, WAL set), so a bad path fails here.
        db.write
            .take()
            .await
            .with_context(|| format!("opening the database `{url}`"))?;
        db.read
            .take()
            .await
            .with_context(|| format!("opening read connections to `{url}`"))?;
        Ok(db)
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
        let conns = Conns::new(options, 1);
        conns
            .take()
            .await
            .with_context(|| format!("opening the database `{url}` read-only"))?;
        Ok(SqliteDb {
            write: conns.clone(),
            read: conns,
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
        let mut conn = self.read.take().await.context("taking a read connection")?;
        sqlx::query("VACUUM INTO ?")
            .bind(target)
            .execute(&mut *conn)
            .await
            .with_context(|| format!("copying the database to {}", path.display()))?;
        Ok(())
    }

    /// A read connection, for one statement.
    pub(in crate::store) async fn read(&self) -> Result<SqliteConn, sqlx::Error> {
        self.read.take().await
    }

    /// The writer, for one statement outside a transaction.
    pub(in crate::store) async fn write(&self) -> Result<SqliteConn, sqlx::Error> {
        self.write.take().await
    }

    /// `BEGIN IMMEDIATE` on the writer: the write lock is taken now, not at
    /// the first write.
    pub(in crate::store) async fn begin(&self) -> Result<SqliteTx, StoreError> {
        Ok(SqliteTx::begin(&self.write, "BEGIN IMMEDIATE")
            .await
            .context("starting a write transaction")?)
    }

    /// A deferred `BEGIN` on a reader: in WAL mode its first read fixes the
    /// snapshot every later read sees.
    pub(in crate::store) async fn snapshot(&self) -> Result<SqliteTx, StoreError> {
        Ok(SqliteTx::begin(&self.read, "BEGIN")
            .await
            .context("starting a read transaction")?)
    }

    pub(in crate::store) async fn migrate(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        let mut conn = self.write.take().await.context("connecting to migrate")?;
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

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    /// A connection's own state: a temporary table lives on one connection
    /// only, so it tells which connection a caller got.
    async fn marks(conn: &mut SqliteConnection) -> bool {
        sqlx::query("SELECT 1 FROM temp.marker")
            .execute(conn)
            .await
            .is_ok()
    }

    fn conns(dir: &tempfile::TempDir, size: usize) -> Conns {
        let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        Conns::new(options, size)
    }

    #[tokio::test]
    async fn a_connection_whose_thread_is_gone_is_replaced_for_the_next_caller() {
        let dir = tempfile::tempdir().unwrap();
        let conns = conns(&dir, 1);
        let mut conn = conns.take().await.unwrap();
        sqlx::query("CREATE TEMP TABLE marker (x)")
            .execute(&mut *conn)
            .await
            .unwrap();
        drop(conn);
        let mut again = conns.take().await.unwrap();
        assert!(marks(&mut again).await, "given back, the same connection");

        let gone = again.checked::<()>(Err(sqlx::Error::WorkerCrashed));
        assert!(matches!(gone, Err(sqlx::Error::WorkerCrashed)));
        drop(again);
        let mut fresh = conns.take().await.unwrap();
        assert!(!marks(&mut fresh).await, "a new connection");
    }

    #[tokio::test]
    async fn callers_get_the_first_free_connection_and_wait_when_none_is() {
        let dir = tempfile::tempdir().unwrap();
        let conns = conns(&dir, 2);
        let mut first = conns.take().await.unwrap();
        sqlx::query("CREATE TEMP TABLE marker (x)")
            .execute(&mut *first)
            .await
            .unwrap();
        let mut second = conns.take().await.unwrap();
        assert!(!marks(&mut second).await);
        drop(second);
        drop(first);
        let mut next = conns.take().await.unwrap();
        assert!(marks(&mut next).await, "the first connection again");

        let _other = conns.take().await.unwrap();
        let mut waiting = Box::pin(conns.take());
        assert!((&mut waiting).now_or_never().is_none(), "none is free");
        drop(next);
        let mut freed = waiting.await.unwrap();
        assert!(marks(&mut freed).await, "the one given back");
    }
}
