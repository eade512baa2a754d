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

/// The variable that names the PostgreSQL server the PostgreSQL half of the
/// suite runs on, e.g. `postgres://postgres@127.0.0.1:5432/test`: a
/// database the tests can connect to with the right to create databases.
pub const POSTGRES_URL_VAR: &str = "DRAWBRIDGE_TEST_POSTGRES_URL";

/// PostgreSQL: each test gets a fresh database `drawbridge_test_<random>` on
/// the server [`POSTGRES_URL_VAR`] names, dropped when the test ends.
pub struct Postgres {
    /// The URL of the variable: where databases are created and dropped.
    admin_url: url::Url,
}

impl Postgres {
    /// The server of [`POSTGRES_URL_VAR`], or `None` (after saying plainly,
    /// once, that the PostgreSQL half is skipped) when it is not set.
    pub fn from_env() -> Option<Postgres> {
        let Some(raw) = std::env::var(POSTGRES_URL_VAR)
            .ok()
            .filter(|v| !v.trim().is_empty())
        else {
            say_skipped();
            return None;
        };
        let admin_url = url::Url::parse(&raw)
            .unwrap_or_else(|e| panic!("{POSTGRES_URL_VAR} is not a URL: {e}"));
        Some(Postgres { admin_url })
    }

    /// The URL of database `name` on the same server.
    fn url_of(&self, name: &str) -> String {
        let mut url = self.admin_url.clone();
        url.set_path(&format!("/{name}"));
        url.to_string()
    }
}

/// Prints, once per test run and past the test harness's capture, that the
/// PostgreSQL half did not run.
fn say_skipped() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "\nSKIPPED: the PostgreSQL half of the store tests (contract suite on \
             PostgreSQL, schema comparison): {POSTGRES_URL_VAR} is not set. Set it to a \
             server's URL, e.g. {POSTGRES_URL_VAR}=postgres://postgres@127.0.0.1:5432/test\n"
        );
    });
}

/// Drops its database when dropped (even when the test panicked).
struct DropDatabase {
    admin_url: String,
    name: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // The test's runtime may be the one dropping us: run on a thread of
        // our own, with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async {
                    let mut conn = sqlx::PgConnection::connect(&admin_url).await?;
                    sqlx::raw_sql(&sql).execute(&mut conn).await?;
                    conn.close().await
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

impl Backend for Postgres {
    const LIFT_AUDIT_GUARDS: &'static str =
        "DROP TRIGGER IF EXISTS audit_log_no_update ON audit_log;
         DROP TRIGGER IF EXISTS audit_log_no_delete ON audit_log;";

    async fn empty(&self) -> EmptyDb {
        let name = format!("drawbridge_test_{}", uuid::Uuid::new_v4().simple());
        self.raw(self.admin_url.as_str(), &format!("CREATE DATABASE {name}"))
            .await
            .expect("create a test database");
        EmptyDb {
            url: self.url_of(&name),
            keep: Box::new(DropDatabase {
                admin_url: self.admin_url.to_string(),
                name,
            }),
        }
    }

    async fn raw(&self, url: &str, sql: &str) -> Result<(), String> {
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .map_err(|e| e.to_string())?;
        let result = sqlx::raw_sql(sql).execute(&mut conn).await;
        conn.close().await.map_err(|e| e.to_string())?;
        result.map(|_| ()).map_err(|e| e.to_string())
    }
}
