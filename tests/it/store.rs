//! The store, against real databases: the contract suite once per backend,
//! then what is particular to one backend or to the source tree.
//!
//! Every backend runs every test in `contract.rs`. Adding a backend is an
//! impl of `backend::Backend` and one `store_contract!` line below.
//!
//! The PostgreSQL half runs when `DRAWBRIDGE_TEST_POSTGRES_URL` names a
//! server (`.ci/run` sets it to the machine's local one); without it, those
//! tests pass without running and the test output says they were skipped.

pub(crate) mod backend;
mod contract;
mod layout;
mod postgres;
mod sqlite;

contract::store_contract!(on_sqlite, Some(crate::store::backend::Sqlite));
contract::store_contract!(on_postgres, crate::store::backend::Postgres::from_env());
