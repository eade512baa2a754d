//! What the bot says, independent of where it is shown: the Discord adapter
//! renders a [`ChatMessage`] as an embed with buttons, the demo console as
//! text, and the outbox stores it as JSON.
//!
//! Times are written as Discord timestamp tokens (`<t:1767225600:f>`, `:R`),
//! which Discord shows in each reader's own time zone; [`render_times`]
//! replaces them for the console.

use chrono::{DateTime, Local, TimeZone, Utc};
use serde::{Deserialize, Serialize};

pub mod attachment;

pub use attachment::{Attachment, AttachmentError};

/// The colour of an embed: what kind of news it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tone {
    /// Access granted, extended.
    Success,
    /// Refused by policy.
    Denied,
    /// Something failed.
    Error,
    /// Attention: a reminder, an out-of-band change.
    Warning,
    /// Neutral.
    Info,
}

impl Tone {
    /// The embed colour.
    pub fn color(self) -> u32 {
        match self {
            Self::Success => 0x2e_cc_71,
            Self::Denied => 0xe6_7e_22,
            Self::Error => 0xe7_4c_3c,
            Self::Warning => 0xf1_c4_0f,
            Self::Info => 0x34_98_db,
        }
    }
}

/// One embed field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// The name.
    pub name: String,
    /// The value (may hold timestamp tokens).
    pub value: String,
    /// Shown side by side with its neighbours.
    pub inline: bool,
}

/// A card: title, text and fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Card {
    /// Headline.
    pub title: String,
    /// Body text.
    pub description: Option<String>,
    /// Colour.
    pub tone: Tone,
    /// Fields, in order.
    pub fields: Vec<Field>,
    /// Footer (for example the request id).
    pub footer: Option<String>,
}

/// Button styles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ButtonStyle {
    /// The main action.
    Primary,
    /// A secondary action.
    Secondary,
    /// Destructive.
    Danger,
}

/// A button; its id carries no secret (see [`crate::chat::ButtonAction`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Button {
    /// What pressing it does.
    pub action: ButtonAction,
    /// The label.
    pub label: String,
    /// The style.
    pub style: ButtonStyle,
}

/// `text` as literal text in a message: every markdown character, masked
/// link bracket and mention opener is escaped, so what a member typed (a
/// reason, a name, a VM name) renders as typed and never as a link, a
/// mention or formatting.
pub fn escape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for (i, c) in text.chars().enumerate() {
        let special = matches!(
            c,
            '\\' | '*' | '_' | '~' | '|' | '`' | '>' | '<' | '[' | ']' | '(' | ')' | '@' | '#'
        ) || (i == 0 && matches!(c, '-' | '+'));
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The text [`escape_markdown`] escaped, as Discord shows it: for
/// transports that print plain text (the demo console).
pub fn unescape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let escapes = matches!(
            chars.peek(),
            Some(
                '\\' | '*'
                    | '_'
                    | '~'
                    | '|'
                    | '`'
                    | '>'
                    | '<'
                    | '['
                    | ']'
                    | '('
                    | ')'
                    | '@'
                    | '#'
                    | '-'
                    | '+'
            )
        );
        if c == '\\' && escapes {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

/// The version of the approval buttons' custom ids (`approve:<id>:1`):
/// a button carries the request id and this version, never state, so it
/// keeps working across restarts and a later format can tell old buttons.
pub const APPROVAL_BUTTONS_VERSION: &str = "1";

/// What a button does, encoded in its custom id as `<verb>:<request id>`
/// (`<verb>:<request id>:<version>` for the approval buttons).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ButtonAction {
    /// Extend the grant by its original duration (capped by the limits).
    Extend(String),
    /// Close the grant early.
    CloseEarly(String),
    /// Answer the question "another member holds the port": open it anyway,
    /// ending their window.
    OpenAnyway(String),
    /// Answer the question with Cancel: nothing reaches Azure.
    Cancel(String),
    /// Approve a pending request.
    Approve(String),
    /// Deny a pending request: asks for a reason first (a form).
    Deny(String),
    /// The Deny form, submitted with its reason.
    DenyWithReason {
        /// The request.
        id: String,
        /// Why, as the approver typed it.
        reason: String,
    },
    /// The requester cancels their pending request (its button reads
    /// Cancel; `cancel:<id>:<version>`).
    Withdraw(String),
    /// An approver acknowledges a break-glass request.
    Acknowledge(String),
}

impl ButtonAction {
    /// The custom id (at most 100 characters, as Discord allows).
    pub fn custom_id(&self) -> String {
        let v = APPROVAL_BUTTONS_VERSION;
        match self {
            Self::Extend(id) => format!("extend:{id}"),
            Self::CloseEarly(id) => format!("close:{id}"),
            Self::OpenAnyway(id) => format!("open-anyway:{id}"),
            Self::Cancel(id) => format!("cancel:{id}"),
            Self::Approve(id) => format!("approve:{id}:{v}"),
            Self::Deny(id) => format!("deny:{id}:{v}"),
            Self::DenyWithReason { id, .. } => format!("denyreason:{id}:{v}"),
            Self::Withdraw(id) => format!("cancel:{id}:{v}"),
            Self::Acknowledge(id) => format!("ack:{id}:{v}"),
        }
    }

    /// The verb, for logs and the audit log.
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Extend(_) => "extend",
            Self::CloseEarly(_) => "close",
            Self::OpenAnyway(_) => "open-anyway",
            Self::Cancel(_) => "cancel",
            Self::Approve(_) => "approve",
            Self::Deny(_) | Self::DenyWithReason { .. } => "deny",
            Self::Withdraw(_) => "withdraw",
            Self::Acknowledge(_) => "acknowledge",
        }
    }

    /// The request the button acts on.
    pub fn request_id(&self) -> &str {
        match self {
            Self::Extend(id)
            | Self::CloseEarly(id)
            | Self::OpenAnyway(id)
            | Self::Cancel(id)
            | Self::Approve(id)
            | Self::Deny(id)
            | Self::DenyWithReason { id, .. }
            | Self::Withdraw(id)
            | Self::Acknowledge(id) => id,
        }
    }

    /// Reads a custom id back; `None` for anything else (an approval button
    /// of an unknown version included). A Deny form reads back with an
    /// empty reason, which the transport fills from the form.
    pub fn parse(custom_id: &str) -> Option<Self> {
        let mut parts = custom_id.split(':');
        let (verb, id) = (parts.next()?, parts.next()?);
        let version = parts.next();
        if parts.next().is_some() {
            return None;
        }
        crate::domain::RequestId::parse(id).ok()?;
        let id = id.to_string();
        match (verb, version) {
            ("extend", None) => Some(Self::Extend(id)),
            ("close", None) => Some(Self::CloseEarly(id)),
            ("open-anyway", None) => Some(Self::OpenAnyway(id)),
            ("cancel", None) => Some(Self::Cancel(id)),
            (_, Some(v)) if v != APPROVAL_BUTTONS_VERSION => None,
            ("approve", Some(_)) => Some(Self::Approve(id)),
            ("deny", Some(_)) => Some(Self::Deny(id)),
            ("denyreason", Some(_)) => Some(Self::DenyWithReason {
                id,
                reason: String::new(),
            }),
            ("cancel", Some(_)) => Some(Self::Withdraw(id)),
            ("ack", Some(_)) => Some(Self::Acknowledge(id)),
            _ => None,
        }
    }
}

/// A message: text, an optional card, buttons.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Plain text (may mention a user as `<@id>`).
    pub content: Option<String>,
    /// A card.
    pub card: Option<Card>,
    /// Buttons, in one row.
    pub buttons: Vec<Button>,
    /// Roles this message may ping (Discord's `allowed_mentions.roles`):
    /// only these, and only where the content mentions them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ping_roles: Vec<u64>,
    /// Files sent with it (at most [`attachment::MAX_FILES`] are sent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

impl ChatMessage {
    /// Plain text.
    pub fn text(content: impl Into<String>) -> Self {
        Self {
            content: Some(content.into()),
            ..Self::default()
        }
    }

    /// A card without buttons.
    pub fn card(card: Card) -> Self {
        Self {
            card: Some(card),
            ..Self::default()
        }
    }

    /// Adds buttons.
    pub fn with_buttons(mut self, buttons: Vec<Button>) -> Self {
        self.buttons = buttons;
        self
    }

    /// Adds a file.
    pub fn with_attachment(mut self, file: Attachment) -> Self {
        self.attachments.push(file);
        self
    }
}

impl Card {
    /// A card with a title and tone.
    pub fn new(title: impl Into<String>, tone: Tone) -> Self {
        Self {
            title: title.into(),
            description: None,
            tone,
            fields: Vec::new(),
            footer: None,
        }
    }

    /// Sets the body text.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }

    /// Adds a field.
    pub fn field(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
        inline: bool,
    ) -> Self {
        self.fields.push(Field {
            name: name.into(),
            value: value.into(),
            inline,
        });
        self
    }

    /// Sets the footer.
    pub fn footer(mut self, text: impl Into<String>) -> Self {
        self.footer = Some(text.into());
        self
    }
}

/// `<t:unix:f>` (date and time in the reader's zone).
pub fn time_full(at: DateTime<Utc>) -> String {
    format!("<t:{}:f>", at.timestamp())
}

/// `<t:unix:R>` (relative, such as "in 2 hours").
pub fn time_relative(at: DateTime<Utc>) -> String {
    format!("<t:{}:R>", at.timestamp())
}

/// Replaces Discord timestamp tokens with text for a terminal: `:R` as
/// "in 1h 59m" / "3m ago" relative to `now`, other styles as local time.
pub fn render_times(text: &str, now: DateTime<Utc>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<t:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let Some(end) = after.find('>') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let token = &after[..end];
        let (secs, style) = token.split_once(':').unwrap_or((token, "f"));
        match secs
            .parse::<i64>()
            .ok()
            .and_then(|s| Utc.timestamp_opt(s, 0).single())
        {
            Some(at) if style == "R" => out.push_str(&relative(at, now)),
            Some(at) => out.push_str(
                &at.with_timezone(&Local)
                    .format("%Y-%m-%d %H:%M %Z")
                    .to_string(),
            ),
            None => out.push_str(&rest[start..start + 3 + end + 1]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let delta = at - now;
    let mins = delta.num_minutes().abs();
    let span = if mins >= 60 {
        format!("{}h {}m", mins / 60, mins % 60)
    } else {
        format!("{mins}m")
    };
    if delta.num_seconds() >= 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_is_escaped() {
        assert_eq!(
            escape_markdown("[Approved by SecOps](https://evil)"),
            r"\[Approved by SecOps\]\(https://evil\)"
        );
        assert_eq!(escape_markdown("<@&1> @everyone"), r"\<\@&1\> \@everyone");
        assert_eq!(escape_markdown("**bold** `code`"), r"\*\*bold\*\* \`code\`");
        assert_eq!(escape_markdown("- item"), r"\- item");
        assert_eq!(escape_markdown("rg-web/web-01"), "rg-web/web-01");
        for text in ["[a](b) <@1> **x** - y \\ z", "Sam (SRE)", "-"] {
            assert_eq!(unescape_markdown(&escape_markdown(text)), text);
        }
    }

    #[test]
    fn button_ids_round_trip_and_reject_anything_else() {
        for action in [
            ButtonAction::Extend("abc-123".into()),
            ButtonAction::CloseEarly("9f8e".into()),
            ButtonAction::OpenAnyway("9f8e".into()),
            ButtonAction::Cancel("abc-123".into()),
            ButtonAction::Approve("1300".into()),
            ButtonAction::Deny("1300".into()),
            ButtonAction::Withdraw("1300".into()),
            ButtonAction::Acknowledge("1300".into()),
        ] {
            assert_eq!(ButtonAction::parse(&action.custom_id()), Some(action));
        }
        // The approval buttons carry the request id and a version, no state.
        assert_eq!(
            ButtonAction::Approve("1300".into()).custom_id(),
            "approve:1300:1"
        );
        let form = ButtonAction::parse("denyreason:1300:1").unwrap();
        assert_eq!(form.request_id(), "1300");
        // An approval button of another version, or without one, is stale.
        for stale in ["approve:1300:2", "approve:1300", "extend:1300:1"] {
            assert_eq!(ButtonAction::parse(stale), None, "{stale}");
        }
        for bad in [
            "",
            "extend",
            "extend:",
            "open:abc",
            "close:a/b",
            "extend:a:b",
        ] {
            assert_eq!(ButtonAction::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamp_tokens_render_for_the_console() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();
        let end = now + chrono::Duration::minutes(119);
        let text = format!("ends {} ({})", time_full(end), time_relative(end));
        let shown = render_times(&text, now);
        assert!(shown.ends_with("(in 1h 59m)"), "{shown}");
        assert!(!shown.contains("<t:"), "{shown}");
        assert_eq!(render_times("closed <t:x:R>", now), "closed <t:x:R>");
        assert_eq!(render_times("open <t:5", now), "open <t:5");
        assert!(
            render_times(&time_relative(now - chrono::Duration::minutes(3)), now)
                .contains("3m ago")
        );
    }
}
