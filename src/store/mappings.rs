//! Role mappings, stored as JSON specs and validated again on every read.
//!
//! The [`StoreTx`] methods change mappings only; the caller appends the audit
//! events in the same transaction. The [`Store`] methods (`add_mapping`,
//! `remove_mapping`, `import_mappings`) do the change *and* its audit events
//! in one transaction, as the CLI and the Discord admin commands both need.
//!
//! Values from before a change are returned as [`MappingSpec`], the stored
//! form, so a row that no longer validates can still be replaced or removed.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde_json::json;

use super::backend::{with_read, with_tx};
use super::{Store, StoreError, StoreTx, ts};
use crate::domain::mapping::MappingSpec;
use crate::domain::{AuditAction, AuditEvent, MappingName, Outcome, PortAliases, RoleMapping};

/// What [`StoreTx::upsert_mapping`] did.
// One per admin change, never in a hot path: boxing the specs buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingChange {
    /// The name was new.
    Added,
    /// The mapping replaced a different one of the same name.
    Changed {
        /// The stored spec before.
        before: MappingSpec,
    },
    /// The same mapping was stored already; nothing was written.
    Unchanged,
}

/// What [`StoreTx::replace_mappings`] did, by name, each list sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MappingDiff {
    /// New names.
    pub added: Vec<MappingName>,
    /// Names no longer in the set.
    pub removed: Vec<MappingName>,
    /// Names whose mapping changed.
    pub changed: Vec<MappingName>,
    /// Names whose mapping is the same.
    pub unchanged: Vec<MappingName>,
}

impl MappingDiff {
    /// Whether anything changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// The diff as the `mappings_imported` audit detail.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "unchanged": self.unchanged,
        })
    }
}

/// Reads a stored spec; `name` is the row's key.
fn read_spec(name: &str, text: &str) -> Result<MappingSpec, StoreError> {
    let invalid = |message: String| StoreError::InvalidStoredMapping {
        name: name.to_string(),
        message,
    };
    let spec: MappingSpec =
        serde_json::from_str(text).map_err(|e| invalid(format!("spec is not valid JSON: {e}")))?;
    if spec.name != name {
        return Err(invalid(format!(
            "the spec is named `{}`, the row `{name}`",
            spec.name
        )));
    }
    Ok(spec)
}

fn spec_json(mapping: &RoleMapping) -> Result<String, StoreError> {
    serde_json::to_string(&mapping.to_spec())
        .with_context(|| format!("serializing mapping `{}`", mapping.name))
        .map_err(StoreError::from)
}

/// Whether the stored spec means `mapping`. The store writes specs with port
/// numbers only, so the default aliases read them.
fn same(stored: &MappingSpec, mapping: &RoleMapping) -> bool {
    *stored == mapping.to_spec()
        || stored
            .validate(&PortAliases::default())
            .is_ok_and(|m| m == *mapping)
}

fn parse_name(name: &str) -> Result<MappingName, StoreError> {
    MappingName::parse(name).map_err(|e| StoreError::InvalidStoredMapping {
        name: name.to_string(),
        message: e.to_string(),
    })
}

impl StoreTx {
    async fn stored_spec(&mut self, name: &MappingName) -> Result<Option<MappingSpec>, StoreError> {
        // PostgreSQL: the row is locked until the change that follows commits.
        let sql = format!(
            "SELECT spec FROM mappings WHERE name = $1{}",
            self.tx.for_update()
        );
        let text: Option<String> = with_tx!(&mut self.tx, |c| {
            sqlx::query_scalar(&sql)
                .bind(name.as_str())
                .fetch_optional(c)
                .await
        })
        .with_context(|| format!("reading mapping `{name}`"))?;
        text.map(|t| read_spec(name.as_str(), &t)).transpose()
    }

    /// Adds `mapping` or replaces the one of the same name.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn upsert_mapping(
        &mut self,
        mapping: &RoleMapping,
        now: DateTime<Utc>,
    ) -> Result<MappingChange, StoreError> {
        // A row that no longer reads as a spec is replaced, reported as changed.
        let before = match self.stored_spec(&mapping.name).await {
            Ok(before) => before,
            Err(StoreError::InvalidStoredMapping { .. }) => Some(empty_spec(&mapping.name)),
            Err(e) => return Err(e),
        };
        if before.as_ref().is_some_and(|b| same(b, mapping)) {
            return Ok(MappingChange::Unchanged);
        }
        const UPSERT: &str = "INSERT INTO mappings (name, spec, created_at, updated_at)
            VALUES ($1, $2, $3, $3)
            ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at";
        with_tx!(&mut self.tx, |c| {
            sqlx::query(UPSERT)
                .bind(mapping.name.as_str())
                .bind(spec_json(mapping)?)
                .bind(ts(now))
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .with_context(|| format!("storing mapping `{}`", mapping.name))?;
        self.bump_mappings_version().await?;
        Ok(match before {
            None => MappingChange::Added,
            Some(before) => MappingChange::Changed { before },
        })
    }

    /// Removes the mapping `name`, returning its stored spec, or `None` if
    /// there was none. A row that no longer reads as a spec is removed too;
    /// its spec is then returned with the name only.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn remove_mapping(
        &mut self,
        name: &MappingName,
    ) -> Result<Option<MappingSpec>, StoreError> {
        let text: Option<String> = with_tx!(&mut self.tx, |c| {
            sqlx::query_scalar("DELETE FROM mappings WHERE name = $1 RETURNING spec")
                .bind(name.as_str())
                .fetch_optional(c)
                .await
        })
        .with_context(|| format!("removing mapping `{name}`"))?;
        if text.is_some() {
            self.bump_mappings_version().await?;
        }
        Ok(text.map(|t| read_spec(name.as_str(), &t).unwrap_or_else(|_| empty_spec(name))))
    }

    /// Counts a change of the mappings, in the transaction that makes it
    /// ([`Store::mappings_version`]).
    async fn bump_mappings_version(&mut self) -> Result<(), StoreError> {
        const BUMP: &str = "INSERT INTO mappings_version (id, version) VALUES (1, 1)
            ON CONFLICT (id) DO UPDATE SET version = mappings_version.version + 1";
        with_tx!(&mut self.tx, |c| {
            sqlx::query(BUMP)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .context("counting a change of the mappings")?;
        Ok(())
    }

    /// Replaces the whole set with `mappings` (an import) and reports the
    /// difference.
    ///
    /// # Errors
    /// [`StoreError::InvalidInput`] if two mappings share a name (nothing is
    /// changed); [`StoreError::Unexpected`] if the database fails.
    pub async fn replace_mappings(
        &mut self,
        mappings: &[RoleMapping],
        now: DateTime<Utc>,
    ) -> Result<MappingDiff, StoreError> {
        let mut names = BTreeSet::new();
        for m in mappings {
            if !names.insert(&m.name) {
                return Err(StoreError::InvalidInput(format!(
                    "mapping `{}` appears twice",
                    m.name
                )));
            }
        }
        let sql = format!("SELECT name FROM mappings{}", self.tx.for_update());
        let stored: Vec<(String,)> = with_tx!(&mut self.tx, |c| {
            sqlx::query_as(&sql).fetch_all(c).await
        })
        .context("listing stored mappings")?;
        let mut diff = MappingDiff::default();
        let mut sorted: Vec<&RoleMapping> = mappings.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        for mapping in sorted {
            match self.upsert_mapping(mapping, now).await? {
                MappingChange::Added => diff.added.push(mapping.name.clone()),
                MappingChange::Changed { .. } => diff.changed.push(mapping.name.clone()),
                MappingChange::Unchanged => diff.unchanged.push(mapping.name.clone()),
            }
        }
        let mut gone: Vec<String> = stored
            .into_iter()
            .map(|(n,)| n)
            .filter(|n| !mappings.iter().any(|m| m.name.as_str() == n))
            .collect();
        gone.sort();
        for name in gone {
            with_tx!(&mut self.tx, |c| {
                sqlx::query("DELETE FROM mappings WHERE name = $1")
                    .bind(&name)
                    .execute(c)
                    .await
                    .map(|r| r.rows_affected())
            })
            .with_context(|| format!("removing mapping `{name}`"))?;
            diff.removed.push(parse_name(&name)?);
        }
        if !diff.removed.is_empty() {
            self.bump_mappings_version().await?;
        }
        Ok(diff)
    }
}

impl Store {
    /// How many times the mappings have changed: equal counts, equal
    /// mappings. Read before [`Store::list_mappings`], so that a change
    /// between the two is read again next time, never missed.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn mappings_version(&self) -> Result<i64, StoreError> {
        let version: Option<i64> = with_read!(&self.db, |c| {
            sqlx::query_scalar("SELECT version FROM mappings_version WHERE id = 1")
                .fetch_optional(c)
                .await
        })
        .context("reading the mappings' version")?;
        Ok(version.unwrap_or(0))
    }

    /// Every mapping, by name, each validated with `aliases`.
    ///
    /// # Errors
    /// [`StoreError::InvalidStoredMapping`] naming the first row that no
    /// longer validates (it is never silently dropped);
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn list_mappings(
        &self,
        aliases: &PortAliases,
    ) -> Result<Vec<RoleMapping>, StoreError> {
        let rows: Vec<(String, String)> = with_read!(&self.db, |c| {
            sqlx::query_as("SELECT name, spec FROM mappings ORDER BY name")
                .fetch_all(c)
                .await
        })
        .context("listing mappings")?;
        rows.into_iter()
            .map(|(name, text)| {
                read_spec(&name, &text)?.validate(aliases).map_err(|e| {
                    StoreError::InvalidStoredMapping {
                        name,
                        message: e.to_string(),
                    }
                })
            })
            .collect()
    }

    /// Adds or replaces `mapping` and, if that changed anything, appends a
    /// `mapping_added` audit event by `actor`, in one transaction.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn add_mapping(
        &self,
        mapping: &RoleMapping,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<MappingChange, StoreError> {
        let mut tx = self.begin().await?;
        let change = tx.upsert_mapping(mapping, now).await?;
        if let Some(event) = added_event(mapping, &change, actor, now) {
            tx.append_audit(&event).await?;
        }
        tx.commit().await?;
        Ok(change)
    }

    /// Removes the mapping `name` and, if it existed, appends a
    /// `mapping_removed` audit event by `actor`, in one transaction.
    ///
    /// # Errors
    /// [`StoreError::Unexpected`] if the database fails.
    pub async fn remove_mapping(
        &self,
        name: &MappingName,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<MappingSpec>, StoreError> {
        let mut tx = self.begin().await?;
        let before = tx.remove_mapping(name).await?;
        if let Some(before) = &before {
            tx.append_audit(&removed_event(name, before, actor, now))
                .await?;
        }
        tx.commit().await?;
        Ok(before)
    }

    /// Replaces the whole set with `mappings` and appends, in one
    /// transaction, a `mapping_added` event per added or changed mapping, a
    /// `mapping_removed` event per removed one, and a `mappings_imported`
    /// summary with the diff in its detail.
    ///
    /// # Errors
    /// As [`StoreTx::replace_mappings`].
    pub async fn import_mappings(
        &self,
        mappings: &[RoleMapping],
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<MappingDiff, StoreError> {
        let mut tx = self.begin().await?;
        let before: BTreeMap<String, String> = with_tx!(&mut tx.tx, |c| {
            sqlx::query_as::<_, (String, String)>("SELECT name, spec FROM mappings")
                .fetch_all(c)
                .await
        })
        .context("reading mappings before the import")?
        .into_iter()
        .collect();
        let diff = tx.replace_mappings(mappings, now).await?;
        let by_name: BTreeMap<&MappingName, &RoleMapping> =
            mappings.iter().map(|m| (&m.name, m)).collect();
        let spec_before = |name: &MappingName| {
            before
                .get(name.as_str())
                .and_then(|t| read_spec(name.as_str(), t).ok())
        };
        let mut events = Vec::new();
        for name in &diff.added {
            events.extend(added_event(
                by_name[name],
                &MappingChange::Added,
                actor,
                now,
            ));
        }
        for name in &diff.changed {
            let change = MappingChange::Changed {
                before: spec_before(name).unwrap_or_else(|| empty_spec(name)),
            };
            events.extend(added_event(by_name[name], &change, actor, now));
        }
        for name in &diff.removed {
            let before = spec_before(name).unwrap_or_else(|| empty_spec(name));
            events.push(removed_event(name, &before, actor, now));
        }
        events.push(
            AuditEvent::new(
                now,
                actor,
                AuditAction::MappingsImported,
                "mappings",
                Outcome::Success,
            )
            .with_detail(diff.to_json()),
        );
        for event in &events {
            tx.append_audit(event).await?;
        }
        tx.commit().await?;
        Ok(diff)
    }
}

/// The spec recorded as "before" for a row that no longer reads as one: the
/// name only.
fn empty_spec(name: &MappingName) -> MappingSpec {
    MappingSpec {
        name: name.to_string(),
        roles: Vec::new(),
        vms: String::new(),
        ports: Vec::new(),
        max_duration: String::new(),
        ..MappingSpec::default()
    }
}

fn added_event(
    mapping: &RoleMapping,
    change: &MappingChange,
    actor: &str,
    now: DateTime<Utc>,
) -> Option<AuditEvent> {
    let detail = match change {
        MappingChange::Unchanged => return None,
        MappingChange::Added => json!({"change": "added", "mapping": mapping.to_spec()}),
        MappingChange::Changed { before } => {
            json!({"change": "changed", "mapping": mapping.to_spec(), "before": before})
        }
    };
    Some(
        AuditEvent::new(
            now,
            actor,
            AuditAction::MappingAdded,
            mapping.name.as_str(),
            Outcome::Success,
        )
        .with_detail(detail),
    )
}

fn removed_event(
    name: &MappingName,
    before: &MappingSpec,
    actor: &str,
    now: DateTime<Utc>,
) -> AuditEvent {
    AuditEvent::new(
        now,
        actor,
        AuditAction::MappingRemoved,
        name.as_str(),
        Outcome::Success,
    )
    .with_detail(json!({"mapping": before}))
}
