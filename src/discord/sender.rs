//! [`DiscordSender`]: channel messages and DMs that are not interaction
//! replies (audit events, reminders, expiry notices).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serenity::all::{ChannelId, MessageId, UserId};
use serenity::builder::Builder as _;
use serenity::http::{Http, LightMethod, Request, Route};
use tracing::{debug, instrument};

use super::ratelimit::{BucketHeaders, RateLimits};
use super::{builders, errors};
use crate::chat::ChatMessage;
use crate::interactions::{ChatSender, SendError};

/// Discord: cannot send messages to this user (DMs closed, no shared guild).
const CANNOT_DM: isize = 50007;
/// The rate-limit route of "open a DM channel".
const DM_ROUTE: &str = "users/@me/channels";
/// The rate-limit route of interaction reply edits (per application).
const EDIT_ROUTE: &str = "webhooks/original";

/// Sends through serenity's REST client. Each message carries a nonce from
/// its idempotency key with `enforce_nonce`, so Discord returns the first
/// message instead of posting a second one when a send is repeated.
///
/// Every request first waits for a slot in its rate-limit bucket
/// ([`RateLimits`], fed by the headers of Discord's answers), so a burst
/// (an outbox backlog) is paced as Discord asks instead of running into
/// 429s. A 429 that still happens comes back as [`SendError::Retry`] for the
/// caller (the outbox) to schedule.
#[derive(Clone)]
pub struct DiscordSender {
    http: Arc<Http>,
    limits: Arc<RateLimits>,
}

impl DiscordSender {
    /// A sender over `http` (from [`super::discord_http`]).
    pub fn new(http: Arc<Http>) -> Self {
        Self {
            http,
            limits: Arc::new(RateLimits::new()),
        }
    }

    /// Sends `request` once its bucket allows, and records the bucket
    /// Discord's answer announces. Returns the answer's body.
    async fn request(&self, route: &str, request: Request<'_>) -> Result<Vec<u8>, SendError> {
        self.limits.acquire(route).await;
        let response = self.http.request(request).await.map_err(|e| classify(&e))?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        if let Some(bucket) = BucketHeaders::parse(header) {
            self.limits.update(route, bucket, Instant::now());
        }
        let body = response.bytes().await.map_err(|e| SendError::Retry {
            reason: format!("Discord's answer could not be read: {e}"),
            retry_after: None,
        })?;
        Ok(body.to_vec())
    }

    async fn send(
        &self,
        channel: ChannelId,
        message: &ChatMessage,
        idempotency_key: &str,
    ) -> Result<Option<u64>, SendError> {
        let create = builders::create_message(message, idempotency_key);
        if !message.attachments.is_empty() {
            return self.send_with_files(channel, create).await;
        }
        let body = serde_json::to_vec(&create)
            .map_err(|e| SendError::Permanent(format!("message not serializable: {e}")))?;
        let request = Request::new(
            Route::ChannelMessages {
                channel_id: channel,
            },
            LightMethod::Post,
        )
        .body(Some(body));
        let answer = self.request(&format!("channel:{channel}"), request).await?;
        let id = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|m| m["id"].as_str().map(str::to_owned));
        debug!(message_id = id.as_deref().unwrap_or("?"), "message sent");
        Ok(id.and_then(|i| i.parse().ok()))
    }

    /// Sends a message with files: serenity's builder numbers the files and
    /// their `attachments` entries and sends them as multipart/form-data.
    /// Discord's rate-limit headers are not read back on this path (the
    /// bucket still paces it).
    async fn send_with_files(
        &self,
        channel: ChannelId,
        create: serenity::all::CreateMessage,
    ) -> Result<Option<u64>, SendError> {
        self.limits.acquire(&format!("channel:{channel}")).await;
        let sent = create
            .execute(&*self.http, (channel, None))
            .await
            .map_err(|e| classify(&e))?;
        debug!(message_id = %sent.id, files = sent.attachments.len(), "message sent");
        Ok(Some(sent.id.get()))
    }

    /// The DM channel with `user` (Discord returns the existing one when
    /// there is one).
    async fn dm_channel(&self, user: UserId) -> Result<ChannelId, SendError> {
        let body = serde_json::json!({"recipient_id": user.to_string()}).to_string();
        let request =
            Request::new(Route::UserMeDmChannels, LightMethod::Post).body(Some(body.into_bytes()));
        let answer = self.request(DM_ROUTE, request).await?;
        serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|c| c["id"].as_str()?.parse::<u64>().ok())
            .filter(|id| *id != 0)
            .map(ChannelId::new)
            .ok_or_else(|| SendError::Retry {
                reason: "Discord's DM channel had no readable id".into(),
                retry_after: None,
            })
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
    ) -> Result<Option<u64>, SendError> {
        let channel = nonzero(channel_id, "channel")?;
        self.send(ChannelId::new(channel), message, idempotency_key)
            .await
    }

    #[instrument(skip(self, message))]
    async fn edit(
        &self,
        channel_id: u64,
        message_id: u64,
        message: &ChatMessage,
    ) -> Result<(), SendError> {
        let channel = ChannelId::new(nonzero(channel_id, "channel")?);
        let message_id = MessageId::new(nonzero(message_id, "message")?);
        if !message.attachments.is_empty() {
            self.limits.acquire(&format!("channel:{channel}")).await;
            return builders::edit_message(message)
                .execute(&*self.http, (channel, message_id, None))
                .await
                .map(drop)
                .map_err(|e| classify(&e));
        }
        let body = serde_json::to_vec(&builders::edit_message(message))
            .map_err(|e| SendError::Permanent(format!("edit not serializable: {e}")))?;
        let request = Request::new(
            Route::ChannelMessage {
                channel_id: channel,
                message_id,
            },
            LightMethod::Patch,
        )
        .body(Some(body));
        self.request(&format!("channel:{channel}"), request)
            .await
            .map(drop)
    }

    #[instrument(skip_all)]
    async fn edit_reply(&self, token: &str, message: &ChatMessage) -> Result<(), SendError> {
        // The token is the credential: never logged, never in an error.
        self.limits.acquire(EDIT_ROUTE).await;
        match builders::edit_response(message)
            .execute(&*self.http, token)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let reason = errors::describe(&e);
                match errors::status(&e) {
                    // Unknown or expired token (404 10015/10062, 401 50027).
                    Some(401 | 403 | 404) => Err(SendError::Permanent(reason)),
                    _ => Err(classify(&e)),
                }
            }
        }
    }

    #[instrument(skip(self, message))]
    async fn direct(
        &self,
        user_id: u64,
        message: &ChatMessage,
        idempotency_key: &str,
    ) -> Result<(), SendError> {
        let user = nonzero(user_id, "user")?;
        let channel = self.dm_channel(UserId::new(user)).await?;
        self.send(channel, message, idempotency_key).await.map(drop)
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
