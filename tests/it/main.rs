//! The one integration-test binary: black-box tests of Drawbridge.
mod store;
