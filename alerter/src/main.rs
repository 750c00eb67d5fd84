//! `alerter`: the pg_fraud notification daemon. Everything lives in the library; see
//! `alerter --help`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    alerter::cli::main(alerter::cli::Cli::parse())
}
