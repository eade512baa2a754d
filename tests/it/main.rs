//! The one integration-test binary: black-box tests of Drawbridge.

mod azure_client;
mod demo;
mod discord_adapter;
mod docs;
mod e2e;
mod emulator;
mod fake_discord_selftest;
mod logs;
mod ops;
mod shutdown;
mod store;
mod support;
