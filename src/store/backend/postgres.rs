//! The PostgreSQL backend: a shared server that several replicas use at
//! once.
//!
//! - One pool of `database.max_connections` connections serves reads and
//!   writes. Transactions are plain `BEGIN` (read committed); the reads that
//!   precede a write lock what they read (`FOR UPDATE`, from
//!   [`super::Tx::for_update`]), so the serialization SQLite gets from its one
//!   writer lives in the rows here (see the store's module docs).
//! - TLS is rustls, with the web PKI roots built in: `sslmode=require` (or
//!   `verify-full`, with `sslrootcert=` for a private CA) in the URL turns it
//!   on, as libpq's parameters do. The managed Azure server requires it.
//! - The schema is `migrations/postgres/`, embedded in the binary, kept in
//!   step with `migrations/sqlite/` by a test that compares the two.
//!   sqlx takes an advisory lock while it migrates, so replicas starting
//!   together apply each migration once.

use std::collections::BTreeSet;
use std::str::FromStr as _;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::migrate::{Migrate as _, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use super::{applied_since, redacted};
use crate::store::{AppliedMigration, StoreError, StoreOptions};

/// The advisory lock replicas take around migrating (any fixed number:
/// "drawbridge" as bytes).
const MIGRATE_LOCK: i64 = 0x0064_7261_7762_7267;
/// How long a connection is waited for before a query fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

pub(in crate::store) type PgTx = Transaction<'static, Postgres>;

#[derive(Debug, Clone)]
pub(in crate::store) struct PgDb {
    pool: PgPool,
}

/// Parses `url` without echoing it (it may carry a password).
fn options(url: &str) -> Result<PgConnectOptions, StoreError> {
    PgConnectOptions::from_str(url)
        .map(|o| o.application_name("drawbridge"))
        .map_err(|e| {
            StoreError::InvalidInput(format!(
                "the database URL `{}` is not a valid PostgreSQL URL: {}",
                redacted(url),
                without_url(&e.to_string(), url)
            ))
        })
}

/// `text` with `url` taken out, should a driver message quote it.
fn without_url(text: &str, url: &str) -> String {
    text.replace(url, &redacted(url))
}

impl PgDb {
    /// Connects a pool of `options.max_connections` to the server `url`
    /// names. The database must exist (create it with `createdb` or the
    /// cloud console); the schema is created by migrating.
    pub(in crate::store) async fn connect(
        url: &str,
        store: &StoreOptions,
    ) -> Result<PgDb, StoreError> {
        Self::connect_with(url, store, options(url)?).await
    }

    /// Connects for reading only: every transaction is read-only on the
    /// server, so nothing can be written through this store.
    pub(in crate::store) async fn connect_read_only(url: &str) -> Result<PgDb, StoreError> {
        let options = options(url)?.options([("default_transaction_read_only", "on")]);
        Self::connect_with(url, &StoreOptions::default(), options).await
    }

    async fn connect_with(
        url: &str,
        store: &StoreOptions,
        options: PgConnectOptions,
    ) -> Result<PgDb, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(store.max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| {
                anyhow::anyhow!("{}", without_url(&e.to_string(), url))
                    .context(format!("connecting to the database `{}`", redacted(url)))
            })?;
        Ok(PgDb { pool })
    }

    pub(in crate::store) fn read(&self) -> &PgPool {
        &self.pool
    }

    pub(in crate::store) fn write(&self) -> &PgPool {
        &self.pool
    }

    /// A read-committed transaction; its reads lock what a write depends on.
    pub(in crate::store) async fn begin(&self) -> Result<PgTx, StoreError> {
        Ok(self
            .pool
            .begin()
            .await
            .context("starting a write transaction")?)
    }

    /// One consistent snapshot for every read of the transaction.
    pub(in crate::store) async fn snapshot(&self) -> Result<PgTx, StoreError> {
        Ok(self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .context("starting a read transaction")?)
    }

    pub(in crate::store) async fn migrate(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        let mut conn = self.pool.acquire().await.context("connecting to migrate")?;
        // Replicas starting together: sqlx's own lock comes after it creates
        // its table, which two of them would do at once.
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATE_LOCK)
            .execute(&mut *conn)
            .await
            .context("waiting for another replica's migration")?;
        let applied = self.migrate_locked(&mut conn).await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATE_LOCK)
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            // The lock ends with the session: do not hand it back to the pool.
            conn.detach();
        }
        applied
    }

    async fn migrate_locked(
        &self,
        conn: &mut sqlx::pool::PoolConnection<Postgres>,
    ) -> Result<Vec<AppliedMigration>, StoreError> {
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
            .run(&mut **conn)
            .await
            .context("applying migrations")?;
        Ok(applied_since(&MIGRATOR, &before))
    }

    pub(in crate::store) async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        let err = options("postgres://bot:hunter2@db:notaport/drawbridge").unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    }
}
