//! Operations endpoints: `/healthz` (the process answers), `/readyz` (it can
//! do its job: database, Discord, an ARM token; which role this replica has
//! among several: `active` with the leases it holds, or `standby`; in
//! gateway mode whether it holds the gateway session (`holder`) or waits
//! for it (`standby`, ready all the same: it takes over when the holder
//! dies); and where
//! the VM index stands, `loading` or `ready (N VMs)`, without failing on it:
//! the bot answers while the index loads) and `/metrics` (Prometheus).
//!
//! They listen on `ops.listen` (default `127.0.0.1:9090`) in both modes,
//! never beside the interactions endpoint, which faces the internet: their
//! answers say what is open and what is failing. Even so, they give away
//! little and cost little: `/readyz` says what is wrong in general words
//! (the details go to the log), and `/metrics` serves gauges read from the
//! database on a timer ([`Ops::serve`]), so a flood of scrapes runs no query.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::azure::{TokenError, TokenSource};
use crate::clock::SharedClock;
use crate::discord::GatewayStatus;
use crate::metrics::Snapshot;
use crate::service::jit_port::{IndexState, JitPort};
use crate::store::Store;

/// How long a successful token check is trusted (azure_identity caches the
/// token itself; this only keeps probes cheap).
const TOKEN_OK_TTL: Duration = Duration::from_secs(60);
/// How long a failed token check is remembered before trying again.
const TOKEN_FAILED_TTL: Duration = Duration::from_secs(5);
/// The longest a readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What `/readyz` says about a failed check: general words only.
const DATABASE_DOWN: &str = "the database does not answer";
const GATEWAY_DOWN: &str = "not connected to Discord";
const TOKEN_TIMED_OUT: &str = "the Azure token service did not answer in time";

/// How chat reaches the bot, for readiness.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Gateway mode: ready while the websocket is connected.
    Gateway(GatewayStatus),
    /// HTTP mode: the interactions endpoint serves from this process.
    Endpoint,
}

/// What the endpoints look at.
pub struct Ops {
    store: Store,
    tokens: Arc<dyn TokenSource>,
    /// For the VM index's state.
    jit: Arc<dyn JitPort>,
    transport: Transport,
    clock: SharedClock,
    refresh_every: Duration,
    token_check: Mutex<Option<(Instant, Result<(), &'static str>)>>,
    /// The state gauges as last read (see [`Ops::refresh`]).
    gauges: Mutex<Snapshot>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl Ops {
    /// The endpoints over `store` and `tokens`; the gauges of `/metrics`
    /// are re-read every `refresh_every` while [`Ops::serve`] runs.
    pub fn new(
        store: Store,
        tokens: Arc<dyn TokenSource>,
        jit: Arc<dyn JitPort>,
        transport: Transport,
        clock: SharedClock,
        refresh_every: Duration,
    ) -> Self {
        Self {
            store,
            tokens,
            jit,
            transport,
            clock,
            refresh_every,
            token_check: Mutex::new(None),
            gauges: Mutex::new(Snapshot::default()),
        }
    }

    /// The routes: `GET /healthz`, `/readyz`, `/metrics`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self)
    }

    /// Serves the routes on `listener`, behind the limits of
    /// [`crate::surface::harden`], until `stop` is cancelled; reads the
    /// gauges once first, then every `refresh_every`.
    ///
    /// # Errors
    /// The listener fails.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        stop: CancellationToken,
    ) -> std::io::Result<()> {
        self.refresh().await;
        let ops = Arc::clone(&self);
        let refresher_stop = stop.clone();
        let refresher = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = refresher_stop.cancelled() => break,
                    _ = tokio::time::sleep(ops.refresh_every) => ops.refresh().await,
                }
            }
        });
        let served = axum::serve(listener, crate::surface::harden(self.router()))
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        refresher.abort();
        served
    }

    /// Reads the state gauges from the store into the cache `/metrics`
    /// serves; on a failure the previous values stay (and it is logged).
    pub async fn refresh(&self) {
        match self.snapshot().await {
            Ok(snapshot) => *self.gauges.lock().unwrap_or_else(|e| e.into_inner()) = snapshot,
            Err(e) => {
                tracing::warn!(error.message = %e, "reading the metrics gauges failed; keeping the last ones");
            }
        }
    }

    fn gauges(&self) -> Snapshot {
        *self.gauges.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn token_ok(&self) -> Result<(), &'static str> {
        if let Some((at, result)) = &*self.token_check.lock().unwrap_or_else(|e| e.into_inner()) {
            let ttl = if result.is_ok() {
                TOKEN_OK_TTL
            } else {
                TOKEN_FAILED_TTL
            };
            if at.elapsed() < ttl {
                return *result;
            }
        }
        let result = match tokio::time::timeout(CHECK_TIMEOUT, self.tokens.bearer()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(error.message = %e, "readiness: no ARM token");
                Err(token_problem(&e))
            }
            Err(_) => {
                tracing::warn!("readiness: the ARM token check timed out");
                Err(TOKEN_TIMED_OUT)
            }
        };
        *self.token_check.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), result));
        result
    }

    /// Reads the state gauges from the store.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn snapshot(&self) -> Result<Snapshot, crate::store::StoreError> {
        let now = self.clock.now();
        let outbox = self.store.outbox_stats(now).await?;
        let lag = self
            .store
            .next_due(1)
            .await?
            .first()
            .and_then(|item| (now - item.due_at).to_std().ok())
            .unwrap_or_default();
        let active = self.store.open_grants().await?.len();
        Ok(Snapshot {
            outbox_depth: outbox.depth,
            outbox_oldest_age: outbox
                .oldest_age
                .and_then(|a| a.to_std().ok())
                .unwrap_or_default(),
            audit_oldest_age: outbox
                .audit_oldest_age
                .and_then(|a| a.to_std().ok())
                .unwrap_or_default(),
            scheduler_lag: lag,
            active_grants: active as u64,
        })
    }
}

/// A token failure in general words: which setting to look at, never the
/// token service's own text (which can hold URLs, tenant and client ids).
fn token_problem(error: &TokenError) -> &'static str {
    match error {
        TokenError::Configuration { .. } => "the Azure credential is misconfigured",
        TokenError::Acquire { .. } => "the Azure token service refused or failed",
        TokenError::UnknownAudience { .. } => {
            "the token service does not know the audience: check azure.arm_audience"
        }
        TokenError::Timeout { .. } => TOKEN_TIMED_OUT,
    }
}

impl Ops {
    /// This replica's role among several: `active` while it holds any of
    /// the leases of one-at-a-time work (listed), `standby` otherwise, and
    /// `unknown` when the database does not say.
    async fn role(&self) -> (&'static str, Vec<&'static str>) {
        use crate::service::replica::{GATEWAY, LEASES, replica_id};
        // The gateway lease is taken in gateway mode only.
        let leases = LEASES
            .into_iter()
            .filter(|l| *l != GATEWAY || matches!(self.transport, Transport::Gateway(_)));
        if self.store.single_replica() {
            // SQLite: the one replica does every leased job, without leases.
            return ("active", leases.collect());
        }
        let now = self.clock.now();
        let mut held = Vec::new();
        for name in leases {
            match self.store.lease(name, now).await {
                Ok(Some(lease)) if lease.holder == replica_id() => held.push(name),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error.message = %e, "readiness: could not read the leases");
                    return ("unknown", held);
                }
            }
        }
        (if held.is_empty() { "standby" } else { "active" }, held)
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    let database = match tokio::time::timeout(CHECK_TIMEOUT, ops.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::warn!(error.message = %e, "readiness: the database does not answer");
            Err(DATABASE_DOWN)
        }
        Err(_) => {
            tracing::warn!("readiness: the database ping timed out");
            Err(DATABASE_DOWN)
        }
    };
    let discord = match &ops.transport {
        Transport::Gateway(status) if status.is_connected() || status.is_standby() => Ok(()),
        Transport::Gateway(_) => Err(GATEWAY_DOWN),
        Transport::Endpoint => Ok(()),
    };
    let azure = ops.token_ok().await;
    let ready = database.is_ok() && discord.is_ok() && azure.is_ok();
    let show = |r: &Result<(), &'static str>| match r {
        Ok(()) => "ok",
        Err(e) => e,
    };
    if !ready {
        tracing::warn!(
            database = show(&database),
            discord = show(&discord),
            azure_token = show(&azure),
            "not ready"
        );
    }
    let (role, held) = ops.role().await;
    let vm_index = match ops.jit.index_state() {
        IndexState::Loading => "loading".to_owned(),
        IndexState::Failed => "not loaded: Azure could not be listed yet".to_owned(),
        IndexState::Ready { vms } => format!("ready ({vms} VMs)"),
    };
    let gateway = match &ops.transport {
        Transport::Gateway(status) if status.is_standby() => Some("standby"),
        Transport::Gateway(_) => Some("holder"),
        Transport::Endpoint => None,
    };
    let body = json!({
        "ready": ready,
        "replica": crate::service::replica::replica_id(),
        "role": role,
        "leases": held,
        "gateway": gateway,
        "checks": {
            "database": show(&database),
            "discord": show(&discord),
            "azure_token": show(&azure),
            "vm_index": vm_index,
        }
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::global().render(&ops.gauges()),
    )
        .into_response()
}

/// The URL `drawbridge healthcheck` probes: the ops listener (in both
/// modes), with an unspecified address (`0.0.0.0`, `::`) replaced by
/// loopback.
pub fn healthz_url(settings: &crate::config::Settings) -> String {
    let mut addr = settings.ops.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    format!("http://{addr}/healthz")
}

/// `drawbridge healthcheck`: GETs `url`; `Ok` on a 2xx answer within 3 s.
///
/// # Errors
/// Anything else, with why.
pub async fn probe(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    let response = client.get(url).send().await?;
    anyhow::ensure!(
        response.status().is_success(),
        "{url} answered {}",
        response.status()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, Sources};

    fn settings(env: &[(&str, &str)]) -> Settings {
        Settings::load(&Sources {
            file: None,
            env: Some(
                env.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        })
        .expect("valid settings")
    }

    #[test]
    fn the_healthcheck_probes_the_ops_listener_on_loopback() {
        assert_eq!(healthz_url(&settings(&[])), "http://127.0.0.1:9090/healthz");
        let http = settings(&[
            ("DRAWBRIDGE__DISCORD__MODE", "http"),
            ("DRAWBRIDGE__HTTP__LISTEN", "[::]:8443"),
            ("DRAWBRIDGE__OPS__LISTEN", "[::]:9100"),
        ]);
        assert_eq!(healthz_url(&http), "http://[::1]:9100/healthz");
        let fixed = settings(&[("DRAWBRIDGE__OPS__LISTEN", "10.0.0.5:9100")]);
        assert_eq!(healthz_url(&fixed), "http://10.0.0.5:9100/healthz");
    }
}
