//! One-time IP capture links (see [`crate::domain::ip_link`]): made when a
//! member needs to tell Drawbridge their address, used once by the visit
//! that saves it. Rows are keyed by the token's hash; the token itself is
//! never stored.

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::backend::{with_read, with_tx};
use super::{InteractionToken, Store, StoreError, parse_opt_ts, parse_ts, ts};
use crate::domain::UserId;

/// A link as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct IpLink {
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// Whose link it is: only their address is saved by it.
    pub user_id: UserId,
    /// Their display name when it was made (for the page).
    pub member_name: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// When it was used; a used link is refused.
    pub used_at: Option<DateTime<Utc>>,
    /// The invocation that made it, as the service wrote it (JSON).
    pub invocation: String,
    /// The `/jit` line waiting for the address, if any.
    pub pending_request: Option<String>,
    /// The interaction token of the member's reply, to edit it.
    pub reply_token: Option<InteractionToken>,
}

/// What claiming a link found.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkClaim {
    /// Valid and now used: the caller acts on it.
    Claimed(IpLink),
    /// No such link.
    Unknown,
    /// Used before.
    Used,
    /// Past its expiry.
    Expired,
}

#[derive(sqlx::FromRow)]
struct Row {
    token_hash: String,
    user_id: String,
    member_name: String,
    created_at: String,
    expires_at: String,
    used_at: Option<String>,
    invocation: String,
    pending_request: Option<String>,
    reply_token: Option<String>,
}

const COLUMNS: &str = "token_hash, user_id, member_name, created_at, expires_at, used_at, \
                       invocation, pending_request, reply_token";

impl Row {
    fn into_link(self) -> Result<IpLink, StoreError> {
        let key = self.token_hash.clone();
        let user_id = UserId::parse(&self.user_id)
            .map_err(|e| StoreError::corrupt("ip_links", key.clone(), e.to_string()))?;
        Ok(IpLink {
            user_id,
            member_name: self.member_name,
            created_at: parse_ts("ip_links", &key, &self.created_at)?,
            expires_at: parse_ts("ip_links", &key, &self.expires_at)?,
            used_at: parse_opt_ts("ip_links", &key, self.used_at.as_deref())?,
            invocation: self.invocation,
            pending_request: self.pending_request,
            reply_token: self.reply_token.map(InteractionToken::new),
            token_hash: self.token_hash,
        })
    }
}

impl Store {
    /// Stores a new link.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn insert_ip_link(&self, link: &IpLink) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        with_tx!(&mut tx.tx, |c| {
            sqlx::query(
                "INSERT INTO ip_links (token_hash, user_id, member_name, created_at, expires_at,
                 used_at, invocation, pending_request, reply_token)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&link.token_hash)
            .bind(link.user_id.to_string())
            .bind(&link.member_name)
            .bind(ts(link.created_at))
            .bind(ts(link.expires_at))
            .bind(link.used_at.map(ts))
            .bind(&link.invocation)
            .bind(&link.pending_request)
            .bind(link.reply_token.as_ref().map(InteractionToken::expose))
            .execute(c)
            .await
            .map(|_| ())
        })
        .context("storing an IP link")?;
        tx.commit().await
    }

    /// The link with `token_hash`, used or not.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] for an unreadable row;
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn ip_link(&self, token_hash: &str) -> Result<Option<IpLink>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM ip_links WHERE token_hash = $1");
        let row: Option<Row> = with_read!(&self.db, |c| {
            sqlx::query_as(&sql)
                .bind(token_hash)
                .fetch_optional(c)
                .await
        })
        .context("reading an IP link")?;
        row.map(Row::into_link).transpose()
    }

    /// Uses the link with `token_hash` at `now`, once: of two visits at the
    /// same moment, one claims it and the other finds it used.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn claim_ip_link(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<LinkClaim, StoreError> {
        let mut tx = self.begin().await?;
        // PostgreSQL: FOR UPDATE, so a second visit waits and then sees it used.
        let lock = tx.tx.for_update();
        let sql = format!("SELECT {COLUMNS} FROM ip_links WHERE token_hash = $1{lock}");
        let row: Option<Row> = with_tx!(&mut tx.tx, |c| {
            sqlx::query_as(&sql)
                .bind(token_hash)
                .fetch_optional(c)
                .await
        })
        .context("reading an IP link to claim it")?;
        let Some(mut link) = row.map(Row::into_link).transpose()? else {
            return Ok(LinkClaim::Unknown);
        };
        if link.used_at.is_some() {
            return Ok(LinkClaim::Used);
        }
        if now >= link.expires_at {
            return Ok(LinkClaim::Expired);
        }
        let claimed = with_tx!(&mut tx.tx, |c| {
            sqlx::query(
                "UPDATE ip_links SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
            )
            .bind(ts(now))
            .bind(token_hash)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .context("claiming an IP link")?;
        if claimed == 0 {
            return Ok(LinkClaim::Used);
        }
        tx.commit().await?;
        link.used_at = Some(now);
        Ok(LinkClaim::Claimed(link))
    }
}
