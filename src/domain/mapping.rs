//! Role mappings: which Discord roles may open which ports on which VMs, for
//! how long and from where. Kept in SQLite and as TOML in git.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::LazyLock;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::connect::SshUser;
use super::duration::AccessDuration;
use super::ids::RoleId;
use super::port::{PortAliases, PortSpec};
use super::source::{SourcePrefix, is_broad_net};
use super::vm::{ResourceGroupName, SubscriptionId, VmIdentity, VmRef};

/// Why a mapping was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// Bad name.
    #[error(
        "`{0}` is not a valid mapping name: 1 to 64 lowercase letters, digits, `-` or `_`, starting with a letter or digit"
    )]
    BadName(String),
    /// No roles.
    #[error("mapping `{0}` names no role: give at least one Discord role id")]
    NoRoles(String),
    /// A field failed validation.
    #[error("mapping `{name}`, {field}: {message}")]
    Field {
        /// The mapping.
        name: String,
        /// Which field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// A mapping's unique name, such as `sre-web`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MappingName(String);

impl MappingName {
    /// Validates a mapping name.
    pub fn parse(input: &str) -> Result<Self, MappingError> {
        let ok = (1..=64).contains(&input.len())
            && input.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && input
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(input.to_string()))
        } else {
            Err(MappingError::BadName(input.chars().take(64).collect()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MappingName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for MappingName {
    type Error = MappingError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<MappingName> for String {
    fn from(value: MappingName) -> Self {
        value.0
    }
}

/// Which VMs a mapping covers.
#[derive(Debug, Clone)]
pub enum VmSelector {
    /// Every VM (`*`).
    All,
    /// Every VM of one subscription (`sub:<id>`).
    Subscription(SubscriptionId),
    /// Every VM of one resource group (`rg:<name>` or `rg:<sub>/<name>`).
    ResourceGroup(Option<SubscriptionId>, ResourceGroupName),
    /// VM names matching a glob, case-insensitively (`web-*`).
    Glob(glob::Pattern),
    /// One VM (`web-01`, `rg/web-01`, `sub/rg/web-01`).
    Exact(VmRef),
    /// Any of several selectors, written comma-separated (`web-*,rg:rg-data`).
    AnyOf(Vec<VmSelector>),
}

impl PartialEq for VmSelector {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for VmSelector {}

impl VmSelector {
    /// Parses `*`, `sub:<id>`, `rg:<name>`, `rg:<sub>/<name>`, a glob with `*`,
    /// `?` or `[…]`, or an exact VM reference; several, comma-separated.
    pub fn parse(input: &str) -> Result<Self, String> {
        let input = input.trim();
        if input.contains(',') {
            let parts = input
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(Self::parse_one)
                .collect::<Result<Vec<_>, _>>()?;
            return match parts.len() {
                0 => Err("no VM selector given".into()),
                1 => Ok(parts.into_iter().next().expect("one")),
                _ => Ok(Self::AnyOf(parts)),
            };
        }
        Self::parse_one(input)
    }

    fn parse_one(input: &str) -> Result<Self, String> {
        if input == "*" {
            return Ok(Self::All);
        }
        if let Some(sub) = input.strip_prefix("sub:") {
            return SubscriptionId::parse(sub)
                .map(Self::Subscription)
                .map_err(|e| e.to_string());
        }
        if let Some(rg) = input.strip_prefix("rg:") {
            return match rg.split_once('/') {
                Some((sub, rg)) => Ok(Self::ResourceGroup(
                    Some(SubscriptionId::parse(sub).map_err(|e| e.to_string())?),
                    ResourceGroupName::parse(rg).map_err(|e| e.to_string())?,
                )),
                None => ResourceGroupName::parse(rg)
                    .map(|rg| Self::ResourceGroup(None, rg))
                    .map_err(|e| e.to_string()),
            };
        }
        if input.contains(['*', '?', '[']) {
            let valid_chars = input.len() <= 64
                && input.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'.' | b'_' | b'-' | b'*' | b'?' | b'[' | b']' | b'!')
                });
            if !valid_chars {
                return Err(format!(
                    "`{input}` is not a valid VM name pattern: use VM-name characters with * and ?"
                ));
            }
            return glob::Pattern::new(input)
                .map(Self::Glob)
                .map_err(|e| format!("`{input}` is not a valid VM name pattern: {}", e.msg));
        }
        VmRef::parse(input)
            .map(Self::Exact)
            .map_err(|e| e.to_string())
    }

    /// Whether a VM called `name` could be covered, judged by its name
    /// alone: `false` for subscription and resource-group selectors, which
    /// need the VM's place to tell.
    pub fn may_match_name(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Subscription(_) | Self::ResourceGroup(..) => false,
            Self::Glob(pattern) => pattern.matches_with(
                name,
                glob::MatchOptions {
                    case_sensitive: false,
                    require_literal_separator: false,
                    require_literal_leading_dot: false,
                },
            ),
            Self::Exact(r) => r.name.matches(name),
            Self::AnyOf(all) => all.iter().any(|s| s.may_match_name(name)),
        }
    }

    /// Whether `vm` is covered.
    pub fn matches(&self, vm: &VmIdentity) -> bool {
        self.matches_at(
            &vm.subscription,
            vm.resource_group.as_str(),
            vm.name.as_str(),
        )
    }

    /// Whether the VM `name` in this subscription and resource group is
    /// covered ([`VmSelector::matches`] without building a [`VmIdentity`]).
    pub fn matches_at(
        &self,
        subscription: &SubscriptionId,
        resource_group: &str,
        name: &str,
    ) -> bool {
        match self {
            Self::AnyOf(all) => all
                .iter()
                .any(|s| s.matches_at(subscription, resource_group, name)),
            one => one
                .covers_place(subscription, resource_group)
                .unwrap_or_else(|| one.may_match_name(name)),
        }
    }

    /// Whether the VMs of one subscription and resource group are covered
    /// by their place alone: `Some(true)` all of them, `Some(false)` none,
    /// `None` when it depends on each VM's name (see
    /// [`VmSelector::may_match_name`]). Lets a set of VMs be judged once
    /// per place instead of once per VM.
    pub fn covers_place(
        &self,
        subscription: &SubscriptionId,
        resource_group: &str,
    ) -> Option<bool> {
        match self {
            Self::All => Some(true),
            Self::Subscription(sub) => Some(sub == subscription),
            Self::ResourceGroup(sub, rg) => {
                Some(sub.as_ref().is_none_or(|s| s == subscription) && rg.matches(resource_group))
            }
            Self::Glob(_) => None,
            Self::Exact(r) => (!r.is_in(subscription, resource_group)).then_some(false),
            Self::AnyOf(all) => any_covers_place(
                all.iter()
                    .map(|s| s.covers_place(subscription, resource_group)),
            ),
        }
    }
}

/// Several selectors' [`VmSelector::covers_place`] verdicts on one place,
/// as one selector listing them all would give it: `Some(true)` when any
/// covers the place, `Some(false)` when none can, else `None` (by name).
pub fn any_covers_place(verdicts: impl IntoIterator<Item = Option<bool>>) -> Option<bool> {
    let mut none_can = true;
    for verdict in verdicts {
        match verdict {
            Some(true) => return Some(true),
            Some(false) => {}
            None => none_can = false,
        }
    }
    none_can.then_some(false)
}

/// The form [`VmSelector::parse`] reads.
impl fmt::Display for VmSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Subscription(s) => write!(f, "sub:{s}"),
            Self::ResourceGroup(Some(s), rg) => write!(f, "rg:{s}/{rg}"),
            Self::ResourceGroup(None, rg) => write!(f, "rg:{rg}"),
            Self::Glob(p) => f.write_str(p.as_str()),
            Self::Exact(r) => write!(f, "{r}"),
            Self::AnyOf(all) => {
                let parts: Vec<String> = all.iter().map(ToString::to_string).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

/// Which ports a mapping allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSelector {
    /// Every port the VM's JIT policy has (`*`).
    Any,
    /// These ports only.
    Ports(PortSpec),
}

impl PortSelector {
    /// Parses `*` or a port spec.
    pub fn parse(input: &str, aliases: &PortAliases) -> Result<Self, String> {
        if input.trim() == "*" {
            Ok(Self::Any)
        } else {
            PortSpec::parse(input, aliases)
                .map(Self::Ports)
                .map_err(|e| e.to_string())
        }
    }

    /// Whether every port of `ports` is allowed.
    pub fn covers(&self, ports: &PortSpec) -> bool {
        match self {
            Self::Any => true,
            Self::Ports(allowed) => allowed.covers(ports),
        }
    }
}

impl fmt::Display for PortSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Ports(p) => write!(f, "{p}"),
        }
    }
}

/// Where a mapping's grants may be opened from. Without a list, only
/// single addresses: a network is opened only when a mapping writes out one
/// that contains it, and `*` or a broad network (see
/// [`SourcePrefix::is_broad`]) only with `allow_broad_sources`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SourcePolicy {
    /// Any one address (`/32`, `/128`), never a network.
    #[default]
    SingleAddress,
    /// Anything, including Azure's `*` (open to every address).
    Any,
    /// Addresses and networks inside these ranges; never `*`.
    Within(Vec<IpNet>),
}

impl SourcePolicy {
    /// Parses `any`/`*` or a list of addresses and CIDRs.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in items {
            match SourcePrefix::parse(item).map_err(|e| e.to_string())? {
                SourcePrefix::Any => return Ok(Self::Any),
                SourcePrefix::Net(net) => nets.push(net),
            }
        }
        if nets.is_empty() {
            return Err("no source range given: use addresses and CIDRs".into());
        }
        Ok(Self::Within(nets))
    }

    /// Whether `source` is allowed.
    pub fn allows(&self, source: &SourcePrefix) -> bool {
        match self {
            Self::SingleAddress => source.is_single_address(),
            Self::Any => true,
            Self::Within(nets) => nets.iter().any(|n| source.within(n)),
        }
    }

    /// Whether it reaches `*` or a broad network.
    pub fn is_broad(&self) -> bool {
        match self {
            Self::SingleAddress => false,
            Self::Any => true,
            Self::Within(nets) => nets.iter().any(is_broad_net),
        }
    }

    /// The items, as [`SourcePolicy::parse`] reads them; none for
    /// [`SourcePolicy::SingleAddress`], which is written by leaving the list out.
    pub fn items(&self) -> Vec<String> {
        match self {
            Self::SingleAddress => Vec::new(),
            Self::Any => vec!["any".into()],
            Self::Within(nets) => nets.iter().map(ToString::to_string).collect(),
        }
    }

    /// What a member may give, in words, for a refusal: never `*` or a
    /// broad network, so no message suggests one.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::SingleAddress => Some("a single address such as 203.0.113.7".into()),
            Self::Any => None,
            Self::Within(nets) => {
                let narrow: Vec<String> = nets
                    .iter()
                    .filter(|n| !is_broad_net(n))
                    .map(ToString::to_string)
                    .collect();
                (!narrow.is_empty()).then(|| format!("a source within {}", narrow.join(", ")))
            }
        }
    }
}

impl fmt::Display for SourcePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SingleAddress => f.write_str("single addresses"),
            _ => f.write_str(&self.items().join(", ")),
        }
    }
}

/// What a request does when another member holds an open window on the
/// same VM and port from another address: Azure keeps one window per port,
/// so opening it ends theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnConflict {
    /// Ask the member first (Open anyway or Cancel).
    #[default]
    Ask,
    /// Refuse, naming who holds the port until when.
    Refuse,
}

impl OnConflict {
    /// Parses `ask` or `refuse`.
    pub fn parse(input: &str) -> Result<Self, String> {
        match input.trim().to_ascii_lowercase().as_str() {
            "ask" => Ok(Self::Ask),
            "refuse" => Ok(Self::Refuse),
            _ => Err(format!(
                "`{}` is not a choice: use \"ask\" or \"refuse\"",
                input.chars().take(32).collect::<String>()
            )),
        }
    }

    /// The written form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ask => "ask",
            Self::Refuse => "refuse",
        }
    }
}

/// A role mapping.
///
/// Its sources, default source, login user and approval rule are its
/// [`MappingTerms`], kept on the heap only when one of them differs from
/// the default: most mappings leave all four alone, and inline they were
/// 128 of a mapping's 264 bytes (issue 17: the mapping set is most of the
/// bot's heap at 10,000 mappings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleMapping {
    /// Unique name.
    pub name: MappingName,
    /// Members with any of these roles are covered.
    pub roles: RoleSet,
    /// Which VMs.
    pub vms: VmSelector,
    /// Which ports.
    pub ports: PortSelector,
    /// The longest window.
    pub max_duration: AccessDuration,
    /// Whether `sources` may be `*` or broad networks: set on purpose, and
    /// shown loudly wherever mappings are listed.
    pub allow_broad_sources: bool,
    /// Whether a reason must be given.
    pub require_reason: bool,
    /// When another member holds the port: ask first, or refuse.
    pub on_conflict: OnConflict,
    /// `None` while the terms are the defaults.
    terms: Option<Box<MappingTerms>>,
}

/// The parts of a mapping that most mappings leave at their defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MappingTerms {
    /// Where from.
    pub sources: SourcePolicy,
    /// The source used when the member gives none and has none saved.
    pub default_source: Option<SourcePrefix>,
    /// The login user shown in `ssh user@host` (before the VM's
    /// `drawbridge-ssh-user` tag and its admin user).
    pub ssh_user: Option<SshUser>,
    /// Who approves requests, how many, for how long; who may skip it.
    pub approval: ApprovalRule,
}

static DEFAULT_TERMS: LazyLock<MappingTerms> = LazyLock::new(MappingTerms::default);

/// The longest a request may wait for approvers.
pub const MAX_APPROVAL_TIMEOUT_MINUTES: u32 = 24 * 60;
/// The most approvers a mapping may ask for.
pub const MAX_APPROVALS: u32 = 10;

/// A mapping's approval rule (issue 13). Kept as one value so the other
/// mapping fields and this one change independently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRule {
    /// Roles whose members may approve or deny.
    pub approvers: BTreeSet<RoleId>,
    /// Distinct approvers needed; 0 is self-service.
    pub approvals: u32,
    /// How long a request waits before it expires.
    pub timeout: AccessDuration,
    /// Roles that may skip approval with `break_glass:true` and a reason.
    pub break_glass: BTreeSet<RoleId>,
}

impl Default for ApprovalRule {
    fn default() -> Self {
        Self {
            approvers: BTreeSet::new(),
            approvals: 0,
            timeout: AccessDuration::from_minutes(30).expect("30 minutes is a valid duration"),
            break_glass: BTreeSet::new(),
        }
    }
}

impl ApprovalRule {
    /// Whether requests wait for approvers.
    pub fn is_required(&self) -> bool {
        self.approvals > 0
    }

    /// Whether any of `roles` is an approver role.
    pub fn is_approver(&self, roles: &[RoleId]) -> bool {
        roles.iter().any(|r| self.approvers.contains(r))
    }

    /// Whether any of `roles` may use break-glass.
    pub fn may_break_glass(&self, roles: &[RoleId]) -> bool {
        roles.iter().any(|r| self.break_glass.contains(r))
    }

    /// `1 approval from <@&1>, 30m timeout`, or `self-service`.
    pub fn describe(&self) -> String {
        let mut text = if self.is_required() {
            format!(
                "{} approval(s) from {}, timeout {}",
                self.approvals,
                role_mentions(&self.approvers),
                self.timeout
            )
        } else {
            "self-service".to_owned()
        };
        if !self.break_glass.is_empty() {
            text.push_str(&format!(
                ", break-glass for {}",
                role_mentions(&self.break_glass)
            ));
        }
        text
    }
}

/// `<@&1>, <@&2>`: roles as Discord mentions.
pub fn role_mentions<'a>(roles: impl IntoIterator<Item = &'a RoleId>) -> String {
    let parts: Vec<String> = roles.into_iter().map(|r| format!("<@&{r}>")).collect();
    parts.join(", ")
}

/// The roles a mapping covers: sorted, without duplicates.
///
/// A boxed slice rather than a `BTreeSet`: every mapping holds one, almost
/// always of one or two roles, and a set's node is about 100 bytes of heap
/// where the slice's is 8 (issue 17, the mapping set's memory).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RoleSet(Box<[RoleId]>);

impl RoleSet {
    /// The roles, ascending.
    pub fn iter(&self) -> std::slice::Iter<'_, RoleId> {
        self.0.iter()
    }

    /// Whether `role` is one of them.
    pub fn contains(&self, role: &RoleId) -> bool {
        self.0.binary_search(role).is_ok()
    }

    /// How many roles.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The lowest role id.
    pub fn first(&self) -> Option<&RoleId> {
        self.0.first()
    }

    /// The roles here that `other` lacks, ascending.
    pub fn difference<'a>(&'a self, other: &'a RoleSet) -> impl Iterator<Item = &'a RoleId> {
        self.iter().filter(move |r| !other.contains(r))
    }
}

impl FromIterator<RoleId> for RoleSet {
    fn from_iter<I: IntoIterator<Item = RoleId>>(roles: I) -> Self {
        let mut roles: Vec<RoleId> = roles.into_iter().collect();
        roles.sort_unstable();
        roles.dedup();
        Self(roles.into_boxed_slice())
    }
}

impl<'a> IntoIterator for &'a RoleSet {
    type Item = &'a RoleId;
    type IntoIter = std::slice::Iter<'a, RoleId>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// A mapping as written in TOML and JSON: strings, checked by
/// [`MappingSpec::validate`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingSpec {
    /// Unique name.
    pub name: String,
    /// Discord role ids.
    pub roles: Vec<RoleId>,
    /// VM selector: `*`, `sub:<id>`, `rg:<name>`, a glob or a VM.
    pub vms: String,
    /// Ports: `*` or names and numbers.
    pub ports: Vec<String>,
    /// Longest window, e.g. `4h`.
    pub max_duration: String,
    /// Addresses and CIDRs (or `any`); omitted means single addresses only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<String>>,
    /// Lets `sources` hold `any` or networks shorter than /16 (IPv4) or
    /// /32 (IPv6).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_broad_sources: bool,
    /// Source used when the member gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_source: Option<String>,
    /// The login user for `ssh user@host` on the mapping's VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_user: Option<String>,
    /// Whether a reason is required.
    #[serde(default)]
    pub require_reason: bool,
    /// The older single approver role: read into `approvers`, never written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver_role: Option<RoleId>,
    /// `ask` (the default: the member is asked before another member's
    /// window on the port is ended) or `refuse`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_conflict: Option<OnConflict>,
    /// Roles whose members approve requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<RoleId>,
    /// Distinct approvers needed; 0 (the default) is self-service.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub approvals: u32,
    /// How long a request waits for approvers, e.g. `30m` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_timeout: Option<String>,
    /// Roles that may skip approval with a reason (break-glass).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub break_glass: Vec<RoleId>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl MappingSpec {
    /// Checks every field and builds the mapping.
    pub fn validate(&self, aliases: &PortAliases) -> Result<RoleMapping, MappingError> {
        let name = MappingName::parse(&self.name)?;
        let field = |field: &'static str, message: String| MappingError::Field {
            name: self.name.clone(),
            field,
            message,
        };
        if self.roles.is_empty() {
            return Err(MappingError::NoRoles(self.name.clone()));
        }
        let vms = VmSelector::parse(&self.vms).map_err(|m| field("vms", m))?;
        let ports = if self.ports.iter().any(|p| p.trim() == "*") {
            PortSelector::Any
        } else {
            PortSelector::parse(&self.ports.join(","), aliases).map_err(|m| field("ports", m))?
        };
        let max_duration = AccessDuration::parse(&self.max_duration)
            .map_err(|e| field("max_duration", e.to_string()))?;
        let sources = match &self.sources {
            None => SourcePolicy::default(),
            Some(items) => SourcePolicy::parse(items.iter().map(String::as_str))
                .map_err(|m| field("sources", m))?,
        };
        if sources.is_broad() && !self.allow_broad_sources {
            return Err(field(
                "sources",
                format!(
                    "{sources} reaches too many addresses (any, or a network shorter than /16 for IPv4 or /32 for IPv6): \
                     list narrower networks, or set allow_broad_sources = true if that is meant"
                ),
            ));
        }
        let default_source = self
            .default_source
            .as_deref()
            .map(SourcePrefix::parse)
            .transpose()
            .map_err(|e| field("default_source", e.to_string()))?;
        if let Some(src) = &default_source
            && !sources.allows(src)
        {
            return Err(field(
                "default_source",
                format!("{src} is outside the mapping's sources ({sources})"),
            ));
        }
        let ssh_user = self
            .ssh_user
            .as_deref()
            .map(SshUser::parse)
            .transpose()
            .map_err(|m| field("ssh_user", m))?;
        let on_conflict = self.on_conflict.unwrap_or_default();
        let approval = self.approval_rule()?;
        let mut mapping = RoleMapping {
            name,
            roles: self.roles.iter().copied().collect(),
            vms,
            ports,
            max_duration,
            allow_broad_sources: self.allow_broad_sources,
            require_reason: self.require_reason,
            on_conflict,
            terms: None,
        };
        mapping.set_terms(MappingTerms {
            sources,
            default_source,
            ssh_user,
            approval,
        });
        Ok(mapping)
    }

    fn approval_rule(&self) -> Result<ApprovalRule, MappingError> {
        let field = |field: &'static str, message: String| MappingError::Field {
            name: self.name.clone(),
            field,
            message,
        };
        let mut approvers: BTreeSet<RoleId> = self.approvers.iter().copied().collect();
        approvers.extend(self.approver_role);
        let timeout = match &self.approval_timeout {
            None => ApprovalRule::default().timeout,
            Some(text) => {
                AccessDuration::parse(text).map_err(|e| field("approval_timeout", e.to_string()))?
            }
        };
        if self.approvals > MAX_APPROVALS {
            return Err(field(
                "approvals",
                format!("at most {MAX_APPROVALS} approvers can be required"),
            ));
        }
        if self.approvals > 0 && approvers.is_empty() {
            return Err(field(
                "approvers",
                format!(
                    "{} approval(s) are required but no approver role is named: give approvers",
                    self.approvals
                ),
            ));
        }
        Ok(ApprovalRule {
            approvers,
            approvals: self.approvals,
            timeout,
            break_glass: self.break_glass.iter().copied().collect(),
        })
    }
}

impl RoleMapping {
    /// Its sources, default source, login user and approval rule.
    pub fn terms(&self) -> &MappingTerms {
        self.terms.as_deref().unwrap_or(&DEFAULT_TERMS)
    }

    /// Replaces its terms. Nothing is checked: [`MappingSpec::validate`]
    /// is the way to a mapping whose sources and default source agree.
    pub fn set_terms(&mut self, terms: MappingTerms) {
        self.terms = (terms != *DEFAULT_TERMS).then(|| Box::new(terms));
    }

    /// Where from.
    pub fn sources(&self) -> &SourcePolicy {
        &self.terms().sources
    }

    /// The source used when the member gives none and has none saved.
    pub fn default_source(&self) -> Option<SourcePrefix> {
        self.terms().default_source
    }

    /// The login user shown in `ssh user@host`, if the mapping names one.
    pub fn ssh_user(&self) -> Option<&SshUser> {
        self.terms().ssh_user.as_ref()
    }

    /// Who approves requests, how many, for how long; who may skip it.
    pub fn approval(&self) -> &ApprovalRule {
        &self.terms().approval
    }

    /// The written form.
    pub fn to_spec(&self) -> MappingSpec {
        let approval = self.approval();
        MappingSpec {
            name: self.name.to_string(),
            roles: self.roles.iter().copied().collect(),
            vms: self.vms.to_string(),
            ports: vec![self.ports.to_string()],
            max_duration: self.max_duration.to_string(),
            sources: match self.sources() {
                SourcePolicy::SingleAddress => None,
                s => Some(s.items()),
            },
            allow_broad_sources: self.allow_broad_sources,
            default_source: self.default_source().map(|s| s.to_string()),
            ssh_user: self.ssh_user().map(ToString::to_string),
            require_reason: self.require_reason,
            on_conflict: (self.on_conflict != OnConflict::Ask).then_some(self.on_conflict),
            approver_role: None,
            approvers: approval.approvers.iter().copied().collect(),
            approvals: approval.approvals,
            approval_timeout: (approval.timeout != ApprovalRule::default().timeout)
                .then(|| approval.timeout.to_string()),
            break_glass: approval.break_glass.iter().copied().collect(),
        }
    }

    /// What it allows, in words: `VMs web-*, ports 22, up to 4h, from
    /// single addresses`, with a loud warning when it reaches broad sources.
    pub fn describe(&self) -> String {
        format!(
            "{}VMs {}, ports {}, up to {}, from {}{}{}{}{}",
            self.broad_warning()
                .map(|w| format!("{w}: "))
                .unwrap_or_default(),
            self.vms,
            self.ports,
            self.max_duration,
            self.sources(),
            if self.require_reason {
                ", reason required"
            } else {
                ""
            },
            match self.on_conflict {
                OnConflict::Ask => "",
                OnConflict::Refuse => ", refuses while another member holds the port",
            },
            if self.approval().is_required() || !self.approval().break_glass.is_empty() {
                format!(", {}", self.approval().describe())
            } else {
                String::new()
            },
            self.ssh_user()
                .map(|u| format!(", ssh as {u}"))
                .unwrap_or_default()
        )
    }

    /// `⚠ BROAD SOURCES (…)` when the mapping may open ports to `*` or a
    /// broad network.
    pub fn broad_warning(&self) -> Option<String> {
        self.sources()
            .is_broad()
            .then(|| format!("⚠ BROAD SOURCES ({})", self.sources()))
    }

    /// Whether any of `roles` is covered. This runs once per mapping on
    /// every request, and a mapping usually names one role: then one scan
    /// of the member's few roles beats a set lookup per member role.
    pub fn applies_to(&self, roles: &[RoleId]) -> bool {
        match (self.roles.len(), self.roles.first()) {
            (1, Some(only)) => roles.contains(only),
            _ => roles.iter().any(|r| self.roles.contains(r)),
        }
    }
}

/// The TOML file of mappings: `[[mapping]]` tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    /// The mappings.
    #[serde(default, rename = "mapping")]
    pub mappings: Vec<MappingSpec>,
}

impl MappingFile {
    /// Parses and validates a whole file; names must be unique.
    pub fn parse(text: &str, aliases: &PortAliases) -> Result<Vec<RoleMapping>, String> {
        let file: MappingFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(file.mappings.len());
        for spec in &file.mappings {
            let mapping = spec.validate(aliases).map_err(|e| e.to_string())?;
            if !seen.insert(mapping.name.clone()) {
                return Err(format!("mapping `{}` appears twice", mapping.name));
            }
            out.push(mapping);
        }
        Ok(out)
    }

    /// Writes mappings as TOML.
    pub fn render(mappings: &[RoleMapping]) -> String {
        let file = MappingFile {
            mappings: mappings.iter().map(RoleMapping::to_spec).collect(),
        };
        toml::to_string_pretty(&file).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::vm::VmName;

    fn vm(sub: &str, rg: &str, name: &str) -> VmIdentity {
        VmIdentity {
            subscription: SubscriptionId::parse(sub).unwrap(),
            resource_group: ResourceGroupName::parse(rg).unwrap(),
            name: VmName::parse(name).unwrap(),
        }
    }

    const A: &str = "00000000-0000-0000-0000-00000000000a";
    const B: &str = "00000000-0000-0000-0000-00000000000b";

    fn role(n: u64) -> RoleId {
        RoleId::parse(&n.to_string()).unwrap()
    }

    #[test]
    fn a_role_set_is_sorted_without_duplicates_and_answers_membership() {
        let set: RoleSet = [30, 10, 20, 10, 30].map(role).into_iter().collect();
        assert_eq!(
            set.iter().copied().collect::<Vec<_>>(),
            [10, 20, 30].map(role)
        );
        assert_eq!((set.len(), set.first()), (3, Some(&role(10))));
        assert!(set.contains(&role(20)) && !set.contains(&role(25)));
        let fewer: RoleSet = [20, 40].map(role).into_iter().collect();
        let dropped: Vec<RoleId> = set.difference(&fewer).copied().collect();
        assert_eq!(dropped, [10, 30].map(role));
        assert!(RoleSet::default().is_empty());
    }

    #[test]
    fn a_mappings_terms_are_its_own_or_the_defaults_and_equal_however_set() {
        let spec = MappingSpec {
            name: "prod".into(),
            roles: vec![role(7)],
            vms: "rg:rg-prod".into(),
            ports: vec!["ssh".into()],
            max_duration: "1h".into(),
            ..MappingSpec::default()
        };
        let aliases = PortAliases::default();
        let mut plain = spec.clone().validate(&aliases).unwrap();
        assert_eq!(plain.terms(), &MappingTerms::default());
        assert_eq!(plain.approval().approvals, 0);
        let strict = MappingSpec {
            ssh_user: Some("azureuser".into()),
            approvers: vec![role(9)],
            approvals: 1,
            ..spec
        }
        .validate(&aliases)
        .unwrap();
        assert_eq!(strict.ssh_user().map(SshUser::as_str), Some("azureuser"));
        assert_eq!(strict.approval().approvals, 1);
        assert!(strict.approval().approvers.contains(&role(9)));
        assert_ne!(plain, strict);
        let before = plain.clone();
        plain.set_terms(strict.terms().clone());
        assert_eq!(plain.terms(), strict.terms());
        plain.set_terms(MappingTerms::default());
        assert_eq!(
            plain, before,
            "default terms set equal default terms never set"
        );
    }

    #[test]
    fn a_mapping_applies_to_a_member_holding_any_of_its_roles() {
        let mut mapping = MappingSpec {
            name: "two-roles".into(),
            roles: vec![role(7), role(3)],
            vms: "*".into(),
            ports: vec!["ssh".into()],
            max_duration: "1h".into(),
            ..MappingSpec::default()
        }
        .validate(&PortAliases::default())
        .unwrap();
        assert!(mapping.applies_to(&[role(1), role(7)]));
        assert!(mapping.applies_to(&[role(3)]));
        assert!(!mapping.applies_to(&[role(1), role(5)]));
        mapping.roles = std::iter::once(role(5)).collect();
        assert!(mapping.applies_to(&[role(1), role(5)]));
        assert!(!mapping.applies_to(&[role(7)]));
    }

    #[test]
    fn selectors_cover_what_they_say() {
        let web = vm(A, "rg-prod", "Web-01");
        let cases = [
            ("*", true),
            (&format!("sub:{A}")[..], true),
            (&format!("sub:{B}")[..], false),
            ("rg:RG-PROD", true),
            (&format!("rg:{B}/rg-prod")[..], false),
            ("web-*", true),
            ("web-0?", true),
            ("db-*", false),
            ("web-01", true),
            ("rg-staging/web-01", false),
        ];
        for (text, want) in cases {
            let s = VmSelector::parse(text).unwrap();
            assert_eq!(s.matches(&web), want, "{text}");
            assert_eq!(VmSelector::parse(&s.to_string()).unwrap(), s);
        }
        let two = VmSelector::parse("db-*, rg:rg-prod").unwrap();
        assert!(two.matches(&web));
        assert!(!VmSelector::parse("db-*,rg:rg-data").unwrap().matches(&web));
        assert_eq!(two.to_string(), "db-*,rg:rg-prod");
        assert_eq!(VmSelector::parse(&two.to_string()).unwrap(), two);
        assert!(VmSelector::parse("web-*,nope/").is_err());
        assert!(VmSelector::parse("web/*").is_err());
        assert!(VmSelector::parse("sub:nope").is_err());
        assert!(VmSelector::parse("[").is_err());
    }

    // See: issue 17 (autocomplete judges a place once for all its VMs).
    #[test]
    fn a_place_judged_alone_never_disagrees_with_the_vm_by_vm_answer() {
        let vms = [
            vm(A, "rg-prod", "Web-01"),
            vm(A, "rg-prod", "db-01"),
            vm(A, "rg-staging", "web-01"),
            vm(B, "rg-prod", "web-01"),
        ];
        let selectors = [
            "*",
            &format!("sub:{A}")[..],
            "rg:RG-PROD",
            &format!("rg:{B}/rg-prod")[..],
            "web-*",
            "rg-staging/web-01",
            &format!("{A}/rg-prod/db-01")[..],
            "rg-staging/web-01, db-*",
            "rg:rg-staging,rg-prod/web-01",
        ];
        for text in selectors {
            let s = VmSelector::parse(text).unwrap();
            for v in &vms {
                let place = s.covers_place(&v.subscription, v.resource_group.as_str());
                let whole = s.matches(v);
                assert!(
                    place.is_none_or(|p| p == whole),
                    "{text} on {v:?}: place says {place:?}"
                );
            }
        }
        // An exact VM elsewhere does not let a glob's name match through.
        let two = VmSelector::parse("rg-staging/db-01, web-*").unwrap();
        assert!(!two.matches(&vm(A, "rg-prod", "db-01")));
        assert!(two.matches(&vm(A, "rg-staging", "DB-01")));
    }

    #[test]
    fn the_mapping_file_round_trips_and_validates() {
        let text = r#"
[[mapping]]
name = "sre-web"
roles = ["111", 222]
vms = "web-*"
ports = ["ssh", "8443"]
max_duration = "4h"
sources = ["203.0.113.0/24"]
default_source = "203.0.113.10"
ssh_user = "deploy"
require_reason = true
approver_role = "333"

[[mapping]]
name = "admins"
roles = ["999"]
vms = "*"
ports = ["*"]
max_duration = "PT8H"
sources = ["any"]
allow_broad_sources = true
"#;
        let aliases = PortAliases::default();
        let mappings = MappingFile::parse(text, &aliases).unwrap();
        assert_eq!(mappings.len(), 2);
        assert_eq!(
            mappings[0].ports,
            PortSelector::Ports(PortSpec::from_numbers([22, 8443]).unwrap())
        );
        assert_eq!(*mappings[1].sources(), SourcePolicy::Any);
        assert_eq!(mappings[0].ssh_user().map(SshUser::as_str), Some("deploy"));
        assert_eq!(mappings[1].ssh_user(), None);
        assert!(mappings[0].describe().ends_with(", ssh as deploy"));
        let rendered = MappingFile::render(&mappings);
        assert!(rendered.contains("ssh_user = \"deploy\""), "{rendered}");
        let again = MappingFile::parse(&rendered, &aliases).unwrap();
        assert_eq!(again, mappings);
        // The older approver_role reads as one approver role.
        let approvers: Vec<u64> = mappings[0]
            .approval()
            .approvers
            .iter()
            .map(|r| r.get())
            .collect();
        assert_eq!(approvers, [333]);
        assert!(!mappings[0].approval().is_required());
    }

    #[test]
    fn approval_fields_round_trip_and_validate() {
        let aliases = PortAliases::default();
        let text = r#"
[[mapping]]
name = "prod"
roles = ["1"]
vms = "prod-*"
ports = ["ssh"]
max_duration = "2h"
approvers = ["50", "51"]
approvals = 2
approval_timeout = "45m"
break_glass = ["60"]
"#;
        let mappings = MappingFile::parse(text, &aliases).unwrap();
        let rule = &mappings[0].approval();
        assert_eq!(rule.approvals, 2);
        assert_eq!(rule.timeout.minutes(), 45);
        assert!(rule.is_approver(&[RoleId::parse("51").unwrap()]));
        assert!(rule.may_break_glass(&[RoleId::parse("60").unwrap()]));
        assert!(!rule.may_break_glass(&[RoleId::parse("50").unwrap()]));
        let rendered = MappingFile::render(&mappings);
        assert!(rendered.contains("approvals = 2"), "{rendered}");
        assert!(!rendered.contains("approver_role"), "{rendered}");
        assert_eq!(MappingFile::parse(&rendered, &aliases).unwrap(), mappings);
        assert!(
            mappings[0]
                .describe()
                .contains("2 approval(s) from <@&50>, <@&51>")
        );
        let base = "[[mapping]]\nname = \"m\"\nroles = [\"1\"]\nvms = \"*\"\nports = [\"ssh\"]\nmax_duration = \"2h\"\n";
        for (extra, want) in [
            ("approvals = 1", "no approver role is named"),
            ("approvals = 11\napprovers = [\"2\"]", "at most 10"),
            ("approval_timeout = \"forever\"", "approval_timeout"),
        ] {
            let err = MappingFile::parse(&format!("{base}{extra}"), &aliases).unwrap_err();
            assert!(err.contains(want), "{err} should contain {want}");
        }
        // Self-service by default, with the default 30m timeout not written.
        let plain = MappingFile::parse(base, &aliases).unwrap();
        assert!(!plain[0].approval().is_required());
        assert!(!MappingFile::render(&plain).contains("approval"));
    }

    #[test]
    fn bad_mapping_files_name_the_mapping_and_field() {
        let aliases = PortAliases::default();
        let base = |extra: &str| {
            format!(
                "[[mapping]]\nname = \"m\"\nroles = [\"1\"]\nvms = \"*\"\nports = [\"ssh\"]\nmax_duration = \"2h\"\n{extra}"
            )
        };
        let cases = [
            (base("sources = [\"nowhere\"]"), "mapping `m`, sources:"),
            (base("sources = [\"any\"]"), "allow_broad_sources = true"),
            (base("sources = [\"0.0.0.0/0\"]"), "allow_broad_sources = true"),
            (base("sources = [\"2001:db8::/31\"]"), "allow_broad_sources = true"),
            (base("default_source = \"203.0.113.0/24\""), "outside the mapping's sources"),
            (base("default_source = \"8.8.8.8\"\nsources = [\"10.1.0.0/16\"]"), "outside the mapping's sources"),
            (base("colour = \"red\""), "unknown field"),
            (base("ssh_user = \"-oProxyCommand=x\""), "ssh_user"),
            ("[[mapping]]\nname = \"Bad Name\"\nroles=[\"1\"]\nvms=\"*\"\nports=[\"ssh\"]\nmax_duration=\"2h\"".to_string(), "not a valid mapping name"),
            ("[[mapping]]\nname = \"m\"\nroles=[]\nvms=\"*\"\nports=[\"ssh\"]\nmax_duration=\"2h\"".to_string(), "names no role"),
            ("[[mapping]]\nname = \"m\"\nroles=[\"1\"]\nvms=\"*\"\nports=[\"ssh\"]\nmax_duration=\"30h\"".to_string(), "max_duration"),
            (format!("{}\n{}", base(""), base("")), "appears twice"),
        ];
        for (text, want) in cases {
            let err = MappingFile::parse(&text, &aliases).unwrap_err();
            assert!(err.contains(want), "{err} should contain {want}");
        }
    }
}
