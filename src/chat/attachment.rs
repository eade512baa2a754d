//! A file sent with a message: an RDP grant's `.rdp` file, the weekly
//! report's PNG and CSV.
//!
//! Checked when made and when read back from the outbox, so a transport can
//! send it as it is: a plain file name, and no more bytes than Discord takes
//! from any guild ([`MAX_BYTES`]). The bytes travel through the outbox as
//! base64 inside the message's JSON.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// The largest file, in bytes: Discord's attachment size limit for a guild
/// without boosts (10 MiB), which every guild allows.
pub const MAX_BYTES: usize = 10 * 1024 * 1024;
/// Files per message, at most (Discord's limit).
pub const MAX_FILES: usize = 10;
/// The longest file name.
const NAME_MAX: usize = 100;

/// Why a file cannot be attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachmentError {
    /// The name is empty, too long, starts with a dot or holds a character
    /// other than letters, digits, `.`, `-` and `_`.
    #[error(
        "`{0}` is not a file name Drawbridge sends: 1 to 100 letters, digits, `.`, `-` or `_`, not starting with a dot"
    )]
    BadName(String),
    /// More than [`MAX_BYTES`].
    #[error("the file `{name}` has {size} bytes; Discord takes at most {MAX_BYTES}")]
    TooLarge {
        /// The file's name.
        name: String,
        /// Its size.
        size: usize,
    },
    /// The outbox's copy is not base64.
    #[error("the file `{0}` is not readable base64")]
    BadData(String),
}

/// A named file of at most [`MAX_BYTES`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Wire", into = "Wire")]
pub struct Attachment {
    filename: String,
    data: Vec<u8>,
}

impl Attachment {
    /// A file called `filename` holding `data`.
    ///
    /// # Errors
    /// [`AttachmentError`] for a bad name or too many bytes.
    pub fn new(filename: &str, data: Vec<u8>) -> Result<Self, AttachmentError> {
        let name_ok = (1..=NAME_MAX).contains(&filename.len())
            && !filename.starts_with('.')
            && filename
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !name_ok {
            return Err(AttachmentError::BadName(
                filename.chars().take(NAME_MAX).collect(),
            ));
        }
        if data.len() > MAX_BYTES {
            return Err(AttachmentError::TooLarge {
                name: filename.to_owned(),
                size: data.len(),
            });
        }
        Ok(Self {
            filename: filename.to_owned(),
            data,
        })
    }

    /// The file name.
    pub fn filename(&self) -> &str {
        &self.filename
    }

    /// The bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
}

impl fmt::Debug for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attachment")
            .field("filename", &self.filename)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// The outbox's JSON form.
#[derive(Serialize, Deserialize)]
struct Wire {
    filename: String,
    base64: String,
}

impl TryFrom<Wire> for Attachment {
    type Error = AttachmentError;
    fn try_from(wire: Wire) -> Result<Self, Self::Error> {
        let data = STANDARD
            .decode(wire.base64.as_bytes())
            .map_err(|_| AttachmentError::BadData(wire.filename.clone()))?;
        Self::new(&wire.filename, data)
    }
}

impl From<Attachment> for Wire {
    fn from(file: Attachment) -> Self {
        Self {
            base64: STANDARD.encode(&file.data),
            filename: file.filename,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sizes_are_checked() {
        assert!(Attachment::new("web-01.rdp", b"x".to_vec()).is_ok());
        for bad in ["", ".rdp", "a/b.rdp", "a b.rdp", "ä.rdp", &"a".repeat(101)] {
            assert!(
                matches!(
                    Attachment::new(bad, Vec::new()),
                    Err(AttachmentError::BadName(_))
                ),
                "{bad:?}"
            );
        }
        assert!(Attachment::new("big.bin", vec![0; MAX_BYTES]).is_ok());
        assert!(matches!(
            Attachment::new("big.bin", vec![0; MAX_BYTES + 1]),
            Err(AttachmentError::TooLarge { .. })
        ));
    }

    #[test]
    fn the_outbox_form_round_trips_and_is_checked_when_read() {
        let file = Attachment::new("week.png", vec![0x89, b'P', b'N', b'G', 0, 255]).unwrap();
        let json = serde_json::to_string(&file).unwrap();
        assert_eq!(json, r#"{"filename":"week.png","base64":"iVBORwD/"}"#);
        assert_eq!(serde_json::from_str::<Attachment>(&json).unwrap(), file);
        assert!(serde_json::from_str::<Attachment>(r#"{"filename":"../x","base64":""}"#).is_err());
        assert!(serde_json::from_str::<Attachment>(r#"{"filename":"x","base64":"%%"}"#).is_err());
        assert_eq!(
            format!("{file:?}"),
            r#"Attachment { filename: "week.png", bytes: 6 }"#
        );
    }
}
