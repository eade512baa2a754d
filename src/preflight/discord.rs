//! The Discord half of `drawbridge preflight`: the token works, the
//! application is the configured one and private, the bot is in the guild,
//! it may post embeds in the audit channel, and it may register commands.
//!
//! Every call is a read (`GET`), so preflight changes nothing in Discord.
//! Answers are read as plain JSON with only the fields each check needs:
//! serenity's full models would fail on an object that lacks a field they
//! require, and a check must report what it found rather than a parse error.
//! The permission rule itself is pure ([`ChannelAccess`]).

use serde_json::Value;
use serenity::all::{ApplicationId, ChannelId, GuildId, UserId};
use serenity::http::{Http, LightMethod, Request, Route};

use super::CheckLine;
use crate::config::DiscordSettings;
use crate::discord::errors;
use crate::domain::preflight::{ChannelAccess, Overwrite};

/// Discord: the bot cannot see the resource (not in the guild, or the
/// channel is hidden from it).
const MISSING_ACCESS: isize = 50001;

const INVITE_FIX: &str = "invite the bot with the OAuth2 URL of docs/operations.md (scopes bot and applications.commands)";

/// The Discord checks, in order. Stops after a refused token: every other
/// call would be refused the same way.
pub async fn check_discord(http: &Http, settings: &DiscordSettings) -> Vec<CheckLine> {
    let mut lines = Vec::new();
    let bot = match get(http, Route::UserMe).await {
        Ok(me) => me,
        Err(e) => {
            lines.push(token_line(&e));
            return lines;
        }
    };
    let bot_id = id_of(&bot);
    lines.push(CheckLine::pass(format!(
        "Discord token works: the bot is {} (id {})",
        bot["username"].as_str().unwrap_or("?"),
        bot_id.map_or_else(|| "?".to_owned(), |id| id.to_string())
    )));
    lines.extend(application_lines(http, settings).await);
    let Some(guild) = settings.guild_id else {
        lines.push(CheckLine::fail(
            "discord.guild_id is not set: the guild cannot be checked",
            "set discord.guild_id to the server Drawbridge serves",
        ));
        return lines;
    };
    let guild = GuildId::new(guild.get());
    let Some(guild_json) = guild_line(http, guild, &mut lines).await else {
        return lines;
    };
    if let (Some(bot_id), Some(channel)) = (bot_id, settings.audit_channel_id) {
        let channel = ChannelId::new(channel.get());
        lines.push(channel_line(http, &guild_json, guild, bot_id, channel).await);
    }
    if let Some(app) = settings.application_id {
        lines.push(commands_line(http, ApplicationId::new(app.get()), guild).await);
    }
    lines
}

fn token_line(e: &serenity::Error) -> CheckLine {
    let why = errors::describe(e);
    tracing::warn!(error = %why, "preflight: Discord refused the token");
    if errors::status(e) == Some(401) {
        CheckLine::fail(
            "Discord token refused (401 Unauthorized)",
            "set discord.token (or DRAWBRIDGE__DISCORD__TOKEN / discord.token_file) to the bot token from the Developer Portal → Bot → Reset Token",
        )
    } else {
        CheckLine::fail(
            format!("Discord could not be asked who the bot is ({why})"),
            "check discord.base_url and that this host reaches Discord",
        )
    }
}

/// The application id matches `discord.application_id`, and the bot is not
/// public (anyone could add a public bot to their own server).
async fn application_lines(http: &Http, settings: &DiscordSettings) -> Vec<CheckLine> {
    let app = match get(http, Route::Oauth2ApplicationCurrent).await {
        Ok(app) => app,
        Err(e) => {
            return vec![CheckLine::fail(
                format!("the application cannot be read ({})", errors::describe(&e)),
                "check that discord.token is a bot token",
            )];
        }
    };
    let found = id_of(&app);
    let mut lines = vec![match (settings.application_id, found) {
        (Some(want), Some(got)) if want.get() == got => CheckLine::pass(format!(
            "application id {got} matches discord.application_id"
        )),
        (Some(want), got) => CheckLine::fail(
            format!(
                "discord.application_id is {want}, but the token belongs to application {}",
                got.map_or_else(|| "?".to_owned(), |g| g.to_string())
            ),
            "copy the Application ID from the Developer Portal → General Information",
        ),
        (None, Some(got)) => CheckLine::pass(format!(
            "application id {got} (discord.application_id not set; HTTP mode needs it)"
        )),
        (None, None) => CheckLine::fail(
            "Discord's application has no readable id",
            "set discord.application_id",
        ),
    }];
    if app["bot_public"].as_bool() == Some(true) {
        lines.push(CheckLine::fail(
            "the bot is public: anyone can add it to their own server",
            "Developer Portal → Bot → turn off Public Bot",
        ));
    } else {
        lines.push(CheckLine::pass("the bot is private (Public Bot off)"));
    }
    lines
}

/// Reads the guild (its owner and roles), pushing its line; `None` when it
/// cannot be read, which ends the checks that need it.
async fn guild_line(http: &Http, guild: GuildId, lines: &mut Vec<CheckLine>) -> Option<Value> {
    match get(http, Route::Guild { guild_id: guild }).await {
        Ok(g) => {
            lines.push(CheckLine::pass(format!(
                "the bot is in guild {} ({guild})",
                g["name"].as_str().unwrap_or("?")
            )));
            Some(g)
        }
        Err(e) => {
            lines.push(CheckLine::fail(
                format!("guild {guild} cannot be reached ({})", errors::describe(&e)),
                INVITE_FIX,
            ));
            None
        }
    }
}

/// Whether the bot may post embeds in the audit channel: its roles and the
/// channel's overwrites, by Discord's algorithm.
async fn channel_line(
    http: &Http,
    guild_json: &Value,
    guild: GuildId,
    bot: u64,
    channel: ChannelId,
) -> CheckLine {
    let what = format!("audit channel {channel}");
    let fix_perms = "give the bot's role View Channel, Send Messages, Embed Links and Attach Files in that channel (Edit Channel → Permissions)";
    let channel_json = match get(
        http,
        Route::Channel {
            channel_id: channel,
        },
    )
    .await
    {
        Ok(c) => c,
        Err(e) if errors::code(&e) == Some(MISSING_ACCESS) => {
            return CheckLine::fail(format!("{what}: the bot cannot see it"), fix_perms);
        }
        Err(e) => {
            return CheckLine::fail(
                format!("{what} cannot be read ({})", errors::describe(&e)),
                "set discord.audit_channel_id to a text channel of the guild (Developer Mode → Copy Channel ID)",
            );
        }
    };
    if channel_json["guild_id"].as_str() != Some(guild.to_string().as_str()) {
        return CheckLine::fail(
            format!("{what} is not in guild {guild}"),
            "set discord.audit_channel_id to a channel of discord.guild_id",
        );
    }
    let member = match get(
        http,
        Route::GuildMember {
            guild_id: guild,
            user_id: UserId::new(bot),
        },
    )
    .await
    {
        Ok(m) => m,
        Err(e) => {
            return CheckLine::fail(
                format!(
                    "the bot's own roles cannot be read ({})",
                    errors::describe(&e)
                ),
                INVITE_FIX,
            );
        }
    };
    let access = channel_access(guild_json, &member, &channel_json, guild.get(), bot);
    let missing = access.missing();
    if missing.is_empty() {
        CheckLine::pass(format!("{what}: the bot may post embeds"))
    } else {
        CheckLine::fail(
            format!("{what}: the bot lacks {}", missing.join(", ")),
            fix_perms,
        )
    }
}

/// The inputs of the permission algorithm, from the three objects.
fn channel_access(
    guild: &Value,
    member: &Value,
    channel: &Value,
    guild_id: u64,
    bot: u64,
) -> ChannelAccess {
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    ChannelAccess {
        guild_id,
        owner_id: num(&guild["owner_id"]).unwrap_or(0),
        member_id: bot,
        roles: list(&guild["roles"])
            .iter()
            .filter_map(|r| Some((num(&r["id"])?, num(&r["permissions"]).unwrap_or(0))))
            .collect(),
        member_roles: list(&member["roles"]).iter().filter_map(num).collect(),
        overwrites: list(&channel["permission_overwrites"])
            .iter()
            .filter_map(|o| {
                Some(Overwrite {
                    id: num(&o["id"])?,
                    is_member: o["type"].as_u64() == Some(1),
                    allow: num(&o["allow"]).unwrap_or(0),
                    deny: num(&o["deny"]).unwrap_or(0),
                })
            })
            .collect(),
    }
}

/// Whether the commands can be registered in the guild: listing them needs
/// the same `applications.commands` scope as writing them.
async fn commands_line(http: &Http, app: ApplicationId, guild: GuildId) -> CheckLine {
    let route = Route::GuildCommands {
        application_id: app,
        guild_id: guild,
    };
    match get(http, route).await {
        Ok(list) => {
            let names: Vec<&str> = list
                .as_array()
                .map(|l| l.iter().filter_map(|c| c["name"].as_str()).collect())
                .unwrap_or_default();
            let absent: Vec<String> = command_names()
                .into_iter()
                .filter(|n| !names.contains(&n.as_str()))
                .collect();
            if absent.is_empty() {
                CheckLine::pass("slash commands can be registered, and all are")
            } else {
                CheckLine::pass(format!(
                    "slash commands can be registered ({} not yet: drawbridge run registers them)",
                    absent.join(", ")
                ))
            }
        }
        Err(e) => CheckLine::fail(
            format!(
                "slash commands cannot be registered in guild {guild} ({})",
                errors::describe(&e)
            ),
            "re-invite the bot with the applications.commands scope",
        ),
    }
}

/// The names of the commands `drawbridge run` registers.
fn command_names() -> Vec<String> {
    crate::discord::commands::definitions()
        .into_iter()
        .filter_map(|c| Some(serde_json::to_value(c).ok()?["name"].as_str()?.to_owned()))
        .collect()
}

async fn get(http: &Http, route: Route<'_>) -> Result<Value, serenity::Error> {
    let response = http.request(Request::new(route, LightMethod::Get)).await?;
    let body = response
        .bytes()
        .await
        .map_err(|e| serenity::Error::Http(serenity::http::HttpError::Request(e)))?;
    Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn id_of(v: &Value) -> Option<u64> {
    num(&v["id"])
}

/// A snowflake or permission bit set: Discord sends both as strings.
fn num(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}
