//! The one integration-test binary: black-box tests of Drawbridge.

mod azure_client;
mod discord_adapter;
mod e2e;
mod emulator;
mod fake_discord_selftest;
mod fault;
mod fuzz;
mod store;
mod support;
