//! `/jit-who [vm]`: who holds which ports open, so an engineer knows
//! whether someone else is on the box before they connect.
//!
//! A member sees the open grants of the VMs their mappings let them
//! request (the same reach as autocomplete: a VM outside it is "not
//! found", as for `/jit`); admins see every VM. Sources are an engineer's
//! home address: only admins see them.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::Service;
use super::request::RequestError;
use crate::domain::connect::Connection;
use crate::domain::{AuditAction, IndexedVm, VmKey, VmRef, authorize};
use crate::interactions::Invocation;
use crate::store::{AuditFilter, Grant, StoreError};

/// One open grant and who holds it.
#[derive(Debug, Clone)]
pub struct Holder {
    pub grant: Grant,
    /// Their display name when they asked (the user id if unknown).
    pub member: String,
}

/// The answer to `/jit-who`.
#[derive(Debug, Clone)]
pub struct Holders {
    /// The VM asked about (`rg/name`), or `None` for every VM in reach.
    pub vm: Option<String>,
    pub holders: Vec<Holder>,
    /// Whether the asker may see sources (an admin).
    pub show_sources: bool,
}

impl Service {
    /// The open grants on `vm`, or on every VM the member may request.
    ///
    /// # Errors
    /// [`RequestError::VmNotFound`] / [`RequestError::VmAmbiguous`] for a
    /// VM outside the member's reach; the store failing.
    pub async fn who_holds(
        &self,
        who: &Invocation,
        vm: Option<&VmRef>,
    ) -> Result<Holders, RequestError> {
        let roles = &who.member.roles;
        let admin = self.is_admin(roles);
        let target = match vm {
            Some(vm) if admin => Some(self.resolve_vm(vm).await?),
            Some(vm) => Some(self.resolve_vm_for(&self.mappings(), roles, vm).await?),
            None => None,
        };
        let mappings = self.mappings();
        let in_reach = |g: &Grant| match &target {
            Some(t) => g.vm_id.eq_ignore_ascii_case(&t.vm.vm_id),
            None => {
                admin
                    || self
                        .jit()
                        .by_key(&VmKey::of(&g.vm_id))
                        .and_then(|vm| vm.identity())
                        .is_some_and(|id| authorize::may_request_vm(&mappings, roles, &id))
            }
        };
        let holders = self
            .open_holders()
            .await?
            .into_iter()
            .filter(|h| in_reach(&h.grant))
            .collect();
        Ok(Holders {
            vm: target.map(|t| t.identity.qualified()),
            holders,
            show_sources: admin,
        })
    }

    /// How to reach `grant`'s VM, read from Azure (cached in the index),
    /// with the login user of the mapping that allowed it when it names one.
    pub async fn connection_of(&self, grant: &Grant) -> Option<Arc<Connection>> {
        let vm = self.jit().by_key(&VmKey::of(&grant.vm_id))?;
        let connection = self.jit().connection(&vm).await?;
        Some(self.with_mapping_user(grant, connection))
    }

    /// `connection` with the `ssh_user` of `grant`'s mapping, which takes
    /// precedence over the VM's tag and admin user.
    fn with_mapping_user(&self, grant: &Grant, connection: Arc<Connection>) -> Arc<Connection> {
        let mappings = self.mappings();
        match mappings
            .iter()
            .find(|m| m.name == grant.mapping)
            .and_then(|m| m.ssh_user())
        {
            Some(user) => Arc::new(Connection::clone(&connection).with_user(Some(user))),
            None => connection,
        }
    }

    /// VMs of the configured subscriptions without a JIT policy (the
    /// report's coverage; `/jit-admin coverage` checks who asks first).
    ///
    /// # Errors
    /// Azure's failure to list.
    pub async fn unprotected_vms(&self) -> Result<Vec<String>, super::JitError> {
        self.jit().unprotected_vms().await
    }

    /// What was last read about `grant`'s VM, without asking Azure.
    pub fn cached_connection(&self, grant: &Grant) -> Option<Arc<Connection>> {
        let connection = self.jit().cached_connection(&grant.vm_id)?;
        Some(self.with_mapping_user(grant, connection))
    }

    /// Every open grant with its holder's name (for autocomplete).
    ///
    /// # Errors
    /// If the store fails.
    pub async fn open_holders(&self) -> Result<Vec<Holder>, StoreError> {
        let open = self.store().open_grants().await?;
        let names = self.member_names(&open).await?;
        Ok(open
            .into_iter()
            .map(|grant| Holder {
                member: names
                    .get(grant.request_id.as_str())
                    .cloned()
                    .unwrap_or_else(|| grant.user_id.to_string()),
                grant,
            })
            .collect())
    }

    /// Request id to the member's display name, from the audit log's
    /// "request received" events (the grants table keeps only the id).
    async fn member_names(&self, grants: &[Grant]) -> Result<HashMap<String, String>, StoreError> {
        let Some(since) = grants.iter().map(|g| g.requested_at).min() else {
            return Ok(HashMap::new());
        };
        let events = self
            .store()
            .audit_events(&AuditFilter {
                since: Some(since),
                action: Some(AuditAction::RequestReceived),
                ..AuditFilter::default()
            })
            .await?;
        Ok(events
            .into_iter()
            .filter_map(|r| {
                let detail = &r.event.detail;
                Some((
                    detail["request_id"].as_str()?.to_owned(),
                    detail["user"].as_str()?.to_owned(),
                ))
            })
            .collect())
    }
}

/// Autocomplete's note for `vm`: `open for @sam until 14:30` (the
/// soonest to end first, `+N` for more), or `None` when nobody holds it.
pub fn open_note(vm: &IndexedVm, open: &[Holder]) -> Option<String> {
    let mut on_vm: Vec<&Holder> = open
        .iter()
        .filter(|h| h.grant.vm_id.eq_ignore_ascii_case(&vm.vm_id))
        .collect();
    on_vm.sort_by_key(|h| h.grant.end_time);
    let first = on_vm.first()?;
    let until = first
        .grant
        .end_time
        .map(|t: DateTime<Utc>| format!(" until {} UTC", t.format("%H:%M")))
        .unwrap_or_default();
    let more = match on_vm.len() {
        1 => String::new(),
        n => format!(" +{}", n - 1),
    };
    Some(format!("open for @{}{until}{more}", first.member))
}
