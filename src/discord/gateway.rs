//! Gateway mode: interactions arrive over the websocket, acknowledgements go
//! to the REST callback.
//!
//! With several replicas only the holder of the gateway lease connects
//! ([`crate::service::replica::Tenure`]): Discord delivers every event to
//! every session of a shard, so a second connected replica would answer
//! every interaction a second time. The holder ignores events and closes
//! its shard as soon as its tenure ends.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use serenity::all::{
    ConnectionStage, GatewayIntents, Interaction, Ready, ResumedEvent, ShardStageUpdateEvent,
};
use serenity::async_trait;
use serenity::client::{ClientBuilder, Context, EventHandler};
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::commands;
use super::dispatch::{Ack, Dispatcher};
use super::errors;
use crate::config::DiscordSettings;
use crate::interactions::InteractionHandler;
use crate::service::replica::Tenure;

/// How long shutdown waits for interactions already being handled.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the shard to close after that.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the gateway is connected (READY or RESUMED and not since
/// disconnected), and whether this replica holds the gateway session or
/// waits as a standby: for `/readyz`. Cheap to clone; all clones share the
/// flags.
#[derive(Clone, Debug, Default)]
pub struct GatewayStatus {
    connected: Arc<AtomicBool>,
    standby: Arc<AtomicBool>,
}

impl GatewayStatus {
    /// A status that starts disconnected, as the holder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the gateway is connected now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Whether this replica waits for another's gateway session to end.
    pub fn is_standby(&self) -> bool {
        self.standby.load(Ordering::Acquire)
    }

    /// Marks this replica a standby (`true`) or the holder.
    pub fn set_standby(&self, standby: bool) {
        self.standby.store(standby, Ordering::Release);
    }

    fn set(&self, connected: bool) {
        self.connected.store(connected, Ordering::Release);
    }
}

/// Runs the bot in gateway mode until `shutdown` completes or `tenure`
/// ends.
///
/// On READY the commands are registered (see [`commands::register`]); every
/// interaction is dispatched in a task of its own while `tenure` is
/// current. When `shutdown` completes or `tenure` ends: new interactions
/// are ignored, the shard is closed (so Discord stops delivering to this
/// process), interactions in flight get up to 10 s to finish their replies
/// over REST, and the function returns `Ok`.
///
/// # Errors
///
/// When the token is missing, or the gateway stops by itself (for example
/// Discord refused the token).
pub async fn run_gateway(
    settings: &DiscordSettings,
    handler: Arc<dyn InteractionHandler>,
    status: GatewayStatus,
    tenure: Tenure,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    // Setup A (see `build_http`); never `.token()` on the builder afterwards:
    // it would replace this `Http` and lose the redirection.
    let http = super::build_http(settings)?;
    let tracker = TaskTracker::new();
    let accepting = Arc::new(AtomicBool::new(true));
    let events = GatewayEvents {
        handler,
        settings: settings.clone(),
        tracker: tracker.clone(),
        accepting: accepting.clone(),
        status: status.clone(),
        registered: AtomicBool::new(false),
        tenure: tenure.clone(),
    };
    let mut client = ClientBuilder::new_with_http(http, GatewayIntents::GUILDS)
        .event_handler(events)
        .await
        .map_err(|e| anyhow::anyhow!(errors::describe(&e)))
        .context("building the Discord client")?;
    let shard_manager = client.shard_manager.clone();
    let mut running = tokio::spawn(async move { client.start().await });

    tokio::select! {
        ended = &mut running => {
            status.set(false);
            return match ended {
                Ok(Ok(())) => Err(anyhow::anyhow!("the Discord gateway stopped by itself")),
                Ok(Err(e)) => Err(anyhow::anyhow!(errors::describe(&e)))
                    .context("the Discord gateway failed"),
                Err(e) => Err(anyhow::anyhow!("the Discord gateway task failed: {e}")),
            };
        }
        () = shutdown => {}
        () = tenure.lost() => {}
    }

    info!(in_flight = tracker.len(), "closing the gateway");
    accepting.store(false, Ordering::Release);
    shard_manager.shutdown_all().await;
    status.set(false);
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            in_flight = tracker.len(),
            "interactions still running after the shutdown bound"
        );
    }
    if tokio::time::timeout(STOP_TIMEOUT, running).await.is_err() {
        warn!("the gateway client did not stop in time");
    }
    info!("gateway stopped");
    Ok(())
}

struct GatewayEvents {
    handler: Arc<dyn InteractionHandler>,
    settings: DiscordSettings,
    tracker: TaskTracker,
    /// Cleared at shutdown: later interactions are ignored.
    accepting: Arc<AtomicBool>,
    status: GatewayStatus,
    /// Commands are registered on the first READY that succeeds.
    registered: AtomicBool,
    /// Events are handled only while it is current.
    tenure: Tenure,
}

#[async_trait]
impl EventHandler for GatewayEvents {
    async fn ready(&self, ctx: Context, ready: Ready) {
        info!(user = %ready.user.name, guilds = ready.guilds.len(), "gateway ready");
        self.status.set(true);
        if self.registered.load(Ordering::Acquire) {
            return;
        }
        match commands::register(&ctx.http, &self.settings).await {
            Ok(()) => {
                self.registered.store(true, Ordering::Release);
                info!("slash commands registered");
            }
            Err(e) => error!(
                error = format!("{e:#}"),
                "could not register the slash commands"
            ),
        }
    }

    async fn resume(&self, _ctx: Context, _event: ResumedEvent) {
        self.status.set(true);
    }

    async fn shard_stage_update(&self, _ctx: Context, event: ShardStageUpdateEvent) {
        self.status.set(event.new == ConnectionStage::Connected);
    }

    async fn interaction_create(&self, ctx: Context, interaction: Interaction) {
        if !self.accepting.load(Ordering::Acquire) {
            info!(id = %interaction.id(), "shutting down: interaction ignored");
            return;
        }
        if !self.tenure.is_current() {
            warn!(id = %interaction.id(), fence = self.tenure.fence(), "the gateway lease has ended: interaction ignored");
            return;
        }
        let dispatcher = Dispatcher::new(ctx.http.clone(), self.handler.clone());
        self.tracker
            .spawn(async move { dispatcher.dispatch(interaction, Ack::Rest).await });
    }
}
