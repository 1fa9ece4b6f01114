//! `kubectl cloudkeys …`: the same commands as `cloudkeys`, found by kubectl on PATH under the
//! plugin's name.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use cloudkeys::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    // `run` is the operator, not a kubectl command.
    let command = Cli::command().name("kubectl-cloudkeys").bin_name("kubectl cloudkeys");
    let matches = command.mut_subcommand("run", |c| c.hide(true)).get_matches();
    match Cli::from_arg_matches(&matches) {
        Ok(cli) => cloudkeys::cli::execute(cli.command).await,
        Err(e) => e.exit(),
    }
}
