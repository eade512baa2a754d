//! This replica among several: its id, and the work that one replica at a
//! time does, chosen by a lease in the database ([`crate::store::leases`]).
//!
//! | lease | what its holder does | the others |
//! |---|---|---|
//! | `outbox_audit` | posts the audit channel, in log order | deliver their own claimed rows only |
//! | `reconcile` | compares Azure's requests with the grants | nothing |
//! | `index_refresh` | lists the JIT policies every `azure.index_refresh` | list every [`STANDBY_INDEX_PACE`] intervals |
//! | `gateway` | holds the Discord gateway session (gateway mode) and answers interactions | wait, trying every tenth of the lease's time to live |
//!
//! Why the others still list, at a slower pace: each replica answers
//! `/jit` from its own in-memory VM index, and a miss already refreshes it.
//! A shared table would save those reads but adds a schema and a second
//! source of truth; three replicas list 1 + 2/3 as often as one (see
//! BENCHMARKS.md), far under ARM's read limits.
//!
//! With SQLite (one replica) no lease is taken: the only replica does
//! every job.
//!
//! The gateway lease is fenced ([`Tenure`]): Discord delivers every event to
//! every connected session of a shard, so two replicas connected at once
//! would both answer. The holder renews every fifth of the lease's time to
//! live (`discord.gateway_lease_ttl`, [`GatewayTimings`]) and counts its
//! tenure as ending three tenths of it before the lease's expiry, from when
//! its last successful renewal started (a monotonic clock); when it cannot
//! renew by then, or finds the lease's fence changed, it stops answering
//! and closes its shard, before any standby can take the lease.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::store::{Store, StoreError};

/// The audit channel's ordered stream.
pub const OUTBOX_AUDIT: &str = "outbox_audit";
/// Reconciliation with Azure.
pub const RECONCILE: &str = "reconcile";
/// The VM index refresh at full pace.
pub const INDEX_REFRESH: &str = "index_refresh";
/// The Discord gateway session (gateway mode).
pub const GATEWAY: &str = "gateway";
/// Every lease, for `/readyz`.
pub const LEASES: [&str; 4] = [OUTBOX_AUDIT, RECONCILE, INDEX_REFRESH, GATEWAY];
/// The gateway lease's default time to live (`discord.gateway_lease_ttl`).
/// A standby takes over at most this long plus a poll (1 s) after the
/// holder dies, then connects: within 15 s.
pub const GATEWAY_TTL: Duration = Duration::from_secs(10);

/// The gateway lease's pace, all in proportion to its time to live: 10 s
/// gives a renewal every 2 s, a stop 3 s before the expiry and a standby
/// poll every second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayTimings {
    /// How long the lease outlives its last renewal.
    pub ttl: Duration,
    /// How often the holder renews it.
    pub renew: Duration,
    /// How long before the lease's expiry a holder that could not renew
    /// stops: room for closing the shard and for clock skew between
    /// replicas.
    pub margin: Duration,
    /// How often a standby tries to take it.
    pub standby_poll: Duration,
}

impl GatewayTimings {
    /// The timings of a lease living `ttl`.
    pub fn for_ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            renew: ttl / 5,
            margin: ttl * 3 / 10,
            standby_poll: ttl / 10,
        }
    }
}
/// A replica without the index lease lists once in this many intervals.
pub const STANDBY_INDEX_PACE: u32 = 3;

/// This process's replica id: the host name (a pod's name on Kubernetes)
/// and a random suffix, so a restarted pod is a new holder.
pub fn replica_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty() && h.len() <= 64 && h.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or_else(|| "replica".to_string());
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        format!("{host}-{}", &suffix[..8])
    })
}

/// A lease one worker of this replica takes and renews each round.
#[derive(Debug, Clone)]
pub struct LeaseGate {
    store: Store,
    name: &'static str,
    holder: String,
    ttl: chrono::Duration,
}

impl LeaseGate {
    /// The lease `name` for `holder`, taken for `ttl` at each round: longer
    /// than a round, so a live holder keeps it, and as short as that allows,
    /// so a standby takes over soon after the holder dies.
    pub fn new(store: Store, name: &'static str, holder: &str, ttl: chrono::Duration) -> Self {
        Self {
            store,
            name,
            holder: holder.to_string(),
            ttl,
        }
    }

    /// Whether this replica holds the lease now (taking or renewing it);
    /// always on SQLite, where one replica is the only one. A
    /// database error counts as not holding it: the work waits for the next
    /// round rather than risk running twice.
    pub async fn hold(&self, now: DateTime<Utc>) -> bool {
        match self.take(now).await {
            Ok(fence) => fence.is_some(),
            Err(e) => {
                tracing::warn!(lease = self.name, error.message = %e, "could not take a lease");
                false
            }
        }
    }

    /// Takes or renews the lease: its fence when this replica holds it
    /// now (0 on SQLite, where there is no lease), `None` when another
    /// does.
    ///
    /// # Errors
    /// The database did not answer: whether this replica holds it is not
    /// known.
    pub async fn take(&self, now: DateTime<Utc>) -> Result<Option<i64>, StoreError> {
        if self.store.single_replica() {
            return Ok(Some(0));
        }
        let lease = self
            .store
            .try_lease(self.name, &self.holder, now, self.ttl)
            .await?;
        Ok(lease.map(|l| l.fence))
    }

    /// Whether there is only one replica (SQLite): then no lease is taken.
    pub fn single_replica(&self) -> bool {
        self.store.single_replica()
    }

    /// Gives the lease up, so another replica takes it at once.
    pub async fn release(&self, now: DateTime<Utc>) {
        if let Err(e) = self.store.release_lease(self.name, &self.holder, now).await {
            tracing::warn!(lease = self.name, error.message = %e, "could not release a lease");
        }
    }
}

/// A lease's time to live for a worker that renews it every `every`.
pub fn ttl_for(every: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(every.saturating_mul(2)).unwrap_or(chrono::Duration::hours(1))
        + chrono::Duration::seconds(10)
}

/// One holding of the gateway lease: from when it was taken until it is
/// lost (another replica took it, it could not be renewed in time) or given
/// up. Cheap to clone; all clones share one state.
#[derive(Debug, Clone)]
pub struct Tenure {
    fence: i64,
    /// `None`: unbounded (one replica, no lease).
    until: Option<Arc<Mutex<Instant>>>,
    lost: CancellationToken,
}

impl Tenure {
    /// The only replica's tenure: never lost but by [`Tenure::end`].
    pub fn unbounded() -> Self {
        Self {
            fence: 0,
            until: None,
            lost: CancellationToken::new(),
        }
    }

    fn bounded(fence: i64, until: Instant) -> Self {
        Self {
            fence,
            until: Some(Arc::new(Mutex::new(until))),
            lost: CancellationToken::new(),
        }
    }

    /// The lease's fence: grows by one each time the lease changes hands.
    pub fn fence(&self) -> i64 {
        self.fence
    }

    /// Whether this replica may still act as the holder: not lost and
    /// before the tenure's end (checked on a monotonic clock, so it holds
    /// even when the renewing task is stuck).
    pub fn is_current(&self) -> bool {
        !self.lost.is_cancelled() && self.until().is_none_or(|until| Instant::now() < until)
    }

    /// Resolves when the tenure ends.
    pub fn lost(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.lost.clone().cancelled_owned()
    }

    /// Ends the tenure (also on shutdown, so the renewing task stops).
    pub fn end(&self) {
        self.lost.cancel();
    }

    fn until(&self) -> Option<Instant> {
        let until = self.until.as_ref()?;
        Some(*until.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn extend(&self, to: Instant) {
        if let Some(until) = &self.until {
            *until.lock().unwrap_or_else(|p| p.into_inner()) = to;
        }
    }
}

/// The gateway lease of this replica ([`GATEWAY`]).
#[derive(Debug, Clone)]
pub struct GatewayLease {
    gate: LeaseGate,
    clock: SharedClock,
    timings: GatewayTimings,
}

impl GatewayLease {
    /// The gateway lease on `store` for this replica, living `ttl`.
    pub fn new(store: Store, clock: SharedClock, ttl: Duration) -> Self {
        let timings = GatewayTimings::for_ttl(ttl);
        let lease = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::seconds(10));
        Self {
            gate: LeaseGate::new(store, GATEWAY, replica_id(), lease),
            clock,
            timings,
        }
    }

    /// The tenure's end for a renewal that started at `started`.
    fn tenure_end(&self, started: Instant) -> Instant {
        started + self.timings.ttl - self.timings.margin
    }

    /// Waits until this replica holds the lease, trying every
    /// [`GatewayTimings::standby_poll`], then keeps renewing it in the background
    /// until the tenure ends. `None` when `stop` is cancelled first. With
    /// one replica (SQLite) at once an unbounded tenure.
    pub async fn acquire(&self, stop: &CancellationToken) -> Option<Tenure> {
        if self.gate.single_replica() {
            return Some(Tenure::unbounded());
        }
        loop {
            let started = Instant::now();
            match self.gate.take(self.clock.now()).await {
                Ok(Some(fence)) => {
                    let tenure = Tenure::bounded(fence, self.tenure_end(started));
                    tracing::info!(fence, "holding the gateway lease");
                    tokio::spawn(self.clone().keep(tenure.clone()));
                    return Some(tenure);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error.message = %e, "could not try the gateway lease");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(self.timings.standby_poll) => {}
            }
        }
    }

    /// Renews the lease every [`GatewayTimings::renew`]; ends `tenure` when the
    /// lease changed hands or could not be renewed before the tenure's end.
    async fn keep(self, tenure: Tenure) {
        loop {
            tokio::select! {
                () = tenure.lost.cancelled() => return,
                () = tokio::time::sleep(self.timings.renew) => {}
            }
            let Some(until) = tenure.until() else { return };
            let started = Instant::now();
            match tokio::time::timeout_at(until, self.gate.take(self.clock.now())).await {
                Ok(Ok(Some(fence))) if fence == tenure.fence => {
                    tenure.extend(self.tenure_end(started));
                    continue;
                }
                Ok(Ok(_)) => {
                    tracing::warn!(
                        fence = tenure.fence,
                        "another replica holds the gateway lease: closing the gateway"
                    );
                    tenure.end();
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error.message = %e, "could not renew the gateway lease");
                }
                Err(_) => {}
            }
            if !tenure.is_current() {
                tracing::warn!(
                    fence = tenure.fence,
                    "the gateway lease could not be renewed in time: closing the gateway"
                );
                tenure.end();
                return;
            }
        }
    }

    /// Gives the lease up (on shutdown), so a standby takes it at once.
    pub async fn release(&self) {
        if !self.gate.single_replica() {
            self.gate.release(self.clock.now()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_id_is_stable_within_a_process() {
        assert_eq!(replica_id(), replica_id());
        assert!(replica_id().len() > 8);
    }

    #[test]
    fn the_default_gateway_lease_keeps_its_pace() {
        let t = GatewayTimings::for_ttl(GATEWAY_TTL);
        assert_eq!(t.renew, Duration::from_secs(2));
        assert_eq!(t.margin, Duration::from_secs(3));
        assert_eq!(t.standby_poll, Duration::from_secs(1));
    }

    #[test]
    fn a_lease_outlives_two_rounds() {
        let every = std::time::Duration::from_secs(300);
        assert_eq!(ttl_for(every), chrono::Duration::seconds(610));
    }
}
