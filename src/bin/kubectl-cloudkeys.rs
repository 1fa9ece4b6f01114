//! `kubectl cloudkeys …`: the same commands as `cloudkeys`, found by kubectl on PATH under the
//! plugin's name.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use cloudkeys::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let matches = Cli::command().name("kubectl-cloudkeys").bin_name("kubectl cloudkeys").get_matches();
    match Cli::from_arg_matches(&matches) {
        Ok(cli) => cloudkeys::cli::execute(cli.command).await,
        Err(e) => e.exit(),
    }
}
