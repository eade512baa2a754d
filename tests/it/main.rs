//! The one integration-test binary: black-box tests of Drawbridge.

mod azure_client;
mod cli;
mod crash;
mod credentials;
mod demo;
mod discord_adapter;
mod docs;
mod e2e;
mod e2e_admin;
mod e2e_audit;
mod e2e_buttons;
mod e2e_http;
mod emulator;
mod emulator_tokens;
mod fake_discord_selftest;
mod fault;
mod fuzz;
mod layout;
mod lifecycle;
mod logs;
mod ops;
mod policy_fuzz;
mod shutdown;
mod store;
mod support;
mod worst_case;
