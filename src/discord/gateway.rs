//! Gateway mode: interactions arrive over the websocket, acknowledgements go
//! to the REST callback.

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

/// How long shutdown waits for interactions already being handled.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the shard to close after that.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the gateway is connected (READY or RESUMED and not since
/// disconnected): for `/readyz`. Cheap to clone; all clones share one flag.
#[derive(Clone, Debug, Default)]
pub struct GatewayStatus {
    connected: Arc<AtomicBool>,
}

impl GatewayStatus {
    /// A status that starts disconnected.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the gateway is connected now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    fn set(&self, connected: bool) {
        self.connected.store(connected, Ordering::Release);
    }
}

/// Runs the bot in gateway mode until `shutdown` completes.
///
/// On READY the commands are registered (see [`commands::register`]); every
/// interaction is dispatched in a task of its own. When `shutdown`
/// completes: new interactions are ignored, the shard is closed (so Discord
/// stops delivering to this process), interactions in flight get up to 10 s
/// to finish their replies over REST, and the function returns `Ok`.
///
/// # Errors
///
/// When the token is missing, or the gateway stops by itself (for example
/// Discord refused the token).
pub async fn run_gateway(
    settings: &DiscordSettings,
    handler: Arc<dyn InteractionHandler>,
    status: GatewayStatus,
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
    }

    info!(in_flight = tracker.len(), "shutting down the gateway");
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
        let dispatcher = Dispatcher::new(ctx.http.clone(), self.handler.clone());
        self.tracker
            .spawn(async move { dispatcher.dispatch(interaction, Ack::Rest).await });
    }
}
