//! Discord's body limits, checked as Discord checks them: a body that breaks one is refused with
//! 400 and `{"code":50035,"message":"Invalid Form Body","errors":{…}}`, the `errors` object
//! nesting the path of every offending field down to an `_errors` list (array indices as string
//! keys), e.g. `{"embeds":{"0":{"title":{"_errors":[{"code":"BASE_TYPE_MAX_LENGTH",…}]}}}}`.
//!
//! Sources (dapi = `discord/discord-api-docs`): resources/message.mdx (content 2000, embeds 10,
//! embed limits table: title 256, description 4096, 25 fields, field name 256 / value 1024,
//! footer 2048, author 256, 6000 in total over all embeds of a message; allowed mentions and the
//! `parse`/`users` exclusivity), components/reference.mdx (5 action rows, 5 buttons a row,
//! `custom_id` 1-100 and unique, label 80), interactions/receiving-and-responding.mdx
//! (autocomplete: 25 choices), interactions/application-commands.mdx (names 1-32 matching the
//! documented regex, lowercase; descriptions 1-100; 25 options; 25 choices, name and string value
//! 1-100; required options first), topics/opcodes-and-status-codes.mdx (50035).
//!
//! Lengths are counted in characters (Unicode scalar values).

use serde_json::{Map, Value, json};

pub const CONTENT_MAX: usize = 2000;
pub const EMBEDS_MAX: usize = 10;
pub const TITLE_MAX: usize = 256;
pub const DESCRIPTION_MAX: usize = 4096;
pub const FIELDS_MAX: usize = 25;
pub const FIELD_NAME_MAX: usize = 256;
pub const FIELD_VALUE_MAX: usize = 1024;
pub const FOOTER_MAX: usize = 2048;
pub const AUTHOR_NAME_MAX: usize = 256;
pub const EMBED_TOTAL_MAX: usize = 6000;
pub const ROWS_MAX: usize = 5;
pub const BUTTONS_PER_ROW: usize = 5;
pub const CUSTOM_ID_MAX: usize = 100;
pub const LABEL_MAX: usize = 80;
pub const CHOICES_MAX: usize = 25;
pub const CHOICE_MAX: usize = 100;
pub const MENTIONS_MAX: usize = 100;
pub const COMMAND_NAME_MAX: usize = 32;
pub const COMMAND_DESCRIPTION_MAX: usize = 100;
pub const OPTIONS_MAX: usize = 25;
pub const COMMANDS_MAX: usize = 100;

/// The errors found in one body, as Discord nests them.
#[derive(Default)]
pub struct FormErrors {
    errors: Map<String, Value>,
}

impl FormErrors {
    /// Records `code` / `message` at `path` (field names and array indices).
    pub fn add(&mut self, path: &[String], code: &str, message: impl Into<String>) {
        let mut node = &mut self.errors;
        for segment in path {
            let child = node
                .entry(segment.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(map) = child else {
                return;
            };
            node = map;
        }
        let list = node
            .entry("_errors".to_owned())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = list {
            list.push(json!({"code": code, "message": message.into()}));
        }
    }

    /// `Ok` when nothing was found, else Discord's 400 body.
    pub fn into_result(self) -> Result<(), Value> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(json!({"code": 50035, "message": "Invalid Form Body", "errors": self.errors}))
        }
    }
}

fn at(path: &[String], more: &[&str]) -> Vec<String> {
    let mut out = path.to_vec();
    out.extend(more.iter().map(|s| (*s).to_owned()));
    out
}

fn chars(v: &Value) -> usize {
    v.as_str().map_or(0, |s| s.chars().count())
}

fn max_length(errors: &mut FormErrors, path: &[String], value: &Value, max: usize) {
    if chars(value) > max {
        errors.add(
            path,
            "BASE_TYPE_MAX_LENGTH",
            format!("Must be {max} or fewer in length."),
        );
    }
}

fn bad_length(errors: &mut FormErrors, path: &[String], value: &Value, min: usize, max: usize) {
    let n = chars(value);
    if !value.is_string() {
        errors.add(path, "BASE_TYPE_REQUIRED", "This field is required");
    } else if n < min || n > max {
        errors.add(
            path,
            "BASE_TYPE_BAD_LENGTH",
            format!("Must be between {min} and {max} in length."),
        );
    }
}

fn list_max(errors: &mut FormErrors, path: &[String], list: &[Value], max: usize) {
    if list.len() > max {
        errors.add(
            path,
            "BASE_TYPE_MAX_LENGTH",
            format!("Must be {max} or fewer in length."),
        );
    }
}

/// A message body (create, edit, webhook execute, interaction response `data`).
pub fn message(body: &Value) -> Result<(), Value> {
    let mut errors = FormErrors::default();
    check_message(&mut errors, &[], body);
    errors.into_result()
}

/// Checks a message body found at `path`.
pub fn check_message(errors: &mut FormErrors, path: &[String], body: &Value) {
    max_length(
        errors,
        &at(path, &["content"]),
        &body["content"],
        CONTENT_MAX,
    );
    if let Some(embeds) = body["embeds"].as_array() {
        check_embeds(errors, &at(path, &["embeds"]), embeds);
    }
    if let Some(rows) = body["components"].as_array() {
        check_components(errors, &at(path, &["components"]), rows);
    }
    if !body["allowed_mentions"].is_null() {
        check_allowed_mentions(
            errors,
            &at(path, &["allowed_mentions"]),
            &body["allowed_mentions"],
        );
    }
}

fn check_embeds(errors: &mut FormErrors, path: &[String], embeds: &[Value]) {
    list_max(errors, path, embeds, EMBEDS_MAX);
    let mut total = 0;
    for (i, embed) in embeds.iter().enumerate() {
        let here = at(path, &[&i.to_string()]);
        let mut text = |errors: &mut FormErrors, keys: &[&str], value: &Value, max: usize| {
            total += chars(value);
            max_length(errors, &at(&here, keys), value, max);
        };
        text(errors, &["title"], &embed["title"], TITLE_MAX);
        text(
            errors,
            &["description"],
            &embed["description"],
            DESCRIPTION_MAX,
        );
        text(
            errors,
            &["footer", "text"],
            &embed["footer"]["text"],
            FOOTER_MAX,
        );
        text(
            errors,
            &["author", "name"],
            &embed["author"]["name"],
            AUTHOR_NAME_MAX,
        );
        let fields = embed["fields"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        list_max(errors, &at(&here, &["fields"]), fields, FIELDS_MAX);
        for (j, field) in fields.iter().enumerate() {
            let j = j.to_string();
            for (key, max) in [("name", FIELD_NAME_MAX), ("value", FIELD_VALUE_MAX)] {
                total += chars(&field[key]);
                bad_length(
                    errors,
                    &at(&here, &["fields", &j, key]),
                    &field[key],
                    1,
                    max,
                );
            }
        }
    }
    if total > EMBED_TOTAL_MAX {
        errors.add(
            path,
            "MAX_EMBED_SIZE_EXCEEDED",
            format!("Embed size exceeds maximum size of {EMBED_TOTAL_MAX}"),
        );
    }
}

fn check_components(errors: &mut FormErrors, path: &[String], rows: &[Value]) {
    list_max(errors, path, rows, ROWS_MAX);
    let mut seen = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let here = at(path, &[&i.to_string()]);
        if row["type"] != 1 {
            errors.add(
                &at(&here, &["type"]),
                "UNION_TYPE_CHOICES",
                "Value of field \"type\" must be one of (1,).",
            );
            continue;
        }
        let buttons = row["components"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if buttons.is_empty() {
            errors.add(
                &at(&here, &["components"]),
                "BASE_TYPE_MIN_LENGTH",
                "Must be 1 or more in length.",
            );
        }
        list_max(
            errors,
            &at(&here, &["components"]),
            buttons,
            BUTTONS_PER_ROW,
        );
        for (j, button) in buttons.iter().enumerate() {
            let here = at(&here, &["components", &j.to_string()]);
            max_length(errors, &at(&here, &["label"]), &button["label"], LABEL_MAX);
            if button["style"] == 5 {
                continue; // a link button has a url, no custom_id
            }
            let id = &button["custom_id"];
            bad_length(errors, &at(&here, &["custom_id"]), id, 1, CUSTOM_ID_MAX);
            if let Some(id) = id.as_str() {
                if seen.contains(&id) {
                    errors.add(
                        &at(&here, &["custom_id"]),
                        "COMPONENT_CUSTOM_ID_DUPLICATED",
                        "Component custom id cannot be duplicated",
                    );
                }
                seen.push(id);
            }
        }
    }
}

fn check_allowed_mentions(errors: &mut FormErrors, path: &[String], mentions: &Value) {
    let Some(object) = mentions.as_object() else {
        errors.add(
            path,
            "DICT_TYPE_CONVERT",
            "Only dictionaries may be used in a DictType",
        );
        return;
    };
    let parse: Vec<&str> = match object.get("parse") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if !matches!(item.as_str(), Some("roles" | "users" | "everyone")) {
                    errors.add(
                        &at(path, &["parse", &i.to_string()]),
                        "BASE_TYPE_CHOICES",
                        "Value must be one of {'roles', 'users', 'everyone'}.",
                    );
                }
            }
            items.iter().filter_map(Value::as_str).collect()
        }
        Some(_) => {
            errors.add(&at(path, &["parse"]), "BASE_TYPE_LIST", "Must be a list.");
            Vec::new()
        }
    };
    for kind in ["users", "roles"] {
        match object.get(kind) {
            None | Some(Value::Null) => {}
            Some(Value::Array(ids)) => {
                list_max(errors, &at(path, &[kind]), ids, MENTIONS_MAX);
                for (i, id) in ids.iter().enumerate() {
                    if super::rest::snowflake_field(id).is_none() {
                        errors.add(
                            &at(path, &[kind, &i.to_string()]),
                            "NUMBER_TYPE_COERCE",
                            format!("Value \"{id}\" is not snowflake."),
                        );
                    }
                }
                if !ids.is_empty() && parse.contains(&kind) {
                    errors.add(
                        path,
                        "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                        format!("parse:[\"{kind}\"] and {kind}: [ids...] are mutually exclusive."),
                    );
                }
            }
            Some(_) => errors.add(&at(path, &[kind]), "BASE_TYPE_LIST", "Must be a list."),
        }
    }
    if let Some(replied) = object.get("replied_user")
        && !replied.is_boolean()
        && !replied.is_null()
    {
        errors.add(
            &at(path, &["replied_user"]),
            "BASE_TYPE_BOOLEAN",
            "Must be either true or false.",
        );
    }
}

/// An interaction response body (`{"type", "data"}`).
pub fn interaction_response(body: &Value) -> Result<(), Value> {
    let mut errors = FormErrors::default();
    let data = &body["data"];
    match body["type"].as_u64() {
        Some(4 | 7) => check_message(&mut errors, &["data".to_owned()], data),
        Some(8) => check_choices(
            &mut errors,
            &["data".to_owned(), "choices".to_owned()],
            data,
        ),
        _ => {}
    }
    errors.into_result()
}

fn check_choices(errors: &mut FormErrors, path: &[String], data: &Value) {
    let choices = data["choices"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    list_max(errors, path, choices, CHOICES_MAX);
    for (i, choice) in choices.iter().enumerate() {
        let here = at(path, &[&i.to_string()]);
        bad_length(
            errors,
            &at(&here, &["name"]),
            &choice["name"],
            1,
            CHOICE_MAX,
        );
        if choice["value"].is_string() {
            bad_length(
                errors,
                &at(&here, &["value"]),
                &choice["value"],
                1,
                CHOICE_MAX,
            );
        } else if !choice["value"].is_number() {
            errors.add(
                &at(&here, &["value"]),
                "BASE_TYPE_REQUIRED",
                "This field is required",
            );
        }
    }
}

/// A bulk overwrite of commands (`PUT …/commands`).
pub fn command_list(list: &[Value]) -> Result<(), Value> {
    let mut errors = FormErrors::default();
    list_max(&mut errors, &[], list, COMMANDS_MAX);
    for (i, command) in list.iter().enumerate() {
        check_command(&mut errors, &[i.to_string()], command);
    }
    errors.into_result()
}

/// One command (`POST …/commands`).
pub fn command(body: &Value) -> Result<(), Value> {
    let mut errors = FormErrors::default();
    check_command(&mut errors, &[], body);
    errors.into_result()
}

/// Discord's documented name rule: `^[-_\p{L}\p{N}\p{sc=Deva}\p{sc=Thai}]{1,32}$`, lowercase where
/// a letter has a lowercase form. (Devanagari and Thai letters are letters, so `\p{L}` and
/// `\p{N}` cover every name the bot could register.)
pub fn valid_name(name: &str) -> bool {
    let n = name.chars().count();
    (1..=COMMAND_NAME_MAX).contains(&n)
        && name
            .chars()
            .all(|c| c == '-' || c == '_' || c.is_alphanumeric())
        && name.chars().all(|c| !c.is_uppercase())
}

fn check_name(errors: &mut FormErrors, path: &[String], name: &Value) {
    match name.as_str() {
        Some(text) if valid_name(text) => {}
        Some(_) => errors.add(
            path,
            "APPLICATION_COMMAND_INVALID_NAME",
            "Command name is invalid",
        ),
        None => errors.add(path, "BASE_TYPE_REQUIRED", "This field is required"),
    }
}

fn check_command(errors: &mut FormErrors, path: &[String], command: &Value) {
    check_name(errors, &at(path, &["name"]), &command["name"]);
    let chat_input = command["type"].as_u64().is_none_or(|t| t == 1);
    if chat_input {
        bad_length(
            errors,
            &at(path, &["description"]),
            &command["description"],
            1,
            COMMAND_DESCRIPTION_MAX,
        );
    }
    check_options(errors, &at(path, &["options"]), &command["options"]);
}

fn check_options(errors: &mut FormErrors, path: &[String], options: &Value) {
    let options = options.as_array().map(Vec::as_slice).unwrap_or_default();
    list_max(errors, path, options, OPTIONS_MAX);
    let mut optional_seen = false;
    for (i, option) in options.iter().enumerate() {
        let here = at(path, &[&i.to_string()]);
        check_name(errors, &at(&here, &["name"]), &option["name"]);
        bad_length(
            errors,
            &at(&here, &["description"]),
            &option["description"],
            1,
            COMMAND_DESCRIPTION_MAX,
        );
        let kind = option["type"].as_u64().unwrap_or(0);
        if matches!(kind, 1 | 2) {
            check_options(errors, &at(&here, &["options"]), &option["options"]);
            continue;
        }
        let required = option["required"].as_bool().unwrap_or(false);
        if required && optional_seen {
            errors.add(
                &here,
                "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID_ORDER",
                "Required options must be placed before non-required options",
            );
        }
        optional_seen |= !required;
        let choices = option["choices"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if !choices.is_empty() && option["autocomplete"].as_bool() == Some(true) {
            errors.add(
                &at(&here, &["autocomplete"]),
                "APPLICATION_COMMAND_OPTION_CHOICES_AUTOCOMPLETE",
                "Autocomplete cannot be enabled on options with choices",
            );
        }
        check_choices(errors, &at(&here, &["choices"]), option);
    }
}
