//! The audit log: append-only, hash-chained, verifiable.
//!
//! Row `seq` stores `hash = event.chain_hash(seq, prev_hash)` where
//! `prev_hash` is row `seq - 1`'s hash ([`GENESIS_HASH`] for row 1).
//! `audit_head` holds the last seq and hash and moves with each appended
//! row (a trigger runs it inside the row's INSERT), so verification also
//! notices a deleted last row. Each append enqueues an `audit_channel`
//! outbox row in the same transaction, so the audit channel is fed in log
//! order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde_json::json;

use super::backend::{with_read, with_tx};
use super::outbox::{OutboxKind, OutboxMessage};
use super::{Store, StoreError, StoreTx, as_stored, ts};
use crate::domain::audit::{GENESIS_HASH, format_time};
use crate::domain::{AuditAction, AuditEvent, Outcome};

/// Rows read per query while verifying.
const VERIFY_PAGE: i64 = 1000;

/// A stored audit event with its place in the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Its position: 1, 2, 3, …
    pub seq: i64,
    /// The previous row's hash.
    pub prev_hash: String,
    pub hash: String,
    pub event: AuditEvent,
}

impl AuditRecord {
    /// The record as one flat JSON object: `seq`, `at`, `actor`, `action`,
    /// `target`, `outcome`, `detail`, `hash`, `prev_hash`. The audit-channel
    /// outbox payload and the JSONL export.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "seq": self.seq,
            "at": self.event.at_text(),
            "actor": self.event.actor,
            "action": self.event.action.as_str(),
            "target": self.event.target,
            "outcome": self.event.outcome.as_str(),
            "detail": self.event.detail,
            "hash": self.hash,
            "prev_hash": self.prev_hash,
        })
    }
}

/// Which audit events to list; every field narrows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// At or after this time.
    pub since: Option<DateTime<Utc>>,
    /// By this actor exactly, e.g. `discord:42`.
    pub actor: Option<String>,
    /// Of this action.
    pub action: Option<AuditAction>,
    /// Only the most recent this many (still returned oldest first).
    pub limit: Option<u32>,
}

/// The result of recomputing the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerification {
    /// Rows found intact, in order, before the first broken link (every row
    /// when there is none).
    pub checked: u64,
    /// The first place the chain is broken, if any.
    pub first_broken: Option<BrokenLink>,
}

impl AuditVerification {
    /// Whether the whole log verified.
    pub fn is_intact(&self) -> bool {
        self.first_broken.is_none()
    }
}

/// Where and how the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The first seq that does not verify (for missing rows, the first
    /// missing seq).
    pub seq: i64,
    /// What is wrong, e.g. `hash mismatch: row was changed`,
    /// `missing rows 4..6`, `prev_hash does not match row 3`.
    pub problem: String,
}

/// An `audit_log` row as stored.
#[derive(sqlx::FromRow)]
struct AuditRow {
    seq: i64,
    at: String,
    actor: String,
    action: String,
    target: String,
    outcome: String,
    detail: String,
    prev_hash: String,
    hash: String,
}

impl AuditRow {
    /// The event the row stores, read back exactly (the time must be in the
    /// log's one format, so it hashes as it was stored).
    fn event(&self) -> Result<AuditEvent, String> {
        let at = DateTime::parse_from_rfc3339(&self.at)
            .map_err(|e| format!("bad time `{}`: {e}", self.at))?
            .with_timezone(&Utc);
        if format_time(at) != self.at {
            return Err(format!("time `{}` is not in the log's format", self.at));
        }
        let action = AuditAction::parse(&self.action)
            .ok_or_else(|| format!("unknown action `{}`", self.action))?;
        let outcome = Outcome::parse(&self.outcome)
            .ok_or_else(|| format!("unknown outcome `{}`", self.outcome))?;
        let detail =
            serde_json::from_str(&self.detail).map_err(|e| format!("detail is not JSON: {e}"))?;
        Ok(AuditEvent {
            at,
            actor: self.actor.clone(),
            action,
            target: self.target.clone(),
            outcome,
            detail,
        })
    }

    fn into_record(self) -> Result<AuditRecord, StoreError> {
        let event = self
            .event()
            .map_err(|m| StoreError::corrupt("audit_log", self.seq.to_string(), m))?;
        Ok(AuditRecord {
            seq: self.seq,
            prev_hash: self.prev_hash,
            hash: self.hash,
            event,
        })
    }
}

/// The audit head the last transaction of this process left, so that the
/// next one appends without reading the head first: one statement less per
/// transaction that audits (issue 17).
///
/// Kept only on SQLite, where this process's one write connection is the
/// only writer but for an occasional CLI command, and only once the schema
/// checks each row against the head (migration 0100). It is a guess: a row
/// that does not follow the head the database holds is refused, and the
/// append then reads the head and tries again (a refused statement leaves
/// SQLite's transaction as it was). On PostgreSQL the head is always read,
/// `FOR UPDATE`: it is the lock the replicas' appends queue on.
#[derive(Debug, Clone, Default)]
pub(super) struct HeadGuess(Arc<GuessState>);

#[derive(Debug, Default)]
struct GuessState {
    enabled: AtomicBool,
    head: Mutex<Option<(i64, String)>>,
}

impl HeadGuess {
    /// Starts keeping guesses (`true`) or stops.
    pub(super) fn enable(&self, on: bool) {
        self.0.enabled.store(on, Ordering::Release);
    }

    /// The head last kept, while guesses are kept.
    fn get(&self) -> Option<(i64, String)> {
        if !self.0.enabled.load(Ordering::Acquire) {
            return None;
        }
        self.0.head.lock().ok()?.clone()
    }

    /// Keeps `head` for the next transaction.
    pub(super) fn keep(&self, head: (i64, String)) {
        if self.0.enabled.load(Ordering::Acquire)
            && let Ok(mut kept) = self.0.head.lock()
        {
            *kept = Some(head);
        }
    }
}

const AUDIT_COLUMNS: &str = "seq, at, actor, action, target, outcome, detail, prev_hash, hash";

impl StoreTx {
    /// Appends `event` to the chain after the current head and, in the same
    /// transaction, enqueues it for the audit channel (outbox kind
    /// `audit_channel`, key `audit-<seq>`). The time is kept to the
    /// microsecond, as hashed.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn append_audit(&mut self, event: &AuditEvent) -> Result<AuditRecord, StoreError> {
        let record = self.append_audit_unposted(event).await?;
        self.enqueue(OutboxMessage {
            kind: OutboxKind::AuditChannel,
            target: None,
            payload: record.to_json(),
            idempotency_key: Some(format!("audit-{}", record.seq)),
            created_at: record.event.at,
        })
        .await?;
        Ok(record)
    }

    /// Appends `event` to the chain, as [`StoreTx::append_audit`], without
    /// posting it to the audit channel: for a member's repeated refusals,
    /// which the channel shows as one summary a minute.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn append_audit_unposted(
        &mut self,
        event: &AuditEvent,
    ) -> Result<AuditRecord, StoreError> {
        let (head, guessed) = match self.audit_head.take() {
            Some(head) => (head, false),
            None => match self.head_guess.get() {
                Some(head) => (head, true),
                None => (self.read_audit_head().await?, false),
            },
        };
        let mut event = event.clone();
        event.at = as_stored(event.at);
        let record = match self.insert_audit_row(head, event).await {
            Ok(record) => record,
            Err((e, event)) if guessed => {
                // Another process appended since: the database refused the
                // row. From the head as it is, once.
                tracing::debug!(error.message = %e, "the audit head moved; appending after it");
                let head = self.read_audit_head().await?;
                self.insert_audit_row(head, event)
                    .await
                    .map_err(|(e, _)| e)?
            }
            Err((e, _)) => return Err(e),
        };
        self.audit_head = Some((record.seq, record.hash.clone()));
        Ok(record)
    }

    /// Inserts `event` as the row after `head`. The INSERT moves
    /// `audit_head` too (trigger `audit_log_moves_head`, migration 0100),
    /// and fails unless `head` is the head the database holds. On failure
    /// the event comes back with the error.
    async fn insert_audit_row(
        &mut self,
        (head_seq, head_hash): (i64, String),
        event: AuditEvent,
    ) -> Result<AuditRecord, (StoreError, AuditEvent)> {
        let seq = head_seq + 1;
        let hash = event.chain_hash(seq, &head_hash);
        const INSERT: &str = "INSERT INTO audit_log
            (seq, at, actor, action, target, outcome, detail, prev_hash, hash)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
        let inserted = with_tx!(&mut self.tx, |c| {
            sqlx::query(INSERT)
                .bind(seq)
                .bind(event.at_text())
                .bind(&event.actor)
                .bind(event.action.as_str())
                .bind(&event.target)
                .bind(event.outcome.as_str())
                .bind(event.detail.to_string())
                .bind(&head_hash)
                .bind(&hash)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .with_context(|| format!("appending audit row {seq}"));
        match inserted {
            Ok(_) => Ok(AuditRecord {
                seq,
                prev_hash: head_hash,
                hash,
                event,
            }),
            Err(e) => Err((e.into(), event)),
        }
    }

    /// The head as the database holds it. PostgreSQL: this read takes `FOR
    /// UPDATE`; the head row is the chain's lock, held to the commit, so
    /// two replicas never fork it. Read once per transaction: later appends
    /// in it go on from the head the last one left, which nobody else can
    /// move meanwhile.
    async fn read_audit_head(&mut self) -> Result<(i64, String), StoreError> {
        let sql = format!(
            "SELECT seq, hash FROM audit_head WHERE id = 1{}",
            self.tx.for_update()
        );
        Ok(with_tx!(&mut self.tx, |c| {
            sqlx::query_as(&sql).fetch_one(c).await
        })
        .context("reading the audit head")?)
    }
}

impl Store {
    /// Appends one event in its own transaction; see
    /// [`StoreTx::append_audit`].
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn append_audit(&self, event: &AuditEvent) -> Result<AuditRecord, StoreError> {
        let mut tx = self.begin().await?;
        let record = tx.append_audit(event).await?;
        tx.commit().await?;
        Ok(record)
    }

    /// The chain's head: the last row's seq and hash (0 and the genesis
    /// hash for an empty log).
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn audit_head(&self) -> Result<(i64, String), StoreError> {
        Ok(with_read!(&self.db, |c| {
            sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
                .fetch_one(c)
                .await
        })
        .context("reading the audit head")?)
    }

    /// Audit events matching `filter`, oldest first.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] for a row that cannot be read back;
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log
             WHERE ($1 IS NULL OR at >= $1) AND ($2 IS NULL OR actor = $2)
               AND ($3 IS NULL OR action = $3)
             ORDER BY seq DESC LIMIT $4"
        );
        let rows: Vec<AuditRow> = with_read!(&self.db, |c| {
            sqlx::query_as(&sql)
                .bind(filter.since.map(ts))
                .bind(filter.actor.as_deref())
                .bind(filter.action.map(AuditAction::as_str))
                .bind(filter.limit.map_or(i64::MAX, i64::from))
                .fetch_all(c)
                .await
        })
        .context("listing audit events")?;
        rows.into_iter().rev().map(AuditRow::into_record).collect()
    }

    /// Recomputes every hash from the stored columns, in one consistent
    /// snapshot, and reports the first row that is edited, missing or out of
    /// place, or a head that does not match the last row (a deleted last
    /// row).
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails (a broken chain is
    /// not an error: it is the answer).
    pub async fn verify_audit(&self) -> Result<AuditVerification, StoreError> {
        let mut tx = self.db.snapshot().await?;
        let head: Option<(i64, String)> = with_tx!(&mut tx, |c| {
            sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
                .fetch_optional(c)
                .await
        })
        .context("reading the audit head")?;
        let mut chain = ChainCheck::new();
        let sql =
            format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2");
        loop {
            let page: Vec<AuditRow> = with_tx!(&mut tx, |c| {
                sqlx::query_as(&sql)
                    .bind(chain.last_seq)
                    .bind(VERIFY_PAGE)
                    .fetch_all(c)
                    .await
            })
            .with_context(|| format!("reading audit rows after {}", chain.last_seq))?;
            let done = page.len() < VERIFY_PAGE as usize;
            for row in &page {
                if let Some(broken) = chain.check(row) {
                    return Ok(chain.result(Some(broken)));
                }
            }
            if done {
                break;
            }
        }
        let broken = match head {
            Some((seq, hash)) => chain.check_head(seq, &hash),
            None => Some(BrokenLink {
                seq: chain.last_seq,
                problem: "the audit head row is missing".to_string(),
            }),
        };
        if let Some(broken) = &broken {
            tracing::warn!(seq = broken.seq, problem = %broken.problem, "audit chain is broken");
        }
        Ok(chain.result(broken))
    }
}

/// The state of a verification walking the rows in seq order.
struct ChainCheck {
    checked: u64,
    last_seq: i64,
    last_hash: String,
}

impl ChainCheck {
    fn new() -> Self {
        Self {
            checked: 0,
            last_seq: 0,
            last_hash: GENESIS_HASH.to_string(),
        }
    }

    /// Checks the next row; on success it becomes the last one.
    fn check(&mut self, row: &AuditRow) -> Option<BrokenLink> {
        let expected = self.last_seq + 1;
        let broken = |seq: i64, problem: String| Some(BrokenLink { seq, problem });
        if row.seq != expected {
            return broken(expected, missing(expected, row.seq - 1));
        }
        if row.prev_hash != self.last_hash {
            let problem = if self.last_seq == 0 {
                "prev_hash is not the genesis hash".to_string()
            } else {
                format!("prev_hash does not match row {}", self.last_seq)
            };
            return broken(row.seq, problem);
        }
        let event = match row.event() {
            Ok(event) => event,
            Err(message) => return broken(row.seq, format!("row cannot be read: {message}")),
        };
        if event.chain_hash(row.seq, &row.prev_hash) != row.hash {
            return broken(row.seq, "hash mismatch: row was changed".to_string());
        }
        self.checked += 1;
        self.last_seq = row.seq;
        self.last_hash.clone_from(&row.hash);
        None
    }

    /// Checks that the head points at the last row.
    fn check_head(&self, head_seq: i64, head_hash: &str) -> Option<BrokenLink> {
        if head_seq > self.last_seq {
            Some(BrokenLink {
                seq: self.last_seq + 1,
                problem: missing(self.last_seq + 1, head_seq),
            })
        } else if head_seq < self.last_seq {
            Some(BrokenLink {
                seq: head_seq + 1,
                problem: format!(
                    "rows after {head_seq} were added outside the store (the head is at {head_seq})"
                ),
            })
        } else if head_hash != self.last_hash {
            Some(BrokenLink {
                seq: self.last_seq,
                problem: format!("the head's hash does not match row {}", self.last_seq),
            })
        } else {
            None
        }
    }

    fn result(&self, first_broken: Option<BrokenLink>) -> AuditVerification {
        AuditVerification {
            checked: self.checked,
            first_broken,
        }
    }
}

/// `missing row 4` or `missing rows 4..6` (inclusive).
fn missing(first: i64, last: i64) -> String {
    if first == last {
        format!("missing row {first}")
    } else {
        format!("missing rows {first}..{last}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ranges_read_naturally() {
        assert_eq!(missing(4, 4), "missing row 4");
        assert_eq!(missing(4, 6), "missing rows 4..6");
    }

    #[test]
    fn rows_with_times_outside_the_log_format_are_refused() {
        let row = AuditRow {
            seq: 1,
            at: "2026-01-01T00:00:00Z".into(),
            actor: "cli".into(),
            action: "bot_started".into(),
            target: "-".into(),
            outcome: "info".into(),
            detail: "{}".into(),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        assert!(row.event().unwrap_err().contains("not in the log's format"));
    }
}
