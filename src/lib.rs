//! Drawbridge: Azure Just-In-Time VM access from Discord.
//!
//! `/jit ssh web-01 2h` opens SSH on `web-01` for the engineer's address for
//! two hours, after checking their Discord roles against role mappings;
//! reminders, expiry notices and an audit channel follow. The binary
//! (`src/main.rs`) only calls [`cli::run`].
//!
//! # Layout
//!
//! Ports and adapters: a pure core, use cases written against small ports,
//! and one adapter per outside system.
//!
//! - [`domain`]: validated values, role mappings, the authorization
//!   decision, the grant state machine, audit events, Azure JIT policies as
//!   values. No I/O.
//! - [`service`]: the use cases and the workers, built from named phases
//!   (resolve, decide, persist, initiate, settle); [`service::jit_port`] is
//!   Azure as they see it. Its module docs follow one `/jit` request.
//! - [`store`]: durable state behind one backend-neutral façade (SQLite
//!   today): grants, mappings, the hash-chained audit log, the outbox,
//!   timers.
//! - [`azure`]: the ARM client, tokens, the VM index, and
//!   [`azure::ArmJit`], the port over them.
//! - [`discord`]: serenity: command registration, the gateway and HTTP
//!   interactions modes, messages to Discord's builders.
//! - [`ip_page`]: the one-time IP capture page members open in a browser.
//! - [`interactions`], [`chat`]: the transport-neutral contract between a
//!   chat transport and the bot (invocations in, [`chat::ChatMessage`]s out).
//! - [`sandbox`]: the Azure JIT emulator (`drawbridge emulate-azure`, the
//!   demo and the tests); [`demo`]: everything local with a console chat.
//! - [`app`]: wiring and shutdown; [`cli`]: the commands of the binary;
//!   [`config`], [`telemetry`], [`metrics`], [`ops`], [`surface`] (the
//!   limits of every HTTP listener), [`clock`]: the rest.
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
pub mod ip_page;
pub mod metrics;
pub mod ops;
pub mod preflight;
pub mod report;
pub mod sandbox;
pub mod service;
pub mod store;
pub mod surface;
pub mod telemetry;
