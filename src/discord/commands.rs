//! The application commands and their registration.
//!
//! `/jit port vm duration` takes its three required options in that order,
//! so `/jit ssh myVM 2h` can be typed straight through.

use anyhow::Context as _;
use serenity::all::{
    Command, CommandOptionType, CreateCommand, CreateCommandOption, GuildId, InteractionContext,
    Permissions,
};
use serenity::http::Http;

use crate::config::DiscordSettings;

/// `/jit`.
pub const JIT: &str = "jit";
/// `/jit-status`.
pub const JIT_STATUS: &str = "jit-status";
/// `/jit-ip`.
pub const JIT_IP: &str = "jit-ip";
/// `/jit-who`.
pub const JIT_WHO: &str = "jit-who";
/// `/jit-admin`.
pub const JIT_ADMIN: &str = "jit-admin";
/// `/jit-pending`: for approvers, who need not be admins, so it is not under
/// `/jit-admin` (which Discord hides from non-admins).
pub const JIT_PENDING: &str = "jit-pending";

fn string(name: &str, description: &str) -> CreateCommandOption {
    CreateCommandOption::new(CommandOptionType::String, name, description)
}

fn required(option: CreateCommandOption) -> CreateCommandOption {
    option.required(true)
}

fn autocompleted(option: CreateCommandOption) -> CreateCommandOption {
    option.required(true).set_autocomplete(true)
}

fn subcommand(
    name: &str,
    description: &str,
    options: impl IntoIterator<Item = CreateCommandOption>,
) -> CreateCommandOption {
    options.into_iter().fold(
        CreateCommandOption::new(CommandOptionType::SubCommand, name, description),
        CreateCommandOption::add_sub_option,
    )
}

/// Every command Drawbridge registers.
pub fn definitions() -> Vec<CreateCommand> {
    vec![
        jit(),
        jit_status(),
        jit_ip(),
        jit_who(),
        jit_admin(),
        jit_pending(),
    ]
}

fn jit() -> CreateCommand {
    CreateCommand::new(JIT)
        .description("Open a management port on a VM for a while (Azure Just-In-Time access)")
        .add_option(autocompleted(string(
            "port",
            "ssh, rdp, winrm, a port number such as 22, or several: ssh,8443",
        )))
        .add_option(autocompleted(string(
            "vm",
            "The VM: myVM, resource-group/myVM or subscription/resource-group/myVM",
        )))
        .add_option(autocompleted(string(
            "duration",
            "How long to keep it open: 2h, 90m, 1h30m",
        )))
        .add_option(string(
            "reason",
            "Why you need access (some mappings require it)",
        ))
        .add_option(string(
            "from",
            "Your source IP or CIDR (default: your registered /jit-ip)",
        ))
        .add_option(CreateCommandOption::new(
            CommandOptionType::Boolean,
            "break_glass",
            "Skip approval in an emergency (break-glass roles only; needs a reason; alerts)",
        ))
}

fn jit_status() -> CreateCommand {
    CreateCommand::new(JIT_STATUS).description("Your active and recent JIT grants")
}

fn jit_ip() -> CreateCommand {
    CreateCommand::new(JIT_IP)
        .description("Show or set the source IP your /jit requests use by default")
        .add_option(string(
            "address",
            "Your public IP address or CIDR, e.g. 203.0.113.7",
        ))
}

fn jit_who() -> CreateCommand {
    CreateCommand::new(JIT_WHO)
        .description("Who holds ports open: on one VM, or on every VM you may request")
        .add_option(
            string("vm", "The VM (default: every VM you may request)").set_autocomplete(true),
        )
}

/// Visible to every member (no `default_member_permissions`): approvers are
/// rarely admins. The bot answers approvers and admins only.
fn jit_pending() -> CreateCommand {
    CreateCommand::new(JIT_PENDING)
        .description("Requests waiting for approval (approvers and admins)")
}

fn jit_admin() -> CreateCommand {
    let user =
        |description: &str| CreateCommandOption::new(CommandOptionType::User, "user", description);
    CreateCommand::new(JIT_ADMIN)
        .description("Manage who may open which VM ports")
        // A UI hint only: the bot authorizes every admin action itself.
        .default_member_permissions(Permissions::empty())
        .add_option(subcommand(
            "map",
            "Create or replace a role mapping",
            [
                required(string("name", "The mapping's name, e.g. web-ssh")),
                required(CreateCommandOption::new(
                    CommandOptionType::Role,
                    "role",
                    "The role it grants to",
                )),
                required(string(
                    "vms",
                    "VMs: names, globs (web-*), rg:<group> or sub:<id>, comma-separated",
                )),
                required(string(
                    "ports",
                    "Ports: ssh, rdp, 22, 8443, comma-separated",
                )),
                required(string("max_duration", "The longest window, e.g. 4h")),
                string(
                    "more_roles",
                    "Further role ids or mentions it grants to, comma-separated",
                ),
                string(
                    "sources",
                    "Allowed source networks, comma-separated (default: single addresses only)",
                ),
                CreateCommandOption::new(
                    CommandOptionType::Boolean,
                    "allow_broad_sources",
                    "Let sources hold any, or networks shorter than /16 (IPv4) or /32 (IPv6)",
                ),
                string(
                    "default_source",
                    "The source used when a request gives none",
                ),
                string(
                    "ssh_user",
                    "The login user the grant card shows in ssh user@host (before the VM's tag)",
                ),
                CreateCommandOption::new(
                    CommandOptionType::Boolean,
                    "require_reason",
                    "Whether requests must give a reason",
                ),
                string(
                    "on_conflict",
                    "When another member holds the port: ask first (default) or refuse",
                )
                .add_string_choice("ask", "ask")
                .add_string_choice("refuse", "refuse"),
                string(
                    "approvers",
                    "Approver role ids or mentions, comma-separated",
                ),
                CreateCommandOption::new(
                    CommandOptionType::Integer,
                    "approvals",
                    "Distinct approvers a request needs (0: self-service)",
                )
                .min_int_value(0)
                .max_int_value(10),
                string(
                    "approval_timeout",
                    "How long a request waits for approvers, e.g. 30m (default)",
                ),
                string(
                    "break_glass",
                    "Role ids or mentions that may skip approval with a reason",
                ),
            ],
        ))
        .add_option(subcommand(
            "unmap",
            "Remove a role mapping",
            [required(string("name", "The mapping's name"))],
        ))
        .add_option(subcommand("mappings", "List the role mappings", []))
        .add_option(subcommand(
            "explain",
            "Explain whether a request would be allowed, and why",
            [
                autocompleted(string("vm", "The VM")),
                required(string("port", "The port(s), e.g. ssh")),
                required(string("duration", "The window, e.g. 2h")),
                user("The member to check (default: you)"),
                string(
                    "roles",
                    "Role ids or mentions to check instead, comma-separated",
                ),
                string("from", "The source IP or CIDR"),
                string("reason", "A reason, for mappings that require one"),
            ],
        ))
        .add_option(subcommand(
            "audit",
            "Show recent audit events",
            [
                user("Only this member's events"),
                string("since", "How far back, e.g. 24h or 7d"),
                CreateCommandOption::new(
                    CommandOptionType::Integer,
                    "limit",
                    "How many events (1-50)",
                )
                .min_int_value(1)
                .max_int_value(50),
            ],
        ))
        .add_option(subcommand(
            "coverage",
            "VMs in the configured subscriptions that no JIT policy protects",
            [],
        ))
        .add_option(subcommand(
            "enable",
            "Put a VM under Just-In-Time access with the configured defaults",
            [required(string("vm", "The VM"))],
        ))
        .add_option(subcommand(
            "pending",
            "Requests waiting for approval (approvers and admins)",
            [],
        ))
        .add_option(subcommand(
            "report",
            "Post the last seven days' access report (PNG and CSV) to the audit channel",
            [],
        ))
}

/// Registers [`definitions`] with one bulk overwrite to `discord.guild_id`,
/// so the commands exist only there; globally (in guilds only, never in
/// DMs) only when `discord.register_globally` asks for it.
///
/// # Errors
///
/// When neither is configured, or Discord refuses the registration (the
/// message names no token).
pub async fn register(http: &Http, settings: &DiscordSettings) -> anyhow::Result<()> {
    let commands = definitions();
    let result = match (settings.guild_id, settings.register_globally) {
        (Some(guild), _) => GuildId::new(guild.get())
            .set_commands(http, commands)
            .await
            .map(|_| ()),
        (None, true) => {
            let in_guilds = commands
                .into_iter()
                .map(|c| c.contexts(vec![InteractionContext::Guild]))
                .collect();
            Command::set_global_commands(http, in_guilds)
                .await
                .map(|_| ())
        }
        (None, false) => anyhow::bail!(
            "discord.guild_id is not set: set it, or discord.register_globally = true to register in every guild"
        ),
    };
    result
        .map_err(|e| anyhow::anyhow!(super::errors::describe(&e)))
        .with_context(|| match settings.guild_id {
            Some(guild) => format!("registering the slash commands in guild {guild}"),
            None => "registering the slash commands globally".to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn command(name: &str) -> Value {
        definitions()
            .into_iter()
            .map(|c| serde_json::to_value(c).unwrap())
            .find(|c| c["name"] == name)
            .unwrap()
    }

    #[test]
    fn jit_takes_port_vm_duration_in_order_all_required_and_autocompleted() {
        let jit = command(JIT);
        let options = jit["options"].as_array().unwrap();
        let names: Vec<_> = options
            .iter()
            .map(|o| o["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["port", "vm", "duration", "reason", "from", "break_glass"]
        );
        for option in &options[..3] {
            assert_eq!(option["required"], true);
            assert_eq!(option["autocomplete"], true);
            assert_eq!(option["type"], 3);
        }
        assert_eq!(options[3]["required"], false);
    }

    #[test]
    fn jit_admin_is_hidden_by_default_and_has_its_subcommands() {
        let admin = command(JIT_ADMIN);
        assert_eq!(admin["default_member_permissions"], "0");
        let subs: Vec<_> = admin["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                assert_eq!(o["type"], 1);
                o["name"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(
            subs,
            [
                "map", "unmap", "mappings", "explain", "audit", "coverage", "enable", "pending",
                "report"
            ]
        );
        let map = &admin["options"][0]["options"];
        assert_eq!(map[1]["name"], "role");
        assert_eq!(map[1]["type"], 8);
        let limit = &admin["options"][4]["options"][2];
        assert_eq!(limit["min_value"], 1);
        assert_eq!(limit["max_value"], 50);
    }

    #[test]
    fn jit_pending_is_visible_to_every_member_and_takes_no_options() {
        let pending = command(JIT_PENDING);
        assert!(
            pending.get("default_member_permissions").is_none()
                || pending["default_member_permissions"].is_null(),
            "{pending}"
        );
        assert!(
            pending["options"]
                .as_array()
                .is_none_or(|options| options.is_empty()),
            "{pending}"
        );
    }

    #[test]
    fn names_and_descriptions_fit_discords_limits() {
        fn check(option: &Value) {
            let name = option["name"].as_str().unwrap();
            assert!((1..=32).contains(&name.len()), "{name}");
            let description = option["description"].as_str().unwrap();
            assert!(
                (1..=100).contains(&description.chars().count()),
                "{description}"
            );
            for child in option["options"].as_array().into_iter().flatten() {
                check(child);
            }
        }
        for command in definitions() {
            check(&serde_json::to_value(command).unwrap());
        }
    }
}
