//! The bot as a chat transport sees it: slash commands, autocomplete and
//! buttons routed to the use cases, every outcome turned into a message.
//!
//! It parses options and words replies; it never reads the store or decides
//! who may do what: that is the [`Service`]'s. One file per command, as
//! mini-redis does: `member` for `/jit`, `/jit-status`, `/jit-ip` and `/jit-who`,
//! `admin` for `/jit-admin` (one file per subcommand below it), `approvals`
//! for the approval buttons and `/jit-pending`.

mod admin;
mod approvals;
mod member;

use std::sync::Arc;

use async_trait::async_trait;

use super::refusals::Refused;
use super::{Service, messages};
use crate::chat::{ButtonAction, Card, ChatMessage, Tone};
use crate::domain::place::{self, Interaction};
use crate::domain::rate::Limited;
use crate::interactions::{
    AutocompleteQuery, Choice, InteractionHandler, Invocation, MemberDirectory, SlashCommand,
};

/// What a member sees when their roles could not be read for a DM button.
const ROLES_UNREADABLE: &str = "Drawbridge could not read your roles in the server just now. Try again in a moment, or use the button in the server.";

/// Implements [`InteractionHandler`] over the [`Service`].
#[derive(Clone)]
pub struct Bot {
    service: Service,
    /// Where a DM button's roles come from; without it, it has none.
    members: Option<Arc<dyn MemberDirectory>>,
}

impl std::fmt::Debug for Bot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bot").finish_non_exhaustive()
    }
}

impl Bot {
    pub fn new(service: Service) -> Self {
        Self {
            service,
            members: None,
        }
    }

    /// Reads the roles of members who press a button in a DM from `members`.
    #[must_use]
    pub fn with_members(mut self, members: Arc<dyn MemberDirectory>) -> Self {
        self.members = Some(members);
        self
    }

    pub fn service(&self) -> &Service {
        &self.service
    }

    /// `who` with their current roles in the home guild when they pressed
    /// a button in a DM, which carries none; as is otherwise.
    async fn with_current_roles(&self, who: &Invocation) -> Result<Invocation, ChatMessage> {
        let mut who = who.clone();
        let (None, Some(members)) = (who.guild_id, &self.members) else {
            return Ok(who);
        };
        match members.roles_of(who.member.user_id).await {
            Ok(roles) => {
                who.member.roles = roles.unwrap_or_default();
                Ok(who)
            }
            Err(e) => {
                tracing::warn!(error.message = %e, "reading a DM button's roles failed");
                Err(notice("Try again", Tone::Error, ROLES_UNREADABLE))
            }
        }
    }
}

fn notice(title: &str, tone: Tone, text: impl Into<String>) -> ChatMessage {
    ChatMessage::card(Card::new(title, tone).description(text))
}

/// What a member over their rate limit sees (only they see it).
fn slow_down(limited: Limited) -> ChatMessage {
    notice(
        "Slow down",
        Tone::Denied,
        format!(
            "You are sending requests faster than Drawbridge allows. Try again in {} s.",
            limited.retry_after_secs
        ),
    )
}

#[async_trait]
impl InteractionHandler for Bot {
    async fn command(&self, who: &Invocation, command: &SlashCommand) -> ChatMessage {
        let s = &self.service;
        if let Err(refusal) = s
            .check_place(who, Interaction::Command, &command.name)
            .await
        {
            return notice("Not here", Tone::Denied, refusal.to_string());
        }
        if matches!(command.name.as_str(), "jit" | "jit-ip")
            && let Err(limited) = s.check_rate(who, &command.name).await
        {
            return slow_down(limited);
        }
        let picked;
        let command = match command.option("vm").map(|vm| s.vm_option(vm)) {
            Some(Err(stale)) => {
                return notice("Pick the VM again", Tone::Denied, stale.to_string());
            }
            Some(Ok(std::borrow::Cow::Owned(vm))) => {
                let mut with_name = command.clone();
                with_name.options.insert("vm".to_owned(), vm);
                picked = with_name;
                &picked
            }
            _ => command,
        };
        match (command.name.as_str(), command.subcommand.as_deref()) {
            ("jit", _) => member::jit(s, who, command).await,
            ("jit-status", _) => member::status(s, who).await,
            ("jit-ip", _) => member::ip(s, who, command).await,
            ("jit-who", _) => member::who(s, who, command).await,
            ("jit-admin", Some(sub)) => admin::run(s, who, sub, command).await,
            ("jit-pending", _) => s.wake_after(approvals::pending(s, who).await),
            _ => notice(
                "Unknown command",
                Tone::Denied,
                "Drawbridge does not know that command.",
            ),
        }
    }

    async fn autocomplete(&self, who: &Invocation, query: &AutocompleteQuery) -> Vec<Choice> {
        let s = &self.service;
        if place::check_place(s.config().home_guild, who.guild_id, Interaction::Command).is_err() {
            return Vec::new();
        }
        let roles = &who.member.roles;
        let opt = |n: &str| query.options.get(n).map(String::as_str).unwrap_or_default();
        match (query.command.as_str(), query.focused.as_str()) {
            ("jit", "vm") | ("jit-who", "vm") => {
                let choices = s.complete_vm(roles, &query.partial).await;
                member::mark_open(s, choices).await
            }
            ("jit", "port") => s.complete_port(roles, opt("vm"), &query.partial),
            ("jit", "duration") => {
                s.complete_duration(roles, opt("vm"), opt("port"), &query.partial)
            }
            ("jit-admin", "vm") => s.complete_admin_vm(roles, &query.partial),
            _ => Vec::new(),
        }
    }

    async fn replied(&self, who: &Invocation, shown: bool) {
        self.service.reply_shown(&who.id, shown).await;
    }

    async fn button(&self, who: &Invocation, action: &ButtonAction) -> ChatMessage {
        let s = &self.service;
        let aliases = &s.config().aliases;
        if let Err(refusal) = s.check_place(who, Interaction::Button, action.verb()).await {
            return notice("Not here", Tone::Denied, refusal.to_string());
        }
        if let Err(limited) = s.check_rate(who, action.verb()).await {
            return slow_down(limited);
        }
        let who = &match self.with_current_roles(who).await {
            Ok(who) => who,
            Err(message) => return message,
        };
        let (id, outcome) = match action {
            ButtonAction::Approve(_)
            | ButtonAction::Deny(_)
            | ButtonAction::DenyWithReason { .. }
            | ButtonAction::Withdraw(_)
            | ButtonAction::Acknowledge(_) => {
                return s.wake_after(approvals::button(s, who, action).await);
            }
            ButtonAction::Extend(id) => (
                id,
                s.extend(who, id)
                    .await
                    .map(|grant| messages::grant(&grant, aliases)),
            ),
            ButtonAction::CloseEarly(id) => (
                id,
                s.close_early(who, id)
                    .await
                    .map(|closed| messages::closed(&closed, aliases)),
            ),
            ButtonAction::OpenAnyway(id) => (
                id,
                s.open_anyway(who, id)
                    .await
                    .map(|grant| messages::grant(&grant, aliases)),
            ),
            ButtonAction::Cancel(id) => (
                id,
                s.cancel_question(who, id)
                    .await
                    .map(|grant| messages::grant(&grant, aliases)),
            ),
        };
        let message = match outcome {
            Ok(message) => message,
            Err(e) => {
                let reason = e.to_string();
                let refused = Refused::new(action.verb(), id, e.audit_code(), &reason);
                s.audit_refusal(who, refused).await;
                messages::action_error(&e, &who.id)
            }
        };
        s.wake_after(message)
    }
}
