//! The terminal as a chat service: [`ConsoleSender`] is the demo's
//! [`ChatSender`] (audit channel posts, DMs, channel messages), and
//! [`render`] turns any [`ChatMessage`] into readable text, with Discord's
//! timestamp tokens shown in local time.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::chat::{ButtonAction, ChatMessage, Tone, render_times};
use crate::clock::SharedClock;
use crate::interactions::{ChatSender, SendError};

/// Where the demo writes, shared by the console loop and the outbox.
#[derive(Clone)]
pub struct Output {
    inner: Arc<Mutex<Box<dyn Write + Send>>>,
    /// Held while a command runs and its reply is printed, so messages the
    /// outbox delivers meanwhile come after the reply, as in Discord.
    gate: Arc<tokio::sync::Mutex<()>>,
    /// Deliveries collected while a step settles ([`Output::collect`]).
    batch: Arc<Mutex<Option<Batch>>>,
}

/// What the outbox delivered during one step: what people see, then the
/// audit channel's lines. The outbox sends the audit stream and the other
/// messages independently, so their order between each other is not
/// meaningful; printing them in this fixed order makes a transcript the
/// same on every run. Of two edits of one message in a step only the last
/// is printed: whether the outbox sent an intermediate state before the
/// next one was written depends on timing, and the message shows the last.
#[derive(Default)]
struct Batch {
    /// Each with the message it edits, if it is an edit.
    seen: Vec<(Option<(u64, u64)>, String)>,
    audit: Vec<String>,
}

impl Output {
    /// Writes to `writer`.
    pub fn new(writer: Box<dyn Write + Send>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(writer)),
            gate: Arc::new(tokio::sync::Mutex::new(())),
            batch: Arc::new(Mutex::new(None)),
        }
    }

    /// From now until [`Output::flush`], deliveries are collected.
    pub fn collect(&self) {
        let mut batch = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        batch.get_or_insert_with(Batch::default);
    }

    /// Prints what was collected: messages first, audit lines after.
    pub fn flush(&self) {
        let taken = self.batch.lock().unwrap_or_else(|e| e.into_inner()).take();
        for text in taken
            .into_iter()
            .flat_map(|b| b.seen.into_iter().map(|(_, text)| text).chain(b.audit))
        {
            self.line(&text);
        }
    }

    /// Prints a delivered message now, or collects it (see [`Batch`]).
    fn deliver(&self, text: String, audit: bool) {
        self.deliver_to(None, text, audit);
    }

    /// [`Output::deliver`] for an edit of message `edits` (channel,
    /// message): collected, it replaces an earlier edit of that message.
    fn deliver_to(&self, edits: Option<(u64, u64)>, text: String, audit: bool) {
        let mut batch = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        match batch.as_mut() {
            Some(b) if audit => b.audit.push(text),
            Some(b) => {
                if edits.is_some() {
                    b.seen.retain(|(earlier, _)| *earlier != edits);
                }
                b.seen.push((edits, text));
            }
            None => {
                drop(batch);
                self.line(&text);
            }
        }
    }

    /// Prints `text` (a newline is added) and flushes.
    pub fn line(&self, text: &str) {
        let mut out = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    /// Prints `text` without a newline (a prompt) and flushes.
    pub fn prompt(&self, text: &str) {
        let mut out = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = write!(out, "{text}");
        let _ = out.flush();
    }

    /// Holds other printers back until the guard is dropped.
    pub async fn hold(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.gate.lock().await
    }
}

/// Display names for ids: users (`<@id>` mentions, DM recipients) and
/// channels.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// User id to display name.
    pub users: BTreeMap<u64, String>,
    /// Channel id to name (without `#`).
    pub channels: BTreeMap<u64, String>,
    /// Role id to name (without `@`).
    pub roles: BTreeMap<u64, String>,
}

impl Names {
    fn user(&self, id: u64) -> String {
        self.users
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("user {id}"))
    }

    fn channel(&self, id: u64) -> String {
        self.channels
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("channel-{id}"))
    }

    fn role(&self, id: u64) -> String {
        self.roles
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("role {id}"))
    }

    /// Replaces `<@id>` and `<@&id>` mentions with `@name`.
    fn mentions(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("<@") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('>');
            let mention = end.map(|e| &after[..e]);
            let role = mention.and_then(|m| m.strip_prefix('&')?.parse::<u64>().ok());
            let user = mention.and_then(|m| m.trim_start_matches('!').parse::<u64>().ok());
            match role
                .map(|id| self.role(id))
                .or(user.map(|id| self.user(id)))
            {
                Some(name) => {
                    out.push('@');
                    out.push_str(&name);
                    rest = &after[end.unwrap_or_default() + 1..];
                }
                None => {
                    out.push_str("<@");
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// As Discord would show it: times in the local zone, mentions as
    /// names, escaped markdown as the characters typed.
    fn text(&self, text: &str, now: DateTime<Utc>) -> String {
        crate::chat::unescape_markdown(&self.mentions(&render_times(text, now)))
    }
}

fn mark(tone: Tone) -> &'static str {
    match tone {
        Tone::Success => "[ok]",
        Tone::Denied => "[denied]",
        Tone::Error => "[error]",
        Tone::Warning => "[!]",
        Tone::Info => "[i]",
    }
}

/// `message` as text under a `header` line such as `[reply → Sam]`:
/// content, then the card (title, description, fields, footer) and buttons,
/// indented.
pub fn render(header: &str, message: &ChatMessage, names: &Names, now: DateTime<Utc>) -> String {
    let pad = "    ";
    let mut lines = Vec::new();
    let mut first = header.to_owned();
    if let Some(card) = &message.card {
        first.push_str(&format!(
            " {} {}",
            mark(card.tone),
            names.text(&card.title, now)
        ));
    }
    lines.push(first);
    if let Some(content) = &message.content {
        for l in names.text(content, now).lines() {
            lines.push(format!("{pad}{l}"));
        }
    }
    if let Some(card) = &message.card {
        if let Some(description) = &card.description {
            for l in names.text(description, now).lines() {
                lines.push(format!("{pad}{l}"));
            }
        }
        let mut inline: Vec<String> = Vec::new();
        for field in &card.fields {
            let text = format!("{}: {}", field.name, names.text(&field.value, now));
            if field.inline && !text.contains('\n') {
                inline.push(text);
                continue;
            }
            if !inline.is_empty() {
                lines.push(format!("{pad}{}", inline.join(" · ")));
                inline.clear();
            }
            for l in text.lines() {
                lines.push(format!("{pad}{l}"));
            }
        }
        if !inline.is_empty() {
            lines.push(format!("{pad}{}", inline.join(" · ")));
        }
        if let Some(footer) = &card.footer {
            lines.push(format!("{pad}{}", names.text(footer, now)));
        }
    }
    if !message.buttons.is_empty() {
        let buttons: Vec<String> = message
            .buttons
            .iter()
            .map(|b| {
                let verb = match b.action {
                    ButtonAction::Deny(_) | ButtonAction::DenyWithReason { .. } => "deny <reason>",
                    ButtonAction::Acknowledge(_) => "ack",
                    _ => b.action.verb(),
                };
                format!("[{}] (:press {verb})", b.label)
            })
            .collect();
        lines.push(format!("{pad}{}", buttons.join("  ")));
    }
    for file in &message.attachments {
        lines.push(format!(
            "{pad}[file {} · {} bytes]",
            file.filename(),
            file.data().len()
        ));
    }
    lines.join("\n")
}

/// An audit-channel post on one line: sequence number, title, who and
/// what, then the event's human form (the card's description).
pub fn render_audit(message: &ChatMessage, names: &Names, now: DateTime<Utc>) -> String {
    let Some(card) = &message.card else {
        return render("[#audit]", message, names, now);
    };
    let seq = card
        .footer
        .as_deref()
        .and_then(|f| f.split_whitespace().next())
        .unwrap_or_default();
    let fields: Vec<String> = card
        .fields
        .iter()
        .filter(|f| f.name != "When")
        .map(|f| format!("{}: {}", f.name, names.text(&f.value, now)))
        .collect();
    let mut line = format!(
        "[#audit {seq}] {} {} — {}",
        mark(card.tone),
        names.text(&card.title, now),
        fields.join(" · ")
    );
    if let Some(description) = &card.description {
        line.push_str(" — ");
        line.push_str(&names.text(description, now));
    }
    line
}

/// The key under which [`LastButtons`] keeps a channel card's buttons.
pub const CHANNEL_BUTTONS: u64 = 0;

/// Request ids of the buttons each user was last shown, for `:press`.
pub type LastButtons = Arc<Mutex<BTreeMap<u64, String>>>;

/// Remembers the grant `message`'s buttons act on, for `user`.
pub fn remember_buttons(last: &LastButtons, user: u64, message: &ChatMessage) {
    if let Some(button) = message.buttons.first() {
        let id = button.action.request_id().to_owned();
        last.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user, id);
    }
}

/// The demo's [`ChatSender`]: prints to the terminal and never fails.
pub struct ConsoleSender {
    output: Output,
    names: Names,
    clock: SharedClock,
    audit_channel: u64,
    last_buttons: LastButtons,
}

impl ConsoleSender {
    /// Prints to `output`; posts to `audit_channel` as audit lines.
    pub fn new(
        output: Output,
        names: Names,
        clock: SharedClock,
        audit_channel: u64,
        last_buttons: LastButtons,
    ) -> Self {
        Self {
            output,
            names,
            clock,
            audit_channel,
            last_buttons,
        }
    }
}

#[async_trait]
impl ChatSender for ConsoleSender {
    async fn post(
        &self,
        channel_id: u64,
        message: &ChatMessage,
        _idempotency_key: &str,
    ) -> Result<Option<u64>, SendError> {
        let _held = self.output.hold().await;
        let now = self.clock.now();
        let audit = channel_id == self.audit_channel && message.card.is_some();
        let text = if audit {
            render_audit(message, &self.names, now)
        } else {
            let header = format!("[#{}]", self.names.channel(channel_id));
            render(&header, message, &self.names, now)
        };
        self.output.deliver(text, audit);
        // Anyone may press a channel card's buttons (an approval card).
        remember_buttons(&self.last_buttons, CHANNEL_BUTTONS, message);
        Ok(Some(channel_id))
    }

    async fn edit(
        &self,
        channel_id: u64,
        message_id: u64,
        message: &ChatMessage,
    ) -> Result<(), SendError> {
        let _held = self.output.hold().await;
        let header = format!("[#{} (updated)]", self.names.channel(channel_id));
        let text = render(&header, message, &self.names, self.clock.now());
        self.output
            .deliver_to(Some((channel_id, message_id)), text, false);
        Ok(())
    }

    async fn edit_reply(&self, _token: &str, _message: &ChatMessage) -> Result<(), SendError> {
        // The console has no interaction tokens: the caller sends a DM.
        Err(SendError::Permanent(
            "the console has no interaction replies".into(),
        ))
    }

    async fn direct(
        &self,
        user_id: u64,
        message: &ChatMessage,
        _idempotency_key: &str,
    ) -> Result<(), SendError> {
        let _held = self.output.hold().await;
        let header = format!("[DM → {}]", self.names.user(user_id));
        let text = render(&header, message, &self.names, self.clock.now());
        self.output.deliver(text, false);
        remember_buttons(&self.last_buttons, user_id, message);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::chat::{Button, ButtonStyle, Card};

    /// A writer whose text the test reads back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_step_prints_the_last_edit_of_a_message_where_it_was_delivered() {
        let written = Shared::default();
        let output = Output::new(Box::new(written.clone()));
        output.collect();
        output.deliver_to(Some((1, 9)), "card: opening".into(), false);
        output.deliver("audit line".into(), true);
        output.deliver_to(Some((1, 9)), "card: open".into(), false);
        output.deliver_to(Some((1, 8)), "other card".into(), false);
        output.deliver("DM".into(), false);
        output.flush();
        let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text, "card: open\nother card\nDM\naudit line\n");
    }

    #[test]
    fn cards_render_with_local_times_names_and_buttons() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 10, 0, 0).unwrap();
        let end = now + chrono::Duration::hours(2);
        let mut names = Names::default();
        names.users.insert(7, "Sam".into());
        let message = ChatMessage::card(
            Card::new("Access granted: ssh on web-01", Tone::Success)
                .description("for <@7>")
                .field("VM", "web-01", true)
                .field("Ports", "22", true)
                .field(
                    "Window",
                    format!(
                        "until <t:{}:f> (<t:{}:R>)",
                        end.timestamp(),
                        end.timestamp()
                    ),
                    false,
                )
                .footer("request 42"),
        )
        .with_buttons(vec![Button {
            action: ButtonAction::Extend("42".into()),
            label: "Extend".into(),
            style: ButtonStyle::Primary,
        }]);
        let text = render("[reply]", &message, &names, now);
        assert!(
            text.starts_with("[reply] [ok] Access granted: ssh on web-01"),
            "{text}"
        );
        assert!(text.contains("for @Sam"), "{text}");
        assert!(text.contains("VM: web-01 · Ports: 22"), "{text}");
        assert!(text.contains("(in 2h 0m)"), "{text}");
        assert!(!text.contains("<t:"), "{text}");
        assert!(text.contains("[Extend] (:press extend)"), "{text}");
    }
}
