//! What one SQLite statement costs the process's CPU through sqlx, whose
//! SQLite connection runs on a thread of its own (every statement is a
//! command sent to that thread and an answer sent back), against the same
//! statement run on the calling thread (rusqlite, on its own connection to
//! its own file). Issue 17 asked to decide from the profile whether the
//! store should move to a driver that runs on the calling thread; this is
//! the saving a statement such a move would bring, measured apart from the
//! bot's other work.
//!
//! Both run on a tokio worker thread, in write transactions of
//! [`STATEMENTS_A_STEP`] inserts (a grant's step writes about that many
//! rows), with WAL and `synchronous = NORMAL` as the store opens its
//! database. The figure is the process's CPU time (all threads) divided by
//! the commands run, `BEGIN IMMEDIATE` and `COMMIT` included.
//!
//! ```text
//! cargo bench --bench handoff
//! ```

#[path = "../tests/it/support/procfs.rs"]
mod procfs;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

const STATEMENTS_A_STEP: usize = 6;
const STEPS: usize = 4_000;
const ROUNDS: usize = 3;

const SCHEMA: [&str; 2] = [
    "CREATE TABLE outbox (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL UNIQUE,
                          payload TEXT NOT NULL, created_at TEXT NOT NULL, delivered_at TEXT)",
    "CREATE INDEX outbox_pending ON outbox (delivered_at, id)",
];
const INSERT: &str = "INSERT INTO outbox (kind, key, payload, created_at) VALUES ($1, $2, $3, $4)";
const CREATED_AT: &str = "2026-12-01T00:00:00.000Z";

/// A payload of the size of an audit post's.
fn payload() -> String {
    "x".repeat(300)
}

fn process_cpu() -> Duration {
    procfs::cpu_time(std::process::id()).expect("/proc/self/stat is readable")
}

/// CPU per command through sqlx's connection thread.
async fn through_sqlx(path: PathBuf) -> Duration {
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal);
    let mut c = sqlx::SqliteConnection::connect_with(&options)
        .await
        .expect("database opens");
    for statement in SCHEMA {
        sqlx::query(statement)
            .execute(&mut c)
            .await
            .expect("schema");
    }
    let body = payload();
    let start = process_cpu();
    for step in 0..STEPS {
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut c)
            .await
            .expect("begin");
        for i in 0..STATEMENTS_A_STEP {
            sqlx::query(INSERT)
                .bind("audit")
                .bind(format!("{step}-{i}"))
                .bind(body.clone())
                .bind(CREATED_AT)
                .execute(&mut c)
                .await
                .expect("insert");
        }
        sqlx::query("COMMIT").execute(&mut c).await.expect("commit");
    }
    let spent = process_cpu() - start;
    c.close().await.expect("database closes");
    spent / commands()
}

/// CPU per command on the calling thread.
fn on_calling_thread(path: &Path) -> Duration {
    let c = rusqlite::Connection::open(path).expect("database opens");
    c.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL")
        .expect("pragmas");
    for statement in SCHEMA {
        c.execute(statement, []).expect("schema");
    }
    let body = payload();
    let start = process_cpu();
    for step in 0..STEPS {
        c.execute_batch("BEGIN IMMEDIATE").expect("begin");
        for i in 0..STATEMENTS_A_STEP {
            let key = format!("{step}-{i}");
            c.prepare_cached(INSERT)
                .and_then(|mut s| s.execute(("audit", key, body.as_str(), CREATED_AT)))
                .expect("insert");
        }
        c.execute_batch("COMMIT").expect("commit");
    }
    (process_cpu() - start) / commands()
}

fn commands() -> u32 {
    (STEPS * (STATEMENTS_A_STEP + 2)) as u32
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "{} commands a round: {STEPS} write transactions of {STATEMENTS_A_STEP} inserts",
        commands()
    );
    for round in 1..=ROUNDS {
        let dir = tempfile::tempdir().expect("temp dir");
        let (sqlx_db, own_db) = (dir.path().join("sqlx.db"), dir.path().join("own.db"));
        let sqlx = runtime
            .block_on(runtime.spawn(through_sqlx(sqlx_db)))
            .expect("sqlx round");
        let own = runtime
            .block_on(runtime.spawn(async move { on_calling_thread(&own_db) }))
            .expect("calling-thread round");
        println!(
            "round {round}: CPU per command: through sqlx's connection thread {:.1} µs, \
             on the calling thread {:.1} µs",
            sqlx.as_secs_f64() * 1e6,
            own.as_secs_f64() * 1e6
        );
    }
}
