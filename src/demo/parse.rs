//! Typed slash commands to [`SlashCommand`]s, as Discord would deliver them.
//!
//! `/name [subcommand] [positional…] [key:value | key:"quoted value"]`:
//! positionals fill the command's options in the order they are registered
//! (for `/jit`: port, vm, duration, reason, from), the same order Discord's
//! client offers them. The shapes come from
//! [`crate::discord::commands::definitions`], so the console cannot drift
//! from what is registered with Discord.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::interactions::SlashCommand;

/// Discord option types used here.
const SUB_COMMAND: u64 = 1;
const BOOLEAN: u64 = 5;
const USER: u64 = 6;
const ROLE: u64 = 8;

/// One option of a command (or subcommand).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionShape {
    /// Its name.
    pub name: String,
    /// Discord's option type.
    pub kind: u64,
    /// Whether Discord requires it.
    pub required: bool,
}

/// A command's options, or its subcommands' options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandShape {
    /// The command's name.
    pub name: String,
    /// Top-level options (empty when the command has subcommands).
    pub options: Vec<OptionShape>,
    /// Subcommand name to its options, in registration order.
    pub subcommands: Vec<(String, Vec<OptionShape>)>,
}

fn options_of(value: &Value) -> Vec<OptionShape> {
    value
        .get("options")
        .and_then(Value::as_array)
        .map(|opts| {
            opts.iter()
                .map(|o| OptionShape {
                    name: o["name"].as_str().unwrap_or_default().to_owned(),
                    kind: o["type"].as_u64().unwrap_or_default(),
                    required: o["required"].as_bool().unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The shapes of every registered command.
pub fn shapes() -> Vec<CommandShape> {
    crate::discord::commands::definitions()
        .iter()
        .filter_map(|c| serde_json::to_value(c).ok())
        .map(|c| {
            let name = c["name"].as_str().unwrap_or_default().to_owned();
            let top = options_of(&c);
            if top.iter().any(|o| o.kind == SUB_COMMAND) {
                let subs = c["options"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| {
                        (
                            s["name"].as_str().unwrap_or_default().to_owned(),
                            options_of(s),
                        )
                    })
                    .collect();
                CommandShape {
                    name,
                    options: Vec::new(),
                    subcommands: subs,
                }
            } else {
                CommandShape {
                    name,
                    options: top,
                    subcommands: Vec::new(),
                }
            }
        })
        .collect()
}

/// Usage text of one command, e.g. `/jit port vm duration [reason] [from]`.
pub fn usage(shape: &CommandShape) -> Vec<String> {
    let line = |prefix: String, opts: &[OptionShape]| {
        let mut s = prefix;
        for o in opts {
            if o.required {
                s.push_str(&format!(" {}", o.name));
            } else {
                s.push_str(&format!(" [{}]", o.name));
            }
        }
        s
    };
    if shape.subcommands.is_empty() {
        vec![line(format!("/{}", shape.name), &shape.options)]
    } else {
        shape
            .subcommands
            .iter()
            .map(|(sub, opts)| line(format!("/{} {sub}", shape.name), opts))
            .collect()
    }
}

/// Splits on whitespace; double quotes group (also inside a token, as in
/// `reason:"two words"`), a backslash escapes the next character.
pub fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut in_token = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                current.extend(chars.next());
                in_token = true;
            }
            '"' => {
                quoted = !quoted;
                in_token = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_token {
                    tokens.push(std::mem::take(&mut current));
                    in_token = false;
                }
            }
            c => {
                current.push(c);
                in_token = true;
            }
        }
    }
    if quoted {
        return Err("a quote is not closed".into());
    }
    if in_token {
        tokens.push(current);
    }
    Ok(tokens)
}

/// Resolves names typed for user and role options (`sre`, `@dev`) to ids,
/// and gives a user's role ids (Discord sends them as resolved data).
pub trait Directory {
    /// A user option's value: the user id and their role ids.
    fn user(&self, text: &str) -> Option<(u64, Vec<u64>)>;
    /// A role option's value.
    fn role(&self, text: &str) -> Option<u64>;
}

/// Parses `/name …` into a command.
///
/// # Errors
/// A message for the member: unknown command or option, missing required
/// options, too many values.
pub fn parse_slash(
    line: &str,
    shapes: &[CommandShape],
    directory: &dyn Directory,
) -> Result<SlashCommand, String> {
    let tokens = tokenize(line.trim().trim_start_matches('/'))?;
    let mut tokens = tokens.into_iter();
    let name = tokens.next().ok_or("type a command after /")?;
    let shape = shapes.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<String> = shapes.iter().map(|s| format!("/{}", s.name)).collect();
        format!("unknown command /{name}; there are {}", names.join(", "))
    })?;
    let mut command = SlashCommand {
        name: name.clone(),
        ..SlashCommand::default()
    };
    let options: &[OptionShape] = if shape.subcommands.is_empty() {
        &shape.options
    } else {
        let usage = usage(shape).join("\n  ");
        let sub = tokens
            .next()
            .ok_or_else(|| format!("/{name} needs a subcommand:\n  {usage}"))?;
        let (_, opts) = shape
            .subcommands
            .iter()
            .find(|(s, _)| *s == sub)
            .ok_or_else(|| format!("/{name} has no subcommand {sub}:\n  {usage}"))?;
        command.subcommand = Some(sub);
        opts
    };
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let mut positionals = Vec::new();
    for token in tokens {
        match token.split_once(':') {
            Some((key, value)) if options.iter().any(|o| o.name == key) => {
                if values.insert(key.to_owned(), value.to_owned()).is_some() {
                    return Err(format!("{key} is given twice"));
                }
            }
            _ => positionals.push(token),
        }
    }
    let named: Vec<&str> = values.keys().map(String::as_str).collect();
    let mut free = options
        .iter()
        .filter(|o| !named.contains(&o.name.as_str()))
        .map(|o| o.name.clone())
        .collect::<Vec<_>>()
        .into_iter();
    for value in positionals {
        let option = free.next().ok_or_else(|| {
            format!(
                "too many values at `{value}`; usage: {}",
                usage(shape).join(" | ")
            )
        })?;
        values.insert(option, value);
    }
    for option in options {
        let Some(value) = values.remove(&option.name) else {
            if option.required {
                return Err(format!(
                    "{} is missing; usage: {}",
                    option.name,
                    usage(shape).join(" | ")
                ));
            }
            continue;
        };
        let value = match option.kind {
            USER => {
                let (id, roles) = directory
                    .user(&value)
                    .ok_or_else(|| format!("{}: no member `{value}`", option.name))?;
                command.resolved_roles.insert(
                    option.name.clone(),
                    roles
                        .into_iter()
                        .filter_map(crate::domain::Snowflake::from_u64)
                        .map(crate::domain::RoleId)
                        .collect(),
                );
                id.to_string()
            }
            ROLE => directory
                .role(&value)
                .ok_or_else(|| format!("{}: no role `{value}`", option.name))?
                .to_string(),
            BOOLEAN => match value.to_ascii_lowercase().as_str() {
                "true" | "yes" | "y" => "true".to_owned(),
                "false" | "no" | "n" => "false".to_owned(),
                _ => return Err(format!("{}: true or false, not `{value}`", option.name)),
            },
            _ => value,
        };
        command.options.insert(option.name.clone(), value);
    }
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct People;

    impl Directory for People {
        fn user(&self, text: &str) -> Option<(u64, Vec<u64>)> {
            (text.trim_start_matches('@') == "dev").then(|| (1002, vec![200]))
        }
        fn role(&self, text: &str) -> Option<u64> {
            match text {
                "sre" => Some(100),
                t => t.parse().ok(),
            }
        }
    }

    fn parse(line: &str) -> Result<SlashCommand, String> {
        parse_slash(line, &shapes(), &People)
    }

    #[test]
    fn jit_positionals_fill_port_vm_duration_in_order() {
        let c = parse("/jit ssh web-01 2h").unwrap();
        assert_eq!(c.name, "jit");
        assert_eq!(c.subcommand, None);
        assert_eq!(c.option("port"), Some("ssh"));
        assert_eq!(c.option("vm"), Some("web-01"));
        assert_eq!(c.option("duration"), Some("2h"));
        assert_eq!(c.option("reason"), None);
    }

    #[test]
    fn named_and_quoted_values_mix_with_positionals() {
        let c = parse(r#"/jit from:203.0.113.7 rdp win-07 reason:"patching the box" 45m"#).unwrap();
        assert_eq!(c.option("port"), Some("rdp"));
        assert_eq!(c.option("vm"), Some("win-07"));
        assert_eq!(c.option("duration"), Some("45m"));
        assert_eq!(c.option("reason"), Some("patching the box"));
        assert_eq!(c.option("from"), Some("203.0.113.7"));
        // An IPv6 positional is a value, not a key.
        let c = parse("/jit ssh web-01 2h why 2001:db8::1").unwrap();
        assert_eq!(c.option("from"), Some("2001:db8::1"));
    }

    #[test]
    fn subcommands_users_roles_and_booleans_resolve() {
        let c = parse("/jit-admin explain web-01 ssh 2h user:@dev").unwrap();
        assert_eq!(c.subcommand.as_deref(), Some("explain"));
        assert_eq!(c.option("vm"), Some("web-01"));
        assert_eq!(c.option("user"), Some("1002"));
        assert_eq!(c.resolved_roles["user"][0].get(), 200);
        let c = parse("/jit-admin map ops sre rg:rg-prod ssh 1h require_reason:yes").unwrap();
        assert_eq!(c.option("role"), Some("100"));
        assert_eq!(c.option("vms"), Some("rg:rg-prod"));
        assert_eq!(c.option("require_reason"), Some("true"));
    }

    #[test]
    fn mistakes_are_explained() {
        assert!(parse("/nope").unwrap_err().contains("unknown command"));
        assert!(parse("/jit ssh").unwrap_err().contains("vm is missing"));
        assert!(parse("/jit-status extra").unwrap_err().contains("too many"));
        assert!(
            parse("/jit-admin")
                .unwrap_err()
                .contains("needs a subcommand")
        );
        assert!(
            parse("/jit-admin explain web-01 ssh 2h user:ghost")
                .unwrap_err()
                .contains("no member")
        );
        assert!(
            parse(r#"/jit ssh web-01 2h reason:"open"#)
                .unwrap_err()
                .contains("quote")
        );
    }
}
