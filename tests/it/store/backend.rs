//! The backends the contract suite runs on, and what a test may do to a
//! database behind the store's back.

use std::any::Any;

use drawbridge::store::Store;
use sqlx::Connection as _;

/// A database for one test. Dropping it drops the database.
pub struct TestDb {
    pub store: Store,
    pub url: String,
    _keep: Box<dyn Any>,
}

/// A database nobody has used yet.
pub struct EmptyDb {
    pub url: String,
    /// Whatever must live as long as the database (a temporary directory).
    pub keep: Box<dyn Any>,
}

/// What the contract suite needs from a backend.
pub trait Backend {
    /// SQL that lifts the audit log's append-only guards: the first step of
    /// someone who edits the log with the database's own shell.
    const LIFT_AUDIT_GUARDS: &'static str;

    /// A fresh database, not yet migrated.
    async fn empty(&self) -> EmptyDb;

    /// Runs `sql` (one or more statements) outside the store.
    async fn raw(&self, url: &str, sql: &str) -> Result<(), String>;

    /// A fresh database behind a migrated store.
    async fn fresh(&self) -> TestDb {
        let empty = self.empty().await;
        let store = Store::open(&empty.url).await.expect("open store");
        TestDb {
            store,
            url: empty.url,
            _keep: empty.keep,
        }
    }

    /// Runs `sql` outside the store, which must succeed.
    async fn exec(&self, db: &TestDb, sql: &str) {
        self.raw(&db.url, sql).await.expect(sql);
    }

    /// Lifts the audit log's guards, then runs `sql`.
    async fn tamper(&self, db: &TestDb, sql: &str) {
        self.exec(db, &format!("{}\n{sql}", Self::LIFT_AUDIT_GUARDS))
            .await;
    }
}

/// SQLite in a temporary file.
pub struct Sqlite;

impl Backend for Sqlite {
    const LIFT_AUDIT_GUARDS: &'static str = "DROP TRIGGER IF EXISTS audit_log_no_update;
         DROP TRIGGER IF EXISTS audit_log_no_delete;";

    async fn empty(&self) -> EmptyDb {
        let dir = tempfile::tempdir().expect("temp dir");
        EmptyDb {
            url: format!("sqlite://{}", dir.path().join("drawbridge.db").display()),
            keep: Box::new(dir),
        }
    }

    async fn raw(&self, url: &str, sql: &str) -> Result<(), String> {
        let mut conn = sqlx::SqliteConnection::connect(url)
            .await
            .map_err(|e| e.to_string())?;
        let result = sqlx::raw_sql(sql).execute(&mut conn).await;
        conn.close().await.map_err(|e| e.to_string())?;
        result.map(|_| ()).map_err(|e| e.to_string())
    }
}
