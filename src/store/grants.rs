//! Grants: the request lifecycle, keyed by request id.
//!
//! One request id is one grant: inserting it again returns the existing
//! grant ([`InsertOutcome::Duplicate`]), which is how a retried interaction
//! never initiates twice. The state changes only through
//! [`StoreTx::transition_grant`], which applies the domain's
//! [`GrantState::apply`] and records every change in `grant_transitions`.

use std::fmt;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::backend::{with_read, with_tx};
use super::{Store, StoreError, StoreTx, as_stored, limit_i64, parse_opt_ts, parse_ts, ts};
use crate::domain::request::Reason;
use crate::domain::{
    AccessDuration, GrantEvent, GrantState, MappingName, PortSpec, RequestId, Snowflake,
    SourcePrefix, UserId,
};

/// Every state, for the SQL that lists open ones.
const ALL_STATES: [GrantState; 16] = [
    GrantState::Requested,
    GrantState::Active,
    GrantState::Extended,
    GrantState::Closing,
    GrantState::Extending,
    GrantState::ClosedEarly,
    GrantState::Expired,
    GrantState::Failed,
    GrantState::PendingAzure,
    GrantState::Superseded,
    GrantState::Ended,
    GrantState::Confirming,
    GrantState::PendingApproval,
    GrantState::Denied,
    GrantState::Cancelled,
    GrantState::ApprovalExpired,
];

/// An interaction token: a 15-minute credential for editing the original
/// reply. Its `Debug` never shows it; read it with [`InteractionToken::expose`]
/// only to call Discord.
#[derive(Clone, PartialEq, Eq)]
pub struct InteractionToken(String);

impl InteractionToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token, for the one request that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for InteractionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InteractionToken([redacted])")
    }
}

/// A grant to insert (state `requested`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGrant {
    pub request_id: RequestId,
    pub user_id: UserId,
    /// The guild asked in (none from the console and CLI).
    pub guild_id: Option<Snowflake>,
    pub channel_id: Option<Snowflake>,
    /// The VM's full Azure resource id, from the VM index.
    pub vm_id: String,
    /// The VM's qualified name, resource-group/name.
    pub vm_name: String,
    /// The JIT policy's resource id.
    pub policy_id: String,
    pub ports: PortSpec,
    pub source: SourcePrefix,
    pub duration: AccessDuration,
    pub reason: Option<Reason>,
    /// The mapping that allowed it.
    pub mapping: MappingName,
    pub requested_at: DateTime<Utc>,
    /// The interaction token, for follow-up edits.
    pub interaction_token: Option<InteractionToken>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub request_id: RequestId,
    pub user_id: UserId,
    pub guild_id: Option<Snowflake>,
    pub channel_id: Option<Snowflake>,
    /// The VM's full Azure resource id.
    pub vm_id: String,
    /// The VM's qualified name.
    pub vm_name: String,
    /// The JIT policy's resource id.
    pub policy_id: String,
    pub ports: PortSpec,
    pub source: SourcePrefix,
    pub duration: AccessDuration,
    pub reason: Option<Reason>,
    /// The mapping that allowed it.
    pub mapping: MappingName,
    /// Where it is in its life.
    pub state: GrantState,
    pub requested_at: DateTime<Utc>,
    /// When the port closes, per Azure (none until initiated).
    pub end_time: Option<DateTime<Utc>>,
    pub state_changed_at: DateTime<Utc>,
    pub failure: Option<String>,
    pub azure_detail: Option<serde_json::Value>,
    pub interaction_token: Option<InteractionToken>,
}

impl NewGrant {
    /// The grant as [`StoreTx::insert_grant`] stores it: `requested`, no
    /// end time, failure or Azure detail yet.
    fn into_grant(self) -> Grant {
        let requested_at = as_stored(self.requested_at);
        Grant {
            request_id: self.request_id,
            user_id: self.user_id,
            guild_id: self.guild_id,
            channel_id: self.channel_id,
            vm_id: self.vm_id,
            vm_name: self.vm_name,
            policy_id: self.policy_id,
            ports: self.ports,
            source: self.source,
            duration: self.duration,
            reason: self.reason,
            mapping: self.mapping,
            state: GrantState::Requested,
            requested_at,
            end_time: None,
            state_changed_at: requested_at,
            failure: None,
            azure_detail: None,
            interaction_token: self.interaction_token,
        }
    }
}

/// What [`StoreTx::insert_grant`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The grant was new.
    Inserted(Grant),
    /// The request id was stored already: this is that grant, unchanged.
    Duplicate(Grant),
}

impl InsertOutcome {
    /// The grant, new or existing.
    pub fn grant(&self) -> &Grant {
        match self {
            Self::Inserted(g) | Self::Duplicate(g) => g,
        }
    }
}

/// One recorded state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantTransition {
    pub from: GrantState,
    pub to: GrantState,
    /// What happened: `initiated`, `failed`, `extended`, `close requested`,
    /// `closed`, `close failed` or `window ended`.
    pub event: String,
    /// The end time the event carried.
    pub end_time: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

fn event_name(event: &GrantEvent) -> &'static str {
    event.name()
}

fn event_end(event: &GrantEvent) -> Option<DateTime<Utc>> {
    match event {
        GrantEvent::Initiated { end }
        | GrantEvent::Extended { end }
        | GrantEvent::Closed { end }
        | GrantEvent::ReopenedInAzure { end }
        | GrantEvent::EndedInAzure { at: end, .. } => Some(*end),
        _ => None,
    }
}

/// `'active', 'extended', 'closing'`: the open states as an SQL list.
fn open_states_sql() -> String {
    ALL_STATES
        .iter()
        .filter(|s| s.is_open())
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The open grants on the VM `$1`, matched as Azure matches resource ids
/// (case-insensitively), through the index `grants_vm` (migration 0110);
/// public so that a test can `EXPLAIN` exactly this statement.
#[doc(hidden)]
pub fn open_grants_on_sql() -> String {
    format!(
        "SELECT {GRANT_COLUMNS} FROM grants
         WHERE lower(vm_id) = lower($1) AND state IN ({})
         ORDER BY end_time, request_id",
        open_states_sql()
    )
}

#[derive(sqlx::FromRow)]
struct GrantRow {
    request_id: String,
    user_id: String,
    guild_id: Option<String>,
    channel_id: Option<String>,
    vm_id: String,
    vm_name: String,
    policy_id: String,
    ports: String,
    source: String,
    duration_minutes: i64,
    reason: Option<String>,
    mapping: String,
    state: String,
    requested_at: String,
    end_time: Option<String>,
    state_changed_at: String,
    failure: Option<String>,
    azure_detail: Option<String>,
    interaction_token: Option<String>,
}

const GRANT_COLUMNS: &str = "request_id, user_id, guild_id, channel_id, vm_id, vm_name, policy_id, \
     ports, source, duration_minutes, reason, mapping, state, requested_at, end_time, \
     state_changed_at, failure, azure_detail, interaction_token";

impl TryFrom<GrantRow> for Grant {
    type Error = StoreError;

    fn try_from(row: GrantRow) -> Result<Self, StoreError> {
        const T: &str = "grants";
        let key = row.request_id.clone();
        let bad =
            |what: &str, e: &dyn fmt::Display| StoreError::corrupt(T, &key, format!("{what}: {e}"));
        let snowflake = |text: Option<String>, what: &str| {
            text.map(|t| Snowflake::parse(&t).map_err(|e| bad(what, &e)))
                .transpose()
        };
        let ports = row
            .ports
            .split(',')
            .map(|p| p.trim().parse::<u16>().ok())
            .collect::<Option<Vec<_>>>()
            .and_then(PortSpec::from_numbers)
            .ok_or_else(|| bad("ports", &row.ports))?;
        let duration = u32::try_from(row.duration_minutes)
            .ok()
            .and_then(AccessDuration::from_minutes)
            .ok_or_else(|| bad("duration_minutes", &row.duration_minutes))?;
        Ok(Grant {
            request_id: RequestId::parse(&row.request_id).map_err(|e| bad("request_id", &e))?,
            user_id: UserId::parse(&row.user_id).map_err(|e| bad("user_id", &e))?,
            guild_id: snowflake(row.guild_id, "guild_id")?,
            channel_id: snowflake(row.channel_id, "channel_id")?,
            vm_id: row.vm_id,
            vm_name: row.vm_name,
            policy_id: row.policy_id,
            ports,
            source: SourcePrefix::parse(&row.source).map_err(|e| bad("source", &e))?,
            duration,
            reason: row
                .reason
                .map(|r| Reason::parse(&r).map_err(|e| bad("reason", &e)))
                .transpose()?,
            mapping: MappingName::parse(&row.mapping).map_err(|e| bad("mapping", &e))?,
            state: GrantState::parse(&row.state).ok_or_else(|| bad("state", &row.state))?,
            requested_at: parse_ts(T, &key, &row.requested_at)?,
            end_time: parse_opt_ts(T, &key, row.end_time.as_deref())?,
            state_changed_at: parse_ts(T, &key, &row.state_changed_at)?,
            failure: row.failure,
            azure_detail: row
                .azure_detail
                .map(|d| serde_json::from_str(&d).map_err(|e| bad("azure_detail", &e)))
                .transpose()?,
            interaction_token: row.interaction_token.map(InteractionToken),
        })
    }
}

/// How many of the newest grants that mention a requestor are looked at.
const REQUESTOR_CANDIDATES: i64 = 20;

/// The `requestor` string at the top of an `azure_detail` JSON object.
fn requestor_of(detail: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(detail).ok()?;
    value.get("requestor")?.as_str().map(str::to_string)
}

/// A transition about to be written: `event` at `now`, with what Azure
/// answered if the step records it.
struct Step<'a> {
    event: &'a GrantEvent,
    azure_detail: Option<&'a serde_json::Value>,
    now: DateTime<Utc>,
}

fn grant_by_id_sql() -> String {
    format!("SELECT {GRANT_COLUMNS} FROM grants WHERE request_id = $1")
}

impl StoreTx {
    /// The grant `request_id`, as this transaction sees it.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn grant(&mut self, request_id: &RequestId) -> Result<Option<Grant>, StoreError> {
        self.read_grant(request_id, "").await
    }

    /// The grant, locked until this transaction ends on PostgreSQL (SQLite's
    /// write transaction holds the whole database already).
    async fn grant_for_update(
        &mut self,
        request_id: &RequestId,
    ) -> Result<Option<Grant>, StoreError> {
        let lock = self.tx.for_update();
        self.read_grant(request_id, lock).await
    }

    async fn read_grant(
        &mut self,
        request_id: &RequestId,
        lock: &str,
    ) -> Result<Option<Grant>, StoreError> {
        let sql = format!("{}{lock}", grant_by_id_sql());
        let row: Option<GrantRow> = with_tx!(&mut self.tx, |c| {
            sqlx::query_as(&sql)
                .bind(request_id.as_str())
                .fetch_optional(c)
                .await
        })
        .with_context(|| format!("reading grant {request_id}"))?;
        row.map(Grant::try_from).transpose()
    }

    /// Inserts a grant in state `requested`, or returns the existing grant of
    /// that request id unchanged.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn insert_grant(&mut self, new: NewGrant) -> Result<InsertOutcome, StoreError> {
        let requested_at = ts(new.requested_at);
        // A duplicate is not an error: on PostgreSQL an error would abort the
        // caller's whole transaction.
        let inserted = with_tx!(&mut self.tx, |c| {
            sqlx::query(
                "INSERT INTO grants (request_id, user_id, guild_id, channel_id, vm_id, vm_name,
                 policy_id, ports, source, duration_minutes, reason, mapping, state,
                 requested_at, state_changed_at, interaction_token)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $15)
                 ON CONFLICT (request_id) DO NOTHING",
            )
            .bind(new.request_id.as_str())
            .bind(new.user_id.to_string())
            .bind(new.guild_id.map(|g| g.to_string()))
            .bind(new.channel_id.map(|c| c.to_string()))
            .bind(&new.vm_id)
            .bind(&new.vm_name)
            .bind(&new.policy_id)
            .bind(new.ports.to_string())
            .bind(new.source.to_string())
            .bind(i64::from(new.duration.minutes()))
            .bind(new.reason.as_ref().map(Reason::as_str))
            .bind(new.mapping.as_str())
            .bind(GrantState::Requested.as_str())
            .bind(&requested_at)
            .bind(new.interaction_token.as_ref().map(InteractionToken::expose))
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .with_context(|| format!("inserting grant {}", new.request_id))?
            == 1;
        if inserted {
            // The row is what was just written: no read-back.
            return Ok(InsertOutcome::Inserted(new.into_grant()));
        }
        let grant = self
            .grant(&new.request_id)
            .await?
            .ok_or_else(|| StoreError::not_found("grant", new.request_id.as_str()))?;
        Ok(InsertOutcome::Duplicate(grant))
    }

    /// Applies `event` to the grant through the state machine, sets the end
    /// time from `initiated`, `extended` and `closed` events, records the
    /// transition and returns the grant as it is now.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if there is no such grant;
    /// [`StoreError::InvalidTransition`] if the state machine refuses the
    /// event (nothing is changed); [`StoreError::Unexpected`] if the database
    /// fails.
    pub async fn transition_grant(
        &mut self,
        request_id: &RequestId,
        event: &GrantEvent,
        now: DateTime<Utc>,
    ) -> Result<Grant, StoreError> {
        self.transition_grant_noting(request_id, event, None, now)
            .await
    }

    /// [`StoreTx::transition_grant`], recording what Azure answered
    /// (`azure_detail`, when given) in the same statement.
    ///
    /// # Errors
    /// As [`StoreTx::transition_grant`].
    pub async fn transition_grant_noting(
        &mut self,
        request_id: &RequestId,
        event: &GrantEvent,
        azure_detail: Option<&serde_json::Value>,
        now: DateTime<Utc>,
    ) -> Result<Grant, StoreError> {
        let step = Step {
            event,
            azure_detail,
            now,
        };
        self.transition_locked(request_id, &step).await
    }

    /// [`StoreTx::transition_grant_noting`] from `seen`, the grant as the
    /// caller last read or wrote it: without reading it again while it is
    /// still so (its state and when that changed are as seen). Otherwise as
    /// [`StoreTx::transition_grant_noting`], from the grant as it is now.
    ///
    /// # Errors
    /// As [`StoreTx::transition_grant`].
    pub async fn transition_seen_grant(
        &mut self,
        seen: &Grant,
        event: &GrantEvent,
        azure_detail: Option<&serde_json::Value>,
        now: DateTime<Utc>,
    ) -> Result<Grant, StoreError> {
        let step = Step {
            event,
            azure_detail,
            now,
        };
        match self.move_grant(seen, &step, true).await {
            Ok(Some(moved)) => return Ok(moved),
            // Stale: nothing was written; from the grant as it is.
            Ok(None) | Err(StoreError::InvalidTransition(_)) => {}
            Err(e) => return Err(e),
        }
        self.transition_locked(&seen.request_id, &step).await
    }

    /// Reads the grant under the lock and writes `step` from it.
    async fn transition_locked(
        &mut self,
        request_id: &RequestId,
        step: &Step<'_>,
    ) -> Result<Grant, StoreError> {
        // PostgreSQL: this read takes `FOR UPDATE`.
        let grant = self
            .grant_for_update(request_id)
            .await?
            .ok_or_else(|| StoreError::not_found("grant", request_id.as_str()))?;
        self.move_grant(&grant, step, false).await?.ok_or_else(|| {
            anyhow::anyhow!(
                "grant {request_id} changed while it was moved from {}",
                grant.state
            )
            .into()
        })
    }

    /// Writes `step` from `grant` and records it; `None` when the grant's
    /// state is no longer `grant`'s (or, with `as_seen`, when it changed
    /// state at another time), and nothing was written.
    /// [`StoreError::InvalidTransition`], before anything is written, when
    /// the event does not apply to `grant`'s state.
    async fn move_grant(
        &mut self,
        grant: &Grant,
        step: &Step<'_>,
        as_seen: bool,
    ) -> Result<Option<Grant>, StoreError> {
        const MOVE: &str = "UPDATE grants
            SET state = $1, state_changed_at = $2, end_time = COALESCE($3, end_time),
                azure_detail = COALESCE($6, azure_detail)
            WHERE request_id = $4 AND state = $5";
        const MOVE_SEEN: &str = "UPDATE grants
            SET state = $1, state_changed_at = $2, end_time = COALESCE($3, end_time),
                azure_detail = COALESCE($6, azure_detail)
            WHERE request_id = $4 AND state = $5 AND state_changed_at = $7";
        const RECORD: &str = "INSERT INTO grant_transitions
            (request_id, from_state, to_state, event, end_time, at)
            VALUES ($1, $2, $3, $4, $5, $6)";
        let request_id = &grant.request_id;
        let event = step.event;
        let next = grant.state.apply(event)?;
        let end = event_end(event).map(ts);
        let stamp = ts(step.now);
        let detail = step.azure_detail.map(ToString::to_string);
        let updated = with_tx!(&mut self.tx, |c| {
            let query = sqlx::query(if as_seen { MOVE_SEEN } else { MOVE })
                .bind(next.as_str())
                .bind(&stamp)
                .bind(&end)
                .bind(request_id.as_str())
                .bind(grant.state.as_str())
                .bind(&detail);
            let query = if as_seen {
                query.bind(ts(grant.state_changed_at))
            } else {
                query
            };
            query.execute(c).await.map(|r| r.rows_affected())
        })
        .with_context(|| format!("moving grant {request_id} to {next}"))?;
        if updated != 1 {
            return Ok(None);
        }
        with_tx!(&mut self.tx, |c| {
            sqlx::query(RECORD)
                .bind(request_id.as_str())
                .bind(grant.state.as_str())
                .bind(next.as_str())
                .bind(event_name(event))
                .bind(&end)
                .bind(&stamp)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .with_context(|| format!("recording the transition of grant {request_id}"))?;
        // The row is the one read (under the lock, or as seen and unchanged
        // since) with the columns just written: no read-back.
        Ok(Some(Grant {
            state: next,
            state_changed_at: as_stored(step.now),
            end_time: event_end(event).map(as_stored).or(grant.end_time),
            azure_detail: step.azure_detail.cloned().or(grant.azure_detail.clone()),
            ..grant.clone()
        }))
    }

    /// Records why the grant failed, in words fit for the engineer.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if there is no such grant;
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn set_grant_failure(
        &mut self,
        request_id: &RequestId,
        failure: &str,
    ) -> Result<(), StoreError> {
        self.set_grant_column(request_id, "failure", failure.to_string())
            .await
    }

    /// Clears the grant's failure text (it is open after all).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if there is no such grant;
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn clear_grant_failure(&mut self, request_id: &RequestId) -> Result<(), StoreError> {
        let updated = with_tx!(&mut self.tx, |c| {
            sqlx::query("UPDATE grants SET failure = NULL WHERE request_id = $1")
                .bind(request_id.as_str())
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .with_context(|| format!("clearing the failure of grant {request_id}"))?;
        if updated == 0 {
            return Err(StoreError::not_found("grant", request_id.as_str()));
        }
        Ok(())
    }

    /// Records what Azure answered for the grant.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if there is no such grant;
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn set_azure_detail(
        &mut self,
        request_id: &RequestId,
        detail: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.set_grant_column(request_id, "azure_detail", detail.to_string())
            .await
    }

    /// `column` is one of this module's literals, never input.
    async fn set_grant_column(
        &mut self,
        request_id: &RequestId,
        column: &'static str,
        value: String,
    ) -> Result<(), StoreError> {
        let updated = with_tx!(&mut self.tx, |c| {
            sqlx::query(&format!(
                "UPDATE grants SET {column} = $1 WHERE request_id = $2"
            ))
            .bind(value)
            .bind(request_id.as_str())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .with_context(|| format!("setting {column} of grant {request_id}"))?;
        if updated == 0 {
            return Err(StoreError::not_found("grant", request_id.as_str()));
        }
        Ok(())
    }
}

impl Store {
    /// Inserts one grant in its own transaction; see
    /// [`StoreTx::insert_grant`].
    ///
    /// # Errors
    /// As [`StoreTx::insert_grant`].
    pub async fn insert_grant(&self, new: NewGrant) -> Result<InsertOutcome, StoreError> {
        let mut tx = self.begin().await?;
        let outcome = tx.insert_grant(new).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// The grant `request_id`, if there is one.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn grant(&self, request_id: &RequestId) -> Result<Option<Grant>, StoreError> {
        let sql = grant_by_id_sql();
        let row: Option<GrantRow> = with_read!(&self.db, |c| {
            sqlx::query_as(&sql)
                .bind(request_id.as_str())
                .fetch_optional(c)
                .await
        })
        .with_context(|| format!("reading grant {request_id}"))?;
        row.map(Grant::try_from).transpose()
    }

    /// Up to `limit` of `user`'s grants: open ones first, then the most
    /// recent (for `/jit-status`).
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn grants_for_user(
        &self,
        user: UserId,
        limit: u32,
    ) -> Result<Vec<Grant>, StoreError> {
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE user_id = $1
             ORDER BY CASE WHEN state IN ({}) THEN 0 ELSE 1 END, requested_at DESC, request_id
             LIMIT $2",
            open_states_sql()
        );
        let rows: Vec<GrantRow> = with_read!(&self.db, |c| {
            sqlx::query_as(&sql)
                .bind(user.to_string())
                .bind(limit_i64(limit))
                .fetch_all(c)
                .await
        })
        .with_context(|| format!("listing the grants of user {user}"))?;
        rows.into_iter().map(Grant::try_from).collect()
    }

    /// Every grant requested at or after `since`, oldest first (for the
    /// weekly report).
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn grants_requested_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<Grant>, StoreError> {
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE requested_at >= $1
             ORDER BY requested_at, request_id"
        );
        let rows: Vec<GrantRow> = with_read!(&self.db, |c| {
            sqlx::query_as(&sql).bind(ts(since)).fetch_all(c).await
        })
        .context("listing the grants of a period")?;
        rows.into_iter().map(Grant::try_from).collect()
    }

    /// Every grant whose port may be open ([`GrantState::is_open`]), by end
    /// time: for reconciliation and metrics.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn open_grants(&self) -> Result<Vec<Grant>, StoreError> {
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE state IN ({})
             ORDER BY end_time, request_id",
            open_states_sql()
        );
        let rows: Vec<GrantRow> = with_read!(&self.db, |c| sqlx::query_as(&sql).fetch_all(c).await)
            .context("listing open grants")?;
        rows.into_iter().map(Grant::try_from).collect()
    }

    /// The open grants ([`GrantState::is_open`]) on one VM, by end time:
    /// who holds its ports. Resource ids compare as Azure compares them,
    /// ignoring ASCII case. A request reads these, not every open grant.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn open_grants_on(&self, vm_id: &str) -> Result<Vec<Grant>, StoreError> {
        let sql = open_grants_on_sql();
        let rows: Vec<GrantRow> = with_read!(&self.db, |c| {
            sqlx::query_as(&sql).bind(vm_id).fetch_all(c).await
        })
        .with_context(|| format!("listing the open grants on {vm_id}"))?;
        rows.into_iter().map(Grant::try_from).collect()
    }

    /// Every grant whose initiate had an unclear outcome
    /// ([`GrantState::PendingAzure`]), oldest first: the reconciler settles
    /// them from Azure's requests.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn pending_azure_grants(&self) -> Result<Vec<Grant>, StoreError> {
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE state = 'pending_azure'
             ORDER BY requested_at, request_id"
        );
        let rows: Vec<GrantRow> = with_read!(&self.db, |c| sqlx::query_as(&sql).fetch_all(c).await)
            .context("listing grants pending in Azure")?;
        rows.into_iter().map(Grant::try_from).collect()
    }

    /// Every grant still `requested` (Azure not yet asked, or its answer
    /// not yet recorded), oldest first: after a crash, the ones whose
    /// initiate may have been sent.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn requested_grants(&self) -> Result<Vec<Grant>, StoreError> {
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE state = 'requested'
             ORDER BY requested_at, request_id"
        );
        let rows: Vec<GrantRow> = with_read!(&self.db, |c| sqlx::query_as(&sql).fetch_all(c).await)
            .context("listing requested grants")?;
        rows.into_iter().map(Grant::try_from).collect()
    }

    /// Drawbridge's own identity as Azure last recorded it: the `requestor`
    /// of the newest grant whose initiate Azure answered.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`].
    pub async fn our_requestor(&self) -> Result<Option<String>, StoreError> {
        // The JSON is parsed here, not in SQL: JSON functions differ between
        // the backends. The LIKE narrows to rows that can hold one.
        let sql = "SELECT azure_detail FROM grants
             WHERE azure_detail LIKE '%\"requestor\"%'
             ORDER BY requested_at DESC LIMIT $1";
        let details: Vec<String> = with_read!(&self.db, |c| {
            sqlx::query_scalar(sql)
                .bind(REQUESTOR_CANDIDATES)
                .fetch_all(c)
                .await
        })
        .context("reading our requestor")?;
        Ok(details.iter().find_map(|d| requestor_of(d)))
    }

    /// The grant's state changes, oldest first.
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] or [`StoreError::Unexpected`].
    pub async fn grant_transitions(
        &self,
        request_id: &RequestId,
    ) -> Result<Vec<GrantTransition>, StoreError> {
        let rows: Vec<(String, String, String, Option<String>, String)> =
            with_read!(&self.db, |c| {
                sqlx::query_as(
                    "SELECT from_state, to_state, event, end_time, at FROM grant_transitions
                     WHERE request_id = $1 ORDER BY id",
                )
                .bind(request_id.as_str())
                .fetch_all(c)
                .await
            })
            .with_context(|| format!("listing the transitions of grant {request_id}"))?;
        const T: &str = "grant_transitions";
        let key = request_id.as_str();
        let state = |s: &str| {
            GrantState::parse(s).ok_or_else(|| StoreError::corrupt(T, key, format!("state `{s}`")))
        };
        rows.into_iter()
            .map(|(from, to, event, end, at)| {
                Ok(GrantTransition {
                    from: state(&from)?,
                    to: state(&to)?,
                    event,
                    end_time: parse_opt_ts(T, key, end.as_deref())?,
                    at: parse_ts(T, key, &at)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_show_in_debug_output() {
        let token = InteractionToken::new("aW50ZXJhY3Rpb24tdG9rZW4");
        assert_eq!(format!("{token:?}"), "InteractionToken([redacted])");
        assert_eq!(token.expose(), "aW50ZXJhY3Rpb24tdG9rZW4");
    }

    #[test]
    fn open_states_follow_the_domain() {
        assert_eq!(
            open_states_sql(),
            "'active', 'extended', 'closing', 'extending'"
        );
    }
}
