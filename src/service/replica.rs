//! This replica among several: its id, and the work that one replica at a
//! time does, chosen by a lease in the database ([`crate::store::leases`]).
//!
//! | lease | what its holder does | the others |
//! |---|---|---|
//! | `outbox_audit` | posts the audit channel, in log order | deliver their own claimed rows only |
//! | `reconcile` | compares Azure's requests with the grants | nothing |
//! | `index_refresh` | lists the JIT policies every `azure.index_refresh` | list every [`STANDBY_INDEX_PACE`] intervals |
//!
//! Why the others still list, at a slower pace: each replica answers
//! `/jit` from its own in-memory VM index, and a miss already refreshes it.
//! A shared table would save those reads but adds a schema and a second
//! source of truth; three replicas list 1 + 2/3 as often as one (see
//! BENCHMARKS.md), far under ARM's read limits.
//!
//! With SQLite (one replica) the leases are taken all the same, by the only
//! replica, at no cost.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};

use crate::store::Store;

/// The audit channel's ordered stream.
pub const OUTBOX_AUDIT: &str = "outbox_audit";
/// Reconciliation with Azure.
pub const RECONCILE: &str = "reconcile";
/// The VM index refresh at full pace.
pub const INDEX_REFRESH: &str = "index_refresh";
/// Every lease, for `/readyz`.
pub const LEASES: [&str; 3] = [OUTBOX_AUDIT, RECONCILE, INDEX_REFRESH];
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
        if self.store.single_replica() {
            return true;
        }
        match self
            .store
            .try_lease(self.name, &self.holder, now, self.ttl)
            .await
        {
            Ok(lease) => lease.is_some(),
            Err(e) => {
                tracing::warn!(lease = self.name, error.message = %e, "could not take a lease");
                false
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_id_is_stable_within_a_process() {
        assert_eq!(replica_id(), replica_id());
        assert!(replica_id().len() > 8);
    }

    #[test]
    fn a_lease_outlives_two_rounds() {
        let every = std::time::Duration::from_secs(300);
        assert_eq!(ttl_for(every), chrono::Duration::seconds(610));
    }
}
