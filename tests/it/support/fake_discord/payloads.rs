//! JSON payloads serenity 0.12.5 accepts: interactions, messages, users (notes §3).

use serde_json::{Value, json};

use super::{Config, USER_ID};

/// Discord's interaction `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InteractionKind {
    Ping = 1,
    Command = 2,
    Component = 3,
    Autocomplete = 4,
    /// MODAL_SUBMIT: a form the bot showed (callback type 9), submitted.
    ModalSubmit = 5,
}

/// An interaction to send; get one from `FakeDiscord::{slash, autocomplete, button, ping}`.
///
/// Options are added to the innermost subcommand opened so far:
/// `fake.slash("jit-admin").subcommand("map").string("role", "7007").string("vm", "web-*")`.
#[derive(Clone, Debug)]
pub struct InteractionBuilder {
    kind: InteractionKind,
    /// Command name, or `custom_id` for a component.
    name: String,
    application_id: u64,
    guild_id: Option<u64>,
    channel_id: u64,
    bot_user_id: u64,
    user_id: u64,
    username: String,
    roles: Vec<u64>,
    permissions: String,
    locale: String,
    options: Vec<Value>,
    /// Path of indices into `options` of the open subcommand group / subcommand.
    open: Vec<usize>,
    message: Option<Value>,
    values: Option<Vec<String>>,
    /// A submitted form's text inputs, `(custom_id, value)`.
    inputs: Vec<(String, String)>,
}

impl InteractionBuilder {
    pub(super) fn new(config: &Config, kind: InteractionKind, name: &str) -> Self {
        Self {
            kind,
            name: name.to_owned(),
            application_id: config.application_id,
            guild_id: Some(config.guild_id),
            channel_id: config.channel_id,
            bot_user_id: config.bot_user_id,
            user_id: USER_ID,
            username: "alice".to_owned(),
            roles: Vec::new(),
            permissions: "2147483647".to_owned(),
            locale: "en-US".to_owned(),
            options: Vec::new(),
            open: Vec::new(),
            message: None,
            values: None,
            inputs: Vec::new(),
        }
    }

    /// A text input's value in a submitted form.
    pub fn input(mut self, custom_id: &str, value: &str) -> Self {
        self.inputs.push((custom_id.to_owned(), value.to_owned()));
        self
    }

    pub fn kind(&self) -> InteractionKind {
        self.kind
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn channel_id(&self) -> u64 {
        self.channel_id
    }
    pub(super) fn guild_id_or_zero(&self) -> u64 {
        self.guild_id.unwrap_or(0)
    }

    /// The invoking user.
    pub fn user(mut self, id: u64, username: &str) -> Self {
        self.user_id = id;
        self.username = username.to_owned();
        self
    }
    /// The invoking member's role ids.
    pub fn roles(mut self, roles: impl IntoIterator<Item = u64>) -> Self {
        self.roles = roles.into_iter().collect();
        self
    }
    /// The member's channel permissions (`member.permissions`), a decimal bit string.
    pub fn permissions(mut self, permissions: &str) -> Self {
        self.permissions = permissions.to_owned();
        self
    }
    pub fn channel(mut self, channel_id: u64) -> Self {
        self.channel_id = channel_id;
        self
    }
    pub fn guild(mut self, guild_id: u64) -> Self {
        self.guild_id = Some(guild_id);
        self
    }
    /// Sent from a DM: no `guild_id`/`member`, the user in `user`.
    pub fn in_dm(mut self) -> Self {
        self.guild_id = None;
        self
    }
    pub fn locale(mut self, locale: &str) -> Self {
        self.locale = locale.to_owned();
        self
    }

    /// Opens a subcommand (option type 1); later options go inside it. Inside an open
    /// subcommand group it becomes a child of the group.
    pub fn subcommand(mut self, name: &str) -> Self {
        let in_group = self
            .open
            .first()
            .is_some_and(|&g| self.options[g]["type"] == 2);
        self.open.truncate(usize::from(in_group));
        self.open_option(name, 1)
    }
    /// Opens a subcommand group (option type 2); open a subcommand inside it next.
    pub fn subcommand_group(mut self, name: &str) -> Self {
        self.open.clear();
        self.open_option(name, 2)
    }
    fn open_option(mut self, name: &str, kind: u8) -> Self {
        let siblings = self.children_mut();
        siblings.push(json!({"name": name, "type": kind, "options": []}));
        let index = siblings.len() - 1;
        self.open.push(index);
        self
    }
    fn children_mut(&mut self) -> &mut Vec<Value> {
        let mut children = &mut self.options;
        for &i in &self.open {
            children = children[i]["options"]
                .as_array_mut()
                .expect("subcommand options array");
        }
        children
    }
    /// Adds an option `{"name","type","value"}` to the open subcommand (or the top level).
    pub fn option(mut self, name: &str, kind: u8, value: Value) -> Self {
        self.children_mut()
            .push(json!({"name": name, "type": kind, "value": value}));
        self
    }
    /// A STRING (type 3) option.
    pub fn string(self, name: &str, value: &str) -> Self {
        self.option(name, 3, json!(value))
    }
    /// An INTEGER (type 4) option.
    pub fn integer(self, name: &str, value: i64) -> Self {
        self.option(name, 4, json!(value))
    }
    /// A BOOLEAN (type 5) option.
    pub fn boolean(self, name: &str, value: bool) -> Self {
        self.option(name, 5, json!(value))
    }
    /// The focused STRING option of an autocomplete (partial input, `"focused": true`).
    pub fn focused(mut self, name: &str, partial: &str) -> Self {
        self.children_mut()
            .push(json!({"name": name, "type": 3, "value": partial, "focused": true}));
        self
    }
    /// The message the component is attached to (default: a bot message holding the button).
    pub fn on_message(mut self, message: Value) -> Self {
        self.message = Some(message);
        self
    }
    /// Makes the component a string select (component_type 3) with these chosen values.
    pub fn select_values(mut self, values: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.values = Some(values.into_iter().map(Into::into).collect());
        self
    }

    fn user_json(&self) -> Value {
        user_json(self.user_id, &self.username, false)
    }

    /// The interaction object (the gateway dispatch's `d`).
    pub(super) fn build(&self, id: u64, token: &str, command_id: u64, message_id: u64) -> Value {
        let mut d = json!({
            "id": id.to_string(),
            "application_id": self.application_id.to_string(),
            "type": self.kind as u8,
            "token": token,
            "version": 1,
        });
        if self.kind == InteractionKind::Ping {
            return d;
        }
        let extra = json!({
            "channel_id": self.channel_id.to_string(),
            "channel": {"id": self.channel_id.to_string(), "type": if self.guild_id.is_some() { 0 } else { 1 }},
            "locale": self.locale,
            "entitlements": [],
            "attachment_size_limit": super::ATTACHMENT_SIZE_LIMIT,
            "app_permissions": "2147483647",
            "authorizing_integration_owners": {},
            "context": if self.guild_id.is_some() { 0 } else { 1 },
        });
        merge(&mut d, extra);
        match self.guild_id {
            Some(guild_id) => merge(
                &mut d,
                json!({
                    "guild_id": guild_id.to_string(),
                    "guild_locale": "en-US",
                    "member": {
                        "user": self.user_json(),
                        "roles": self.roles.iter().map(u64::to_string).collect::<Vec<_>>(),
                        "deaf": false,
                        "mute": false,
                        "flags": 0,
                        "pending": false,
                        "nick": null,
                        "permissions": self.permissions,
                        "joined_at": "2024-01-01T00:00:00.000000+00:00",
                    },
                }),
            ),
            None => merge(&mut d, json!({"user": self.user_json()})),
        }
        let data = match self.kind {
            InteractionKind::Command | InteractionKind::Autocomplete => json!({
                "id": command_id.to_string(),
                "name": self.name,
                "type": 1,
                "options": self.options,
                "resolved": {},
            }),
            InteractionKind::Component => match &self.values {
                Some(values) => {
                    json!({"custom_id": self.name, "component_type": 3, "values": values})
                }
                None => json!({"custom_id": self.name, "component_type": 2}),
            },
            InteractionKind::ModalSubmit => json!({
                "custom_id": self.name,
                "components": self.inputs.iter().map(|(id, value)| json!({
                    "type": 1,
                    "components": [{"type": 4, "custom_id": id, "value": value}],
                })).collect::<Vec<_>>(),
            }),
            InteractionKind::Ping => unreachable!(),
        };
        d["data"] = data;
        if self.kind == InteractionKind::Component {
            d["message"] = self.message.clone().unwrap_or_else(|| {
                let mut message = message_json(
                    message_id,
                    self.channel_id,
                    user_json(self.bot_user_id, "drawbridge", true),
                    &chrono::Utc::now(),
                );
                message["components"] = json!([{"type": 1, "components": [
                    {"type": 2, "style": 1, "label": "Button", "custom_id": self.name}
                ]}]);
                message
            });
        }
        d
    }
}

/// A guild member object as `GET /guilds/{id}/members/{user}` returns it.
pub(super) fn member_json(user_id: u64, username: &str, roles: &[String]) -> Value {
    json!({
        "user": user_json(user_id, username, false),
        "roles": roles,
        "deaf": false,
        "mute": false,
        "flags": 0,
        "pending": false,
        "nick": null,
        "joined_at": "2024-01-01T00:00:00.000000+00:00",
    })
}

/// A user object with the keys serenity requires.
pub(super) fn user_json(id: u64, username: &str, bot: bool) -> Value {
    json!({
        "id": id.to_string(),
        "username": username,
        "discriminator": "0",
        "global_name": null,
        "avatar": null,
        "bot": bot,
    })
}

/// A message with every key serenity's `Message` requires (notes §3), empty content.
pub(super) fn message_json(
    id: u64,
    channel_id: u64,
    author: Value,
    now: &chrono::DateTime<chrono::Utc>,
) -> Value {
    json!({
        "id": id.to_string(),
        "channel_id": channel_id.to_string(),
        "author": author,
        "content": "",
        "timestamp": timestamp(now),
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "components": [],
        "pinned": false,
        "type": 0,
        "flags": 0,
    })
}

pub(super) fn timestamp(now: &chrono::DateTime<chrono::Utc>) -> String {
    now.to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
}

/// Copies the message fields the bot may set (`content`, `embeds`, `components`, `flags`, `tts`,
/// `nonce`) from a create/edit body onto `message`. Files: [`super::form::apply_attachments`].
pub(super) fn apply_message_body(message: &mut Value, body: &Value) {
    for key in ["content", "embeds", "components", "tts", "nonce"] {
        if let Some(value) = body.get(key).filter(|v| !v.is_null()) {
            message[key] = value.clone();
        }
    }
    if let Some(flags) = body.get("flags").and_then(Value::as_u64) {
        message["flags"] = json!(flags);
    }
}

fn merge(target: &mut Value, extra: Value) {
    if let (Some(target), Value::Object(extra)) = (target.as_object_mut(), extra) {
        target.extend(extra);
    }
}
