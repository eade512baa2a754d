//! Drawbridge: Azure Just-In-Time VM access from Discord.
pub mod app;
pub mod azure;
pub mod chat;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod discord;
pub mod domain;
pub mod interactions;
pub mod metrics;
pub mod ops;
pub mod sandbox;
pub mod service;
pub mod store;
pub mod telemetry;
