//! From a serenity [`Interaction`] to the [`InteractionHandler`] and back,
//! for both delivery modes.
//!
//! Every command and button is acknowledged first with an ephemeral deferred
//! response (type 5, flag 64); only then does the handler run, and its
//! message replaces the loading state through a REST edit of the original
//! response. The modes differ only in how the acknowledgement travels
//! ([`Ack`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serenity::all::{
    ActionRowComponent, AutocompleteChoice, CommandDataOption, CommandDataOptionValue,
    CommandDataResolved, CommandInteraction, ComponentInteraction, CreateActionRow,
    CreateAutocompleteResponse, CreateInputText, CreateInteractionResponse,
    CreateInteractionResponseMessage, CreateModal, InputTextStyle, Interaction, InteractionId,
    ModalInteraction, User,
};
use serenity::builder::Builder as _;
use serenity::http::Http;
use tokio::sync::oneshot;
use tracing::{Instrument as _, Span, debug, error, info, info_span, warn};

use super::{builders, errors};
use crate::chat::{ButtonAction, ChatMessage};
use crate::domain::{RoleId, Snowflake, UserId};
use crate::interactions::{
    AutocompleteQuery, Choice, InteractionHandler, Invocation, Member, SlashCommand,
};
use crate::store::InteractionToken;

/// Autocomplete shows at most this many choices.
pub(crate) const MAX_CHOICES: usize = 25;
/// A choice's name and value, at most.
const CHOICE_MAX: usize = 100;
/// The handler's time to suggest, so the answer still beats Discord's 3 s.
const AUTOCOMPLETE_BUDGET: Duration = Duration::from_secs(2);
/// Attempts to show a reply (see [`Dispatcher::show`]).
const EDIT_ATTEMPTS: u32 = 5;
/// Discord: the interaction was already acknowledged (another replica or a
/// re-delivery took it).
const ALREADY_ACKNOWLEDGED: isize = 40060;
/// Discord: unknown interaction (expired, or never ours).
const UNKNOWN_INTERACTION: isize = 10062;
/// Discord: unknown webhook / unknown message: an inline acknowledgement not
/// yet processed when the edit arrives.
const NOT_YET_ACKNOWLEDGED: [isize; 2] = [10015, 10008];

/// What a member sees for a button that no longer means anything.
pub(crate) const STALE_BUTTON: &str = "This button is no longer valid.";
/// What a member sees when the bot itself failed.
const INTERNAL_ERROR: &str =
    "Something went wrong on our side; it has been logged. Please try again.";

/// How the first response to an interaction travels.
pub(crate) enum Ack {
    /// Gateway mode: `POST /interactions/{id}/{token}/callback`.
    Rest,
    /// HTTP mode: the body of the answer to Discord's POST, handed back to
    /// the waiting endpoint.
    Inline(oneshot::Sender<CreateInteractionResponse>),
}

impl Ack {
    /// Sends `response`; `false` when the interaction is not ours to answer
    /// (already acknowledged, expired, or the delivery went away).
    async fn send(
        self,
        http: &Http,
        id: InteractionId,
        token: &str,
        response: CreateInteractionResponse,
    ) -> bool {
        match self {
            Self::Rest => match http
                .create_interaction_response(id, token, &response, Vec::new())
                .await
            {
                Ok(()) => true,
                Err(e) => {
                    let error = errors::describe(&e);
                    match errors::code(&e) {
                        Some(ALREADY_ACKNOWLEDGED) => {
                            info!(%error, "interaction already acknowledged elsewhere; skipping it");
                        }
                        Some(UNKNOWN_INTERACTION) => {
                            warn!(%error, "interaction unknown or expired before the acknowledgement");
                        }
                        _ => error!(%error, "could not acknowledge the interaction"),
                    }
                    false
                }
            },
            Self::Inline(reply) => {
                let sent = reply.send(response).is_ok();
                if !sent {
                    warn!("the HTTP delivery went away before the acknowledgement");
                }
                sent
            }
        }
    }
}

/// The custom id of the Deny form's reason input.
const DENY_REASON: &str = "reason";
/// The longest Deny reason (the audit log and the card keep it whole).
const DENY_REASON_MAX: u16 = 500;

/// The Deny form (interaction response type 9): one required paragraph,
/// the reason the requester is told.
fn deny_form(request_id: &str) -> CreateInteractionResponse {
    let submit = ButtonAction::DenyWithReason {
        id: request_id.to_owned(),
        reason: String::new(),
    };
    let reason = CreateInputText::new(InputTextStyle::Paragraph, "Why deny it?", DENY_REASON)
        .required(true)
        .min_length(1)
        .max_length(DENY_REASON_MAX)
        .placeholder("The requester is told this reason.");
    CreateInteractionResponse::Modal(
        CreateModal::new(submit.custom_id(), "Deny the request")
            .components(vec![CreateActionRow::InputText(reason)]),
    )
}

/// The value of the form's text input `custom_id`.
fn form_text(modal: &ModalInteraction, custom_id: &str) -> Option<String> {
    modal
        .data
        .components
        .iter()
        .flat_map(|row| &row.components)
        .find_map(|c| match c {
            ActionRowComponent::InputText(input) if input.custom_id == custom_id => {
                input.value.clone()
            }
            _ => None,
        })
}

fn deferred() -> CreateInteractionResponse {
    CreateInteractionResponse::Defer(CreateInteractionResponseMessage::new().ephemeral(true))
}

fn ephemeral_text(text: &str) -> CreateInteractionResponse {
    CreateInteractionResponse::Message(builders::ephemeral_message(&ChatMessage::text(text)))
}

/// Drives the handler for interactions of either mode.
#[derive(Clone)]
pub(crate) struct Dispatcher {
    http: Arc<Http>,
    handler: Arc<dyn InteractionHandler>,
}

impl Dispatcher {
    /// A dispatcher answering through `http`.
    pub(crate) fn new(http: Arc<Http>, handler: Arc<dyn InteractionHandler>) -> Self {
        Self { http, handler }
    }

    /// Handles one interaction to the end, in its own span (request id,
    /// command, member, VM; never the token).
    pub(crate) async fn dispatch(&self, interaction: Interaction, ack: Ack) {
        let received = Instant::now();
        let span = info_span!(
            "interaction",
            request_id = %interaction.id(),
            kind = kind_name(&interaction),
            command = tracing::field::Empty,
            member_id = tracing::field::Empty,
            vm = tracing::field::Empty,
        );
        self.route(interaction, ack, received)
            .instrument(span)
            .await;
    }

    async fn route(&self, interaction: Interaction, ack: Ack, received: Instant) {
        match interaction {
            Interaction::Ping(ping) => {
                ack.send(
                    &self.http,
                    ping.id,
                    &ping.token,
                    CreateInteractionResponse::Pong,
                )
                .await;
            }
            Interaction::Command(command) => self.command(command, ack, received).await,
            Interaction::Autocomplete(command) => {
                self.autocomplete(command, ack, received).await;
            }
            Interaction::Component(component) => {
                self.component(component, ack, received).await;
            }
            Interaction::Modal(modal) => self.modal(modal, ack, received).await,
            _ => warn!("ignoring an interaction of an unknown type"),
        }
    }

    async fn command(&self, command: CommandInteraction, ack: Ack, received: Instant) {
        let span = Span::current();
        span.record("command", command.data.name.as_str());
        span.record("member_id", command.user.id.get());
        let metrics = crate::metrics::global();
        let Some(mut who) = invocation(
            command.id,
            &command.user,
            command.member.as_deref().map(|m| &m.roles[..]),
            command.channel_id.get(),
            command.guild_id.map(|g| g.get()),
        ) else {
            ack.send(
                &self.http,
                command.id,
                &command.token,
                ephemeral_text(INTERNAL_ERROR),
            )
            .await;
            return;
        };
        if !ack
            .send(&self.http, command.id, &command.token, deferred())
            .await
        {
            metrics.interaction(&command.data.name, "not_acknowledged");
            return;
        }
        metrics.ack_latency("command", received.elapsed());
        // Kept with a request that waits for approval (or for an IP link's
        // visit), to edit this reply.
        who.token = Some(InteractionToken::new(command.token.clone()));
        let slash = slash_command(
            &command.data.name,
            &command.data.options,
            &command.data.resolved,
        );
        if let Some(vm) = slash.option("vm") {
            span.record("vm", vm);
        }
        info!(subcommand = slash.subcommand.as_deref(), "slash command");
        let handler = self.handler.clone();
        let asked = who.clone();
        let message = guarded(async move { handler.command(&who, &slash).await }).await;
        metrics.interaction(&command.data.name, outcome_of(&message));
        let shown = self.show(&command.token, &message).await;
        self.handler.replied(&asked, shown).await;
    }

    async fn autocomplete(&self, command: CommandInteraction, ack: Ack, received: Instant) {
        let span = Span::current();
        span.record("command", command.data.name.as_str());
        span.record("member_id", command.user.id.get());
        let choices = match invocation(
            command.id,
            &command.user,
            command.member.as_deref().map(|m| &m.roles[..]),
            command.channel_id.get(),
            command.guild_id.map(|g| g.get()),
        ) {
            Some(who) => {
                let query = autocomplete_query(&command.data.name, &command.data.options);
                match tokio::time::timeout(
                    AUTOCOMPLETE_BUDGET,
                    self.handler.autocomplete(&who, &query),
                )
                .await
                {
                    Ok(choices) => choices,
                    Err(_) => {
                        warn!(focused = %query.focused, "autocomplete was too slow; no suggestions");
                        Vec::new()
                    }
                }
            }
            None => Vec::new(),
        };
        let response = CreateInteractionResponse::Autocomplete(
            CreateAutocompleteResponse::new().set_choices(autocomplete_choices(choices)),
        );
        if ack
            .send(&self.http, command.id, &command.token, response)
            .await
        {
            let metrics = crate::metrics::global();
            metrics.ack_latency("autocomplete", received.elapsed());
            metrics.interaction(&command.data.name, "autocomplete");
        }
    }

    async fn component(&self, component: ComponentInteraction, ack: Ack, received: Instant) {
        let span = Span::current();
        span.record("command", component.data.custom_id.as_str());
        span.record("member_id", component.user.id.get());
        let metrics = crate::metrics::global();
        let action = ButtonAction::parse(&component.data.custom_id);
        let who = invocation(
            component.id,
            &component.user,
            component.member.as_ref().map(|m| &m.roles[..]),
            component.channel_id.get(),
            component.guild_id.map(|g| g.get()),
        );
        let (Some(action), Some(who)) = (action, who) else {
            info!("a button that is no longer valid was pressed");
            let reply = ephemeral_text(STALE_BUTTON);
            ack.send(&self.http, component.id, &component.token, reply)
                .await;
            metrics.interaction("button", "stale");
            return;
        };
        if let ButtonAction::Deny(id) = &action {
            // Deny asks for a reason first: the form is the response.
            let form = deny_form(id);
            if ack
                .send(&self.http, component.id, &component.token, form)
                .await
            {
                metrics.ack_latency("component", received.elapsed());
                metrics.interaction("button", "form");
            }
            return;
        }
        if !ack
            .send(&self.http, component.id, &component.token, deferred())
            .await
        {
            metrics.interaction("button", "not_acknowledged");
            return;
        }
        metrics.ack_latency("component", received.elapsed());
        info!(?action, "button");
        let handler = self.handler.clone();
        let message = guarded(async move { handler.button(&who, &action).await }).await;
        metrics.interaction("button", outcome_of(&message));
        self.show(&component.token, &message).await;
    }

    /// A submitted form (MODAL_SUBMIT): the Deny form, with its reason, is
    /// a button press like any other; anything else is stale.
    async fn modal(&self, modal: ModalInteraction, ack: Ack, received: Instant) {
        let span = Span::current();
        span.record("command", modal.data.custom_id.as_str());
        span.record("member_id", modal.user.id.get());
        let metrics = crate::metrics::global();
        let action = match ButtonAction::parse(&modal.data.custom_id) {
            Some(ButtonAction::DenyWithReason { id, .. }) => Some(ButtonAction::DenyWithReason {
                id,
                reason: form_text(&modal, DENY_REASON).unwrap_or_default(),
            }),
            _ => None,
        };
        let who = invocation(
            modal.id,
            &modal.user,
            modal.member.as_ref().map(|m| &m.roles[..]),
            modal.channel_id.get(),
            modal.guild_id.map(|g| g.get()),
        );
        let (Some(action), Some(who)) = (action, who) else {
            info!("a form that is no longer valid was submitted");
            let reply = ephemeral_text(STALE_BUTTON);
            ack.send(&self.http, modal.id, &modal.token, reply).await;
            metrics.interaction("form", "stale");
            return;
        };
        if !ack
            .send(&self.http, modal.id, &modal.token, deferred())
            .await
        {
            metrics.interaction("form", "not_acknowledged");
            return;
        }
        metrics.ack_latency("modal", received.elapsed());
        info!(verb = action.verb(), "form");
        let handler = self.handler.clone();
        let message = guarded(async move { handler.button(&who, &action).await }).await;
        metrics.interaction("form", outcome_of(&message));
        self.show(&modal.token, &message).await;
    }

    /// Replaces the deferred response with `message`. Retried a few times
    /// with backoff on 429, 5xx, network errors, and on "unknown webhook /
    /// message" (in HTTP mode the edit can reach Discord before the inline
    /// acknowledgement has been processed). Whether it was shown.
    async fn show(&self, token: &str, message: &ChatMessage) -> bool {
        let edit = builders::edit_response(message);
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=EDIT_ATTEMPTS {
            // The builder numbers the files (multipart) when there are any.
            match edit.clone().execute(&*self.http, token).await {
                Ok(_) => {
                    debug!(attempt, "reply shown");
                    return true;
                }
                Err(e) if attempt < EDIT_ATTEMPTS && edit_retryable(&e) => {
                    debug!(attempt, error = %errors::describe(&e), "retrying the reply");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    error!(attempt, error = %errors::describe(&e), "could not show the reply");
                    return false;
                }
            }
        }
        false
    }
}

fn edit_retryable(e: &serenity::Error) -> bool {
    errors::is_network(e)
        || match errors::status(e) {
            Some(429) => true,
            Some(status) if status >= 500 => true,
            Some(404) => errors::code(e).is_some_and(|c| NOT_YET_ACKNOWLEDGED.contains(&c)),
            _ => false,
        }
}

/// Runs a handler call in its own task, so that a panic in the bot's logic
/// still ends in a reply (a generic one; the panic is logged).
async fn guarded(call: impl Future<Output = ChatMessage> + Send + 'static) -> ChatMessage {
    match tokio::spawn(call.instrument(Span::current())).await {
        Ok(message) => message,
        Err(e) => {
            error!(panicked = e.is_panic(), "the handler failed");
            ChatMessage::text(INTERNAL_ERROR)
        }
    }
}

/// What the member saw, for the interactions counter: the card's tone
/// (`success`, `denied`, `error`, `warning`, `info`).
fn outcome_of(message: &ChatMessage) -> &'static str {
    match &message.card {
        Some(card) => match card.tone {
            crate::chat::Tone::Success => "success",
            crate::chat::Tone::Denied => "denied",
            crate::chat::Tone::Error => "error",
            crate::chat::Tone::Warning => "warning",
            crate::chat::Tone::Info => "info",
        },
        None if message.content.as_deref() == Some(INTERNAL_ERROR) => "error",
        None => "info",
    }
}

fn kind_name(interaction: &Interaction) -> &'static str {
    match interaction {
        Interaction::Ping(_) => "ping",
        Interaction::Command(_) => "command",
        Interaction::Autocomplete(_) => "autocomplete",
        Interaction::Component(_) => "component",
        Interaction::Modal(_) => "modal",
        _ => "unknown",
    }
}

/// Who acted, where. `member_roles` is `None` in a DM: no roles.
fn invocation(
    id: InteractionId,
    user: &User,
    member_roles: Option<&[serenity::all::RoleId]>,
    channel_id: u64,
    guild_id: Option<u64>,
) -> Option<Invocation> {
    let user_id = Snowflake::from_u64(user.id.get()).map(UserId)?;
    let roles = member_roles
        .unwrap_or_default()
        .iter()
        .filter_map(|r| Snowflake::from_u64(r.get()).map(RoleId))
        .collect();
    Some(Invocation {
        id: id.to_string(),
        member: Member {
            user_id,
            name: user
                .global_name
                .clone()
                .unwrap_or_else(|| user.name.clone()),
            roles,
        },
        channel_id: Some(channel_id),
        guild_id,
        token: None,
    })
}

/// An option's value as text: strings as typed, numbers and booleans in
/// their usual form, users/roles/channels as ids. `None` for subcommands.
fn option_text(value: &CommandDataOptionValue) -> Option<String> {
    Some(match value {
        CommandDataOptionValue::String(s) => s.clone(),
        CommandDataOptionValue::Autocomplete { value, .. } => value.clone(),
        CommandDataOptionValue::Integer(n) => n.to_string(),
        CommandDataOptionValue::Number(n) => n.to_string(),
        CommandDataOptionValue::Boolean(b) => b.to_string(),
        CommandDataOptionValue::User(id) => id.to_string(),
        CommandDataOptionValue::Role(id) => id.to_string(),
        CommandDataOptionValue::Channel(id) => id.to_string(),
        CommandDataOptionValue::Mentionable(id) => id.to_string(),
        CommandDataOptionValue::Attachment(id) => id.to_string(),
        _ => return None,
    })
}

/// The subcommand (`group sub` for a group) and the options under it.
fn split_subcommand(options: &[CommandDataOption]) -> (Option<String>, &[CommandDataOption]) {
    match options.first().map(|o| (&o.name, &o.value)) {
        Some((name, CommandDataOptionValue::SubCommand(inner))) => (Some(name.clone()), inner),
        Some((group, CommandDataOptionValue::SubCommandGroup(inner))) => {
            match inner.first().map(|o| (&o.name, &o.value)) {
                Some((name, CommandDataOptionValue::SubCommand(leaf))) => {
                    (Some(format!("{group} {name}")), leaf)
                }
                _ => (Some(group.clone()), inner),
            }
        }
        _ => (None, options),
    }
}

fn slash_command(
    name: &str,
    options: &[CommandDataOption],
    resolved: &CommandDataResolved,
) -> SlashCommand {
    let (subcommand, options) = split_subcommand(options);
    let mut command = SlashCommand {
        name: name.to_owned(),
        subcommand,
        ..SlashCommand::default()
    };
    for option in options {
        if let Some(text) = option_text(&option.value) {
            command.options.insert(option.name.clone(), text);
        }
        if let CommandDataOptionValue::User(user) = option.value
            && let Some(member) = resolved.members.get(&user)
        {
            let roles = member
                .roles
                .iter()
                .filter_map(|r| Snowflake::from_u64(r.get()).map(RoleId))
                .collect();
            command.resolved_roles.insert(option.name.clone(), roles);
        }
    }
    command
}

fn autocomplete_query(name: &str, options: &[CommandDataOption]) -> AutocompleteQuery {
    let (subcommand, options) = split_subcommand(options);
    let mut query = AutocompleteQuery {
        command: name.to_owned(),
        subcommand,
        ..AutocompleteQuery::default()
    };
    let mut others = BTreeMap::new();
    for option in options {
        match &option.value {
            CommandDataOptionValue::Autocomplete { value, .. } => {
                query.focused = option.name.clone();
                query.partial = value.clone();
            }
            value => {
                if let Some(text) = option_text(value) {
                    others.insert(option.name.clone(), text);
                }
            }
        }
    }
    query.options = others;
    query
}

/// At most 25 choices, names cut to 100 characters for display; a choice
/// with no name shows its value. A value is never cut (a cut value names
/// nothing): a choice whose value is empty or longer than 100 characters is
/// left out, with a warning.
fn autocomplete_choices(choices: Vec<Choice>) -> Vec<AutocompleteChoice> {
    choices
        .into_iter()
        .filter(|c| {
            let fits = (1..=CHOICE_MAX).contains(&c.value.chars().count());
            if !fits {
                warn!(
                    length = c.value.chars().count(),
                    "leaving out an autocomplete choice whose value Discord would refuse"
                );
            }
            fits
        })
        .take(MAX_CHOICES)
        .map(|c| {
            let name = if c.name.trim().is_empty() {
                &c.value
            } else {
                &c.name
            };
            AutocompleteChoice::new(builders::truncate(name, CHOICE_MAX), c.value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn options(value: serde_json::Value) -> Vec<CommandDataOption> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn subcommand_options_are_flattened_to_text() {
        let opts = options(json!([{"name": "map", "type": 1, "options": [
            {"name": "name", "type": 3, "value": "web-ssh"},
            {"name": "role", "type": 8, "value": "7007"},
            {"name": "require_reason", "type": 5, "value": true},
            {"name": "limit", "type": 4, "value": 5},
        ]}]));
        let command = slash_command("jit-admin", &opts, &CommandDataResolved::default());
        assert_eq!(command.subcommand.as_deref(), Some("map"));
        assert_eq!(command.option("name"), Some("web-ssh"));
        assert_eq!(command.option("role"), Some("7007"));
        assert_eq!(command.option("require_reason"), Some("true"));
        assert_eq!(command.option("limit"), Some("5"));
    }

    #[test]
    fn user_options_carry_the_members_roles() {
        let opts = options(json!([{"name": "explain", "type": 1, "options": [
            {"name": "user", "type": 6, "value": "8008"},
        ]}]));
        let resolved: CommandDataResolved = serde_json::from_value(json!({
            "members": {"8008": {"roles": ["11", "12"], "deaf": false, "mute": false,
                                 "pending": false, "joined_at": null, "flags": 0}}
        }))
        .unwrap();
        let command = slash_command("jit-admin", &opts, &resolved);
        assert_eq!(command.option("user"), Some("8008"));
        let roles: Vec<u64> = command.resolved_roles["user"]
            .iter()
            .map(|r| r.get())
            .collect();
        assert_eq!(roles, [11, 12]);
    }

    #[test]
    fn autocomplete_names_the_focused_option_and_keeps_the_others() {
        let opts = options(json!([
            {"name": "port", "type": 3, "value": "ssh"},
            {"name": "vm", "type": 3, "value": "we", "focused": true},
        ]));
        let query = autocomplete_query("jit", &opts);
        assert_eq!(query.focused, "vm");
        assert_eq!(query.partial, "we");
        assert_eq!(query.options.get("port").map(String::as_str), Some("ssh"));
        assert!(!query.options.contains_key("vm"));
    }

    #[test]
    fn choices_are_capped_and_cut() {
        let many: Vec<Choice> = (0..40)
            .map(|i| Choice {
                name: format!("{i}{}", "n".repeat(150)),
                value: format!("v{i}"),
            })
            .collect();
        let out = serde_json::to_value(autocomplete_choices(many)).unwrap();
        let out = out.as_array().unwrap();
        assert_eq!(out.len(), MAX_CHOICES);
        assert_eq!(out[0]["name"].as_str().unwrap().chars().count(), CHOICE_MAX);
    }

    #[test]
    fn values_are_never_cut() {
        let choice = |value: String| Choice {
            name: "vm".into(),
            value,
        };
        let out = autocomplete_choices(vec![
            choice("r".repeat(101)),
            choice(String::new()),
            choice("v".repeat(100)),
        ]);
        let out = serde_json::to_value(out).unwrap();
        assert_eq!(out, json!([{"name": "vm", "value": "v".repeat(100)}]));
    }
}
