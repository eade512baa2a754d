//! [`ChatMessage`] to serenity builders (pure).
//!
//! One embed for the card, buttons in action rows, mentions of users only.
//! Discord's limits are respected by truncating with an ellipsis, never by
//! failing: a reply that is cut short is better than no reply.

use serenity::all::{
    ButtonStyle as DiscordButtonStyle, CreateActionRow, CreateAllowedMentions, CreateAttachment,
    CreateButton, CreateEmbed, CreateEmbedFooter, CreateInteractionResponseMessage, CreateMessage,
    EditInteractionResponse, EditMessage, Nonce, RoleId, UserId,
};
use sha2::{Digest as _, Sha256};

use crate::chat::attachment::MAX_FILES;
use crate::chat::{ButtonStyle, Card, ChatMessage};

/// Message content, at most.
pub const CONTENT_MAX: usize = 2000;
/// Embed title, at most.
pub const TITLE_MAX: usize = 256;
/// Embed description, at most.
pub const DESCRIPTION_MAX: usize = 4096;
/// Fields per embed, at most.
pub const FIELDS_MAX: usize = 25;
/// Field name, at most.
pub const FIELD_NAME_MAX: usize = 256;
/// Field value, at most.
pub const FIELD_VALUE_MAX: usize = 1024;
/// Embed footer, at most.
pub const FOOTER_MAX: usize = 2048;
/// All text of one embed together, at most.
pub const EMBED_TOTAL_MAX: usize = 6000;
/// Button label, at most.
pub const LABEL_MAX: usize = 80;
/// Buttons per action row.
pub const BUTTONS_PER_ROW: usize = 5;
/// Action rows per message.
pub const ROWS_MAX: usize = 5;
/// Message nonce, at most.
pub const NONCE_MAX: usize = 25;
/// Users in `allowed_mentions`, at most.
const MENTIONS_MAX: usize = 100;

/// The last field of a card whose fields do not all fit: `…` and "N more
/// not shown", so a cut list says that it was cut.
const MORE_NAME: &str = "…";
/// Room kept for that note: its name and "N more not shown" for any N.
const MORE_NOTE_MAX: usize = 32;

/// What an otherwise empty message says (Discord refuses empty messages).
const EMPTY_FALLBACK: &str = "Done.";
/// A field name or value may not be empty: a zero-width space stands in.
const BLANK: &str = "\u{200b}";

/// The edit of a deferred reply: replaces its content, embed and buttons.
pub fn edit_response(message: &ChatMessage) -> EditInteractionResponse {
    let parts = Parts::of(message);
    let mut edit = EditInteractionResponse::new()
        .embeds(parts.embeds)
        .components(parts.rows)
        .allowed_mentions(mentions(parts.content.as_deref(), &parts.ping_roles));
    if let Some(content) = parts.content {
        edit = edit.content(content);
    }
    for file in parts.files {
        edit = edit.new_attachment(file);
    }
    edit
}

/// A channel message or DM, with `nonce` + `enforce_nonce` from
/// `idempotency_key` so that sending it again does not post twice.
pub fn create_message(message: &ChatMessage, idempotency_key: &str) -> CreateMessage {
    let parts = Parts::of(message);
    let mut create = CreateMessage::new()
        .embeds(parts.embeds)
        .components(parts.rows)
        .allowed_mentions(mentions(parts.content.as_deref(), &parts.ping_roles))
        .nonce(Nonce::String(nonce(idempotency_key)))
        .enforce_nonce(true)
        .add_files(parts.files);
    if let Some(content) = parts.content {
        create = create.content(content);
    }
    create
}

/// An immediate ephemeral reply (interaction response type 4). It carries
/// no files: in HTTP mode it is the inline JSON answer, which cannot.
pub fn ephemeral_message(message: &ChatMessage) -> CreateInteractionResponseMessage {
    let parts = Parts::of(message);
    let mut reply = CreateInteractionResponseMessage::new()
        .ephemeral(true)
        .embeds(parts.embeds)
        .components(parts.rows)
        .allowed_mentions(mentions(parts.content.as_deref(), &parts.ping_roles));
    if let Some(content) = parts.content {
        reply = reply.content(content);
    }
    reply
}

/// The edit of a message the bot posted (an approval card to its final
/// state): replaces its content, embed and buttons (none removes them).
pub fn edit_message(message: &ChatMessage) -> EditMessage {
    let parts = Parts::of(message);
    let mut edit = EditMessage::new()
        .embeds(parts.embeds)
        .components(parts.rows)
        .allowed_mentions(mentions(parts.content.as_deref(), &parts.ping_roles));
    if let Some(content) = parts.content {
        edit = edit.content(content);
    }
    for file in parts.files {
        edit = edit.new_attachment(file);
    }
    edit
}

/// Discord's message nonce for an idempotency key: the key itself when it
/// fits in 25 characters, else `h` + 24 hex digits of its SHA-256 (the same
/// key always gives the same nonce).
pub fn nonce(idempotency_key: &str) -> String {
    if !idempotency_key.is_empty() && idempotency_key.chars().count() <= NONCE_MAX {
        return idempotency_key.to_owned();
    }
    let digest = hex::encode(Sha256::digest(idempotency_key.as_bytes()));
    format!("h{}", &digest[..NONCE_MAX - 1])
}

/// `text` cut to at most `max` characters, ending in `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    if max > 0 {
        out.push('…');
    }
    out
}

/// Mentions may ping the users the content names as `<@id>` (a reminder
/// mentions its engineer), never @everyone, @here or roles. The users are
/// listed explicitly rather than through `parse: ["users"]`, which Discord
/// treats as exclusive with a `users` list.
fn users_only(content: Option<&str>) -> CreateAllowedMentions {
    CreateAllowedMentions::new().users(mentioned_users(content.unwrap_or_default()))
}

/// [`users_only`], plus the roles the message may ping
/// ([`ChatMessage::ping_roles`]) that its content mentions: an approval
/// card pings its approver role and nothing else.
fn mentions(content: Option<&str>, ping_roles: &[u64]) -> CreateAllowedMentions {
    let content = content.unwrap_or_default();
    let roles: Vec<RoleId> = ping_roles
        .iter()
        .filter(|r| **r != 0 && content.contains(&format!("<@&{r}>")))
        .map(|r| RoleId::new(*r))
        .collect();
    let users = users_only(Some(content));
    if roles.is_empty() {
        users
    } else {
        users.roles(roles)
    }
}

/// The user ids of `<@id>` / `<@!id>` mentions in `text`, at most 100 (Discord's limit).
fn mentioned_users(text: &str) -> Vec<UserId> {
    let mut users = Vec::new();
    for piece in text.split("<@").skip(1) {
        let piece = piece.strip_prefix('!').unwrap_or(piece);
        let Some((digits, _)) = piece.split_once('>') else {
            continue;
        };
        if let Ok(id) = digits.parse::<u64>()
            && id != 0
            && !users.contains(&UserId::new(id))
        {
            users.push(UserId::new(id));
        }
        if users.len() == MENTIONS_MAX {
            break;
        }
    }
    users
}

/// The rendered pieces every builder takes.
struct Parts {
    content: Option<String>,
    embeds: Vec<CreateEmbed>,
    rows: Vec<CreateActionRow>,
    ping_roles: Vec<u64>,
    /// The message's files, at most [`MAX_FILES`].
    files: Vec<CreateAttachment>,
}

impl Parts {
    fn of(message: &ChatMessage) -> Self {
        let content = message
            .content
            .as_deref()
            .filter(|c| !c.trim().is_empty())
            .map(|c| truncate(c, CONTENT_MAX));
        let embeds: Vec<CreateEmbed> = message.card.iter().map(embed).collect();
        let rows = button_rows(message);
        let content = match content {
            None if embeds.is_empty() && message.attachments.is_empty() => {
                Some(EMPTY_FALLBACK.to_owned())
            }
            other => other,
        };
        let files = message
            .attachments
            .iter()
            .take(MAX_FILES)
            .map(|f| CreateAttachment::bytes(f.data().to_vec(), f.filename()))
            .collect();
        Self {
            content,
            embeds,
            rows,
            ping_roles: message.ping_roles.clone(),
            files,
        }
    }
}

fn non_blank(text: String) -> String {
    if text.trim().is_empty() {
        BLANK.to_owned()
    } else {
        text
    }
}

fn len(text: &str) -> usize {
    text.chars().count()
}

/// The card as one embed: each piece within its limit, and all of it within
/// the 6000-character total (the description first, then fields in order
/// while they fit, the last one saying how many did not).
fn embed(card: &Card) -> CreateEmbed {
    let mut embed = CreateEmbed::new().colour(card.tone.color());
    let mut budget = EMBED_TOTAL_MAX;
    let title = truncate(card.title.trim(), TITLE_MAX);
    if !title.is_empty() {
        budget -= len(&title);
        embed = embed.title(title);
    }
    if let Some(footer) = card.footer.as_deref().filter(|f| !f.trim().is_empty()) {
        let footer = truncate(footer, FOOTER_MAX.min(budget));
        budget -= len(&footer);
        embed = embed.footer(CreateEmbedFooter::new(footer));
    }
    if let Some(description) = card.description.as_deref().filter(|d| !d.trim().is_empty()) {
        let description = truncate(description, DESCRIPTION_MAX.min(budget));
        budget -= len(&description);
        embed = embed.description(description);
    }
    let total = card.fields.len();
    let mut shown = 0;
    for (i, field) in card.fields.iter().enumerate() {
        let name = non_blank(truncate(&field.name, FIELD_NAME_MAX));
        let value = non_blank(truncate(&field.value, FIELD_VALUE_MAX));
        let cost = len(&name) + len(&value);
        // Keep a field's slot and room for the note if more fields follow.
        let last = i + 1 == total;
        let (slots, reserve) = if last {
            (FIELDS_MAX, 0)
        } else {
            (FIELDS_MAX - 1, MORE_NOTE_MAX)
        };
        if shown == slots || cost + reserve > budget {
            break;
        }
        budget -= cost;
        embed = embed.field(name, value, field.inline);
        shown += 1;
    }
    if shown < total {
        embed = embed.field(
            MORE_NAME,
            format!("{} more not shown", total - shown),
            false,
        );
    }
    embed
}

/// Buttons, five to a row (the contract's single row is split if longer),
/// each custom id once.
fn button_rows(message: &ChatMessage) -> Vec<CreateActionRow> {
    let mut seen = std::collections::HashSet::new();
    let buttons: Vec<CreateButton> = message
        .buttons
        .iter()
        .filter(|b| seen.insert(b.action.custom_id()))
        .take(BUTTONS_PER_ROW * ROWS_MAX)
        .map(|b| {
            let style = match b.style {
                ButtonStyle::Primary => DiscordButtonStyle::Primary,
                ButtonStyle::Secondary => DiscordButtonStyle::Secondary,
                ButtonStyle::Danger => DiscordButtonStyle::Danger,
            };
            CreateButton::new(b.action.custom_id())
                .label(non_blank(truncate(b.label.trim(), LABEL_MAX)))
                .style(style)
        })
        .collect();
    buttons
        .chunks(BUTTONS_PER_ROW)
        .map(|row| CreateActionRow::Buttons(row.to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::chat::{Button, ButtonAction, Tone};

    fn json_of(value: impl serde::Serialize) -> Value {
        serde_json::to_value(value).unwrap()
    }

    fn grant_message() -> ChatMessage {
        ChatMessage::card(
            Card::new("Access granted", Tone::Success)
                .description("SSH to web-01")
                .field("VM", "web-01", true)
                .field("Window", "<t:1767225600:f>", false)
                .footer("request 1234"),
        )
        .with_buttons(vec![
            Button {
                action: ButtonAction::Extend("1234".into()),
                label: "Extend".into(),
                style: ButtonStyle::Primary,
            },
            Button {
                action: ButtonAction::CloseEarly("1234".into()),
                label: "Close early".into(),
                style: ButtonStyle::Danger,
            },
        ])
    }

    #[test]
    fn a_card_becomes_one_embed_with_a_row_of_buttons() {
        let body = json_of(edit_response(&grant_message()));
        let embed = &body["embeds"][0];
        assert_eq!(embed["title"], "Access granted");
        assert_eq!(embed["description"], "SSH to web-01");
        assert_eq!(embed["color"], json!(Tone::Success.color()));
        assert_eq!(embed["footer"]["text"], "request 1234");
        assert_eq!(
            embed["fields"][0],
            json!({"name": "VM", "value": "web-01", "inline": true})
        );
        assert_eq!(embed["fields"][1]["inline"], false);
        let row = &body["components"][0];
        assert_eq!(row["type"], 1);
        let buttons = row["components"].as_array().unwrap();
        assert_eq!(buttons.len(), 2);
        assert_eq!(buttons[0]["custom_id"], "extend:1234");
        assert_eq!(buttons[0]["label"], "Extend");
        assert_eq!(buttons[0]["style"], 1);
        assert_eq!(buttons[1]["custom_id"], "close:1234");
        assert_eq!(buttons[1]["style"], 4);
        assert_eq!(
            body["allowed_mentions"],
            json!({"parse": [], "roles": [], "users": []})
        );
    }

    #[test]
    fn a_message_pings_only_the_roles_it_may_and_mentions() {
        let mut message = ChatMessage::text("<@&300> approval needed for <@42>; not <@&999>");
        message.ping_roles = vec![300, 301];
        let body = json_of(create_message(&message, "k"));
        assert_eq!(body["allowed_mentions"]["roles"], json!(["300"]));
        assert_eq!(body["allowed_mentions"]["users"], json!(["42"]));
        let edit = json_of(edit_message(&ChatMessage::text("done")));
        assert_eq!(edit["allowed_mentions"]["roles"], json!([]));
        assert_eq!(
            edit["components"],
            json!([]),
            "an edit without buttons removes them"
        );
    }

    #[test]
    fn only_the_mentioned_users_may_be_pinged() {
        let message = ChatMessage::text("<@42> your grant ends soon, <@!7> <@&9> @everyone <@42>");
        let body = json_of(create_message(&message, "k"));
        assert_eq!(
            body["allowed_mentions"],
            json!({"parse": [], "roles": [], "users": ["42", "7"]})
        );
    }

    #[test]
    fn long_texts_are_cut_with_an_ellipsis() {
        let mut card = Card::new("t".repeat(300), Tone::Info).description("d".repeat(5000));
        for i in 0..30 {
            card = card.field(format!("f{i}"), "v".repeat(2000), false);
        }
        let message = ChatMessage {
            content: Some("c".repeat(2500)),
            card: Some(card),
            buttons: Vec::new(),
            ping_roles: Vec::new(),
            attachments: Vec::new(),
        };
        let body = json_of(edit_response(&message));
        let text_len = |v: &Value| v.as_str().unwrap().chars().count();
        assert_eq!(text_len(&body["content"]), CONTENT_MAX);
        assert!(body["content"].as_str().unwrap().ends_with('…'));
        let embed = &body["embeds"][0];
        assert_eq!(text_len(&embed["title"]), TITLE_MAX);
        assert_eq!(text_len(&embed["description"]), DESCRIPTION_MAX);
        let fields = embed["fields"].as_array().unwrap();
        assert!(fields.len() <= FIELDS_MAX);
        let (note, shown) = fields.split_last().unwrap();
        for field in shown {
            assert_eq!(text_len(&field["value"]), FIELD_VALUE_MAX);
        }
        assert!(
            note["value"].as_str().unwrap().ends_with("more not shown"),
            "{note}"
        );
        let total: usize = text_len(&embed["title"])
            + text_len(&embed["description"])
            + fields
                .iter()
                .map(|f| text_len(&f["name"]) + text_len(&f["value"]))
                .sum::<usize>();
        assert!(total <= EMBED_TOTAL_MAX, "{total}");
    }

    #[test]
    fn twenty_five_fields_at_most() {
        let mut card = Card::new("many", Tone::Info);
        for i in 0..40 {
            card = card.field(format!("f{i}"), "x", true);
        }
        let body = json_of(edit_response(&ChatMessage::card(card)));
        let fields = body["embeds"][0]["fields"].as_array().unwrap();
        assert_eq!(fields.len(), 25);
        assert_eq!(fields[23]["name"], "f23");
        assert_eq!(
            fields[24],
            json!({"name": "…", "value": "16 more not shown", "inline": false})
        );
    }

    #[test]
    fn exactly_twenty_five_fields_are_all_shown() {
        let mut card = Card::new("full", Tone::Info);
        for i in 0..25 {
            card = card.field(format!("f{i}"), "x", true);
        }
        let body = json_of(edit_response(&ChatMessage::card(card)));
        let fields = body["embeds"][0]["fields"].as_array().unwrap();
        assert_eq!(fields.len(), 25);
        assert_eq!(fields[24]["name"], "f24");
    }

    #[test]
    fn empty_field_texts_and_empty_messages_are_filled() {
        let card = Card::new("t", Tone::Info).field("", " ", false);
        let body = json_of(edit_response(&ChatMessage::card(card)));
        assert_eq!(body["embeds"][0]["fields"][0]["name"], BLANK);
        assert_eq!(body["embeds"][0]["fields"][0]["value"], BLANK);
        let body = json_of(edit_response(&ChatMessage::default()));
        assert_eq!(body["content"], EMPTY_FALLBACK);
    }

    #[test]
    fn more_than_five_buttons_take_more_rows_and_long_labels_are_cut() {
        let buttons = (0..7)
            .map(|i| Button {
                action: ButtonAction::Extend(format!("r{i}")),
                label: "L".repeat(100),
                style: ButtonStyle::Secondary,
            })
            .collect();
        let message = ChatMessage::text("hi").with_buttons(buttons);
        let body = json_of(edit_response(&message));
        let rows = body["components"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["components"].as_array().unwrap().len(), 5);
        assert_eq!(rows[1]["components"].as_array().unwrap().len(), 2);
        let label = rows[0]["components"][0]["label"].as_str().unwrap();
        assert_eq!(label.chars().count(), LABEL_MAX);
        assert_eq!(rows[0]["components"][0]["style"], 2);
    }

    #[test]
    fn messages_carry_a_bounded_deterministic_nonce() {
        let body = json_of(create_message(&ChatMessage::text("audit"), "outbox-17"));
        assert_eq!(body["nonce"], "outbox-17");
        assert_eq!(body["enforce_nonce"], true);
        let long = "audit-event-0123456789abcdef-0123456789abcdef";
        let hashed = nonce(long);
        assert_eq!(hashed.chars().count(), NONCE_MAX);
        assert_eq!(hashed, nonce(long));
        assert_ne!(hashed, nonce(&format!("{long}x")));
        assert_eq!(nonce("").chars().count(), NONCE_MAX);
    }

    #[test]
    fn ephemeral_replies_have_flag_64() {
        let body = json_of(ephemeral_message(&ChatMessage::text("no")));
        assert_eq!(body["flags"], 64);
        assert_eq!(body["content"], "no");
    }

    #[test]
    fn truncate_counts_characters_not_bytes() {
        assert_eq!(truncate("héllo", 5), "héllo");
        assert_eq!(truncate("héllo", 4), "hél…");
        assert_eq!(truncate("abc", 0), "");
    }
}
