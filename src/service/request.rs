//! `/jit`: request access, as the phases of [`super::phases`] in order.
//! Every refusal is audited (request received, access denied) before it is
//! returned.

use serde_json::json;

use super::phases::persist::request_detail;
use super::phases::{Admitted, Ask, Asking, Refusal, ResolveVmError, ResolvedVm, decide};
use super::truth::Acting;
use super::{Service, actor, messages, question};
use crate::domain::authorize;
use crate::domain::{
    AccessRequest, AuditAction, AuditEvent, Denial, GrantState, IndexedVm, OnConflict, Outcome,
    PolicyViolation, RequestId, RoleMapping, SourcePrefix,
};
use crate::interactions::Invocation;
use crate::store::{Grant, InsertOutcome, StoreError};

/// How long a second delivery of an interaction waits for the first one's
/// outcome (Azure's retries included) before answering with what is stored.
const FIRST_OUTCOME_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
const FIRST_OUTCOME_POLL: std::time::Duration = std::time::Duration::from_millis(50);

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
    /// `break_glass:true` without a break-glass role of the mapping, or
    /// without a reason; Azure is not asked.
    #[error("{0}")]
    BreakGlass(String),
    /// Another member holds the port and the mapping refuses to end their
    /// window (`on_conflict = "refuse"`); `message` names who, until when.
    #[error("{message}")]
    PortHeld { message: String },
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

impl From<ResolveVmError> for RequestError {
    fn from(e: ResolveVmError) -> Self {
        match e {
            ResolveVmError::NotFound {
                name,
                exists_without_jit,
            } => Self::VmNotFound {
                name,
                exists_without_jit,
            },
            ResolveVmError::Ambiguous { candidates } => Self::VmAmbiguous { candidates },
            ResolveVmError::Azure { message, .. } => Self::Azure { message },
            ResolveVmError::Unexpected(e) => Self::Unexpected(e),
        }
    }
}

impl From<Refusal> for RequestError {
    fn from(e: Refusal) -> Self {
        match e {
            Refusal::Denied(denial) => Self::Denied(denial),
            Refusal::Policy(violation) => Self::Policy(violation),
        }
    }
}

impl RequestError {
    /// A short code for the audit log, and whether it is a failure (Azure
    /// or Drawbridge) rather than a refusal.
    pub fn code(&self) -> (&'static str, bool) {
        match self {
            Self::Invalid(_) => ("invalid_input", false),
            Self::VmNotFound { .. } => ("vm_not_found", false),
            Self::VmAmbiguous { .. } => ("vm_ambiguous", false),
            Self::NoSource => ("no_source", false),
            Self::Denied(denial) => (denial.code(), false),
            Self::Policy(_) => ("policy", false),
            Self::PortHeld { .. } => ("port_held", false),
            Self::BreakGlass(_) => ("break_glass_refused", false),
            Self::Azure { .. } => ("azure_failed", true),
            Self::Unexpected(_) => (super::refusals::INTERNAL, true),
        }
    }

    /// The audit log's code and reason for a refusal; `None` for what is
    /// not a refusal (Azure failing, a missing source, internal errors).
    fn audit_code(&self) -> Option<(&'static str, String)> {
        match self {
            Self::VmNotFound { .. } => Some(("vm_not_found", "no such VM under JIT".into())),
            Self::VmAmbiguous { .. } => Some(("vm_ambiguous", "VM name is ambiguous".into())),
            Self::Denied(denial) => Some((denial.code(), denial.to_string())),
            Self::Policy(violation) => Some(("policy", violation.to_string())),
            Self::PortHeld { message } => Some(("port_held", message.clone())),
            Self::BreakGlass(why) => Some(("break_glass_refused", why.clone())),
            _ => None,
        }
    }
}

/// The justification Azure records: the request id, the member by id first
/// (a display name can say anything), then their name quoted and escaped,
/// then their reason.
pub fn justification(who: &Invocation, request_id: &RequestId, reason: Option<&str>) -> String {
    let name: String = who
        .member
        .name
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    let mut text = format!(
        "Drawbridge request {request_id} by Discord user {} (name {:?})",
        who.member.user_id, name
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
    pub async fn request_access(
        &self,
        who: &Invocation,
        request: AccessRequest,
    ) -> Result<Grant, RequestError> {
        self.request_access_with(who, request, false).await
    }

    /// [`Service::request_access`], with `break_glass` asked for: on a
    /// mapping that needs approval, a member with one of its `break_glass`
    /// roles and a reason skips the wait (alerted and reviewed). Without
    /// it, such a mapping's request is stored `pending_approval` after
    /// every check, and opened when approved ([`super::approval`]).
    ///
    /// # Errors
    /// [`RequestError`]: every refusal is audited before it is returned.
    #[tracing::instrument(skip_all, fields(request_id = %who.id, user = %who.member.user_id, vm = %request.vm))]
    pub async fn request_access_with(
        &self,
        who: &Invocation,
        request: AccessRequest,
        break_glass: bool,
    ) -> Result<Grant, RequestError> {
        let id = RequestId::parse(&who.id)
            .map_err(|e| RequestError::Unexpected(anyhow::anyhow!("interaction id: {e}")))?;
        if let Some(existing) = self.store().grant(&id).await? {
            tracing::info!("request id seen before; answering with the stored grant");
            return Ok(self.first_outcome(existing).await?);
        }
        let asking = Asking {
            who,
            id: &id,
            request: &request,
            now: self.clock().now(),
        };
        let admitted = self.admit(&asking).await?;
        let glass = match (break_glass, self.needs_approval(&admitted)) {
            (true, Some(_)) => match self.check_break_glass(&asking, &admitted) {
                Ok(mapping) => Some(mapping),
                Err(refused) => {
                    let target = admitted.target.identity.qualified();
                    return Err(self.refused(&asking, &target, refused).await);
                }
            },
            (false, Some(mapping)) => return self.hold(&asking, &admitted, &mapping).await,
            (_, None) => None,
        };
        let holder = self.ask_first(&asking, &admitted).await?;
        let store = self.store_request(&asking, &admitted, holder.as_ref(), glass.as_ref());
        // The member's own interaction is answered in line: a question
        // written with the request is held for its show.
        let grant = match self.answering(who, &id, store).await? {
            InsertOutcome::Inserted(grant) => grant,
            InsertOutcome::Duplicate(grant) => return Ok(self.first_outcome(grant).await?),
        };
        if glass.is_some() {
            self.wake_after(());
        }
        if grant.state == GrantState::Confirming {
            tracing::info!("another member holds the port; the member is asked first");
            return Ok(grant);
        }
        self.open_requested(who, &admitted.target.vm, grant, asking.now)
            .await
    }

    /// Stores an admitted request in one transaction: `requested`, or
    /// `confirming` with its question when `holder` holds the port (the
    /// question's reply is written with it, so it is not lost to a crash or
    /// a refused edit), marked break-glass under `glass`.
    async fn store_request(
        &self,
        asking: &Asking<'_>,
        admitted: &Admitted,
        holder: Option<&question::PortHolder>,
        glass: Option<&RoleMapping>,
    ) -> Result<InsertOutcome, RequestError> {
        let mut tx = self.store().begin().await?;
        let grant = match self
            .persist_in(&mut tx, asking, admitted, holder.is_some())
            .await?
        {
            InsertOutcome::Inserted(grant) => grant,
            seen @ InsertOutcome::Duplicate(_) => {
                tx.commit().await?;
                return Ok(seen);
            }
        };
        if let Some(mapping) = glass {
            self.record_break_glass(&mut tx, asking, &grant, mapping)
                .await?;
        }
        if grant.state == GrantState::Confirming {
            let asked = messages::question(&grant, holder, &self.config().aliases);
            self.queue_question(&mut tx, &grant, &asked).await?;
        }
        tx.commit().await?;
        Ok(InsertOutcome::Inserted(grant))
    }

    /// Initiates a `requested` grant for its duration from `now`, settles
    /// Azure's answer and reads the policy back (phases 4 and 5).
    ///
    /// # Errors
    /// [`RequestError::Azure`] when Azure did not open it.
    pub(crate) async fn open_requested(
        &self,
        who: &Invocation,
        vm: &IndexedVm,
        grant: Grant,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Grant, RequestError> {
        self.open_requested_as(who, vm, grant, now, None).await
    }

    /// [`Service::open_requested`] with Azure's justification `why`, when
    /// given (an approved request names its approvers), else the member's.
    ///
    /// # Errors
    /// [`RequestError::Azure`] when Azure did not open it.
    pub(crate) async fn open_requested_as(
        &self,
        who: &Invocation,
        vm: &IndexedVm,
        grant: Grant,
        now: chrono::DateTime<chrono::Utc>,
        why: Option<String>,
    ) -> Result<Grant, RequestError> {
        let end = now + grant.duration.to_chrono();
        let why = why.unwrap_or_else(|| {
            justification(
                who,
                &grant.request_id,
                grant.reason.as_ref().map(|r| r.as_str()),
            )
        });
        let acting = Acting::of(&grant);
        let id = grant.request_id.clone();
        let settle = async {
            let outcome = self.initiate(vm, &grant, end, why).await;
            self.settle_opened(who, vm, grant, outcome).await
        };
        // The member's own interaction is answered in line: its reply,
        // written with the outcome, is held for the transport's show.
        let settled = self.answering(who, &id, settle).await;
        self.read_back(vm, &acting).await;
        settled
    }

    /// Who holds the port, when the member must be asked before their
    /// request ends another member's window on it; refused (and audited)
    /// when the mapping that allows it says `on_conflict = "refuse"`.
    async fn ask_first(
        &self,
        asking: &Asking<'_>,
        admitted: &Admitted,
    ) -> Result<Option<question::PortHolder>, RequestError> {
        let open = self
            .store()
            .open_grants_on(&admitted.target.vm.vm_id)
            .await?;
        let Some(holder) = question::holder_of(
            &open,
            &admitted.target.vm.vm_id,
            &asking.request.ports,
            &admitted.source,
            asking.who.member.user_id,
            asking.now,
        ) else {
            return Ok(None);
        };
        let mapping = self
            .mappings()
            .iter()
            .find(|m| m.name == admitted.mapping)
            .map(|m| m.on_conflict)
            .unwrap_or_default();
        match mapping {
            OnConflict::Ask => Ok(Some(holder)),
            OnConflict::Refuse => {
                let target = admitted.target.identity.qualified();
                let held = RequestError::PortHeld {
                    message: question::refusal(
                        &holder,
                        &target,
                        &admitted.mapping,
                        &self.config().aliases,
                    ),
                };
                Err(self.refused(asking, &target, held).await)
            }
        }
    }

    /// Stores an admitted request that needs approvers as
    /// `pending_approval`, with everything that makes it wait, in one
    /// transaction.
    async fn hold(
        &self,
        asking: &Asking<'_>,
        admitted: &Admitted,
        mapping: &RoleMapping,
    ) -> Result<Grant, RequestError> {
        let store = async {
            let mut tx = self.store().begin().await?;
            let grant = match self.persist_in(&mut tx, asking, admitted, false).await? {
                InsertOutcome::Inserted(grant) => {
                    self.hold_for_approval(&mut tx, asking, &grant, mapping)
                        .await?
                }
                InsertOutcome::Duplicate(grant) => grant,
            };
            tx.commit().await?;
            Ok::<_, RequestError>(grant)
        };
        // The member's own interaction is answered in line: the "waiting
        // for approval" reply written with the request is held for its show.
        let grant = self.answering(asking.who, asking.id, store).await?;
        Ok(self.wake_after(grant))
    }

    /// Refuses a member whom no mapping covers before any lookup, resolves
    /// among the VMs their mappings reach, and decides; a refusal is audited
    /// against the VM as far as it was resolved.
    async fn admit(&self, asking: &Asking<'_>) -> Result<Admitted, RequestError> {
        let request = asking.request;
        let roles = &asking.who.member.roles;
        let mappings = self.mappings();
        if !authorize::has_any_mapping(&mappings, roles) {
            let denied = RequestError::Denied(Denial::NoMappingForRoles);
            return Err(self.refused(asking, &request.vm.to_string(), denied).await);
        }
        let target = match self.resolve_vm_for(&mappings, roles, &request.vm).await {
            Ok(target) => target,
            Err(e) => {
                return Err(self
                    .refused(asking, &request.vm.to_string(), e.into())
                    .await);
            }
        };
        let source = self
            .source_for(asking.who, &mappings, &target, request.source)
            .await?;
        let ask = Ask {
            roles: &asking.who.member.roles,
            ports: &request.ports,
            duration: request.duration,
            source: &source,
            reason: request.reason.as_ref(),
        };
        match decide(&mappings, &target, &ask) {
            Ok(allowed) => Ok(Admitted {
                target,
                source,
                mapping: allowed.mapping,
            }),
            Err(refusal) => {
                let qualified = target.identity.qualified();
                Err(self.refused(asking, &qualified, refusal.into()).await)
            }
        }
    }

    /// The source to open for: the request's, else the member's saved one,
    /// else the first default of a mapping that applies to them and the VM.
    async fn source_for(
        &self,
        who: &Invocation,
        mappings: &[RoleMapping],
        target: &ResolvedVm,
        given: Option<SourcePrefix>,
    ) -> Result<SourcePrefix, RequestError> {
        if let Some(source) = given {
            return Ok(source);
        }
        if let Some(saved) = self.store().saved_source(who.member.user_id).await? {
            return Ok(saved);
        }
        authorize::mappings_for(mappings, &who.member.roles, &target.identity)
            .find_map(|m| m.default_source())
            .ok_or(RequestError::NoSource)
    }

    /// `grant` once it has left `requested`, or as stored after
    /// [`FIRST_OUTCOME_WAIT`]: a second delivery of the same interaction
    /// edits the same reply, and must not replace the first delivery's
    /// outcome with a stale "requested" (and no buttons).
    async fn first_outcome(&self, mut grant: Grant) -> Result<Grant, StoreError> {
        let deadline = tokio::time::Instant::now() + FIRST_OUTCOME_WAIT;
        while grant.state == GrantState::Requested && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(FIRST_OUTCOME_POLL).await;
            match self.store().grant(&grant.request_id).await? {
                Some(now) => grant = now,
                None => break,
            }
        }
        Ok(grant)
    }

    /// Audits `error` against `target` if it is a refusal (request received,
    /// access denied, in one transaction) and returns it.
    async fn refused(
        &self,
        asking: &Asking<'_>,
        target: &str,
        error: RequestError,
    ) -> RequestError {
        let Some((code, reason)) = error.audit_code() else {
            return error;
        };
        let detail = request_detail(asking, asking.request.source.as_ref());
        let mut denied = detail.clone();
        denied["code"] = json!(code);
        denied["reason"] = json!(reason);
        if matches!(error, RequestError::BreakGlass(_)) {
            denied["break_glass"] = json!(true);
        }
        let by = actor(asking.who.member.user_id);
        let received = AuditEvent::new(
            asking.now,
            by.clone(),
            AuditAction::RequestReceived,
            target,
            Outcome::Info,
        );
        let deny = AuditEvent::new(
            asking.now,
            by,
            AuditAction::AccessDenied,
            target,
            Outcome::Denied,
        );
        let written = self
            .append_refusal(&[received.with_detail(detail), deny.with_detail(denied)])
            .await;
        match written {
            Ok(()) => error,
            Err(e) => e.into(),
        }
    }
}
