//! The bot as a chat transport sees it: slash commands, autocomplete and
//! buttons routed to the use cases, every outcome turned into a message.
//!
//! It parses options and words replies; it never reads the store or decides
//! who may do what: that is the [`Service`]'s. One file per command, as
//! mini-redis does: `member` for `/jit`, `/jit-status` and `/jit-ip`,
//! `admin` for `/jit-admin` (one file per subcommand below it).

mod admin;
mod member;

use async_trait::async_trait;

use super::{Service, messages};
use crate::chat::{ButtonAction, Card, ChatMessage, Tone};
use crate::interactions::{
    AutocompleteQuery, Choice, InteractionHandler, Invocation, SlashCommand,
};

/// Implements [`InteractionHandler`] over the [`Service`].
#[derive(Debug, Clone)]
pub struct Bot {
    service: Service,
}

impl Bot {
    pub fn new(service: Service) -> Self {
        Self { service }
    }

    pub fn service(&self) -> &Service {
        &self.service
    }
}

fn notice(title: &str, tone: Tone, text: impl Into<String>) -> ChatMessage {
    ChatMessage::card(Card::new(title, tone).description(text))
}

#[async_trait]
impl InteractionHandler for Bot {
    async fn command(&self, who: &Invocation, command: &SlashCommand) -> ChatMessage {
        let s = &self.service;
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
            ("jit-admin", Some(sub)) => admin::run(s, who, sub, command).await,
            _ => notice(
                "Unknown command",
                Tone::Denied,
                "Drawbridge does not know that command.",
            ),
        }
    }

    async fn autocomplete(&self, who: &Invocation, query: &AutocompleteQuery) -> Vec<Choice> {
        let s = &self.service;
        let roles = &who.member.roles;
        let opt = |n: &str| query.options.get(n).map(String::as_str).unwrap_or_default();
        match (query.command.as_str(), query.focused.as_str()) {
            ("jit", "vm") => s.complete_vm(roles, &query.partial),
            ("jit", "port") => s.complete_port(roles, opt("vm"), &query.partial),
            ("jit", "duration") => {
                s.complete_duration(roles, opt("vm"), opt("port"), &query.partial)
            }
            ("jit-admin", "vm") => s.complete_admin_vm(roles, &query.partial),
            _ => Vec::new(),
        }
    }

    async fn button(&self, who: &Invocation, action: &ButtonAction) -> ChatMessage {
        let s = &self.service;
        let aliases = &s.config().aliases;
        let message = match action {
            ButtonAction::Extend(id) => match s.extend(who, id).await {
                Ok(grant) => messages::grant(&grant, aliases),
                Err(e) => messages::action_error(&e, &who.id),
            },
            ButtonAction::CloseEarly(id) => match s.close_early(who, id).await {
                Ok(closed) => messages::closed(&closed, aliases),
                Err(e) => messages::action_error(&e, &who.id),
            },
        };
        s.wake_after(message)
    }
}
