//! The one integration-test binary: black-box tests of Drawbridge.

mod discord_adapter;
mod fake_discord_selftest;
mod support;
