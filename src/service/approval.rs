//! Approvals in chat (issue 13): a request on a mapping with `approvals >
//! 0` runs every check first (authorization, the policy, the source), then
//! waits as a `pending_approval` grant for that many distinct approvers.
//!
//! - **Hold** ([`Service::hold_for_approval`]): the grant, the approval
//!   request (what it was judged against), the timeout timer, the audit
//!   event and the approval card, in the request's own transaction.
//! - **Decide**: Approve, Deny, Cancel and the timeout each try to move the
//!   grant out of `pending_approval` in one write transaction; writers are
//!   serialized, so of two at the same instant exactly one wins and the
//!   other reads the decided state and is told. Who may approve, and how
//!   many approvals are needed, come from the request's mapping as it is
//!   at the click: an admin who takes a role out of `approvers` takes it
//!   out of every pending request, and nobody approves a request whose
//!   mapping was removed.
//! - **Open** ([`Service::approve`]): the last approval re-checks the
//!   request against today's mappings and the VM's policy. When another
//!   member now holds the port from another address, the rule of
//!   [`super::question`] applies: the requester is asked (Open anyway or
//!   Cancel), or, under `on_conflict = "refuse"`, refused. Otherwise the
//!   window opens from that click (the end is computed then) and is
//!   settled as any request.
//! - **Tell**: the card and the requester's reply are edited through the
//!   outbox ([`OutboxKind::MessageEdit`], [`OutboxKind::InteractionEdit`],
//!   which falls back to a DM once the interaction token has expired). The
//!   edits are written in the transaction of the state they show
//!   (`Service::tell_if_approved`, called where a grant is settled), so a
//!   crash after Azure opened the port loses none: the grant settled from
//!   Azure's listing after the restart tells them then.
//!
//! Break-glass skips the wait for members with a `break_glass` role and a
//! reason: the port opens at once, the alert role is pinged in the audit
//! channel and a review card asks an approver to acknowledge it. Without
//! the role or the reason it is refused and audited, and Azure is not
//! asked.

use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::messages::approval as say;
use super::phases::decide::{Ask, decide};
use super::phases::{Admitted, Asking};
use super::question::{self, PortHolder};
use super::request::RequestError;
use super::truth::Acting;
use super::{Service, actor};
use crate::chat::ChatMessage;
use crate::domain::audit::format_time;
use crate::domain::connect::Connection;
use crate::domain::{
    AuditAction, AuditEvent, GrantEvent, GrantState, OnConflict, Outcome, RequestId, RoleMapping,
};
use crate::interactions::Invocation;
use crate::store::{
    Approval, ApprovalRequest, Grant, OutboxKind, OutboxMessage, ScheduleKind, StoreError, StoreTx,
};

/// Why an approval action was refused. Every variant but `Unexpected` is
/// shown to the member as is.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// No such request, or not one that waits for approval.
    #[error("This request is not waiting for approval.")]
    NotFound,
    /// Someone (or the timeout) decided it first.
    #[error("This request was already {0}.")]
    Decided(&'static str),
    /// The member holds no approver role now (read from the interaction).
    #[error("Only members with an approver role of this request can do that ({roles}).")]
    NotApprover {
        /// The approver roles, as mentions.
        roles: String,
    },
    /// The request's mapping was removed since it was made: nobody is its
    /// approver now.
    #[error(
        "Mapping {0} was removed since this request was made, so nobody can approve it now; the requester can Cancel it, or it expires."
    )]
    MappingRemoved(String),
    /// The requester clicked Approve or Deny on their own request.
    #[error(
        "You cannot approve or deny your own request; another approver must. Use Cancel to withdraw it."
    )]
    OwnRequest,
    /// Someone other than the requester clicked Cancel.
    #[error("Only the member who asked can cancel this request.")]
    NotRequester,
    /// Deny without a reason.
    #[error("A Deny needs a reason (up to 500 characters), so the requester knows why.")]
    ReasonRequired,
    /// Acknowledge on a request that was not break-glass.
    #[error("This request did not use break-glass; there is nothing to acknowledge.")]
    NotBreakGlass,
    /// Approved, but no longer allowed, or Azure did not open it.
    #[error("{0}")]
    Request(#[from] RequestError),
    /// Something internal failed; logged, never shown.
    #[error(transparent)]
    Unexpected(anyhow::Error),
}

impl From<StoreError> for ApprovalError {
    fn from(e: StoreError) -> Self {
        Self::Unexpected(e.into())
    }
}

impl ApprovalError {
    /// Whether the use case audited this refusal itself: an approved
    /// request refused at the last click (`access_denied` by the approver,
    /// with the code and the reason) or that Azure did not open
    /// (`access_failed`). The caller must not audit it a second time.
    pub fn is_audited(&self) -> bool {
        matches!(self, Self::Request(e) if !matches!(e, RequestError::Unexpected(_)))
    }

    /// A short code for the audit log.
    pub fn audit_code(&self) -> &'static str {
        match self {
            Self::NotFound => "stale_button",
            Self::Decided(_) => "already_decided",
            Self::NotApprover { .. } => "not_approver",
            Self::MappingRemoved(_) => "mapping_removed",
            Self::OwnRequest => "own_request",
            Self::NotRequester => "not_requester",
            Self::ReasonRequired => "reason_required",
            Self::NotBreakGlass => "not_break_glass",
            Self::Request(e) => e.code().0,
            Self::Unexpected(_) => super::refusals::INTERNAL,
        }
    }
}

/// A decided state in words, for "already …".
fn decided(state: GrantState) -> &'static str {
    match state {
        GrantState::Denied => "denied",
        GrantState::Cancelled => "cancelled",
        GrantState::ApprovalExpired => "expired without a decision",
        GrantState::Failed => "approved, but not opened",
        _ => "approved",
    }
}

/// A request as its approvers see it: the grant, what it was judged
/// against, and who approved so far.
#[derive(Debug, Clone)]
pub struct ApprovalView {
    pub grant: Grant,
    pub request: ApprovalRequest,
    pub approvals: Vec<Approval>,
}

/// The outbox key `<prefix>-<digest of the request id>`: at most 25
/// characters for any request id, one per message.
pub(crate) fn key(prefix: &str, id: &RequestId) -> String {
    let digest = hex::encode(Sha256::digest(id.as_str()));
    let room = 25usize.saturating_sub(prefix.len() + 1);
    format!("{prefix}-{}", &digest[..room.min(digest.len())])
}

/// The justification Azure records for an approved request: the request,
/// the requester and every approver, by id.
pub fn approved_justification(grant: &Grant, approvals: &[Approval]) -> String {
    let approvers: Vec<String> = approvals.iter().map(|a| a.approver.to_string()).collect();
    let mut text = format!(
        "Drawbridge request {} by Discord user {}, approved by Discord user {}",
        grant.request_id,
        grant.user_id,
        approvers.join(", ")
    );
    if let Some(reason) = &grant.reason {
        text.push_str(": ");
        text.push_str(reason.as_str());
    }
    text.chars().take(500).collect()
}

impl Service {
    fn mapping_named(&self, name: &crate::domain::MappingName) -> Option<RoleMapping> {
        self.mappings().iter().find(|m| m.name == *name).cloned()
    }

    /// Whether `admitted` must wait for approvers (its mapping needs them
    /// and the member did not break the glass).
    pub(crate) fn needs_approval(&self, admitted: &Admitted) -> Option<RoleMapping> {
        self.mapping_named(&admitted.mapping)
            .filter(|m| m.approval().is_required())
    }

    /// Checks a break-glass request: the mapping's `break_glass` roles and
    /// a reason.
    ///
    /// # Errors
    /// [`RequestError::BreakGlass`] naming what is missing.
    pub(crate) fn check_break_glass(
        &self,
        asking: &Asking<'_>,
        admitted: &Admitted,
    ) -> Result<RoleMapping, RequestError> {
        let mapping = self
            .mapping_named(&admitted.mapping)
            .ok_or_else(|| RequestError::BreakGlass("the mapping changed; ask again".into()))?;
        if !mapping.approval().may_break_glass(&asking.who.member.roles) {
            return Err(RequestError::BreakGlass(format!(
                "break_glass: your roles may not skip approval on mapping {} (break-glass roles: {})",
                mapping.name,
                if mapping.approval().break_glass.is_empty() {
                    "none".to_owned()
                } else {
                    crate::domain::mapping::role_mentions(&mapping.approval().break_glass)
                }
            )));
        }
        if asking.request.reason.is_none() {
            return Err(RequestError::BreakGlass(
                "break_glass needs a reason: add reason:\"…\" saying why approval cannot wait"
                    .into(),
            ));
        }
        Ok(mapping)
    }

    /// Writes, inside the request's transaction `tx`, what makes a new
    /// grant wait: the `pending_approval` state, the approval request, the
    /// timeout timer, the audit event and the card for the approvers.
    ///
    /// # Errors
    /// If the store fails.
    pub(crate) async fn hold_for_approval(
        &self,
        tx: &mut StoreTx,
        asking: &Asking<'_>,
        grant: &Grant,
        mapping: &RoleMapping,
    ) -> Result<Grant, StoreError> {
        let id = &grant.request_id;
        let now = asking.now;
        let grant = tx
            .transition_grant(id, &GrantEvent::AwaitApproval, now)
            .await?;
        let request = ApprovalRequest {
            request_id: id.clone(),
            needed: mapping.approval().approvals,
            approver_roles: mapping.approval().approvers.clone(),
            requester_roles: asking.who.member.roles.clone(),
            expires_at: now + mapping.approval().timeout.to_chrono(),
            break_glass: false,
            card: None,
            decided_by: None,
            decision_reason: None,
        };
        tx.insert_approval_request(&request).await?;
        tx.schedule(id, ScheduleKind::ApprovalTimeout, request.expires_at)
            .await?;
        let event = AuditEvent::new(
            now,
            actor(grant.user_id),
            AuditAction::ApprovalRequested,
            &grant.vm_name,
            Outcome::Info,
        );
        tx.append_audit(&event.with_detail(json!({
            "request_id": id.as_str(),
            "needed": request.needed,
            "approvers": crate::domain::mapping::role_mentions(&request.approver_roles),
            "expires": format_time(request.expires_at),
        })))
        .await?;
        let aliases = &self.config().aliases;
        // The requester's "waiting for approval" reply, written with the
        // request: a crash before it is shown cannot lose it.
        let waiting = say::requester_view(&grant, &request, &[], aliases);
        self.queue_own_reply(tx, &grant, &waiting).await?;
        let card = say::approval_card(&grant, &request, &[], aliases);
        self.post_card(tx, id, card, "apc", now).await?;
        Ok(grant)
    }

    /// Writes, inside the request's transaction, what marks a break-glass
    /// request: the audit event, the alert to the audit channel (pinging
    /// the alert role) and the review card.
    ///
    /// # Errors
    /// If the store fails.
    pub(crate) async fn record_break_glass(
        &self,
        tx: &mut StoreTx,
        asking: &Asking<'_>,
        grant: &Grant,
        mapping: &RoleMapping,
    ) -> Result<(), StoreError> {
        let id = &grant.request_id;
        let now = asking.now;
        let request = ApprovalRequest {
            request_id: id.clone(),
            needed: 0,
            approver_roles: mapping.approval().approvers.clone(),
            requester_roles: asking.who.member.roles.clone(),
            expires_at: now,
            break_glass: true,
            card: None,
            decided_by: None,
            decision_reason: None,
        };
        tx.insert_approval_request(&request).await?;
        let event = AuditEvent::new(
            now,
            actor(grant.user_id),
            AuditAction::BreakGlassUsed,
            &grant.vm_name,
            Outcome::Info,
        );
        tx.append_audit(&event.with_detail(json!({
            "request_id": id.as_str(),
            "break_glass": true,
            "mapping": mapping.name.as_str(),
            "reason": grant.reason.as_ref().map(|r| r.as_str()),
        })))
        .await?;
        let aliases = &self.config().aliases;
        if let Some(channel) = self.config().audit_channel {
            let alert_role = self.config().alert_role.map(|r| r.get());
            let alert = say::break_glass_alert(grant, alert_role, aliases);
            tx.enqueue(OutboxMessage {
                kind: OutboxKind::ChannelMessage,
                target: Some(channel.to_string()),
                payload: json!({ "message": alert }),
                idempotency_key: Some(key("bga", id)),
                created_at: now,
            })
            .await?;
        }
        let card = say::review_card(grant, &request, aliases);
        self.post_card(tx, id, card, "bgr", now).await
    }

    /// Queues the first post of a request's card in the approvals channel;
    /// its message id is recorded when Discord accepts it, for the edits.
    async fn post_card(
        &self,
        tx: &mut StoreTx,
        id: &RequestId,
        card: ChatMessage,
        prefix: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        let Some(channel) = self.config().approvals_channel else {
            tracing::warn!("no approvals or audit channel configured: the card is not posted");
            return Ok(());
        };
        tx.enqueue(OutboxMessage {
            kind: OutboxKind::ChannelMessage,
            target: Some(channel.to_string()),
            payload: json!({ "message": card, "approval_card": id.as_str() }),
            idempotency_key: Some(key(prefix, id)),
            created_at: now,
        })
        .await?;
        Ok(())
    }

    /// Queues the edits that show `view`'s state: the card (to its final
    /// state once decided) and the requester's reply. `stage` tells the
    /// edits of one request apart (each is one outbox row).
    async fn tell(
        &self,
        tx: &mut StoreTx,
        view: &ApprovalView,
        stage: &str,
    ) -> Result<(), StoreError> {
        self.tell_with(tx, view, stage, None).await
    }

    /// [`Self::tell`], the requester's reply saying how to connect through
    /// `connection` (read before `tx` began: it may ask Azure).
    async fn tell_with(
        &self,
        tx: &mut StoreTx,
        view: &ApprovalView,
        stage: &str,
        connection: Option<&Connection>,
    ) -> Result<(), StoreError> {
        self.tell_card(tx, view, stage).await?;
        if view.request.break_glass {
            return Ok(());
        }
        let aliases = &self.config().aliases;
        let reply = say::requester_view_with(
            &view.grant,
            &view.request,
            &view.approvals,
            aliases,
            connection,
        );
        self.tell_requester(tx, &view.grant.request_id, reply, stage)
            .await
    }

    /// Queues the edit of `view`'s card in the approvals channel.
    async fn tell_card(
        &self,
        tx: &mut StoreTx,
        view: &ApprovalView,
        stage: &str,
    ) -> Result<(), StoreError> {
        let id = &view.grant.request_id;
        let aliases = &self.config().aliases;
        let card = if view.request.break_glass {
            say::review_card(&view.grant, &view.request, aliases)
        } else {
            say::approval_card(&view.grant, &view.request, &view.approvals, aliases)
        };
        tx.enqueue(OutboxMessage {
            kind: OutboxKind::MessageEdit,
            target: Some(id.to_string()),
            payload: json!({ "message": card }),
            idempotency_key: Some(key(&format!("c{stage}"), id)),
            created_at: self.clock().now(),
        })
        .await?;
        Ok(())
    }

    /// Queues the edit of the requester's reply to `reply` (a DM once the
    /// interaction token has expired).
    async fn tell_requester(
        &self,
        tx: &mut StoreTx,
        id: &RequestId,
        reply: ChatMessage,
        stage: &str,
    ) -> Result<(), StoreError> {
        tx.enqueue(OutboxMessage {
            kind: OutboxKind::InteractionEdit,
            target: Some(id.to_string()),
            payload: json!({ "message": reply }),
            idempotency_key: Some(key(&format!("r{stage}"), id)),
            created_at: self.clock().now(),
        })
        .await?;
        Ok(())
    }

    /// Queues, inside the transaction `tx` that moved `grant` to where it
    /// is now, the edits of its approval card and its requester's reply, if
    /// it is an approved request: so a crash after the state change cannot
    /// lose them, and a state settled after a restart (from Azure's
    /// listing) tells them too. `stage` as in [`Self::tell`]; nothing for
    /// other grants.
    ///
    /// # Errors
    /// If the store fails.
    pub(crate) async fn tell_if_approved(
        &self,
        tx: &mut StoreTx,
        grant: &Grant,
        stage: &str,
    ) -> Result<(), StoreError> {
        let request = tx.approval_request(&grant.request_id).await?;
        self.tell_if_approved_by(tx, grant, request, stage, None)
            .await
    }

    /// [`Self::tell_if_approved`] for a caller that has read `grant`'s
    /// approval request in `tx` already (and needs it for more than this),
    /// `request`. For a grant that opened, the requester's reply says how
    /// to connect through `connection`, as a self-service grant's does; the
    /// caller reads it before `tx` began (it may ask Azure, which no
    /// transaction waits on).
    ///
    /// # Errors
    /// If the store fails.
    pub(crate) async fn tell_if_approved_by(
        &self,
        tx: &mut StoreTx,
        grant: &Grant,
        request: Option<ApprovalRequest>,
        stage: &str,
        connection: Option<&Connection>,
    ) -> Result<(), StoreError> {
        let Some(request) = request.filter(|r| !r.break_glass) else {
            return Ok(());
        };
        let id = &grant.request_id;
        let approvals = tx.approvals(id).await?;
        let view = self.with_current_rules(ApprovalView {
            grant: grant.clone(),
            request,
            approvals,
        });
        self.tell_with(tx, &view, stage, connection).await
    }

    /// Whether the requester of `id` hears of its new grant through the
    /// edits [`Self::tell_if_approved`] queues (an approved request; not a
    /// break-glass one), so that no second notice is sent.
    ///
    /// # Errors
    /// If the store fails.
    pub(crate) async fn told_by_reply(&self, id: &RequestId) -> Result<bool, StoreError> {
        let request = self.store().approval_request(id).await?;
        Ok(request.is_some_and(|r| !r.break_glass))
    }

    /// An approved request whose question nobody answered: its card says it
    /// ended, and the requester gets `message` (by DM once their reply's
    /// token has expired), in `tx`. Nothing for a request without approval.
    pub(crate) async fn tell_approved_unanswered(
        &self,
        tx: &mut StoreTx,
        grant: &Grant,
        message: ChatMessage,
    ) -> Result<bool, StoreError> {
        let id = &grant.request_id;
        let Some(request) = tx.approval_request(id).await? else {
            return Ok(false);
        };
        let approvals = tx.approvals(id).await?;
        let view = self.with_current_rules(ApprovalView {
            grant: grant.clone(),
            request,
            approvals,
        });
        self.tell_card(tx, &view, "qt").await?;
        self.tell_requester(tx, id, message, "qt").await?;
        Ok(true)
    }

    /// The request `request_id` with its approval request, in `tx`.
    async fn view_in(
        &self,
        tx: &mut StoreTx,
        request_id: &str,
    ) -> Result<ApprovalView, ApprovalError> {
        let id = RequestId::parse(request_id).map_err(|_| ApprovalError::NotFound)?;
        let grant = tx.grant(&id).await?.ok_or(ApprovalError::NotFound)?;
        let request = tx
            .approval_request(&id)
            .await?
            .ok_or(ApprovalError::NotFound)?;
        let approvals = tx.approvals(&id).await?;
        Ok(self.with_current_rules(ApprovalView {
            grant,
            request,
            approvals,
        }))
    }

    /// The request `request_id` as stored, for the replies and views.
    ///
    /// # Errors
    /// [`ApprovalError::NotFound`] when it never waited for approval.
    pub async fn approval_view(
        &self,
        request_id: &RequestId,
    ) -> Result<ApprovalView, ApprovalError> {
        let store = self.store();
        let grant = store
            .grant(request_id)
            .await?
            .ok_or(ApprovalError::NotFound)?;
        let request = store
            .approval_request(request_id)
            .await?
            .ok_or(ApprovalError::NotFound)?;
        let approvals = store.approvals(request_id).await?;
        Ok(self.with_current_rules(ApprovalView {
            grant,
            request,
            approvals,
        }))
    }

    /// `view` as its mapping is now: an admin may have changed the approver
    /// roles or how many approvals are needed since the request was made,
    /// and a click is judged by today's rules (a removed mapping leaves the
    /// stored ones, and nobody may decide: [`Self::check_approver`]).
    fn with_current_rules(&self, mut view: ApprovalView) -> ApprovalView {
        if let Some(mapping) = self.mapping_named(&view.grant.mapping) {
            view.request.approver_roles = mapping.approval().approvers.clone();
            if view.grant.state == GrantState::PendingApproval && !view.request.break_glass {
                view.request.needed = mapping.approval().approvals.max(1);
            }
        }
        view
    }

    /// The member may decide `view`: an approver role of the request's
    /// mapping as it is now (the roles from the interaction), and not their
    /// own request.
    fn check_approver(&self, who: &Invocation, view: &ApprovalView) -> Result<(), ApprovalError> {
        let Some(mapping) = self.mapping_named(&view.grant.mapping) else {
            return Err(ApprovalError::MappingRemoved(
                view.grant.mapping.to_string(),
            ));
        };
        let roles = &mapping.approval().approvers;
        if !mapping.approval().is_approver(&who.member.roles) {
            return Err(ApprovalError::NotApprover {
                roles: if roles.is_empty() {
                    format!("mapping {} lists none now", mapping.name)
                } else {
                    crate::domain::mapping::role_mentions(roles)
                },
            });
        }
        if who.member.user_id == view.grant.user_id {
            return Err(ApprovalError::OwnRequest);
        }
        Ok(())
    }

    /// Approve: counts the member's approval once; the last one needed
    /// claims the request and opens it, from now.
    ///
    /// # Errors
    /// [`ApprovalError`]; a refusal changes nothing.
    #[tracing::instrument(skip_all, fields(request_id = %request_id, user = %who.member.user_id))]
    pub async fn approve(
        &self,
        who: &Invocation,
        request_id: &str,
    ) -> Result<(ApprovalView, bool), ApprovalError> {
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        let mut view = self.view_in(&mut tx, request_id).await?;
        if view.grant.state != GrantState::PendingApproval {
            tx.rollback().await?;
            return Err(ApprovalError::Decided(decided(view.grant.state)));
        }
        if let Err(e) = self.check_approver(who, &view) {
            tx.rollback().await?;
            return Err(e);
        }
        let id = view.grant.request_id.clone();
        let new = tx.add_approval(&id, who.member.user_id, now).await?;
        view.approvals = tx.approvals(&id).await?;
        let count = view.approvals.len();
        if new {
            let event = AuditEvent::new(
                now,
                actor(who.member.user_id),
                AuditAction::RequestApproved,
                &view.grant.vm_name,
                Outcome::Success,
            );
            tx.append_audit(&event.with_detail(json!({
                "request_id": id.as_str(),
                "requester": actor(view.grant.user_id),
                "count": count,
                "needed": view.request.needed,
            })))
            .await?;
        }
        if count < view.request.needed as usize {
            if new {
                self.tell(&mut tx, &view, &format!("a{count}")).await?;
            }
            tx.commit().await?;
            return Ok((view, new));
        }
        view.grant = tx.transition_grant(&id, &GrantEvent::Approved, now).await?;
        tx.cancel_schedule(&id, &[ScheduleKind::ApprovalTimeout], now)
            .await?;
        // The card loses its buttons with the decision, not when Azure
        // answers: "approved, opening…" (the requester's reply changes with
        // the outcome, so a DM fallback tells them once).
        self.tell_card(&mut tx, &view, "o").await?;
        tx.commit().await?;
        let by = actor(who.member.user_id);
        // The edits of the card and the requester's reply are queued with
        // each state the grant reaches from here ([`Self::tell_if_approved`]).
        let opened = self.open_approved(&by, &view).await;
        self.wake_after(());
        view.grant = opened?;
        Ok((view, true))
    }

    /// Decides an approved request again against today's mappings (with
    /// the requester's roles at request time) and the VM's policy; then,
    /// when another member holds the port from another address, asks the
    /// requester first or refuses, as the mapping's `on_conflict` says
    /// ([`super::question`]); else opens it from now and settles it.
    async fn open_approved(&self, by: &str, view: &ApprovalView) -> Result<Grant, ApprovalError> {
        let grant = &view.grant;
        let target = match self.resolve_grant_vm(grant).await {
            Ok(target) => target,
            Err(e) => {
                let error = RequestError::from(e);
                let why = error.to_string();
                self.refuse_approved(by, grant, &why, "no_longer_allowed")
                    .await?;
                return Err(error.into());
            }
        };
        let mappings = self.mappings();
        let ask = Ask {
            roles: &view.request.requester_roles,
            ports: &grant.ports,
            duration: grant.duration,
            source: &grant.source,
            reason: grant.reason.as_ref(),
        };
        let allowed = match decide(&mappings, &target, &ask) {
            Ok(allowed) => allowed,
            Err(refusal) => {
                let message = format!("No longer allowed when approved: {refusal}");
                self.refuse_approved(by, grant, &message, "no_longer_allowed")
                    .await?;
                return Err(RequestError::from(refusal).into());
            }
        };
        if let Some(holder) = self.holder_for(grant).await? {
            return self
                .held_when_approved(by, view, &allowed.mapping, &holder)
                .await;
        }
        let end = self.clock().now() + grant.duration.to_chrono();
        let why = approved_justification(grant, &view.approvals);
        let acting = Acting::of(grant);
        let outcome = self.initiate(&target.vm, grant, end, why).await;
        let settled = self
            .settle_opened_by(by, &target.vm, grant.clone(), outcome)
            .await;
        self.read_back(&target.vm, &acting).await;
        Ok(settled?)
    }

    /// An approved request whose port another member holds now: with
    /// `on_conflict = "ask"` the requester is asked (Open anyway or Cancel)
    /// on their reply, or by DM once its token has expired, and the card
    /// says so; with `refuse` it ends `failed`, saying who holds the port.
    async fn held_when_approved(
        &self,
        by: &str,
        view: &ApprovalView,
        mapping: &crate::domain::MappingName,
        holder: &PortHolder,
    ) -> Result<Grant, ApprovalError> {
        let grant = &view.grant;
        let aliases = &self.config().aliases;
        let rule = self
            .mapping_named(mapping)
            .map(|m| m.on_conflict)
            .unwrap_or_default();
        if rule == OnConflict::Refuse {
            let message = question::refusal(holder, &grant.vm_name, mapping, aliases);
            self.refuse_approved(by, grant, &message, "port_held")
                .await?;
            return Err(RequestError::PortHeld { message }.into());
        }
        let now = self.clock().now();
        let id = &grant.request_id;
        let mut tx = self.store().begin().await?;
        let asked = tx
            .transition_grant(id, &GrantEvent::AskedFirst, now)
            .await?;
        // Unanswered, the question lapses like any other (the scheduler).
        tx.schedule(
            id,
            ScheduleKind::QuestionTimeout,
            now + question::QUESTION_TIMEOUT,
        )
        .await?;
        let event = AuditEvent::new(
            now,
            by,
            AuditAction::AskedAfterApproval,
            &grant.vm_name,
            Outcome::Info,
        );
        tx.append_audit(&event.with_detail(json!({
            "request_id": id.as_str(),
            "requester": actor(grant.user_id),
            "holder": actor(holder.user_id),
            "holder_request_id": holder.request_id.as_str(),
            "ports": holder.ports.to_string(),
        })))
        .await?;
        let asked_view = ApprovalView {
            grant: asked.clone(),
            request: view.request.clone(),
            approvals: view.approvals.clone(),
        };
        self.tell_card(&mut tx, &asked_view, "q").await?;
        let question = say::asked_after_approval(&asked, holder, &view.approvals, aliases);
        self.tell_requester(&mut tx, id, question, "q").await?;
        tx.commit().await?;
        tracing::info!(approver = by, holder = %holder.user_id, "approved, but another member holds the port; the requester is asked first");
        Ok(asked)
    }

    /// Ends an approved request that is no longer allowed: `failed`, with
    /// why, audited as refused with `code`, the card and the requester
    /// told in the same transaction; Azure is not asked.
    async fn refuse_approved(
        &self,
        by: &str,
        grant: &Grant,
        why: &str,
        code: &str,
    ) -> Result<(), StoreError> {
        let now = self.clock().now();
        let id = &grant.request_id;
        let mut tx = self.store().begin().await?;
        let mut failed = tx.transition_grant(id, &GrantEvent::Failed, now).await?;
        tx.set_grant_failure(id, why).await?;
        failed.failure = Some(why.to_owned());
        let event = AuditEvent::new(
            now,
            by,
            AuditAction::AccessDenied,
            &grant.vm_name,
            Outcome::Denied,
        );
        tx.append_audit(&event.with_detail(json!({
            "request_id": id.as_str(),
            "ports": grant.ports.to_string(),
            "code": code,
            "reason": why,
        })))
        .await?;
        self.tell_if_approved(&mut tx, &failed, "f").await?;
        tx.commit().await
    }

    /// Deny, with the reason the approver typed: ends the request; Azure
    /// sees nothing.
    ///
    /// # Errors
    /// [`ApprovalError`]; a refusal changes nothing.
    #[tracing::instrument(skip_all, fields(request_id = %request_id, user = %who.member.user_id))]
    pub async fn deny(
        &self,
        who: &Invocation,
        request_id: &str,
        reason: &str,
    ) -> Result<ApprovalView, ApprovalError> {
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(ApprovalError::ReasonRequired);
        }
        let by = actor(who.member.user_id);
        self.end_pending(request_id, GrantEvent::ApprovalDenied, |view| {
            self.check_approver(who, view)?;
            Ok((by.clone(), AuditAction::RequestDenied, Some(reason)))
        })
        .await
    }

    /// Cancel, by the requester: ends the request.
    ///
    /// # Errors
    /// [`ApprovalError`]; a refusal changes nothing.
    #[tracing::instrument(skip_all, fields(request_id = %request_id, user = %who.member.user_id))]
    pub async fn cancel(
        &self,
        who: &Invocation,
        request_id: &str,
    ) -> Result<ApprovalView, ApprovalError> {
        let by = actor(who.member.user_id);
        self.end_pending(request_id, GrantEvent::ApprovalCancelled, |view| {
            if view.grant.user_id != who.member.user_id {
                return Err(ApprovalError::NotRequester);
            }
            Ok((by.clone(), AuditAction::RequestCancelled, None))
        })
        .await
    }

    /// Moves a pending request out of `pending_approval` with `event`, if
    /// `allowed` lets the member: the decision, its audit event, the timer
    /// cancelled and the edits queued, in one transaction.
    async fn end_pending<'r>(
        &self,
        request_id: &str,
        event: GrantEvent,
        allowed: impl FnOnce(
            &ApprovalView,
        ) -> Result<(String, AuditAction, Option<&'r str>), ApprovalError>,
    ) -> Result<ApprovalView, ApprovalError> {
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        let mut view = self.view_in(&mut tx, request_id).await?;
        if view.grant.state != GrantState::PendingApproval {
            tx.rollback().await?;
            return Err(ApprovalError::Decided(decided(view.grant.state)));
        }
        let (by, action, reason) = match allowed(&view) {
            Ok(allowed) => allowed,
            Err(e) => {
                tx.rollback().await?;
                return Err(e);
            }
        };
        let id = view.grant.request_id.clone();
        view.grant = tx.transition_grant(&id, &event, now).await?;
        tx.cancel_schedule(&id, &[ScheduleKind::ApprovalTimeout], now)
            .await?;
        tx.set_approval_decision(&id, &by, reason).await?;
        view.request.decided_by = Some(by.clone());
        view.request.decision_reason = reason.map(str::to_owned);
        let outcome = if action == AuditAction::RequestDenied {
            Outcome::Denied
        } else {
            Outcome::Info
        };
        let audit = AuditEvent::new(now, by, action, &view.grant.vm_name, outcome);
        tx.append_audit(&audit.with_detail(json!({
            "request_id": id.as_str(),
            "requester": actor(view.grant.user_id),
            "reason": reason,
        })))
        .await?;
        self.tell(&mut tx, &view, "d").await?;
        tx.commit().await?;
        Ok(self.wake_after(view))
    }

    /// The approval timeout fired (scheduler, inside its transaction): a
    /// request still pending expires, and the card and requester are told.
    ///
    /// # Errors
    /// If the store fails.
    pub(crate) async fn expire_pending(
        &self,
        tx: &mut StoreTx,
        grant: &Grant,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        let id = &grant.request_id;
        let Some(request) = tx.approval_request(id).await? else {
            return Ok(());
        };
        let grant = tx
            .transition_grant(id, &GrantEvent::ApprovalTimedOut, now)
            .await?;
        let approvals = tx.approvals(id).await?;
        let event = AuditEvent::new(
            now,
            "system",
            AuditAction::ApprovalExpired,
            &grant.vm_name,
            Outcome::Info,
        );
        tx.append_audit(&event.with_detail(json!({
            "request_id": id.as_str(),
            "requester": actor(grant.user_id),
            "approvals": approvals.len(),
            "needed": request.needed,
        })))
        .await?;
        let view = self.with_current_rules(ApprovalView {
            grant,
            request,
            approvals,
        });
        self.tell(tx, &view, "x").await
    }

    /// Acknowledge a break-glass request's review card: the first approver
    /// to do so is recorded and audited.
    ///
    /// # Errors
    /// [`ApprovalError`].
    pub async fn acknowledge(
        &self,
        who: &Invocation,
        request_id: &str,
    ) -> Result<ApprovalView, ApprovalError> {
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        let mut view = self.view_in(&mut tx, request_id).await?;
        if !view.request.break_glass {
            tx.rollback().await?;
            return Err(ApprovalError::NotBreakGlass);
        }
        if let Err(e) = self.check_approver(who, &view) {
            tx.rollback().await?;
            return Err(e);
        }
        let by = actor(who.member.user_id);
        let id = view.grant.request_id.clone();
        if !tx.set_approval_decision(&id, &by, None).await? {
            tx.rollback().await?;
            return Err(ApprovalError::Decided("acknowledged"));
        }
        view.request.decided_by = Some(by.clone());
        let event = AuditEvent::new(
            now,
            by,
            AuditAction::BreakGlassAcknowledged,
            &view.grant.vm_name,
            Outcome::Info,
        );
        tx.append_audit(&event.with_detail(json!({
            "request_id": id.as_str(),
            "requester": actor(view.grant.user_id),
        })))
        .await?;
        self.tell(&mut tx, &view, "k").await?;
        tx.commit().await?;
        Ok(self.wake_after(view))
    }

    /// Every request pending approval, for `/jit-admin pending`: approvers
    /// of any mapping and admins only.
    ///
    /// # Errors
    /// [`ApprovalError::NotApprover`] for anyone else.
    pub async fn pending_requests(
        &self,
        who: &Invocation,
    ) -> Result<Vec<ApprovalView>, ApprovalError> {
        let roles = &who.member.roles;
        let admin = roles.iter().any(|r| self.config().admin_roles.contains(r));
        let approver = self
            .mappings()
            .iter()
            .any(|m| m.approval().is_approver(roles));
        if !admin && !approver {
            return Err(ApprovalError::NotApprover {
                roles: "an approver role of any mapping, or an admin role".into(),
            });
        }
        let mut views = Vec::new();
        for request in self.store().pending_approvals().await? {
            views.push(self.approval_view(&request.request_id).await?);
        }
        Ok(views)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_keys_fit_discord_nonces_for_any_request_id() {
        let long = RequestId::parse(&"9".repeat(64)).unwrap();
        for prefix in ["apc", "ca3", "rd", "bga"] {
            let k = key(prefix, &long);
            assert!(k.len() <= 25 && k.starts_with(prefix), "{k}");
        }
        assert_ne!(key("ca1", &long), key("ca2", &long));
    }
}
