//! The default guild as `GET /guilds/{id}`, `GET /channels/{id}` and the
//! bot's own member object show it: roles with permission bit sets, the
//! bot's roles, text channels with permission overwrites, and whether the
//! application was installed with the `applications.commands` scope.
//!
//! Like Discord, the fake does not compute permissions for these reads: it
//! returns the objects, and a channel the bot may not see answers
//! 403/50001 Missing Access (set with [`FakeDiscord::hide_channel`]).
//!
//! It does compute them for the bot's posts, as Discord does
//! ([`Guild::bot_permissions`]): a post to a channel of the guild where the
//! bot may not see is refused 403/50001, and one where it may not send (or
//! attach files, for a post with files) 403/50013 Missing Permissions.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{FakeDiscord, payloads};

/// Permission bits the fake's defaults use (Discord's developer docs).
pub mod bits {
    pub const ADMINISTRATOR: u64 = 1 << 3;
    pub const VIEW_CHANNEL: u64 = 1 << 10;
    pub const SEND_MESSAGES: u64 = 1 << 11;
    pub const EMBED_LINKS: u64 = 1 << 14;
    pub const ATTACH_FILES: u64 = 1 << 15;
    pub const READ_MESSAGE_HISTORY: u64 = 1 << 16;
}

/// The bot's managed role, created when the bot joined.
pub const BOT_ROLE_ID: u64 = 9_090;
/// The guild's owner (a person, not the bot).
pub const OWNER_ID: u64 = 1_111;

/// One text channel of the guild.
#[derive(Clone, Debug, Default)]
pub(super) struct Channel {
    /// `permission_overwrites` as Discord sends them.
    pub overwrites: Vec<Value>,
    /// The bot may not see it: reads answer 403/50001.
    pub hidden: bool,
}

/// A permission overwrite as Discord sends it, read back.
struct Overwrite {
    id: u64,
    /// For a member (type 1), else for a role.
    member: bool,
    allow: u64,
    deny: u64,
}

impl Overwrite {
    fn of(v: &Value) -> Option<Self> {
        let bits = |k: &str| v[k].as_str().and_then(|s| s.parse().ok());
        Some(Self {
            id: v["id"].as_str()?.parse().ok()?,
            member: v["type"].as_u64()? == 1,
            allow: bits("allow")?,
            deny: bits("deny")?,
        })
    }
}

#[derive(Clone, Debug, Default)]
pub(super) struct Guild {
    /// (role id, permissions); @everyone has the guild's id.
    pub roles: Vec<(u64, u64)>,
    pub bot_roles: Vec<u64>,
    pub channels: BTreeMap<u64, Channel>,
    /// Installed with `applications.commands`: command routes work.
    pub commands_scope: bool,
}

impl Guild {
    /// A guild where @everyone may read and the bot's role may post embeds,
    /// with the fake's default channel.
    pub fn new(guild_id: u64, channel_id: u64) -> Self {
        let everyone = bits::VIEW_CHANNEL | bits::SEND_MESSAGES | bits::READ_MESSAGE_HISTORY;
        Self {
            roles: vec![
                (guild_id, everyone),
                (
                    BOT_ROLE_ID,
                    bits::VIEW_CHANNEL
                        | bits::SEND_MESSAGES
                        | bits::EMBED_LINKS
                        | bits::ATTACH_FILES,
                ),
            ],
            bot_roles: vec![BOT_ROLE_ID],
            channels: BTreeMap::from([(channel_id, Channel::default())]),
            commands_scope: true,
        }
    }

    /// The bot's permissions in `channel_id`, computed as Discord does:
    /// @everyone's and the bot's roles' bits (everything with
    /// ADMINISTRATOR), then the channel's overwrites for @everyone, for the
    /// bot's roles together, and for the bot itself, each taking its deny
    /// away before adding its allow. `None` for a channel not in the guild;
    /// `Some(0)` for one the bot may not see at all.
    pub fn bot_permissions(&self, guild_id: u64, bot_id: u64, channel_id: u64) -> Option<u64> {
        let channel = self.channels.get(&channel_id)?;
        if channel.hidden {
            return Some(0);
        }
        let role = |id: u64| self.roles.iter().find(|(r, _)| *r == id).map_or(0, |r| r.1);
        let base = self
            .bot_roles
            .iter()
            .fold(role(guild_id), |p, r| p | role(*r));
        if base & bits::ADMINISTRATOR != 0 {
            return Some(u64::MAX);
        }
        let overwrites: Vec<Overwrite> = channel
            .overwrites
            .iter()
            .filter_map(Overwrite::of)
            .collect();
        let sum = |applies: &dyn Fn(&Overwrite) -> bool| {
            overwrites
                .iter()
                .filter(|o| applies(o))
                .fold((0, 0), |(allow, deny), o| (allow | o.allow, deny | o.deny))
        };
        let everyone = sum(&|o| !o.member && o.id == guild_id);
        let roles = sum(&|o| !o.member && o.id != guild_id && self.bot_roles.contains(&o.id));
        let member = sum(&|o| o.member && o.id == bot_id);
        Some(
            [everyone, roles, member]
                .into_iter()
                .fold(base, |p, (allow, deny)| (p & !deny) | allow),
        )
    }

    /// The guild object (`GET /guilds/{id}`), with the fields preflight and
    /// serenity's `PartialGuild` read.
    pub fn json(&self, guild_id: u64) -> Value {
        let roles: Vec<Value> = self
            .roles
            .iter()
            .enumerate()
            .map(|(position, (id, permissions))| {
                json!({
                    "id": id.to_string(),
                    "name": if *id == guild_id { "@everyone".to_owned() } else { format!("role-{id}") },
                    "permissions": permissions.to_string(),
                    "position": position,
                    "color": 0, "hoist": false, "managed": *id == BOT_ROLE_ID,
                    "mentionable": false, "flags": 0,
                })
            })
            .collect();
        json!({
            "id": guild_id.to_string(),
            "name": "Fake Guild",
            "icon": null,
            "owner_id": OWNER_ID.to_string(),
            "roles": roles,
            "emojis": [],
            "features": [],
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "premium_tier": 0,
            "nsfw_level": 0,
            "preferred_locale": "en-US",
        })
    }

    /// The channel object (`GET /channels/{id}`).
    pub fn channel_json(guild_id: u64, channel_id: u64, channel: &Channel) -> Value {
        json!({
            "id": channel_id.to_string(),
            "type": 0,
            "guild_id": guild_id.to_string(),
            "name": format!("channel-{channel_id}"),
            "position": 0,
            "permission_overwrites": channel.overwrites,
            "nsfw": false,
        })
    }

    /// The bot's member object.
    pub fn bot_member(&self, bot_id: u64, bot_name: &str) -> Value {
        let roles: Vec<String> = self.bot_roles.iter().map(u64::to_string).collect();
        let mut member = payloads::member_json(bot_id, bot_name, &roles);
        member["user"]["bot"] = json!(true);
        member
    }
}

impl FakeDiscord {
    /// Adds (or replaces) a text channel of the default guild with these
    /// overwrites, each `(id, is_member, allow, deny)`.
    pub fn add_channel(&self, channel_id: u64, overwrites: &[(u64, bool, u64, u64)]) {
        let overwrites = overwrites
            .iter()
            .map(|(id, member, allow, deny)| {
                json!({
                    "id": id.to_string(),
                    "type": u8::from(*member),
                    "allow": allow.to_string(),
                    "deny": deny.to_string(),
                })
            })
            .collect();
        self.shared.update(|st| {
            st.guild.channels.insert(
                channel_id,
                Channel {
                    overwrites,
                    hidden: false,
                },
            );
        });
    }
    /// The bot may no longer see `channel_id`: reads answer 403/50001.
    pub fn hide_channel(&self, channel_id: u64) {
        self.shared.update(|st| {
            st.guild.channels.entry(channel_id).or_default().hidden = true;
        });
    }
    /// Sets a role's permission bits (adding the role if new).
    pub fn set_role_permissions(&self, role_id: u64, permissions: u64) {
        self.shared.update(
            |st| match st.guild.roles.iter_mut().find(|(id, _)| *id == role_id) {
                Some(role) => role.1 = permissions,
                None => st.guild.roles.push((role_id, permissions)),
            },
        );
    }
    /// Whether the application was installed with `applications.commands`
    /// (without it, command routes answer 403/50001).
    pub fn set_commands_scope(&self, granted: bool) {
        self.shared.update(|st| st.guild.commands_scope = granted);
    }
}
