//! The requester's own `/jit` reply, made durable (issue 14).
//!
//! The transport acknowledges a `/jit` at once and edits that deferred
//! reply with the handler's answer. A replica killed between the commit
//! of the grant's outcome and that edit used to leave the member looking
//! at "thinking…" for good. So the outcome's transaction also writes the
//! reply as an [`OutboxKind::InteractionEdit`] row, the mechanism approvals
//! use for their requester's reply ([`super::approval`]), with DM fallback
//! once the interaction token has expired. A request that waits for
//! approvers writes its "waiting for approval" reply the same way, and a
//! request that asks first ([`super::question`]) its question, under a key
//! of its own: the outcome's key is written again once the member answers.
//!
//! No added latency, never twice: when the replica is answering that very
//! interaction in line, the row is written held by it
//! ([`crate::store::StoreTx::hold_outbox_row`], for a [`HOLD`]), the
//! transport shows the reply as before and then reports back
//! ([`Service::reply_shown`]): shown, the row is marked delivered; not
//! shown, it is released to the deliverers at once. A replica that dies
//! first leaves the row to the others when the hold runs out. A grant
//! settled where nobody is answering (the reconciler, after a restart)
//! writes the row unheld, and the outbox delivers it.

use std::collections::HashMap;
use std::sync::MutexGuard;

use serde_json::json;

use super::{Service, approval, replica};
use crate::chat::ChatMessage;
use crate::domain::{GrantState, RequestId};
use crate::interactions::Invocation;
use crate::store::{Grant, OutboxKind, OutboxMessage, StoreError, StoreTx};

/// How long a reply written for an in-line show is left to it: longer than
/// the transport's attempts take, short enough that a member whose replica
/// died sees the reply soon after.
pub const HOLD: chrono::TimeDelta = chrono::TimeDelta::seconds(10);

tokio::task_local! {
    /// The request whose own interaction the current task is settling in
    /// line: only that task's settlement holds the reply row, never another
    /// task's (the reconciler's) settling the same grant meanwhile.
    static ANSWERING: RequestId;
}

/// The replies this process holds for an in-line show.
#[derive(Debug, Default)]
pub(crate) struct InLine {
    /// Requests whose reply row this process holds, until the show
    /// reports, with that row's outbox key.
    held: HashMap<RequestId, String>,
}

/// The outbox key of `id`'s own reply: its outcome, or its "waiting for
/// approval" (within Discord's 25-character nonce).
fn reply_key(id: &RequestId) -> String {
    approval::key("rp", id)
}

/// The outbox key of the question `id`'s reply asks first: not
/// [`reply_key`], which the outcome uses once the member answers.
fn question_key(id: &RequestId) -> String {
    approval::key("rq", id)
}

impl Service {
    fn in_line(&self) -> MutexGuard<'_, InLine> {
        self.inner.in_line.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `settle`, the settlement of `id` by `who`'s task. When `who` is
    /// answering `id`'s own interaction, it settles in line: the reply row
    /// it writes is held for that task's show.
    pub(crate) async fn answering<T>(
        &self,
        who: &Invocation,
        id: &RequestId,
        settle: impl Future<Output = T>,
    ) -> T {
        if who.id == id.as_str() {
            ANSWERING.scope(id.clone(), settle).await
        } else {
            settle.await
        }
    }

    /// Whether `grant`'s requester is told its outcome by an edit of their
    /// reply written with it: an approved request's ([`Self::told_by_reply`]),
    /// or any other with an interaction token ([`Self::tell_own_reply`]).
    ///
    /// # Errors
    /// If the store fails.
    pub(crate) async fn told_in_reply(&self, grant: &Grant) -> Result<bool, StoreError> {
        Ok(grant.interaction_token.is_some() || self.told_by_reply(&grant.request_id).await?)
    }

    /// Queues, in the transaction `tx` that settled `grant`, the edit of its
    /// requester's own reply to `message`: for a request with an
    /// interaction token that approvers do not decide (those are told by
    /// [`Self::tell_if_approved`]). Held for the in-line show when the
    /// current task is answering that interaction ([`Self::answering`]).
    ///
    /// # Errors
    /// If the store fails.
    pub(crate) async fn tell_own_reply(
        &self,
        tx: &mut StoreTx,
        grant: &Grant,
        message: &ChatMessage,
    ) -> Result<(), StoreError> {
        if grant.interaction_token.is_none() {
            return Ok(());
        }
        let approvers_tell = tx
            .approval_request(&grant.request_id)
            .await?
            .is_some_and(|r| !r.break_glass);
        if approvers_tell {
            return Ok(());
        }
        self.queue_own_reply(tx, grant, message).await
    }

    /// [`Self::tell_own_reply`] without asking whether approvers decide
    /// `grant`: for a caller that knows they do not (it read the approval
    /// request in `tx` already), and for the "waiting for approval" reply
    /// written with an approval request (approvers' decisions are later
    /// edits of that reply).
    ///
    /// # Errors
    /// If the store fails.
    pub(crate) async fn queue_own_reply(
        &self,
        tx: &mut StoreTx,
        grant: &Grant,
        message: &ChatMessage,
    ) -> Result<(), StoreError> {
        let key = reply_key(&grant.request_id);
        self.queue_reply(tx, grant, message, key).await
    }

    /// Queues, in the transaction `tx` that stored `grant` asking first
    /// ([`super::question`]), the edit of its requester's reply to the
    /// question `message`, held for the in-line show as
    /// [`Self::queue_own_reply`] is.
    ///
    /// # Errors
    /// If the store fails.
    pub(crate) async fn queue_question(
        &self,
        tx: &mut StoreTx,
        grant: &Grant,
        message: &ChatMessage,
    ) -> Result<(), StoreError> {
        let key = question_key(&grant.request_id);
        self.queue_reply(tx, grant, message, key).await
    }

    /// The edit of `grant`'s requester's reply to `message`, under `key`,
    /// held when the current task answers that interaction in line.
    async fn queue_reply(
        &self,
        tx: &mut StoreTx,
        grant: &Grant,
        message: &ChatMessage,
        key: String,
    ) -> Result<(), StoreError> {
        let id = &grant.request_id;
        if grant.interaction_token.is_none() {
            return Ok(());
        }
        let now = self.clock().now();
        let row = OutboxMessage {
            kind: OutboxKind::InteractionEdit,
            target: Some(id.to_string()),
            payload: json!({ "message": message }),
            idempotency_key: Some(key.clone()),
            created_at: now,
        };
        let answering = ANSWERING.try_with(|a| a == id).unwrap_or(false);
        if answering {
            self.in_line().held.insert(id.clone(), key);
            tx.enqueue_held(row, replica::replica_id(), now + HOLD)
                .await?;
        } else {
            tx.enqueue(row).await?;
        }
        Ok(())
    }

    /// `grant` as it is now when it was waiting for Azure (`pending_azure`):
    /// the reconciler may have settled it while the request read the policy
    /// back, and its reply row, written then, must not be overwritten by a
    /// stale "checking with Azure" shown in line after it.
    pub async fn as_settled_since(&self, grant: Grant) -> Grant {
        if grant.state != GrantState::PendingAzure {
            return grant;
        }
        match self.store().grant(&grant.request_id).await {
            Ok(Some(now)) => now,
            _ => grant,
        }
    }

    /// The transport showed (`shown`) or could not show the reply of the
    /// interaction `interaction_id`: a reply row this process holds for it
    /// is marked delivered, or released to the deliverers (and they are
    /// woken). Errors are logged: the hold runs out by itself.
    pub async fn reply_shown(&self, interaction_id: &str, shown: bool) {
        let Ok(id) = RequestId::parse(interaction_id) else {
            return;
        };
        let Some(key) = self.in_line().held.remove(&id) else {
            return;
        };
        let ended = self
            .store()
            .end_hold(&key, replica::replica_id(), shown, self.clock().now())
            .await;
        match ended {
            Ok(true) if !shown => {
                self.wakers().outbox.notify_one();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error.message = %e, "could not end the hold on a reply; it runs out by itself");
            }
        }
    }
}
