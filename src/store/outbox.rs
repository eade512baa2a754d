//! The outbox: messages written with the change they report and delivered to
//! Discord afterwards, retried until Discord accepts them.
//!
//! Delivery protocol for the worker:
//!
//! 1. [`Store::next_outbox_batch`] returns due, undelivered rows in id order.
//!    `audit_channel` rows come strictly in id order: an undelivered audit row
//!    that is not yet due (it failed and waits for its retry) holds back every
//!    later audit row, so the audit channel never shows a gap or a swap.
//! 2. Send each row with its `idempotency_key` as Discord's message `nonce`
//!    (with `enforce_nonce`), so a resend after a crash cannot post twice.
//!    Send the batch's audit rows one at a time, in order, and stop sending
//!    audit rows at the first failure.
//! 3. [`Store::mark_delivered`] on success, [`Store::mark_failed`] with the
//!    next attempt time on failure.
//!
//! Edits (`interaction_edit`, `message_edit`) each carry the whole message
//! their target names, so only a message's latest edit says what it should
//! show. A message's edits go one at a time, oldest first, and an edit that
//! a later one of the same message has made stale is marked delivered
//! without being sent: a retried edit can never put back a state that is
//! over (an approval card's buttons on a request already open).
//!
//! With several replicas, each worker claims what it sends
//! ([`Store::claim_outbox_batch`]): other rows one by one under a short
//! claim (`FOR UPDATE SKIP LOCKED` on PostgreSQL), and the audit-channel rows
//! as one ordered stream, sent only by the holder of the `outbox_audit` lease
//! (see [`super::leases`]), so the channel keeps log order. A claim that runs
//! out (its replica died) leaves the row to the others; the nonce keeps the
//! resend from posting twice.
//!
//! A delivered row is kept a while, so that a producer running again soon
//! after (a retried step, a replica's restart) finds its key and mints
//! nothing, then deleted ([`Store::prune_delivered_outbox`]): a row is the
//! whole message, a weekly report's files included, and the audit itself
//! lives in the audit log, not here.

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::backend::{with_read, with_tx, with_write};
use super::{Store, StoreError, StoreTx, limit_i64, parse_opt_ts, parse_ts, ts};

/// Longest stored error text.
const MAX_ERROR_CHARS: usize = 500;
/// Discord's limit for a message nonce.
const MAX_KEY_CHARS: usize = 25;

/// What kind of message a row is, which says what its target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxKind {
    /// An audit event for the audit channel; no target (the configured
    /// channel at delivery time). Delivered strictly in order.
    AuditChannel,
    /// A direct message; the target is a user id.
    Dm,
    /// A message in a channel; the target is a channel id.
    ChannelMessage,
    /// An edit of the original interaction reply; the target is the request
    /// id, whose grant holds the interaction token (never the payload).
    /// Once the token has expired, a DM to the grant's owner instead.
    InteractionEdit,
    /// An edit of a request's approval or review card; the target is the
    /// request id, whose approval request records where the card is.
    MessageEdit,
}

impl OutboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuditChannel => "audit_channel",
            Self::Dm => "dm",
            Self::ChannelMessage => "channel_message",
            Self::InteractionEdit => "interaction_edit",
            Self::MessageEdit => "message_edit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "audit_channel" => Self::AuditChannel,
            "dm" => Self::Dm,
            "channel_message" => Self::ChannelMessage,
            "interaction_edit" => Self::InteractionEdit,
            "message_edit" => Self::MessageEdit,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    pub kind: OutboxKind,
    /// Where to (see [`OutboxKind`]).
    pub target: Option<String>,
    /// What to send, as JSON. Never a token.
    pub payload: serde_json::Value,
    /// At most 25 ASCII characters, unique per message, e.g.
    /// `rem-<short id>`; enqueueing a key that exists again is a no-op. `None`
    /// gets a fresh random key.
    pub idempotency_key: Option<String>,
    /// When it was enqueued; it is due from then.
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// Its id; ids grow in enqueue order.
    pub id: i64,
    pub kind: OutboxKind,
    pub target: Option<String>,
    pub payload: serde_json::Value,
    /// Sent as Discord's message nonce.
    pub idempotency_key: String,
    pub created_at: DateTime<Utc>,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not before this time.
    pub next_attempt_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// How far behind delivery is (for `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    /// Undelivered rows.
    pub depth: u64,
    /// Age of the oldest undelivered row.
    pub oldest_age: Option<chrono::Duration>,
    /// Age of the oldest undelivered audit-channel post: every later post
    /// waits behind it.
    pub audit_oldest_age: Option<chrono::Duration>,
}

#[derive(sqlx::FromRow)]
struct RawOutboxRow {
    id: i64,
    kind: String,
    target: Option<String>,
    payload: String,
    idempotency_key: String,
    created_at: String,
    attempts: i64,
    next_attempt_at: String,
    delivered_at: Option<String>,
    last_error: Option<String>,
}

impl TryFrom<RawOutboxRow> for OutboxRow {
    type Error = StoreError;

    fn try_from(raw: RawOutboxRow) -> Result<Self, StoreError> {
        let key = raw.id.to_string();
        let corrupt = |m: String| StoreError::corrupt("outbox", &key, m);
        Ok(OutboxRow {
            id: raw.id,
            kind: OutboxKind::parse(&raw.kind)
                .ok_or_else(|| corrupt(format!("unknown kind `{}`", raw.kind)))?,
            target: raw.target,
            payload: serde_json::from_str(&raw.payload)
                .map_err(|e| corrupt(format!("payload is not JSON: {e}")))?,
            idempotency_key: raw.idempotency_key,
            created_at: parse_ts("outbox", &key, &raw.created_at)?,
            attempts: u32::try_from(raw.attempts)
                .map_err(|_| corrupt(format!("bad attempts {}", raw.attempts)))?,
            next_attempt_at: parse_ts("outbox", &key, &raw.next_attempt_at)?,
            delivered_at: parse_opt_ts("outbox", &key, raw.delivered_at.as_deref())?,
            last_error: raw.last_error,
        })
    }
}

const OUTBOX_COLUMNS: &str = "id, kind, target, payload, idempotency_key, created_at, attempts, \
                              next_attempt_at, delivered_at, last_error";

/// Over the row `o`: it is not an edit, or every earlier edit of its
/// message (same kind and target) is delivered or superseded. An edit
/// carries the whole message, so a target's edits go one at a time, oldest
/// first: an edit that failed and waits for its retry can never overwrite
/// a later one, and two deliverers never send edits of one message at once.
const AFTER_EARLIER_EDITS: &str = "(o.kind NOT IN ('interaction_edit', 'message_edit') \
     OR NOT EXISTS (SELECT 1 FROM outbox AS earlier \
                    WHERE earlier.target = o.target AND earlier.kind = o.kind \
                      AND earlier.id < o.id AND earlier.delivered_at IS NULL))";

/// What a superseded edit's `last_error` says: it was never sent.
const SUPERSEDED: &str = "superseded by a later edit of the same message; not sent";

/// Marks delivered (`$1` the time, `$2` [`SUPERSEDED`]) every pending edit a
/// later edit of its message has made stale, but not one a live claim holds
/// (at `$1`); `lock` is the backend's `FOR UPDATE SKIP LOCKED`. Public so
/// that a test can `EXPLAIN` exactly this statement.
#[doc(hidden)]
pub fn supersede_stale_edits_sql(lock: &str) -> String {
    format!(
        "UPDATE outbox SET delivered_at = $1, last_error = $2
         WHERE id IN (
             SELECT o.id FROM outbox AS o
             WHERE o.delivered_at IS NULL
               AND o.kind IN ('interaction_edit', 'message_edit')
               AND (o.claimed_until IS NULL OR o.claimed_until <= $1)
               AND EXISTS (SELECT 1 FROM outbox AS later
                           WHERE later.target = o.target AND later.kind = o.kind
                             AND later.id > o.id){lock})"
    )
}

/// Claims for `$2` until `$3` up to `$4` due rows at `$1` that are not
/// audit-channel rows, that no live claim holds, and that are not waiting
/// for an earlier edit of their message; `lock` as above. Public so that a
/// test can `EXPLAIN` exactly this statement.
#[doc(hidden)]
pub fn claim_outbox_sql(lock: &str) -> String {
    format!(
        "UPDATE outbox SET claimed_by = $2, claimed_until = $3
         WHERE id IN (
             SELECT o.id FROM outbox AS o
             WHERE o.delivered_at IS NULL AND o.next_attempt_at <= $1
               AND o.kind <> 'audit_channel'
               AND (o.claimed_until IS NULL OR o.claimed_until <= $1)
               AND {AFTER_EARLIER_EDITS}
             ORDER BY o.id LIMIT $4{lock})
         RETURNING {OUTBOX_COLUMNS}"
    )
}

impl StoreTx {
    /// Enqueues `message` and returns its id. If a row with the same
    /// idempotency key exists, nothing is written and that row's id is
    /// returned (the first enqueue wins).
    ///
    /// # Errors
    /// [`StoreError::InvalidInput`] for a key that is empty, longer than 25
    /// characters or not printable ASCII; [`StoreError::Unexpected`] if the
    /// database fails.
    pub async fn enqueue(&mut self, message: OutboxMessage) -> Result<i64, StoreError> {
        self.insert_outbox(message, None).await
    }

    /// [`StoreTx::enqueue`], the row held for `worker` until `until` as
    /// [`StoreTx::hold_outbox_row`] holds one, written with the row.
    ///
    /// # Errors
    /// As [`StoreTx::enqueue`].
    pub async fn enqueue_held(
        &mut self,
        message: OutboxMessage,
        worker: &str,
        until: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        self.insert_outbox(message, Some((worker, until))).await
    }

    async fn insert_outbox(
        &mut self,
        message: OutboxMessage,
        held: Option<(&str, DateTime<Utc>)>,
    ) -> Result<i64, StoreError> {
        let key = match message.idempotency_key {
            Some(key) => {
                check_key(&key)?;
                key
            }
            None => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                format!("ob-{}", &id[..MAX_KEY_CHARS - 3])
            }
        };
        let created_at = ts(message.created_at);
        const INSERT: &str = "INSERT INTO outbox
            (kind, target, payload, idempotency_key, created_at, next_attempt_at,
             claimed_by, claimed_until)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING id";
        let inserted: Option<i64> = with_tx!(&mut self.tx, |c| {
            sqlx::query_scalar(INSERT)
                .bind(message.kind.as_str())
                .bind(message.target.as_deref())
                .bind(message.payload.to_string())
                .bind(&key)
                .bind(&created_at)
                .bind(&created_at)
                .bind(held.map(|(worker, _)| worker))
                .bind(held.map(|(_, until)| ts(until)))
                .fetch_optional(c)
                .await
        })
        .with_context(|| format!("enqueueing outbox message `{key}`"))?;
        if let Some(id) = inserted {
            return Ok(id);
        }
        let id = with_tx!(&mut self.tx, |c| {
            sqlx::query_scalar("SELECT id FROM outbox WHERE idempotency_key = $1")
                .bind(&key)
                .fetch_one(c)
                .await
        })
        .with_context(|| format!("finding outbox message `{key}`"))?;
        if let Some((worker, until)) = held {
            self.hold_outbox_row(id, worker, until).await?;
        }
        Ok(id)
    }

    /// Claims row `id` for `worker` until `until`, in this transaction: a
    /// row its writer delivers itself at once (the `/jit` reply, shown in
    /// line) is left alone by every deliverer until then, and is theirs
    /// after, should the writer die first.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn hold_outbox_row(
        &mut self,
        id: i64,
        worker: &str,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        with_tx!(&mut self.tx, |c| {
            sqlx::query(
                "UPDATE outbox SET claimed_by = $1, claimed_until = $2
                 WHERE id = $3 AND delivered_at IS NULL",
            )
            .bind(worker)
            .bind(ts(until))
            .bind(id)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .with_context(|| format!("holding outbox row {id}"))?;
        Ok(())
    }

    /// Marks every pending edit that a later edit of the same message has
    /// made stale as delivered, unsent ([`SUPERSEDED`]): it would only show
    /// an older state. An edit a deliverer holds is left to it (sent, or
    /// released and superseded then); the later edit waits for it
    /// ([`AFTER_EARLIER_EDITS`]).
    async fn supersede_stale_edits(&mut self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let sql = supersede_stale_edits_sql(self.tx.skip_locked());
        with_tx!(&mut self.tx, |c| {
            sqlx::query(&sql)
                .bind(ts(now))
                .bind(SUPERSEDED)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .context("superseding stale edits")?;
        Ok(())
    }
}

/// `error` with the token segment of Discord `/webhooks/<id>/<token>` and
/// `/interactions/<id>/<token>` paths, and the word after `Bot ` or
/// `Bearer `, replaced by `[redacted]`.
fn redact_tokens(error: &str) -> String {
    let ends_segment = |c: char| c == '/' || c == '?' || c == ')' || c == '"' || c.is_whitespace();
    let mut out = error.to_string();
    for marker in ["/webhooks/", "/interactions/"] {
        let mut from = 0;
        while let Some(found) = out[from..].find(marker) {
            let id_start = from + found + marker.len();
            let Some(id_len) = out[id_start..].find('/') else {
                break;
            };
            let token_start = id_start + id_len + 1;
            let token_len = out[token_start..]
                .find(ends_segment)
                .unwrap_or(out.len() - token_start);
            if token_len > 0 {
                out.replace_range(token_start..token_start + token_len, "[redacted]");
            }
            from = token_start;
        }
    }
    for marker in ["Bot ", "Bearer "] {
        let mut from = 0;
        while let Some(found) = out[from..].find(marker) {
            let start = from + found + marker.len();
            let len = out[start..].find(ends_segment).unwrap_or(out.len() - start);
            if len > 0 {
                out.replace_range(start..start + len, "[redacted]");
            }
            from = start;
        }
    }
    out
}

fn check_key(key: &str) -> Result<(), StoreError> {
    let ok = (1..=MAX_KEY_CHARS).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidInput(format!(
            "outbox key `{}` must be 1 to {MAX_KEY_CHARS} printable ASCII characters",
            key.chars().take(40).collect::<String>()
        )))
    }
}

impl Store {
    /// Enqueues one message in its own transaction; see
    /// [`StoreTx::enqueue`].
    ///
    /// # Errors
    /// As [`StoreTx::enqueue`].
    pub async fn enqueue(&self, message: OutboxMessage) -> Result<i64, StoreError> {
        let mut tx = self.begin().await?;
        let id = tx.enqueue(message).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Up to `limit` undelivered rows due at `now`, in id order, with
    /// `audit_channel` rows held back behind any earlier undelivered audit
    /// row that is not due (head-of-line, so the channel keeps log order),
    /// and an edit held back behind any earlier undelivered edit of its
    /// message.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] for a row that cannot be read back;
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn next_outbox_batch(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        self.due_rows(now, limit, "TRUE").await
    }

    /// Up to `limit` undelivered rows due at `now` that match `only` (SQL
    /// over the row `o`), audit rows held back as
    /// [`Store::next_outbox_batch`] says.
    async fn due_rows(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        only: &str,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let sql = format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox AS o
             WHERE o.delivered_at IS NULL AND o.next_attempt_at <= $1 AND {only}
               AND (o.kind <> 'audit_channel' OR NOT EXISTS (
                     SELECT 1 FROM outbox AS earlier
                     WHERE earlier.kind = 'audit_channel' AND earlier.delivered_at IS NULL
                       AND earlier.id < o.id AND earlier.next_attempt_at > $1))
               AND {AFTER_EARLIER_EDITS}
             ORDER BY o.id LIMIT $2"
        );
        let rows: Vec<RawOutboxRow> = with_read!(&self.db, |c| {
            sqlx::query_as(&sql)
                .bind(ts(now))
                .bind(limit_i64(limit))
                .fetch_all(c)
                .await
        })
        .context("reading the next outbox batch")?;
        rows.into_iter().map(OutboxRow::try_from).collect()
    }

    /// Claims due rows for `worker` until `now + claim`, in id order: up to
    /// `limit` rows that are not audit-channel rows and that no live claim
    /// holds (another replica's rows are passed over, never waited for),
    /// an edit only once every earlier edit of its message is delivered, and
    /// after the stale edits are marked delivered unsent;
    /// then, when `audit_stream` (the caller holds the `outbox_audit`
    /// lease), the due audit-channel rows as [`Store::next_outbox_batch`]
    /// picks them, head-of-line order kept.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] for a row that cannot be read back;
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn claim_outbox_batch(
        &self,
        now: DateTime<Utc>,
        worker: &str,
        claim: chrono::Duration,
        audit_stream: bool,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let mut tx = self.begin().await?;
        tx.supersede_stale_edits(now).await?;
        let sql = claim_outbox_sql(tx.tx.skip_locked());
        let claimed: Vec<RawOutboxRow> = with_tx!(&mut tx.tx, |c| {
            sqlx::query_as(&sql)
                .bind(ts(now))
                .bind(worker)
                .bind(ts(now + claim))
                .bind(limit_i64(limit))
                .fetch_all(c)
                .await
        })
        .with_context(|| format!("claiming outbox rows for {worker}"))?;
        tx.commit().await?;
        let mut rows = claimed
            .into_iter()
            .map(OutboxRow::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        if audit_stream {
            rows.extend(
                self.due_rows(now, limit, "o.kind = 'audit_channel'")
                    .await?,
            );
        }
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// Records that row `id` was delivered at `now`; it is never returned
    /// again. Marking a delivered row again changes nothing.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if there is no such row;
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn mark_delivered(&self, id: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
        let updated = with_write!(&self.db, |c| {
            sqlx::query(
                "UPDATE outbox SET delivered_at = $1, last_error = NULL,
                     claimed_by = NULL, claimed_until = NULL
                 WHERE id = $2 AND delivered_at IS NULL",
            )
            .bind(ts(now))
            .bind(id)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .with_context(|| format!("marking outbox row {id} delivered"))?;
        if updated == 0 {
            self.outbox_row_exists(id).await?;
        }
        Ok(())
    }

    /// Records that the rows `ids` were delivered at `now`, in one
    /// statement: the deliverer marks what one round sent together.
    /// Rows already marked, or not there, are left as they are.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn mark_all_delivered(
        &self,
        ids: &[i64],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let Some((first, rest)) = ids.split_first() else {
            return Ok(());
        };
        // The ids are integers read from the database: written into the
        // SQL as they are, they cannot inject anything.
        let list = rest
            .iter()
            .fold(first.to_string(), |list, id| format!("{list}, {id}"));
        let sql = format!(
            "UPDATE outbox SET delivered_at = $1, last_error = NULL,
                 claimed_by = NULL, claimed_until = NULL
             WHERE id IN ({list}) AND delivered_at IS NULL"
        );
        // Not kept prepared: each list is its own statement text, and would
        // push the statements that repeat out of the connection's cache.
        with_write!(&self.db, |c| {
            sqlx::query(&sql)
                .persistent(false)
                .bind(ts(now))
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .with_context(|| format!("marking {} outbox rows delivered", ids.len()))?;
        Ok(())
    }

    /// Records a failed attempt of row `id` and when to try again. `error`
    /// is stored (cut to 500 characters) and shown to operators. It should
    /// hold no secret; as a safety net, interaction and webhook tokens in
    /// Discord URLs (which HTTP client errors print) and `Bot`/`Bearer`
    /// credentials are replaced by `[redacted]` first.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if there is no such row;
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn mark_failed(
        &self,
        id: i64,
        error: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let error: String = redact_tokens(error).chars().take(MAX_ERROR_CHARS).collect();
        let updated = with_write!(&self.db, |c| {
            sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $1, next_attempt_at = $2,
                     claimed_by = NULL, claimed_until = NULL
                 WHERE id = $3 AND delivered_at IS NULL",
            )
            .bind(error)
            .bind(ts(next_attempt_at))
            .bind(id)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .with_context(|| format!("recording a failed delivery of outbox row {id}"))?;
        if updated == 0 {
            self.outbox_row_exists(id).await?;
        }
        Ok(())
    }

    /// Ends `worker`'s hold ([`StoreTx::hold_outbox_row`]) on the row keyed
    /// `key`: delivered at `now` when `delivered`, else released so that a
    /// deliverer sends it at once. A row another worker claimed since (the
    /// hold ran out), or never held, is left as it is. Returns whether a
    /// row changed.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn end_hold(
        &self,
        key: &str,
        worker: &str,
        delivered: bool,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let set = if delivered {
            "delivered_at = $1, last_error = NULL"
        } else {
            "next_attempt_at = $1"
        };
        let sql = format!(
            "UPDATE outbox SET {set}, claimed_by = NULL, claimed_until = NULL
             WHERE idempotency_key = $2 AND claimed_by = $3 AND delivered_at IS NULL"
        );
        let updated = with_write!(&self.db, |c| {
            sqlx::query(&sql)
                .bind(ts(now))
                .bind(key)
                .bind(worker)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .with_context(|| format!("ending the hold on outbox row `{key}`"))?;
        Ok(updated > 0)
    }

    /// Deletes up to `limit` rows delivered before `before`, those
    /// delivered first first, and returns how many went. Rows not
    /// delivered stay, however old.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn prune_delivered_outbox(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let deleted = with_write!(&self.db, |c| {
            sqlx::query(
                "DELETE FROM outbox WHERE id IN (
                     SELECT id FROM outbox
                     WHERE delivered_at IS NOT NULL AND delivered_at < $1
                     ORDER BY delivered_at, id LIMIT $2)",
            )
            .bind(ts(before))
            .bind(limit_i64(limit))
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .context("deleting delivered outbox rows")?;
        Ok(deleted)
    }

    /// One outbox row by id (delivered or not).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if there is no such row;
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`] otherwise.
    pub async fn outbox_row(&self, id: i64) -> Result<OutboxRow, StoreError> {
        let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id = $1");
        let row: Option<RawOutboxRow> = with_read!(&self.db, |c| {
            sqlx::query_as(&sql).bind(id).fetch_optional(c).await
        })
        .with_context(|| format!("reading outbox row {id}"))?;
        row.ok_or_else(|| StoreError::not_found("outbox message", id.to_string()))?
            .try_into()
    }

    /// How many rows wait and how old the oldest is, at `now`.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn outbox_stats(&self, now: DateTime<Utc>) -> Result<OutboxStats, StoreError> {
        let (depth, oldest): (i64, Option<String>) = with_read!(&self.db, |c| {
            sqlx::query_as(
                "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE delivered_at IS NULL",
            )
            .fetch_one(c)
            .await
        })
        .context("measuring the outbox")?;
        let audit_oldest: Option<String> = with_read!(&self.db, |c| {
            sqlx::query_scalar(
                "SELECT MIN(created_at) FROM outbox \
                 WHERE delivered_at IS NULL AND kind = 'audit_channel'",
            )
            .fetch_one(c)
            .await
        })
        .context("measuring the audit channel's backlog")?;
        let age = |t: DateTime<Utc>| (now - t).max(chrono::Duration::zero());
        let oldest = parse_opt_ts("outbox", "oldest", oldest.as_deref())?;
        let audit_oldest = parse_opt_ts("outbox", "audit oldest", audit_oldest.as_deref())?;
        Ok(OutboxStats {
            depth: u64::try_from(depth).unwrap_or(0),
            oldest_age: oldest.map(age),
            audit_oldest_age: audit_oldest.map(age),
        })
    }

    async fn outbox_row_exists(&self, id: i64) -> Result<(), StoreError> {
        let found: Option<i64> = with_write!(&self.db, |c| {
            sqlx::query_scalar("SELECT id FROM outbox WHERE id = $1")
                .bind(id)
                .fetch_optional(c)
                .await
        })
        .with_context(|| format!("looking up outbox row {id}"))?;
        found
            .map(|_| ())
            .ok_or_else(|| StoreError::not_found("outbox message", id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fit_a_discord_nonce() {
        assert!(check_key("audit-9223372036854775807").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key(&"k".repeat(26)).is_err());
        assert!(check_key("with space").is_err());
    }

    #[test]
    fn tokens_in_error_text_are_redacted() {
        let error = "error sending request for url \
            (https://discord.com/api/v10/webhooks/111/aW50ZXJhY3Rpb24.dG9rZW4/messages/@original): \
            timed out; POST /interactions/222/c2VjcmV0/callback; Authorization: Bot MTIz.abc";
        let redacted = redact_tokens(error);
        for secret in ["aW50ZXJhY3Rpb24", "c2VjcmV0", "MTIz"] {
            assert!(!redacted.contains(secret), "{redacted}");
        }
        assert!(redacted.contains("/webhooks/111/[redacted]/messages/@original"));
        assert!(redacted.contains("/interactions/222/[redacted]/callback"));
        assert!(redacted.contains("Bot [redacted]"));
        assert_eq!(
            redact_tokens("HTTP 503 from Discord"),
            "HTTP 503 from Discord"
        );
    }

    #[test]
    fn kinds_round_trip() {
        for kind in [
            OutboxKind::AuditChannel,
            OutboxKind::Dm,
            OutboxKind::ChannelMessage,
            OutboxKind::InteractionEdit,
        ] {
            assert_eq!(OutboxKind::parse(kind.as_str()), Some(kind));
        }
    }
}
