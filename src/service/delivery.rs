//! Delivers the outbox: audit events to the audit channel (strictly in log
//! order), DMs (with a fallback to a mention in the request channel) and
//! channel messages, retried with backoff while the chat service fails.
//!
//! # Exactly once, as far as Discord allows
//!
//! Delivery is at least once, made idempotent by the receiver. A row is
//! marked delivered only after Discord accepted the send, and every send
//! carries the row's idempotency key as the message nonce with
//! `enforce_nonce: true` (DMs too: they are channel messages in the DM
//! channel). If the bot dies after Discord posted a message but before the
//! row is marked (or Discord's answer is lost), the row is sent again with
//! the same nonce and Discord returns the message it already posted instead
//! of creating a second one.
//!
//! The keys are fixed when the row is written, in the same transaction as
//! the event it reports (`audit-<seq>` for audit events, `rem-<timer id>`
//! and `exp-<timer id>` for reminders and expiry notices, `fb-<row id>` for a
//! DM's channel fallback), and the outbox ignores a second row with a key it
//! holds: a producer that runs again cannot mint a new message.
//!
//! The limit: Discord deduplicates a nonce for a few minutes only. A bot
//! that dies between posting and marking and stays down longer than that
//! posts that one message a second time on restart. Nothing is ever lost.
//!
//! # Several replicas
//!
//! Each replica's deliverer claims the rows it sends
//! ([`Store::claim_outbox_batch`], a [`CLAIM`] long): two replicas never
//! send the same row, and a replica that dies leaves its claimed rows to the
//! others when the claim runs out. The audit channel is one ordered stream:
//! only the holder of the [`replica::OUTBOX_AUDIT`] lease posts it, and it
//! renews the lease before every audit post, so it stops at once when it
//! lost it. A clean shutdown gives the lease up.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::messages;
use super::replica::{self, LeaseGate};
use crate::chat::ChatMessage;
use crate::clock::SharedClock;
use crate::domain::{AuditAction, AuditEvent, Outcome, RequestId};
use crate::interactions::{ChatSender, SendError};
use crate::store::{AuditRecord, Grant, OutboxKind, OutboxMessage, OutboxRow, Store, StoreError};

/// The first wait after a failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Each further failure waits this much longer than the one before.
const BACKOFF_GROWTH: f64 = 1.5;
/// The longest wait between two attempts: after an outage, the backlog
/// starts draining within this long of Discord's return.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const BATCH: u32 = 50;
/// How long a claimed row is this replica's: longer than a send takes, and
/// well within Discord's nonce window, so a resend after a replica died
/// before marking it is still recognised.
pub const CLAIM: chrono::TimeDelta = chrono::TimeDelta::seconds(15);
/// How long the audit stream's lease outlives its last renewal (each audit
/// post renews it).
pub const AUDIT_LEASE: chrono::TimeDelta = chrono::TimeDelta::seconds(15);
/// How long an interaction token edits the original reply, with a margin
/// under Discord's 15 minutes; later edits go by DM.
const TOKEN_LIFETIME: chrono::TimeDelta = chrono::TimeDelta::seconds(14 * 60 + 30);

/// How long a sent row may wait to be marked delivered. Until it is, a
/// crash sends it again (with its nonce, so Discord keeps one message) and
/// another replica may claim it again once [`CLAIM`] runs out: well under
/// both.
const MARK_WITHIN: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

/// How long a delivered row is kept before it is deleted: far longer than a
/// producer can run again and look for its key (a retried step, a restart),
/// and than Discord keeps a nonce. The audit itself is the audit log's.
pub const OUTBOX_RETENTION: chrono::TimeDelta = chrono::TimeDelta::days(7);
/// How often a deliverer deletes delivered rows past [`OUTBOX_RETENTION`].
const PRUNE_EVERY: chrono::TimeDelta = chrono::TimeDelta::hours(1);
/// Rows deleted in one statement: a backlog of old rows goes a batch at a
/// time, each a short write, with other writers in between.
const PRUNE_BATCH: u32 = 500;

/// Rows sent in a round and not marked delivered yet.
#[derive(Debug, Default)]
struct Sent {
    ids: Vec<i64>,
    /// When the first of them was sent.
    since: Option<DateTime<Utc>>,
}

/// What one [`Deliverer::tick`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryOutcome {
    pub delivered: usize,
    /// Attempts that failed and will be retried.
    pub retried: usize,
}

/// The outbox worker.
pub struct Deliverer {
    store: Store,
    sender: Arc<dyn ChatSender>,
    clock: SharedClock,
    audit_channel: Option<u64>,
    /// Who claims rows: this replica.
    worker: String,
    /// The audit stream's lease.
    audit_lease: LeaseGate,
}

/// An outbox row for a DM to the grant's owner, falling back to a mention
/// in the channel they asked in.
pub fn dm_to_owner(
    grant: &Grant,
    message: &ChatMessage,
    key: String,
    now: DateTime<Utc>,
) -> OutboxMessage {
    OutboxMessage {
        kind: OutboxKind::Dm,
        target: Some(grant.user_id.to_string()),
        payload: json!({
            "message": message,
            "fallback_channel": grant.channel_id.map(|c| c.get()),
        }),
        idempotency_key: Some(key),
        created_at: now,
    }
}

fn record_from_json(v: &serde_json::Value) -> Option<AuditRecord> {
    let text = |k: &str| v.get(k).and_then(|x| x.as_str());
    let at = DateTime::parse_from_rfc3339(text("at")?)
        .ok()?
        .with_timezone(&Utc);
    let mut event = AuditEvent::new(
        at,
        text("actor")?,
        AuditAction::parse(text("action")?)?,
        text("target")?,
        Outcome::parse(text("outcome")?)?,
    );
    event.detail = v.get("detail").cloned().unwrap_or_default();
    Some(AuditRecord {
        seq: v.get("seq")?.as_i64()?,
        prev_hash: text("prev_hash")?.to_string(),
        hash: text("hash")?.to_string(),
        event,
    })
}

/// The wait before the next attempt after `attempts` earlier failures
/// (0 for the first): 1 s growing by half each time up to 30 s, scaled by
/// `jitter` (in `[0, 1]`) to between half and all of that so that replicas
/// and rows do not retry in step, and never shorter than Discord's
/// `Retry-After` hint.
///
/// Why this curve: six failures in a row take at most 21 s of waiting
/// (1 + 1.5 + 2.25 + 3.4 + 5.1 + 7.6), so a blip of a few 500s delays an
/// audit message by seconds, not a minute; a long outage is polled every
/// 30 s at most.
fn backoff(attempts: u32, hint: Option<Duration>, jitter: f64) -> chrono::Duration {
    let growth = BACKOFF_GROWTH.powi(i32::try_from(attempts.min(64)).unwrap_or(64));
    let nominal = FIRST_BACKOFF.mul_f64(growth).min(MAX_BACKOFF);
    let wait = nominal.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    let wait = hint.map_or(wait, |h| wait.max(h));
    chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(30))
}

impl Deliverer {
    /// A deliverer posting audit events to `audit_channel`.
    pub fn new(
        store: Store,
        sender: Arc<dyn ChatSender>,
        clock: SharedClock,
        audit_channel: Option<u64>,
    ) -> Self {
        let worker = replica::replica_id().to_string();
        Self {
            audit_lease: LeaseGate::new(store.clone(), replica::OUTBOX_AUDIT, &worker, AUDIT_LEASE),
            store,
            sender,
            clock,
            audit_channel,
            worker,
        }
    }

    /// The same deliverer claiming as `worker` instead of this process's
    /// replica id: for tests that run several replicas in one process.
    pub fn as_worker(mut self, worker: &str) -> Self {
        self.worker = worker.to_string();
        self.audit_lease = LeaseGate::new(
            self.store.clone(),
            replica::OUTBOX_AUDIT,
            worker,
            AUDIT_LEASE,
        );
        self
    }

    /// Sends what is due now, once. A failed audit row stops the audit rows
    /// after it (order is kept); other kinds go on. What was sent is marked
    /// delivered together, at the end of the round or once the first of it
    /// is [`MARK_WITHIN`] old, even when the round ends in an error.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn tick(&self) -> Result<DeliveryOutcome, StoreError> {
        let now = self.clock.now();
        let audit_stream = self.audit_lease.hold(now).await;
        let rows = self
            .store
            .claim_outbox_batch(now, &self.worker, CLAIM, audit_stream, BATCH)
            .await?;
        let mut sent = Sent::default();
        let outcome = self.send_all(rows, &mut sent).await;
        self.mark(&mut sent).await?;
        outcome
    }

    /// Deletes the rows delivered more than [`OUTBOX_RETENTION`] ago, a
    /// batch at a time, and returns how many went. A failure is logged: the
    /// next round tries again.
    pub async fn prune(&self) -> u64 {
        let before = self.clock.now() - OUTBOX_RETENTION;
        let mut deleted = 0;
        loop {
            let batch = match self.store.prune_delivered_outbox(before, PRUNE_BATCH).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error.message = %e, "could not delete delivered outbox rows; next round tries again");
                    break;
                }
            };
            deleted += batch;
            if batch < u64::from(PRUNE_BATCH) {
                break;
            }
            tokio::task::yield_now().await;
        }
        if deleted > 0 {
            tracing::info!(
                deleted,
                "deleted outbox rows delivered more than a week ago"
            );
        }
        deleted
    }

    /// Sends `rows` in order, noting each one sent in `sent`.
    async fn send_all(
        &self,
        rows: Vec<OutboxRow>,
        sent: &mut Sent,
    ) -> Result<DeliveryOutcome, StoreError> {
        let mut outcome = DeliveryOutcome::default();
        let mut audit_blocked = false;
        for row in rows {
            if sent
                .since
                .is_some_and(|t| self.clock.now() - t >= MARK_WITHIN)
            {
                self.mark(sent).await?;
            }
            if row.kind == OutboxKind::AuditChannel {
                // Renewed before each post: a replica that lost the lease
                // (paused past its expiry) stops before posting out of turn.
                audit_blocked = audit_blocked || !self.audit_lease.hold(self.clock.now()).await;
                if audit_blocked {
                    continue;
                }
            }
            match self.send(&row).await {
                Ok(()) => {
                    sent.since.get_or_insert_with(|| self.clock.now());
                    sent.ids.push(row.id);
                    outcome.delivered += 1;
                }
                Err(SendError::Retry {
                    reason,
                    retry_after,
                }) => {
                    let jitter = rand::random::<f64>();
                    let next = self.clock.now() + backoff(row.attempts, retry_after, jitter);
                    tracing::warn!(outbox_id = row.id, kind = row.kind.as_str(), %reason, "delivery failed; will retry");
                    self.store.mark_failed(row.id, &reason, next).await?;
                    outcome.retried += 1;
                    audit_blocked |= row.kind == OutboxKind::AuditChannel;
                }
                Err(SendError::Permanent(reason)) => {
                    self.permanent_failure(&row, &reason).await?;
                    audit_blocked |= row.kind == OutboxKind::AuditChannel;
                }
            }
        }
        Ok(outcome)
    }

    /// Marks the rows in `sent` delivered, in one statement, and empties it.
    async fn mark(&self, sent: &mut Sent) -> Result<(), StoreError> {
        let ids = std::mem::take(&mut sent.ids);
        sent.since = None;
        self.store.mark_all_delivered(&ids, self.clock.now()).await
    }

    async fn permanent_failure(&self, row: &OutboxRow, reason: &str) -> Result<(), StoreError> {
        let now = self.clock.now();
        let fallback = row.payload.get("fallback_channel").and_then(|c| c.as_u64());
        if let (OutboxKind::Dm, Some(channel)) = (row.kind, fallback) {
            // DMs closed: mention the engineer in the channel they asked in.
            let mut tx = self.store.begin().await?;
            tx.enqueue(OutboxMessage {
                kind: OutboxKind::ChannelMessage,
                target: Some(channel.to_string()),
                payload: json!({"message": row.payload.get("message")}),
                idempotency_key: Some(format!("fb-{}", row.id)),
                created_at: now,
            })
            .await?;
            tx.commit().await?;
            tracing::info!(
                outbox_id = row.id,
                "DM refused; falling back to a channel mention"
            );
            return self.store.mark_delivered(row.id, now).await;
        }
        crate::metrics::global().delivery_refused(row.kind.as_str());
        // An audit post holds back every later one: retry it soon, so a
        // fixed channel permission shows within a minute.
        let retry = match row.kind {
            OutboxKind::AuditChannel => chrono::Duration::minutes(1),
            _ => chrono::Duration::hours(1),
        };
        tracing::error!(
            outbox_id = row.id,
            kind = row.kind.as_str(),
            reason,
            retry_in_secs = retry.num_seconds(),
            "delivery refused; retrying later"
        );
        self.store.mark_failed(row.id, reason, now + retry).await
    }

    async fn send(&self, row: &OutboxRow) -> Result<(), SendError> {
        let key = row.idempotency_key.as_str();
        let request = || -> Result<RequestId, SendError> {
            row.target
                .as_deref()
                .and_then(|t| RequestId::parse(t).ok())
                .ok_or_else(|| SendError::Permanent("an edit without a request id".into()))
        };
        let target = row.target.as_deref().and_then(|t| t.parse::<u64>().ok());
        let message = || -> Result<ChatMessage, SendError> {
            serde_json::from_value(row.payload.get("message").cloned().unwrap_or_default())
                .map_err(|e| SendError::Permanent(format!("unreadable payload: {e}")))
        };
        match row.kind {
            OutboxKind::AuditChannel => {
                let Some(channel) = self.audit_channel else {
                    return Ok(()); // no audit channel configured: the log itself is the record
                };
                let record = record_from_json(&row.payload)
                    .ok_or_else(|| SendError::Permanent("unreadable audit payload".into()))?;
                self.sender
                    .post(channel, &messages::audit(&record), key)
                    .await
                    .map(drop)
            }
            OutboxKind::Dm => {
                let user =
                    target.ok_or_else(|| SendError::Permanent("DM without a user".into()))?;
                self.sender.direct(user, &message()?, key).await
            }
            OutboxKind::ChannelMessage => {
                let channel = target
                    .ok_or_else(|| SendError::Permanent("message without a channel".into()))?;
                let posted = self.sender.post(channel, &message()?, key).await?;
                self.remember_card(row, channel, posted).await
            }
            OutboxKind::InteractionEdit => {
                let target = row
                    .target
                    .as_deref()
                    .ok_or_else(|| SendError::Permanent("edit without a target".into()))?;
                // Two writers share this kind: an IP link's visit (the target
                // is the link's hash, whose row holds the token) and a
                // request's later stages (the target is the request id, whose
                // grant holds it).
                let link = match self.store.ip_link(target).await {
                    Ok(link) => link,
                    Err(e) => {
                        return Err(SendError::Retry {
                            reason: format!("reading the link: {e}"),
                            retry_after: None,
                        });
                    }
                };
                match link {
                    Some(link) => {
                        let token = link
                            .reply_token
                            .ok_or_else(|| SendError::Permanent("no reply to edit".into()))?;
                        self.sender.edit_reply(token.expose(), &message()?).await
                    }
                    None => self.edit_reply(&request()?, &message()?, key).await,
                }
            }
            OutboxKind::MessageEdit => self.edit_card(&request()?, &message()?).await,
        }
    }

    /// Records where a request's approval card was posted, for its edits.
    async fn remember_card(
        &self,
        row: &OutboxRow,
        channel: u64,
        posted: Option<u64>,
    ) -> Result<(), SendError> {
        let card_of = row.payload.get("approval_card").and_then(|v| v.as_str());
        let (Some(id), Some(message)) = (card_of.and_then(|i| RequestId::parse(i).ok()), posted)
        else {
            return Ok(());
        };
        self.store
            .set_approval_card(&id, channel, message)
            .await
            .map_err(|e| SendError::Retry {
                reason: format!("recording the card: {e}"),
                retry_after: None,
            })
    }

    /// Edits the approval card of `id`; waits (retries) until the card
    /// itself has been posted.
    async fn edit_card(&self, id: &RequestId, message: &ChatMessage) -> Result<(), SendError> {
        let card = self
            .store
            .approval_request(id)
            .await
            .map_err(|e| SendError::Retry {
                reason: format!("reading the card: {e}"),
                retry_after: None,
            })?
            .and_then(|r| r.card);
        match card {
            Some((channel, message_id)) => self.sender.edit(channel, message_id, message).await,
            None => Err(SendError::Retry {
                reason: "the card is not posted yet".into(),
                retry_after: Some(Duration::from_secs(2)),
            }),
        }
    }

    /// Edits the original reply of `id`'s interaction while its token
    /// works; once it has expired (or Discord refuses it), sends the owner
    /// a DM instead.
    async fn edit_reply(
        &self,
        id: &RequestId,
        message: &ChatMessage,
        key: &str,
    ) -> Result<(), SendError> {
        let grant = self
            .store
            .grant(id)
            .await
            .map_err(|e| SendError::Retry {
                reason: format!("reading the grant: {e}"),
                retry_after: None,
            })?
            .ok_or_else(|| {
                SendError::Permanent("an edit of a request that is not stored".into())
            })?;
        let fresh = self.clock.now() - grant.requested_at < TOKEN_LIFETIME;
        if let (true, Some(token)) = (fresh, &grant.interaction_token) {
            match self.sender.edit_reply(token.expose(), message).await {
                Err(SendError::Permanent(reason)) => {
                    tracing::info!(%reason, "the interaction token no longer works; sending a DM");
                }
                other => return other,
            }
        }
        self.sender.direct(grant.user_id.get(), message, key).await
    }

    /// Delivers until cancelled: after a tick that delivered something, at
    /// once again (a backlog drains at full speed, not one batch a second);
    /// otherwise waits for `wake` or a short poll interval (which also paces
    /// retries).
    pub async fn run(self, wake: Arc<Notify>, cancel: CancellationToken) {
        let mut next_prune = self.clock.now();
        loop {
            match self.tick().await {
                Ok(outcome) if outcome.delivered > 0 && !cancel.is_cancelled() => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error.message = %e, error.cause_chain = ?e, "outbox tick failed");
                }
            }
            if self.clock.now() >= next_prune {
                self.prune().await;
                next_prune = self.clock.now() + PRUNE_EVERY;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        // A last, short flush so audit events of the shutdown go out; then
        // the audit stream is another replica's at once.
        let _ = tokio::time::timeout(Duration::from_secs(3), self.tick()).await;
        self.audit_lease.release(self.clock.now()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_by_half_up_to_30_s_and_honours_hints() {
        let ms = |d: chrono::Duration| d.num_milliseconds();
        assert_eq!(ms(backoff(0, None, 1.0)), 1000);
        assert_eq!(ms(backoff(0, None, 0.0)), 500);
        assert_eq!(ms(backoff(3, None, 1.0)), 3375);
        assert_eq!(ms(backoff(30, None, 1.0)), 30_000);
        assert_eq!(ms(backoff(u32::MAX, None, 0.5)), 22_500);
        assert_eq!(ms(backoff(0, Some(Duration::from_secs(9)), 0.3)), 9000);
    }

    #[test]
    fn six_failures_in_a_row_wait_well_under_35_s_in_all() {
        for jitter in [0.0, 0.5, 1.0] {
            let total: i64 = (0..6)
                .map(|n| backoff(n, None, jitter).num_milliseconds())
                .sum();
            assert!(total <= 21_000, "{total} ms with jitter {jitter}");
        }
    }

    #[test]
    fn no_wait_is_ever_longer_than_30_s_without_a_hint() {
        for n in 0..100 {
            assert!(backoff(n, None, 1.0) <= chrono::Duration::seconds(30));
        }
    }
}
