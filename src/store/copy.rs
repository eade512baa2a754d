//! Copying one database into another (`drawbridge migrate-store`): moving a
//! SQLite deployment onto PostgreSQL, with the audit chain intact.
//!
//! The source is read in one consistent snapshot, so a bot may still be
//! running on it; what it writes after the snapshot is not copied (stop it
//! before the copy to move everything). The target must be migrated and hold
//! no grant and no audit event; everything is written in one transaction, so
//! a failed copy leaves it as it was.
//!
//! Tables and columns are read from the source's schema, not listed here,
//! so a table a later migration adds is copied too. Every value travels as
//! text and integer columns are cast back on the way in: the two backends
//! store only `TEXT` and 64-bit integers (see the store's module docs).
//! Audit rows go in one by one, each INSERT moving `audit_head` on (a
//! trigger), as the database's guards require; afterwards the target's
//! chain is verified and its head compared with the source's.

use anyhow::Context as _;
use sqlx::Row as _;

use super::backend::{Tx, with_tx};
use super::{Store, StoreError};

/// Tables copied first, in this order, so that every reference finds its
/// row; any other table follows, by name.
const FIRST: [&str; 8] = [
    "grant_states",
    "schedule_kinds",
    "mappings",
    "grants",
    "grant_transitions",
    "schedule",
    "outbox",
    "audit_log",
];

/// Tables not copied: `audit_head` is rebuilt row by row, and leases belong
/// to the replicas of the old deployment.
const SKIPPED: [&str; 2] = ["audit_head", "leases"];

/// What [`Store::copy_into`] copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Rows copied per table, in copy order (rows the target held already,
    /// such as the grant states its migrations wrote, are not counted).
    pub tables: Vec<(String, u64)>,
    /// The audit rows verified in the target: the whole chain.
    pub audit_verified: u64,
    /// The chain's head, the same in both.
    pub head: (i64, String),
}

/// A column and whether it holds integers.
struct Column {
    name: String,
    integer: bool,
}

type TextRow = Vec<Option<String>>;

impl Store {
    /// Copies every row of this database into `target` (see the module
    /// docs) and verifies the copy's audit chain.
    ///
    /// # Errors
    /// [`StoreError::InvalidInput`] when the target holds grants or audit
    /// events, or lacks a table or column of the source (migrate it first);
    /// [`StoreError::Unexpected`] if a database fails or the copied chain
    /// does not verify (nothing is then committed or it is reported).
    pub async fn copy_into(&self, target: &Store) -> Result<CopyReport, StoreError> {
        let mut source = self.db.snapshot().await?;
        let mut into = target.db.begin().await?;
        check_empty(&mut into).await?;
        let mut tables = Vec::new();
        for table in copy_order(list_tables(&mut source).await?) {
            let columns = columns_of(&mut source, &table).await?;
            check_columns(&mut into, &table, &columns).await?;
            let rows = read_rows(&mut source, &table, &columns).await?;
            let copied = if table == "audit_log" {
                write_audit_rows(&mut into, &columns, rows).await?
            } else {
                write_rows(&mut into, &table, &columns, rows).await?
            };
            if columns.iter().any(|c| c.name == "id" && c.integer)
                && let Some(sql) = into.resync_ids_sql(&table)
            {
                with_tx!(&mut into, |c| sqlx::query(&sql)
                    .execute(c)
                    .await
                    .map(|r| r.rows_affected()))
                .with_context(|| format!("moving the ids of {table} on"))?;
            }
            tables.push((table, copied));
        }
        source.rollback().await?;
        into.commit().await?;
        let head = self.audit_head().await?;
        let verified = target.verify_audit().await?;
        let copied_head = target.audit_head().await?;
        if let Some(broken) = verified.first_broken {
            return Err(anyhow::anyhow!(
                "the copied audit chain does not verify at row {}: {}",
                broken.seq,
                broken.problem
            )
            .into());
        }
        if copied_head != head {
            return Err(anyhow::anyhow!(
                "the copy's audit head ({}) is not the source's ({})",
                copied_head.0,
                head.0
            )
            .into());
        }
        Ok(CopyReport {
            tables,
            audit_verified: verified.checked,
            head,
        })
    }
}

/// Refuses a target that holds grants or audit events: a copy goes into a
/// new database only, never merges.
async fn check_empty(into: &mut Tx) -> Result<(), StoreError> {
    let (grants, events): (i64, i64) = with_tx!(into, |c| {
        sqlx::query_as("SELECT (SELECT COUNT(*) FROM grants), (SELECT COUNT(*) FROM audit_log)")
            .fetch_one(c)
            .await
    })
    .context("checking that the target is empty")?;
    if grants + events > 0 {
        return Err(StoreError::InvalidInput(format!(
            "the target database is not empty ({grants} grants, {events} audit events): \
             copy into a new, migrated database"
        )));
    }
    Ok(())
}

async fn list_tables(tx: &mut Tx) -> Result<Vec<String>, StoreError> {
    let sql = tx.tables_sql();
    Ok(with_tx!(tx, |c| sqlx::query_scalar(sql).fetch_all(c).await)
        .context("listing the tables")?)
}

/// `tables` less the skipped ones, [`FIRST`] first.
fn copy_order(tables: Vec<String>) -> Vec<String> {
    let mut ordered: Vec<String> = FIRST
        .iter()
        .filter(|t| tables.iter().any(|have| have == *t))
        .map(|t| t.to_string())
        .collect();
    ordered.extend(
        tables
            .into_iter()
            .filter(|t| !FIRST.contains(&t.as_str()) && !SKIPPED.contains(&t.as_str())),
    );
    ordered
}

async fn columns_of(tx: &mut Tx, table: &str) -> Result<Vec<Column>, StoreError> {
    let sql = tx.columns_sql();
    let columns: Vec<(String, String)> = with_tx!(tx, |c| {
        sqlx::query_as(sql).bind(table).fetch_all(c).await
    })
    .with_context(|| format!("reading the columns of {table}"))?;
    Ok(columns
        .into_iter()
        .map(|(name, ty)| Column {
            integer: matches!(ty.to_ascii_lowercase().as_str(), "integer" | "bigint"),
            name,
        })
        .collect())
}

/// Refuses a target whose `table` lacks a column of the source's.
async fn check_columns(into: &mut Tx, table: &str, columns: &[Column]) -> Result<(), StoreError> {
    let have = columns_of(into, table).await?;
    let missing: Vec<&str> = columns
        .iter()
        .filter(|c| !have.iter().any(|h| h.name == c.name))
        .map(|c| c.name.as_str())
        .collect();
    if have.is_empty() || !missing.is_empty() {
        return Err(StoreError::InvalidInput(format!(
            "the target has no table {table} or lacks its columns {missing:?}: run \
             `drawbridge migrate` with the same release on both databases first"
        )));
    }
    Ok(())
}

async fn read_rows(
    tx: &mut Tx,
    table: &str,
    columns: &[Column],
) -> Result<Vec<TextRow>, StoreError> {
    let list: Vec<String> = columns
        .iter()
        .map(|c| format!("CAST({} AS TEXT)", c.name))
        .collect();
    // In key order (the first column), compared as stored, not as text.
    let first = columns.first().map_or("1", |c| c.name.as_str());
    let sql = format!("SELECT {} FROM {table} ORDER BY {first}", list.join(", "));
    let n = columns.len();
    let rows: Vec<TextRow> = with_tx!(tx, |c| {
        sqlx::query(&sql).fetch_all(c).await.and_then(|rows| {
            rows.iter()
                .map(|r| (0..n).map(|i| r.try_get::<Option<String>, _>(i)).collect())
                .collect::<Result<Vec<TextRow>, sqlx::Error>>()
        })
    })
    .with_context(|| format!("reading {table}"))?;
    Ok(rows)
}

fn insert_sql(table: &str, columns: &[Column]) -> String {
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let values: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| match c.integer {
            true => format!("CAST(${} AS BIGINT)", i + 1),
            false => format!("${}", i + 1),
        })
        .collect();
    format!(
        "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT DO NOTHING",
        names.join(", "),
        values.join(", ")
    )
}

async fn write_rows(
    into: &mut Tx,
    table: &str,
    columns: &[Column],
    rows: Vec<TextRow>,
) -> Result<u64, StoreError> {
    let sql = insert_sql(table, columns);
    let mut copied = 0;
    for row in rows {
        copied += with_tx!(into, |c| {
            row.iter()
                .fold(sqlx::query(&sql), |q, v| q.bind(v.clone()))
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .with_context(|| format!("copying a row of {table}"))?;
    }
    Ok(copied)
}

/// Audit rows in seq order, each INSERT moving the head on to it, as the
/// target's guards allow.
async fn write_audit_rows(
    into: &mut Tx,
    columns: &[Column],
    rows: Vec<TextRow>,
) -> Result<u64, StoreError> {
    let at = |name: &str| columns.iter().position(|c| c.name == name);
    let Some(seq) = at("seq") else {
        return Err(anyhow::anyhow!("audit_log has no seq column").into());
    };
    let insert = insert_sql("audit_log", columns);
    for row in &rows {
        let seq_value: i64 = row[seq]
            .as_deref()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::corrupt("audit_log", "?", "a row without a seq"))?;
        with_tx!(into, |c| {
            row.iter()
                .fold(sqlx::query(&insert), |q, v| q.bind(v.clone()))
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        // The INSERT moves `audit_head` on (trigger `audit_log_moves_head`)
        // and fails unless the row is the head's next.
        .with_context(|| format!("copying audit row {seq_value} (is the source's chain whole?)"))?;
    }
    Ok(rows.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referenced_tables_come_first_and_new_ones_follow() {
        let tables = [
            "audit_head",
            "approvals",
            "grants",
            "grant_states",
            "leases",
            "audit_log",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            copy_order(tables),
            ["grant_states", "grants", "audit_log", "approvals"]
        );
    }

    #[test]
    fn integer_columns_are_cast_back_on_the_way_in() {
        let columns = [
            Column {
                name: "id".into(),
                integer: true,
            },
            Column {
                name: "kind".into(),
                integer: false,
            },
        ];
        assert_eq!(
            insert_sql("outbox", &columns),
            "INSERT INTO outbox (id, kind) VALUES (CAST($1 AS BIGINT), $2) ON CONFLICT DO NOTHING"
        );
    }
}
