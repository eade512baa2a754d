//! [`DiscordSender`]: channel messages and DMs that are not interaction
//! replies (audit events, reminders, expiry notices).

use std::sync::Arc;

use async_trait::async_trait;
use serenity::all::{ChannelId, UserId};
use serenity::http::Http;
use tracing::{debug, instrument};

use super::{builders, errors};
use crate::chat::ChatMessage;
use crate::interactions::{ChatSender, SendError};

/// Discord: cannot send messages to this user (DMs closed, no shared guild).
const CANNOT_DM: isize = 50007;

/// Sends through serenity's REST client. Each message carries a nonce from
/// its idempotency key with `enforce_nonce`, so Discord returns the first
/// message instead of posting a second one when a send is repeated.
///
/// The ratelimiter is off (see [`super::discord_http`]): a 429 comes back as
/// [`SendError::Retry`] for the caller (the outbox) to schedule.
#[derive(Clone)]
pub struct DiscordSender {
    http: Arc<Http>,
}

impl DiscordSender {
    /// A sender over `http` (from [`super::discord_http`]).
    pub fn new(http: Arc<Http>) -> Self {
        Self { http }
    }

    async fn send(
        &self,
        channel: ChannelId,
        message: &ChatMessage,
        idempotency_key: &str,
    ) -> Result<(), SendError> {
        let create = builders::create_message(message, idempotency_key);
        let sent = channel
            .send_message(&self.http, create)
            .await
            .map_err(|e| classify(&e))?;
        debug!(message_id = %sent.id, "message sent");
        Ok(())
    }
}

#[async_trait]
impl ChatSender for DiscordSender {
    #[instrument(skip(self, message))]
    async fn post(
        &self,
        channel_id: u64,
        message: &ChatMessage,
        idempotency_key: &str,
    ) -> Result<(), SendError> {
        let channel = nonzero(channel_id, "channel")?;
        self.send(ChannelId::new(channel), message, idempotency_key)
            .await
    }

    #[instrument(skip(self, message))]
    async fn direct(
        &self,
        user_id: u64,
        message: &ChatMessage,
        idempotency_key: &str,
    ) -> Result<(), SendError> {
        let user = nonzero(user_id, "user")?;
        // Discord returns the existing DM channel when there is one.
        let channel = UserId::new(user)
            .create_dm_channel(&self.http)
            .await
            .map_err(|e| classify(&e))?;
        self.send(channel.id, message, idempotency_key).await
    }
}

fn nonzero(id: u64, what: &str) -> Result<u64, SendError> {
    if id == 0 {
        Err(SendError::Permanent(format!(
            "{what} id 0 is not a Discord id"
        )))
    } else {
        Ok(id)
    }
}

/// Retry on 429, 5xx, 401 (a token problem fixed by the operator should not
/// lose messages) and network trouble; give up on other refusals (403 no
/// access, 404 unknown channel, 50007 DMs closed, 400 a message Discord
/// will never take).
fn classify(e: &serenity::Error) -> SendError {
    let reason = errors::describe(e);
    if errors::code(e) == Some(CANNOT_DM) {
        return SendError::Permanent(reason);
    }
    let retry = match errors::status(e) {
        Some(status) => status == 429 || status == 401 || status >= 500,
        // Serenity could not read Discord's answer: the nonce makes a resend safe.
        None => errors::is_network(e) || matches!(e, serenity::Error::Json(_)),
    };
    if retry {
        // Serenity's error keeps neither the `Retry-After` header nor the
        // body's `retry_after`, so the wait is left to the caller.
        SendError::Retry {
            reason,
            retry_after: None,
        }
    } else {
        SendError::Permanent(reason)
    }
}
