//! Drawbridge: Azure Just-In-Time VM access from Discord.
pub mod chat;
pub mod clock;
pub mod config;
pub mod discord;
pub mod domain;
pub mod interactions;
pub mod telemetry;
