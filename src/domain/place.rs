//! Where Drawbridge answers: its home guild only. Commands registered to
//! one guild cannot be run elsewhere by Discord's own rules, but a global
//! registration, a stale one, or a forged HTTP delivery can still arrive,
//! so every interaction is checked. A button in a DM is the one exception
//! (a reminder's Extend): the grant's owner check and the member's current
//! roles in the home guild decide it.

use std::fmt;

/// What kind of interaction arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    /// A slash command or autocomplete.
    Command,
    /// A button on one of Drawbridge's messages.
    Button,
}

/// Why an interaction is refused for where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceRefusal {
    /// Another guild than the home guild.
    OtherGuild,
    /// A command in a direct message.
    DirectMessage,
}

impl PlaceRefusal {
    /// The audit log's code.
    pub fn code(self) -> &'static str {
        match self {
            Self::OtherGuild => "other_guild",
            Self::DirectMessage => "direct_message",
        }
    }
}

impl fmt::Display for PlaceRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OtherGuild => "Drawbridge answers only in its own server.",
            Self::DirectMessage => {
                "Drawbridge's commands work in its server, not in direct messages."
            }
        })
    }
}

/// Whether `kind` from `guild` (`None` = a DM) is served, when the home
/// guild is `home` (`None` = commands registered globally on purpose: any
/// guild).
///
/// # Errors
/// The [`PlaceRefusal`].
pub fn check_place(
    home: Option<u64>,
    guild: Option<u64>,
    kind: Interaction,
) -> Result<(), PlaceRefusal> {
    match (guild, kind) {
        (None, Interaction::Button) => Ok(()),
        (None, Interaction::Command) => Err(PlaceRefusal::DirectMessage),
        (Some(g), _) if home.is_none_or(|h| h == g) => Ok(()),
        (Some(_), _) => Err(PlaceRefusal::OtherGuild),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_home_guild_and_dm_buttons_are_served() {
        use Interaction::{Button, Command};
        let home = Some(1);
        assert_eq!(check_place(home, Some(1), Command), Ok(()));
        assert_eq!(check_place(home, Some(1), Button), Ok(()));
        assert_eq!(check_place(home, None, Button), Ok(()));
        assert_eq!(
            check_place(home, Some(2), Command),
            Err(PlaceRefusal::OtherGuild)
        );
        assert_eq!(
            check_place(home, Some(2), Button),
            Err(PlaceRefusal::OtherGuild)
        );
        assert_eq!(
            check_place(home, None, Command),
            Err(PlaceRefusal::DirectMessage)
        );
        assert_eq!(check_place(None, Some(2), Command), Ok(()));
        assert_eq!(
            check_place(None, None, Command),
            Err(PlaceRefusal::DirectMessage)
        );
    }
}
