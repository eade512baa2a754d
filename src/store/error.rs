//! The store's one error type.

use crate::domain::InvalidTransition;

/// What can go wrong in the store. Expected outcomes a caller branches on are
/// variants; everything else is [`StoreError::Unexpected`] with the step that
/// failed as context. No variant carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist.
    #[error("no {what} `{key}`")]
    NotFound {
        /// What was looked for: `grant`, `mapping`, `outbox message`, …
        what: &'static str,
        key: String,
    },
    /// The grant state machine refused the event; the grant is unchanged.
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
    /// A stored mapping no longer validates (for example after validation
    /// rules tightened). It is reported, never silently dropped.
    #[error("stored mapping `{name}` is no longer valid: {message}")]
    InvalidStoredMapping {
        /// The mapping's stored name.
        name: String,
        /// Why it does not validate.
        message: String,
    },
    /// A stored row cannot be read back into its type.
    #[error("{table} row `{key}` cannot be read: {message}")]
    CorruptRow {
        table: &'static str,
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The caller passed something the store cannot keep (for example an
    /// outbox key longer than Discord's 25-character nonce).
    #[error("{0}")]
    InvalidInput(String),
    /// The database failed; the context says at which step.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl StoreError {
    pub(super) fn corrupt(
        table: &'static str,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::CorruptRow {
            table,
            key: key.into(),
            message: message.into(),
        }
    }

    pub(super) fn not_found(what: &'static str, key: impl Into<String>) -> Self {
        Self::NotFound {
            what,
            key: key.into(),
        }
    }
}
