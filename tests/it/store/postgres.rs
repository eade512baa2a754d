//! What only the PostgreSQL backend does, and what keeps its migrations in
//! step with SQLite's: every version exists in both folders, and both
//! schemas, once migrated, have the same tables, columns, keys, unique
//! constraints, foreign keys, named indexes and audit guards.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use drawbridge::store::{Store, StoreError};
use sqlx::{Connection as _, Row as _};

use super::backend::{Backend as _, Postgres, Sqlite};

fn migration_files(backend: &str) -> Vec<String> {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    files
}

#[test]
fn every_sqlite_migration_has_a_postgres_twin_of_the_same_name() {
    let sqlite = migration_files("sqlite");
    let postgres = migration_files("postgres");
    assert!(!sqlite.is_empty());
    assert_eq!(
        sqlite, postgres,
        "migrations/postgres must mirror migrations/sqlite, file for file"
    );
}

#[tokio::test]
async fn a_password_in_a_postgres_url_never_shows_in_an_error() {
    // Nothing listens on port 1: the connection is refused.
    let url = "postgres://drawbridge:hunter2@127.0.0.1:1/drawbridge?connect_timeout=2";
    let err = Store::open(url).await.unwrap_err();
    let text = format!("{err:#} {err:?}");
    assert!(matches!(err, StoreError::Unexpected(_)), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("drawbridge:***@127.0.0.1"), "{text}");
}

/// One schema, normalized so the two backends' spellings compare.
#[derive(Debug, Default, PartialEq, Eq)]
struct Schema {
    /// `table.column type null|not null`, where type is `integer` or `text`.
    columns: BTreeSet<String>,
    /// `table(primary key columns)`.
    primary_keys: BTreeSet<String>,
    /// `table(columns)` of every unique constraint that is not the key.
    uniques: BTreeSet<String>,
    /// `table.column -> table.column`.
    foreign_keys: BTreeSet<String>,
    /// Indexes created by name (not those behind a constraint).
    indexes: BTreeSet<String>,
    /// Trigger names.
    triggers: BTreeSet<String>,
}

fn normal_type(declared: &str) -> &'static str {
    match declared.to_ascii_lowercase().as_str() {
        "integer" | "bigint" => "integer",
        "text" => "text",
        other => panic!("a column type neither backend should use: {other}"),
    }
}

/// The tables Drawbridge's migrations made (not sqlx's own).
fn ours(table: &str) -> bool {
    !table.starts_with("_sqlx") && !table.starts_with("sqlite_")
}

async fn sqlite_schema(url: &str) -> Schema {
    let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
    let mut s = Schema::default();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut c)
            .await
            .unwrap();
    for table in tables.iter().filter(|t| ours(t)) {
        let cols = sqlx::query("SELECT name, type, \"notnull\", pk FROM pragma_table_info($1)")
            .bind(table)
            .fetch_all(&mut c)
            .await
            .unwrap();
        let mut key: Vec<(i64, String)> = Vec::new();
        for col in cols {
            let (name, ty): (String, String) = (col.get(0), col.get(1));
            let (not_null, pk): (i64, i64) = (col.get(2), col.get(3));
            let null = if not_null == 1 || pk > 0 {
                "not null"
            } else {
                "null"
            };
            s.columns
                .insert(format!("{table}.{name} {} {null}", normal_type(&ty)));
            if pk > 0 {
                key.push((pk, name));
            }
        }
        key.sort();
        let key: Vec<String> = key.into_iter().map(|(_, n)| n).collect();
        s.primary_keys.insert(format!("{table}({})", key.join(",")));
        let indexes = sqlx::query(
            "SELECT name, origin FROM pragma_index_list($1) WHERE \"unique\" = 1 AND origin = 'u'",
        )
        .bind(table)
        .fetch_all(&mut c)
        .await
        .unwrap();
        for index in indexes {
            let name: String = index.get(0);
            let cols: Vec<String> =
                sqlx::query_scalar("SELECT name FROM pragma_index_info($1) ORDER BY seqno")
                    .bind(&name)
                    .fetch_all(&mut c)
                    .await
                    .unwrap();
            s.uniques.insert(format!("{table}({})", cols.join(",")));
        }
        let fks =
            sqlx::query("SELECT \"from\", \"table\", \"to\" FROM pragma_foreign_key_list($1)")
                .bind(table)
                .fetch_all(&mut c)
                .await
                .unwrap();
        for fk in fks {
            let (from, to_table, to): (String, String, String) = (fk.get(0), fk.get(1), fk.get(2));
            s.foreign_keys
                .insert(format!("{table}.{from} -> {to_table}.{to}"));
        }
    }
    let named = |kind: &str| {
        format!("SELECT name FROM sqlite_master WHERE type = '{kind}' AND sql IS NOT NULL")
    };
    s.indexes = sqlx::query_scalar(&named("index"))
        .fetch_all(&mut c)
        .await
        .unwrap()
        .into_iter()
        .collect();
    s.triggers = sqlx::query_scalar(&named("trigger"))
        .fetch_all(&mut c)
        .await
        .unwrap()
        .into_iter()
        .collect();
    c.close().await.unwrap();
    s
}

async fn postgres_schema(url: &str) -> Schema {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let mut s = Schema::default();
    let cols = sqlx::query(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text
         FROM information_schema.columns WHERE table_schema = 'public'",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    for col in cols {
        let (table, name, ty, nullable): (String, String, String, String) =
            (col.get(0), col.get(1), col.get(2), col.get(3));
        if ours(&table) {
            let null = if nullable == "YES" {
                "null"
            } else {
                "not null"
            };
            s.columns
                .insert(format!("{table}.{name} {} {null}", normal_type(&ty)));
        }
    }
    // Constraints with their columns in key order.
    let constraints = sqlx::query(
        "SELECT c.contype::text, c.conrelid::regclass::text,
                (SELECT string_agg(a.attname, ',' ORDER BY k.ord)
                 FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum),
                c.confrelid::regclass::text,
                (SELECT string_agg(a.attname, ',' ORDER BY k.ord)
                 FROM unnest(c.confkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum)
         FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
         WHERE n.nspname = 'public' AND c.contype IN ('p', 'u', 'f')",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    for con in constraints {
        let (kind, table, cols): (String, String, String) = (con.get(0), con.get(1), con.get(2));
        if !ours(&table) {
            continue;
        }
        match kind.as_str() {
            "p" => s.primary_keys.insert(format!("{table}({cols})")),
            "u" => s.uniques.insert(format!("{table}({cols})")),
            _ => {
                let (to_table, to): (String, String) = (con.get(3), con.get(4));
                s.foreign_keys
                    .insert(format!("{table}.{cols} -> {to_table}.{to}"))
            }
        };
    }
    s.indexes = sqlx::query_scalar(
        "SELECT i.relname::text FROM pg_index x
         JOIN pg_class i ON i.oid = x.indexrelid
         JOIN pg_class t ON t.oid = x.indrelid
         JOIN pg_namespace n ON n.oid = t.relnamespace
         WHERE n.nspname = 'public' AND t.relname NOT LIKE '\\_sqlx%'
           AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)",
    )
    .fetch_all(&mut c)
    .await
    .unwrap()
    .into_iter()
    .collect();
    s.triggers = sqlx::query_scalar(
        "SELECT tgname::text FROM pg_trigger WHERE NOT tgisinternal
           AND tgname NOT LIKE '%truncate'",
    )
    .fetch_all(&mut c)
    .await
    .unwrap()
    .into_iter()
    .collect();
    c.close().await.unwrap();
    s
}

#[tokio::test]
async fn the_postgres_schema_matches_the_sqlite_schema() {
    let Some(pg) = Postgres::from_env() else {
        return;
    };
    let (lite, server) = (Sqlite.fresh().await, pg.fresh().await);
    let (a, b) = (
        sqlite_schema(&lite.url).await,
        postgres_schema(&server.url).await,
    );
    assert!(a.columns.len() > 50, "{:?}", a.columns);
    assert_eq!(a.columns, b.columns, "columns (table.column type null)");
    assert_eq!(a.primary_keys, b.primary_keys, "primary keys");
    assert_eq!(a.uniques, b.uniques, "unique constraints");
    assert_eq!(a.foreign_keys, b.foreign_keys, "foreign keys");
    assert_eq!(a.indexes, b.indexes, "named indexes");
    assert_eq!(a.triggers, b.triggers, "triggers (the audit guards)");
}

#[tokio::test]
async fn replicas_migrating_at_once_apply_each_migration_once() {
    let Some(pg) = Postgres::from_env() else {
        return;
    };
    let empty = pg.empty().await;
    let (a, b) = tokio::join!(Store::open(&empty.url), Store::open(&empty.url));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.migrate().await.unwrap().is_empty());
    assert!(b.verify_audit().await.unwrap().is_intact());
    let versions: i64 = {
        let mut c = sqlx::PgConnection::connect(&empty.url).await.unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
            .fetch_one(&mut c)
            .await
            .unwrap()
    };
    assert_eq!(versions as usize, migration_files("postgres").len());
}

#[tokio::test]
async fn the_audit_log_cannot_be_truncated() {
    let Some(pg) = Postgres::from_env() else {
        return;
    };
    let db = pg.fresh().await;
    for table in ["audit_log", "audit_head"] {
        let err = pg
            .raw(&db.url, &format!("TRUNCATE {table} CASCADE"))
            .await
            .unwrap_err();
        assert!(err.contains("audit"), "{table}: {err}");
    }
}
