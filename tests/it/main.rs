//! The one integration-test binary: black-box tests of Drawbridge.

mod emulator;
mod fake_discord_selftest;
mod support;
