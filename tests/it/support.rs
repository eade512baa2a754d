//! Test support shared by the integration tests.

pub mod app;
pub mod child;
pub mod cluster;
pub mod fake_discord;
pub mod ledger;
pub mod load;
pub mod procfs;
pub mod said;
pub mod shown;
pub mod tls;
