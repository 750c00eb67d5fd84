//! pg_fraud: fraud scoring inside PostgreSQL.
//!
//! Layers: [`api`] and [`admin`] are the SQL surface; [`trigger`], [`scoring`], [`store`],
//! [`alerts`], [`catalog`], [`models`], [`rowread`] and [`xact`] are the backend glue; the scoring math,
//! rule language and models live in the pure `fraud_core` / `fraud_models` crates.
#![deny(unsafe_op_in_unsafe_fn)]
// pgrx's `ErrorReport` is the error type of every `#[pg_extern]` that returns `Result`, and
// the wrappers the macro generates return it by value; boxing is not ours to choose.
#![allow(clippy::result_large_err)]

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod admin;
mod alerts;
mod api;
mod catalog;
mod error;
mod gucs;
mod maintenance;
mod models;
mod regclass;
mod rowread;
mod scorelog;
mod scoring;
mod store;
mod trigger;
mod xact;

extension_sql_file!("sql/bootstrap.sql", bootstrap);
extension_sql_file!("sql/outbox.sql", name = "outbox", requires = ["bootstrap"]);
extension_sql_file!("sql/catalog.sql", name = "catalog", requires = ["outbox"]);
extension_sql_file!("sql/models.sql", name = "models", requires = ["catalog"]);
extension_sql_file!("sql/finalize.sql", finalize);

/// Called when the library is loaded into a backend.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    catalog::init();
    xact::init();
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("pg_tests.rs");
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    /// One-off setup when the test framework starts.
    pub fn setup(_options: Vec<&str>) {}

    /// postgresql.conf settings the tests need.
    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'pg_cron'", "cron.database_name = 'pgrx_tests'"]
    }
}
