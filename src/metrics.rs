//! Process metrics in the Prometheus text format, with `prometheus-client`
//! (the Prometheus project's own Rust client).
//!
//! Two kinds of numbers:
//!
//! - **Events**, counted where they happen, in one process-wide [`Metrics`]
//!   ([`global`]): interactions by command and outcome and the latency of
//!   their acknowledgement (recorded by the Discord dispatcher), and ARM
//!   requests by operation and status with their latency (recorded by the
//!   ARM client's [`ArmStats`](crate::azure::ArmStats)). A global, rather
//!   than a handle threaded through serenity's event handler and the HTTP
//!   endpoint, because these counters are per process by nature (one
//!   `/metrics` per process), and it keeps the hooks one line each. Tests
//!   that share a process compare deltas.
//! - **State**, read from the database at scrape time ([`Snapshot`]): outbox
//!   depth and oldest age, scheduler lag, active grants. Nothing to keep in
//!   sync, and every replica reports the shared store's view.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s output (OpenMetrics text,
/// which Prometheus scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Acknowledgement latency buckets, in seconds: Discord's limit is 3 s.
const ACK_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0];
/// ARM latency buckets, in seconds.
const ARM_BUCKETS: [f64; 11] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InteractionLabels {
    command: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ArmLabels {
    operation: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

fn ack_histogram() -> Histogram {
    Histogram::new(ACK_BUCKETS)
}

fn arm_histogram() -> Histogram {
    Histogram::new(ARM_BUCKETS)
}

/// The event counters of one process. Cheap to clone (shared families).
#[derive(Clone, Debug)]
pub struct Metrics {
    interactions: Family<InteractionLabels, Counter>,
    ack_latency: Family<KindLabels, Histogram, fn() -> Histogram>,
    arm_requests: Family<ArmLabels, Counter>,
    arm_latency: Family<OperationLabels, Histogram, fn() -> Histogram>,
    token_failures: Family<CredentialLabels, Counter>,
    refused: Family<KindLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialLabels {
    credential: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            interactions: Family::default(),
            ack_latency: Family::new_with_constructor(ack_histogram),
            arm_requests: Family::default(),
            arm_latency: Family::new_with_constructor(arm_histogram),
            token_failures: Family::default(),
            refused: Family::default(),
        }
    }
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

/// Values read from the store when `/metrics` is scraped.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Snapshot {
    /// Undelivered outbox rows.
    pub outbox_depth: u64,
    /// Age of the oldest undelivered row.
    pub outbox_oldest_age: Duration,
    /// Age of the oldest undelivered audit-channel post.
    pub audit_oldest_age: Duration,
    /// How late the most overdue timer is (zero when none is due).
    pub scheduler_lag: Duration,
    /// Grants whose window is open.
    pub active_grants: u64,
}

impl Metrics {
    /// One handled interaction: `command` is the slash command's name (or
    /// `button`, `autocomplete`), `outcome` what the member saw
    /// (`success`, `denied`, `error`, …).
    pub fn interaction(&self, command: &str, outcome: &str) {
        self.interactions
            .get_or_create(&InteractionLabels {
                command: command.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The time from receiving an interaction to acknowledging it.
    pub fn ack_latency(&self, kind: &str, latency: Duration) {
        self.ack_latency
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .observe(latency.as_secs_f64());
    }

    /// One ARM attempt; `status` 0 means no response (timeout, network).
    pub fn arm_request(&self, operation: &str, status: u16, latency: Duration) {
        let status = if status == 0 {
            "none".to_owned()
        } else {
            status.to_string()
        };
        self.arm_requests
            .get_or_create(&ArmLabels {
                operation: operation.to_owned(),
                status,
            })
            .inc();
        self.arm_latency
            .get_or_create(&OperationLabels {
                operation: operation.to_owned(),
            })
            .observe(latency.as_secs_f64());
    }

    /// A token the credential could not get (`credential`: the
    /// `azure.credential` value).
    pub fn token_failure(&self, credential: &str) {
        self.token_failures
            .get_or_create(&CredentialLabels {
                credential: credential.to_owned(),
            })
            .inc();
    }

    /// A message Discord refused for good (missing permission, unknown
    /// channel): `kind` is the outbox kind, such as `audit_channel`.
    pub fn delivery_refused(&self, kind: &str) {
        self.refused
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// The exposition: these counters plus `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut registry = Registry::with_prefix("drawbridge");
        registry.register(
            "interactions",
            "Interactions handled, by command and outcome",
            self.interactions.clone(),
        );
        registry.register(
            "interaction_ack_seconds",
            "Time from receiving an interaction to acknowledging it",
            self.ack_latency.clone(),
        );
        registry.register(
            "arm_requests",
            "Azure Resource Manager requests, by operation and HTTP status",
            self.arm_requests.clone(),
        );
        registry.register(
            "arm_request_seconds",
            "Azure Resource Manager request latency, by operation",
            self.arm_latency.clone(),
        );
        registry.register(
            "token_failures",
            "Failures to get an Azure token, by credential kind",
            self.token_failures.clone(),
        );
        registry.register(
            "delivery_refused",
            "Messages Discord refused for good (retried later), by outbox kind",
            self.refused.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str, value: f64| {
            let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
            g.set(value);
            registry.register(name, help, g);
        };
        gauge(
            &mut registry,
            "outbox_depth",
            "Outbox messages not yet delivered",
            snapshot.outbox_depth as f64,
        );
        gauge(
            &mut registry,
            "outbox_oldest_age_seconds",
            "Age of the oldest undelivered outbox message",
            snapshot.outbox_oldest_age.as_secs_f64(),
        );
        gauge(
            &mut registry,
            "audit_channel_oldest_undelivered_seconds",
            "Age of the oldest audit-channel post not yet delivered (later posts wait behind it)",
            snapshot.audit_oldest_age.as_secs_f64(),
        );
        gauge(
            &mut registry,
            "scheduler_lag_seconds",
            "How late the most overdue reminder or expiry is",
            snapshot.scheduler_lag.as_secs_f64(),
        );
        gauge(
            &mut registry,
            "active_grants",
            "Grants whose window is open",
            snapshot.active_grants as f64,
        );
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            // Writing to a String cannot fail; keep the endpoint answering anyway.
            let _ = writeln!(out, "# EOF");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_snapshot_are_rendered() {
        let m = Metrics::default();
        m.interaction("jit", "success");
        m.interaction("jit", "success");
        m.ack_latency("command", Duration::from_millis(3));
        m.arm_request("initiate", 202, Duration::from_millis(40));
        m.arm_request("initiate", 0, Duration::from_secs(30));
        let text = m.render(&Snapshot {
            outbox_depth: 2,
            active_grants: 1,
            ..Snapshot::default()
        });
        assert!(
            text.contains(r#"drawbridge_interactions_total{command="jit",outcome="success"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"drawbridge_arm_requests_total{operation="initiate",status="202"} 1"#)
        );
        assert!(text.contains(r#"status="none""#));
        assert!(
            text.contains(
                "drawbridge_interaction_ack_seconds_bucket{le=\"0.005\",kind=\"command\"} 1"
            ) || text.contains(
                "drawbridge_interaction_ack_seconds_bucket{kind=\"command\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("drawbridge_outbox_depth 2"));
        assert!(text.contains("drawbridge_active_grants 1"));
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
