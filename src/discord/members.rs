//! [`GuildMembers`]: the home guild's members over REST
//! (`GET /guilds/{guild}/members/{user}`), for buttons pressed in a DM,
//! whose interactions carry no roles.

use std::sync::Arc;

use async_trait::async_trait;
use serenity::all::{GuildId, UserId as DiscordUserId};
use serenity::http::Http;

use super::errors;
use crate::domain::{RoleId, Snowflake, UserId};
use crate::interactions::{DirectoryError, MemberDirectory};

/// Discord: unknown member (not in the guild).
const UNKNOWN_MEMBER: isize = 10007;

/// Reads members of one guild.
#[derive(Clone)]
pub struct GuildMembers {
    http: Arc<Http>,
    guild: GuildId,
}

impl GuildMembers {
    /// The members of `guild`, read through `http` (from [`super::discord_http`]).
    pub fn new(http: Arc<Http>, guild: Snowflake) -> Self {
        Self {
            http,
            guild: GuildId::new(guild.get()),
        }
    }
}

#[async_trait]
impl MemberDirectory for GuildMembers {
    async fn roles_of(&self, user: UserId) -> Result<Option<Vec<RoleId>>, DirectoryError> {
        let user = DiscordUserId::new(user.0.get());
        match self.http.get_member(self.guild, user).await {
            Ok(member) => Ok(Some(
                member
                    .roles
                    .iter()
                    .filter_map(|r| Snowflake::from_u64(r.get()).map(RoleId))
                    .collect(),
            )),
            Err(e) if errors::code(&e) == Some(UNKNOWN_MEMBER) => Ok(None),
            Err(e) => Err(DirectoryError(errors::describe(&e))),
        }
    }
}
