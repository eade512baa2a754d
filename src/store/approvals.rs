//! Approvals (issue 13): what a pending request was judged against, who
//! approved it, and where its card is. The grant's state is the claim that
//! decides it (see [`crate::domain::GrantState`]); these rows only describe
//! it, so a restart loses no request and no approval.

use std::collections::BTreeSet;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::backend::{with_read, with_tx};
use super::{Store, StoreError, StoreTx, parse_ts, ts};
use crate::domain::{RequestId, RoleId, UserId};

/// A request that waits (or waited) for approvers, or skipped them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequest {
    pub request_id: RequestId,
    /// Distinct approvers needed (0 for break-glass).
    pub needed: u32,
    /// The approver roles at request time.
    pub approver_roles: BTreeSet<RoleId>,
    /// The requester's roles at request time, to decide a late approval
    /// again.
    pub requester_roles: Vec<RoleId>,
    pub expires_at: DateTime<Utc>,
    /// Whether approval was skipped by break-glass.
    pub break_glass: bool,
    /// The card's channel and message, once posted.
    pub card: Option<(u64, u64)>,
    /// Who denied, cancelled or acknowledged it (`discord:<id>`).
    pub decided_by: Option<String>,
    /// The reason given with a Deny.
    pub decision_reason: Option<String>,
}

/// One approver's approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub approver: UserId,
    pub at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Row {
    request_id: String,
    needed: i64,
    approver_roles: String,
    requester_roles: String,
    expires_at: String,
    break_glass: i64,
    card_channel_id: Option<String>,
    card_message_id: Option<String>,
    decided_by: Option<String>,
    decision_reason: Option<String>,
}

const COLUMNS: &str = "request_id, needed, approver_roles, requester_roles, expires_at, \
    break_glass, card_channel_id, card_message_id, decided_by, decision_reason";

fn roles_json<'a>(roles: impl IntoIterator<Item = &'a RoleId>) -> String {
    let ids: Vec<String> = roles.into_iter().map(ToString::to_string).collect();
    serde_json::Value::from(ids).to_string()
}

impl TryFrom<Row> for ApprovalRequest {
    type Error = StoreError;

    fn try_from(row: Row) -> Result<Self, StoreError> {
        const T: &str = "approval_requests";
        let key = row.request_id.clone();
        let bad = |what: &str, e: String| StoreError::corrupt(T, &key, format!("{what}: {e}"));
        let roles = |text: &str, what: &str| -> Result<Vec<RoleId>, StoreError> {
            serde_json::from_str::<Vec<RoleId>>(text).map_err(|e| bad(what, e.to_string()))
        };
        let id = |text: Option<String>| text.and_then(|t| t.parse::<u64>().ok());
        Ok(ApprovalRequest {
            request_id: RequestId::parse(&row.request_id)
                .map_err(|e| bad("request_id", e.to_string()))?,
            needed: u32::try_from(row.needed).map_err(|e| bad("needed", e.to_string()))?,
            approver_roles: roles(&row.approver_roles, "approver_roles")?
                .into_iter()
                .collect(),
            requester_roles: roles(&row.requester_roles, "requester_roles")?,
            expires_at: parse_ts(T, &key, &row.expires_at)?,
            break_glass: row.break_glass != 0,
            card: id(row.card_channel_id).zip(id(row.card_message_id)),
            decided_by: row.decided_by,
            decision_reason: row.decision_reason,
        })
    }
}

impl StoreTx {
    /// Records what a pending (or break-glass) request was judged against.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn insert_approval_request(
        &mut self,
        request: &ApprovalRequest,
    ) -> Result<(), StoreError> {
        let id = &request.request_id;
        with_tx!(&mut self.tx, |c| {
            sqlx::query(
                "INSERT INTO approval_requests (request_id, needed, approver_roles,
                 requester_roles, expires_at, break_glass)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (request_id) DO NOTHING",
            )
            .bind(id.as_str())
            .bind(i64::from(request.needed))
            .bind(roles_json(&request.approver_roles))
            .bind(roles_json(&request.requester_roles))
            .bind(ts(request.expires_at))
            .bind(i64::from(request.break_glass))
            .execute(c)
            .await
            .map(|_| ())
        })
        .with_context(|| format!("recording the approval request {id}"))?;
        Ok(())
    }

    /// The approval request of `request_id`, as this transaction sees it.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn approval_request(
        &mut self,
        request_id: &RequestId,
    ) -> Result<Option<ApprovalRequest>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM approval_requests WHERE request_id = $1{}",
            self.tx.for_update()
        );
        let row: Option<Row> = with_tx!(&mut self.tx, |c| {
            sqlx::query_as(&sql)
                .bind(request_id.as_str())
                .fetch_optional(c)
                .await
        })
        .with_context(|| format!("reading the approval request {request_id}"))?;
        row.map(ApprovalRequest::try_from).transpose()
    }

    /// Records `approver`'s approval once; returns whether it is new (the
    /// same person clicking twice counts once).
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn add_approval(
        &mut self,
        request_id: &RequestId,
        approver: UserId,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let added = with_tx!(&mut self.tx, |c| {
            sqlx::query(
                "INSERT INTO approvals (request_id, approver_id, at) VALUES ($1, $2, $3)
                 ON CONFLICT (request_id, approver_id) DO NOTHING",
            )
            .bind(request_id.as_str())
            .bind(approver.to_string())
            .bind(ts(now))
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .with_context(|| format!("recording an approval of {request_id}"))?;
        Ok(added == 1)
    }

    /// The approvals of `request_id`, oldest first.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn approvals(&mut self, request_id: &RequestId) -> Result<Vec<Approval>, StoreError> {
        let rows: Vec<(String, String)> = with_tx!(&mut self.tx, |c| {
            sqlx::query_as(
                "SELECT approver_id, at FROM approvals WHERE request_id = $1 ORDER BY at, approver_id",
            )
            .bind(request_id.as_str())
            .fetch_all(c)
            .await
        })
        .with_context(|| format!("listing the approvals of {request_id}"))?;
        approvals_from(request_id, rows)
    }

    /// Records who ended (or acknowledged) the request and why; only the
    /// first is kept. Returns whether this call recorded it.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn set_approval_decision(
        &mut self,
        request_id: &RequestId,
        by: &str,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let updated = with_tx!(&mut self.tx, |c| {
            sqlx::query(
                "UPDATE approval_requests SET decided_by = $1, decision_reason = $2
                 WHERE request_id = $3 AND decided_by IS NULL",
            )
            .bind(by)
            .bind(reason)
            .bind(request_id.as_str())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .with_context(|| format!("recording the decision on {request_id}"))?;
        Ok(updated == 1)
    }
}

fn approvals_from(
    request_id: &RequestId,
    rows: Vec<(String, String)>,
) -> Result<Vec<Approval>, StoreError> {
    const T: &str = "approvals";
    let key = request_id.as_str();
    rows.into_iter()
        .map(|(approver, at)| {
            Ok(Approval {
                approver: UserId::parse(&approver)
                    .map_err(|e| StoreError::corrupt(T, key, e.to_string()))?,
                at: parse_ts(T, key, &at)?,
            })
        })
        .collect()
}

impl Store {
    /// The approval request of `request_id`, if it has one.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn approval_request(
        &self,
        request_id: &RequestId,
    ) -> Result<Option<ApprovalRequest>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM approval_requests WHERE request_id = $1");
        let row: Option<Row> = with_read!(&self.db, |c| {
            sqlx::query_as(&sql)
                .bind(request_id.as_str())
                .fetch_optional(c)
                .await
        })
        .with_context(|| format!("reading the approval request {request_id}"))?;
        row.map(ApprovalRequest::try_from).transpose()
    }

    /// The approvals of `request_id`, oldest first.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn approvals(&self, request_id: &RequestId) -> Result<Vec<Approval>, StoreError> {
        let rows: Vec<(String, String)> = with_read!(&self.db, |c| {
            sqlx::query_as(
                "SELECT approver_id, at FROM approvals WHERE request_id = $1 ORDER BY at, approver_id",
            )
            .bind(request_id.as_str())
            .fetch_all(c)
            .await
        })
        .with_context(|| format!("listing the approvals of {request_id}"))?;
        approvals_from(request_id, rows)
    }

    /// Records where the card of `request_id` was posted (the first post
    /// wins: a resend with the same nonce returns the same message).
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn set_approval_card(
        &self,
        request_id: &RequestId,
        channel: u64,
        message: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        with_tx!(&mut tx.tx, |c| {
            sqlx::query(
                "UPDATE approval_requests SET card_channel_id = $1, card_message_id = $2
                 WHERE request_id = $3 AND card_message_id IS NULL",
            )
            .bind(channel.to_string())
            .bind(message.to_string())
            .bind(request_id.as_str())
            .execute(c)
            .await
            .map(|_| ())
        })
        .with_context(|| format!("recording the card of {request_id}"))?;
        tx.commit().await
    }

    /// Every grant pending approval, oldest first, with its request.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn pending_approvals(&self) -> Result<Vec<ApprovalRequest>, StoreError> {
        let sql = format!(
            "SELECT {} FROM approval_requests a JOIN grants g USING (request_id)
             WHERE g.state = 'pending_approval' ORDER BY g.requested_at, a.request_id",
            COLUMNS
                .split(", ")
                .map(|c| format!("a.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let rows: Vec<Row> = with_read!(&self.db, |c| sqlx::query_as(&sql).fetch_all(c).await)
            .context("listing the requests pending approval")?;
        rows.into_iter().map(ApprovalRequest::try_from).collect()
    }
}
