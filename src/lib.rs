//! Drawbridge: Azure Just-In-Time VM access from Discord.
pub mod azure;
pub mod clock;
pub mod sandbox;
