//! Startup and shutdown: build every part from [`Settings`], bind the
//! listener, run the chat transport and the workers until a shutdown signal,
//! then stop in order.
//!
//! [`App::build`] wires the store, the Azure adapter and the use cases;
//! [`App::start_workers`] starts the scheduler, the outbox, the
//! reconciliation with Azure, the index refresh and the mappings reload;
//! [`App::bind`] binds the listeners (so port 0 works and callers learn the
//! ports before anything runs): the ops endpoints on `ops.listen` always,
//! and in HTTP mode the interactions endpoint on `http.listen`, a listener
//! of its own that serves nothing else. [`Server::run`] adds the Discord
//! transport (gateway or HTTP mode) and waits for the shutdown future.
//! Tests and the demo call the same functions.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::azure::index::DEFAULT_MISS_FLOOR;
use crate::azure::{
    ArmClient, ArmClientOptions, ArmJit, AzureTokenSource, CredentialOptions, RetryPolicy,
    SharedVmIndex, TokenSource, UserAssigned, resolve_endpoints,
};
use crate::clock::SharedClock;
use crate::config::{DiscordMode, Settings};
use crate::domain::{AuditAction, AuditEvent, Outcome};
use crate::interactions::{ChatSender, InteractionHandler, MemberDirectory};
use crate::service::audit_watch::AuditWatch;
use crate::service::bot::Bot;
use crate::service::delivery::Deliverer;
use crate::service::reconcile::{self, Reconciler};
use crate::service::replica::{self, GatewayLease, LeaseGate};
use crate::service::scheduler::Scheduler;
use crate::service::{Service, ServiceConfig};
use crate::store::Store;

/// How often every replica re-reads the mappings.
const MAPPINGS_RELOAD: Duration = Duration::from_secs(30);
/// The longest in-flight work may take after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The assembled application: every part, nothing running yet.
pub struct App {
    pub settings: Settings,
    pub service: Service,
    pub azure: Arc<ArmJit>,
    pub clock: SharedClock,
    /// ARM tokens (also probed by `/readyz`).
    pub tokens: Arc<dyn TokenSource>,
    /// The start-up load of the VM index (stopped if the app is dropped).
    _index_loader: tokio_util::task::AbortOnDropHandle<()>,
}

/// Running background workers; [`Workers::stop`] ends them in order.
pub struct Workers {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Workers {
    /// Stops the workers (the outbox gets a short last flush) and waits.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("workers did not stop within the grace period");
        }
    }
}

impl App {
    /// Builds every part from `settings`. The VM index starts loading in
    /// the background and the bot answers meanwhile ([`App::index_load`]
    /// says when it is done); if Azure cannot be reached, the index fills
    /// on the next refresh or miss.
    ///
    /// # Errors
    /// A bad credential configuration or an unusable database.
    pub async fn build(settings: Settings, clock: SharedClock) -> anyhow::Result<App> {
        let store = Store::open_with(&settings.database.url, &settings.database.store_options())
            .await
            .with_context(|| {
                format!(
                    "opening the database {}",
                    crate::store::display_url(&settings.database.url)
                )
            })?;
        let (azure, tokens) = build_azure(&settings, &clock)?;
        let loading = Arc::clone(&azure);
        let index_load = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            match loading.refresh().await {
                Ok(n) => tracing::info!(vms = n, "VM index built"),
                Err(e) => {
                    tracing::warn!(error.message = %e, "the VM index could not be built yet; it will be retried")
                }
            }
        }));
        let service = Service::new(
            store,
            Arc::clone(&azure) as _,
            Arc::clone(&clock),
            ServiceConfig {
                aliases: settings.ports.clone(),
                reminders_before: settings.reminders.before.clone(),
                admin_roles: settings.discord.admin_role_ids.clone(),
                home_guild: settings.discord.guild_id.map(|g| g.get()),
                rate_limit: settings.limits,
                public_url: settings.http.public_url.clone(),
                approvals_channel: settings
                    .discord
                    .approvals_channel_id
                    .or(settings.discord.audit_channel_id)
                    .map(|c| c.get()),
                audit_channel: settings.discord.audit_channel_id.map(|c| c.get()),
                alert_role: settings.discord.alert_role_id,
                weekly_report: settings.report.weekly,
                requestor_names: settings.azure.requestor_names.clone(),
            },
        )
        .await
        .context("loading the role mappings")?;
        Ok(App {
            settings,
            service,
            azure,
            clock,
            tokens,
            _index_loader: index_load,
        })
    }

    /// Resolves once the start-up load of the VM index has ended, built or
    /// failed (tests and the demo wait for it; the bot does not).
    pub async fn index_load(&self) {
        self.azure.index().settled().await;
    }

    /// The operations endpoints (`/healthz`, `/readyz`, `/metrics`).
    pub fn ops(&self, transport: crate::ops::Transport) -> Arc<crate::ops::Ops> {
        Arc::new(crate::ops::Ops::new(
            self.service.store().clone(),
            Arc::clone(&self.tokens),
            Arc::clone(&self.azure) as _,
            transport,
            Arc::clone(&self.clock),
            self.settings.ops.metrics_refresh,
        ))
    }

    /// The interaction handler over the use cases, without a member
    /// directory: a button pressed in a DM acts with no roles.
    pub fn handler(&self) -> Arc<dyn InteractionHandler> {
        Arc::new(Bot::new(self.service.clone()))
    }

    /// The interaction handler, reading the roles of a member who presses
    /// a button in a DM from `members`.
    pub fn handler_with(&self, members: Arc<dyn MemberDirectory>) -> Arc<dyn InteractionHandler> {
        Arc::new(Bot::new(self.service.clone()).with_members(members))
    }

    /// Starts the scheduler, the outbox delivering through `sender`, the
    /// reconciliation with Azure, the index refresh and the mappings reload.
    pub fn start_workers(&self, sender: Arc<dyn ChatSender>) -> Workers {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let wakers = self.service.wakers().clone();
        let scheduler = Scheduler::new(
            self.service.clone(),
            format!("worker-{}", uuid::Uuid::new_v4().simple()),
        );
        tracker.spawn(scheduler.run(
            wakers.scheduler.clone(),
            wakers.outbox.clone(),
            cancel.clone(),
        ));
        let deliverer = Deliverer::new(
            self.service.store().clone(),
            sender,
            Arc::clone(&self.clock),
            self.settings.discord.audit_channel_id.map(|c| c.get()),
        );
        tracker.spawn(deliverer.run(wakers.outbox.clone(), cancel.clone()));
        let reconciler =
            Reconciler::new(self.service.clone()).with_in_flight(reconcile::in_flight_for(
                self.settings.azure.request_timeout,
                RetryPolicy::default().max_total,
            ));
        tracker.spawn(reconciler.run(self.settings.azure.reconcile_interval, cancel.clone()));
        tracker.spawn(self.index_refresh(cancel.clone()));
        let service = self.service.clone();
        let stop = cancel.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(MAPPINGS_RELOAD) => {
                        if let Err(e) = service.reload_mappings().await {
                            tracing::warn!(error.message = %e, "reloading the mappings failed");
                        }
                    }
                }
            }
        });
        Workers { cancel, tracker }
    }

    /// Refreshes the VM index every `azure.index_refresh` while this
    /// replica holds the index lease, and every
    /// [`replica::STANDBY_INDEX_PACE`] intervals while another does (see
    /// [`crate::service::replica`]).
    fn index_refresh(&self, stop: CancellationToken) -> impl Future<Output = ()> + use<> {
        let azure = Arc::clone(&self.azure);
        let clock = Arc::clone(&self.clock);
        let every = self.settings.azure.index_refresh;
        let lease = LeaseGate::new(
            self.service.store().clone(),
            replica::INDEX_REFRESH,
            replica::replica_id(),
            replica::ttl_for(every),
        );
        async move {
            let mut rounds: u32 = 0;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                rounds = rounds.wrapping_add(1);
                let due = lease.hold(clock.now()).await
                    || rounds.is_multiple_of(replica::STANDBY_INDEX_PACE);
                // The reconciler's listing rebuilds the index too, so on the
                // replica that reconciles this usually reads nothing.
                let max_age = chrono::TimeDelta::from_std(every).unwrap_or(chrono::TimeDelta::MAX);
                if due && let Err(e) = azure.refresh_if_older(max_age).await {
                    tracing::warn!(error.message = %e, "VM index refresh failed; keeping the old one");
                }
            }
            lease.release(clock.now()).await;
        }
    }

    /// Verifies the audit chain now (a break is audited, so it reaches the
    /// audit channel) and then hourly among `workers`.
    async fn watch_audit(&self, workers: &Workers) {
        let mut watch = AuditWatch::new(self.service.clone());
        if let Err(e) = watch.check().await {
            tracing::warn!(error.message = %e, "verifying the audit chain at start-up failed");
        }
        workers.tracker.spawn(watch.run(workers.cancel.clone()));
    }

    /// The `bot_started` event: the version, the effective configuration
    /// (no secrets) and the chain head it starts from.
    async fn audit_started(&self) {
        let head = match self.service.store().audit_head().await {
            Ok((seq, hash)) => json!({"seq": seq, "hash": hash}),
            Err(e) => {
                tracing::warn!(error.message = %e, "could not read the audit head");
                serde_json::Value::Null
            }
        };
        self.audit_lifecycle(
            AuditAction::BotStarted,
            json!({
                "version": env!("CARGO_PKG_VERSION"),
                "config": self.settings.audit_summary(),
                "chain_head": head,
            }),
        )
        .await;
    }

    async fn audit_lifecycle(&self, action: AuditAction, detail: serde_json::Value) {
        let event = AuditEvent::new(
            self.clock.now(),
            "system",
            action,
            "drawbridge",
            Outcome::Info,
        )
        .with_detail(detail);
        match self.service.store().append_audit(&event).await {
            Ok(_) => self.service.wake_after(()),
            Err(e) => tracing::error!(error.message = %e, "could not audit {action}"),
        }
    }

    /// Binds the listeners: the ops endpoints on `ops.listen`, and in HTTP
    /// mode the interactions endpoint on `http.listen`. Port 0 takes any
    /// free port: [`Server::ops_addr`] and [`Server::interactions_addr`]
    /// say which, and so does the log.
    ///
    /// # Errors
    /// An address cannot be bound.
    pub async fn bind(self) -> anyhow::Result<Server> {
        let ops = Bound::bind(self.settings.ops.listen, "ops.listen", "ops endpoints").await?;
        let what = match self.settings.discord.mode {
            DiscordMode::Http => Some("interactions endpoint"),
            DiscordMode::Gateway if self.settings.http.public_url.is_some() => Some("IP page"),
            DiscordMode::Gateway => None,
        };
        let interactions = match what {
            Some(what) => Some(Bound::bind(self.settings.http.listen, "http.listen", what).await?),
            None => None,
        };
        Ok(Server {
            app: self,
            ops,
            interactions,
        })
    }

    async fn serve_http(
        &self,
        listener: TcpListener,
        http: Arc<serenity::http::Http>,
        handler: Arc<dyn InteractionHandler>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let discord = &self.settings.discord;
        crate::discord::commands::register(&http, discord).await?;
        let key = discord
            .public_key
            .context("discord.public_key is required in http mode")?;
        let tracker = TaskTracker::new();
        let mut router = crate::discord::interactions_router(
            key,
            http,
            handler,
            Arc::clone(&self.clock),
            tracker.clone(),
            Arc::new(self.service.store().clone()),
        )?;
        router = router.merge(self.pages());
        let served = serve_router(listener, router, shutdown)
            .await
            .context("serving the interactions endpoint");
        tracker.close();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await;
        served
    }

    /// Gateway mode with `http.public_url` set: the gateway, and the IP
    /// page on `listener` until the gateway stops.
    async fn gateway_and_pages(
        &self,
        listener: TcpListener,
        handler: Arc<dyn InteractionHandler>,
        status: crate::discord::GatewayStatus,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let pages = tokio::spawn(serve_router(
            listener,
            self.pages(),
            stop.clone().cancelled_owned(),
        ));
        let result = self.gateway(handler, status, shutdown).await;
        stop.cancel();
        match pages.await {
            Ok(Err(e)) => tracing::error!(error.message = %e, "the IP page listener failed"),
            Err(e) => tracing::error!(error.message = %e, "the IP page task failed"),
            Ok(Ok(())) => {}
        }
        result
    }

    /// Gateway mode until `shutdown`: holds the Discord gateway session
    /// while this replica holds the gateway lease (always, with one
    /// replica), and stands by while another does (see
    /// [`crate::service::replica`]).
    async fn gateway(
        &self,
        handler: Arc<dyn InteractionHandler>,
        status: crate::discord::GatewayStatus,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let _signal = tokio_util::task::AbortOnDropHandle::new(tokio::spawn({
            let stop = stop.clone();
            async move {
                shutdown.await;
                stop.cancel();
            }
        }));
        let lease = GatewayLease::new(
            self.service.store().clone(),
            Arc::clone(&self.clock),
            self.settings.discord.gateway_lease_ttl,
        );
        loop {
            status.set_standby(true);
            let Some(tenure) = lease.acquire(&stop).await else {
                return Ok(());
            };
            status.set_standby(false);
            let result = crate::discord::run_gateway(
                &self.settings.discord,
                Arc::clone(&handler),
                status.clone(),
                tenure.clone(),
                stop.clone().cancelled_owned(),
            )
            .await;
            tenure.end();
            if stop.is_cancelled() || result.is_err() {
                lease.release().await;
                return result;
            }
            tracing::info!("standing by for the gateway lease");
        }
    }

    /// What `http.listen` serves beside the interactions endpoint: the IP
    /// page when `http.public_url` is set, and `/healthz` if asked.
    fn pages(&self) -> axum::Router {
        let mut router = axum::Router::new();
        if self.settings.http.public_url.is_some() {
            router = router.merge(crate::ip_page::router(
                self.service.clone(),
                self.settings.http.trusted_proxies.clone(),
            ));
        }
        if self.settings.http.healthz {
            router = router.route("/healthz", axum::routing::get(|| async { "ok\n" }));
        }
        router
    }
}

/// Serves `router` behind [`crate::surface::harden`], with the peer's
/// address available to handlers (the IP page reads it).
async fn serve_router(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let service =
        crate::surface::harden(router).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(shutdown)
        .await
}

impl App {}

/// A bound listener and its address.
struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Bound {
    async fn bind(listen: SocketAddr, key: &str, what: &str) -> anyhow::Result<Bound> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen} ({key})"))?;
        let addr = listener
            .local_addr()
            .context("reading the listen address")?;
        tracing::info!(listen = %addr, "{what} listening");
        Ok(Bound { listener, addr })
    }
}

/// The [`App`] with its listeners bound ([`App::bind`]), ready to run.
pub struct Server {
    app: App,
    ops: Bound,
    interactions: Option<Bound>,
}

impl Server {
    /// The address of the ops endpoints (`/healthz`, `/readyz`, `/metrics`).
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops.addr
    }

    /// HTTP mode: the address of the interactions endpoint
    /// (`POST /interactions`).
    pub fn interactions_addr(&self) -> Option<SocketAddr> {
        match self.app.settings.discord.mode {
            DiscordMode::Http => self.http_addr(),
            DiscordMode::Gateway => None,
        }
    }

    /// The address of the `http.listen` listener, in HTTP mode or when it
    /// serves the IP page (`http.public_url` set) in gateway mode.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.interactions.as_ref().map(|b| b.addr)
    }

    /// Runs the bot until `shutdown` resolves: the ops endpoints, Discord
    /// in the configured mode, and the workers. On shutdown new
    /// interactions are refused, in-flight ones finish (bounded), the
    /// outbox flushes briefly and the database closes.
    ///
    /// # Errors
    /// Missing Discord settings, or a transport that fails to start.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Server {
            app,
            ops,
            interactions,
        } = self;
        let discord = &app.settings.discord;
        if discord
            .token
            .as_ref()
            .is_none_or(|t| t.expose_secret().is_empty())
        {
            anyhow::bail!("discord.token is not set: set DRAWBRIDGE__DISCORD__TOKEN");
        }
        let http = crate::discord::discord_http(discord)?;
        let sender: Arc<dyn ChatSender> =
            Arc::new(crate::discord::DiscordSender::new(Arc::clone(&http)));
        let workers = app.start_workers(sender);
        app.watch_audit(&workers).await;
        app.audit_started().await;
        let handler = match discord.guild_id {
            Some(guild) => app.handler_with(Arc::new(crate::discord::GuildMembers::new(
                Arc::clone(&http),
                guild,
            ))),
            None => app.handler(),
        };
        let status = crate::discord::GatewayStatus::new();
        let endpoint = discord.mode == DiscordMode::Http;
        let transport = match endpoint {
            true => crate::ops::Transport::Endpoint,
            false => crate::ops::Transport::Gateway(status.clone()),
        };
        let ops_stop = CancellationToken::new();
        let ops_server = tokio::spawn(app.ops(transport).serve(ops.listener, ops_stop.clone()));
        let result = match interactions {
            Some(bound) if endpoint => {
                app.serve_http(bound.listener, http, handler, shutdown)
                    .await
            }
            Some(bound) => {
                app.gateway_and_pages(bound.listener, handler, status, shutdown)
                    .await
            }
            None => app.gateway(handler, status, shutdown).await,
        };
        ops_stop.cancel();
        let _ = ops_server.await;
        app.audit_lifecycle(
            AuditAction::BotStopped,
            json!({"version": env!("CARGO_PKG_VERSION")}),
        )
        .await;
        workers.stop().await;
        app.service.store().close().await;
        tracing::info!("stopped");
        result
    }
}

/// The Azure side from settings: the credential (as a token source, also
/// probed by `/readyz`), the ARM client and an empty VM index.
///
/// # Errors
/// Bad endpoints or a credential azure_identity refuses.
pub fn build_azure(
    settings: &Settings,
    clock: &SharedClock,
) -> anyhow::Result<(Arc<ArmJit>, Arc<dyn TokenSource>)> {
    let az = &settings.azure;
    let endpoints = resolve_endpoints(
        az.cloud,
        az.arm_endpoint.clone(),
        az.authority_host.clone(),
        az.arm_audience.clone(),
    )
    .context("resolving the Azure endpoints")?;
    let tokens: Arc<dyn TokenSource> = Arc::new(
        AzureTokenSource::new(CredentialOptions {
            kind: az.credential,
            tenant_id: az.tenant_id.clone(),
            client_id: az.client_id.clone(),
            client_secret: az.client_secret.clone(),
            user_assigned_id: az
                .managed_identity_client_id
                .clone()
                .map(UserAssigned::ClientId),
            federated_token_file: None,
            authority_host: endpoints.authority_host.clone(),
            scope: endpoints.arm_scope.clone(),
            managed_identity_endpoint: az.managed_identity_endpoint.clone(),
            timeout: az.request_timeout,
            clock: Arc::clone(clock),
        })
        .context("building the Azure credential")?,
    );
    let arm = ArmClient::new(ArmClientOptions {
        arm_endpoint: endpoints.arm.clone(),
        token_source: Arc::clone(&tokens),
        request_timeout: az.request_timeout,
        retry: RetryPolicy::default(),
        clock: Arc::clone(clock),
    })
    .context("building the ARM client")?;
    let azure = Arc::new(ArmJit::new(
        arm,
        SharedVmIndex::new(Arc::clone(clock), DEFAULT_MISS_FLOOR),
        az.subscriptions.iter().map(|s| s.to_string()).collect(),
        az.enable.clone(),
    ));
    Ok((azure, tokens))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT: shutting down"),
        _ = terminate => tracing::info!("SIGTERM: shutting down"),
    }
}
