//! `/jit-admin audit`: the latest audit events, each as its one-line
//! human form (the JSON stays in `drawbridge audit export`).

use super::notice;
use crate::chat::{Card, ChatMessage, Tone, time_full};
use crate::interactions::{Invocation, SlashCommand};
use crate::service::Service;
use crate::service::admin::AdminError;
use crate::service::messages::{action_title, audit_line};

/// A card holds at most this many fields.
const SHOWN: usize = 25;

pub(super) async fn run(
    s: &Service,
    who: &Invocation,
    command: &SlashCommand,
) -> Result<ChatMessage, AdminError> {
    let limit = command.option("limit").and_then(|l| l.parse::<u32>().ok());
    let records = s
        .recent_audit(who, command.option("since"), command.option("user"), limit)
        .await?;
    if records.is_empty() {
        return Ok(notice("No audit events", Tone::Info, "Nothing matches."));
    }
    let mut card = Card::new(format!("{} audit events", records.len()), Tone::Info);
    for r in records.iter().rev().take(SHOWN) {
        card = card.field(
            format!("#{} {}", r.seq, action_title(r.event.action)),
            format!("{} · {}", time_full(r.event.at), audit_line(&r.event)),
            false,
        );
    }
    Ok(ChatMessage::card(card))
}
