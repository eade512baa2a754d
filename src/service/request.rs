//! `/jit`: request access.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{LookupError, Service, actor, identity_of};
use crate::azure::{ArmError, IndexedVm, PolicyViolation, check_request};
use crate::domain::authorize::{self, AccessQuery, Decision, Denial};
use crate::domain::{
    AccessRequest, AuditAction, AuditEvent, GrantEvent, GrantState, MappingName, Outcome,
    RequestId, SourcePrefix,
};
use crate::interactions::Invocation;
use crate::store::{Grant, InsertOutcome, NewGrant, ScheduleKind, StoreError, StoreTx};

/// How long a second delivery of an interaction waits for the first one's
/// outcome (Azure's retries included) before answering with what is stored.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
const SETTLE_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Why a request did not become an open grant. Every variant but
/// `Unexpected` is shown to the member as is.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The input does not parse.
    #[error("{0}")]
    Invalid(String),
    /// No VM of that name is under JIT.
    #[error("no VM named {name} is under JIT")]
    VmNotFound {
        /// The name.
        name: String,
        /// It exists but has no JIT policy.
        exists_without_jit: bool,
    },
    /// Several VMs have that name.
    #[error("several VMs are named like that")]
    VmAmbiguous {
        /// Their qualified names.
        candidates: Vec<String>,
    },
    /// No source address to open the port for.
    #[error("no source address")]
    NoSource,
    /// The member's roles do not allow it.
    #[error("{0}")]
    Denied(Denial),
    /// The VM's Azure JIT policy does not allow it.
    #[error("{0}")]
    Policy(PolicyViolation),
    /// Azure refused or failed; the grant is recorded as failed.
    #[error("{message}")]
    Azure {
        /// A sentence for the member.
        message: String,
    },
    /// Something internal failed; logged, never shown.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<StoreError> for RequestError {
    fn from(e: StoreError) -> Self {
        Self::Unexpected(e.into())
    }
}

/// The justification Azure records: the human, their reason, the request id.
pub fn justification(who: &Invocation, request_id: &RequestId, reason: Option<&str>) -> String {
    let mut text = format!(
        "Drawbridge request {request_id} by Discord user {} ({})",
        who.member.name, who.member.user_id
    );
    if let Some(reason) = reason {
        text.push_str(": ");
        text.push_str(reason);
    }
    text.chars().take(500).collect()
}

impl Service {
    /// Runs a `/jit` request end to end. Idempotent on the invocation id: a
    /// request id already stored returns that grant and never initiates again.
    ///
    /// # Errors
    /// [`RequestError`]: every refusal is audited before it is returned.
    #[tracing::instrument(skip_all, fields(request_id = %who.id, user = %who.member.user_id, vm = %request.vm))]
    pub async fn request_access(
        &self,
        who: &Invocation,
        request: AccessRequest,
    ) -> Result<Grant, RequestError> {
        let request_id = RequestId::parse(&who.id)
            .map_err(|e| RequestError::Unexpected(anyhow::anyhow!("interaction id: {e}")))?;
        if let Some(existing) = self.store().grant(&request_id).await? {
            tracing::info!("request id seen before; answering with the stored grant");
            return Ok(self.settled(existing).await?);
        }
        let now = self.clock().now();
        let target = request.vm.to_string();
        let vm = match self.jit().resolve(&request.vm).await {
            Ok(vm) => vm,
            Err(LookupError::NotFound {
                name,
                exists_without_jit,
            }) => {
                self.audit_refusal(
                    who,
                    &request_id,
                    &request,
                    &target,
                    "vm_not_found",
                    "no such VM under JIT",
                    now,
                )
                .await?;
                return Err(RequestError::VmNotFound {
                    name,
                    exists_without_jit,
                });
            }
            Err(LookupError::Ambiguous { candidates }) => {
                self.audit_refusal(
                    who,
                    &request_id,
                    &request,
                    &target,
                    "vm_ambiguous",
                    "VM name is ambiguous",
                    now,
                )
                .await?;
                return Err(RequestError::VmAmbiguous { candidates });
            }
            Err(LookupError::Azure(e)) => {
                tracing::error!(error.message = %e, error.cause_chain = ?e, "VM lookup failed");
                return Err(RequestError::Azure {
                    message: e.user_message(),
                });
            }
        };
        let identity = identity_of(&vm).ok_or_else(|| {
            anyhow::anyhow!("indexed VM {} has names outside Azure's rules", vm.vm_id)
        })?;
        let target = identity.qualified();
        let mappings = self.mappings();
        let source = match request.source {
            Some(source) => source,
            None => match self.store().saved_source(who.member.user_id).await? {
                Some(saved) => saved,
                None => authorize::mappings_for(&mappings, &who.member.roles, &identity)
                    .find_map(|m| m.default_source)
                    .ok_or(RequestError::NoSource)?,
            },
        };
        let decision = authorize::authorize(
            &mappings,
            &AccessQuery {
                roles: &who.member.roles,
                vm: &identity,
                ports: &request.ports,
                duration: request.duration,
                source: Some(&source),
                reason: request.reason.as_ref(),
            },
        );
        let allowed = match decision {
            Decision::Deny(denial) => {
                self.audit_refusal(
                    who,
                    &request_id,
                    &request,
                    &target,
                    denial.code(),
                    &denial.to_string(),
                    now,
                )
                .await?;
                return Err(RequestError::Denied(denial));
            }
            Decision::Allow(allowed) => allowed,
        };
        let net = match source {
            SourcePrefix::Any => None,
            SourcePrefix::Net(net) => Some(net),
        };
        if let Err(violation) = check_request(
            &vm,
            &request.ports.numbers(),
            request.duration.to_chrono(),
            net,
        ) {
            self.audit_refusal(
                who,
                &request_id,
                &request,
                &target,
                "policy",
                &violation.to_string(),
                now,
            )
            .await?;
            return Err(RequestError::Policy(violation));
        }
        let grant = match self
            .persist_request(
                who,
                &request_id,
                &request,
                &vm,
                &target,
                source,
                allowed.mapping,
                now,
            )
            .await?
        {
            InsertOutcome::Inserted(grant) => grant,
            InsertOutcome::Duplicate(grant) => return Ok(self.settled(grant).await?),
        };
        let end = now + request.duration.to_chrono();
        let why = justification(
            who,
            &request_id,
            request.reason.as_ref().map(|r| r.as_str()),
        );
        let outcome = self
            .jit()
            .initiate(&vm, &grant.ports.numbers(), end, &source.to_string(), &why)
            .await;
        self.record_initiate(who, grant, outcome).await
    }

    /// `grant` once it has left `requested`, or as stored after
    /// [`SETTLE_WAIT`]: a second delivery of the same interaction edits the
    /// same reply, and must not replace the first delivery's outcome with a
    /// stale "requested" (and no buttons).
    async fn settled(&self, mut grant: Grant) -> Result<Grant, StoreError> {
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        while grant.state == GrantState::Requested && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(SETTLE_POLL).await;
            match self.store().grant(&grant.request_id).await? {
                Some(now) => grant = now,
                None => break,
            }
        }
        Ok(grant)
    }

    #[allow(clippy::too_many_arguments)]
    async fn persist_request(
        &self,
        who: &Invocation,
        request_id: &RequestId,
        request: &AccessRequest,
        vm: &IndexedVm,
        target: &str,
        source: SourcePrefix,
        mapping: MappingName,
        now: DateTime<Utc>,
    ) -> Result<InsertOutcome, RequestError> {
        let mut tx = self.store().begin().await?;
        let outcome = tx
            .insert_grant(NewGrant {
                request_id: request_id.clone(),
                user_id: who.member.user_id,
                guild_id: who.guild_id.and_then(crate::domain::Snowflake::from_u64),
                channel_id: who.channel_id.and_then(crate::domain::Snowflake::from_u64),
                vm_id: vm.vm_id.clone(),
                vm_name: target.to_string(),
                policy_id: vm.policy.to_string(),
                ports: request.ports.clone(),
                source,
                duration: request.duration,
                reason: request.reason.clone(),
                mapping: mapping.clone(),
                requested_at: now,
                interaction_token: None,
            })
            .await?;
        if matches!(outcome, InsertOutcome::Inserted(_)) {
            let detail = request_detail(who, request_id, request, Some(&source));
            tx.append_audit(
                &AuditEvent::new(
                    now,
                    actor(who.member.user_id),
                    AuditAction::RequestReceived,
                    target,
                    Outcome::Info,
                )
                .with_detail(detail.clone()),
            )
            .await?;
            let mut allowed = detail;
            allowed["mapping"] = json!(mapping.as_str());
            tx.append_audit(
                &AuditEvent::new(
                    now,
                    actor(who.member.user_id),
                    AuditAction::AccessAllowed,
                    target,
                    Outcome::Success,
                )
                .with_detail(allowed),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn record_initiate(
        &self,
        who: &Invocation,
        grant: Grant,
        outcome: Result<super::Initiated, ArmError>,
    ) -> Result<Grant, RequestError> {
        let now = self.clock().now();
        let id = grant.request_id.clone();
        let mut tx = self.store().begin().await?;
        match outcome {
            Ok(initiated) => {
                let grant = tx
                    .transition_grant(&id, &GrantEvent::Initiated { end: initiated.end }, now)
                    .await?;
                tx.set_azure_detail(&id, &initiated.detail).await?;
                tx.append_audit(
                    &AuditEvent::new(
                        now,
                        actor(who.member.user_id),
                        AuditAction::AccessInitiated,
                        &grant.vm_name,
                        Outcome::Success,
                    )
                    .with_detail(json!({
                        "request_id": id.as_str(),
                        "ports": grant.ports.to_string(),
                        "source": grant.source.to_string(),
                        "end": crate::domain::audit::format_time(initiated.end),
                    })),
                )
                .await?;
                self.schedule_timers(&mut tx, &id, initiated.end, now)
                    .await?;
                tx.commit().await?;
                Ok(grant)
            }
            Err(error) => {
                tracing::warn!(error.message = %error, error.cause_chain = ?error, "initiate failed");
                let message = error.user_message();
                tx.transition_grant(&id, &GrantEvent::Failed, now).await?;
                tx.set_grant_failure(&id, &message).await?;
                tx.append_audit(
                    &AuditEvent::new(
                        now,
                        actor(who.member.user_id),
                        AuditAction::AccessFailed,
                        &grant.vm_name,
                        Outcome::Failed,
                    )
                    .with_detail(json!({"request_id": id.as_str(), "error": message})),
                )
                .await?;
                tx.commit().await?;
                Err(RequestError::Azure { message })
            }
        }
    }

    /// Schedules the reminders that are still ahead and the expiry at `end`.
    pub(crate) async fn schedule_timers(
        &self,
        tx: &mut StoreTx,
        id: &RequestId,
        end: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        for before in &self.config().reminders_before {
            let Ok(before) = chrono::Duration::from_std(*before) else {
                continue;
            };
            let due = end - before;
            if due > now {
                tx.schedule(id, ScheduleKind::Reminder, due).await?;
            }
        }
        tx.schedule(id, ScheduleKind::Expiry, end).await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn audit_refusal(
        &self,
        who: &Invocation,
        request_id: &RequestId,
        request: &AccessRequest,
        target: &str,
        code: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let detail = request_detail(who, request_id, request, request.source.as_ref());
        let mut denied = detail.clone();
        denied["code"] = json!(code);
        denied["reason"] = json!(reason);
        let mut tx = self.store().begin().await?;
        tx.append_audit(
            &AuditEvent::new(
                now,
                actor(who.member.user_id),
                AuditAction::RequestReceived,
                target,
                Outcome::Info,
            )
            .with_detail(detail),
        )
        .await?;
        tx.append_audit(
            &AuditEvent::new(
                now,
                actor(who.member.user_id),
                AuditAction::AccessDenied,
                target,
                Outcome::Denied,
            )
            .with_detail(denied),
        )
        .await?;
        tx.commit().await
    }
}

fn request_detail(
    who: &Invocation,
    request_id: &RequestId,
    request: &AccessRequest,
    source: Option<&SourcePrefix>,
) -> serde_json::Value {
    json!({
        "request_id": request_id.as_str(),
        "user": who.member.name,
        "ports": request.ports.to_string(),
        "duration": request.duration.to_string(),
        "source": source.map(ToString::to_string),
        "reason": request.reason.as_ref().map(|r| r.as_str()),
    })
}
