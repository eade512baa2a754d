//! The database behind the store, chosen by the URL's scheme.
//!
//! The table modules write each query once, in the SQL that SQLite and
//! PostgreSQL share (see the store's module docs), and run it through
//! `with_read!`, `with_write!` or `with_tx!`. Each macro expands to a
//! `match` with one arm per backend, so the same query-building code is
//! compiled against each driver's own types: no `sqlx::Any`, no generic
//! bounds to repeat, and a query that does not suit a driver fails to build.
//!
//! Where the backends differ in SQL, the difference is a clause the backend
//! hands out: [`Tx::for_update`] and [`Tx::skip_locked`] are `FOR UPDATE`
//! and `FOR UPDATE SKIP LOCKED` on PostgreSQL and empty on SQLite, whose
//! write transaction already holds the database's lock.
//!
//! Adding a backend is: a module beside `sqlite` and `postgres`, a variant in
//! [`Db`] and [`Tx`], an arm in each macro and in the `match`es below, and a
//! migrations folder. This module and `backend/<name>.rs` are the only files
//! that name a driver's types; `tests/it/store/layout.rs` checks it.

mod postgres;
mod sqlite;

use std::collections::BTreeSet;

use anyhow::Context as _;
use sqlx::migrate::Migrator;

use super::{AppliedMigration, StoreError, StoreOptions};

/// The connections of one database.
#[derive(Debug, Clone)]
pub(super) enum Db {
    Sqlite(sqlite::SqliteDb),
    Postgres(postgres::PgDb),
}

/// An open transaction on a [`Db`].
#[derive(Debug)]
pub(super) enum Tx {
    Sqlite(sqlite::SqliteTx),
    Postgres(postgres::PgTx),
}

/// Which backend a URL names, by its scheme.
enum Scheme {
    Sqlite,
    Postgres,
}

impl Scheme {
    fn of(url: &str) -> Result<Scheme, StoreError> {
        match url.split_once(':').map(|(scheme, _)| scheme) {
            Some("sqlite") => Ok(Scheme::Sqlite),
            Some("postgres" | "postgresql") => Ok(Scheme::Postgres),
            // Only the scheme is echoed: a server URL may carry a password.
            scheme => Err(StoreError::InvalidInput(format!(
                "the database URL scheme `{}` is not supported: use sqlite://PATH or \
                 postgres://USER@HOST/DATABASE",
                scheme.unwrap_or_default()
            ))),
        }
    }
}

/// `url` with any password replaced by `***`, for messages and logs.
pub(super) fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_string(),
        // Unparsable: keep only the scheme, in case a password is in there.
        Err(_) => match url.split_once(':') {
            Some((scheme, _)) if url.contains('@') => format!("{scheme}://…"),
            _ => url.to_string(),
        },
    }
}

/// Runs `$body` with `$c` bound to a connection `$db.$kind()` hands out
/// (`read` or `write`). `$body` returns a `Result<_, sqlx::Error>`: not
/// getting a connection is such an error.
macro_rules! with_conn {
    ($db:expr, $kind:ident, |$c:ident| $body:expr) => {
        match $db {
            $crate::store::backend::Db::Sqlite(db) => match db.$kind().await {
                Ok(mut conn) => {
                    let result = {
                        let $c = &mut *conn;
                        $body
                    };
                    conn.checked(result)
                }
                Err(e) => Err(e),
            },
            $crate::store::backend::Db::Postgres(db) => {
                let $c = db.$kind();
                $body
            }
        }
    };
}

/// Runs `$body` with `$c` bound to an executor for reads (see `with_conn!`).
macro_rules! with_read {
    ($db:expr, |$c:ident| $body:expr) => {
        $crate::store::backend::with_conn!($db, read, |$c| $body)
    };
}

/// Runs `$body`, a single-statement write outside a [`Tx`], with `$c` bound
/// to an executor for writes (see `with_conn!`).
macro_rules! with_write {
    ($db:expr, |$c:ident| $body:expr) => {
        $crate::store::backend::with_conn!($db, write, |$c| $body)
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
            $crate::store::backend::Tx::Postgres(tx) => {
                let $c = &mut **tx;
                $body
            }
        }
    };
}

pub(super) use {with_conn, with_read, with_tx, with_write};

impl Db {
    /// Connects to the database `url` names, without migrating.
    pub(super) async fn connect(url: &str, options: &StoreOptions) -> Result<Db, StoreError> {
        Ok(match Scheme::of(url)? {
            Scheme::Sqlite => Db::Sqlite(sqlite::SqliteDb::connect(url).await?),
            Scheme::Postgres => Db::Postgres(postgres::PgDb::connect(url, options).await?),
        })
    }

    /// Opens the existing database `url` names for reading only.
    pub(super) async fn connect_read_only(url: &str) -> Result<Db, StoreError> {
        Ok(match Scheme::of(url)? {
            Scheme::Sqlite => Db::Sqlite(sqlite::SqliteDb::connect_read_only(url).await?),
            Scheme::Postgres => Db::Postgres(postgres::PgDb::connect_read_only(url).await?),
        })
    }

    /// Writes a consistent copy of the whole database to the new file `path`.
    pub(super) async fn backup_into(&self, path: &std::path::Path) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(db) => db.backup_into(path).await,
            Db::Postgres(_) => Err(StoreError::InvalidInput(
                "drawbridge backup copies a SQLite file; back up PostgreSQL with pg_dump or \
                 the managed server's backups"
                    .into(),
            )),
        }
    }

    /// Whether the backend serves one replica only (SQLite).
    pub(super) fn single_replica(&self) -> bool {
        matches!(self, Db::Sqlite(_))
    }

    pub(super) async fn migrate(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        match self {
            Db::Sqlite(db) => db.migrate().await,
            Db::Postgres(db) => db.migrate().await,
        }
    }

    /// A write transaction in which a read-then-write never fails half-way
    /// on a lock: SQLite locks the database up front; PostgreSQL will lock
    /// the rows read (see the store's module docs).
    pub(super) async fn begin(&self) -> Result<Tx, StoreError> {
        match self {
            Db::Sqlite(db) => Ok(Tx::Sqlite(db.begin().await?)),
            Db::Postgres(db) => Ok(Tx::Postgres(db.begin().await?)),
        }
    }

    /// A read-only transaction: every read in it sees one consistent
    /// snapshot (on PostgreSQL: `REPEATABLE READ, READ ONLY`).
    pub(super) async fn snapshot(&self) -> Result<Tx, StoreError> {
        match self {
            Db::Sqlite(db) => Ok(Tx::Sqlite(db.snapshot().await?)),
            Db::Postgres(db) => Ok(Tx::Postgres(db.snapshot().await?)),
        }
    }

    pub(super) async fn close(&self) {
        match self {
            Db::Sqlite(db) => db.close().await,
            Db::Postgres(db) => db.close().await,
        }
    }
}

impl Tx {
    /// The clause that locks the rows a read in this transaction returns
    /// until it ends: `FOR UPDATE` on PostgreSQL; nothing on SQLite, whose
    /// write transaction holds the whole database.
    pub(super) fn for_update(&self) -> &'static str {
        match self {
            Tx::Sqlite(_) => "",
            Tx::Postgres(_) => " FOR UPDATE",
        }
    }

    /// The tables of the schema (not sqlx's own), one per row.
    pub(super) fn tables_sql(&self) -> &'static str {
        match self {
            Tx::Sqlite(_) => {
                "SELECT name FROM sqlite_master
                 WHERE type = 'table' AND name NOT LIKE 'sqlite%'
                   AND name NOT LIKE '_sqlx%' ORDER BY name"
            }
            Tx::Postgres(_) => {
                "SELECT table_name::text FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
                   AND table_name NOT LIKE '_sqlx%' ORDER BY table_name"
            }
        }
    }

    /// The columns of table `$1`, in order, as (name, declared type).
    pub(super) fn columns_sql(&self) -> &'static str {
        match self {
            Tx::Sqlite(_) => "SELECT name, type FROM pragma_table_info($1) ORDER BY cid",
            Tx::Postgres(_) => {
                "SELECT column_name::text, data_type::text FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = $1
                 ORDER BY ordinal_position"
            }
        }
    }

    /// After rows were inserted with explicit ids into `table`: the
    /// statement that moves its id generator past them, if the backend
    /// needs one (SQLite picks the largest id + 1 by itself).
    pub(super) fn resync_ids_sql(&self, table: &str) -> Option<String> {
        match self {
            Tx::Sqlite(_) => None,
            Tx::Postgres(_) => Some(format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'),
                               COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            )),
        }
    }

    /// As [`Tx::for_update`], passing over rows another transaction holds:
    /// for claims, where another replica's rows are simply not ours.
    pub(super) fn skip_locked(&self) -> &'static str {
        match self {
            Tx::Sqlite(_) => "",
            Tx::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        }
    }

    pub(super) async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await,
            Tx::Postgres(tx) => tx.commit().await,
        }
        .context("committing a transaction")?;
        Ok(())
    }

    pub(super) async fn rollback(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(tx) => tx.rollback().await,
            Tx::Postgres(tx) => tx.rollback().await,
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
