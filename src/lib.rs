//! Drawbridge: Azure Just-In-Time VM access from Discord.
pub mod clock;
pub mod domain;
pub mod store;
