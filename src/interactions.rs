//! The seam between a chat transport and the bot's logic.
//!
//! A transport (the Discord adapter in gateway or HTTP mode, or the demo
//! console) turns what a member did into an [`Invocation`] plus a
//! [`SlashCommand`], [`AutocompleteQuery`] or [`ButtonAction`], acknowledges
//! at once, calls the [`InteractionHandler`], and shows the returned
//! [`ChatMessage`]. Messages that are not replies (audit events, reminders,
//! expiry notices) go through a [`ChatSender`], fed from the outbox.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::chat::{ButtonAction, ChatMessage};
use crate::domain::{RoleId, UserId};
use crate::store::InteractionToken;

/// The member who acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Their user id.
    pub user_id: UserId,
    /// Their display name (for the audit log and Azure's justification).
    pub name: String,
    /// Their role ids in this guild, from the interaction (authorization
    /// uses these, never a cache).
    pub roles: Vec<RoleId>,
}

/// One interaction: who, where, and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The interaction id: the request id of anything it starts, so a
    /// double-delivered interaction is recognised.
    pub id: String,
    /// The member.
    pub member: Member,
    /// The channel it came from (for reminder fallbacks).
    pub channel_id: Option<u64>,
    /// The guild (`None` in a DM).
    pub guild_id: Option<u64>,
    /// The interaction token (15 minutes), kept with a request so later
    /// stages can edit the member's reply; `None` outside Discord. Its
    /// `Debug` never shows it.
    pub token: Option<InteractionToken>,
}

/// A slash command with its options, every value as text: strings as typed,
/// integers and booleans in their usual form, users and roles as ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlashCommand {
    /// `jit`, `jit-status`, `jit-ip`, `jit-admin`.
    pub name: String,
    /// The subcommand, for `jit-admin`.
    pub subcommand: Option<String>,
    /// Option name to value.
    pub options: BTreeMap<String, String>,
    /// For user options: the chosen member's role ids (from the
    /// interaction's resolved data).
    pub resolved_roles: BTreeMap<String, Vec<RoleId>>,
}

impl SlashCommand {
    /// An option's value.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }
}

/// An autocomplete request: the option being typed and what is typed so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AutocompleteQuery {
    /// The command.
    pub command: String,
    /// The subcommand, if any.
    pub subcommand: Option<String>,
    /// The option being typed.
    pub focused: String,
    /// Its partial value.
    pub partial: String,
    /// The other options typed so far.
    pub options: BTreeMap<String, String>,
}

/// One autocomplete choice (at most 25 are shown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// What the member sees.
    pub name: String,
    /// What is filled in.
    pub value: String,
}

/// The bot's logic, as a transport sees it. Every method answers; errors
/// become messages (nothing internal is shown).
#[async_trait]
pub trait InteractionHandler: Send + Sync + 'static {
    /// A slash command, after the transport has acknowledged it.
    async fn command(&self, who: &Invocation, command: &SlashCommand) -> ChatMessage;
    /// Autocomplete: answered from memory, never by calling Azure.
    async fn autocomplete(&self, who: &Invocation, query: &AutocompleteQuery) -> Vec<Choice>;
    /// A button press, after the transport has acknowledged it.
    async fn button(&self, who: &Invocation, action: &ButtonAction) -> ChatMessage;
    /// The transport showed (`shown`), or gave up showing, the message
    /// [`InteractionHandler::command`] returned for `who`'s command: a
    /// reply also written to the outbox (a `/jit` outcome) is then
    /// delivered, or left to the outbox at once. Nothing by default.
    async fn replied(&self, who: &Invocation, shown: bool) {
        let _ = (who, shown);
    }
}

/// Why the directory could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the member directory did not answer: {0}")]
pub struct DirectoryError(pub String);

/// The home guild's members as they are now, for interactions that carry
/// no roles: a button pressed in a DM (a reminder's Extend).
#[async_trait]
pub trait MemberDirectory: Send + Sync + 'static {
    /// The member's role ids in the home guild now; `Ok(None)` when they
    /// are not a member (any more).
    async fn roles_of(&self, user: UserId) -> Result<Option<Vec<RoleId>>, DirectoryError>;
}

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Try again later (rate limit, 5xx, network): after `retry_after` if known.
    #[error("temporarily failed: {reason}")]
    Retry {
        /// Why (no secrets).
        reason: String,
        /// When the service asked us to retry.
        retry_after: Option<Duration>,
    },
    /// Will never work (unknown channel, no permission, DMs closed).
    #[error("failed for good: {0}")]
    Permanent(String),
}

/// Sends messages that are not interaction replies. Implementations pass
/// `idempotency_key` on (Discord: the message nonce with `enforce_nonce`), so
/// a resend after a crash does not post twice.
#[async_trait]
pub trait ChatSender: Send + Sync + 'static {
    /// Posts to a channel; returns the posted message's id when the
    /// transport has one (for a later [`ChatSender::edit`]).
    async fn post(
        &self,
        channel_id: u64,
        message: &ChatMessage,
        idempotency_key: &str,
    ) -> Result<Option<u64>, SendError>;
    /// Replaces a message the bot posted (an approval card's final state).
    async fn edit(
        &self,
        channel_id: u64,
        message_id: u64,
        message: &ChatMessage,
    ) -> Result<(), SendError>;
    /// Replaces the original reply of the interaction whose token this is.
    /// [`SendError::Permanent`] once the token no longer works (Discord:
    /// after 15 minutes), so the caller can send a DM instead.
    async fn edit_reply(&self, token: &str, message: &ChatMessage) -> Result<(), SendError>;
    /// Sends a direct message to a user.
    async fn direct(
        &self,
        user_id: u64,
        message: &ChatMessage,
        idempotency_key: &str,
    ) -> Result<(), SendError>;
}

/// What a [`InteractionLedger::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The first delivery of this id: run it.
    First,
    /// A repeat: do not run it. Holds the first delivery's response (JSON)
    /// once recorded, `None` while the first is still being handled.
    Repeat(Option<String>),
}

/// Which interactions the HTTP endpoint has taken, shared by every replica
/// (the store), so that a delivery replayed by id is answered from the
/// first outcome and never runs twice.
#[async_trait]
pub trait InteractionLedger: Send + Sync + 'static {
    /// Claims interaction `id`, received at `now`.
    ///
    /// # Errors
    /// The ledger cannot be reached: the caller must not run the interaction.
    async fn claim(&self, id: &str, now: DateTime<Utc>) -> anyhow::Result<Claim>;

    /// Records the first response (JSON) of a claimed interaction.
    ///
    /// # Errors
    /// The ledger cannot be reached.
    async fn record(&self, id: &str, response: &str) -> anyhow::Result<()>;

    /// The recorded first response of `id`, if any yet.
    ///
    /// # Errors
    /// The ledger cannot be reached.
    async fn first_response(&self, id: &str) -> anyhow::Result<Option<String>>;
}
