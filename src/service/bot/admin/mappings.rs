//! `/jit-admin mappings`: lists the mappings.

use super::{mapping_summary, notice};
use crate::chat::{Card, ChatMessage, Tone};
use crate::interactions::Invocation;
use crate::service::Service;
use crate::service::admin::AdminError;

/// A card holds at most this many fields.
const SHOWN: usize = 25;

pub(super) fn run(s: &Service, who: &Invocation) -> Result<ChatMessage, AdminError> {
    let mappings = s.list_mappings_for(who)?;
    if mappings.is_empty() {
        return Ok(notice(
            "No mappings",
            Tone::Info,
            "Nobody can request access yet. Add a mapping with /jit-admin map.",
        ));
    }
    let mut card = Card::new(format!("{} mappings", mappings.len()), Tone::Info);
    for m in mappings.iter().take(SHOWN) {
        card = card.field(m.name.to_string(), mapping_summary(m), false);
    }
    Ok(ChatMessage::card(card))
}
