//! The store, against real databases: the contract suite once per backend,
//! then what is particular to one backend or to the source tree.
//!
//! Every backend runs every test in `contract.rs`. Adding a backend is an
//! impl of `backend::Backend` and one `store_contract!` line below.

mod backend;
mod contract;
mod layout;
mod sqlite;

contract::store_contract!(on_sqlite, crate::store::backend::Sqlite);
