//! The Discord adapter: a chat transport over serenity 0.12.5.
//!
//! It knows nothing of Azure or the store. It registers the slash commands,
//! turns every interaction into the contract types of
//! [`crate::interactions`], acknowledges at once, calls the
//! [`InteractionHandler`](crate::interactions::InteractionHandler), and shows
//! the returned [`ChatMessage`](crate::chat::ChatMessage). Messages that are
//! not replies go through [`DiscordSender`].
//!
//! # Layout
//!
//! - [`commands`]: the command definitions and their bulk registration.
//! - `dispatch`: one path from a serenity `Interaction` to the handler and
//!   back, shared by both delivery modes; only the acknowledgement differs
//!   (a REST callback over the gateway, the HTTP response body in HTTP mode).
//! - [`builders`]: `ChatMessage` to serenity builders, within Discord's limits.
//! - [`sender`]: [`DiscordSender`], the [`ChatSender`](crate::interactions::ChatSender)
//!   for channel messages and DMs, paced by [`ratelimit`].
//! - [`members`]: [`GuildMembers`], the home guild's members over REST, for
//!   buttons pressed in a DM.
//! - [`gateway`]: [`run_gateway`], the websocket mode.
//! - [`endpoint`]: [`interactions_router`], the HTTP interactions mode.
//!
//! # Redirection ("setup A")
//!
//! Every REST call and the gateway URL come from `discord.base_url`: the
//! [`Http`] is built with `HttpBuilder::proxy` and the
//! ratelimiter disabled (see [`discord_http`]).

pub mod builders;
pub mod commands;
mod dispatch;
pub mod endpoint;
pub(crate) mod errors;
pub mod gateway;
pub mod members;
pub mod ratelimit;
pub mod sender;

use std::sync::Arc;

use anyhow::Context as _;
use secrecy::ExposeSecret as _;
use serenity::all::ApplicationId;
use serenity::http::{Http, HttpBuilder};

use crate::config::DiscordSettings;

pub use endpoint::interactions_router;
pub use gateway::{GatewayStatus, run_gateway};
pub use members::GuildMembers;
pub use sender::DiscordSender;

/// A serenity [`Http`] aimed at `discord.base_url`, with the application id
/// preset (HTTP mode has no READY to learn it from).
///
/// # Errors
///
/// When `discord.token` is not set.
pub fn discord_http(settings: &DiscordSettings) -> anyhow::Result<Arc<Http>> {
    build_http(settings).map(Arc::new)
}

/// Builds the `Http` of "setup A".
///
/// Why the proxy and no ratelimiter: serenity's REST routes are absolute
/// `https://discord.com/api/v10/...` URLs, and `HttpBuilder::proxy` replaces
/// that prefix with `discord.base_url`. But with the ratelimiter on, serenity
/// builds requests with no proxy at all (serenity#1739), so the setting would
/// be silently ignored and calls would go to the real Discord. The ratelimiter
/// is therefore always off: the sender paces itself with the buckets Discord's
/// headers announce ([`ratelimit`]), and a 429 that still comes is reported as
/// `SendError::Retry`. When `base_url` is the real
/// `https://discord.com`, the replacement is a no-op.
fn build_http(settings: &DiscordSettings) -> anyhow::Result<Http> {
    let token = settings
        .token
        .as_ref()
        .context("discord.token is not set")?;
    let proxy = settings.base_url.as_str().trim_end_matches('/').to_owned();
    let mut builder = HttpBuilder::new(token.expose_secret())
        .proxy(proxy)
        .ratelimiter_disabled(true);
    if let Some(id) = settings.application_id {
        builder = builder.application_id(ApplicationId::new(id.get()));
    }
    Ok(builder.build())
}
