//! The use cases: request access, extend, close early, status, saved source,
//! the admin actions, and the workers (timers, outbox, reconciliation),
//! written against the store, the [`JitPort`] (Azure, in domain terms) and a
//! clock. The chat transports reach them through [`bot::Bot`], which
//! implements [`crate::interactions::InteractionHandler`].
//!
//! # The life of a `/jit` request
//! 1. The transport acknowledges at once and calls [`Service::request_access`].
//!    A request id already stored answers with that grant: one interaction
//!    never initiates twice.
//! 2. **Resolve** ([`phases::resolve`]): the VM through the index, from
//!    memory in steady state. The source comes from the request, the
//!    member's saved IP or a mapping's default.
//! 3. **Decide** ([`phases::decide`](mod@phases::decide)): the member's roles against the
//!    mappings ([`crate::domain::authorize`](mod@crate::domain::authorize)), then the request against the
//!    VM's Azure JIT policy. A refusal is audited and returned.
//! 4. **Persist** ([`phases::persist`]): the grant (`requested`) and its
//!    audit events in one transaction, before Azure hears of it.
//! 5. **Initiate** ([`phases::initiate`]): the one write to ARM.
//! 6. **Settle** ([`phases::settle`]): Azure's answer (its end time, or why
//!    not), the audit event and the reminder and expiry timers, in one
//!    transaction. Then the policy is read back and every other grant on
//!    the VM settled from Azure's status ([`truth`]). The workers take it
//!    from there.
//!
//! Extend is resolve, decide, initiate and settle on a stored grant;
//! `/jit-admin explain` is resolve and the mappings half of decide.
//!
//! # Layout
//! - [`request`], [`approval`], [`lifecycle`], [`admin`], [`autocomplete`]:
//!   the use cases;
//!   [`phases`]: the parts they share.
//! - [`jit_port`]: the port to Azure.
//! - [`bot`]: slash commands, buttons and autocomplete to use cases, one
//!   file per command; [`messages`]: what Drawbridge says, as chat messages.
//! - [`truth`]: Azure's word on our grants, after every write;
//!   [`question`]: asking before one member's request ends another's.
//! - [`scheduler`], [`delivery`], [`reconcile`]: the workers (reminders and
//!   expiry, the outbox, Azure's view compared with ours); [`reply`]: the
//!   `/jit` reply, written with the outcome it shows.

pub mod admin;
pub mod approval;
pub mod audit_watch;
pub mod autocomplete;
pub mod bot;
pub mod delivery;
pub mod ip_link;
pub mod jit_port;
pub mod lifecycle;
pub mod messages;
pub mod phases;
pub mod question;
pub mod reconcile;
pub mod refusals;
pub mod replica;
pub mod reply;
pub mod request;
pub mod scheduler;
pub mod truth;
pub mod weekly;
pub mod who;

use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use crate::clock::SharedClock;
use crate::domain::rate::{RateLimit, RateLimiter};
use crate::domain::{PortAliases, RoleId, RoleMapping};
use crate::store::{Store, StoreError};

pub use jit_port::{Initiated, JitError, JitPort, OpenRequest};
pub use phases::resolve::{ResolveVmError, ResolvedVm, resolve_vm};

/// What the use cases need from configuration. The default is a bare
/// service: no reminders, admins, channels or reports, the default port
/// aliases and rate limit.
#[derive(Debug, Clone, Default)]
pub struct ServiceConfig {
    /// Port names: `ssh`, `rdp`, `winrm` and the configured aliases.
    pub aliases: PortAliases,
    /// Reminder offsets before the end of a grant.
    pub reminders_before: Vec<Duration>,
    /// Who may use `/jit-admin`.
    pub admin_roles: Vec<RoleId>,
    /// The guild Drawbridge serves (`discord.guild_id`); `None` only when
    /// commands are registered globally on purpose.
    pub home_guild: Option<u64>,
    /// Each member's rate of `/jit`, `/jit-ip` and button presses.
    pub rate_limit: RateLimit,
    /// `http.public_url`: where IP capture links point; `None` turns them
    /// off (members are asked for `from:` instead).
    pub public_url: Option<url::Url>,
    /// Where approval and review cards go (`discord.approvals_channel_id`,
    /// else the audit channel).
    pub approvals_channel: Option<u64>,
    /// The audit channel, where break-glass pings the alert role.
    pub audit_channel: Option<u64>,
    /// The role a break-glass request pings (`discord.alert_role_id`).
    pub alert_role: Option<RoleId>,
    /// When the weekly report is posted to the audit channel
    /// (`report.weekly`); `None`: only on `/jit-admin report`.
    pub weekly_report: Option<crate::domain::report::weekly::WeeklySlot>,
    /// `azure.requestor_names`: names Azure may write as `requestor` on our
    /// requests (part of our identity, [`Service::our_identity`]).
    pub requestor_names: Vec<String>,
}

/// The use cases; cheap to clone.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    jit: Arc<dyn JitPort>,
    clock: SharedClock,
    config: ServiceConfig,
    mappings: RwLock<Arc<Vec<RoleMapping>>>,
    /// The store's [`Store::mappings_version`] when `mappings` was read.
    mappings_version: std::sync::atomic::AtomicI64,
    wakers: Wakers,
    limiter: Mutex<RateLimiter>,
    folder: Mutex<refusals::RefusalFolder>,
    /// Autocomplete's VM sets per set of applying mappings.
    allowed_cache: Mutex<autocomplete::AllowedCache>,
    /// The `/jit` replies this process is answering in line.
    in_line: Mutex<reply::InLine>,
}

/// Wake-ups for the workers: the scheduler when timers change, the outbox
/// when messages are queued.
#[derive(Debug, Clone, Default)]
pub struct Wakers {
    pub scheduler: Arc<tokio::sync::Notify>,
    pub outbox: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

impl Service {
    /// Builds the service and loads the mappings.
    ///
    /// # Errors
    /// If the mappings cannot be read.
    pub async fn new(
        store: Store,
        jit: Arc<dyn JitPort>,
        clock: SharedClock,
        config: ServiceConfig,
    ) -> Result<Self, StoreError> {
        let version = store.mappings_version().await?;
        let mappings = store.list_mappings(&config.aliases).await?;
        let limit = config.rate_limit;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                jit,
                clock,
                config,
                mappings: RwLock::new(Arc::new(mappings)),
                mappings_version: version.into(),
                wakers: Wakers::default(),
                limiter: Mutex::new(RateLimiter::new(limit)),
                folder: Mutex::new(refusals::RefusalFolder::default()),
                allowed_cache: Mutex::default(),
                in_line: Mutex::default(),
            }),
        })
    }

    /// The store, for the workers and start-up; the chat transports go
    /// through the use cases.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    fn allowed_cache(&self) -> &Mutex<autocomplete::AllowedCache> {
        &self.inner.allowed_cache
    }

    /// The current mappings (from memory).
    pub fn mappings(&self) -> Arc<Vec<RoleMapping>> {
        Arc::clone(
            &self
                .inner
                .mappings
                .read()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Re-reads the mappings from the store (after a change, or on an
    /// interval so that several replicas agree). When the store's count of
    /// changes has not moved, nothing else is read; an unchanged list keeps
    /// the one in memory: what is computed from it (autocomplete's VM sets)
    /// stays valid, and 10,000 mappings are not read, parsed and compared
    /// every interval.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn reload_mappings(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let version = self.inner.store.mappings_version().await?;
        if version == self.inner.mappings_version.load(Ordering::Acquire) {
            return Ok(());
        }
        let fresh = self
            .inner
            .store
            .list_mappings(&self.inner.config.aliases)
            .await?;
        if **self.mappings() != fresh {
            *self
                .inner
                .mappings
                .write()
                .unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        }
        self.inner
            .mappings_version
            .store(version, Ordering::Release);
        Ok(())
    }

    fn folder(&self) -> MutexGuard<'_, refusals::RefusalFolder> {
        self.inner.folder.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn limiter(&self) -> MutexGuard<'_, RateLimiter> {
        self.inner.limiter.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn wakers(&self) -> &Wakers {
        &self.inner.wakers
    }

    /// Wakes the workers (after a use case wrote timers or messages) and
    /// passes `value` through.
    pub fn wake_after<T>(&self, value: T) -> T {
        self.inner.wakers.scheduler.notify_one();
        self.inner.wakers.outbox.notify_one();
        value
    }

    fn jit(&self) -> &dyn JitPort {
        self.inner.jit.as_ref()
    }
}

/// The actor string of a Discord member in the audit log.
pub fn actor(user: crate::domain::UserId) -> String {
    format!("discord:{user}")
}
