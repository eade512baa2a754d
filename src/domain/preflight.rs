//! What `drawbridge preflight` judges, as pure functions: whether an Azure
//! identity's effective permissions hold every action Drawbridge needs, and
//! whether the bot may post embeds in a channel. Kept apart from the HTTP
//! calls that fetch the inputs so each rule is tested on its own, and so the
//! needed actions live in one list that the operator guide is checked against.

/// Every Azure action Drawbridge's custom role grants (docs/operations.md).
pub const NEEDED_ACTIONS: &[&str] = &[
    "Microsoft.Security/locations/jitNetworkAccessPolicies/read",
    "Microsoft.Security/locations/jitNetworkAccessPolicies/*/read",
    "Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action",
    "Microsoft.Security/locations/jitNetworkAccessPolicies/write",
    "Microsoft.Security/policies/read",
    "Microsoft.Compute/virtualMachines/read",
    "Microsoft.Network/networkInterfaces/read",
    "Microsoft.Network/networkInterfaces/*/read",
    "Microsoft.Network/publicIPAddresses/read",
];

/// One entry of ARM's `permissions` list: what one role assignment grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PermissionEntry {
    pub actions: Vec<String>,
    pub not_actions: Vec<String>,
}

/// The needed actions no entry grants, in [`NEEDED_ACTIONS`] order.
///
/// An entry grants an action when one of its `actions` patterns matches it
/// and none of its `notActions` patterns could match any action the needed
/// one stands for (a needed `a/*/read` is cut by a `notActions` of
/// `a/x/read`). Matching is case-insensitive, as in Azure.
#[must_use]
pub fn missing_actions(entries: &[PermissionEntry]) -> Vec<&'static str> {
    NEEDED_ACTIONS
        .iter()
        .copied()
        .filter(|needed| !grants(entries, needed))
        .collect()
}

/// Whether some entry grants `action`, as [`missing_actions`] decides it.
#[must_use]
pub fn grants(entries: &[PermissionEntry], action: &str) -> bool {
    entries.iter().any(|e| entry_grants(e, action))
}

fn entry_grants(entry: &PermissionEntry, needed: &str) -> bool {
    let needed = needed.to_ascii_lowercase();
    let granted = entry
        .actions
        .iter()
        .any(|a| glob_matches(a.to_ascii_lowercase().as_bytes(), needed.as_bytes()));
    granted
        && !entry
            .not_actions
            .iter()
            .any(|n| globs_overlap(n.to_ascii_lowercase().as_bytes(), needed.as_bytes()))
}

/// Whether `pattern` (with `*` for any run of characters) matches `text`
/// taken literally.
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob_matches(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && glob_matches(rest, &text[1..]),
    }
}

/// Whether some string matches both patterns.
fn globs_overlap(a: &[u8], b: &[u8]) -> bool {
    match (a.split_first(), b.split_first()) {
        (None, None) => true,
        (Some((b'*', ra)), _) => {
            globs_overlap(ra, b) || (!b.is_empty() && globs_overlap(a, &b[1..]))
        }
        (_, Some((b'*', rb))) => {
            globs_overlap(a, rb) || (!a.is_empty() && globs_overlap(&a[1..], b))
        }
        (Some((x, ra)), Some((y, rb))) => x == y && globs_overlap(ra, rb),
        _ => false,
    }
}

/// Discord permission bits (developer docs, "Permissions").
pub mod bits {
    pub const ADMINISTRATOR: u64 = 1 << 3;
    pub const VIEW_CHANNEL: u64 = 1 << 10;
    pub const SEND_MESSAGES: u64 = 1 << 11;
    pub const EMBED_LINKS: u64 = 1 << 14;
    pub const ATTACH_FILES: u64 = 1 << 15;
}

/// What the bot needs in the audit channel, with the names Discord shows.
pub const NEEDED_CHANNEL_PERMISSIONS: &[(u64, &str)] = &[
    (bits::VIEW_CHANNEL, "VIEW_CHANNEL"),
    (bits::SEND_MESSAGES, "SEND_MESSAGES"),
    (bits::EMBED_LINKS, "EMBED_LINKS"),
    // The weekly report's PNG and CSV.
    (bits::ATTACH_FILES, "ATTACH_FILES"),
];

/// A channel permission overwrite, for a role or for one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overwrite {
    pub id: u64,
    pub is_member: bool,
    pub allow: u64,
    pub deny: u64,
}

/// The inputs of Discord's permission algorithm for one member in one channel.
#[derive(Debug, Clone, Default)]
pub struct ChannelAccess {
    pub guild_id: u64,
    pub owner_id: u64,
    pub member_id: u64,
    /// Every guild role as (id, permissions); @everyone has the guild's id.
    pub roles: Vec<(u64, u64)>,
    pub member_roles: Vec<u64>,
    pub overwrites: Vec<Overwrite>,
}

impl ChannelAccess {
    /// The member's permissions in the channel, by Discord's documented
    /// algorithm: owner and ADMINISTRATOR hold everything; otherwise
    /// @everyone's and the member's roles, then the @everyone overwrite,
    /// the member's role overwrites together, and the member's own.
    #[must_use]
    pub fn permissions(&self) -> u64 {
        if self.member_id == self.owner_id {
            return u64::MAX;
        }
        let role_perms = |id: u64| {
            self.roles
                .iter()
                .find(|(r, _)| *r == id)
                .map_or(0, |(_, p)| *p)
        };
        let mut perms = role_perms(self.guild_id);
        for role in &self.member_roles {
            perms |= role_perms(*role);
        }
        if perms & bits::ADMINISTRATOR != 0 {
            return u64::MAX;
        }
        let role_overwrite = |o: &&Overwrite| !o.is_member;
        if let Some(o) = self
            .overwrites
            .iter()
            .filter(role_overwrite)
            .find(|o| o.id == self.guild_id)
        {
            perms = (perms & !o.deny) | o.allow;
        }
        let (allow, deny) = self
            .overwrites
            .iter()
            .filter(role_overwrite)
            .filter(|o| self.member_roles.contains(&o.id))
            .fold((0, 0), |(a, d), o| (a | o.allow, d | o.deny));
        perms = (perms & !deny) | allow;
        if let Some(o) = self
            .overwrites
            .iter()
            .find(|o| o.is_member && o.id == self.member_id)
        {
            perms = (perms & !o.deny) | o.allow;
        }
        perms
    }

    /// The names of the needed channel permissions the member lacks.
    #[must_use]
    pub fn missing(&self) -> Vec<&'static str> {
        let perms = self.permissions();
        NEEDED_CHANNEL_PERMISSIONS
            .iter()
            .filter(|(bit, _)| perms & bit == 0)
            .map(|(_, name)| *name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(actions: &[&str], not: &[&str]) -> PermissionEntry {
        PermissionEntry {
            actions: actions.iter().map(|s| (*s).to_string()).collect(),
            not_actions: not.iter().map(|s| (*s).to_string()).collect(),
        }
    }

    #[test]
    fn the_full_role_and_wildcards_grant_everything() {
        assert!(missing_actions(&[entry(NEEDED_ACTIONS, &[])]).is_empty());
        assert!(missing_actions(&[entry(&["*"], &[])]).is_empty());
        let split = [
            entry(&["microsoft.security/*"], &[]),
            entry(&["Microsoft.Compute/*/read", "Microsoft.Network/*"], &[]),
        ];
        assert!(missing_actions(&split).is_empty());
    }

    #[test]
    fn a_removed_or_subtracted_action_is_named() {
        let without_write: Vec<&str> = NEEDED_ACTIONS
            .iter()
            .copied()
            .filter(|a| !a.ends_with("jitNetworkAccessPolicies/write"))
            .collect();
        assert_eq!(
            missing_actions(&[entry(&without_write, &[])]),
            ["Microsoft.Security/locations/jitNetworkAccessPolicies/write"]
        );
        let cut = entry(
            &["*"],
            &["Microsoft.Security/locations/jitNetworkAccessPolicies/requests/read"],
        );
        assert_eq!(
            missing_actions(&[cut]),
            ["Microsoft.Security/locations/jitNetworkAccessPolicies/*/read"]
        );
        assert_eq!(missing_actions(&[]).len(), NEEDED_ACTIONS.len());
    }

    fn access() -> ChannelAccess {
        ChannelAccess {
            guild_id: 1,
            owner_id: 99,
            member_id: 5,
            roles: vec![
                (1, bits::VIEW_CHANNEL),
                (
                    7,
                    bits::SEND_MESSAGES | bits::EMBED_LINKS | bits::ATTACH_FILES,
                ),
            ],
            member_roles: vec![7],
            overwrites: Vec::new(),
        }
    }

    #[test]
    fn roles_grant_and_overwrites_take_away_in_order() {
        assert!(access().missing().is_empty());
        let mut denied = access();
        denied.overwrites.push(Overwrite {
            id: 7,
            is_member: false,
            allow: 0,
            deny: bits::SEND_MESSAGES,
        });
        assert_eq!(denied.missing(), ["SEND_MESSAGES"]);
        denied.overwrites.push(Overwrite {
            id: 5,
            is_member: true,
            allow: bits::SEND_MESSAGES,
            deny: 0,
        });
        assert!(denied.missing().is_empty());
        let mut hidden = access();
        hidden.overwrites.push(Overwrite {
            id: 1,
            is_member: false,
            allow: 0,
            deny: bits::VIEW_CHANNEL,
        });
        assert_eq!(hidden.missing(), ["VIEW_CHANNEL"]);
        hidden.roles.push((8, bits::ADMINISTRATOR));
        hidden.member_roles.push(8);
        assert!(hidden.missing().is_empty());
    }
}
