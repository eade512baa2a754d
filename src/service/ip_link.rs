//! The IP capture link: instead of "give from:", a member gets a one-time
//! link; opening it from the machine they connect from saves that address
//! (as `/jit-ip` would), and a request that was waiting for it goes on.
//!
//! The link is written before it is shown, bound to the member, and used
//! once ([`crate::store::ip_links`]). The waiting request is run again with
//! the original invocation (its id keeps it idempotent), and the member's
//! reply is edited into the outcome through the outbox, so a Discord hiccup
//! does not lose it.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use url::Url;

use super::lifecycle::SaveSourceError;
use super::{Service, messages};
use crate::domain::ip_link::{LINK_LIFETIME, LinkToken, TOKEN_BYTES};
use crate::domain::{AccessRequest, RoleId, Snowflake, SourcePrefix, UserId};
use crate::interactions::{Invocation, Member};
use crate::store::{IpLink, LinkClaim, OutboxKind, OutboxMessage, StoreError};

/// A link handed to a member.
#[derive(Debug, Clone)]
pub struct LinkOffer {
    /// `{http.public_url}/ip/{token}`.
    pub url: Url,
    pub expires_at: DateTime<Utc>,
}

/// What a visit saved.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The member's display name when the link was made.
    pub member_name: String,
    /// What was saved.
    pub source: SourcePrefix,
    /// Whether a waiting request was run (its outcome replaces the reply).
    pub continued: bool,
}

/// Why a visit saved nothing. Shown on the page as is, but for `Unexpected`.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("This link is not valid. Ask Drawbridge for a new one with /jit-ip.")]
    Unknown,
    #[error("This link was used already. Ask Drawbridge for a new one with /jit-ip.")]
    Used,
    #[error("This link has expired. Ask Drawbridge for a new one with /jit-ip.")]
    Expired,
    #[error(
        "Drawbridge could not tell which address you connect from. Give it with /jit-ip <address>."
    )]
    NoAddress,
    #[error("{0}")]
    NotAllowed(SaveSourceError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<StoreError> for CaptureError {
    fn from(e: StoreError) -> Self {
        Self::Unexpected(e.into())
    }
}

/// What a link page shows before the member confirms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Usable: whose it is.
    Open { member_name: String },
    /// Not usable, with the sentence to show.
    Closed(String),
}

/// The invocation as stored with the link (roles as they were when the
/// member asked, within the link's ten minutes).
#[derive(Debug, Serialize, Deserialize)]
struct StoredInvocation {
    id: String,
    user_id: String,
    name: String,
    roles: Vec<String>,
    channel_id: Option<u64>,
    guild_id: Option<u64>,
}

impl StoredInvocation {
    fn of(who: &Invocation) -> Self {
        Self {
            id: who.id.clone(),
            user_id: who.member.user_id.to_string(),
            name: who.member.name.clone(),
            roles: who.member.roles.iter().map(ToString::to_string).collect(),
            channel_id: who.channel_id,
            guild_id: who.guild_id,
        }
    }

    fn into_invocation(self) -> anyhow::Result<Invocation> {
        let roles = self
            .roles
            .iter()
            .map(|r| Snowflake::parse(r).map(RoleId))
            .collect::<Result<_, _>>()?;
        Ok(Invocation {
            id: self.id,
            member: Member {
                user_id: UserId::parse(&self.user_id)?,
                name: self.name,
                roles,
            },
            channel_id: self.channel_id,
            guild_id: self.guild_id,
            token: None,
        })
    }
}

impl Service {
    /// Whether links are offered (`http.public_url` is set).
    pub fn ip_links_enabled(&self) -> bool {
        self.config().public_url.is_some()
    }

    /// A fresh link for `who`, carrying `pending` (a request that had no
    /// source) to finish on the visit; `Ok(None)` when links are off.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn offer_ip_link(
        &self,
        who: &Invocation,
        pending: Option<&AccessRequest>,
    ) -> Result<Option<LinkOffer>, StoreError> {
        let Some(base) = &self.config().public_url else {
            return Ok(None);
        };
        let token = LinkToken::from_random(rand::random::<[u8; TOKEN_BYTES]>());
        let now = self.clock().now();
        let link = IpLink {
            token_hash: token.hash(),
            user_id: who.member.user_id,
            member_name: who.member.name.clone(),
            created_at: now,
            expires_at: now + LINK_LIFETIME,
            used_at: None,
            invocation: serde_json::to_string(&StoredInvocation::of(who))
                .map_err(|e| StoreError::Unexpected(e.into()))?,
            pending_request: pending.map(ToString::to_string),
            reply_token: pending.and(who.token.clone()),
        };
        self.store().insert_ip_link(&link).await?;
        Ok(Some(LinkOffer {
            url: link_url(base, &token),
            expires_at: link.expires_at,
        }))
    }

    /// What the page of `token` shows before the member confirms (a GET
    /// changes nothing: a link preview must not use the link up).
    ///
    /// # Errors
    /// If the store fails.
    pub async fn ip_link_state(&self, token: &str) -> Result<LinkState, StoreError> {
        let closed = |e: CaptureError| Ok(LinkState::Closed(e.to_string()));
        let Ok(token) = LinkToken::parse(token) else {
            return closed(CaptureError::Unknown);
        };
        match self.store().ip_link(&token.hash()).await? {
            None => closed(CaptureError::Unknown),
            Some(link) if link.used_at.is_some() => closed(CaptureError::Used),
            Some(link) if self.clock().now() >= link.expires_at => closed(CaptureError::Expired),
            Some(link) => Ok(LinkState::Open {
                member_name: link.member_name,
            }),
        }
    }

    /// The visit of `token` from `client`: uses the link, saves the
    /// address (as a single address: an IPv6 client gets its /128) under
    /// the source rules, and runs the request that was waiting for it.
    ///
    /// # Errors
    /// [`CaptureError`]; an unusable link or address changes nothing.
    #[tracing::instrument(skip_all)]
    pub async fn capture_ip(
        &self,
        token: &str,
        client: Option<IpAddr>,
    ) -> Result<Captured, CaptureError> {
        let token = LinkToken::parse(token).map_err(|_| CaptureError::Unknown)?;
        let client = client.ok_or(CaptureError::NoAddress)?;
        let link = match self
            .store()
            .claim_ip_link(&token.hash(), self.clock().now())
            .await?
        {
            LinkClaim::Claimed(link) => link,
            LinkClaim::Unknown => return Err(CaptureError::Unknown),
            LinkClaim::Used => return Err(CaptureError::Used),
            LinkClaim::Expired => return Err(CaptureError::Expired),
        };
        let stored: StoredInvocation = serde_json::from_str(&link.invocation)
            .map_err(|e| CaptureError::Unexpected(e.into()))?;
        let who = stored.into_invocation()?;
        let source = SourcePrefix::Net(ipnet::IpNet::from(client));
        match self.save_source(&who, source).await {
            Ok(()) => {}
            Err(e @ SaveSourceError::NotAllowed(_)) => return Err(CaptureError::NotAllowed(e)),
            Err(SaveSourceError::Store(e)) => return Err(e.into()),
        }
        let continued = match &link.pending_request {
            Some(line) => {
                self.continue_request(&who, line, &link).await?;
                true
            }
            None => false,
        };
        tracing::info!(user = %who.member.user_id, continued, "address saved from an IP link");
        Ok(self.wake_after(Captured {
            member_name: link.member_name,
            source,
            continued,
        }))
    }

    /// Runs the waiting `/jit` line as `who` and queues the edit of their
    /// reply with the outcome.
    async fn continue_request(
        &self,
        who: &Invocation,
        line: &str,
        link: &IpLink,
    ) -> Result<(), CaptureError> {
        let aliases = &self.config().aliases;
        let request = AccessRequest::parse_line(line, aliases)
            .map_err(|e| CaptureError::Unexpected(anyhow::anyhow!("stored request: {e}")))?;
        let message = match self.request_access(who, request).await {
            Ok(grant) => {
                let connection = self.connection_of(&grant).await;
                messages::grant_with(&grant, aliases, connection.as_deref())
            }
            Err(e) => {
                if let super::request::RequestError::Unexpected(cause) = &e {
                    tracing::error!(reference = %who.id, error.message = %cause, "continued request failed");
                }
                messages::request_error(&e, &who.id)
            }
        };
        if link.reply_token.is_none() {
            return Ok(());
        }
        let mut tx = self.store().begin().await?;
        tx.enqueue(OutboxMessage {
            kind: OutboxKind::InteractionEdit,
            target: Some(link.token_hash.clone()),
            payload: json!({ "message": message }),
            idempotency_key: Some(format!("ip-{}", &link.token_hash[..20])),
            created_at: self.clock().now(),
        })
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// `{base}/ip/{token}`, keeping any path `base` has.
fn link_url(base: &Url, token: &LinkToken) -> Url {
    let mut url = base.clone();
    let path = format!(
        "{}/ip/{}",
        base.path().trim_end_matches('/'),
        token.expose()
    );
    url.set_path(&path);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_sits_under_the_public_url_path() {
        let token = LinkToken::from_random([1; TOKEN_BYTES]);
        let at = |base: &str| link_url(&Url::parse(base).unwrap(), &token).to_string();
        let expected = format!("https://bot.example/ip/{}", token.expose());
        assert_eq!(at("https://bot.example"), expected);
        assert_eq!(at("https://bot.example/"), expected);
        assert_eq!(
            at("https://example.com/drawbridge/"),
            format!("https://example.com/drawbridge/ip/{}", token.expose())
        );
    }
}
