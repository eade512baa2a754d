//! The database behind the store, chosen by the URL's scheme.
//!
//! The table modules write each query once, in the SQL that SQLite and
//! PostgreSQL share (see the store's module docs), and run it through
//! `with_read!`, `with_write!` or `with_tx!`. Each macro expands to a
//! `match` with one arm per backend, so the same query-building code is
//! compiled against each driver's own types: no `sqlx::Any`, no generic
//! bounds to repeat, and a query that does not suit a driver fails to build.
//!
//! Adding a backend is: a module beside `sqlite`, a variant in [`Db`] and
//! [`Tx`], an arm in each macro and in the `match`es below, and a migrations
//! folder. This module and `backend/sqlite.rs` are the only files that name a
//! driver's types; `tests/it/store/layout.rs` checks it.

mod sqlite;

use std::collections::BTreeSet;

use anyhow::Context as _;
use sqlx::migrate::Migrator;

use super::{AppliedMigration, StoreError};

/// The connections of one database.
#[derive(Debug, Clone)]
pub(super) enum Db {
    Sqlite(sqlite::SqliteDb),
}

/// An open transaction on a [`Db`].
#[derive(Debug)]
pub(super) enum Tx {
    Sqlite(sqlite::SqliteTx),
}

/// Runs `$body` with `$c` bound to an executor for reads.
macro_rules! with_read {
    ($db:expr, |$c:ident| $body:expr) => {
        match $db {
            $crate::store::backend::Db::Sqlite(db) => {
                let $c = db.read();
                $body
            }
        }
    };
}

/// Runs `$body`, a single-statement write outside a [`Tx`], with `$c` bound
/// to an executor for writes.
macro_rules! with_write {
    ($db:expr, |$c:ident| $body:expr) => {
        match $db {
            $crate::store::backend::Db::Sqlite(db) => {
                let $c = db.write();
                $body
            }
        }
    };
}

/// Runs `$body` with `$c` bound to the connection of the transaction `$tx`
/// (a `&mut Tx`).
macro_rules! with_tx {
    ($tx:expr, |$c:ident| $body:expr) => {
        match $tx {
            $crate::store::backend::Tx::Sqlite(tx) => {
                let $c = &mut **tx;
                $body
            }
        }
    };
}

pub(super) use {with_read, with_tx, with_write};

impl Db {
    /// Connects to the database `url` names, without migrating.
    pub(super) async fn connect(url: &str) -> Result<Db, StoreError> {
        match url.split_once(':').map(|(scheme, _)| scheme) {
            Some("sqlite") => Ok(Db::Sqlite(sqlite::SqliteDb::connect(url).await?)),
            // Only the scheme is echoed: a server URL may carry a password.
            scheme => Err(StoreError::InvalidInput(format!(
                "the database URL scheme `{}` is not supported: use sqlite://PATH",
                scheme.unwrap_or_default()
            ))),
        }
    }

    /// Opens the existing database `url` names for reading only.
    pub(super) async fn connect_read_only(url: &str) -> Result<Db, StoreError> {
        match url.split_once(':').map(|(scheme, _)| scheme) {
            Some("sqlite") => Ok(Db::Sqlite(sqlite::SqliteDb::connect_read_only(url).await?)),
            scheme => Err(StoreError::InvalidInput(format!(
                "the database URL scheme `{}` is not supported: use sqlite://PATH",
                scheme.unwrap_or_default()
            ))),
        }
    }

    /// Writes a consistent copy of the whole database to the new file `path`.
    pub(super) async fn backup_into(&self, path: &std::path::Path) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(db) => db.backup_into(path).await,
        }
    }

    pub(super) async fn migrate(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        match self {
            Db::Sqlite(db) => db.migrate().await,
        }
    }

    /// A write transaction in which a read-then-write never fails half-way
    /// on a lock: SQLite locks the database up front; PostgreSQL will lock
    /// the rows read (see the store's module docs).
    pub(super) async fn begin(&self) -> Result<Tx, StoreError> {
        match self {
            Db::Sqlite(db) => Ok(Tx::Sqlite(db.begin().await?)),
        }
    }

    /// A read-only transaction: every read in it sees one consistent
    /// snapshot (on PostgreSQL: `REPEATABLE READ, READ ONLY`).
    pub(super) async fn snapshot(&self) -> Result<Tx, StoreError> {
        match self {
            Db::Sqlite(db) => Ok(Tx::Sqlite(db.snapshot().await?)),
        }
    }

    pub(super) async fn close(&self) {
        match self {
            Db::Sqlite(db) => db.close().await,
        }
    }
}

impl Tx {
    pub(super) async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await,
        }
        .context("committing a transaction")?;
        Ok(())
    }

    pub(super) async fn rollback(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(tx) => tx.rollback().await,
        }
        .context("rolling back a transaction")?;
        Ok(())
    }
}

/// The up migrations of `migrator` whose versions are not in `before`, in
/// order: what a run that started from `before` applied.
fn applied_since(migrator: &Migrator, before: &BTreeSet<i64>) -> Vec<AppliedMigration> {
    let applied = migrator
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
    applied
}
