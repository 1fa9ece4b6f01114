//! The binaries' command line: the operator itself (`run`) beside the commands a person runs
//! (`cli`). It sits here, above both, so that `cli` needs nothing of the process that runs the
//! operator, and `cloudkeys` and `kubectl-cloudkeys` parse the same commands.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use super::run_args::RunArgs;
use crate::cli;

#[derive(Debug, Parser)]
#[command(name = "cloudkeys", version, about = "Issues cloud API keys into Kubernetes Secrets and revokes them")]
pub struct CommandLine {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controllers (uses KUBECONFIG or the in-cluster configuration).
    Run(Box<RunArgs>),
    #[command(flatten)]
    User(cli::Command),
}

/// `cloudkeys …`: every command, `run` included.
pub async fn cloudkeys() -> ExitCode {
    execute(CommandLine::parse()).await
}

/// `kubectl cloudkeys …`: the same commands under the plugin's name, `run` hidden (it is the
/// operator, not a kubectl command).
pub async fn kubectl_plugin() -> ExitCode {
    let command = CommandLine::command().name("kubectl-cloudkeys").bin_name("kubectl cloudkeys");
    let matches = command.mut_subcommand("run", |c| c.hide(true)).get_matches();
    match CommandLine::from_arg_matches(&matches) {
        Ok(line) => execute(line).await,
        Err(e) => e.exit(),
    }
}

async fn execute(line: CommandLine) -> ExitCode {
    match line.command {
        Command::Run(args) => run_operator(*args).await,
        Command::User(command) => cli::execute(command).await,
    }
}

async fn run_operator(args: RunArgs) -> ExitCode {
    crate::telemetry::init(args.log_format);
    let client = match super::client::client(args.kube_api_qps, args.kube_api_burst).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot configure the Kubernetes client (KUBECONFIG or in-cluster)");
            return ExitCode::FAILURE;
        }
    };
    match super::run::run(client, args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "controller failed");
            ExitCode::FAILURE
        }
    }
}
