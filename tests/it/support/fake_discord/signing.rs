//! Ed25519 signing for HTTP-interactions tests: Discord signs `timestamp ++ body` and sends
//! `X-Signature-Ed25519` (hex) and `X-Signature-Timestamp` (notes §5).

use ed25519_dalek::{Signer as _, SigningKey};

/// A fixed test seed, so the public key can sit in a config file.
pub const TEST_SEED: [u8; 32] = [7; 32];

/// Signs request bodies the way Discord does.
#[derive(Clone, Debug)]
pub struct Signer {
    key: SigningKey,
}

impl Signer {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The signer for [`TEST_SEED`].
    pub fn test() -> Self {
        Self::from_seed(TEST_SEED)
    }

    /// The public key as 64 hex characters: the bot's `discord.public_key`.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    /// The signature (128 hex characters) over `timestamp ++ body`.
    pub fn sign(&self, timestamp: &str, body: &[u8]) -> String {
        let mut message = timestamp.as_bytes().to_vec();
        message.extend_from_slice(body);
        hex::encode(self.key.sign(&message).to_bytes())
    }

    /// The two headers for `body`, timestamped now:
    /// `[("X-Signature-Ed25519", sig), ("X-Signature-Timestamp", ts)]`.
    pub fn headers(&self, body: &[u8]) -> [(&'static str, String); 2] {
        let timestamp = chrono::Utc::now().timestamp().to_string();
        [
            ("X-Signature-Ed25519", self.sign(&timestamp, body)),
            ("X-Signature-Timestamp", timestamp),
        ]
    }
}
