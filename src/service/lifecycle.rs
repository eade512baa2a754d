//! Extend, Close early, `/jit-status` and `/jit-ip`.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;

use super::jit_port::{JitError, OpenRequest};
use super::phases::{Ask, ResolveVmError, ResolvedVm, decide};
use super::refusals::Refused;
use super::request::{RequestError, justification};
use super::truth::Acting;
use super::{Service, actor};
use crate::domain::authorize;
use crate::domain::port_truth::{self, HeldWindow, PortTruth, PortView};
use crate::domain::{
    AccessDuration, AuditAction, AuditEvent, Denial, GrantEvent, GrantState, IndexedVm,
    JitRequestRecord, Outcome, PortSpec, RequestId, RoleMapping, SourcePrefix, VmRef,
};
use crate::interactions::Invocation;
use crate::store::{Grant, StoreError};

/// What Close early says when the VM cannot be found any more.
const VM_GONE: &str = "the VM is no longer under JIT, so Azure cannot be asked";

/// Why a button did nothing.
#[derive(Debug, thiserror::Error)]
pub enum GrantActionError {
    #[error("this grant no longer exists")]
    NotFound,
    #[error("only the engineer who asked for this grant can change it")]
    NotOwner,
    /// The grant is not open any more.
    #[error("this grant is {0}: there is nothing to change")]
    NotOpen(GrantState),
    /// Another action holds the grant (it is `closing` or `extending`).
    #[error(
        "another action on this grant is under way (it is {0}), so nothing was changed; look at the grant again in a moment"
    )]
    Busy(GrantState),
    /// The grant changed between reading it and claiming it (another
    /// action settled meanwhile).
    #[error(
        "this grant changed a moment ago (it is now {0}), so nothing was changed; look at it again"
    )]
    Changed(GrantState),
    /// The question was answered already (Open anyway or Cancel).
    #[error("this question was answered already: the request is {0}, so nothing was changed")]
    Answered(GrantState),
    /// The question is older than [`super::question::QUESTION_LIFETIME`].
    #[error(
        "this question has lapsed (the port may have changed hands since), so nothing was sent to Azure; ask again with /jit"
    )]
    Lapsed,
    /// The request failed (as for a new request).
    #[error(transparent)]
    Request(#[from] RequestError),
}

/// Why `/jit-ip` saved nothing.
#[derive(Debug, thiserror::Error)]
pub enum SaveSourceError {
    /// Not a single address, nor inside a network a mapping writes out.
    #[error(
        "{0} is not a single address: save the one address you connect from, such as 203.0.113.7"
    )]
    NotAllowed(SourcePrefix),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl GrantActionError {
    /// The audit log's code and whether it is a failure rather than a refusal.
    pub fn audit_code(&self) -> (&'static str, bool) {
        match self {
            Self::NotFound => ("not_found", false),
            Self::NotOwner => ("not_owner", false),
            Self::NotOpen(_) => ("not_open", false),
            Self::Busy(_) => ("busy", false),
            Self::Changed(_) => ("changed", false),
            Self::Answered(_) => ("answered", false),
            Self::Lapsed => ("lapsed", false),
            Self::Request(e) => e.code(),
        }
    }
}

impl From<StoreError> for GrantActionError {
    fn from(e: StoreError) -> Self {
        Self::Request(e.into())
    }
}

/// The shortest window Close early asks for. The initiate schema states no
/// minimum; the only minimum in the spec is that of the policy's
/// `maxRequestAccessDuration` ("Minimum 5 minutes, maximum 1 day"), so 5
/// minutes is the shortest window the API documents as meaningful.
pub const CLOSE_EARLY_WINDOW: TimeDelta = TimeDelta::minutes(5);

/// What Close early found in Azure and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseOutcome {
    /// Azure was asked for `requested_end`; `ports` are read back from
    /// Azure: per port, until when it is open for the grant's source
    /// (`None`: closed). Empty if the read-back failed.
    Shortened {
        requested_end: DateTime<Utc>,
        ports: Vec<(u16, Option<DateTime<Utc>>)>,
    },
    /// The grant already closes at `closes_at`, sooner than Close early
    /// could make it: nothing was sent.
    AlreadySooner { closes_at: DateTime<Utc> },
    /// Azure had already ended the grant on every port: nothing was sent.
    NotOpen { ports: Vec<PortTruth> },
}

impl CloseOutcome {
    /// When the port closes for the grant, per Azure: the latest end read
    /// back (the requested end if the read-back failed); `None` when Azure
    /// shows it closed already.
    pub fn closes_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Shortened {
                requested_end,
                ports,
            } => {
                if ports.is_empty() {
                    return Some(*requested_end);
                }
                ports.iter().filter_map(|(_, until)| *until).max()
            }
            Self::AlreadySooner { closes_at } => Some(*closes_at),
            Self::NotOpen { .. } => None,
        }
    }
}

/// What Close early did.
#[derive(Debug, Clone)]
pub struct Closed {
    /// The grant as now stored.
    pub grant: Grant,
    /// What Azure showed.
    pub outcome: CloseOutcome,
}

impl Service {
    /// The grant `request_id` if it is `who`'s: not found, or not theirs,
    /// refused.
    pub(crate) async fn owned_grant(
        &self,
        who: &Invocation,
        request_id: &str,
    ) -> Result<Grant, GrantActionError> {
        let id = RequestId::parse(request_id).map_err(|_| GrantActionError::NotFound)?;
        let grant = self
            .store()
            .grant(&id)
            .await?
            .ok_or(GrantActionError::NotFound)?;
        if grant.user_id != who.member.user_id {
            return Err(GrantActionError::NotOwner);
        }
        Ok(grant)
    }

    async fn owned_open_grant(
        &self,
        who: &Invocation,
        request_id: &str,
    ) -> Result<Grant, GrantActionError> {
        let grant = self.owned_grant(who, request_id).await?;
        if grant.state.is_claimed() {
            return Err(GrantActionError::Busy(grant.state));
        }
        if !matches!(grant.state, GrantState::Active | GrantState::Extended) {
            return Err(GrantActionError::NotOpen(grant.state));
        }
        Ok(grant)
    }

    /// Takes `grant`'s transition for one action (`event` moves it to
    /// `closing` or `extending`) before Azure is called, only if the grant
    /// is as it was read: of two actions at once, only one gets it; the
    /// other is told.
    async fn claim(
        &self,
        grant: &Grant,
        event: &GrantEvent,
        now: DateTime<Utc>,
    ) -> Result<(), GrantActionError> {
        let mut tx = self.store().begin().await?;
        let current = tx
            .grant(&grant.request_id)
            .await?
            .ok_or(GrantActionError::NotFound)?;
        if (current.state, current.end_time, current.state_changed_at)
            != (grant.state, grant.end_time, grant.state_changed_at)
        {
            tx.rollback().await?;
            return Err(if current.state.is_claimed() {
                GrantActionError::Busy(current.state)
            } else {
                GrantActionError::Changed(current.state)
            });
        }
        match tx.transition_grant(&grant.request_id, event, now).await {
            Ok(_) => Ok(tx.commit().await?),
            Err(StoreError::InvalidTransition(refused)) => {
                tx.rollback().await?;
                Err(if refused.from.is_claimed() {
                    GrantActionError::Busy(refused.from)
                } else {
                    GrantActionError::NotOpen(refused.from)
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Resolves the VM of a stored grant.
    pub(crate) async fn resolve_grant_vm(
        &self,
        grant: &Grant,
    ) -> Result<ResolvedVm, ResolveVmError> {
        let vm_ref = VmRef::parse(&grant.vm_name).map_err(|e| {
            ResolveVmError::Unexpected(anyhow::anyhow!("stored VM name {}: {e}", grant.vm_name))
        })?;
        self.resolve_vm(&vm_ref).await
    }

    /// Extends an open grant: a new window from now, as long as the grant's
    /// own duration plus what remains, capped by the member's mappings (as
    /// they are now) and the VM's policy. Reminders move with the new end.
    ///
    /// # Errors
    /// [`GrantActionError`].
    #[tracing::instrument(skip_all, fields(request_id = %request_id, user = %who.member.user_id))]
    pub async fn extend(
        &self,
        who: &Invocation,
        request_id: &str,
    ) -> Result<Grant, GrantActionError> {
        let grant = self.owned_open_grant(who, request_id).await?;
        let now = self.clock().now();
        let target = self
            .resolve_grant_vm(&grant)
            .await
            .map_err(RequestError::from)?;
        let mappings = self.mappings();
        let window = extension_window(&mappings, who, &grant, &target, now)?;
        let ask = Ask {
            roles: &who.member.roles,
            ports: &grant.ports,
            duration: window,
            source: &grant.source,
            reason: grant.reason.as_ref(),
        };
        decide(&mappings, &target, &ask).map_err(RequestError::from)?;
        let was_extended = grant.state == GrantState::Extended;
        self.claim(&grant, &GrantEvent::ExtendRequested, now)
            .await?;
        let end = now + window.to_chrono();
        let why = justification(who, &grant.request_id, Some("extend"));
        let initiated = match self.initiate(&target.vm, &grant, end, why).await {
            Ok(initiated) => initiated,
            Err(error @ JitError::NoAnswer { .. }) => {
                tracing::info!(error.message = %error, "extend outcome unclear; reading the policy back");
                let by = actor(who.member.user_id);
                let settled = self.settle_unclear_extend(&by, &target.vm, &grant).await;
                self.read_back(&target.vm, &Acting::of(&grant)).await;
                return Ok(settled?);
            }
            Err(e) => {
                let back = GrantEvent::ExtendFailed {
                    back_to_extended: was_extended,
                };
                let mut tx = self.store().begin().await?;
                tx.transition_grant(&grant.request_id, &back, now).await?;
                tx.commit().await?;
                return Err(RequestError::Azure {
                    message: e.user_message(),
                }
                .into());
            }
        };
        let extended = self
            .settle_extended(&actor(who.member.user_id), &grant, window, &initiated, now)
            .await?;
        self.read_back(&target.vm, &Acting::of(&grant)).await;
        Ok(extended)
    }

    /// Closes an open grant early, never later than it would have closed:
    /// Azure has no revoke, so the ports still open for the grant are
    /// re-initiated until `min(now + 5 min, current end)`, and only when that
    /// is sooner. What Azure shows is read first (a grant Azure already
    /// ended, or that a newer request replaced, sends nothing) and read back
    /// after; the grant records when the port really closes.
    ///
    /// # Errors
    /// [`GrantActionError`]; on an Azure failure the grant is as before.
    #[tracing::instrument(skip_all, fields(request_id = %request_id, user = %who.member.user_id))]
    pub async fn close_early(
        &self,
        who: &Invocation,
        request_id: &str,
    ) -> Result<Closed, GrantActionError> {
        let grant = self.owned_open_grant(who, request_id).await?;
        let now = self.clock().now();
        let was_extended = grant.state == GrantState::Extended;
        self.claim(&grant, &GrantEvent::CloseRequested, now).await?;
        let outcome = self.close_in_azure(who, &grant, now).await;
        self.settle_closed(who, &grant, was_extended, outcome, now)
            .await
    }

    /// Asks Azure to close `grant` early, as [`Self::close_early`] says.
    /// `Err` holds the member's sentence: nothing is known to have changed.
    async fn close_in_azure(
        &self,
        who: &Invocation,
        grant: &Grant,
        now: DateTime<Utc>,
    ) -> Result<CloseOutcome, String> {
        let target = match self.resolve_grant_vm(grant).await {
            Ok(target) => target,
            Err(ResolveVmError::Azure { message, .. }) => return Err(message),
            Err(_) => return Err(VM_GONE.to_string()),
        };
        let vm = &target.vm;
        let source = grant.source.to_string();
        let end = grant.end_time.unwrap_or(now);
        let before = self.read_requests(vm).await?;
        let held = HeldWindow {
            request_id: &grant.request_id,
            vm_id: &grant.vm_id,
            source: &source,
            end,
        };
        let truth = port_truth::grant_ports(&before, held, &grant.ports.numbers(), now);
        let open: Vec<u16> = truth
            .iter()
            .filter(|p| match p.view {
                PortView::Open { .. } => true,
                PortView::Unseen => {
                    port_truth::open_until(&before, &grant.vm_id, p.number, &source, now).is_some()
                }
                _ => false,
            })
            .map(|p| p.number)
            .collect();
        let Some(ports) = PortSpec::from_numbers(open) else {
            return Ok(CloseOutcome::NotOpen { ports: truth });
        };
        let shortest = now + CLOSE_EARLY_WINDOW;
        if end <= shortest {
            return Ok(CloseOutcome::AlreadySooner { closes_at: end });
        }
        let open = OpenRequest {
            ports,
            source: grant.source,
            end: shortest,
            justification: justification(who, &grant.request_id, Some("close early")),
        };
        let sent = self.jit().initiate(vm, &open).await;
        let after = self.read_back(vm, &Acting::of(grant)).await.ok_or(());
        let closes = |read: &[JitRequestRecord]| -> Vec<(u16, Option<DateTime<Utc>>)> {
            grant
                .ports
                .numbers()
                .into_iter()
                .map(|n| {
                    (
                        n,
                        port_truth::open_until(read, &grant.vm_id, n, &source, now),
                    )
                })
                .collect()
        };
        match (sent, after) {
            (Ok(_), Ok(read)) => Ok(CloseOutcome::Shortened {
                requested_end: shortest,
                ports: closes(&read),
            }),
            // Unclear: Azure may have applied it; the read-back says.
            (Err(JitError::NoAnswer { message, .. }), Ok(read)) => {
                let ports = closes(&read);
                if ports
                    .iter()
                    .all(|(_, until)| until.is_none_or(|u| u <= shortest))
                {
                    Ok(CloseOutcome::Shortened {
                        requested_end: shortest,
                        ports,
                    })
                } else {
                    Err(message)
                }
            }
            (Ok(_), Err(_)) => Ok(CloseOutcome::Shortened {
                requested_end: shortest,
                ports: Vec::new(),
            }),
            (Err(e), _) => {
                tracing::warn!(error.message = %e, error.cause_chain = ?e, "close early failed");
                Err(e.user_message())
            }
        }
    }

    /// The requests of `vm`'s policy; `Err` holds the member's sentence.
    pub(crate) async fn read_requests(
        &self,
        vm: &IndexedVm,
    ) -> Result<Vec<JitRequestRecord>, String> {
        self.jit().policy_requests(vm).await.map_err(|e| {
            tracing::warn!(error.message = %e, error.cause_chain = ?e, "reading the policy back failed");
            e.user_message()
        })
    }

    /// The member's open and recent grants.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn status(&self, who: &Invocation) -> Result<Vec<Grant>, StoreError> {
        self.store().grants_for_user(who.member.user_id, 10).await
    }

    /// The member's saved source address, if any.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn saved_source(&self, who: &Invocation) -> Result<Option<SourcePrefix>, StoreError> {
        self.store().saved_source(who.member.user_id).await
    }

    /// Saves the member's source address: a single address, or a network
    /// inside one a mapping of theirs writes out (see
    /// [`authorize::may_save_source`]).
    ///
    /// # Errors
    /// [`SaveSourceError::NotAllowed`], audited, or the store failing.
    pub async fn save_source(
        &self,
        who: &Invocation,
        source: SourcePrefix,
    ) -> Result<(), SaveSourceError> {
        if !authorize::may_save_source(&self.mappings(), &who.member.roles, &source) {
            let refusal = SaveSourceError::NotAllowed(source);
            let (target, reason) = (source.to_string(), refusal.to_string());
            self.audit_refusal(
                who,
                Refused::denied("jit-ip", &target, "source_not_allowed", &reason),
            )
            .await;
            return Err(refusal);
        }
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        tx.save_source(who.member.user_id, &source, now).await?;
        tx.append_audit(
            &AuditEvent::new(
                now,
                actor(who.member.user_id),
                AuditAction::SourceSaved,
                who.member.user_id.to_string(),
                Outcome::Info,
            )
            .with_detail(json!({"source": source.to_string()})),
        )
        .await?;
        Ok(tx.commit().await?)
    }
}

/// The window an extension asks for: what remains plus the grant's own
/// duration, capped by the longest the member's mappings allow for its
/// ports and source, and by the VM's policy.
fn extension_window(
    mappings: &[RoleMapping],
    who: &Invocation,
    grant: &Grant,
    target: &ResolvedVm,
    now: DateTime<Utc>,
) -> Result<AccessDuration, RequestError> {
    let remaining = grant
        .end_time
        .map(|end| (end - now).num_minutes().max(0))
        .unwrap_or(0);
    let wanted = (remaining + i64::from(grant.duration.minutes())).min(i64::from(u32::MAX));
    let max_allowed = authorize::mappings_for(mappings, &who.member.roles, &target.identity)
        .filter(|m| m.ports.covers(&grant.ports) && m.sources().allows(&grant.source))
        .map(|m| m.max_duration)
        .max()
        .ok_or_else(|| {
            RequestError::Denied(Denial::NoMappingForVm {
                vm: target.identity.qualified(),
            })
        })?;
    let policy_max = target
        .vm
        .max_duration_for(&grant.ports.numbers())
        .num_minutes();
    let minutes = wanted
        .min(i64::from(max_allowed.minutes()))
        .min(policy_max)
        .max(0) as u32;
    AccessDuration::from_minutes(minutes).ok_or_else(|| {
        RequestError::Invalid(
            "the grant cannot be extended: the limits leave less than 5 minutes".into(),
        )
    })
}
