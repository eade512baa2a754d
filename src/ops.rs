//! Operations endpoints: `/healthz` (the process answers), `/readyz` (it can
//! do its job: database, Discord, an ARM token) and `/metrics` (Prometheus).
//!
//! In gateway mode they listen on `ops.listen`; in HTTP mode they share the
//! router (and port, `http.listen`) of the interactions endpoint.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::azure::TokenSource;
use crate::clock::SharedClock;
use crate::discord::GatewayStatus;
use crate::metrics::Snapshot;
use crate::store::Store;

/// How long a successful token check is trusted (azure_identity caches the
/// token itself; this only keeps probes cheap).
const TOKEN_OK_TTL: Duration = Duration::from_secs(60);
/// How long a failed token check is remembered before trying again.
const TOKEN_FAILED_TTL: Duration = Duration::from_secs(5);
/// The longest a readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// How chat reaches the bot, for readiness.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Gateway mode: ready while the websocket is connected.
    Gateway(GatewayStatus),
    /// HTTP mode: this router is the interactions endpoint, so answering
    /// `/readyz` means it is serving.
    Endpoint,
}

/// What the endpoints look at.
pub struct Ops {
    store: Store,
    tokens: Arc<dyn TokenSource>,
    transport: Transport,
    clock: SharedClock,
    token_check: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl Ops {
    pub fn new(
        store: Store,
        tokens: Arc<dyn TokenSource>,
        transport: Transport,
        clock: SharedClock,
    ) -> Self {
        Self {
            store,
            tokens,
            transport,
            clock,
            token_check: Mutex::new(None),
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

    async fn token_ok(&self) -> Result<(), String> {
        if let Some((at, result)) = &*self.token_check.lock().unwrap_or_else(|e| e.into_inner()) {
            let ttl = if result.is_ok() {
                TOKEN_OK_TTL
            } else {
                TOKEN_FAILED_TTL
            };
            if at.elapsed() < ttl {
                return result.clone();
            }
        }
        let result = match tokio::time::timeout(CHECK_TIMEOUT, self.tokens.bearer()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_owned()),
        };
        *self.token_check.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), result.clone()));
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
            scheduler_lag: lag,
            active_grants: active as u64,
        })
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    let database = match tokio::time::timeout(CHECK_TIMEOUT, ops.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    };
    let discord = match &ops.transport {
        Transport::Gateway(status) if status.is_connected() => Ok(()),
        Transport::Gateway(_) => Err("gateway not connected".to_owned()),
        Transport::Endpoint => Ok(()),
    };
    let azure = ops.token_ok().await;
    let ready = database.is_ok() && discord.is_ok() && azure.is_ok();
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    if !ready {
        tracing::warn!(database = %show(&database), discord = %show(&discord), azure_token = %show(&azure), "not ready");
    }
    let body = json!({
        "ready": ready,
        "checks": {
            "database": show(&database),
            "discord": show(&discord),
            "azure_token": show(&azure),
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
    let snapshot = match ops.snapshot().await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error.message = %e, "reading the metrics snapshot failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, "store unavailable\n").into_response();
        }
    };
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::global().render(&snapshot),
    )
        .into_response()
}

/// The URL `drawbridge healthcheck` probes: the ops listener in gateway
/// mode, the interactions endpoint's listener in HTTP mode, with an
/// unspecified address (`0.0.0.0`, `::`) replaced by loopback.
pub fn healthz_url(settings: &crate::config::Settings) -> String {
    let mut addr = match settings.discord.mode {
        crate::config::DiscordMode::Gateway => settings.ops.listen,
        crate::config::DiscordMode::Http => settings.http.listen,
    };
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
    fn the_healthcheck_probes_the_listener_of_the_mode_on_loopback() {
        assert_eq!(healthz_url(&settings(&[])), "http://127.0.0.1:9090/healthz");
        let http = settings(&[
            ("DRAWBRIDGE__DISCORD__MODE", "http"),
            ("DRAWBRIDGE__HTTP__LISTEN", "[::]:8443"),
        ]);
        assert_eq!(healthz_url(&http), "http://[::1]:8443/healthz");
        let fixed = settings(&[("DRAWBRIDGE__OPS__LISTEN", "10.0.0.5:9100")]);
        assert_eq!(healthz_url(&fixed), "http://10.0.0.5:9100/healthz");
    }
}
